//! The gate. Every entry point (HTTP, SMTP, MCP, CLI) calls these methods and
//! nothing else touches the store. Each call does the same four things in
//! order: who (the principal in `Ctx`), may (scope and data boundary: an agent
//! sees only itself, anything else is *not found*), limits, and record (the
//! audit entry and event in the same transaction as the change).

mod agents;
mod bootstrap;
mod credentials;
mod domains;
mod export;
mod idempotency;
mod mailbox;
pub use mailbox::*;
mod policies;
pub use policies::{Confirmation, Policy, PolicyInput, PolicySettings};
mod outbound;
pub use outbound::*;
mod trail;
pub(crate) mod webhooks;
pub use webhooks::{
    NewWebhook, ReplayRequest, Replayed, Webhook, WebhookAttempt, WebhookDelivery, WebhookPatch,
    WebhookSettings, WebhookWithSecret, parse_duration, parse_durations,
};
mod events_api;
pub use events_api::{EventPage, EventQuery};

pub use agents::{Agent, AgentPatch, AgentStatus, Decommissioned, NewAgent};
pub use bootstrap::Bootstrapped;
pub use credentials::{CredentialInfo, IssuedCredential, NewApprover, NewToken};
pub use domains::{DnsRecord, Domain};
pub use export::ExportInfo;
pub use idempotency::IdempotencyStart;
pub use trail::AuditQuery;

use crate::audit::{Actor, NewEntry};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids::{AgentId, CredentialId};
use crate::secret::{self, CredentialKind};
use crate::store::{Db, Dialect, StoreLocation, Tx};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use std::sync::Arc;

/// Scopes an agent token may carry.
pub const AGENT_SCOPES: &[&str] = &[
    "mail.read",
    "mail.read_raw",
    "mail.draft",
    "mail.send",
    "calendar.read",
    "calendar.write",
];
pub const DEFAULT_AGENT_SCOPES: &[&str] = &[
    "mail.read",
    "mail.draft",
    "mail.send",
    "calendar.read",
    "calendar.write",
];

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The mail domain created on first start.
    pub default_domain: String,
    /// This server's host name (MX target, Authentication-Results id).
    pub hostname: String,
    /// How long a decommissioned address is refused and not reused.
    pub tombstone_days: i64,
    /// Webhook delivery (private targets, retry schedule, timeouts).
    pub webhooks: WebhookSettings,
    /// The outbound delivery queue (retries, give-up time, leases).
    pub outbound: OutboundSettings,
    /// Mailboxes of up to this many messages list their threads with one
    /// aggregate over all their entries; larger ones walk their newest
    /// entries instead. A plan choice only: both give the same pages.
    pub threads_aggregate_up_to: i64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            default_domain: "agents.localhost".into(),
            hostname: "localhost".into(),
            tombstone_days: 90,
            webhooks: WebhookSettings::default(),
            outbound: OutboundSettings::default(),
            threads_aggregate_up_to: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Admin,
    Agent,
    Approver,
    /// The server itself (sweepers, offline CLI tools).
    System,
}

/// Who is calling, resolved once per request by `Service::authenticate`.
#[derive(Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub credential_id: Option<CredentialId>,
    /// `ap_agt_…abcd`: safe to log and record.
    pub credential_hint: Option<String>,
    pub credential_name: Option<String>,
    pub agent_id: Option<AgentId>,
    /// For approvers, the human's email; for admin keys, the owner if set.
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    /// Seals idempotent replays for this caller only (derived from its secret).
    pub(crate) replay_key: [u8; 32],
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("kind", &self.kind)
            .field("credential", &self.credential_hint)
            .field("agent_id", &self.agent_id)
            .finish()
    }
}

impl Principal {
    pub fn system() -> Self {
        Principal {
            kind: PrincipalKind::System,
            credential_id: None,
            credential_hint: None,
            credential_name: None,
            agent_id: None,
            subject: None,
            scopes: vec![],
            replay_key: [0; 32],
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            kind: match self.kind {
                PrincipalKind::Admin => "admin",
                PrincipalKind::Agent => "agent",
                PrincipalKind::Approver => "approver",
                PrincipalKind::System => "system",
            }
            .into(),
            id: match self.kind {
                PrincipalKind::Agent => self.agent_id.as_ref().map(|a| a.0.clone()),
                _ => self.credential_id.as_ref().map(|c| c.0.clone()),
            },
            credential: self.credential_hint.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.kind, PrincipalKind::Admin | PrincipalKind::System)
    }

    /// Admins hold every scope; agents only what their token carries.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.is_admin() || self.scopes.iter().any(|s| s == scope)
    }
}

/// One call's context: the principal plus what the audit entry records.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub principal: Principal,
    pub request_id: Option<String>,
    pub source: Option<String>,
}

impl Ctx {
    pub fn system(what: &str) -> Self {
        Ctx {
            principal: Principal::system(),
            request_id: None,
            source: Some(what.to_string()),
        }
    }
}

/// A page of results with an opaque cursor for the next one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub kind: PrincipalKind,
    pub credential_id: Option<String>,
    pub credential: Option<String>,
    pub name: Option<String>,
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    pub agent: Option<Agent>,
}

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Service {
    pub(crate) db: Db,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cfg: CoreConfig,
    /// Wakes this node's delivery worker when a send is queued.
    pub(crate) outbound_wake: Arc<tokio::sync::Notify>,
    /// This node's send group commit (`outbound::commit`).
    pub(crate) send_queue: outbound::SendQueue,
    /// This node's recent RCPT `Accept` answers (`mailbox::ingest`).
    pub(crate) accepted_rcpts: Arc<mailbox::ingest::AcceptedRecipients>,
}

/// Page sizes: default 50, at most 200.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<i64> {
    match limit {
        None => Ok(50),
        Some(0) => Err(Error::invalid("limit", "must be between 1 and 200")),
        Some(n) if n > 200 => Err(Error::invalid("limit", "must be between 1 and 200")),
        Some(n) => Ok(n as i64),
    }
}

/// Rows are fetched with limit+1 to know whether another page exists.
pub(crate) fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> Page<T> {
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(cursor_of)
    } else {
        None
    };
    Page {
        data: rows,
        next_cursor,
    }
}

impl Service {
    pub async fn open(
        location: &StoreLocation,
        cfg: CoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let db = Db::open(location).await?;
        Ok(Service {
            db,
            clock,
            cfg,
            outbound_wake: Arc::new(tokio::sync::Notify::new()),
            send_queue: Default::default(),
            accepted_rcpts: Default::default(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.db.dialect
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// For `/readyz`.
    pub async fn ready(&self) -> Result<()> {
        self.db.ping().await
    }

    /// Who: turns a presented secret into a principal. Every failure is
    /// audited and answers the same 401, so callers learn nothing about
    /// which keys exist.
    pub async fn authenticate(
        &self,
        presented: &str,
        request_id: Option<String>,
        source: Option<String>,
    ) -> Result<Principal> {
        let fail = |reason: &'static str, hint: Option<String>| {
            let request_id = request_id.clone();
            let source = source.clone();
            async move {
                let entry = NewEntry {
                    actor: Actor {
                        kind: "anonymous".into(),
                        id: None,
                        credential: hint,
                    },
                    action: "auth.failed",
                    target_kind: None,
                    target_id: None,
                    agent_id: None,
                    outcome: "failure",
                    request_id,
                    source,
                    details: json!({ "reason": reason }),
                };
                if let Err(e) = self.record_alone(&entry).await {
                    tracing::error!(error = %e, "could not audit a failed authentication");
                }
                Error::Unauthenticated("missing, malformed, expired or revoked credential".into())
            }
        };
        if presented.is_empty() {
            return Err(fail("no credential", None).await);
        }
        let kind = match secret::parse(presented) {
            Ok(k) => k,
            Err(e) => {
                let reason = match e {
                    secret::FormatError::Prefix => "unknown credential prefix",
                    secret::FormatError::Length => "wrong length",
                    secret::FormatError::Charset => "bad characters",
                    secret::FormatError::Checksum => "checksum mismatch",
                };
                return Err(fail(reason, None).await);
            }
        };
        let hint = Some(hint_for(kind, &secret::last4(presented)));
        if kind == CredentialKind::AppPassword {
            return Err(fail("app passwords are for SMTP submission only", hint).await);
        }
        let row = sqlx::query(
            "SELECT c.id, c.kind, c.agent_id, c.name, c.subject, c.scopes, c.expires_at, c.revoked_at, \
             c.last_used_at, a.status FROM credentials c LEFT JOIN agents a ON a.id = c.agent_id \
             WHERE c.secret_hash = $1",
        )
        .bind(secret::hash(presented))
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Err(fail("unknown credential", hint).await);
        };
        let now = self.now();
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        let expires: Option<i64> = row.try_get("expires_at")?;
        if revoked.is_some() {
            return Err(fail("revoked credential", hint).await);
        }
        if expires.is_some_and(|t| t <= now) {
            return Err(fail("expired credential", hint).await);
        }
        let stored_kind: String = row.try_get("kind")?;
        if CredentialKind::parse(&stored_kind) != Some(kind) {
            return Err(fail("credential kind mismatch", hint).await);
        }
        let agent_status: Option<String> = row.try_get("status")?;
        if kind == CredentialKind::Agent && agent_status.as_deref() != Some("active") {
            return Err(fail("agent is not active", hint).await);
        }
        let id: String = row.try_get("id")?;
        // Recording every use would turn each read into a write; a minute's
        // resolution is what an operator reviewing keys needs.
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        if last_used.is_none_or(|t| now - t > 60_000_000) {
            sqlx::query("UPDATE credentials SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&self.db.pool)
                .await?;
        }
        let scopes: String = row.try_get("scopes")?;
        Ok(Principal {
            kind: match kind {
                CredentialKind::Admin => PrincipalKind::Admin,
                CredentialKind::Agent => PrincipalKind::Agent,
                CredentialKind::Approver => PrincipalKind::Approver,
                // Refused above: app passwords never authenticate HTTP.
                CredentialKind::AppPassword => PrincipalKind::Agent,
            },
            credential_id: Some(CredentialId(id)),
            credential_hint: hint,
            credential_name: row.try_get("name")?,
            agent_id: row.try_get::<Option<String>, _>("agent_id")?.map(AgentId),
            subject: row.try_get("subject")?,
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
            replay_key: secret::replay_key(presented),
        })
    }

    pub async fn me(&self, ctx: &Ctx) -> Result<Me> {
        let p = &ctx.principal;
        let agent = match &p.agent_id {
            Some(id) => Some(
                self.load_agent(id)
                    .await?
                    .ok_or_else(|| Error::not_found("agent"))?,
            ),
            None => None,
        };
        Ok(Me {
            kind: p.kind,
            credential_id: p.credential_id.as_ref().map(|c| c.0.clone()),
            credential: p.credential_hint.clone(),
            name: p.credential_name.clone(),
            subject: p.subject.clone(),
            scopes: if p.is_admin() {
                vec!["*".into()]
            } else {
                p.scopes.clone()
            },
            agent,
        })
    }

    /// May: admin-only operations. A non-admin is told *forbidden* only
    /// about things it can see; callers check visibility first.
    pub(crate) async fn require_admin(
        &self,
        ctx: &Ctx,
        action: &'static str,
        target_id: Option<&str>,
    ) -> Result<()> {
        if ctx.principal.is_admin() {
            return Ok(());
        }
        self.record_denied(ctx, action, target_id).await;
        Err(Error::Forbidden("this needs an admin key".into()))
    }

    /// Audits a refused attempt in its own transaction.
    pub(crate) async fn record_denied(
        &self,
        ctx: &Ctx,
        action: &'static str,
        target_id: Option<&str>,
    ) {
        let entry = self.entry(
            ctx,
            action,
            None,
            target_id.map(str::to_string),
            None,
            "denied",
            json!({}),
        );
        if let Err(e) = self.record_alone(&entry).await {
            tracing::error!(error = %e, "could not audit a denied request");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn entry(
        &self,
        ctx: &Ctx,
        action: &'static str,
        target_kind: Option<&'static str>,
        target_id: Option<String>,
        agent_id: Option<String>,
        outcome: &'static str,
        details: Value,
    ) -> NewEntry {
        NewEntry {
            actor: ctx.principal.actor(),
            action,
            target_kind,
            target_id,
            agent_id,
            outcome,
            request_id: ctx.request_id.clone(),
            source: ctx.source.clone(),
            details,
        }
    }

    /// Record: audit entry plus event, inside the caller's transaction.
    pub(crate) async fn record(
        &self,
        tx: &mut Tx,
        entry: &NewEntry,
        event: Option<(&str, Value)>,
    ) -> Result<()> {
        let now = self.now();
        crate::audit::append(tx, now, entry).await?;
        if let Some((kind, data)) = event {
            crate::events::emit(tx, now, kind, entry.agent_id.as_deref(), &data).await?;
        }
        Ok(())
    }

    /// Starts a group committer. On SQLite it gets a thread of its own
    /// (a current-thread runtime): as one task among the request tasks it
    /// waited behind them at each of its statements (about 200 µs a
    /// statement under load, which made the one committer the bottleneck).
    /// SQLite's connections are threads reached over channels, so any
    /// runtime can drive them; PostgreSQL's sockets belong to the server's
    /// runtime, where its committer stays a task.
    pub(crate) fn spawn_committer<F>(&self, name: &str, committer: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.db.dialect != crate::store::Dialect::Sqlite {
            tokio::spawn(committer);
            return;
        }
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(committer),
                    Err(e) => tracing::error!(error = %e, "cannot start a group commit's runtime"),
                }
            });
        if let Err(e) = thread {
            tracing::error!(error = %e, "cannot start a group commit's thread");
        }
    }

    pub(crate) async fn record_alone(&self, entry: &NewEntry) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        crate::audit::append(&mut tx, self.now(), entry).await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(crate) fn hint_for(kind: CredentialKind, last4: &str) -> String {
    format!("{}…{}", kind.prefix(), last4)
}

/// An optional RFC 3339 time from a request, as Unix microseconds; errors name `field`.
pub(crate) fn parse_time(field: &str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_micros())
            .map_err(|_| {
                Error::invalid(
                    field,
                    "must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
                )
            })
    })
    .transpose()
}

pub(crate) fn opt_rfc3339(t: Option<i64>) -> Option<String> {
    t.map(crate::clock::to_rfc3339)
}

/// Free text from callers: bounded, no control characters.
pub(crate) fn clean_text(field: &str, value: Option<String>, max: usize) -> Result<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim().to_string();
    if v.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid(field, "may not contain control characters"));
    }
    Ok(if v.is_empty() { None } else { Some(v) })
}
