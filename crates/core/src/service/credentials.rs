//! Credentials: admin keys, agent tokens and approver tokens. Secrets are
//! shown once (in `IssuedCredential`) and stored only as SHA-256 hashes.

use super::{
    AGENT_SCOPES, Ctx, DEFAULT_AGENT_SCOPES, Page, Service, clean_text, hint_for, opt_rfc3339,
    page_limit, paginate,
};
use crate::error::{Error, Result};
use crate::ids::{AgentId, CredentialId};
use crate::secret::{self, CredentialKind, Secret};
use crate::store::Tx;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// What listings show: never the secret or its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CredentialInfo {
    pub id: String,
    pub kind: CredentialKind,
    pub name: String,
    /// Type prefix, e.g. `ap_agt_`.
    pub prefix: String,
    pub last4: String,
    /// `ap_agt_…abcd`.
    pub hint: String,
    pub agent_id: Option<String>,
    /// Approver tokens: the human's email.
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Set when rotated: the credential that replaces this one.
    pub replaced_by: Option<String>,
}

/// A new credential and its secret, shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedCredential {
    pub credential: CredentialInfo,
    /// The secret. Store it now: it is not shown again.
    pub secret: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// RFC 3339; omitted = no expiry.
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApprover {
    /// The approving human's email; they may confirm sends of agents they sponsor.
    pub email: Option<String>,
    pub name: Option<String>,
    pub expires_at: Option<String>,
}

const CRED_COLUMNS: &str = "id, kind, name, last4, agent_id, subject, scopes, created_at, last_used_at, expires_at, revoked_at, replaced_by";

fn info_from_row(row: &sqlx::any::AnyRow) -> Result<CredentialInfo> {
    let kind: String = row.try_get("kind")?;
    let kind = CredentialKind::parse(&kind)
        .ok_or_else(|| Error::Internal(format!("unknown credential kind {kind}")))?;
    let last4: String = row.try_get("last4")?;
    let scopes: String = row.try_get("scopes")?;
    Ok(CredentialInfo {
        id: row.try_get("id")?,
        kind,
        name: row.try_get("name")?,
        prefix: kind.prefix().into(),
        hint: hint_for(kind, &last4),
        last4,
        agent_id: row.try_get("agent_id")?,
        subject: row.try_get("subject")?,
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        created_at: crate::clock::to_rfc3339(row.try_get("created_at")?),
        last_used_at: opt_rfc3339(row.try_get("last_used_at")?),
        expires_at: opt_rfc3339(row.try_get("expires_at")?),
        revoked_at: opt_rfc3339(row.try_get("revoked_at")?),
        replaced_by: row.try_get("replaced_by")?,
    })
}

pub(crate) fn parse_scopes(scopes: Option<Vec<String>>) -> Result<Vec<String>> {
    let Some(scopes) = scopes else {
        return Ok(DEFAULT_AGENT_SCOPES.iter().map(|s| s.to_string()).collect());
    };
    if scopes.is_empty() {
        return Err(Error::invalid("scopes", "at least one scope is needed"));
    }
    let mut out: Vec<String> = vec![];
    for s in scopes {
        if !AGENT_SCOPES.contains(&s.as_str()) {
            return Err(Error::invalid(
                "scopes",
                format!("unknown scope '{s}'; known: {}", AGENT_SCOPES.join(" ")),
            ));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

fn parse_expiry(now: i64, value: Option<&str>) -> Result<Option<i64>> {
    let Some(t) = super::parse_time("expires_at", value)? else {
        return Ok(None);
    };
    if t <= now {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    Ok(Some(t))
}

/// Mints and stores a credential inside `tx`. The caller records the audit entry.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_credential(
    svc: &Service,
    tx: &mut Tx,
    ctx: &Ctx,
    kind: CredentialKind,
    agent: Option<&AgentId>,
    name: &str,
    subject: Option<&str>,
    scopes: &[String],
    expires_at: Option<i64>,
) -> Result<IssuedCredential> {
    let secret = Secret::generate(kind);
    let id = CredentialId::new();
    let now = svc.now();
    let org = svc.org_id(tx).await?;
    let last4 = secret::last4(secret.expose());
    sqlx::query(
        "INSERT INTO credentials (id, org_id, kind, agent_id, name, subject, secret_hash, last4, scopes, created_at, \
         created_by, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
    )
    .bind(id.as_str())
    .bind(org)
    .bind(kind.as_str())
    .bind(agent.map(|a| a.0.clone()))
    .bind(name)
    .bind(subject.map(str::to_string))
    .bind(secret::hash(secret.expose()))
    .bind(&last4)
    .bind(scopes.join(" "))
    .bind(now)
    .bind(ctx.principal.credential_id.as_ref().map(|c| c.0.clone()))
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(IssuedCredential {
        credential: CredentialInfo {
            id: id.0,
            kind,
            name: name.to_string(),
            prefix: kind.prefix().into(),
            hint: hint_for(kind, &last4),
            last4,
            agent_id: agent.map(|a| a.0.clone()),
            subject: subject.map(str::to_string),
            scopes: scopes.to_vec(),
            created_at: crate::clock::to_rfc3339(now),
            last_used_at: None,
            expires_at: opt_rfc3339(expires_at),
            revoked_at: None,
            replaced_by: None,
        },
        secret: secret.into_exposed(),
    })
}

fn token_name(name: Option<String>, default: &str) -> Result<String> {
    Ok(clean_text("name", name, 100)?.unwrap_or_else(|| default.to_string()))
}

impl Service {
    async fn load_credential(&self, id: &str) -> Result<Option<CredentialInfo>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        let q = format!("SELECT {CRED_COLUMNS} FROM credentials WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(info_from_row).transpose()
    }

    async fn list_credentials(
        &self,
        kind: CredentialKind,
        agent: Option<&AgentId>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<CredentialInfo>> {
        let limit = page_limit(limit)?;
        let q = format!(
            "SELECT {CRED_COLUMNS} FROM credentials WHERE kind = $1 AND id > $2 {} ORDER BY id LIMIT {}",
            if agent.is_some() {
                "AND agent_id = $3"
            } else {
                ""
            },
            limit + 1
        );
        let mut query = sqlx::query(AssertSqlSafe(q))
            .bind(kind.as_str())
            .bind(cursor.unwrap_or("").to_string());
        if let Some(a) = agent {
            query = query.bind(a.0.clone());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let items = rows.iter().map(info_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, limit, |c| c.id.clone()))
    }

    // ---- agent tokens ----

    pub async fn create_token(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        new: NewToken,
    ) -> Result<IssuedCredential> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        self.require_admin(ctx, "token.create", Some(agent_id))
            .await?;
        if agent.status != super::AgentStatus::Active
            && agent.status != super::AgentStatus::Suspended
        {
            return Err(Error::conflict(
                "agent-decommissioned",
                "a decommissioned agent gets no new tokens",
            ));
        }
        let scopes = parse_scopes(new.scopes)?;
        let name = token_name(new.name, "token")?;
        let expires = parse_expiry(self.now(), new.expires_at.as_deref())?;
        let mut tx = self.db.begin_write().await?;
        let issued = insert_credential(
            self,
            &mut tx,
            ctx,
            CredentialKind::Agent,
            Some(&agent.id),
            &name,
            None,
            &scopes,
            expires,
        )
        .await?;
        self.record_credential_created(&mut tx, ctx, &issued)
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    async fn record_credential_created(
        &self,
        tx: &mut Tx,
        ctx: &Ctx,
        issued: &IssuedCredential,
    ) -> Result<()> {
        let c = &issued.credential;
        let entry = self.entry(
            ctx,
            "token.create",
            Some("credential"),
            Some(c.id.clone()),
            c.agent_id.clone(),
            "success",
            json!({ "kind": c.kind, "name": c.name, "scopes": c.scopes, "credential": c.hint, "expires_at": c.expires_at }),
        );
        self.record(
            tx,
            &entry,
            Some((
                "token.created",
                json!({ "credential_id": c.id, "kind": c.kind, "agent_id": c.agent_id }),
            )),
        )
        .await
    }

    pub async fn list_tokens(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<CredentialInfo>> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        if !ctx.principal.is_admin() {
            return Err(Error::Forbidden("listing tokens needs an admin key".into()));
        }
        self.list_credentials(CredentialKind::Agent, Some(&agent.id), cursor, limit)
            .await
    }

    /// A credential of the given kind, and for agent tokens of that agent;
    /// otherwise not found.
    async fn owned_credential(
        &self,
        kind: CredentialKind,
        agent: Option<&AgentId>,
        id: &str,
    ) -> Result<CredentialInfo> {
        let c = self
            .load_credential(id)
            .await?
            .ok_or_else(|| Error::not_found("credential"))?;
        if c.kind != kind || c.agent_id.as_deref() != agent.map(|a| a.as_str()) {
            return Err(Error::not_found("credential"));
        }
        Ok(c)
    }

    pub async fn revoke_token(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        token_id: &str,
    ) -> Result<CredentialInfo> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        // Ownership before privilege: another agent's token is *not found*.
        let c = self
            .owned_credential(CredentialKind::Agent, Some(&agent.id), token_id)
            .await?;
        self.require_admin(ctx, "token.revoke", Some(token_id))
            .await?;
        self.revoke(ctx, c).await
    }

    pub async fn rotate_token(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        token_id: &str,
        overlap_secs: Option<i64>,
    ) -> Result<IssuedCredential> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        // Ownership before privilege: another agent's token is *not found*.
        let c = self
            .owned_credential(CredentialKind::Agent, Some(&agent.id), token_id)
            .await?;
        self.require_admin(ctx, "token.rotate", Some(token_id))
            .await?;
        self.rotate(ctx, c, overlap_secs).await
    }

    async fn revoke(&self, ctx: &Ctx, c: CredentialInfo) -> Result<CredentialInfo> {
        if c.revoked_at.is_some() {
            return Ok(c);
        }
        let mut tx = self.db.begin_write().await?;
        if c.kind == CredentialKind::Admin {
            self.ensure_another_admin_key(&mut tx, &c.id).await?;
        }
        sqlx::query("UPDATE credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(self.now())
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "token.revoke",
            Some("credential"),
            Some(c.id.clone()),
            c.agent_id.clone(),
            "success",
            json!({ "kind": c.kind, "credential": c.hint }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "token.revoked",
                json!({ "credential_id": c.id, "kind": c.kind, "agent_id": c.agent_id }),
            )),
        )
        .await?;
        tx.commit().await?;
        self.load_credential(&c.id)
            .await?
            .ok_or_else(|| Error::not_found("credential"))
    }

    /// Refuses to lock the organisation out by revoking its last admin key.
    async fn ensure_another_admin_key(&self, tx: &mut Tx, except: &str) -> Result<()> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM credentials WHERE kind = 'admin' AND revoked_at IS NULL AND id <> $1 \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(except)
        .bind(self.now())
        .fetch_one(&mut **tx)
        .await?;
        if n == 0 {
            return Err(Error::conflict(
                "last-admin-key",
                "this is the last valid admin key; create another (or rotate this one) before revoking it",
            ));
        }
        Ok(())
    }

    /// New secret with the same name, scopes and expiry; the old one keeps
    /// working until the overlap ends (default 24 h), then expires.
    async fn rotate(
        &self,
        ctx: &Ctx,
        c: CredentialInfo,
        overlap_secs: Option<i64>,
    ) -> Result<IssuedCredential> {
        if c.revoked_at.is_some() {
            return Err(Error::conflict(
                "credential-revoked",
                "a revoked credential cannot be rotated; create a new one",
            ));
        }
        let overlap = overlap_secs.unwrap_or(86_400);
        if !(0..=30 * 86_400).contains(&overlap) {
            return Err(Error::invalid(
                "overlap_seconds",
                "must be between 0 and 2592000 (30 days)",
            ));
        }
        let now = self.now();
        let old_until = now + overlap * 1_000_000;
        let old_expiry = c
            .expires_at
            .as_deref()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|d| d.timestamp_micros());
        let new_old_expiry = old_expiry.map_or(old_until, |e| e.min(old_until));
        let mut tx = self.db.begin_write().await?;
        let agent = c.agent_id.clone().map(AgentId);
        let issued = insert_credential(
            self,
            &mut tx,
            ctx,
            c.kind,
            agent.as_ref(),
            &c.name,
            c.subject.as_deref(),
            &c.scopes,
            old_expiry,
        )
        .await?;
        sqlx::query("UPDATE credentials SET expires_at = $1, replaced_by = $2 WHERE id = $3")
            .bind(new_old_expiry)
            .bind(&issued.credential.id)
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "token.rotate",
            Some("credential"),
            Some(c.id.clone()),
            c.agent_id.clone(),
            "success",
            json!({ "kind": c.kind, "old": c.hint, "new": issued.credential.hint, "new_id": issued.credential.id, "old_valid_until": crate::clock::to_rfc3339(new_old_expiry) }),
        );
        self.record(&mut tx, &entry, Some(("token.created", json!({ "credential_id": issued.credential.id, "kind": c.kind, "agent_id": c.agent_id, "replaces": c.id }))))
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    // ---- admin keys ----

    pub async fn create_admin_key(
        &self,
        ctx: &Ctx,
        name: Option<String>,
    ) -> Result<IssuedCredential> {
        self.require_admin(ctx, "token.create", None).await?;
        let name = token_name(name, "admin")?;
        let mut tx = self.db.begin_write().await?;
        let issued = insert_credential(
            self,
            &mut tx,
            ctx,
            CredentialKind::Admin,
            None,
            &name,
            None,
            &[],
            None,
        )
        .await?;
        self.record_credential_created(&mut tx, ctx, &issued)
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    pub async fn list_admin_keys(
        &self,
        ctx: &Ctx,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<CredentialInfo>> {
        self.require_admin(ctx, "token.list", None).await?;
        self.list_credentials(CredentialKind::Admin, None, cursor, limit)
            .await
    }

    pub async fn revoke_admin_key(&self, ctx: &Ctx, id: &str) -> Result<CredentialInfo> {
        self.require_admin(ctx, "token.revoke", Some(id)).await?;
        let c = self
            .owned_credential(CredentialKind::Admin, None, id)
            .await?;
        self.revoke(ctx, c).await
    }

    pub async fn rotate_admin_key(
        &self,
        ctx: &Ctx,
        id: &str,
        overlap_secs: Option<i64>,
    ) -> Result<IssuedCredential> {
        self.require_admin(ctx, "token.rotate", Some(id)).await?;
        let c = self
            .owned_credential(CredentialKind::Admin, None, id)
            .await?;
        self.rotate(ctx, c, overlap_secs).await
    }

    // ---- approver tokens ----

    pub async fn create_approver(&self, ctx: &Ctx, new: NewApprover) -> Result<IssuedCredential> {
        self.require_admin(ctx, "token.create", None).await?;
        let email = clean_text("email", new.email, 254)?
            .filter(|e| e.contains('@') && !e.contains(char::is_whitespace))
            .ok_or_else(|| {
                Error::invalid("email", "is required: the approving human's email address")
            })?;
        let name = token_name(new.name, &email)?;
        let expires = parse_expiry(self.now(), new.expires_at.as_deref())?;
        let mut tx = self.db.begin_write().await?;
        let issued = insert_credential(
            self,
            &mut tx,
            ctx,
            CredentialKind::Approver,
            None,
            &name,
            Some(&email),
            &[],
            expires,
        )
        .await?;
        self.record_credential_created(&mut tx, ctx, &issued)
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    pub async fn list_approvers(
        &self,
        ctx: &Ctx,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<CredentialInfo>> {
        self.require_admin(ctx, "token.list", None).await?;
        self.list_credentials(CredentialKind::Approver, None, cursor, limit)
            .await
    }

    pub async fn revoke_approver(&self, ctx: &Ctx, id: &str) -> Result<CredentialInfo> {
        self.require_admin(ctx, "token.revoke", Some(id)).await?;
        let c = self
            .owned_credential(CredentialKind::Approver, None, id)
            .await?;
        self.revoke(ctx, c).await
    }
}
