//! The mailbox: inbound mail filed into agents' mailboxes, threads, labels,
//! search, retention. A message is stored once (`messages` + one blob) and
//! filed in each recipient's mailbox (`mailbox_entries`), which holds that
//! agent's state of it (folder, unread, starred, labels).
//!
//! - `ingest`: RCPT checks and the durable group-committed delivery path;
//! - `read`: listing, search, one message, raw, attachments, threads, folders;
//! - `write`: PATCH (flags, folder, labels) and DELETE (trash, then purge);
//! - `retention`: the expiry sweeper, blob collection, decommission purge
//!   and export;
//! - `parse`: raw message -> metadata (mail-parser).

mod ingest;
mod parse;
mod read;
mod retention;
mod write;

pub use ingest::{DeliveryError, InboundDelivery, Ingest, RecipientCheck};
pub use parse::{AttachmentInfo, EmailAddress};
pub use read::{
    Attachment, FolderCount, FolderCounts, MessageDetail, MessageQuery, MessageSummary, RawMessage,
    ThreadDetail, ThreadQuery, ThreadSummary,
};
pub use retention::RetentionReport;
pub use write::{MessagePatch, Removed};

use super::{Ctx, PrincipalKind, Service};
use crate::error::{Error, Result};
use serde_json::Value;
use sqlx::Any;

/// The system folders; anything else a caller names is a label.
pub const SYSTEM_FOLDERS: &[&str] = &["inbox", "sent", "drafts", "trash", "spam", "archive"];

/// Defaults when the agent's policy does not say otherwise.
pub const DEFAULT_STORAGE_BYTES: i64 = 1 << 30;
pub const DEFAULT_INBOX_RETENTION_DAYS: i64 = 30;
pub const DEFAULT_SPAM_RETENTION_DAYS: i64 = 7;
/// Largest message accepted over SMTP.
pub const MAX_MESSAGE_BYTES: usize = 50 * 1024 * 1024;

/// The mailbox settings of an agent's policy (`policies.settings` JSON):
/// `storage_bytes`, `inbox_retention_days`, `spam_retention_days`. A
/// retention of 0 keeps mail forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MailboxPolicy {
    pub storage_bytes: i64,
    pub inbox_retention_days: i64,
    pub spam_retention_days: i64,
}

impl MailboxPolicy {
    fn from_settings(settings: Option<&Value>) -> Self {
        let get = |k: &str, d: i64| {
            settings
                .and_then(|s| s.get(k))
                .and_then(Value::as_i64)
                .filter(|v| *v >= 0)
                .unwrap_or(d)
        };
        MailboxPolicy {
            storage_bytes: get("storage_bytes", DEFAULT_STORAGE_BYTES),
            inbox_retention_days: get("inbox_retention_days", DEFAULT_INBOX_RETENTION_DAYS),
            spam_retention_days: get("spam_retention_days", DEFAULT_SPAM_RETENTION_DAYS),
        }
    }
}

/// The agent's own policy, else the organisation's default one, else the
/// built-in defaults.
pub(crate) async fn mailbox_policy<'e, E>(exec: E, policy_id: Option<&str>) -> Result<MailboxPolicy>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT settings FROM policies WHERE id = $1 OR (is_default = 1 AND NOT EXISTS (SELECT 1 FROM policies WHERE id = $1)) \
         ORDER BY is_default LIMIT 1",
    )
    .bind(policy_id.unwrap_or(""))
    .fetch_optional(exec)
    .await?;
    let settings = row.and_then(|(s,)| serde_json::from_str::<Value>(&s).ok());
    Ok(MailboxPolicy::from_settings(settings.as_ref()))
}

pub(crate) fn bool_of(v: i64) -> bool {
    v != 0
}

impl Service {
    /// May: the agent must be visible to the caller and the caller must
    /// hold `scope` (admins hold every scope). Admin access to an agent's
    /// mail is audited; an agent reading its own mail is not (it would turn
    /// every read into a write).
    pub(crate) async fn mailbox_access(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        scope: &str,
        action: &'static str,
    ) -> Result<super::Agent> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        if !ctx.principal.has_scope(scope) {
            self.record_denied(ctx, action, Some(agent.id.as_str()))
                .await;
            return Err(Error::Forbidden(format!("this needs the {scope} scope")));
        }
        Ok(agent)
    }

    /// Records an admin's read of an agent's mail in its own transaction.
    pub(crate) async fn audit_admin_read(
        &self,
        ctx: &Ctx,
        agent: &super::Agent,
        action: &'static str,
        target: Option<String>,
        details: Value,
    ) -> Result<()> {
        if ctx.principal.kind != PrincipalKind::Admin {
            return Ok(());
        }
        let entry = self.entry(
            ctx,
            action,
            target.as_ref().map(|_| "message"),
            target,
            Some(agent.id.0.clone()),
            "success",
            details,
        );
        self.record_alone(&entry).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_settings_fall_back_to_defaults() {
        let p = MailboxPolicy::from_settings(None);
        assert_eq!(p.storage_bytes, DEFAULT_STORAGE_BYTES);
        let s =
            json!({ "storage_bytes": 1000, "spam_retention_days": 0, "inbox_retention_days": "x" });
        let p = MailboxPolicy::from_settings(Some(&s));
        assert_eq!(
            (
                p.storage_bytes,
                p.inbox_retention_days,
                p.spam_retention_days
            ),
            (1000, 30, 0)
        );
    }
}
