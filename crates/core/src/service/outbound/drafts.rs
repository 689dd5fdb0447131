//! Drafts (`mail.draft`), sending them (`mail.send`), and replies,
//! reply-all and forwards built from a message in the agent's mailbox.
//! Editing or deleting a draft voids a send of it that waits for
//! confirmation: a human confirms exact bytes, never a moving target.

use super::compose::{self, AttachmentInput, Compose, RecipientInput};
use super::send::SendInfo;
use crate::error::{Error, Result};
use crate::service::mailbox::EmailAddress;
use crate::service::mailbox::parse;
use crate::service::{Agent, Ctx, Page, Service, page_limit, paginate};
use crate::store::Tx;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Draft {
    pub id: String,
    pub agent_id: String,
    #[serde(flatten)]
    pub content: Compose,
    /// Bumped by every edit.
    pub version: i64,
    /// A send of this draft waiting for confirmation, if any.
    pub pending_send_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/agents/{id}/messages/{mid}/reply`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    pub text: Option<String>,
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// Also to the original's other recipients (To and Cc), not only the sender.
    #[serde(default)]
    pub reply_all: bool,
    #[serde(default)]
    pub cc: Vec<RecipientInput>,
    #[serde(default)]
    pub bcc: Vec<RecipientInput>,
}

/// `POST /v1/agents/{id}/messages/{mid}/forward`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    #[serde(default)]
    pub to: Vec<RecipientInput>,
    #[serde(default)]
    pub cc: Vec<RecipientInput>,
    #[serde(default)]
    pub bcc: Vec<RecipientInput>,
    /// A note above the forwarded message.
    pub text: Option<String>,
    pub html: Option<String>,
    /// Forward the original's attachments too (default true).
    pub include_attachments: Option<bool>,
}

fn draft_from_row(r: &sqlx::any::AnyRow) -> Result<Draft> {
    let content: String = r.try_get("content")?;
    Ok(Draft {
        id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        content: serde_json::from_str(&content)
            .map_err(|e| Error::Internal(format!("stored draft: {e}")))?,
        version: r.try_get("version")?,
        pending_send_id: r.try_get("pending_send_id")?,
        created_at: crate::clock::to_rfc3339(r.try_get("created_at")?),
        updated_at: crate::clock::to_rfc3339(r.try_get("updated_at")?),
    })
}

const DRAFT_SELECT: &str = "SELECT d.id, d.agent_id, d.content, d.version, d.created_at, d.updated_at, \
     (SELECT MIN(s.id) FROM sends s WHERE s.draft_id = d.id AND s.status = 'pending_confirmation') AS pending_send_id \
     FROM drafts d";

fn subject_with(prefix: &str, subject: Option<&str>) -> String {
    let s = subject.unwrap_or("").trim();
    if s.to_ascii_lowercase()
        .starts_with(&prefix.to_ascii_lowercase())
    {
        s.to_string()
    } else {
        format!("{prefix} {s}").trim().to_string()
    }
}

fn to_inputs(list: &[EmailAddress]) -> Vec<RecipientInput> {
    list.iter()
        .filter_map(|a| {
            a.address.clone().map(|email| RecipientInput::Named {
                email,
                name: a.name.clone(),
            })
        })
        .collect()
}

fn input_email(r: &RecipientInput) -> String {
    match r {
        RecipientInput::Address(a) => a.to_ascii_lowercase(),
        RecipientInput::Named { email, .. } => email.to_ascii_lowercase(),
    }
}

impl Service {
    async fn draft_agent(&self, ctx: &Ctx, agent_id: &str, action: &'static str) -> Result<Agent> {
        self.mailbox_access(ctx, agent_id, "mail.draft", action)
            .await
    }

    async fn load_draft(&self, agent: &Agent, draft_id: &str) -> Result<Draft> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DRAFT_SELECT} WHERE d.id = $1 AND d.agent_id = $2"
        )))
        .bind(draft_id)
        .bind(agent.id.as_str())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| Error::not_found("draft"))?;
        draft_from_row(&row)
    }

    pub async fn create_draft(&self, ctx: &Ctx, agent_id: &str, c: Compose) -> Result<Draft> {
        let agent = self.draft_agent(ctx, agent_id, "draft.create").await?;
        compose::validate(&c)?;
        if let Some(mid) = &c.reply_to_message_id {
            self.reply_refs(&agent, mid).await?;
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO drafts (id, agent_id, content, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)",
        )
        .bind(&id)
        .bind(agent.id.as_str())
        .bind(json!(c).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let entry = self.entry(
            ctx,
            "draft.create",
            Some("draft"),
            Some(id.clone()),
            Some(agent.id.0.clone()),
            "success",
            json!({}),
        );
        self.record(&mut tx, &entry, None).await?;
        tx.commit().await?;
        self.load_draft(&agent, &id).await
    }

    pub async fn get_draft(&self, ctx: &Ctx, agent_id: &str, draft_id: &str) -> Result<Draft> {
        let agent = self.draft_agent(ctx, agent_id, "draft.read").await?;
        self.load_draft(&agent, draft_id).await
    }

    pub async fn list_drafts(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Draft>> {
        let agent = self.draft_agent(ctx, agent_id, "draft.list").await?;
        let limit = page_limit(limit)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DRAFT_SELECT} WHERE d.agent_id = $1 AND d.id > $2 ORDER BY d.id LIMIT $3"
        )))
        .bind(agent.id.as_str())
        .bind(cursor.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows
            .iter()
            .map(draft_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, limit, |d| d.id.clone()))
    }

    /// Changes the fields present in `patch` (a JSON object of compose
    /// fields); voids a send of this draft waiting for confirmation.
    pub async fn update_draft(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        draft_id: &str,
        patch: Value,
    ) -> Result<Draft> {
        let agent = self.draft_agent(ctx, agent_id, "draft.update").await?;
        let current = self.load_draft(&agent, draft_id).await?;
        let Value::Object(patch) = patch else {
            return Err(Error::BadRequest("the body must be a JSON object".into()));
        };
        let mut merged = match json!(current.content) {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        for (k, v) in patch {
            merged.insert(k, v);
        }
        let c: Compose = serde_json::from_value(Value::Object(merged))
            .map_err(|e| Error::BadRequest(format!("invalid draft: {e}")))?;
        compose::validate(&c)?;
        if let Some(mid) = &c.reply_to_message_id {
            self.reply_refs(&agent, mid).await?;
        }
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE drafts SET content = $1, version = version + 1, updated_at = $2 WHERE id = $3",
        )
        .bind(json!(c).to_string())
        .bind(now)
        .bind(draft_id)
        .execute(&mut *tx)
        .await?;
        let voided = self
            .void_draft_sends(&mut tx, ctx, &agent, draft_id, "the draft was edited")
            .await?;
        let entry = self.entry(
            ctx,
            "draft.update",
            Some("draft"),
            Some(draft_id.to_string()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "voided_sends": voided }),
        );
        self.record(&mut tx, &entry, None).await?;
        tx.commit().await?;
        self.load_draft(&agent, draft_id).await
    }

    pub async fn delete_draft(&self, ctx: &Ctx, agent_id: &str, draft_id: &str) -> Result<()> {
        let agent = self.draft_agent(ctx, agent_id, "draft.delete").await?;
        self.load_draft(&agent, draft_id).await?;
        let mut tx = self.db.begin_write().await?;
        let voided = self
            .void_draft_sends(&mut tx, ctx, &agent, draft_id, "the draft was deleted")
            .await?;
        sqlx::query("DELETE FROM drafts WHERE id = $1")
            .bind(draft_id)
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "draft.delete",
            Some("draft"),
            Some(draft_id.to_string()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "voided_sends": voided }),
        );
        self.record(&mut tx, &entry, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn void_draft_sends(
        &self,
        tx: &mut Tx,
        ctx: &Ctx,
        agent: &Agent,
        draft_id: &str,
        why: &str,
    ) -> Result<Vec<String>> {
        let now = self.now();
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM sends WHERE draft_id = $1 AND status = 'pending_confirmation'",
        )
        .bind(draft_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut out = vec![];
        for (id,) in ids {
            sqlx::query(
                "UPDATE sends SET status = 'voided', reason = $1, completed_at = $2 WHERE id = $3",
            )
            .bind(why)
            .bind(now)
            .bind(&id)
            .execute(&mut **tx)
            .await?;
            let entry = self.entry(
                ctx,
                "send.void",
                Some("send"),
                Some(id.clone()),
                Some(agent.id.0.clone()),
                "success",
                json!({ "reason": why, "draft_id": draft_id }),
            );
            self.record(tx, &entry, Some(("send.voided", json!({ "send_id": id, "agent_id": agent.id.0, "draft_id": draft_id, "reason": why }))))
                .await?;
            out.push(id);
        }
        Ok(out)
    }

    /// `POST /v1/agents/{id}/drafts/{did}/send`.
    pub async fn send_draft(&self, ctx: &Ctx, agent_id: &str, draft_id: &str) -> Result<SendInfo> {
        let agent = self.sending_agent(ctx, agent_id).await?;
        let draft = self.load_draft(&agent, draft_id).await?;
        if let Some(pending) = draft.pending_send_id {
            return Err(Error::conflict(
                "send-pending",
                format!(
                    "send {pending} of this draft is waiting for confirmation; edit the draft to void it"
                ),
            ));
        }
        self.send_composed(ctx, &agent, &draft.content, Some((draft.id, draft.version)))
            .await
    }

    /// Reply or reply-all to a message in the agent's mailbox.
    pub async fn reply_to_message(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        message_id: &str,
        r: ReplyRequest,
    ) -> Result<SendInfo> {
        let agent = self.sending_agent(ctx, agent_id).await?;
        let row = self.entry_row(&agent, message_id).await?;
        let addrs = |col: &str| -> Result<Vec<EmailAddress>> {
            let s: String = row.try_get(col)?;
            Ok(serde_json::from_str(&s).unwrap_or_default())
        };
        let folder: String = row.try_get("folder")?;
        let (from, to, cc, reply_to) = (
            addrs("from_json")?,
            addrs("to_json")?,
            addrs("cc_json")?,
            addrs("reply_to_json")?,
        );
        let me = agent.address.to_ascii_lowercase();
        // Answering our own sent message goes to its recipients again.
        let mut recipients = if folder == "sent" {
            to_inputs(&to)
        } else if !reply_to.is_empty() {
            to_inputs(&reply_to)
        } else {
            to_inputs(&from)
        };
        let mut extra_cc = vec![];
        if r.reply_all {
            for a in to_inputs(&to).into_iter().chain(to_inputs(&cc)) {
                extra_cc.push(a);
            }
        }
        recipients.retain(|a| input_email(a) != me);
        let mut seen: Vec<String> = recipients.iter().map(input_email).collect();
        let mut cc_all = vec![];
        for a in extra_cc.into_iter().chain(r.cc) {
            let e = input_email(&a);
            if e != me && !seen.contains(&e) {
                seen.push(e);
                cc_all.push(a);
            }
        }
        if recipients.is_empty() && cc_all.is_empty() {
            return Err(Error::invalid(
                "message_id",
                "the message has no address to reply to",
            ));
        }
        let subject: Option<String> = row.try_get("subject")?;
        let c = Compose {
            to: recipients,
            cc: cc_all,
            bcc: r.bcc,
            subject: Some(subject_with("Re:", subject.as_deref())),
            text: r.text,
            html: r.html,
            attachments: r.attachments,
            reply_to_message_id: Some(message_id.to_string()),
            from_name: None,
        };
        self.send_composed(ctx, &agent, &c, None).await
    }

    /// Forwards a message: a note, the original's headers and text inline,
    /// and (by default) its attachments.
    pub async fn forward_message(
        &self,
        ctx: &Ctx,
        agent_id: &str,
        message_id: &str,
        f: ForwardRequest,
    ) -> Result<SendInfo> {
        let agent = self.sending_agent(ctx, agent_id).await?;
        let row = self.entry_row(&agent, message_id).await?;
        let raw = self.blob_of(&row).await?;
        let subject: Option<String> = row.try_get("subject")?;
        let show = |col: &str| -> Result<String> {
            let s: String = row.try_get(col)?;
            let list: Vec<EmailAddress> = serde_json::from_str(&s).unwrap_or_default();
            Ok(list
                .iter()
                .map(|a| match (&a.name, &a.address) {
                    (Some(n), Some(e)) => format!("{n} <{e}>"),
                    (None, Some(e)) => e.clone(),
                    (Some(n), None) => n.clone(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", "))
        };
        let date: Option<i64> = row.try_get("date_at")?;
        let header = format!(
            "---------- Forwarded message ---------\nFrom: {}\nDate: {}\nSubject: {}\nTo: {}\n",
            show("from_json")?,
            date.map(|d| crate::clock::to_datetime(d).to_rfc2822())
                .unwrap_or_default(),
            subject.clone().unwrap_or_default(),
            show("to_json")?,
        );
        let bodies = parse::bodies(&raw);
        let text = format!(
            "{}\n\n{header}\n{}",
            f.text.clone().unwrap_or_default(),
            bodies.text.clone().unwrap_or_default()
        );
        let html = bodies.html.as_ref().map(|h| {
            let esc = |s: &str| {
                s.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            };
            format!(
                "{}<br><br><div>{}</div><br>{h}",
                f.html
                    .clone()
                    .unwrap_or_else(|| esc(&f.text.clone().unwrap_or_default())),
                esc(&header).replace('\n', "<br>")
            )
        });
        let mut attachments = vec![];
        if f.include_attachments.unwrap_or(true) {
            let infos: String = row.try_get("attachments")?;
            let infos: Vec<crate::service::mailbox::AttachmentInfo> =
                serde_json::from_str(&infos).unwrap_or_default();
            for a in infos {
                if let Some(bytes) = parse::attachment(&raw, a.index) {
                    attachments.push(AttachmentInput {
                        filename: a
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("attachment-{}", a.index + 1)),
                        content_type: Some(a.content_type.clone()),
                        content: B64.encode(bytes),
                        content_id: None,
                    });
                }
            }
        }
        let c = Compose {
            to: f.to,
            cc: f.cc,
            bcc: f.bcc,
            subject: Some(subject_with("Fwd:", subject.as_deref())),
            text: Some(text),
            html,
            attachments,
            reply_to_message_id: None,
            from_name: None,
        };
        self.send_composed(ctx, &agent, &c, None).await
    }
}
