//! Webhooks: the endpoints an operator registers (admin only), the fan-out
//! that writes one delivery row per matching endpoint in the same transaction
//! as each event, and the per-node worker that claims due deliveries with a
//! lease, signs them per the Standard Webhooks specification and retries them
//! on a schedule until they arrive.
//!
//! Signing keys: the HMAC key must be stored to sign, so it is kept in
//! `webhook_endpoints.signing_key` (like the DKIM private keys). It is shown
//! once (`whsec_…`) on creation and rotation and never appears in listings,
//! logs, audit entries or events.

use super::{Ctx, Page, Service, clean_text, page_limit, paginate};
use crate::error::{Error, Result};
use crate::ids::AgentId;
use crate::store::{Dialect, Tx};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// The PostgreSQL channel nodes wake each other on (sent on commit).
pub(crate) const CHANNEL: &str = "agentpost_events";
const MAX_INFLIGHT: usize = 128;
const MAX_EVENT_TYPES: usize = 50;
const ROTATION_OVERLAP_MICROS: i64 = 24 * 3600 * 1_000_000;

/// How this node delivers webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Allow endpoints on loopback, private and link-local addresses.
    pub allow_private: bool,
    /// Waits before each retry; the first attempt is immediate.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing this long without one success is disabled.
    pub disable_after: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Fallback poll (leases of crashed nodes, missed wake-ups).
    pub poll: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let s = |secs| Duration::from_secs(secs);
        Self {
            allow_private: false,
            retry_schedule: vec![
                s(5),
                s(300),
                s(1800),
                s(7200),
                s(18000),
                s(36000),
                s(50400),
                s(72000),
                s(86400),
            ],
            disable_after: s(5 * 86400),
            timeout: s(15),
            poll: s(5),
        }
    }
}

/// Parses `5s,5m,2h,500ms` (for the hidden test settings).
pub fn parse_durations(s: &str) -> std::result::Result<Vec<Duration>, String> {
    s.split(',').map(|p| parse_duration(p.trim())).collect()
}

pub fn parse_duration(p: &str) -> std::result::Result<Duration, String> {
    let split = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
    let (n, unit) = p.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{p}' is not a duration like 5s, 5m, 2h or 500ms"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("'{p}' has an unknown unit (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------
// Wake-ups. These are hints only: every waiter also polls.

static WORKER_WAKE: Notify = Notify::const_new();
static EVENTS_WAKE: Notify = Notify::const_new();
/// Whether nudges are pending for the worker, and for the stream readers.
static WORKER_NUDGE_PENDING: AtomicBool = AtomicBool::new(false);
static EVENTS_NUDGE_PENDING: AtomicBool = AtomicBool::new(false);
static STREAMS_CLOSING: AtomicBool = AtomicBool::new(false);

/// Wakes the local worker and stream readers. Called before a commit (from
/// `events::emit`) it cannot know when the rows become visible, so it nudges
/// again shortly after; the SQLite claim itself waits for the writer anyway.
pub(crate) fn wake_local() {
    WORKER_WAKE.notify_one();
    nudge(&WORKER_NUDGE_PENDING, || WORKER_WAKE.notify_one());
    wake_streams();
}

/// [`wake_local`] for events that created no webhook delivery: only the
/// stream readers have something new. Waking the worker would cost it two
/// queries per wake-up for nothing, on every commit of inbound mail.
pub(crate) fn wake_streams() {
    EVENTS_WAKE.notify_waiters();
    nudge(&EVENTS_NUDGE_PENDING, || EVENTS_WAKE.notify_waiters());
}

/// Calls `wake` again 2, 22 and 172 ms from now, unless nudges for it are
/// pending already.
fn nudge(pending: &'static AtomicBool, wake: fn()) {
    if tokio::runtime::Handle::try_current().is_ok() && !pending.swap(true, Ordering::AcqRel) {
        tokio::spawn(async move {
            for ms in [2u64, 20, 150] {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ms == 20 {
                    pending.store(false, Ordering::Release);
                }
                wake();
            }
        });
    }
}

/// Waits until new events may be visible, or `max` passes.
pub(crate) async fn wait_for_events(max: Duration) {
    let _ = tokio::time::timeout(max, EVENTS_WAKE.notified()).await;
}

/// True once the server is shutting down: event streams end so the HTTP
/// server can finish (clients resume with `Last-Event-ID`).
pub(crate) fn streams_closing() -> bool {
    STREAMS_CLOSING.load(Ordering::Acquire)
}

// ---------------------------------------------------------------------------
// API types

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Patterns: `*`, `agent.*`, `message.received`.
    pub event_types: Vec<String>,
    /// Only events of this agent, when set.
    pub agent_id: Option<String>,
    pub enabled: bool,
    /// Why the server disabled it (`410 Gone`, days of failures), if it did.
    pub disabled_reason: Option<String>,
    /// While set, deliveries are signed with the previous secret too.
    pub previous_secret_valid_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// http(s) URL; loopback, private and link-local targets are refused
    /// unless the server allows them.
    pub url: Option<String>,
    /// Default `["*"]`.
    pub event_types: Option<Vec<String>>,
    pub agent_id: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// An agent id, or an empty string for every agent.
    pub agent_id: Option<String>,
    pub description: Option<String>,
    /// `true` re-enables an endpoint the server disabled.
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    pub webhook: Webhook,
    /// `whsec_…`: shown only here. Verify deliveries with it.
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookAttempt {
    pub attempt: i64,
    pub at: String,
    /// Absent when no HTTP answer came (connection refused, timeout, refused address).
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    pub id: String,
    /// The `webhook-id` header: the same on every retry and replay.
    pub webhook_id: String,
    /// Absent for test pings.
    pub event_id: Option<i64>,
    /// `pending`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub attempts: Vec<WebhookAttempt>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Re-send this one event.
    pub event_id: Option<i64>,
    /// Or re-send every failed delivery created at or after this RFC 3339 time.
    pub since: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Deliveries queued again.
    pub deliveries: i64,
}

// ---------------------------------------------------------------------------
// Validation

/// Why an address may not receive webhooks, or None when it is public.
pub(crate) fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_reason(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a private address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
    }
}

fn private_refusal(host: &str, ip: IpAddr, why: &str) -> Error {
    Error::invalid(
        "url",
        format!(
            "{host} resolves to {ip}, {why}; webhooks to private networks need the server flag \
             --webhooks-allow-private (AGENTPOST_WEBHOOKS_ALLOW_PRIVATE)"
        ),
    )
}

/// Parses a webhook URL and checks where it points (creation time; the
/// worker checks again at delivery time because DNS can change).
pub(crate) async fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url> {
    let raw = raw.trim();
    if raw.len() > 2000 {
        return Err(Error::invalid("url", "must be at most 2000 characters"));
    }
    let mut url = reqwest::Url::parse(raw)
        .map_err(|e| Error::invalid("url", format!("is not a valid URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::invalid("url", "must be an http:// or https:// URL"));
    }
    url.set_fragment(None);
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid("url", "needs a host"))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((bare, port)),
            )
            .await;
            match lookup {
                Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
                _ => {
                    return Err(Error::invalid(
                        "url",
                        format!("the host {host} does not resolve"),
                    ));
                }
            }
        }
    };
    if addrs.is_empty() {
        return Err(Error::invalid(
            "url",
            format!("the host {host} does not resolve"),
        ));
    }
    if !allow_private {
        for ip in addrs {
            if let Some(why) = blocked_reason(ip) {
                return Err(private_refusal(&host, ip, why));
            }
        }
    }
    Ok(url)
}

/// What the audit trail and events say about a URL: no credentials, no query.
fn url_for_record(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.path()
        ),
        Err(_) => String::new(),
    }
}

fn check_event_types(types: Option<Vec<String>>) -> Result<Vec<String>> {
    let types = types.unwrap_or_else(|| vec!["*".into()]);
    if types.is_empty() {
        return Err(Error::invalid(
            "event_types",
            "give at least one event type, or \"*\" for all",
        ));
    }
    if types.len() > MAX_EVENT_TYPES {
        return Err(Error::invalid(
            "event_types",
            format!("at most {MAX_EVENT_TYPES} patterns"),
        ));
    }
    for t in &types {
        if !valid_type_pattern(t) {
            return Err(Error::invalid(
                "event_types",
                format!(
                    "'{t}' is not an event type or pattern (e.g. \"*\", \"agent.*\", \"message.received\")"
                ),
            ));
        }
    }
    Ok(types)
}

pub(crate) fn valid_type_pattern(t: &str) -> bool {
    if t == "*" {
        return true;
    }
    let stem = t.strip_suffix(".*").unwrap_or(t);
    !stem.is_empty()
        && stem.len() <= 100
        && stem.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

pub(crate) fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

fn new_signing_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn parse_webhook_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Error::not_found("webhook"))
}

const EP_COLUMNS: &str = "id, url, description, event_types, agent_id, enabled, disabled_reason, previous_key_until, created_at, updated_at";

fn webhook_from_row(row: &sqlx::any::AnyRow, now: i64) -> Result<Webhook> {
    let types: String = row.try_get("event_types")?;
    let prev: Option<i64> = row.try_get("previous_key_until")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: types.split_whitespace().map(str::to_string).collect(),
        agent_id: row.try_get("agent_id")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        previous_secret_valid_until: prev.filter(|t| *t > now).map(crate::clock::to_rfc3339),
        created_at: crate::clock::to_rfc3339(row.try_get("created_at")?),
        updated_at: crate::clock::to_rfc3339(row.try_get("updated_at")?),
    })
}

// ---------------------------------------------------------------------------
// Fan-out: called by `events::emit` inside the event's transaction.

pub(crate) async fn fan_out(
    tx: &mut Tx,
    event_id: i64,
    kind: &str,
    agent_id: Option<&str>,
    at: i64,
) -> Result<()> {
    let rows = sqlx::query("SELECT id, event_types, agent_id FROM webhook_endpoints WHERE enabled = 1 AND deleted_at IS NULL")
        .fetch_all(&mut **tx)
        .await?;
    let mut targets = vec![];
    for r in &rows {
        let types: String = r.try_get("event_types")?;
        let only: Option<String> = r.try_get("agent_id")?;
        if only.is_some() && only.as_deref() != agent_id {
            continue;
        }
        if types.split_whitespace().any(|p| type_matches(p, kind)) {
            targets.push(r.try_get::<String, _>("id")?);
        }
    }
    if !targets.is_empty() {
        let webhook_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let dialect = crate::store::Dialect::of(tx);
        for chunk in targets.chunks(100) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, webhook_id, status, attempts, \
                 next_attempt_at, created_at, updated_at) VALUES {}",
                crate::store::value_groups(dialect, chunk.len(), 7, |m| format!(
                    "({}, {}, {}, {}, 'pending', 0, {}, {}, {})",
                    m[0], m[1], m[2], m[3], m[4], m[5], m[6]
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for ep in chunk {
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(ep.clone())
                    .bind(event_id)
                    .bind(&webhook_id)
                    .bind(at)
                    .bind(at)
                    .bind(at);
            }
            q.execute(&mut **tx).await?;
        }
    }
    notify(tx).await
}

/// The payload of a notification for events that created no webhook
/// delivery: the listeners wake their stream readers only.
const STREAMS_ONLY: &str = "streams";

/// Tells every node's stream readers that events without webhook
/// deliveries were committed: on PostgreSQL by the last statement of a write
/// batch (as the statement the batch's CTEs hang from, it must come last);
/// the caller wakes this process with [`wake_streams`] after executing it.
pub(crate) fn push_notify_streams(batch: &mut crate::store::WriteBatch) {
    if batch.dialect() == crate::store::Dialect::Postgres {
        batch.push(&format!("SELECT pg_notify('{CHANNEL}', '{STREAMS_ONLY}')"));
    }
}

/// Tells every node's listener (worker and streams) that events were
/// committed: on PostgreSQL a `NOTIFY`, delivered at commit; in this
/// process directly.
pub(crate) async fn notify(tx: &mut Tx) -> Result<()> {
    if crate::store::Dialect::of(tx) == crate::store::Dialect::Postgres {
        sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
            .execute(&mut **tx)
            .await?;
    }
    wake_local();
    Ok(())
}

// ---------------------------------------------------------------------------
// The gate: admin operations on endpoints.

impl Service {
    fn webhook_settings(&self) -> &WebhookSettings {
        &self.cfg.webhooks
    }

    async fn load_webhook(&self, id: &str) -> Result<Webhook> {
        let id = parse_webhook_id(id)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EP_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL"
        )))
        .bind(&id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| Error::not_found("webhook"))?;
        webhook_from_row(&row, self.now())
    }

    async fn check_agent_filter(&self, agent_id: Option<String>) -> Result<Option<String>> {
        match agent_id
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
        {
            None => Ok(None),
            Some(a) => {
                let id = AgentId::parse(&a)
                    .ok_or_else(|| Error::invalid("agent_id", "is not an agent id"))?;
                self.load_agent(&id)
                    .await?
                    .ok_or_else(|| Error::invalid("agent_id", "no such agent"))?;
                Ok(Some(id.0))
            }
        }
    }

    /// Registers an endpoint; its secret is in the answer and nowhere else.
    pub async fn create_webhook(&self, ctx: &Ctx, new: NewWebhook) -> Result<WebhookWithSecret> {
        self.require_admin(ctx, "webhook.create", None).await?;
        let raw = new.url.ok_or_else(|| {
            Error::invalid("url", "is required, e.g. https://ops.example.com/agentpost")
        })?;
        let types = check_event_types(new.event_types)?;
        let url = check_url(&raw, self.webhook_settings().allow_private)
            .await?
            .to_string();
        let agent = self.check_agent_filter(new.agent_id).await?;
        let description = clean_text("description", new.description, 500)?;
        let key = new_signing_key();
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, description, event_types, agent_id, enabled, signing_key, \
             created_at, updated_at) VALUES ($1,$2,$3,$4,$5,1,$6,$7,$7)",
        )
        .bind(&id)
        .bind(&url)
        .bind(description.clone())
        .bind(types.join(" "))
        .bind(agent.clone())
        .bind(&key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let details = json!({ "webhook_id": id, "url": url_for_record(&url), "event_types": types, "agent_id": agent });
        let entry = self.entry(
            ctx,
            "webhook.create",
            Some("webhook"),
            Some(id.clone()),
            None,
            "success",
            details.clone(),
        );
        self.record(&mut tx, &entry, Some(("webhook.created", details)))
            .await?;
        tx.commit().await?;
        Ok(WebhookWithSecret {
            webhook: self.load_webhook(&id).await?,
            secret: format!("whsec_{key}"),
        })
    }

    pub async fn list_webhooks(
        &self,
        ctx: &Ctx,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Webhook>> {
        self.require_admin(ctx, "webhook.list", None).await?;
        let limit = page_limit(limit)?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EP_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL AND id > $1 ORDER BY id LIMIT {}",
            limit + 1
        )))
        .bind(cursor.unwrap_or("").to_string())
        .fetch_all(&self.db.pool)
        .await?;
        let now = self.now();
        let hooks = rows
            .iter()
            .map(|r| webhook_from_row(r, now))
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(hooks, limit, |w| w.id.clone()))
    }

    pub async fn get_webhook(&self, ctx: &Ctx, id: &str) -> Result<Webhook> {
        self.require_admin(ctx, "webhook.read", Some(id)).await?;
        self.load_webhook(id).await
    }

    pub async fn update_webhook(
        &self,
        ctx: &Ctx,
        id: &str,
        patch: WebhookPatch,
    ) -> Result<Webhook> {
        self.require_admin(ctx, "webhook.update", Some(id)).await?;
        let current = self.load_webhook(id).await?;
        let mut changes = serde_json::Map::new();
        let url = match patch.url {
            Some(raw) => {
                let u = check_url(&raw, self.webhook_settings().allow_private)
                    .await?
                    .to_string();
                changes.insert("url".into(), json!(url_for_record(&u)));
                u
            }
            None => current.url.clone(),
        };
        let types = match patch.event_types {
            Some(t) => {
                let t = check_event_types(Some(t))?;
                changes.insert("event_types".into(), json!(t));
                t
            }
            None => current.event_types.clone(),
        };
        let agent = match patch.agent_id {
            Some(a) => {
                let a = self.check_agent_filter(Some(a)).await?;
                changes.insert("agent_id".into(), json!(a));
                a
            }
            None => current.agent_id.clone(),
        };
        let description = match patch.description {
            Some(d) => {
                changes.insert("description".into(), json!(true));
                clean_text("description", Some(d), 500)?
            }
            None => current.description.clone(),
        };
        let enabled = patch.enabled.unwrap_or(current.enabled);
        if enabled != current.enabled {
            changes.insert("enabled".into(), json!(enabled));
        }
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let reason: Option<String> = if enabled {
            None
        } else if current.enabled {
            Some("disabled by an admin".into())
        } else {
            current.disabled_reason.clone()
        };
        sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, event_types = $2, agent_id = $3, description = $4, enabled = $5, \
             disabled_reason = $6, failing_since = CASE WHEN $5 = 1 THEN NULL ELSE failing_since END, updated_at = $7 \
             WHERE id = $8 AND deleted_at IS NULL",
        )
        .bind(&url)
        .bind(types.join(" "))
        .bind(agent)
        .bind(description)
        .bind(enabled as i64)
        .bind(reason)
        .bind(now)
        .bind(&current.id)
        .execute(&mut *tx)
        .await?;
        if !enabled && current.enabled {
            fail_pending(&mut tx, &current.id, now, "failed").await?;
        }
        let details = json!({ "webhook_id": current.id, "changes": Value::Object(changes) });
        let entry = self.entry(
            ctx,
            "webhook.update",
            Some("webhook"),
            Some(current.id.clone()),
            None,
            "success",
            details.clone(),
        );
        self.record(&mut tx, &entry, Some(("webhook.updated", details)))
            .await?;
        tx.commit().await?;
        self.load_webhook(&current.id).await
    }

    /// Deletes an endpoint; its pending deliveries are cancelled.
    pub async fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()> {
        self.require_admin(ctx, "webhook.delete", Some(id)).await?;
        let current = self.load_webhook(id).await?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE webhook_endpoints SET deleted_at = $1, enabled = 0, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(now)
            .bind(&current.id)
            .execute(&mut *tx)
            .await?;
        fail_pending(&mut tx, &current.id, now, "cancelled").await?;
        let details = json!({ "webhook_id": current.id, "url": url_for_record(&current.url) });
        let entry = self.entry(
            ctx,
            "webhook.delete",
            Some("webhook"),
            Some(current.id.clone()),
            None,
            "success",
            details.clone(),
        );
        self.record(&mut tx, &entry, Some(("webhook.deleted", details)))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// New secret; the previous one keeps signing (alongside) for 24 hours.
    pub async fn rotate_webhook_secret(&self, ctx: &Ctx, id: &str) -> Result<WebhookWithSecret> {
        self.require_admin(ctx, "webhook.rotate_secret", Some(id))
            .await?;
        let current = self.load_webhook(id).await?;
        let key = new_signing_key();
        let now = self.now();
        let until = now + ROTATION_OVERLAP_MICROS;
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET previous_signing_key = signing_key, previous_key_until = $1, signing_key = $2, \
             updated_at = $3 WHERE id = $4 AND deleted_at IS NULL",
        )
        .bind(until)
        .bind(&key)
        .bind(now)
        .bind(&current.id)
        .execute(&mut *tx)
        .await?;
        let details = json!({ "webhook_id": current.id, "previous_valid_until": crate::clock::to_rfc3339(until) });
        let entry = self.entry(
            ctx,
            "webhook.rotate_secret",
            Some("webhook"),
            Some(current.id.clone()),
            None,
            "success",
            details.clone(),
        );
        self.record(&mut tx, &entry, Some(("webhook.secret_rotated", details)))
            .await?;
        tx.commit().await?;
        Ok(WebhookWithSecret {
            webhook: self.load_webhook(&current.id).await?,
            secret: format!("whsec_{key}"),
        })
    }

    /// Every delivery to an endpoint with each of its attempts, newest first.
    pub async fn list_webhook_deliveries(
        &self,
        ctx: &Ctx,
        id: &str,
        status: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<WebhookDelivery>> {
        self.require_admin(ctx, "webhook.deliveries", Some(id))
            .await?;
        let hook = self.load_webhook(id).await?;
        let limit = page_limit(limit)?;
        if let Some(s) = status
            && !["pending", "succeeded", "failed", "cancelled"].contains(&s)
        {
            return Err(Error::invalid(
                "status",
                "must be pending, succeeded, failed or cancelled",
            ));
        }
        let mut sql = String::from(
            "SELECT id, event_id, webhook_id, status, next_attempt_at, created_at FROM webhook_deliveries \
             WHERE endpoint_id = $1",
        );
        let mut n = 1;
        if cursor.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        if status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&hook.id);
        if let Some(c) = cursor {
            q = q.bind(c.to_string());
        }
        if let Some(s) = status {
            q = q.bind(s.to_string());
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        let mut out = vec![];
        for r in &rows {
            let next: Option<i64> = r.try_get("next_attempt_at")?;
            let status: String = r.try_get("status")?;
            out.push(WebhookDelivery {
                id: r.try_get("id")?,
                webhook_id: r.try_get("webhook_id")?,
                event_id: r.try_get("event_id")?,
                next_attempt_at: next
                    .filter(|_| status == "pending")
                    .map(crate::clock::to_rfc3339),
                status,
                created_at: crate::clock::to_rfc3339(r.try_get("created_at")?),
                attempts: vec![],
            });
        }
        let mut page = paginate(out, limit, |d| d.id.clone());
        if !page.data.is_empty() {
            let marks: Vec<String> = (1..=page.data.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT delivery_id, attempt, at, status_code, latency_ms, error FROM webhook_attempts \
                 WHERE delivery_id IN ({}) ORDER BY id",
                marks.join(",")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for d in &page.data {
                q = q.bind(d.id.clone());
            }
            for r in q.fetch_all(&self.db.pool).await? {
                let did: String = r.try_get("delivery_id")?;
                if let Some(d) = page.data.iter_mut().find(|d| d.id == did) {
                    d.attempts.push(WebhookAttempt {
                        attempt: r.try_get("attempt")?,
                        at: crate::clock::to_rfc3339(r.try_get("at")?),
                        status_code: r.try_get("status_code")?,
                        latency_ms: r.try_get("latency_ms")?,
                        error: r.try_get("error")?,
                    });
                }
            }
        }
        Ok(page)
    }

    /// Sends a `webhook.test` ping now (one attempt, no retries).
    pub async fn test_webhook(&self, ctx: &Ctx, id: &str) -> Result<WebhookDelivery> {
        self.require_admin(ctx, "webhook.test", Some(id)).await?;
        let hook = self.load_webhook(id).await?;
        let now = self.now();
        let delivery_id = uuid::Uuid::now_v7().to_string();
        let webhook_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let payload = json!({
            "type": "webhook.test",
            "timestamp": crate::clock::to_rfc3339(now),
            "data": { "webhook_id": hook.id, "message": "a test delivery from agentpost" },
        })
        .to_string();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, payload, webhook_id, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1,$2,NULL,$3,$4,'pending',0,$5,$5,$5)",
        )
        .bind(&delivery_id)
        .bind(&hook.id)
        .bind(&payload)
        .bind(&webhook_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let entry = self.entry(
            ctx,
            "webhook.test",
            Some("webhook"),
            Some(hook.id.clone()),
            None,
            "success",
            json!({ "delivery_id": delivery_id }),
        );
        self.record(&mut tx, &entry, None).await?;
        tx.commit().await?;
        wake_local();
        Ok(WebhookDelivery {
            id: delivery_id,
            webhook_id,
            event_id: None,
            status: "pending".into(),
            next_attempt_at: Some(crate::clock::to_rfc3339(now)),
            created_at: crate::clock::to_rfc3339(now),
            attempts: vec![],
        })
    }

    /// Re-sends one event, or every failed delivery since a time, with the
    /// same `webhook-id` as before.
    pub async fn replay_webhook(
        &self,
        ctx: &Ctx,
        id: &str,
        req: ReplayRequest,
    ) -> Result<Replayed> {
        self.require_admin(ctx, "webhook.replay", Some(id)).await?;
        let hook = self.load_webhook(id).await?;
        if !hook.enabled {
            return Err(Error::conflict(
                "webhook-disabled",
                "the webhook is disabled; enable it first (PATCH with enabled: true)",
            ));
        }
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let (n, details) = match (req.event_id, req.since) {
            (Some(event_id), None) => {
                let exists = sqlx::query("SELECT id FROM events WHERE id = $1")
                    .bind(event_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(Error::invalid("event_id", "no such event"));
                }
                let reset = sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
                     lease_until = NULL, lease_owner = NULL, updated_at = $1 \
                     WHERE endpoint_id = $2 AND event_id = $3 AND status <> 'pending'",
                )
                .bind(now)
                .bind(&hook.id)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if reset == 0 {
                    let pending = sqlx::query("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2")
                        .bind(&hook.id)
                        .bind(event_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if pending.is_none() {
                        sqlx::query(
                            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, webhook_id, status, attempts, \
                             next_attempt_at, created_at, updated_at) VALUES ($1,$2,$3,$4,'pending',0,$5,$5,$5)",
                        )
                        .bind(uuid::Uuid::now_v7().to_string())
                        .bind(&hook.id)
                        .bind(event_id)
                        .bind(format!("msg_{}", uuid::Uuid::now_v7().simple()))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                (1, json!({ "event_id": event_id }))
            }
            (None, Some(since)) => {
                let t = crate::service::parse_time("since", Some(&since))?.unwrap_or_default();
                let n = sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
                     lease_until = NULL, lease_owner = NULL, updated_at = $1 \
                     WHERE endpoint_id = $2 AND status = 'failed' AND created_at >= $3",
                )
                .bind(now)
                .bind(&hook.id)
                .bind(t)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
                (n, json!({ "since": since, "deliveries": n }))
            }
            _ => return Err(Error::invalid("event_id", "give either event_id or since")),
        };
        let entry = self.entry(
            ctx,
            "webhook.replay",
            Some("webhook"),
            Some(hook.id.clone()),
            None,
            "success",
            details,
        );
        self.record(&mut tx, &entry, None).await?;
        tx.commit().await?;
        wake_local();
        Ok(Replayed { deliveries: n })
    }

    /// The server disables an endpoint (410 Gone, days of failure), with an
    /// audit entry and a `webhook.disabled` event.
    async fn disable_webhook(&self, id: &str, reason: &str) -> Result<()> {
        let ctx = Ctx::system("webhook delivery");
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 WHERE id = $3 AND enabled = 1",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(());
        }
        fail_pending(&mut tx, id, now, "failed").await?;
        let details = json!({ "webhook_id": id, "reason": reason });
        let entry = self.entry(
            &ctx,
            "webhook.disable",
            Some("webhook"),
            Some(id.to_string()),
            None,
            "success",
            details.clone(),
        );
        self.record(&mut tx, &entry, Some(("webhook.disabled", details)))
            .await?;
        tx.commit().await?;
        tracing::warn!(webhook = %id, reason, "webhook endpoint disabled");
        Ok(())
    }
}

async fn fail_pending(tx: &mut Tx, endpoint: &str, now: i64, status: &'static str) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, next_attempt_at = NULL, updated_at = $2 \
         WHERE endpoint_id = $3 AND status = 'pending'",
    )
    .bind(status)
    .bind(now)
    .bind(endpoint)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The delivery worker

/// A claimed delivery.
struct Job {
    id: String,
    endpoint_id: String,
    event_id: Option<i64>,
    payload: Option<String>,
    webhook_id: String,
    attempts: i64,
}

/// Resolves host names for deliveries, dropping private addresses unless
/// allowed: the connection goes to an address that passed the check, so a
/// DNS answer that changed since creation cannot reach the private network.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow || blocked_reason(a.ip()).is_none())
                .collect();
            if ok.is_empty() {
                let why = all
                    .first()
                    .and_then(|a| blocked_reason(a.ip()))
                    .unwrap_or("unresolvable");
                return Err(format!("{host} resolves to {why}; refused").into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {} s", timeout.as_secs_f64());
    }
    let mut msg = String::from(if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    });
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = src {
        last = Some(s.to_string());
        src = s.source();
    }
    if let Some(l) = last {
        msg.push_str(": ");
        msg.push_str(&l);
    }
    msg
}

fn sign(key_b64: &str, msg_id: &str, ts: i64, body: &str) -> Result<String> {
    let wh = standardwebhooks::Webhook::new(key_b64)
        .map_err(|e| Error::Internal(format!("webhook key: {e}")))?;
    wh.sign(msg_id, ts, body.as_bytes())
        .map_err(|e| Error::Internal(format!("webhook signature: {e}")))
}

impl Service {
    /// The per-node delivery worker: claims due deliveries with a lease
    /// (`SKIP LOCKED` on PostgreSQL), sends them concurrently, records each
    /// attempt and schedules the next. Wakes on local commits, on
    /// `LISTEN/NOTIFY` from other nodes (PostgreSQL, `pg_url`) and on a poll.
    pub async fn run_webhook_worker(
        self: Arc<Self>,
        pg_url: Option<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        STREAMS_CLOSING.store(false, Ordering::Release);
        let settings = self.webhook_settings().clone();
        let client = match reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("agentpost-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private,
            }))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook delivery disabled: cannot build the HTTP client");
                return;
            }
        };
        let node = format!("node_{:012x}", rand::random::<u64>() >> 16);
        let listener = match (pg_url, self.db.dialect) {
            (Some(url), Dialect::Postgres) => Some(tokio::spawn(listen(url))),
            _ => None,
        };
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            while inflight.try_join_next().is_some() {}
            let room = MAX_INFLIGHT - inflight.len();
            let mut claimed = 0;
            if room > 0 {
                match self.claim_deliveries(&node, room as i64).await {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            let svc = self.clone();
                            let client = client.clone();
                            let node = node.clone();
                            inflight.spawn(async move { svc.attempt(&client, &node, job).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
                }
            }
            if room > 0 && claimed == room {
                continue;
            }
            let wait = match self.next_due_in().await {
                Ok(Some(d)) => d.min(settings.poll),
                _ => settings.poll,
            };
            tokio::select! {
                _ = WORKER_WAKE.notified() => {}
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        STREAMS_CLOSING.store(true, Ordering::Release);
        EVENTS_WAKE.notify_waiters();
        // Let attempts in flight finish briefly; an aborted one is retried
        // when its lease runs out.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        inflight.abort_all();
        if let Some(l) = listener {
            l.abort();
        }
    }

    async fn claim_deliveries(&self, node: &str, n: i64) -> Result<Vec<Job>> {
        let now = self.now();
        let lease = now + (self.webhook_settings().timeout.as_micros() as i64) + 45_000_000;
        // Most wake-ups (every commit) find nothing due.
        if !self
            .db
            .has_due(crate::store::WorkQueue::Webhooks, now)
            .await?
        {
            return Ok(vec![]);
        }
        let lock = if self.db.dialect == Dialect::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1, lease_owner = $2 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT {n}{lock}) \
             RETURNING id, endpoint_id, event_id, payload, webhook_id, attempts"
        );
        let gate = self.db.write_gate().await;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(lease)
            .bind(node)
            .bind(now)
            .fetch_all(self.db.writer())
            .await?;
        drop(gate);
        rows.iter()
            .map(|r| {
                Ok(Job {
                    id: r.try_get("id")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    event_id: r.try_get("event_id")?,
                    payload: r.try_get("payload")?,
                    webhook_id: r.try_get("webhook_id")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn next_due_in(&self) -> Result<Option<Duration>> {
        let now = self.now();
        let row = sqlx::query("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at > $1")
            .bind(now)
            .fetch_one(&self.db.pool)
            .await?;
        let next: Option<i64> = row.try_get(0)?;
        Ok(next.map(|t| Duration::from_micros((t - now).max(0) as u64)))
    }

    async fn attempt(&self, client: &reqwest::Client, node: &str, job: Job) {
        if let Err(e) = self.try_attempt(client, node, &job).await {
            tracing::warn!(delivery = %job.id, error = %e, "webhook attempt could not be completed");
        }
    }

    async fn try_attempt(&self, client: &reqwest::Client, node: &str, job: &Job) -> Result<()> {
        let settings = self.webhook_settings();
        let ep = sqlx::query(
            "SELECT url, enabled, deleted_at, signing_key, previous_signing_key, previous_key_until \
             FROM webhook_endpoints WHERE id = $1",
        )
        .bind(&job.endpoint_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(ep) = ep else { return Ok(()) };
        let deleted: Option<i64> = ep.try_get("deleted_at")?;
        if deleted.is_some() || ep.try_get::<i64, _>("enabled")? == 0 {
            let status = if deleted.is_some() {
                "cancelled"
            } else {
                "failed"
            };
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $1, next_attempt_at = NULL, lease_until = NULL, lease_owner = NULL, \
                 updated_at = $2 WHERE id = $3 AND status = 'pending'",
            )
            .bind(status)
            .bind(self.now())
            .bind(&job.id)
            .execute(&self.db.pool)
            .await?;
            return Ok(());
        }
        let body = match (&job.payload, job.event_id) {
            (Some(p), _) => p.clone(),
            (None, Some(event_id)) => self.event_payload(event_id).await?,
            (None, None) => {
                return Err(Error::Internal("delivery without payload or event".into()));
            }
        };
        let url: String = ep.try_get("url")?;
        let now = self.now();
        let ts = now / 1_000_000;
        let key: String = ep.try_get("signing_key")?;
        let mut signature = sign(&key, &job.webhook_id, ts, &body)?;
        let prev: Option<String> = ep.try_get("previous_signing_key")?;
        let prev_until: Option<i64> = ep.try_get("previous_key_until")?;
        if let (Some(p), Some(until)) = (prev, prev_until)
            && until > now
        {
            signature.push(' ');
            signature.push_str(&sign(&p, &job.webhook_id, ts, &body)?);
        }
        let started = Instant::now();
        let outcome: std::result::Result<u16, String> =
            match literal_refusal(&url, settings.allow_private) {
                Some(refused) => Err(refused),
                None => {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &job.webhook_id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", signature)
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(mut resp) => {
                            let code = resp.status().as_u16();
                            // Read (a bounded part of) the answer so the connection can be reused.
                            let mut read = 0usize;
                            while let Ok(Some(chunk)) = resp.chunk().await {
                                read += chunk.len();
                                if read > 64 * 1024 {
                                    break;
                                }
                            }
                            Ok(code)
                        }
                        Err(e) => Err(describe(&e, settings.timeout)),
                    }
                }
            };
        let latency_ms = started.elapsed().as_millis() as i64;
        let (code, error) = match outcome {
            Ok(c) if (200..300).contains(&c) => (Some(c), None),
            Ok(c) => (Some(c), Some(format!("HTTP {c}"))),
            Err(e) => (None, Some(e)),
        };
        let success = error.is_none();
        let gone = code == Some(410);
        let is_test = job.payload.is_some();
        let attempt_no = job.attempts + 1;
        let done_at = self.now();
        let (status, next) = if success {
            ("succeeded", None)
        } else if gone || is_test || attempt_no as usize > settings.retry_schedule.len() {
            ("failed", None)
        } else {
            let wait = settings.retry_schedule[(attempt_no - 1) as usize];
            ("pending", Some(done_at + wait.as_micros() as i64))
        };
        let mut tx = self.db.begin_gated().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, attempt, at, status_code, latency_ms, error, node) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&job.id)
        .bind(attempt_no)
        .bind(now)
        .bind(code.map(i64::from))
        .bind(latency_ms)
        .bind(error.clone())
        .bind(node)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, lease_until = NULL, \
             lease_owner = NULL, updated_at = $4 WHERE id = $5 AND lease_owner = $6 AND status = 'pending'",
        )
        .bind(status)
        .bind(attempt_no)
        .bind(next)
        .bind(done_at)
        .bind(&job.id)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        let mut failing_since = None;
        if !is_test {
            if success {
                sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                    .bind(&job.endpoint_id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2")
                    .bind(now)
                    .bind(&job.endpoint_id)
                    .execute(&mut *tx)
                    .await?;
                let r = sqlx::query("SELECT failing_since FROM webhook_endpoints WHERE id = $1")
                    .bind(&job.endpoint_id)
                    .fetch_one(&mut *tx)
                    .await?;
                failing_since = r.try_get::<Option<i64>, _>(0)?;
            }
        }
        tx.commit().await?;
        if success {
            tracing::debug!(delivery = %job.id, attempt = attempt_no, latency_ms, "webhook delivered");
        } else {
            tracing::info!(delivery = %job.id, attempt = attempt_no, status, error = error.as_deref().unwrap_or(""), "webhook attempt failed");
        }
        if gone {
            self.disable_webhook(&job.endpoint_id, "the endpoint answered 410 Gone")
                .await?;
        } else if let Some(since) = failing_since
            && done_at - since >= settings.disable_after.as_micros() as i64
        {
            let reason = format!(
                "every attempt failed for {} s",
                settings.disable_after.as_secs()
            );
            self.disable_webhook(&job.endpoint_id, &reason).await?;
        }
        Ok(())
    }

    async fn event_payload(&self, event_id: i64) -> Result<String> {
        let r = sqlx::query("SELECT type, at, agent_id, data FROM events WHERE id = $1")
            .bind(event_id)
            .fetch_one(&self.db.pool)
            .await?;
        let data: String = r.try_get("data")?;
        let kind: String = r.try_get("type")?;
        Ok(json!({
            "id": event_id,
            "type": kind,
            "timestamp": crate::clock::to_rfc3339(r.try_get("at")?),
            "agent_id": r.try_get::<Option<String>, _>("agent_id")?,
            "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
        })
        .to_string())
    }
}

/// Refuses URLs whose host is a literal private address (the resolver only
/// sees names).
fn literal_refusal(url: &str, allow_private: bool) -> Option<String> {
    if allow_private {
        return None;
    }
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()?;
    blocked_reason(ip).map(|why| format!("{ip} is {why}; refused"))
}

/// PostgreSQL: wakes the local worker and streams when any node commits an event.
async fn listen(url: String) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => {
                    // Catch up on anything committed while not listening.
                    WORKER_WAKE.notify_one();
                    EVENTS_WAKE.notify_waiters();
                    loop {
                        match l.recv().await {
                            Ok(n) => {
                                if n.payload() != STREAMS_ONLY {
                                    WORKER_WAKE.notify_one();
                                }
                                EVENTS_WAKE.notify_waiters();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for webhook wake-ups"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect for LISTEN; relying on polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_named() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(blocked_reason(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(blocked_reason(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn patterns() {
        assert!(type_matches("*", "agent.created"));
        assert!(type_matches("agent.*", "agent.created"));
        assert!(!type_matches("agent.*", "agents.created"));
        assert!(type_matches("message.received", "message.received"));
        assert!(
            valid_type_pattern("webhook.secret_rotated")
                && !valid_type_pattern("Agent")
                && !valid_type_pattern("a..b")
        );
        assert_eq!(
            parse_durations("1s,500ms,2m").unwrap(),
            vec![
                Duration::from_secs(1),
                Duration::from_millis(500),
                Duration::from_secs(120)
            ]
        );
    }

    #[test]
    fn signs_like_the_spec_example() {
        let s = sign(
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(s, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }
}
