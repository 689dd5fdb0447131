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

pub(crate) mod ingest;
pub(crate) mod parse;
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

/// The agent's own policy, else the organisation's default one, else the
/// built-in defaults.
pub(crate) async fn mailbox_policy<'e, E>(exec: E, policy_id: Option<&str>) -> Result<MailboxPolicy>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let s = super::policies::effective_policy(exec, policy_id).await?;
    Ok(MailboxPolicy {
        storage_bytes: s.storage_bytes,
        inbox_retention_days: s.inbox_retention_days,
        spam_retention_days: s.spam_retention_days,
    })
}

/// The `message.received` payload: the model-safe view, never the raw
/// message (a link to it instead).
pub(crate) fn received_event(
    agent_id: &str,
    address: &str,
    message_id: &str,
    thread_id: &str,
    folder: &str,
    pm: &parse::Parsed,
    size: i64,
) -> serde_json::Value {
    serde_json::json!({
        "agent_id": agent_id,
        "address": address,
        "message_id": message_id,
        "thread_id": thread_id,
        "folder": folder,
        "from": pm.from.first().and_then(|a| a.address.clone()),
        "subject": pm.subject,
        "snippet": pm.snippet,
        "safe": { "text": pm.safe_text, "risk": pm.risk, "findings": pm.finding_kinds },
        "size_bytes": size,
        "raw_path": format!("/v1/agents/{agent_id}/messages/{message_id}?view=raw"),
    })
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
        details: serde_json::Value,
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
    use super::super::policies::PolicySettings;
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_settings_fall_back_to_defaults() {
        let p = PolicySettings::from_stored("not json");
        assert_eq!(p.storage_bytes, DEFAULT_STORAGE_BYTES);
        let s =
            json!({ "storage_bytes": 1000, "spam_retention_days": 0, "inbox_retention_days": "x" });
        let p = PolicySettings::from_stored(&s.to_string());
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
