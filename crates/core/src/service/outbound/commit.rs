//! Group commit of sends and delivery results. Each API call builds,
//! signs and parses its message in parallel with every other, and the
//! delivery worker talks SMTP for many messages at once; then one committer
//! task per node takes everything that is waiting (up to `MAX_BATCH`) and
//! records it all in ONE write transaction: cap counters, send rows, sent
//! copies, local deliveries, queue rows, delivery results, bounces, audit
//! entries and events. A send refused over its cap (or by a changed draft)
//! leaves nothing behind while the rest of the batch commits. The caps stay
//! exact: every counter is incremented in the database, inside the batch,
//! under the org-wide write lock, so two nodes on one PostgreSQL cannot
//! exceed them together.

use super::queue::Attempted;
use super::send::{Outgoing, OverCap, RecipientStatus, SendInfo, count_sends};
use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::service::mailbox::ingest::SentCopy;
use crate::service::mailbox::parse::Parsed;
use crate::service::policies::PolicySettings;
use crate::service::{Agent, Ctx, Service};
use crate::store::{Dialect, Tx, WriteBatch, value_groups};
// Dynamic SQL here is assembled from constant fragments and placeholders
// only; every value is bound.
use serde_json::json;
use sqlx::AssertSqlSafe;
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
        if self.audit.is_empty() && self.events.is_empty() {
            return Ok(());
        }
        let (head, _) = crate::audit::read_head(tx, "").await?;
        let events: Vec<(&str, Option<&str>, String)> = self
            .events
            .iter()
            .map(|(kind, agent, data)| (*kind, agent.as_deref(), data.to_string()))
            .collect();
        let batch = WriteBatch::new(Dialect::of(tx));
        crate::events::record(tx, batch, head, at, &self.audit, events).await
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

/// What the group commit records: a send from the API, or a delivery
/// attempt's results from this node's worker.
pub(crate) enum Job {
    Send {
        // Boxed: a pending send is over a kilobyte, an attempt a few words.
        send: Box<PendingSend>,
        reply: oneshot::Sender<Result<Option<SendInfo>>>,
    },
    Attempt(Attempted),
}

/// Why one send of a batch was not recorded.
enum Refusal {
    /// Over a cap; the counters are as they were.
    OverCap(OverCap),
    /// Refused by a check before it wrote anything.
    Refused(Error),
}

/// The channel to this service's send committer, started on first use.
pub(crate) type SendQueue = std::sync::Arc<std::sync::OnceLock<mpsc::Sender<Job>>>;

impl Service {
    /// The group commit's queue, its committer started on first use. The
    /// committer's own handle on the service has no queue of its own, so it
    /// stops once every other handle is gone.
    fn commit_queue(&self) -> &mpsc::Sender<Job> {
        self.send_queue.get_or_init(|| {
            let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
            let mut svc = self.clone();
            svc.send_queue = Default::default();
            self.spawn_committer("agentpost-send-commit", committer(svc, rx));
            queue
        })
    }

    /// Records one send through the group commit; resolves after the
    /// commit with this send's own outcome: the send as committed when the
    /// batch wrote it whole (else the caller reads it back).
    pub(crate) async fn commit_send_grouped(&self, send: PendingSend) -> Result<Option<SendInfo>> {
        let (reply, answer) = oneshot::channel();
        self.commit_queue()
            .send(Job::Send {
                send: Box::new(send),
                reply,
            })
            .await
            .map_err(|_| Error::Internal("the group commit has stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Internal("the group commit has stopped".into())))
    }

    /// Hands a delivery attempt's results to the group commit; its
    /// `recorded` channel answers after the commit.
    pub(crate) async fn commit_attempt(&self, attempt: Attempted) -> Result<()> {
        self.commit_queue()
            .send(Job::Attempt(attempt))
            .await
            .map_err(|_| Error::Internal("the group commit has stopped".into()))
    }

    /// One transaction for the sends and the delivery results waiting:
    /// one commit (one WAL flush, one turn at the org-wide lock) for both.
    /// Returns one outcome per send, in order; an `Err` means nothing was
    /// committed.
    async fn commit_batch(
        &self,
        sends: &[PendingSend],
        attempts: &[Attempted],
    ) -> Result<Vec<Result<Option<SendInfo>>>> {
        let now = self.now();
        let mut tx = self.db.begin_group_commit().await?;
        let mut b = Batch::default();
        let results = if sends.is_empty() {
            vec![]
        } else {
            self.record_sends(&mut tx, &mut b, sends, now).await?
        };
        if !attempts.is_empty() {
            self.record_attempts(&mut tx, &mut b, attempts, now).await?;
        }
        b.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Records sends inside the group commit's `tx`; one outcome per send,
    /// in order. A send refused by a check (its cap, a changed draft)
    /// leaves nothing behind and the others commit. (No savepoint per send:
    /// on SQLite each one journals pages and flushes the full-text index's
    /// pending terms.)
    async fn record_sends(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        batch: &[PendingSend],
        now: i64,
    ) -> Result<Vec<Result<Option<SendInfo>>>> {
        let local = b.local_domains(self, tx).await?.to_vec();
        let mut results = Vec::with_capacity(batch.len());
        let mut together: Vec<(usize, &PendingSend)> = Vec::with_capacity(batch.len());
        let verdicts = self.admit_sends(tx, batch, now).await?;
        for (send, verdict) in batch.iter().zip(verdicts) {
            match verdict {
                Ok(()) => {}
                Err(Refusal::Refused(e)) => {
                    results.push(Err(e));
                    continue;
                }
                Err(Refusal::OverCap(over)) => {
                    // The refusal is recorded in the same commit.
                    let (entry, details) = over_cap_record(send, &over);
                    b.record(entry, Some(("quota.exceeded", details)));
                    results.push(Err(over.into_error()));
                    continue;
                }
            }
            // The common case, mail to the outside world, is written for
            // the whole batch at once; a held send, a large message or a
            // local recipient (delivered inside this transaction) one by one.
            let has_local = send.out.recipients.iter().any(|r| {
                r.rsplit_once('@')
                    .is_some_and(|(_, d)| local.iter().any(|l| l == d))
            });
            if send.hold || send.early_blob.is_some() || has_local {
                self.record_send_alone(tx, b, send, now).await?;
            } else {
                b.record(send_entry(send, "success"), None);
                together.push((results.len(), send));
            }
            results.push(Ok(None));
        }
        let sends: Vec<&PendingSend> = together.iter().map(|t| t.1).collect();
        let infos = self.queue_together(tx, b, &sends, now).await?;
        for ((slot, _), info) in together.iter().zip(infos) {
            results[*slot] = Ok(Some(info));
        }
        Ok(results)
    }

    /// The checks that may refuse sends of the batch, before they write
    /// anything of their own: each draft is unchanged, and each send is
    /// within its agent's caps (counted here, one statement per agent and
    /// period). One verdict per send, in order.
    async fn admit_sends(
        &self,
        tx: &mut Tx,
        batch: &[PendingSend],
        now: i64,
    ) -> Result<Vec<Result<(), Refusal>>> {
        let mut verdicts: Vec<Result<(), Refusal>> = Vec::with_capacity(batch.len());
        for s in batch {
            verdicts.push(Ok(()));
            let Some((draft_id, version)) = &s.out.draft else {
                continue;
            };
            let current: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM drafts WHERE id = $1 AND agent_id = $2")
                    .bind(draft_id)
                    .bind(s.agent.id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
            // Sent earlier in this batch: the draft is deleted at the end.
            let taken = batch
                .iter()
                .zip(&verdicts)
                .take(verdicts.len() - 1)
                .any(|(o, v)| v.is_ok() && o.out.draft.as_ref().map(|d| &d.0) == Some(draft_id));
            if (current.map(|c| c.0) != Some(*version) || taken)
                && let Some(v) = verdicts.last_mut()
            {
                *v = Err(Refusal::Refused(Error::conflict(
                    "draft-changed",
                    "the draft changed while it was being sent; send it again",
                )));
            }
        }
        // The caps, per agent, over the sends still standing, in order.
        let mut agents: Vec<&str> = batch.iter().map(|s| s.agent.id.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        for agent in agents {
            let standing: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].agent.id.as_str() == agent && verdicts[i].is_ok())
                .collect();
            let Some(&first) = standing.first() else {
                continue;
            };
            let caps = count_sends(tx, agent, &batch[first].policy, standing.len(), now).await?;
            for (i, cap) in standing.into_iter().zip(caps) {
                if let Some(over) = cap {
                    verdicts[i] = Err(Refusal::OverCap(over));
                }
            }
        }
        Ok(verdicts)
    }

    /// Queues admitted sends to remote recipients together: their sent
    /// copies filed with the inbound group commit's multi-row writes, then
    /// one statement for their send rows and one for their queue rows.
    /// Returns each send as committed.
    async fn queue_together(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        sends: &[&PendingSend],
        now: i64,
    ) -> Result<Vec<SendInfo>> {
        if sends.is_empty() {
            return Ok(vec![]);
        }
        let copies = sends
            .iter()
            .map(|s| SentCopy {
                agent_address: s.agent.address.clone(),
                recipients: s.out.recipients.clone(),
                raw: s.out.raw.clone(),
                // The send's SHA-256 is its blob's content address.
                blob_hash: s.sha256.clone(),
                parsed: s.parsed.clone().unwrap_or_default(),
            })
            .collect();
        let (filed, last_seq) = self.file_sent_copies(tx, copies, b.last_seq, now).await?;
        b.last_seq = Some(last_seq);
        let dialect = Dialect::of(tx);
        let rows: Vec<(&&PendingSend, &(String, String))> = sends.iter().zip(&filed).collect();
        for chunk in rows.chunks(40) {
            let sql = format!(
                "INSERT INTO sends (id, agent_id, draft_id, status, blob_hash, sha256, size_bytes, mail_from, recipients, \
                 message_id_header, subject, via, created_at, message_id) VALUES {}",
                value_groups(dialect, chunk.len(), 13, |m| format!(
                    "({}, {}, {}, 'queued', {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                    m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12]
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (s, (message_id, _)) in chunk {
                q = q
                    .bind(s.send_id.clone())
                    .bind(s.agent.id.0.clone())
                    .bind(s.out.draft.as_ref().map(|d| d.0.clone()))
                    .bind(s.sha256.clone())
                    .bind(s.sha256.clone())
                    .bind(s.out.raw.len() as i64)
                    .bind(s.out.mail_from.clone())
                    .bind(json!(s.out.recipients).to_string())
                    .bind(s.out.message_id_header.clone())
                    .bind(s.out.subject.clone())
                    .bind(s.out.via)
                    .bind(now)
                    .bind(message_id.clone());
            }
            q.execute(&mut **tx).await?;
        }
        let give_up = now + self.cfg.outbound.give_up_after.as_micros() as i64;
        let queued: Vec<(&PendingSend, &String)> = sends
            .iter()
            .flat_map(|s| s.out.recipients.iter().map(move |r| (*s, r)))
            .collect();
        for chunk in queued.chunks(60) {
            let sql = format!(
                "INSERT INTO outbound_queue (id, send_id, agent_id, recipient, domain, status, attempts, next_attempt_at, \
                 give_up_at, last_reply, created_at, updated_at) VALUES {}",
                // Every placeholder is bound once (SQLite's are anonymous).
                value_groups(dialect, chunk.len(), 9, |m| format!(
                    "({}, {}, {}, {}, {}, 'queued', 0, {}, {}, NULL, {}, {})",
                    m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (s, r) in chunk {
                let domain = r.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(s.send_id.clone())
                    .bind(s.agent.id.0.clone())
                    .bind((*r).clone())
                    .bind(domain.to_string())
                    .bind(now)
                    .bind(give_up)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut **tx).await?;
        }
        for (s, (message_id, thread_id)) in rows {
            if let Some((draft_id, _)) = &s.out.draft {
                sqlx::query("DELETE FROM drafts WHERE id = $1")
                    .bind(draft_id)
                    .execute(&mut **tx)
                    .await?;
            }
            let event = json!({
                "send_id": s.send_id,
                "agent_id": s.agent.id.0,
                "message_id": message_id,
                "thread_id": thread_id,
                "message_id_header": s.out.message_id_header,
                "recipients": s.out.recipients,
                "subject": s.parsed.as_ref().and_then(|p| p.subject.clone()),
            });
            b.event("message.sent", s.agent.id.as_str(), event);
        }
        let queued_at = crate::clock::to_rfc3339(now);
        Ok(sends
            .iter()
            .zip(&filed)
            .map(|(s, (message_id, _))| SendInfo {
                send_id: s.send_id.clone(),
                agent_id: s.agent.id.0.clone(),
                status: "queued".into(),
                sha256: s.sha256.clone(),
                size_bytes: s.out.raw.len() as i64,
                from: s.out.mail_from.clone(),
                subject: s.out.subject.clone(),
                message_id_header: s.out.message_id_header.clone(),
                message_id: Some(message_id.clone()),
                draft_id: s.out.draft.as_ref().map(|d| d.0.clone()),
                via: s.out.via.into(),
                recipients: s
                    .out
                    .recipients
                    .iter()
                    .map(|r| RecipientStatus {
                        recipient: r.clone(),
                        status: "queued".into(),
                        attempts: 0,
                        last_reply: None,
                        next_attempt_at: Some(queued_at.clone()),
                        local: false,
                    })
                    .collect(),
                created_at: queued_at.clone(),
                expires_at: None,
                decided_at: None,
                decided_by: None,
                reason: None,
            })
            .collect())
    }

    /// One admitted send recorded on its own inside the batch: held for
    /// confirmation, or queued (with local deliveries) by `enqueue`.
    async fn record_send_alone(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        s: &PendingSend,
        now: i64,
    ) -> Result<()> {
        let agent = &s.agent;
        let out = &s.out;
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
        let entry = send_entry(s, if s.hold { "pending" } else { "success" });
        if s.hold {
            let mut event = entry.details.clone();
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

/// The audit entry of a recorded send (`success`, or `pending` when held).
fn send_entry(s: &PendingSend, outcome: &'static str) -> NewEntry {
    NewEntry {
        actor: s.ctx.principal.actor(),
        action: "message.send",
        target_kind: Some("send"),
        target_id: Some(s.send_id.clone()),
        agent_id: Some(s.agent.id.0.clone()),
        outcome,
        request_id: s.ctx.request_id.clone(),
        source: s.ctx.source.clone(),
        details: json!({
            "send_id": s.send_id,
            "recipients": s.out.recipients,
            "sha256": s.sha256,
            "size_bytes": s.out.raw.len(),
            "message_id_header": s.out.message_id_header,
            "via": s.out.via,
        }),
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
        let mut sends = Vec::new();
        let mut replies = Vec::new();
        let mut attempts = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Send { send, reply } => {
                    sends.push(*send);
                    replies.push(reply);
                }
                Job::Attempt(a) => attempts.push(a),
            }
        }
        let started = std::time::Instant::now();
        match svc.commit_batch(&sends, &attempts).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                for a in attempts {
                    let _ = a.recorded.send(Ok(()));
                }
            }
            Err(e) if sends.len() + attempts.len() == 1 => {
                if let Some(reply) = replies.pop() {
                    let _ = reply.send(Err(e));
                } else if let Some(a) = attempts.pop() {
                    let _ = a.recorded.send(Err(e));
                }
            }
            Err(e) => {
                // One item's trouble must not sink the others: each alone.
                tracing::warn!(error = %e, sends = sends.len(), attempts = attempts.len(),
                    "group commit failed; committing one by one");
                for (s, reply) in sends.iter().zip(replies) {
                    let result = match svc.commit_batch(std::slice::from_ref(s), &[]).await {
                        Ok(mut r) => r.pop().unwrap_or_else(|| {
                            Err(Error::Internal("the send commit returned nothing".into()))
                        }),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                }
                for a in attempts {
                    let outcome = svc
                        .commit_batch(&[], std::slice::from_ref(&a))
                        .await
                        .map(|_| ());
                    let _ = a.recorded.send(outcome);
                }
            }
        }
        tracing::debug!(
            sends = sends.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
    }
}
