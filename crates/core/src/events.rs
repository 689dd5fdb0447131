//! Events: one per state change, written in the same transaction as the
//! change. Ids come from the audit head under its lock, so they commit in
//! id order and a reader resuming after id N never misses one.

use crate::audit::{Head, NewEntry};
use crate::error::Result;
use crate::store::{Dialect, Tx, WriteBatch};
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

/// Writes a transaction's audit entries and then its events, in order,
/// after the statements `batch` already holds, in two queries (see
/// [`WriteBatch`]): the same chain, ids, rows and webhook deliveries as
/// calling [`crate::audit::append`] and [`emit`] for each, continuing from
/// `head` (from [`crate::audit::read_head`] inside `tx`). Each event's data
/// is its JSON, serialised by the caller. Group commits of inbound mail and
/// of sends end here.
pub(crate) async fn record(
    tx: &mut Tx,
    mut batch: WriteBatch,
    mut head: Head,
    at: i64,
    entries: &[NewEntry],
    mut events: Vec<(&str, Option<&str>, String)>,
) -> Result<()> {
    crate::audit::push_entries(&mut batch, &mut head, at, entries);
    // On SQLite the events and the head go as a second query: its
    // statement cache keys a multi-statement query by its whole text, and a
    // send commit's mix of audit entries and events takes so many shapes
    // that one query for both kept missing the cache (more CPU per send).
    // PostgreSQL's one statement costs a round trip, the scarcer thing there.
    let dialect = batch.dialect();
    if dialect == Dialect::Sqlite {
        batch.execute(tx).await?;
        batch = WriteBatch::new(dialect);
    }
    let first = head.last_event_id + 1;
    for chunk in events.chunks_mut(100) {
        let sql = format!(
            "INSERT INTO events (id, type, at, agent_id, data) VALUES {}",
            crate::store::value_groups(dialect, chunk.len(), 5, crate::store::parenthesised)
        );
        batch.push(&sql);
        for (kind, agent_id, data) in chunk {
            head.last_event_id += 1;
            batch
                .bind(head.last_event_id)
                .bind(kind.to_string())
                .bind(at)
                .bind(agent_id.map(str::to_string))
                .bind(std::mem::take(data));
        }
    }
    if !entries.is_empty() || !events.is_empty() {
        crate::audit::push_head(&mut batch, &head);
    }
    // Webhook deliveries per event only when an endpoint exists; otherwise
    // the stream readers of every node are still told, on PostgreSQL by the
    // batch's last statement.
    let told = !events.is_empty() && !head.webhooks;
    if told {
        crate::service::webhooks::push_notify_streams(&mut batch);
    }
    batch.execute(tx).await?;
    if told {
        crate::service::webhooks::wake_streams();
    } else if !events.is_empty() {
        for (i, (kind, agent_id, _)) in events.iter().enumerate() {
            crate::service::webhooks::fan_out(tx, first + i as i64, kind, *agent_id, at).await?;
        }
    }
    Ok(())
}
