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
