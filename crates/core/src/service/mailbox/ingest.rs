//! Inbound delivery: the RCPT check and the durable, group-committed path
//! from a finished SMTP transaction to messages filed in mailboxes.
//!
//! Durability: a delivery is acknowledged (SMTP `250`) only after its raw
//! bytes are fsynced (or committed to the `blobs` table) and its metadata
//! is committed. Speed: the blob is written by the caller's own task, in
//! parallel with every other session; then one committer task takes every
//! delivery that is waiting (up to `MAX_BATCH`) and commits them all in ONE
//! write transaction — message rows, mailbox entries, threads, quota
//! counters, audit entries and events — and only then answers each waiter.
//! While one batch commits, the next one queues up, so the number of
//! commits per second stays flat as concurrency grows. On PostgreSQL the
//! batch runs under the org-wide write lock (`begin_write`), so any number
//! of nodes may run their own committer side by side.

use super::parse::{self, Parsed};
use super::{MAX_MESSAGE_BYTES, Service, mailbox_policy};
use crate::address::AgentAddress;
use crate::audit::{Actor, NewEntry};
use crate::error::{Error, Result};
use crate::store::Tx;
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// Most deliveries committed in one transaction: bounds the time the write
/// lock is held and the work lost to a failed batch.
const MAX_BATCH: usize = 128;
/// Deliveries waiting for the committer before senders wait for room.
const QUEUE_DEPTH: usize = 1024;

/// What the gate says about one RCPT address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientCheck {
    Accept,
    Unknown,
    Suspended,
    /// Decommissioned (or being decommissioned) or tombstoned.
    Gone,
    MailboxFull,
}

/// Why a delivery was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Try again later (database trouble, a recipient suspended meanwhile).
    Temp,
    /// A recipient's storage quota would be exceeded.
    Full,
    /// Refused for good.
    Rejected(String),
}

/// One finished SMTP transaction, as the protocol layer hands it over.
#[derive(Debug, Clone)]
pub struct InboundDelivery {
    pub client_ip: String,
    pub helo: String,
    /// Envelope sender; empty for bounces.
    pub mail_from: String,
    /// Accepted envelope recipients.
    pub rcpt_to: Vec<String>,
    pub tls: bool,
    /// The `Authentication-Results` header the receiver prepended.
    pub auth_results: Option<String>,
    /// DMARC result keyword (`pass`, `fail`, …) and the published policy:
    /// a failing message whose domain asks for quarantine or reject is
    /// filed in spam.
    pub dmarc: String,
    pub dmarc_policy: Option<String>,
    pub raw: Vec<u8>,
}

/// A delivery whose blob is durable, waiting for the committer.
struct Prepared {
    delivery: InboundDelivery,
    parsed: Parsed,
    blob_hash: String,
}

struct Job {
    prepared: Prepared,
    reply: oneshot::Sender<Result<String, DeliveryError>>,
}

/// The entry point of inbound delivery: hands finished messages to the
/// group committer. Cheap to clone; the committer stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Ingest {
    svc: Arc<Service>,
    queue: mpsc::Sender<Job>,
}

impl Ingest {
    /// Starts the committer task.
    pub fn start(svc: Arc<Service>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(committer(svc.clone(), rx));
        Ingest { svc, queue }
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.svc
    }

    pub fn max_message_size(&self) -> usize {
        MAX_MESSAGE_BYTES
    }

    /// Stores one message durably and files it in every recipient's
    /// mailbox. Resolves only after the commit: `Ok` carries the message id.
    pub async fn deliver(&self, delivery: InboundDelivery) -> Result<String, DeliveryError> {
        if delivery.raw.len() > MAX_MESSAGE_BYTES {
            return Err(DeliveryError::Rejected(
                "message is larger than the size limit".into(),
            ));
        }
        if delivery.rcpt_to.is_empty() {
            return Err(DeliveryError::Rejected("no recipients".into()));
        }
        // Parsing a 50 MB message is CPU work: keep it off the reactor.
        let (delivery, parsed) = tokio::task::spawn_blocking(move || {
            let parsed = parse::parse(&delivery.raw);
            (delivery, parsed)
        })
        .await
        .map_err(|_| DeliveryError::Temp)?;
        let blob_hash = match self
            .svc
            .db
            .blobs
            .put_alone(&self.svc.db.pool, &delivery.raw)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "could not store an inbound message");
                return Err(DeliveryError::Temp);
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            prepared: Prepared {
                delivery,
                parsed,
                blob_hash,
            },
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| DeliveryError::Temp)?;
        answer.await.unwrap_or(Err(DeliveryError::Temp))
    }
}

async fn committer(svc: Arc<Service>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        let (prepared, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.prepared, j.reply)).unzip();
        let results = match svc.commit_deliveries(&prepared).await {
            Ok(r) => r,
            Err(e) if prepared.len() > 1 => {
                // One bad delivery must not sink the others: retry alone.
                tracing::warn!(error = %e, batch = prepared.len(), "group commit failed; committing one by one");
                let mut out = Vec::with_capacity(prepared.len());
                for p in &prepared {
                    out.push(match svc.commit_deliveries(std::slice::from_ref(p)).await {
                        Ok(mut r) => r.pop().unwrap_or(Err(DeliveryError::Temp)),
                        Err(e) => {
                            tracing::error!(error = %e, "inbound delivery failed");
                            Err(DeliveryError::Temp)
                        }
                    });
                }
                out
            }
            Err(e) => {
                tracing::error!(error = %e, "inbound delivery failed");
                vec![Err(DeliveryError::Temp)]
            }
        };
        tracing::debug!(batch = prepared.len(), "group commit");
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// A recipient agent resolved inside the commit.
struct Rcpt {
    agent_id: String,
    address: String,
    rcpt: String,
}

impl Service {
    /// The RCPT check: is there a live agent at this address with room?
    pub async fn check_recipient(&self, rcpt: &str) -> Result<RecipientCheck> {
        let Ok(addr) = AgentAddress::parse(rcpt, "rcpt") else {
            return Ok(RecipientCheck::Unknown);
        };
        let row = sqlx::query(
            "SELECT a.id, a.status, a.policy_id, COALESCE(u.bytes, 0) AS used FROM agents a \
             LEFT JOIN mailbox_usage u ON u.agent_id = a.id WHERE a.address_key = $1 AND a.status <> 'decommissioned'",
        )
        .bind(addr.key())
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            let tomb: Option<(i64,)> =
                sqlx::query_as("SELECT until_at FROM tombstones WHERE address_key = $1")
                    .bind(addr.key())
                    .fetch_optional(&self.db.pool)
                    .await?;
            return Ok(if tomb.is_some_and(|(until,)| until > self.now()) {
                RecipientCheck::Gone
            } else {
                RecipientCheck::Unknown
            });
        };
        let status: String = row.try_get("status")?;
        match status.as_str() {
            "active" => {}
            "suspended" => return Ok(RecipientCheck::Suspended),
            _ => return Ok(RecipientCheck::Gone),
        }
        let policy_id: Option<String> = row.try_get("policy_id")?;
        let used: i64 = row.try_get("used")?;
        let policy = mailbox_policy(&self.db.pool, policy_id.as_deref()).await?;
        Ok(if used >= policy.storage_bytes {
            RecipientCheck::MailboxFull
        } else {
            RecipientCheck::Accept
        })
    }

    /// Commits a batch of prepared deliveries in one write transaction and
    /// returns one answer per delivery, in order. An `Err` means nothing of
    /// the batch was committed.
    async fn commit_deliveries(
        &self,
        batch: &[Prepared],
    ) -> Result<Vec<Result<String, DeliveryError>>> {
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let (max_seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM messages")
            .fetch_one(&mut *tx)
            .await?;
        let mut seq = max_seq.unwrap_or(0);
        let mut results = Vec::with_capacity(batch.len());
        for p in batch {
            let outcome = self.file_one(&mut tx, p, now, seq + 1).await?;
            if outcome.is_ok() {
                seq += 1;
            }
            results.push(outcome);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Files one delivery inside the batch transaction. Database errors
    /// abort the batch (`Err`); refusals are per delivery (`Ok(Err(_))`).
    async fn file_one(
        &self,
        tx: &mut Tx,
        p: &Prepared,
        now: i64,
        seq: i64,
    ) -> Result<Result<String, DeliveryError>> {
        let d = &p.delivery;
        let size = d.raw.len() as i64;
        // Recipients may have changed state since RCPT: resolve again, under the lock.
        let mut rcpts: Vec<Rcpt> = vec![];
        let mut suspended = false;
        for rcpt in &d.rcpt_to {
            let Ok(addr) = AgentAddress::parse(rcpt, "rcpt") else {
                continue;
            };
            let row = sqlx::query(
                "SELECT a.id, a.address, a.status, a.policy_id, COALESCE(u.bytes, 0) AS used FROM agents a \
                 LEFT JOIN mailbox_usage u ON u.agent_id = a.id WHERE a.address_key = $1 AND a.status <> 'decommissioned'",
            )
            .bind(addr.key())
            .fetch_optional(&mut **tx)
            .await?;
            let Some(row) = row else { continue };
            let status: String = row.try_get("status")?;
            if status == "suspended" {
                suspended = true;
                continue;
            }
            if status != "active" {
                continue;
            }
            let agent_id: String = row.try_get("id")?;
            if rcpts.iter().any(|r| r.agent_id == agent_id) {
                continue;
            }
            let policy_id: Option<String> = row.try_get("policy_id")?;
            let used: i64 = row.try_get("used")?;
            let policy = mailbox_policy(&mut **tx, policy_id.as_deref()).await?;
            // One answer covers every recipient after DATA: a full mailbox
            // defers the whole message (452) rather than drop it silently
            // for one recipient.
            if used + size > policy.storage_bytes {
                return Ok(Err(DeliveryError::Full));
            }
            rcpts.push(Rcpt {
                agent_id,
                address: row.try_get("address")?,
                rcpt: rcpt.clone(),
            });
        }
        if rcpts.is_empty() {
            return Ok(Err(if suspended {
                DeliveryError::Temp
            } else {
                DeliveryError::Rejected("no such recipient".into())
            }));
        }
        // The collector may have removed an identical blob that was
        // unreferenced a moment ago; it deletes under this same lock, so
        // checking here is enough.
        if !self.db.blobs.exists(tx, &p.blob_hash).await? {
            self.db.blobs.put(tx, &d.raw).await?;
        }

        let pm = &p.parsed;
        let id = uuid::Uuid::now_v7().to_string();
        let to_json =
            |v: &Vec<parse::EmailAddress>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let from_key = search_key(&pm.from);
        let mut to_all = pm.to.clone();
        to_all.extend(pm.cc.iter().cloned());
        let to_key = search_key(&to_all);
        let rcpt_all: Vec<&str> = d.rcpt_to.iter().map(String::as_str).collect();
        sqlx::query(
            "INSERT INTO messages (id, seq, blob_hash, size_bytes, received_at, client_ip, helo, mail_from, rcpt_to, tls, \
             auth_results, message_id_header, in_reply_to, refs, subject, from_json, to_json, cc_json, reply_to_json, date_at, \
             snippet, attachments, from_key, to_key) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24)",
        )
        .bind(&id)
        .bind(seq)
        .bind(&p.blob_hash)
        .bind(size)
        .bind(now)
        .bind(&d.client_ip)
        .bind(&d.helo)
        .bind(&d.mail_from)
        .bind(json!(rcpt_all).to_string())
        .bind(d.tls as i64)
        .bind(d.auth_results.clone())
        .bind(pm.message_id.clone())
        .bind(json!(pm.in_reply_to).to_string())
        .bind(json!(pm.references).to_string())
        .bind(pm.subject.clone())
        .bind(to_json(&pm.from))
        .bind(to_json(&pm.to))
        .bind(to_json(&pm.cc))
        .bind(to_json(&pm.reply_to))
        .bind(pm.date_at)
        .bind(pm.snippet.clone())
        .bind(serde_json::to_string(&pm.attachments).unwrap_or_else(|_| "[]".into()))
        .bind(&from_key)
        .bind(&to_key)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO message_search (rowid, subject, addresses, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(seq)
        .bind(pm.subject.clone())
        .bind(search_words(&pm.from, &to_all))
        .bind(&pm.search_body)
        .execute(&mut **tx)
        .await?;

        let spam =
            d.dmarc == "fail" && matches!(d.dmarc_policy.as_deref(), Some("quarantine" | "reject"));
        let folder = if spam { "spam" } else { "inbox" };
        let participants = pm.participants();
        for r in &rcpts {
            let thread_id = self
                .thread_for(tx, &r.agent_id, pm, &participants, now)
                .await?;
            sqlx::query(
                "INSERT INTO mailbox_entries (agent_id, message_id, thread_id, folder, unread, starred, received_at, folder_at, size_bytes) \
                 VALUES ($1, $2, $3, $4, 1, 0, $5, $5, $6)",
            )
            .bind(&r.agent_id)
            .bind(&id)
            .bind(&thread_id)
            .bind(folder)
            .bind(now)
            .bind(size)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "INSERT INTO mailbox_usage (agent_id, bytes, messages) VALUES ($1, $2, 1) \
                 ON CONFLICT (agent_id) DO UPDATE SET bytes = mailbox_usage.bytes + $2, messages = mailbox_usage.messages + 1",
            )
            .bind(&r.agent_id)
            .bind(size)
            .execute(&mut **tx)
            .await?;
            let entry = NewEntry {
                actor: Actor {
                    kind: "smtp".into(),
                    id: Some(d.client_ip.clone()),
                    credential: None,
                },
                action: "message.receive",
                target_kind: Some("message"),
                target_id: Some(id.clone()),
                agent_id: Some(r.agent_id.clone()),
                outcome: "success",
                request_id: None,
                source: Some(d.client_ip.clone()),
                details: json!({
                    "client_ip": d.client_ip,
                    "helo": d.helo,
                    "mail_from": d.mail_from,
                    // Only this agent's own recipient address: the others
                    // may be blind copies to other agents.
                    "recipients": [r.rcpt],
                    "message_id": pm.message_id,
                    "size_bytes": size,
                    "tls": d.tls,
                    "folder": folder,
                }),
            };
            let event = json!({
                "agent_id": r.agent_id,
                "address": r.address,
                "message_id": id,
                "thread_id": thread_id,
                "folder": folder,
                "from": pm.from.first().and_then(|a| a.address.clone()),
                "subject": pm.subject,
                "snippet": pm.snippet,
                // The model-safe view, never the raw message (a link to it instead).
                "safe": { "text": pm.safe_text, "risk": pm.risk, "findings": pm.finding_kinds },
                "size_bytes": size,
                "raw_path": format!("/v1/agents/{}/messages/{id}?view=raw", r.agent_id),
            });
            // Mail filed straight to spam is reported as quarantined.
            let kind = if spam {
                "message.quarantined"
            } else {
                "message.received"
            };
            self.record(tx, &entry, Some((kind, event))).await?;
        }
        Ok(Ok(id))
    }

    /// Threads by `References`/`In-Reply-To` (and the message's own id, so
    /// a duplicate joins its original); failing that, by the normalised
    /// subject among the same participants; else a new thread.
    async fn thread_for(
        &self,
        tx: &mut Tx,
        agent_id: &str,
        pm: &Parsed,
        participants: &[String],
        now: i64,
    ) -> Result<String> {
        let mut ids: Vec<&str> = pm
            .references
            .iter()
            .chain(&pm.in_reply_to)
            .map(String::as_str)
            .collect();
        if let Some(own) = pm.message_id.as_deref() {
            ids.push(own);
        }
        ids.sort_unstable();
        ids.dedup();
        let mut found: Option<String> = None;
        if !ids.is_empty() {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT e.thread_id FROM mailbox_entries e JOIN messages m ON m.id = e.message_id \
                 WHERE e.agent_id = $1 AND m.message_id_header IN ({}) ORDER BY e.received_at DESC LIMIT 1",
                marks.join(", ")
            );
            let mut q = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql)).bind(agent_id);
            for i in &ids {
                q = q.bind(i.to_string());
            }
            found = q.fetch_optional(&mut **tx).await?.map(|r| r.0);
        }
        let participants_key = participants.join(" ");
        if found.is_none() && !pm.subject_key.is_empty() {
            found = sqlx::query_as::<_, (String,)>(
                "SELECT id FROM threads WHERE agent_id = $1 AND subject_key = $2 AND participants_key = $3 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(agent_id)
            .bind(&pm.subject_key)
            .bind(&participants_key)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.0);
        }
        if let Some(thread_id) = found {
            // Grow the participant list (it is display data, not the key).
            let (current,): (String,) =
                sqlx::query_as("SELECT participants FROM threads WHERE id = $1")
                    .bind(&thread_id)
                    .fetch_one(&mut **tx)
                    .await?;
            let mut all: Vec<String> = current.split_whitespace().map(str::to_string).collect();
            let before = all.len();
            for p in participants {
                if !all.contains(p) && all.len() < 200 {
                    all.push(p.clone());
                }
            }
            if all.len() != before {
                sqlx::query("UPDATE threads SET participants = $1 WHERE id = $2")
                    .bind(all.join(" "))
                    .bind(&thread_id)
                    .execute(&mut **tx)
                    .await?;
            }
            return Ok(thread_id);
        }
        let thread_id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO threads (id, agent_id, subject, subject_key, participants_key, participants, created_at) VALUES ($1,$2,$3,$4,$5,$5,$6)",
        )
        .bind(&thread_id)
        .bind(agent_id)
        .bind(pm.subject.clone())
        .bind(&pm.subject_key)
        .bind(&participants_key)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(Error::from)?;
        Ok(thread_id)
    }
}

/// ` a@x b@y `: lowercased addresses for the `from`/`to` filters (LIKE).
fn search_key(list: &[parse::EmailAddress]) -> String {
    let mut s = String::from(" ");
    for a in list {
        if let Some(addr) = &a.address {
            s.push_str(&addr.to_lowercase());
            s.push(' ');
        }
        if let Some(name) = &a.name {
            s.push_str(&name.to_lowercase());
            s.push(' ');
        }
    }
    s
}

/// Names and addresses, with the address also split at `@` and `.`, so a
/// word search for "alice" or "example" finds `alice@example.com` on both
/// backends' tokenisers.
fn search_words(from: &[parse::EmailAddress], to: &[parse::EmailAddress]) -> String {
    let mut s = String::new();
    for a in from.iter().chain(to) {
        if let Some(n) = &a.name {
            s.push_str(n);
            s.push(' ');
        }
        if let Some(addr) = &a.address {
            s.push_str(addr);
            s.push(' ');
            s.push_str(&addr.replace(['@', '.', '-', '_', '+'], " "));
            s.push(' ');
        }
    }
    s
}
