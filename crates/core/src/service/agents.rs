//! Agents: identity and lifecycle (active -> suspended -> active, or ->
//! decommissioning -> decommissioned, with the address tombstoned).

use super::credentials::{IssuedCredential, insert_credential};
use super::{Ctx, Page, PrincipalKind, Service, clean_text, opt_rfc3339, page_limit, paginate};
use crate::address::AgentAddress;
use crate::error::{Error, Result, is_unique_violation};
use crate::ids::{AgentId, PolicyId};
use crate::secret::CredentialKind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Active,
    Suspended,
    /// Credentials revoked, export being written; mail is refused.
    Decommissioning,
    Decommissioned,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
            AgentStatus::Decommissioning => "decommissioning",
            AgentStatus::Decommissioned => "decommissioned",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AgentStatus::Active),
            "suspended" => Some(AgentStatus::Suspended),
            "decommissioning" => Some(AgentStatus::Decommissioning),
            "decommissioned" => Some(AgentStatus::Decommissioned),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Agent {
    pub id: AgentId,
    pub address: String,
    pub display_name: Option<String>,
    /// The accountable human.
    pub sponsor: String,
    pub description: Option<String>,
    pub policy_id: Option<PolicyId>,
    pub status: AgentStatus,
    pub created_at: String,
    pub updated_at: String,
    pub decommissioned_at: Option<String>,
    #[serde(skip)]
    pub created_at_micros: i64,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Full address; its domain must be one of the organisation's domains.
    pub address: Option<String>,
    /// Local part on the default domain, instead of `address`.
    pub local_part: Option<String>,
    pub display_name: Option<String>,
    /// Email of the accountable human. Required.
    pub sponsor: Option<String>,
    pub description: Option<String>,
    pub policy_id: Option<String>,
    /// Scopes of the first token; default `mail.read mail.draft mail.send calendar.read calendar.write`.
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    pub display_name: Option<String>,
    pub sponsor: Option<String>,
    pub description: Option<String>,
    /// Set to a policy id, or `null`... use an empty string to fall back to the default policy.
    pub policy_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decommissioned {
    pub agent: Agent,
    pub export: super::ExportInfo,
    pub credentials_revoked: i64,
    pub tombstoned_until: String,
}

const AGENT_COLUMNS: &str = "id, address, display_name, sponsor, description, policy_id, status, created_at, updated_at, decommissioned_at";

fn agent_from_row(row: &sqlx::any::AnyRow) -> Result<Agent> {
    let status: String = row.try_get("status")?;
    let created: i64 = row.try_get("created_at")?;
    Ok(Agent {
        id: AgentId(row.try_get("id")?),
        address: row.try_get("address")?,
        display_name: row.try_get("display_name")?,
        sponsor: row.try_get("sponsor")?,
        description: row.try_get("description")?,
        policy_id: row.try_get::<Option<String>, _>("policy_id")?.map(PolicyId),
        status: AgentStatus::parse(&status)
            .ok_or_else(|| Error::Internal(format!("unknown agent status {status}")))?,
        created_at: crate::clock::to_rfc3339(created),
        updated_at: crate::clock::to_rfc3339(row.try_get("updated_at")?),
        decommissioned_at: opt_rfc3339(row.try_get("decommissioned_at")?),
        created_at_micros: created,
    })
}

/// Sponsors are humans reachable by mail: approver tokens are matched to
/// them by address.
fn parse_sponsor(value: Option<String>) -> Result<String> {
    let s = clean_text("sponsor", value, 254)?.ok_or_else(|| {
        Error::invalid(
            "sponsor",
            "is required: the email of the human accountable for this agent",
        )
    })?;
    match s.rsplit_once('@') {
        Some((l, d)) if !l.is_empty() && d.contains('.') && !s.contains(char::is_whitespace) => {
            Ok(s)
        }
        _ => Err(Error::invalid(
            "sponsor",
            "must be the email address of a human",
        )),
    }
}

impl Service {
    pub(crate) async fn load_agent(&self, id: &AgentId) -> Result<Option<Agent>> {
        let q = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(q))
            .bind(id.as_str())
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// May: the data boundary. An agent sees only itself, an approver the
    /// agents it sponsors, an admin all. Anything else is *not found*, so ids
    /// of other agents do not leak.
    pub(crate) async fn visible_agent(&self, ctx: &Ctx, id: &str) -> Result<Agent> {
        let not_found = || Error::not_found("agent");
        let id = AgentId::parse(id).ok_or_else(not_found)?;
        let p = &ctx.principal;
        if p.kind == PrincipalKind::Agent && p.agent_id.as_ref() != Some(&id) {
            return Err(not_found());
        }
        let agent = self.load_agent(&id).await?.ok_or_else(not_found)?;
        if p.kind == PrincipalKind::Approver
            && !p
                .subject
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(&agent.sponsor))
        {
            return Err(not_found());
        }
        Ok(agent)
    }

    pub async fn get_agent(&self, ctx: &Ctx, id: &str) -> Result<Agent> {
        self.visible_agent(ctx, id).await
    }

    pub async fn create_agent(
        &self,
        ctx: &Ctx,
        new: NewAgent,
    ) -> Result<(Agent, IssuedCredential)> {
        self.require_admin(ctx, "agent.create", None).await?;
        let address = match (&new.address, &new.local_part) {
            (Some(a), None) => AgentAddress::parse(a, "address")?,
            (None, Some(l)) => {
                AgentAddress::from_parts(l, &self.default_domain().await?, "local_part")?
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "address",
                    "give either address or local_part, not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid(
                    "address",
                    "is required (or local_part on the default domain)",
                ));
            }
        };
        let address_field = if new.address.is_some() {
            "address"
        } else {
            "local_part"
        };
        let sponsor = parse_sponsor(new.sponsor)?;
        let display_name = clean_text("display_name", new.display_name, 200)?;
        let description = clean_text("description", new.description, 2000)?;
        let scopes = super::credentials::parse_scopes(new.scopes)?;
        let now = self.now();

        let domain: Option<(String,)> = sqlx::query_as("SELECT id FROM domains WHERE name = $1")
            .bind(address.domain())
            .fetch_optional(&self.db.pool)
            .await?;
        let Some((domain_id,)) = domain else {
            return Err(Error::invalid(
                address_field,
                format!(
                    "domain '{}' is not one of this organisation's domains; add it with POST /v1/domains",
                    address.domain()
                ),
            ));
        };
        let policy_id = self.check_policy(new.policy_id.as_deref()).await?;

        let mut tx = self.db.begin_write().await?;
        let tomb: Option<(i64,)> =
            sqlx::query_as("SELECT until_at FROM tombstones WHERE address_key = $1")
                .bind(address.key())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((until,)) = tomb {
            if until > now {
                return Err(Error::conflict_on(
                    "address-tombstoned",
                    address_field,
                    format!(
                        "{address} belonged to a decommissioned agent and is held until {}; choose another address",
                        crate::clock::to_rfc3339(until)
                    ),
                ));
            }
            sqlx::query("DELETE FROM tombstones WHERE address_key = $1")
                .bind(address.key())
                .execute(&mut *tx)
                .await?;
        }
        let id = AgentId::new();
        let org = self.org_id(&mut tx).await?;
        let inserted = sqlx::query(
            "INSERT INTO agents (id, org_id, address, address_key, domain_id, display_name, sponsor, description, \
             policy_id, status, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'active',$10,$10)",
        )
        .bind(id.as_str())
        .bind(&org)
        .bind(address.to_string())
        .bind(address.key())
        .bind(&domain_id)
        .bind(display_name.clone())
        .bind(&sponsor)
        .bind(description.clone())
        .bind(policy_id.clone())
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                Error::conflict_on(
                    "address-taken",
                    address_field,
                    format!("{address} is already an agent's address"),
                )
            } else {
                e.into()
            });
        }
        let issued = insert_credential(
            self,
            &mut tx,
            ctx,
            CredentialKind::Agent,
            Some(&id),
            "default",
            None,
            &scopes,
            None,
        )
        .await?;
        let entry = self.entry(
            ctx,
            "agent.create",
            Some("agent"),
            Some(id.0.clone()),
            Some(id.0.clone()),
            "success",
            json!({ "address": address.to_string(), "sponsor": sponsor, "token": issued.credential.id }),
        );
        let event = json!({ "agent_id": id, "address": address.to_string(), "sponsor": sponsor });
        self.record(&mut tx, &entry, Some(("agent.created", event)))
            .await?;
        let token_entry = self.entry(
            ctx,
            "token.create",
            Some("credential"),
            Some(issued.credential.id.clone()),
            Some(id.0.clone()),
            "success",
            json!({ "scopes": scopes, "credential": issued.credential.hint }),
        );
        self.record(
            &mut tx,
            &token_entry,
            Some((
                "token.created",
                json!({ "credential_id": issued.credential.id, "agent_id": id }),
            )),
        )
        .await?;
        tx.commit().await?;
        let agent = self
            .load_agent(&id)
            .await?
            .ok_or_else(|| Error::Internal("agent vanished".into()))?;
        Ok((agent, issued))
    }

    /// The organisation's default domain, chosen at first start.
    async fn default_domain(&self) -> Result<String> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT name FROM domains WHERE is_default = 1 LIMIT 1")
                .fetch_optional(&self.db.pool)
                .await?;
        row.map(|r| r.0).ok_or_else(|| {
            Error::invalid(
                "local_part",
                "there is no default domain; give a full address",
            )
        })
    }

    pub(crate) async fn check_policy(&self, policy_id: Option<&str>) -> Result<Option<String>> {
        let Some(pid) = policy_id.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM policies WHERE id = $1")
            .bind(pid)
            .fetch_optional(&self.db.pool)
            .await?;
        exists
            .map(|r| Some(r.0))
            .ok_or_else(|| Error::invalid("policy_id", format!("no policy with id '{pid}'")))
    }

    pub async fn list_agents(
        &self,
        ctx: &Ctx,
        status: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Agent>> {
        let limit = page_limit(limit)?;
        let status = match status {
            Some(s) => Some(AgentStatus::parse(s).ok_or_else(|| {
                Error::invalid(
                    "status",
                    "must be active, suspended, decommissioning or decommissioned",
                )
            })?),
            None => None,
        };
        let p = &ctx.principal;
        let mut sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id > $1");
        let mut binds: Vec<String> = vec![cursor.unwrap_or("").to_string()];
        if let Some(s) = status {
            binds.push(s.as_str().into());
            sql.push_str(&format!(" AND status = ${}", binds.len()));
        }
        match p.kind {
            PrincipalKind::Admin | PrincipalKind::System => {}
            PrincipalKind::Agent => {
                binds.push(p.agent_id.as_ref().map(|a| a.0.clone()).unwrap_or_default());
                sql.push_str(&format!(" AND id = ${}", binds.len()));
            }
            PrincipalKind::Approver => {
                binds.push(p.subject.clone().unwrap_or_default().to_lowercase());
                sql.push_str(&format!(" AND lower(sponsor) = ${}", binds.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.clone());
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        let agents = rows
            .iter()
            .map(agent_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(agents, limit, |a| a.id.0.clone()))
    }

    pub async fn update_agent(&self, ctx: &Ctx, id: &str, patch: AgentPatch) -> Result<Agent> {
        let agent = self.visible_agent(ctx, id).await?;
        self.require_admin(ctx, "agent.update", Some(id)).await?;
        if agent.status == AgentStatus::Decommissioned
            || agent.status == AgentStatus::Decommissioning
        {
            return Err(Error::conflict(
                "agent-decommissioned",
                "a decommissioned agent cannot be changed",
            ));
        }
        let mut changes = serde_json::Map::new();
        let display_name = match patch.display_name {
            Some(v) => {
                let v = clean_text("display_name", Some(v), 200)?;
                changes.insert("display_name".into(), json!(v));
                v
            }
            None => agent.display_name.clone(),
        };
        let sponsor = match patch.sponsor {
            Some(v) => {
                let v = parse_sponsor(Some(v))?;
                changes.insert("sponsor".into(), json!(v));
                v
            }
            None => agent.sponsor.clone(),
        };
        let description = match patch.description {
            Some(v) => {
                let v = clean_text("description", Some(v), 2000)?;
                changes.insert("description".into(), json!(v));
                v
            }
            None => agent.description.clone(),
        };
        let policy_id = match patch.policy_id {
            Some(v) => {
                let v = self.check_policy(Some(&v)).await?;
                changes.insert("policy_id".into(), json!(v));
                v
            }
            None => agent.policy_id.as_ref().map(|p| p.0.clone()),
        };
        if changes.is_empty() {
            return Ok(agent);
        }
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE agents SET display_name = $1, sponsor = $2, description = $3, policy_id = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(display_name)
        .bind(sponsor)
        .bind(description)
        .bind(policy_id)
        .bind(self.now())
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await?;
        let changes = serde_json::Value::Object(changes);
        let entry = self.entry(
            ctx,
            "agent.update",
            Some("agent"),
            Some(agent.id.0.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "changes": changes }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "agent.updated",
                json!({ "agent_id": agent.id, "changes": changes }),
            )),
        )
        .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();
        self.load_agent(&agent.id)
            .await?
            .ok_or_else(|| Error::not_found("agent"))
    }

    pub async fn suspend_agent(&self, ctx: &Ctx, id: &str) -> Result<Agent> {
        self.set_status(
            ctx,
            id,
            AgentStatus::Active,
            AgentStatus::Suspended,
            "agent.suspend",
            "agent.suspended",
        )
        .await
    }

    pub async fn resume_agent(&self, ctx: &Ctx, id: &str) -> Result<Agent> {
        self.set_status(
            ctx,
            id,
            AgentStatus::Suspended,
            AgentStatus::Active,
            "agent.resume",
            "agent.resumed",
        )
        .await
    }

    async fn set_status(
        &self,
        ctx: &Ctx,
        id: &str,
        from: AgentStatus,
        to: AgentStatus,
        action: &'static str,
        event: &'static str,
    ) -> Result<Agent> {
        let agent = self.visible_agent(ctx, id).await?;
        self.require_admin(ctx, action, Some(id)).await?;
        if agent.status == to {
            return Ok(agent);
        }
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE agents SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(self.now())
        .bind(agent.id.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::conflict(
                "invalid-status",
                format!(
                    "agent is {}; only a {} agent can be {}",
                    agent.status.as_str(),
                    from.as_str(),
                    to.as_str()
                ),
            ));
        }
        let entry = self.entry(
            ctx,
            action,
            Some("agent"),
            Some(agent.id.0.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "from": agent.status, "to": to }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((event, json!({ "agent_id": agent.id, "status": to }))),
        )
        .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();
        self.load_agent(&agent.id)
            .await?
            .ok_or_else(|| Error::not_found("agent"))
    }

    /// Revokes every credential, writes the export, purges the data and
    /// tombstones the address. Two transactions with the export between
    /// them: the first stops all access (status `decommissioning`), so the
    /// export cannot miss anything; calling again after a crash resumes.
    pub async fn decommission_agent(&self, ctx: &Ctx, id: &str) -> Result<Decommissioned> {
        let agent = self.visible_agent(ctx, id).await?;
        self.require_admin(ctx, "agent.decommission", Some(id))
            .await?;
        if agent.status == AgentStatus::Decommissioned {
            return Err(Error::conflict(
                "agent-decommissioned",
                "this agent is already decommissioned",
            ));
        }
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE agents SET status = 'decommissioning', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent.id.as_str())
            .execute(&mut *tx)
            .await?;
        let revoked = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        // App passwords are credentials too; drafts go, and a send still
        // waiting for a human can no longer be confirmed.
        let app_passwords = sqlx::query(
            "UPDATE app_passwords SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        let revoked = revoked + app_passwords;
        sqlx::query(
            "UPDATE sends SET status = 'voided', reason = 'the agent was decommissioned', completed_at = $1 \
             WHERE agent_id = $2 AND status = 'pending_confirmation'",
        )
        .bind(now)
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM drafts WHERE agent_id = $1")
            .bind(agent.id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();

        let export = self.write_export(&agent).await?;

        let until = now + self.cfg.tombstone_days * 86_400 * 1_000_000;
        let address_key = agent.address.to_lowercase();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO tombstones (address_key, agent_id, until_at) VALUES ($1, $2, $3) \
             ON CONFLICT (address_key) DO UPDATE SET agent_id = excluded.agent_id, until_at = excluded.until_at",
        )
        .bind(&address_key)
        .bind(agent.id.as_str())
        .bind(until)
        .execute(&mut *tx)
        .await?;
        self.purge_agent_data(&mut tx, &agent.id).await?;
        sqlx::query("UPDATE agents SET status = 'decommissioned', decommissioned_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent.id.as_str())
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "agent.decommission",
            Some("agent"),
            Some(agent.id.0.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "credentials_revoked": revoked, "export_id": export.id, "export_sha256": export.sha256, "tombstoned_until": crate::clock::to_rfc3339(until) }),
        );
        let event =
            json!({ "agent_id": agent.id, "address": agent.address, "export_id": export.id });
        self.record(&mut tx, &entry, Some(("agent.decommissioned", event)))
            .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();
        let agent = self
            .load_agent(&agent.id)
            .await?
            .ok_or_else(|| Error::not_found("agent"))?;
        Ok(Decommissioned {
            agent,
            export,
            credentials_revoked: revoked,
            tombstoned_until: crate::clock::to_rfc3339(until),
        })
    }

    /// Deletes what the agent owned: its mailbox (blobs nothing else
    /// references are collected once this transaction commits).
    async fn purge_agent_data(&self, tx: &mut crate::store::Tx, agent: &AgentId) -> Result<()> {
        self.purge_mailbox(tx, agent).await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE principal IN (SELECT id FROM credentials WHERE agent_id = $1)")
            .bind(agent.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(crate) async fn org_id(&self, tx: &mut crate::store::Tx) -> Result<String> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM organisations ORDER BY created_at LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?;
        row.map(|r| r.0).ok_or_else(|| {
            Error::Internal(
                "not initialised: run `agentpost init` or start `agentpost serve` once".into(),
            )
        })
    }
}
