//! App passwords: let an ordinary mail client send as one agent over SMTP
//! submission. Shown once, stored as argon2id hashes (mail clients keep
//! them in their own settings, so a slow hash is worth it here), revocable.
//! The SMTP user name is the agent's address; a session authenticated this
//! way acts as that agent with only the `mail.send` scope, through the same
//! gate (caps, lists, confirmation) as the API.

use super::compose;
use super::send::{Outgoing, SendInfo};
use crate::error::{Error, Result};
use crate::ids::AgentId;
use crate::secret::{CredentialKind, Secret};
use crate::service::policies::effective_policy;
use crate::service::{
    Ctx, Page, Principal, PrincipalKind, Service, clean_text, hint_for, page_limit, paginate,
};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppPassword {
    /// What it is for ("Thunderbird on the ops laptop").
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppPassword {
    pub id: String,
    pub agent_id: String,
    pub name: String,
    /// `ap_app_…abcd`.
    pub hint: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// Returned once, at creation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedAppPassword {
    #[serde(flatten)]
    pub app_password: AppPassword,
    /// The password; it cannot be shown again.
    pub password: String,
    /// The SMTP user name: the agent's address.
    pub username: String,
}

/// An SMTP submission session's identity, after AUTH.
#[derive(Debug, Clone)]
pub struct SubmissionIdentity {
    pub agent_id: String,
    pub address: String,
    pub ctx: Ctx,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<AppPassword> {
    let last4: String = r.try_get("last4")?;
    Ok(AppPassword {
        id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        name: r.try_get("name")?,
        hint: hint_for(CredentialKind::AppPassword, &last4),
        created_at: crate::clock::to_rfc3339(r.try_get("created_at")?),
        last_used_at: crate::service::opt_rfc3339(r.try_get("last_used_at")?),
        revoked_at: crate::service::opt_rfc3339(r.try_get("revoked_at")?),
    })
}

const COLUMNS: &str = "id, agent_id, name, last4, created_at, last_used_at, revoked_at";

impl Service {
    /// Admins, or the agent itself with `mail.send`.
    pub async fn create_app_password(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        new: NewAppPassword,
    ) -> Result<IssuedAppPassword> {
        let agent = self.sending_agent(ctx, agent_id).await?;
        let name = clean_text("name", new.name, 200)?.unwrap_or_else(|| "app password".into());
        let secret = Secret::generate(CredentialKind::AppPassword);
        let password = secret.into_exposed();
        let hash = tokio::task::spawn_blocking({
            let password = password.clone();
            move || {
                Argon2::default()
                    .hash_password(password.as_bytes())
                    .map(|h| h.to_string())
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
        let id = uuid::Uuid::now_v7().to_string();
        let last4 = crate::secret::last4(&password);
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO app_passwords (id, agent_id, name, password_hash, last4, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&id)
        .bind(agent.id.as_str())
        .bind(&name)
        .bind(&hash)
        .bind(&last4)
        .bind(now)
        .bind(ctx.principal.credential_hint.clone())
        .execute(&mut *tx)
        .await?;
        let entry = self.entry(
            ctx,
            "app_password.create",
            Some("app_password"),
            Some(id.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "name": name }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "app_password.created",
                json!({ "agent_id": agent.id.0, "app_password_id": id, "name": name }),
            )),
        )
        .await?;
        tx.commit().await?;
        let app_password = self.load_app_password(agent.id.as_str(), &id).await?;
        Ok(IssuedAppPassword {
            app_password,
            password,
            username: agent.address,
        })
    }

    async fn load_app_password(&self, agent_id: &str, id: &str) -> Result<AppPassword> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app_passwords WHERE id = $1 AND agent_id = $2"
        )))
        .bind(id)
        .bind(agent_id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| Error::not_found("app password"))?;
        from_row(&row)
    }

    pub async fn list_app_passwords(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<AppPassword>> {
        let agent = self
            .mailbox_access(ctx, agent_id, "mail.send", "app_password.list")
            .await?;
        let limit = page_limit(limit)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app_passwords WHERE agent_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        )))
        .bind(agent.id.as_str())
        .bind(cursor.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, limit, |a| a.id.clone()))
    }

    pub async fn revoke_app_password(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        id: &str,
    ) -> Result<AppPassword> {
        let agent = self
            .mailbox_access(ctx, agent_id, "mail.send", "app_password.revoke")
            .await?;
        let current = self.load_app_password(agent.id.as_str(), id).await?;
        if current.revoked_at.is_some() {
            return Ok(current);
        }
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE app_passwords SET revoked_at = $1 WHERE id = $2")
            .bind(self.now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "app_password.revoke",
            Some("app_password"),
            Some(id.to_string()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "name": current.name }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "app_password.revoked",
                json!({ "agent_id": agent.id.0, "app_password_id": id }),
            )),
        )
        .await?;
        tx.commit().await?;
        self.load_app_password(agent.id.as_str(), id).await
    }

    /// Who: SMTP AUTH. `username` is the agent's address. Every failure is
    /// audited and looks the same to the client.
    pub async fn authenticate_app_password(
        &self,
        username: &str,
        password: &str,
        client_ip: &str,
    ) -> Result<SubmissionIdentity> {
        let fail = |reason: &'static str, agent_id: Option<String>| async move {
            let entry = crate::audit::NewEntry {
                actor: crate::audit::Actor {
                    kind: "anonymous".into(),
                    id: None,
                    credential: None,
                },
                action: "auth.failed",
                target_kind: None,
                target_id: None,
                agent_id,
                outcome: "failure",
                request_id: None,
                source: Some(format!("smtp-submission {client_ip}")),
                details: json!({ "reason": reason, "username": username.chars().take(200).collect::<String>() }),
            };
            if let Err(e) = self.record_alone(&entry).await {
                tracing::error!(error = %e, "could not audit a failed SMTP authentication");
            }
            Error::Unauthenticated("invalid user name or password".into())
        };
        let Ok(addr) = crate::address::AgentAddress::parse(username, "username") else {
            return Err(fail("user name is not an agent address", None).await);
        };
        let agent: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, address, status FROM agents WHERE address_key = $1 AND status <> 'decommissioned'",
        )
        .bind(addr.key())
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((agent_id, address, status)) = agent else {
            return Err(fail("no such agent", None).await);
        };
        if status != "active" {
            return Err(fail("agent is not active", Some(agent_id)).await);
        }
        let rows: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, password_hash, last4, last_used_at FROM app_passwords WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(&agent_id)
        .fetch_all(&self.db.pool)
        .await?;
        let presented = password.to_string();
        let matched = tokio::task::spawn_blocking(move || {
            rows.into_iter().find(|(_, hash, _, _)| {
                PasswordHash::new(hash)
                    .map(|h| {
                        Argon2::default()
                            .verify_password(presented.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("verify task: {e}")))?;
        let Some((id, _, last4, last_used)) = matched else {
            return Err(fail("wrong password", Some(agent_id)).await);
        };
        let now = self.now();
        if last_used.is_none_or(|t| now - t > 60_000_000) {
            sqlx::query("UPDATE app_passwords SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&self.db.pool)
                .await?;
        }
        let principal = Principal {
            kind: PrincipalKind::Agent,
            credential_id: None,
            credential_hint: Some(hint_for(CredentialKind::AppPassword, &last4)),
            credential_name: None,
            agent_id: Some(AgentId(agent_id.clone())),
            subject: None,
            scopes: vec!["mail.send".into()],
            replay_key: [0; 32],
        };
        Ok(SubmissionIdentity {
            agent_id,
            address,
            ctx: Ctx {
                principal,
                request_id: None,
                source: Some(format!("smtp-submission {client_ip}")),
            },
        })
    }

    /// The MAIL FROM check of a submission session.
    pub fn submission_sender_ok(&self, id: &SubmissionIdentity, mail_from: &str) -> bool {
        mail_from.eq_ignore_ascii_case(&id.address)
    }

    /// RCPT checks of a submission session: syntax, recipients per
    /// message and the policy's lists. `Err` carries a field-free message.
    pub async fn check_submission_recipient(
        &self,
        id: &SubmissionIdentity,
        rcpt: &str,
        accepted_so_far: usize,
    ) -> Result<()> {
        let agent = self.sending_agent(&id.ctx, &id.agent_id).await?;
        let rcpt = compose::parse_address("rcpt", rcpt)?.to_ascii_lowercase();
        let policy =
            effective_policy(&self.db.pool, agent.policy_id.as_ref().map(|p| p.as_str())).await?;
        if (accepted_so_far + 1) as i64 > policy.recipients_per_message {
            return Err(Error::invalid(
                "rcpt",
                format!(
                    "the agent's policy allows {} recipients per message",
                    policy.recipients_per_message
                ),
            ));
        }
        self.check_recipients(
            &id.ctx,
            &agent,
            &policy,
            std::slice::from_ref(&rcpt),
            |_| "rcpt".into(),
        )
        .await?;
        Ok(())
    }

    /// End of DATA on submission: the message as the client wrote it,
    /// whose `From` must be the agent's own address; we sign it and it goes
    /// through the same caps and confirmation as an API send.
    pub async fn submit_message(
        &self,
        id: &SubmissionIdentity,
        rcpt_to: &[String],
        message: Vec<u8>,
    ) -> Result<SendInfo> {
        let agent = self.sending_agent(&id.ctx, &id.agent_id).await?;
        let policy =
            effective_policy(&self.db.pool, agent.policy_id.as_ref().map(|p| p.as_str())).await?;
        let parsed = super::send::parse_off_thread(message.clone()).await?;
        let from_ok = parsed.from.len() == 1
            && parsed.from[0]
                .address
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&agent.address));
        if !from_ok {
            return Err(Error::Forbidden(format!(
                "the From header must be the agent's own address <{}>",
                agent.address
            )));
        }
        let mut recipients: Vec<String> = vec![];
        for r in rcpt_to {
            let r = compose::parse_address("rcpt", r)?.to_ascii_lowercase();
            if !recipients.contains(&r) {
                recipients.push(r);
            }
        }
        self.check_recipients(&id.ctx, &agent, &policy, &recipients, |_| "rcpt".into())
            .await?;
        // A client may omit Message-ID (RFC 6409 8.3 lets us add it).
        let domain = agent
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let (message, message_id_header) = match parsed.message_id.clone() {
            Some(mid) => (message, mid),
            None => {
                let mid = format!("{}@{domain}", uuid::Uuid::now_v7());
                let mut m = format!("Message-ID: <{mid}>\r\n").into_bytes();
                m.extend_from_slice(&message);
                (m, mid)
            }
        };
        if message.len() as i64 > policy.max_outbound_bytes {
            return Err(Error::invalid(
                "message",
                format!(
                    "the message is {} bytes; the agent's policy allows {}",
                    message.len(),
                    policy.max_outbound_bytes
                ),
            ));
        }
        let keys = self.dkim_keys(&domain).await?;
        let raw = compose::sign(message, &domain, &keys);
        let out = Outgoing {
            raw,
            mail_from: agent.address.clone(),
            recipients,
            message_id_header,
            subject: parsed.subject.clone(),
            draft: None,
            via: "smtp",
        };
        self.record_send(&id.ctx, &agent, &policy, out).await
    }
}
