//! Group commit of sends. Each API call builds, signs and parses its
//! message in parallel with every other; then one committer task takes
//! every send that is waiting (up to `MAX_BATCH`) and records them all in
//! ONE write transaction: cap counters, send rows, sent copies, local
//! deliveries, queue rows, audit entries and events. A send refused over
//! its cap (or by a changed draft) leaves nothing behind while the rest of
//! the batch commits. The caps stay
//! exact: every counter is incremented in the database, inside the batch,
//! under the org-wide write lock, so two nodes on one PostgreSQL cannot
//! exceed them together.

use super::send::{Outgoing, OverCap, count_send};
use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::service::mailbox::parse::Parsed;
use crate::service::policies::PolicySettings;
use crate::service::{Agent, Ctx, Service};
use crate::store::Tx;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// Most sends committed in one transaction: bounds the time the write lock
/// is held and the work redone when a batch fails.
const MAX_BATCH: usize = 128;
/// Sends waiting for the committer before callers wait for room.
const QUEUE_DEPTH: usize = 1024;

/// What a group commit gathers as it goes, written at its end: audit
/// entries and events, in order, with a few multi-row statements
/// (`audit::append_many`, `events::emit_many`) instead of three statements
/// each; and the reads every item would repeat (the next full-text key,
/// the organisation's domains), done once.
#[derive(Default)]
pub(crate) struct Batch {
    audit: Vec<NewEntry>,
    events: Vec<(&'static str, Option<String>, serde_json::Value)>,
    last_seq: Option<i64>,
    local_domains: Option<Vec<String>>,
}

impl Batch {
    /// An audit entry and, when given, its event (for the entry's agent).
    pub fn record(&mut self, entry: NewEntry, event: Option<(&'static str, serde_json::Value)>) {
        if let Some((kind, data)) = event {
            self.events.push((kind, entry.agent_id.clone(), data));
        }
        self.audit.push(entry);
    }

    pub fn event(&mut self, kind: &'static str, agent_id: &str, data: serde_json::Value) {
        self.events.push((kind, Some(agent_id.to_string()), data));
    }

    /// The full-text key of the next message filed in this transaction
    /// (every message of the transaction must take its key here).
    pub async fn next_seq(&mut self, tx: &mut Tx) -> Result<i64> {
        let seq = match self.last_seq {
            Some(last) => last + 1,
            None => crate::service::mailbox::ingest::next_seq(tx).await?,
        };
        self.last_seq = Some(seq);
        Ok(seq)
    }

    pub async fn local_domains(&mut self, svc: &Service, tx: &mut Tx) -> Result<&[String]> {
        if self.local_domains.is_none() {
            self.local_domains = Some(svc.local_domains(&mut **tx).await?);
        }
        Ok(self.local_domains.as_deref().unwrap_or_default())
    }

    /// Writes what was gathered; call once, just before the commit.
    pub async fn flush(self, tx: &mut Tx, at: i64) -> Result<()> {
        crate::audit::append_many(tx, at, &self.audit).await?;
        let events: Vec<(&str, Option<&str>, &serde_json::Value)> = self
            .events
            .iter()
            .map(|(kind, agent, data)| (*kind, agent.as_deref(), data))
            .collect();
        crate::events::emit_many(tx, at, &events).await
    }
}

/// A send checked, built and signed, waiting to be recorded.
pub(crate) struct PendingSend {
    pub ctx: Ctx,
    pub agent: Agent,
    pub policy: PolicySettings,
    pub out: Outgoing,
    pub send_id: String,
    /// Held for a human's confirmation instead of queued.
    pub hold: bool,
    pub sha256: String,
    /// A large message's blob, stored before the transaction.
    pub early_blob: Option<String>,
    /// The parsed message (for the sent copy); `None` when held.
    pub parsed: Option<Parsed>,
}

pub(crate) struct Job {
    send: PendingSend,
    reply: oneshot::Sender<Result<()>>,
}

/// Why one send of a batch was not recorded.
enum Refusal {
    /// Over a cap; the counters are as they were.
    OverCap(OverCap),
    /// Refused by a check before it wrote anything.
    Refused(Error),
    /// A failure part-way: the batch's transaction must be abandoned.
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Failed(e)
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Failed(e.into())
    }
}

/// The channel to this service's send committer, started on first use.
pub(crate) type SendQueue = std::sync::Arc<std::sync::OnceLock<mpsc::Sender<Job>>>;

impl Service {
    /// Records one send through the group commit; resolves after the
    /// commit with this send's own outcome.
    pub(crate) async fn commit_send_grouped(&self, send: PendingSend) -> Result<()> {
        let queue = self.send_queue.get_or_init(|| {
            let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
            tokio::spawn(committer(self.clone(), rx));
            queue
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { send, reply })
            .await
            .map_err(|_| Error::Internal("the send committer has stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Internal("the send committer has stopped".into())))
    }

    /// Records a batch in one transaction; returns one outcome per send, in
    /// order. A send refused by a check (its cap, a changed draft) leaves
    /// nothing behind and the others commit; an `Err` means nothing of the
    /// batch was committed. (No savepoint per send: on SQLite each one
    /// journals pages and flushes the full-text index's pending terms.)
    async fn commit_sends(&self, batch: &[PendingSend]) -> Result<Vec<Result<()>>> {
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let mut b = Batch::default();
        let mut results = Vec::with_capacity(batch.len());
        for send in batch {
            results.push(match self.commit_send(&mut tx, &mut b, send, now).await {
                Ok(()) => Ok(()),
                Err(Refusal::Refused(e)) => Err(e),
                Err(Refusal::OverCap(over)) => {
                    // The refusal is recorded in the same commit.
                    let (entry, details) = over_cap_record(send, &over);
                    b.record(entry, Some(("quota.exceeded", details)));
                    Err(over.into_error())
                }
                Err(Refusal::Failed(e)) => return Err(e),
            });
        }
        b.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// One send inside the batch: checks its draft, counts it (refusing
    /// over the cap), then holds it for confirmation or queues it.
    async fn commit_send(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        s: &PendingSend,
        now: i64,
    ) -> Result<(), Refusal> {
        let agent = &s.agent;
        let out = &s.out;
        if let Some((draft_id, version)) = &out.draft {
            let current: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM drafts WHERE id = $1 AND agent_id = $2")
                    .bind(draft_id)
                    .bind(agent.id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
            if current.map(|c| c.0) != Some(*version) {
                return Err(Refusal::Refused(Error::conflict(
                    "draft-changed",
                    "the draft changed while it was being sent; send it again",
                )));
            }
        }
        if let Some(over) = count_send(tx, agent.id.as_str(), &s.policy, now).await? {
            return Err(Refusal::OverCap(over));
        }
        // The collector may have removed the file a moment ago, before this
        // send referenced it; it deletes under this same lock, so checking
        // here is enough.
        let blob_hash = match &s.early_blob {
            Some(h) if self.db.blobs.exists(tx, h).await? => h.clone(),
            _ => self.db.blobs.put(tx, &out.raw).await?,
        };
        let expires_at = s
            .hold
            .then(|| now + s.policy.confirmation_expiry_hours * super::send::HOUR_MICROS);
        let recipients_json = json!(out.recipients).to_string();
        sqlx::query(
            "INSERT INTO sends (id, agent_id, draft_id, status, blob_hash, sha256, size_bytes, mail_from, recipients, \
             message_id_header, subject, via, created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
        )
        .bind(&s.send_id)
        .bind(agent.id.as_str())
        .bind(out.draft.as_ref().map(|d| d.0.clone()))
        .bind(if s.hold { "pending_confirmation" } else { "queued" })
        .bind(&blob_hash)
        .bind(&s.sha256)
        .bind(out.raw.len() as i64)
        .bind(&out.mail_from)
        .bind(&recipients_json)
        .bind(&out.message_id_header)
        .bind(out.subject.clone())
        .bind(out.via)
        .bind(now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        let details = json!({
            "send_id": s.send_id,
            "recipients": out.recipients,
            "sha256": s.sha256,
            "size_bytes": out.raw.len(),
            "message_id_header": out.message_id_header,
            "via": out.via,
        });
        let outcome = if s.hold { "pending" } else { "success" };
        let entry = self.entry(
            &s.ctx,
            "message.send",
            Some("send"),
            Some(s.send_id.clone()),
            Some(agent.id.0.clone()),
            outcome,
            details.clone(),
        );
        if s.hold {
            let mut event = details;
            event["agent_id"] = json!(agent.id.0);
            event["subject"] = json!(out.subject);
            event["expires_at"] = json!(expires_at.map(crate::clock::to_rfc3339));
            b.record(entry, Some(("send.pending_confirmation", event)));
            return Ok(());
        }
        b.record(entry, None);
        if let Some((draft_id, _)) = &out.draft {
            sqlx::query("DELETE FROM drafts WHERE id = $1")
                .bind(draft_id)
                .execute(&mut **tx)
                .await?;
        }
        let empty = Parsed::default();
        let parsed = s.parsed.as_ref().unwrap_or(&empty);
        let queued = super::send::Queued {
            send_id: &s.send_id,
            recipients: &out.recipients,
            message_id_header: &out.message_id_header,
        };
        self.enqueue(tx, b, &queued, agent, &out.raw, &blob_hash, parsed, now)
            .await?;
        Ok(())
    }
}

/// The audit entry and `quota.exceeded` event of a send over its cap.
fn over_cap_record(s: &PendingSend, over: &OverCap) -> (NewEntry, serde_json::Value) {
    let details = json!({
        "agent_id": s.agent.id.0,
        "address": s.agent.address,
        "limit": format!("sends_per_{}", over.period),
        "cap": over.cap,
        "retry_after_secs": over.retry_after_secs,
    });
    let entry = NewEntry {
        actor: s.ctx.principal.actor(),
        action: "message.send",
        target_kind: Some("agent"),
        target_id: Some(s.agent.id.0.clone()),
        agent_id: Some(s.agent.id.0.clone()),
        outcome: "denied",
        request_id: s.ctx.request_id.clone(),
        source: s.ctx.source.clone(),
        details: details.clone(),
    };
    (entry, details)
}

async fn committer(svc: Service, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (sends, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut jobs)
            .into_iter()
            .map(|j| (j.send, j.reply))
            .unzip();
        let results = match svc.commit_sends(&sends).await {
            Ok(r) => r,
            Err(e) if sends.len() > 1 => {
                // One send's trouble must not sink the others: retry alone.
                tracing::warn!(error = %e, batch = sends.len(), "send group commit failed; committing one by one");
                let mut out = Vec::with_capacity(sends.len());
                for s in &sends {
                    out.push(match svc.commit_sends(std::slice::from_ref(s)).await {
                        Ok(mut r) => r.pop().unwrap_or_else(|| {
                            Err(Error::Internal("the send commit returned nothing".into()))
                        }),
                        Err(e) => Err(e),
                    });
                }
                out
            }
            Err(e) => vec![Err(e)],
        };
        tracing::debug!(batch = sends.len(), "send group commit");
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}
