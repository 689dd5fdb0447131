//! Removing mail: the retention sweeper (inbox and trash after
//! `inbox_retention_days`, spam after `spam_retention_days`, counted from
//! when the message entered its folder), the purge of one agent's mailbox
//! at decommission with its export, and the collection of blobs nothing
//! references any more.
//!
//! Blob collection runs under the org write lock and re-checks references
//! there; the inbound committer checks that its blob exists under the same
//! lock (and rewrites it if it was collected meanwhile), so collecting can
//! never take a blob from a message that is being committed.

use super::Service;
use super::read::DetailView;
use crate::audit::{Actor, NewEntry};
use crate::error::Result;
use crate::ids::AgentId;
use crate::service::Agent;
use crate::store::{Db, Tx};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// Messages purged per transaction: keeps the write lock short.
const PURGE_CHUNK: usize = 200;
const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// Every place that may reference a blob. A new table that stores blob
/// hashes must be added here, or its blobs will be collected.
const BLOB_REFERENCES: &str = "SELECT 1 FROM messages WHERE blob_hash = $1 UNION ALL SELECT 1 FROM exports WHERE blob_hash = $1 \
     UNION ALL SELECT 1 FROM sends WHERE blob_hash = $1";

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RetentionReport {
    /// Mailbox entries removed because their folder's retention expired.
    pub expired: u64,
    /// Blobs removed because nothing referenced them.
    pub blobs_removed: u64,
}

fn marks(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes the blobs among `hashes` that nothing references, under the
/// write lock. Returns how many were removed.
pub(crate) async fn collect_blobs(db: &Db, hashes: &[String]) -> Result<u64> {
    let mut removed = 0;
    for chunk in hashes.chunks(PURGE_CHUNK) {
        let mut tx = db.begin_write().await?;
        for h in chunk {
            let referenced: Option<(i64,)> = sqlx::query_as(BLOB_REFERENCES)
                .bind(h)
                .fetch_optional(&mut *tx)
                .await?;
            if referenced.is_none() {
                db.blobs.delete(&mut tx, h).await?;
                removed += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(removed)
}

impl Service {
    /// Deletes the agent's entries for `ids` (labels, usage, emptied
    /// threads) and the messages no mailbox files any more. Returns the
    /// blob hashes that may now be unreferenced: pass them to
    /// `collect_blobs` after the commit.
    pub(crate) async fn purge_entries(
        &self,
        tx: &mut Tx,
        agent_id: &str,
        ids: &[String],
    ) -> Result<Vec<String>> {
        let mut orphans = vec![];
        for chunk in ids.chunks(PURGE_CHUNK) {
            let m = marks(2, chunk.len());
            let bind_all = |sql: String| {
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(agent_id.to_string());
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q
            };
            let rows = bind_all(format!(
                "SELECT message_id, thread_id, size_bytes FROM mailbox_entries WHERE agent_id = $1 AND message_id IN ({m})"
            ))
            .fetch_all(&mut **tx)
            .await?;
            if rows.is_empty() {
                continue;
            }
            let mut bytes = 0i64;
            let mut threads: Vec<String> = vec![];
            for r in &rows {
                bytes += r.try_get::<i64, _>("size_bytes")?;
                let t: String = r.try_get("thread_id")?;
                if !threads.contains(&t) {
                    threads.push(t);
                }
            }
            bind_all(format!(
                "DELETE FROM message_labels WHERE agent_id = $1 AND message_id IN ({m})"
            ))
            .execute(&mut **tx)
            .await?;
            bind_all(format!(
                "DELETE FROM mailbox_entries WHERE agent_id = $1 AND message_id IN ({m})"
            ))
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE mailbox_usage SET bytes = bytes - $2, messages = messages - $3 WHERE agent_id = $1")
                .bind(agent_id)
                .bind(bytes)
                .bind(rows.len() as i64)
                .execute(&mut **tx)
                .await?;
            for t in &threads {
                // A thread and its entries share their agent: with it, the
                // check is an index probe, not a scan of every mailbox.
                sqlx::query(
                    "DELETE FROM threads WHERE agent_id = $1 AND id = $2 \
                     AND NOT EXISTS (SELECT 1 FROM mailbox_entries e WHERE e.agent_id = $1 AND e.thread_id = $2)",
                )
                .bind(agent_id)
                .bind(t)
                    .execute(&mut **tx)
                    .await?;
            }
            let gone = {
                let sql = format!(
                    "SELECT id, seq, blob_hash FROM messages WHERE id IN ({}) AND NOT EXISTS \
                     (SELECT 1 FROM mailbox_entries e WHERE e.message_id = messages.id)",
                    marks(1, chunk.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q.fetch_all(&mut **tx).await?
            };
            for r in &gone {
                let id: String = r.try_get("id")?;
                let seq: i64 = r.try_get("seq")?;
                sqlx::query("DELETE FROM message_search WHERE rowid = $1")
                    .bind(seq)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("DELETE FROM messages WHERE id = $1")
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                let h: String = r.try_get("blob_hash")?;
                if !orphans.contains(&h) {
                    orphans.push(h);
                }
            }
        }
        Ok(orphans)
    }

    /// Deletes what expired under each agent's retention policy, then the
    /// blobs nothing references (including those a crash left behind).
    /// Every node may run it; the work is idempotent.
    pub async fn sweep_retention(&self) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let agents = sqlx::query(
            "SELECT a.id, a.policy_id FROM agents a WHERE EXISTS (SELECT 1 FROM mailbox_entries e WHERE e.agent_id = a.id) ORDER BY a.id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        for a in &agents {
            let agent_id: String = a.try_get("id")?;
            let policy_id: Option<String> = a.try_get("policy_id")?;
            let policy = super::mailbox_policy(&self.db.pool, policy_id.as_deref()).await?;
            let now = self.now();
            let rules = [
                ("folder IN ('inbox', 'trash')", policy.inbox_retention_days),
                ("folder = 'spam'", policy.spam_retention_days),
            ];
            for (cond, days) in rules {
                if days == 0 {
                    continue;
                }
                let cutoff = now - days * DAY_MICROS;
                loop {
                    let sql = format!(
                        "SELECT message_id FROM mailbox_entries WHERE agent_id = $1 AND {cond} AND folder_at < $2 ORDER BY folder_at LIMIT {PURGE_CHUNK}"
                    );
                    let ids: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(sql))
                        .bind(&agent_id)
                        .bind(cutoff)
                        .fetch_all(&self.db.pool)
                        .await?;
                    if ids.is_empty() {
                        break;
                    }
                    let ids: Vec<String> = ids.into_iter().map(|r| r.0).collect();
                    let mut tx = self.db.begin_write().await?;
                    let orphans = self.purge_entries(&mut tx, &agent_id, &ids).await?;
                    let entry = NewEntry {
                        actor: Actor {
                            kind: "system".into(),
                            id: None,
                            credential: None,
                        },
                        action: "mailbox.retention",
                        target_kind: Some("agent"),
                        target_id: Some(agent_id.clone()),
                        agent_id: Some(agent_id.clone()),
                        outcome: "success",
                        request_id: None,
                        source: Some("retention sweeper".into()),
                        details: json!({ "expired": ids.len(), "rule": cond, "retention_days": days, "message_ids": ids }),
                    };
                    let event =
                        json!({ "agent_id": agent_id, "expired": ids.len(), "message_ids": ids });
                    self.record(&mut tx, &entry, Some(("messages.expired", event)))
                        .await?;
                    tx.commit().await?;
                    report.expired += ids.len() as u64;
                    report.blobs_removed += collect_blobs(&self.db, &orphans).await?;
                    if ids.len() < PURGE_CHUNK {
                        break;
                    }
                }
            }
        }
        report.blobs_removed += self.collect_orphan_blobs().await?;
        Ok(report)
    }

    /// Blobs that no row references: left by a crash between the blob write
    /// and the commit, or by a purge whose collection was interrupted.
    async fn collect_orphan_blobs(&self) -> Result<u64> {
        let all = self.db.blobs.list(&self.db.pool).await?;
        let mut unreferenced = vec![];
        for h in all {
            let referenced: Option<(i64,)> = sqlx::query_as(BLOB_REFERENCES)
                .bind(&h)
                .fetch_optional(&self.db.pool)
                .await?;
            if referenced.is_none() {
                unreferenced.push(h);
            }
        }
        collect_blobs(&self.db, &unreferenced).await
    }

    /// Decommission: removes the whole mailbox inside the caller's
    /// transaction. The blobs are collected once that transaction commits
    /// (the collector waits for the write lock it holds, and re-checks).
    pub(crate) async fn purge_mailbox(&self, tx: &mut Tx, agent: &AgentId) -> Result<()> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT message_id FROM mailbox_entries WHERE agent_id = $1")
                .bind(agent.as_str())
                .fetch_all(&mut **tx)
                .await?;
        let ids: Vec<String> = ids.into_iter().map(|r| r.0).collect();
        let orphans = self.purge_entries(tx, agent.as_str(), &ids).await?;
        sqlx::query("DELETE FROM threads WHERE agent_id = $1")
            .bind(agent.as_str())
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM mailbox_usage WHERE agent_id = $1")
            .bind(agent.as_str())
            .execute(&mut **tx)
            .await?;
        if !orphans.is_empty() {
            let db = self.db.clone();
            tokio::spawn(async move {
                if let Err(e) = collect_blobs(&db, &orphans).await {
                    tracing::warn!(error = %e, "could not collect a purged mailbox's blobs; the retention sweep will");
                }
            });
        }
        Ok(())
    }

    /// (file stem, raw message, JSON metadata) for each message of the
    /// agent's mailbox, oldest first.
    pub(crate) async fn export_mailbox(
        &self,
        agent: &Agent,
    ) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>> {
        let ids: Vec<(String, i64)> =
            sqlx::query_as("SELECT message_id, received_at FROM mailbox_entries WHERE agent_id = $1 ORDER BY received_at, message_id")
                .bind(agent.id.as_str())
                .fetch_all(&self.db.pool)
                .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (i, (id, _)) in ids.iter().enumerate() {
            let detail = self.detail_of(agent, id, DetailView::Meta).await?;
            let hash: (String,) = sqlx::query_as("SELECT blob_hash FROM messages WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db.pool)
                .await?;
            let raw = self
                .db
                .blobs
                .get(&self.db.pool, &hash.0)
                .await?
                .ok_or_else(|| {
                    crate::Error::Internal(format!("message blob {} is missing", hash.0))
                })?;
            let meta = serde_json::to_vec_pretty(&detail).unwrap_or_default();
            out.push((format!("{:06}-{id}", i + 1), raw, meta));
        }
        Ok(out)
    }
}
