//! Reading and verifying the audit trail.

use super::{Ctx, Page, Service, page_limit, paginate, parse_time};
use crate::audit::{AuditEntry, COLUMNS, VerifyReport};
use crate::error::{Error, Result};
use serde::Deserialize;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this agent.
    pub agent_id: Option<String>,
    /// Exact action, e.g. `agent.create`.
    pub action: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    pub since: Option<String>,
    /// RFC 3339 upper bound (exclusive).
    pub until: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    pub order: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

impl Service {
    pub async fn list_audit(&self, ctx: &Ctx, q: AuditQuery) -> Result<Page<AuditEntry>> {
        self.require_admin(ctx, "audit.read", None).await?;
        self.query_audit(q).await
    }

    /// An agent's own trail: admins for any agent, an agent for itself.
    pub async fn list_agent_audit(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        mut q: AuditQuery,
    ) -> Result<Page<AuditEntry>> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        q.agent_id = Some(agent.id.0);
        self.query_audit(q).await
    }

    async fn query_audit(&self, q: AuditQuery) -> Result<Page<AuditEntry>> {
        let limit = page_limit(q.limit)?;
        let desc = match q.order.as_deref() {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => return Err(Error::invalid("order", "must be asc or desc")),
        };
        let cursor = q
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| Error::invalid("cursor", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let since = parse_time("since", q.since.as_deref())?;
        let until = parse_time("until", q.until.as_deref())?;
        let mut conds = vec![];
        let mut ints: Vec<(usize, i64)> = vec![];
        let mut texts: Vec<(usize, String)> = vec![];
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(c) = cursor {
            let i = next();
            conds.push(format!("id {} ${i}", if desc { "<" } else { ">" }));
            ints.push((i, c));
        }
        if let Some(a) = q.agent_id {
            let i = next();
            conds.push(format!("agent_id = ${i}"));
            texts.push((i, a));
        }
        if let Some(a) = q.action {
            let i = next();
            conds.push(format!("action = ${i}"));
            texts.push((i, a));
        }
        if let Some(s) = since {
            let i = next();
            conds.push(format!("at >= ${i}"));
            ints.push((i, s));
        }
        if let Some(u) = until {
            let i = next();
            conds.push(format!("at < ${i}"));
            ints.push((i, u));
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log {where_} ORDER BY id {} LIMIT {}",
            if desc { "DESC" } else { "ASC" },
            limit + 1
        );
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Result<i64, String>)> =
            ints.into_iter().map(|(i, v)| (i, Ok(v))).collect();
        binds.extend(texts.into_iter().map(|(i, v)| (i, Err(v))));
        binds.sort_by_key(|b| b.0);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (_, b) in binds {
            query = match b {
                Ok(i) => query.bind(i),
                Err(s) => query.bind(s),
            };
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let entries = rows
            .iter()
            .map(|r| crate::audit::from_row(r).map(|(e, _, _)| e))
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(entries, limit, |e| e.id.to_string()))
    }

    /// Walks the whole chain (offline CLI and admin API).
    pub async fn verify_audit(&self, ctx: &Ctx) -> Result<VerifyReport> {
        self.require_admin(ctx, "audit.verify", None).await?;
        crate::audit::verify(&self.db.pool).await
    }
}
