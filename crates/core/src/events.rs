//! Events: one per state change, written in the same transaction as the
//! change. Ids come from the audit head under its lock, so they commit in
//! id order and a reader resuming after id N never misses one.

use crate::error::Result;
use crate::store::Tx;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub agent_id: Option<String>,
    pub data: Value,
}

pub(crate) async fn emit(
    tx: &mut Tx,
    at: i64,
    kind: &str,
    agent_id: Option<&str>,
    data: &Value,
) -> Result<i64> {
    let row = sqlx::query("UPDATE audit_head SET last_event_id = last_event_id + 1 WHERE id = 1 RETURNING last_event_id")
        .fetch_one(&mut **tx)
        .await?;
    let id: i64 = row.try_get(0)?;
    sqlx::query("INSERT INTO events (id, type, at, agent_id, data) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(kind)
        .bind(at)
        .bind(agent_id.map(str::to_string))
        .bind(data.to_string())
        .execute(&mut **tx)
        .await?;
    // Webhooks: one delivery per matching endpoint, committed with the event.
    crate::service::webhooks::fan_out(tx, id, kind, agent_id, at).await?;
    Ok(id)
}

/// Emits several events inside `tx`, in order: the same ids, rows and
/// webhook deliveries as calling [`emit`] for each, with one id allocation
/// and multi-row inserts (group commit of inbound mail).
pub(crate) async fn emit_many(
    tx: &mut Tx,
    at: i64,
    events: &[(&str, Option<&str>, &Value)],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let row = sqlx::query(
        "UPDATE audit_head SET last_event_id = last_event_id + $1 WHERE id = 1 RETURNING last_event_id",
    )
    .bind(events.len() as i64)
    .fetch_one(&mut **tx)
    .await?;
    let last: i64 = row.try_get(0)?;
    let first = last - events.len() as i64 + 1;
    let dialect = crate::store::Dialect::of(tx);
    for (c, chunk) in events.chunks(100).enumerate() {
        let sql = format!(
            "INSERT INTO events (id, type, at, agent_id, data) VALUES {}",
            crate::store::value_groups(dialect, chunk.len(), 5, crate::store::parenthesised)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, (kind, agent_id, data)) in chunk.iter().enumerate() {
            q = q
                .bind(first + (c * 100 + i) as i64)
                .bind(kind.to_string())
                .bind(at)
                .bind(agent_id.map(str::to_string))
                .bind(data.to_string());
        }
        q.execute(&mut **tx).await?;
    }
    // Webhook deliveries per event only when an endpoint exists; otherwise
    // one call still notifies the other nodes and the local worker.
    let endpoints: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM webhook_endpoints WHERE enabled = 1 AND deleted_at IS NULL LIMIT 1",
    )
    .fetch_optional(&mut **tx)
    .await?;
    if endpoints.is_some() {
        for (i, (kind, agent_id, _)) in events.iter().enumerate() {
            crate::service::webhooks::fan_out(tx, first + i as i64, kind, *agent_id, at).await?;
        }
    } else {
        let (kind, agent_id, _) = &events[events.len() - 1];
        crate::service::webhooks::fan_out(tx, last, kind, *agent_id, at).await?;
    }
    Ok(())
}
