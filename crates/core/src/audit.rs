//! The tamper-evident audit trail. Each entry's hash is
//! SHA-256(previous hash || canonical JSON of the entry), and entries are
//! appended in the same transaction as the change they record, under the
//! audit-head lock (see `Db::begin_write`), so ids are contiguous.
//! `verify` walks the chain and names the first entry that was edited,
//! deleted or reordered.

use crate::error::Result;
use crate::store::{Tx, WriteBatch};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// Who did it, as recorded: never a secret, only the credential's public hint.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    /// `admin`, `agent`, `approver`, `system`, `anonymous`, `smtp`.
    pub kind: String,
    pub id: Option<String>,
    /// e.g. `ap_agt_…x9Qz` — prefix and last four characters.
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub actor: Actor,
    pub action: String,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub agent_id: Option<String>,
    /// `success`, `denied`, `failure`.
    pub outcome: String,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What a caller records; ids, time and hashes are filled in on append.
#[derive(Debug, Clone)]
pub(crate) struct NewEntry {
    pub actor: Actor,
    pub action: &'static str,
    pub target_kind: Option<&'static str>,
    pub target_id: Option<String>,
    pub agent_id: Option<String>,
    pub outcome: &'static str,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub details: Value,
}

/// The canonical form hashed: a JSON object with sorted keys (serde_json's
/// default map is ordered) holding every column but the hash itself.
#[allow(clippy::too_many_arguments)]
fn canonical(
    id: i64,
    at: i64,
    actor: &Actor,
    action: &str,
    target_kind: Option<&str>,
    target_id: Option<&str>,
    agent_id: Option<&str>,
    outcome: &str,
    request_id: Option<&str>,
    source: Option<&str>,
    details: &str,
) -> String {
    json!({
        "id": id, "at": at,
        "actor_kind": actor.kind, "actor_id": actor.id, "actor_credential": actor.credential,
        "action": action, "target_kind": target_kind, "target_id": target_id,
        "agent_id": agent_id, "outcome": outcome, "request_id": request_id,
        "source": source, "details": details,
    })
    .to_string()
}

fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Appends one entry inside `tx`, which must come from `Db::begin_write`.
pub(crate) async fn append(tx: &mut Tx, at: i64, e: &NewEntry) -> Result<i64> {
    let head = sqlx::query("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    let last_id: i64 = head.try_get(0)?;
    let prev_hash: String = head.try_get(1)?;
    let id = last_id + 1;
    let details = e.details.to_string();
    let canon = canonical(
        id,
        at,
        &e.actor,
        e.action,
        e.target_kind,
        e.target_id.as_deref(),
        e.agent_id.as_deref(),
        e.outcome,
        e.request_id.as_deref(),
        e.source.as_deref(),
        &details,
    );
    let hash = chain_hash(&prev_hash, &canon);
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_kind, actor_id, actor_credential, action, target_kind, \
         target_id, agent_id, outcome, request_id, source, details, prev_hash, hash) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
    )
    .bind(id)
    .bind(at)
    .bind(&e.actor.kind)
    .bind(e.actor.id.clone())
    .bind(e.actor.credential.clone())
    .bind(e.action)
    .bind(e.target_kind)
    .bind(e.target_id.clone())
    .bind(e.agent_id.clone())
    .bind(e.outcome)
    .bind(e.request_id.clone())
    .bind(e.source.clone())
    .bind(&details)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1")
        .bind(id)
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// The chain's head, read under the organisation's write lock: the last
/// audit entry, the last event id, and whether any webhook endpoint is
/// live (an event then fans out to deliveries).
pub(crate) struct Head {
    pub last_id: i64,
    pub last_hash: String,
    pub last_event_id: i64,
    pub webhooks: bool,
}

/// Reads the head inside `tx` (from `Db::begin_write`). `extra` adds
/// columns after the head's four (`, (SELECT …)`), for a caller that wants
/// them from the same round trip; the row is returned for those.
pub(crate) async fn read_head(tx: &mut Tx, extra: &str) -> Result<(Head, sqlx::any::AnyRow)> {
    read_head_with(tx, extra, &[]).await
}

/// [`read_head`] whose `extra` columns take `binds`, in order.
pub(crate) async fn read_head_with(
    tx: &mut Tx,
    extra: &str,
    binds: &[&str],
) -> Result<(Head, sqlx::any::AnyRow)> {
    let sql = format!(
        "SELECT h.last_id, h.last_hash, h.last_event_id, \
         (SELECT COUNT(*) FROM (SELECT 1 FROM webhook_endpoints WHERE enabled = 1 AND deleted_at IS NULL LIMIT 1) w){extra} \
         FROM audit_head h WHERE h.id = 1"
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(*b);
    }
    let row = q.fetch_one(&mut **tx).await?;
    let head = Head {
        last_id: row.try_get(0)?,
        last_hash: row.try_get(1)?,
        last_event_id: row.try_get(2)?,
        webhooks: row.try_get::<i64, _>(3)? > 0,
    };
    Ok((head, row))
}

/// Adds the inserts of `entries`, in order, to `batch`: the same chain as
/// calling [`append`] for each, continuing from `head`, which moves on to
/// the last of them. [`push_head`] then records it.
pub(crate) fn push_entries(batch: &mut WriteBatch, head: &mut Head, at: i64, entries: &[NewEntry]) {
    let dialect = batch.dialect();
    // 15 values a row; 64 rows stay far below both backends' bind limits.
    for chunk in entries.chunks(64) {
        let sql = format!(
            "INSERT INTO audit_log ({COLUMNS}) VALUES {}",
            crate::store::value_groups(dialect, chunk.len(), 15, crate::store::parenthesised)
        );
        batch.push(&sql);
        for e in chunk {
            let id = head.last_id + 1;
            let details = e.details.to_string();
            let canon = canonical(
                id,
                at,
                &e.actor,
                e.action,
                e.target_kind,
                e.target_id.as_deref(),
                e.agent_id.as_deref(),
                e.outcome,
                e.request_id.as_deref(),
                e.source.as_deref(),
                &details,
            );
            let hash = chain_hash(&head.last_hash, &canon);
            let prev = std::mem::replace(&mut head.last_hash, hash.clone());
            head.last_id = id;
            batch
                .bind(id)
                .bind(at)
                .bind(e.actor.kind.clone())
                .bind(e.actor.id.clone())
                .bind(e.actor.credential.clone())
                .bind(e.action)
                .bind(e.target_kind)
                .bind(e.target_id.clone())
                .bind(e.agent_id.clone())
                .bind(e.outcome)
                .bind(e.request_id.clone())
                .bind(e.source.clone())
                .bind(details)
                .bind(prev)
                .bind(hash);
        }
    }
}

/// Stores `head` (entry and event counters) as the chain's new head.
pub(crate) fn push_head(batch: &mut WriteBatch, head: &Head) {
    let sql = format!(
        "UPDATE audit_head SET {} WHERE id = 1",
        crate::store::value_groups(batch.dialect(), 1, 3, |m| format!(
            "last_id = {}, last_hash = {}, last_event_id = {}",
            m[0], m[1], m[2]
        ))
    );
    batch
        .push(&sql)
        .bind(head.last_id)
        .bind(head.last_hash.clone())
        .bind(head.last_event_id);
}

pub(crate) const COLUMNS: &str = "id, at, actor_kind, actor_id, actor_credential, action, target_kind, \
     target_id, agent_id, outcome, request_id, source, details, prev_hash, hash";

/// Reads a row selected with `COLUMNS`. Details are returned as stored text
/// too, because verification must hash exactly what was stored.
pub(crate) fn from_row(row: &sqlx::any::AnyRow) -> Result<(AuditEntry, i64, String)> {
    let at: i64 = row.try_get("at")?;
    let details: String = row.try_get("details")?;
    let entry = AuditEntry {
        id: row.try_get("id")?,
        at: crate::clock::to_rfc3339(at),
        actor: Actor {
            kind: row.try_get("actor_kind")?,
            id: row.try_get("actor_id")?,
            credential: row.try_get("actor_credential")?,
        },
        action: row.try_get("action")?,
        target_kind: row.try_get("target_kind")?,
        target_id: row.try_get("target_id")?,
        agent_id: row.try_get("agent_id")?,
        outcome: row.try_get("outcome")?,
        request_id: row.try_get("request_id")?,
        source: row.try_get("source")?,
        details: serde_json::from_str(&details).unwrap_or(Value::String(details.clone())),
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    };
    Ok((entry, at, details))
}

/// Result of walking the chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: i64,
    pub head_id: i64,
    pub head_hash: String,
    /// None when the chain is intact.
    pub problem: Option<VerifyProblem>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The first entry id at which the chain breaks.
    pub entry_id: i64,
    /// `edited`, `deleted`, `reordered` or `truncated`.
    pub kind: &'static str,
    pub message: String,
}

pub(crate) async fn verify(pool: &sqlx::AnyPool) -> Result<VerifyReport> {
    use futures_lite::StreamExt;
    let head = sqlx::query("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let head_id: i64 = head.try_get(0)?;
    let head_hash: String = head.try_get(1)?;
    let genesis = "0".repeat(64);
    let q = format!("SELECT {COLUMNS} FROM audit_log ORDER BY id");
    let mut rows = sqlx::query(AssertSqlSafe(q)).fetch(pool);
    let mut expected_id = 1i64;
    let mut prev_hash = genesis;
    let mut count = 0i64;
    let mut problem = None;
    while let Some(row) = rows.next().await {
        let row = row?;
        let (e, at, details) = from_row(&row)?;
        count += 1;
        if e.id != expected_id {
            problem = Some(VerifyProblem {
                entry_id: expected_id,
                kind: "deleted",
                message: format!("entry {expected_id} is missing (next present is {})", e.id),
            });
            break;
        }
        let canon = canonical(
            e.id,
            at,
            &e.actor,
            &e.action,
            e.target_kind.as_deref(),
            e.target_id.as_deref(),
            e.agent_id.as_deref(),
            &e.outcome,
            e.request_id.as_deref(),
            e.source.as_deref(),
            &details,
        );
        let recomputed = chain_hash(&e.prev_hash, &canon);
        if recomputed != e.hash {
            problem = Some(VerifyProblem {
                entry_id: e.id,
                kind: "edited",
                message: format!(
                    "entry {} does not match its hash: its content was changed",
                    e.id
                ),
            });
            break;
        }
        if e.prev_hash != prev_hash {
            problem = Some(VerifyProblem {
                entry_id: e.id,
                kind: "reordered",
                message: format!(
                    "entry {} does not follow entry {}: entries were moved, replaced or rehashed",
                    e.id,
                    e.id - 1
                ),
            });
            break;
        }
        prev_hash = e.hash;
        expected_id += 1;
    }
    if problem.is_none() && (expected_id - 1 != head_id || prev_hash != head_hash) {
        problem = Some(VerifyProblem {
            entry_id: expected_id,
            kind: "truncated",
            message: format!(
                "the chain ends at entry {} but the head records entry {head_id}: entries after it were deleted",
                expected_id - 1
            ),
        });
    }
    Ok(VerifyReport {
        entries: count,
        head_id,
        head_hash,
        problem,
    })
}
