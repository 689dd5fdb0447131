//! Changing an agent's state of a message: unread, starred, folder, labels
//! (PATCH), and DELETE (to trash; from trash, purged for good). Both need
//! scope `mail.read`: managing one's own mailbox is part of reading it, and
//! no separate scope exists for it yet. Every change is audited with an
//! event, in the same transaction.

use super::read::{DetailView, check_folder};
use super::{SYSTEM_FOLDERS, Service};
use crate::error::{Error, Result};
use crate::service::{Agent, Ctx, clean_text};
use crate::store::Tx;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Labels per message, and label length.
const MAX_LABELS: usize = 50;
const MAX_LABEL_CHARS: usize = 64;

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    pub unread: Option<bool>,
    pub starred: Option<bool>,
    /// Move to a system folder.
    pub folder: Option<String>,
    /// Replace every label.
    pub labels: Option<Vec<String>>,
    pub add_labels: Option<Vec<String>>,
    pub remove_labels: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Removed {
    pub id: String,
    /// `trashed` (moved to trash) or `purged` (deleted for good).
    pub outcome: String,
}

fn parse_labels(field: &str, v: Vec<String>) -> Result<Vec<String>> {
    let mut out = vec![];
    for l in v {
        let l = clean_text(field, Some(l), MAX_LABEL_CHARS)?
            .ok_or_else(|| Error::invalid(field, "labels may not be empty"))?;
        if SYSTEM_FOLDERS.contains(&l.to_lowercase().as_str()) {
            return Err(Error::invalid(
                field,
                format!("'{l}' is a system folder; set `folder` instead"),
            ));
        }
        if l.contains('\n') || l.contains('\t') {
            return Err(Error::invalid(field, "labels are one line"));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

impl Service {
    /// Changes flags, folder and labels of one message (scope `mail.read`).
    pub async fn update_message(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        message_id: &str,
        patch: MessagePatch,
    ) -> Result<super::MessageDetail> {
        let agent = self
            .mailbox_access(ctx, agent_id, "mail.read", "message.update")
            .await?;
        if let Some(f) = &patch.folder {
            check_folder("folder", f)?;
        }
        let replace = patch
            .labels
            .map(|l| parse_labels("labels", l))
            .transpose()?;
        let add = patch
            .add_labels
            .map(|l| parse_labels("add_labels", l))
            .transpose()?
            .unwrap_or_default();
        let remove = patch
            .remove_labels
            .map(|l| parse_labels("remove_labels", l))
            .transpose()?
            .unwrap_or_default();
        let current = self.detail_of(&agent, message_id, DetailView::Meta).await?;
        let id = current.summary.id.clone();
        let mut labels = replace.unwrap_or_else(|| current.summary.labels.clone());
        for l in add {
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        labels.retain(|l| !remove.contains(l));
        if labels.len() > MAX_LABELS {
            return Err(Error::invalid(
                "labels",
                format!("a message carries at most {MAX_LABELS} labels"),
            ));
        }
        let mut changes = serde_json::Map::new();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        if let Some(u) = patch.unread.filter(|u| *u != current.summary.unread) {
            self.set_entry(
                &mut tx,
                &agent,
                &id,
                "UPDATE mailbox_entries SET unread = $3 WHERE agent_id = $1 AND message_id = $2",
                u as i64,
            )
            .await?;
            changes.insert("unread".into(), json!(u));
        }
        if let Some(s) = patch.starred.filter(|s| *s != current.summary.starred) {
            self.set_entry(
                &mut tx,
                &agent,
                &id,
                "UPDATE mailbox_entries SET starred = $3 WHERE agent_id = $1 AND message_id = $2",
                s as i64,
            )
            .await?;
            changes.insert("starred".into(), json!(s));
        }
        if let Some(f) = patch.folder.filter(|f| *f != current.summary.folder) {
            sqlx::query("UPDATE mailbox_entries SET folder = $3, folder_at = $4 WHERE agent_id = $1 AND message_id = $2")
                .bind(agent.id.as_str())
                .bind(&id)
                .bind(&f)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            changes.insert(
                "folder".into(),
                json!({ "from": current.summary.folder, "to": f }),
            );
        }
        let mut old = current.summary.labels.clone();
        old.sort();
        let mut new = labels.clone();
        new.sort();
        if old != new {
            sqlx::query("DELETE FROM message_labels WHERE agent_id = $1 AND message_id = $2")
                .bind(agent.id.as_str())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            for l in &labels {
                sqlx::query(
                    "INSERT INTO message_labels (agent_id, message_id, label) VALUES ($1, $2, $3)",
                )
                .bind(agent.id.as_str())
                .bind(&id)
                .bind(l)
                .execute(&mut *tx)
                .await?;
            }
            changes.insert("labels".into(), json!(labels));
        }
        if changes.is_empty() {
            drop(tx);
            return self.detail_of(&agent, &id, DetailView::Safe).await;
        }
        let changes = serde_json::Value::Object(changes);
        let entry = self.entry(
            ctx,
            "message.update",
            Some("message"),
            Some(id.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "changes": changes }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "message.updated",
                json!({ "agent_id": agent.id, "message_id": id, "changes": changes }),
            )),
        )
        .await?;
        tx.commit().await?;
        self.detail_of(&agent, &id, DetailView::Safe).await
    }

    async fn set_entry(
        &self,
        tx: &mut Tx,
        agent: &Agent,
        id: &str,
        sql: &'static str,
        v: i64,
    ) -> Result<()> {
        sqlx::query(sql)
            .bind(agent.id.as_str())
            .bind(id)
            .bind(v)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Moves a message to trash; a message already in trash is purged
    /// (scope `mail.read`).
    pub async fn delete_message(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        message_id: &str,
    ) -> Result<Removed> {
        let agent = self
            .mailbox_access(ctx, agent_id, "mail.read", "message.delete")
            .await?;
        let current = self.detail_of(&agent, message_id, DetailView::Meta).await?;
        let id = current.summary.id.clone();
        let mut tx = self.db.begin_write().await?;
        let (outcome, orphans) = if current.summary.folder == "trash" {
            let orphans = self
                .purge_entries(&mut tx, agent.id.as_str(), std::slice::from_ref(&id))
                .await?;
            ("purged", orphans)
        } else {
            sqlx::query("UPDATE mailbox_entries SET folder = 'trash', folder_at = $3 WHERE agent_id = $1 AND message_id = $2")
                .bind(agent.id.as_str())
                .bind(&id)
                .bind(self.now())
                .execute(&mut *tx)
                .await?;
            ("trashed", vec![])
        };
        let entry = self.entry(
            ctx,
            "message.delete",
            Some("message"),
            Some(id.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "outcome": outcome, "folder": current.summary.folder }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "message.deleted",
                json!({ "agent_id": agent.id, "message_id": id, "outcome": outcome }),
            )),
        )
        .await?;
        tx.commit().await?;
        super::retention::collect_blobs(&self.db, &orphans).await?;
        Ok(Removed {
            id,
            outcome: outcome.into(),
        })
    }
}
