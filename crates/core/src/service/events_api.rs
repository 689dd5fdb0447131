//! Reading the event log: pages after an id (polling) and the waiting a
//! stream needs. Event ids commit in order (see `events::emit`), so a reader
//! that resumes after id N sees every later event exactly once.
//! Admins read every event; an agent token only its own agent's.

use super::{Ctx, PrincipalKind, Service, page_limit};
use crate::error::{Error, Result};
use crate::events::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use std::time::Duration;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Events with ids greater than this (default 0: from the start).
    pub after: Option<i64>,
    /// Comma-separated types or patterns: `agent.*,message.received`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only this agent's events (an agent token always gets only its own).
    pub agent_id: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub data: Vec<Event>,
    /// Pass as `after` to continue: the last id returned, or the `after`
    /// given when nothing new has happened yet.
    pub last_id: i64,
}

impl Service {
    /// A page of events after `q.after`, oldest first.
    pub async fn list_events(&self, ctx: &Ctx, q: &EventQuery) -> Result<EventPage> {
        let limit = page_limit(q.limit)?;
        let after = q.after.unwrap_or(0);
        if after < 0 {
            return Err(Error::invalid("after", "must be an event id (0 or more)"));
        }
        let p = &ctx.principal;
        let agent = match (p.kind, &q.agent_id) {
            (PrincipalKind::Admin | PrincipalKind::System, None) => None,
            (PrincipalKind::Agent, None) => p.agent_id.as_ref().map(|a| a.0.clone()),
            (PrincipalKind::Approver, None) => {
                return Err(Error::invalid(
                    "agent_id",
                    "approvers read the events of one agent they sponsor: pass agent_id",
                ));
            }
            // The data boundary: another agent's id answers *not found*.
            (_, Some(id)) => Some(self.visible_agent(ctx, id).await?.id.0),
        };
        let mut patterns = vec![];
        if let Some(k) = &q.kind {
            for t in k.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !super::webhooks::valid_type_pattern(t) {
                    return Err(Error::invalid(
                        "type",
                        format!("'{t}' is not an event type or pattern (e.g. agent.*)"),
                    ));
                }
                patterns.push(t.to_string());
            }
        }
        let mut sql = String::from("SELECT id, type, at, agent_id, data FROM events WHERE id > $1");
        let mut n = 1;
        if agent.is_some() {
            n += 1;
            sql.push_str(&format!(" AND agent_id = ${n}"));
        }
        let mut binds: Vec<String> = vec![];
        if !patterns.is_empty() && !patterns.iter().any(|p| p == "*") {
            let mut ors = vec![];
            for p in &patterns {
                n += 1;
                match p.strip_suffix('*') {
                    Some(prefix) => {
                        ors.push(format!("SUBSTR(type, 1, {}) = ${n}", prefix.len()));
                        binds.push(prefix.to_string());
                    }
                    None => {
                        ors.push(format!("type = ${n}"));
                        binds.push(p.clone());
                    }
                }
            }
            sql.push_str(&format!(" AND ({})", ors.join(" OR ")));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after);
        if let Some(a) = agent {
            query = query.bind(a);
        }
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut data = Vec::with_capacity(rows.len());
        for r in &rows {
            let raw: String = r.try_get("data")?;
            data.push(Event {
                id: r.try_get("id")?,
                kind: r.try_get("type")?,
                at: crate::clock::to_rfc3339(r.try_get("at")?),
                agent_id: r.try_get("agent_id")?,
                data: serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
            });
        }
        let last_id = data.last().map(|e| e.id).unwrap_or(after);
        Ok(EventPage { data, last_id })
    }

    /// For streams: waits until new events may have committed (a local
    /// commit, a PostgreSQL notification from another node) or `max` passes.
    pub async fn wait_for_events(&self, max: Duration) {
        super::webhooks::wait_for_events(max).await
    }

    /// True once the server is shutting down; streams end so clients resume.
    pub fn streams_closing(&self) -> bool {
        super::webhooks::streams_closing()
    }
}
