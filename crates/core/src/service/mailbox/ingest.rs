//! Inbound delivery: the RCPT check and the durable, group-committed path
//! from a finished SMTP transaction to messages filed in mailboxes.
//!
//! Durability: a delivery is acknowledged (SMTP `250`) only after its raw
//! bytes and its metadata are committed. Speed: a message up to 128 KiB is
//! a row of the `blobs` table written by the group commit (no file, no
//! fsync of its own); a larger one is fsynced by the caller's own task, in
//! parallel with every other session. One committer task takes every
//! delivery that is waiting (up to `MAX_BATCH`) and commits them all in ONE
//! write transaction — message rows, mailbox entries, threads, quota
//! counters, audit entries and events — and only then answers each waiter.
//! While one batch commits, the next one queues up, so the number of
//! commits per second stays flat as concurrency grows. On PostgreSQL the
//! batch runs under the org-wide write lock (`begin_write`), so any number
//! of nodes may run their own committer side by side.

use super::parse::{self, Parsed};
use super::{MAX_MESSAGE_BYTES, Service};
use crate::address::AgentAddress;
use crate::audit::{Actor, Head, NewEntry};
use crate::error::Result;
use crate::service::policies::{AGENT_POLICY_SETTINGS, PolicySettings};
use crate::store::blob_hash;
use crate::store::{Dialect, Tx, WriteBatch, indexed, list_marks, parenthesised, value_groups};
use serde_json::json;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

/// A mailbox entry's columns: its own state, then copies of its message's
/// list columns that let a page be read from the entries alone.
const ENTRY_COLUMNS: &str = "agent_id, message_id, thread_id, folder, unread, starred, received_at, folder_at, size_bytes, \
     seq, subject, from_json, to_json, cc_json, snippet, date_at, has_attachments, message_id_header, from_key, to_key";

/// Most deliveries committed in one transaction: bounds the time the write
/// lock is held and the work lost to a failed batch.
const MAX_BATCH: usize = 128;

/// Messages up to this size are parsed on the session's own task.
const INLINE_PARSE_BYTES: usize = 256 * 1024;

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

/// How long an RCPT `Accept` is reused without asking the database again.
/// A recipient suspended, removed or filled meanwhile is still refused: the
/// commit resolves every recipient again under the write lock, and answers
/// after DATA. This node forgets its entries as soon as it changes them.
const ACCEPT_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Entries kept at most; past it the cache starts over.
const ACCEPTED_MAX: usize = 10_000;

/// Recent RCPT `Accept` answers by address key. The RCPT check was a
/// query per recipient on the pool, on PostgreSQL (which plans it afresh
/// each time) about half the database CPU of filing the message, for an
/// answer that changes rarely. Only `Accept` is kept: every refusal asks
/// again.
#[derive(Default)]
pub(crate) struct AcceptedRecipients(std::sync::Mutex<HashMap<String, std::time::Instant>>);

impl AcceptedRecipients {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        // A panic elsewhere cannot leave a map of instants inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, key: &str) -> bool {
        self.entries()
            .get(key)
            .is_some_and(|at| at.elapsed() < ACCEPT_REUSED_FOR)
    }

    fn accepted(&self, key: String) {
        let mut entries = self.entries();
        if entries.len() >= ACCEPTED_MAX {
            entries.clear();
        }
        entries.insert(key, std::time::Instant::now());
    }

    fn forget(&self, key: &str) {
        self.entries().remove(key);
    }

    /// After an agent's status or a policy changed.
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
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
    /// The agent key of each envelope recipient (aligned with `rcpt_to`),
    /// and the message's participants: worked out before the queue, so the
    /// one committer task does not redo them per batch read and filing.
    rcpt_keys: Vec<Option<String>>,
    participants: Vec<String>,
    filing: Filing,
    /// Its columns, serialised before the queue; shared with its row, not
    /// copied into it.
    fields: Arc<MessageFields>,
    /// Inbound mail: its event's members, serialised before the queue.
    event: Option<MessageEvent>,
}

/// What a filed message is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filing {
    /// Mail from outside, for every recipient agent: inbox (or spam),
    /// unread, within quota, audited as received, with an event.
    Inbound,
    /// The copy of a send in its own agent's `sent` folder, read, never
    /// refused for quota; the send commit audits and reports it.
    SentCopy,
}

/// A send's copy for its agent's `sent` folder (see `file_sent_copies`).
pub(crate) struct SentCopy {
    pub agent_address: String,
    pub recipients: Vec<String>,
    pub raw: Vec<u8>,
    pub blob_hash: String,
    pub parsed: Parsed,
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
        svc.spawn_committer("agentpost-ingest-commit", committer(svc.clone(), rx));
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
        let parse_inline = delivery.raw.len() <= INLINE_PARSE_BYTES;
        let dialect = self.svc.db.dialect;
        let analyse = move || {
            let parsed = parse::parse(&delivery.raw);
            let rcpt_keys = delivery
                .rcpt_to
                .iter()
                .map(|r| AgentAddress::parse(r, "rcpt").ok().map(|a| a.key()))
                .collect();
            let participants = parsed.participants();
            let size = delivery.raw.len() as i64;
            let fields = Arc::new(MessageFields::of(&delivery.rcpt_to, &parsed, size, dialect));
            let event = MessageEvent::of(&parsed, size);
            (delivery, parsed, rcpt_keys, participants, fields, event)
        };
        // Parsing a 50 MB message is CPU work: keep it off the reactor. Most
        // mail is small; a hand-off per message only grew a pool of blocking
        // threads under load (BENCHMARKS.md, session 9).
        let (delivery, parsed, rcpt_keys, participants, fields, event) = if parse_inline {
            analyse()
        } else {
            tokio::task::spawn_blocking(analyse)
                .await
                .map_err(|_| DeliveryError::Temp)?
        };
        // Small messages are stored by the group commit itself; a large one
        // is made durable here, by this session, outside the write lock.
        let blobs = &self.svc.db.blobs;
        let blob_hash = if blobs.fits_in_transaction(delivery.raw.len()) {
            blob_hash(&delivery.raw)
        } else {
            match blobs.put_alone(&self.svc.db.pool, &delivery.raw).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "could not store an inbound message");
                    return Err(DeliveryError::Temp);
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            prepared: Prepared {
                delivery,
                parsed,
                blob_hash,
                rcpt_keys,
                participants,
                filing: Filing::Inbound,
                fields,
                event: Some(event),
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

/// Takes batches off the queue. On PostgreSQL a batch starts as soon as
/// the one before it is committing, not once it has committed: its `BEGIN`
/// and the write lock's wait overlap the other's `COMMIT` (a round trip and
/// an fsync), so it holds the lock from the moment the other lets go.
/// Batches still hold the lock one after the other.
async fn committer(svc: Arc<Service>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut in_flight = tokio::task::JoinSet::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        let (committing, at_commit) = oneshot::channel();
        in_flight.spawn(commit_jobs(svc.clone(), jobs, committing));
        // Dropped unsent when the batch ends another way.
        let _ = at_commit.await;
        while in_flight.try_join_next().is_some() {}
    }
    // The runtime of a committer thread ends with this function.
    while in_flight.join_next().await.is_some() {}
}

/// Commits one batch and answers its senders; `committing` is told when
/// the batch is committing (see [`committer`]).
async fn commit_jobs(svc: Arc<Service>, jobs: Vec<Job>, committing: oneshot::Sender<()>) {
    let (prepared, replies): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|j| (j.prepared, j.reply)).unzip();
    let started = std::time::Instant::now();
    let results = match svc.commit_deliveries(&prepared, Some(committing)).await {
        Ok(r) => r,
        Err(e) if prepared.len() > 1 => {
            // One bad delivery must not sink the others: retry alone.
            tracing::warn!(error = %e, batch = prepared.len(), "group commit failed; committing one by one");
            let mut out = Vec::with_capacity(prepared.len());
            for p in &prepared {
                out.push(
                    match svc.commit_deliveries(std::slice::from_ref(p), None).await {
                        Ok(mut r) => r.pop().unwrap_or(Err(DeliveryError::Temp)),
                        Err(e) => {
                            tracing::error!(error = %e, "inbound delivery failed");
                            Err(DeliveryError::Temp)
                        }
                    },
                );
            }
            out
        }
        Err(e) => {
            tracing::error!(error = %e, "inbound delivery failed");
            vec![Err(DeliveryError::Temp)]
        }
    };
    tracing::debug!(
        batch = prepared.len(),
        micros = started.elapsed().as_micros() as u64,
        "group commit"
    );
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Values per `IN (…)` list of the batch's reads (far below both
/// backends' limits on bound parameters).
const PREFETCH_CHUNK: usize = 300;

/// The batch's first reads that can ride with the audit head's (see
/// `commit_deliveries`): its recipients' agents and the stored messages
/// with the Message-IDs it names, each as one JSON array of rows. A batch
/// whose lists exceed [`PREFETCH_CHUNK`] reads them in `prefetch` instead.
struct FirstRead {
    keys: Vec<String>,
    headers: Vec<String>,
}

/// Every recipient's address key in `batch`, sorted, once each.
fn recipient_keys(batch: &[Prepared]) -> Vec<String> {
    let mut keys: Vec<String> = batch
        .iter()
        .flat_map(|p| p.rcpt_keys.iter().flatten().cloned())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every Message-ID that `batch` names (its messages' own, and those they
/// reply to or reference), sorted, once each.
fn named_message_ids(batch: &[Prepared]) -> Vec<String> {
    let mut headers: Vec<String> = batch
        .iter()
        .flat_map(|p| {
            let pm = &p.parsed;
            pm.references
                .iter()
                .chain(&pm.in_reply_to)
                .chain(&pm.message_id)
                .cloned()
        })
        .collect();
    headers.sort_unstable();
    headers.dedup();
    headers
}

impl FirstRead {
    fn of(batch: &[Prepared]) -> Self {
        FirstRead {
            keys: recipient_keys(batch),
            headers: named_message_ids(batch),
        }
    }

    fn rides(&self) -> bool {
        !self.keys.is_empty()
            && self.keys.len() <= PREFETCH_CHUNK
            && self.headers.len() <= PREFETCH_CHUNK
    }

    /// Columns 4 (the last full-text key), 5 (agents) and 6 (messages) of
    /// the head's row.
    fn columns(&self, dialect: Dialect) -> String {
        let mut sql = String::from(", (SELECT MAX(seq) FROM messages)");
        if !self.rides() {
            return sql;
        }
        let (open, close) = match dialect {
            Dialect::Postgres => ("CAST(json_agg(json_build_array(", ")) AS TEXT)"),
            Dialect::Sqlite => ("json_group_array(json_array(", "))"),
        };
        sql.push_str(&format!(
            ", (SELECT {open}a.address_key, a.id, a.address, a.status, {AGENT_POLICY_SETTINGS}, \
             COALESCE(u.bytes, 0){close} FROM agents a LEFT JOIN mailbox_usage u ON u.agent_id = a.id \
             WHERE a.address_key IN ({}) AND a.status <> 'decommissioned')",
            list_marks(dialect, 1, self.keys.len())
        ));
        if self.headers.is_empty() {
            sql.push_str(", NULL");
        } else {
            sql.push_str(&format!(
                ", (SELECT {open}id, message_id_header{close} FROM messages \
                 WHERE message_id_header IN ({}))",
                list_marks(dialect, self.keys.len() + 1, self.headers.len())
            ));
        }
        sql
    }

    fn binds(&self) -> Vec<&str> {
        if !self.rides() {
            return vec![];
        }
        self.keys
            .iter()
            .chain(&self.headers)
            .map(String::as_str)
            .collect()
    }

    /// Files what the head's row brought into `st`, as `prefetch` would.
    fn apply(&self, row: &sqlx::any::AnyRow, st: &mut Batch) -> Result<()> {
        if !self.rides() {
            return Ok(());
        }
        fn rows<T: serde::de::DeserializeOwned>(json: Option<String>) -> Result<Vec<T>> {
            // No rows: NULL on PostgreSQL, `[]` on SQLite.
            serde_json::from_str(json.as_deref().unwrap_or("[]")).map_err(|e| {
                crate::error::Error::Internal(format!("a batch's first read did not parse: {e}"))
            })
        }
        st.note_agents(rows::<AgentRow>(row.try_get(5)?)?, &self.keys);
        st.agents_read = true;
        st.stored_headers = Some(
            rows::<(String, String)>(row.try_get(6)?)?
                .into_iter()
                .collect(),
        );
        Ok(())
    }
}

/// A recipient agent resolved inside the commit.
struct Rcpt {
    agent_id: String,
    address: String,
    rcpt: String,
    /// Its key in `Batch::agents`.
    key: String,
}

impl Service {
    /// The RCPT check: is there a live agent at this address with room?
    pub async fn check_recipient(&self, rcpt: &str) -> Result<RecipientCheck> {
        let Ok(addr) = AgentAddress::parse(rcpt, "rcpt") else {
            return Ok(RecipientCheck::Unknown);
        };
        let key = addr.key();
        if self.accepted_rcpts.fresh(&key) {
            return Ok(RecipientCheck::Accept);
        }
        let sql = format!(
            "SELECT a.id, a.status, {AGENT_POLICY_SETTINGS} AS settings, COALESCE(u.bytes, 0) AS used FROM agents a \
             LEFT JOIN mailbox_usage u ON u.agent_id = a.id WHERE a.address_key = $1 AND a.status <> 'decommissioned'"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key.as_str())
            .fetch_optional(&self.db.pool)
            .await?;
        let Some(row) = row else {
            let tomb: Option<(i64,)> =
                sqlx::query_as("SELECT until_at FROM tombstones WHERE address_key = $1")
                    .bind(key.as_str())
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
        let used: i64 = row.try_get("used")?;
        let policy = PolicySettings::resolved(row.try_get("settings")?);
        Ok(if used >= policy.storage_bytes {
            RecipientCheck::MailboxFull
        } else {
            self.accepted_rcpts.accepted(key);
            RecipientCheck::Accept
        })
    }

    /// Commits a batch of prepared deliveries in one write transaction and
    /// returns one answer per delivery, in order. An `Err` means nothing of
    /// the batch was committed.
    ///
    /// Reads happen per delivery (recipients, quota, threading), with what
    /// the batch itself already filed taken into account; the writes are
    /// collected and go out as a few multi-row statements at the end, so a
    /// batch costs about three statements per message instead of twenty.
    /// `committing` is told once only the `COMMIT` is left (PostgreSQL), or
    /// dropped when the batch is done.
    async fn commit_deliveries(
        &self,
        batch: &[Prepared],
        committing: Option<oneshot::Sender<()>>,
    ) -> Result<Vec<Result<String, DeliveryError>>> {
        let now = self.now();
        let t0 = std::time::Instant::now();
        let mut tx = self.db.begin_group_commit().await?;
        let t_begin = t0.elapsed();

        // The chain's head, the last full-text key and, for a batch of
        // common size, the recipients and the Message-IDs its messages
        // name, in one round trip: each costs one under the write lock.
        let first = FirstRead::of(batch);
        let dialect = self.db.dialect;
        let (head, row) =
            crate::audit::read_head_with(&mut tx, &first.columns(dialect), &first.binds()).await?;
        let max_seq: Option<i64> = row.try_get(4)?;
        let mut st = Batch {
            seq: max_seq.unwrap_or(0),
            ..Batch::default()
        };
        first.apply(&row, &mut st)?;
        self.prefetch(&mut tx, &mut st, batch).await?;
        let t_pre = t0.elapsed();
        let mut results = Vec::with_capacity(batch.len());
        for p in batch {
            results.push(self.file_one(&mut tx, &mut st, p, now).await?);
        }
        let t_file = t0.elapsed();
        // A recipient this batch found refusing, or filled, is asked about
        // again at its next RCPT.
        let refusing: Vec<String> = st
            .agents
            .iter()
            .filter(|(_, a)| {
                a.as_ref()
                    .is_none_or(|a| a.status != "active" || a.used >= a.quota)
            })
            .map(|(key, _)| key.clone())
            .collect();
        st.flush(&mut tx, now, Some(head)).await?;
        let t_flush = t0.elapsed();
        // On SQLite the next batch could only wait at the write gate, and
        // would leave with fewer messages: it starts after this commit.
        if self.db.dialect == Dialect::Postgres
            && let Some(committing) = committing
        {
            let _ = committing.send(());
        }
        tx.commit().await?;
        for key in &refusing {
            self.accepted_rcpts.forget(key);
        }
        // Where a commit's time goes (microseconds since it started waiting
        // for the write lock), for `bench/smtp-ingest`.
        let micros = |d: std::time::Duration| d.as_micros() as u64;
        tracing::debug!(
            locked = micros(t_begin),
            prefetched = micros(t_pre),
            filed = micros(t_file),
            written = micros(t_flush),
            committed = micros(t0.elapsed()),
            "group commit phases"
        );
        Ok(results)
    }

    /// Files the copies of a batch of sends in their agents' `sent`
    /// folders with the same few multi-row writes as inbound mail (threads,
    /// blobs, messages, search rows, entries, usage), inside the send group
    /// commit's transaction. `last_seq` is the last full-text key this
    /// transaction handed out, if any. Returns (message id, thread id) per
    /// copy, in order, and the last key used.
    pub(crate) async fn file_sent_copies(
        &self,
        tx: &mut Tx,
        copies: Vec<SentCopy>,
        last_seq: Option<i64>,
        now: i64,
    ) -> Result<(Vec<(String, String)>, i64)> {
        let seq = match last_seq {
            Some(seq) => seq,
            None => next_seq(tx).await? - 1,
        };
        let prepared: Vec<Prepared> = copies
            .into_iter()
            .map(|c| {
                let key = AgentAddress::parse(&c.agent_address, "from")
                    .ok()
                    .map(|a| a.key());
                let participants = c.parsed.participants();
                let fields = Arc::new(MessageFields::of(
                    &c.recipients,
                    &c.parsed,
                    c.raw.len() as i64,
                    Dialect::of(tx),
                ));
                Prepared {
                    delivery: InboundDelivery {
                        client_ip: String::new(),
                        helo: String::new(),
                        mail_from: c.agent_address,
                        rcpt_to: c.recipients,
                        tls: false,
                        auth_results: None,
                        dmarc: String::new(),
                        dmarc_policy: None,
                        raw: c.raw,
                    },
                    parsed: c.parsed,
                    blob_hash: c.blob_hash,
                    // Filing pairs envelope recipients with agent keys:
                    // one key, the sending agent's, files exactly one copy
                    // (a send has at least one recipient).
                    rcpt_keys: vec![key],
                    participants,
                    filing: Filing::SentCopy,
                    fields,
                    event: None,
                }
            })
            .collect();
        let mut st = Batch {
            seq,
            ..Batch::default()
        };
        self.prefetch(tx, &mut st, &prepared).await?;
        let mut filed = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let message_id = match self.file_one(tx, &mut st, p, now).await? {
                Ok(id) => id,
                Err(e) => {
                    return Err(crate::error::Error::Internal(format!(
                        "the sent copy for {} could not be filed: {e:?}",
                        p.delivery.mail_from
                    )));
                }
            };
            let thread_id = st.entries.last().map(|e| e.2.clone()).unwrap_or_default();
            filed.push((message_id, thread_id));
        }
        let last = st.seq;
        st.flush(tx, now, None).await?;
        Ok((filed, last))
    }

    /// The batch's reads, a few statements for the whole batch instead of
    /// two or three per message: every recipient's agent, and the stored
    /// threads its messages may join (by Message-ID, and by subject among
    /// the same participants) with their participant lists. Filing then
    /// consults these (after what the batch itself filed, which is newer).
    async fn prefetch(&self, tx: &mut Tx, st: &mut Batch, batch: &[Prepared]) -> Result<()> {
        let dialect = Dialect::of(tx);
        // Read with the head already (`FirstRead`), or here.
        let keys = if st.agents_read {
            vec![]
        } else {
            recipient_keys(batch)
        };
        for chunk in keys.chunks(PREFETCH_CHUNK) {
            let sql = format!(
                "SELECT a.address_key, a.id, a.address, a.status, {AGENT_POLICY_SETTINGS} AS settings, COALESCE(u.bytes, 0) AS used \
                 FROM agents a LEFT JOIN mailbox_usage u ON u.agent_id = a.id \
                 WHERE a.address_key IN ({}) AND a.status <> 'decommissioned'",
                list_marks(dialect, 1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, AgentRow>(AssertSqlSafe(sql));
            for k in chunk {
                q = q.bind(k.as_str());
            }
            let rows = q.fetch_all(&mut **tx).await?;
            st.note_agents(rows, chunk);
        }
        let mut agents: Vec<String> = st
            .agents
            .values()
            .flatten()
            .filter(|a| a.status == "active")
            .map(|a| a.id.clone())
            .collect();
        agents.sort_unstable();
        agents.dedup();
        if agents.is_empty() || agents.len() > PREFETCH_CHUNK {
            return Ok(()); // nothing to file, or filing reads per message
        }
        // (agent, subject key, participants key) of every filing that may
        // join a thread by subject.
        let mut subject_keys: Vec<(String, String, String)> = vec![];
        for p in batch {
            let pm = &p.parsed;
            if pm.subject_key.is_empty() {
                continue;
            }
            let participants = p.participants.join(" ");
            for key in p.rcpt_keys.iter().flatten() {
                if let Some(Some(a)) = st.agents.get(key) {
                    subject_keys.push((a.id.clone(), pm.subject_key.clone(), participants.clone()));
                }
            }
        }
        subject_keys.sort_unstable();
        subject_keys.dedup();
        // Two lookups, each on an index of its own: the stored messages with
        // those Message-IDs, then their entries in these agents' mailboxes.
        // (As one join, PostgreSQL chose to scan a mailbox that holds most
        // of the table, a cost growing with every message stored.)
        let (mut stored, headers) = match st.stored_headers.take() {
            Some(stored) => (stored, vec![]),
            None => (HashMap::new(), named_message_ids(batch)),
        }; // id -> Message-ID
        for chunk in headers.chunks(PREFETCH_CHUNK) {
            let sql = format!(
                "SELECT id, message_id_header FROM messages WHERE message_id_header IN ({})",
                list_marks(dialect, 1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql));
            for h in chunk {
                q = q.bind(h.as_str());
            }
            stored.extend(q.fetch_all(&mut **tx).await?);
        }
        let ids: Vec<&String> = stored.keys().collect();
        for chunk in ids.chunks(PREFETCH_CHUNK) {
            let sql = format!(
                "SELECT e.agent_id, e.message_id, e.thread_id, e.received_at, t.participants \
                 FROM {} JOIN threads t ON t.agent_id = e.agent_id AND t.id = e.thread_id \
                 WHERE e.message_id IN ({}) AND e.agent_id IN ({})",
                indexed(dialect, "mailbox_entries e", "mailbox_entries_message"),
                list_marks(dialect, 1, chunk.len()),
                list_marks(dialect, chunk.len() + 1, agents.len())
            );
            let mut q =
                sqlx::query_as::<_, (String, String, String, i64, String)>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for a in &agents {
                q = q.bind(a.clone());
            }
            for (agent, message, thread, at, participants) in q.fetch_all(&mut **tx).await? {
                let Some(header) = stored.get(&message) else {
                    continue;
                };
                let slot = st
                    .stored_by_header
                    .entry((agent, header.clone()))
                    .or_insert((at, thread.clone()));
                if at > slot.0 {
                    *slot = (at, thread.clone());
                }
                st.stored_participants.insert(thread, participants);
            }
        }
        // Exactly the keys wanted, joined from a VALUES list: one index probe
        // each. (Three IN lists would probe their whole cross product, and
        // SQLite scans the table for a row-value IN.)
        if !subject_keys.is_empty() && subject_keys.len() <= PREFETCH_CHUNK {
            let sql = format!(
                "WITH k (a, s, p) AS (VALUES {}) \
                 SELECT t.agent_id, t.subject_key, t.participants_key, t.id, t.created_at, t.participants \
                 FROM k CROSS JOIN {} \
                 WHERE t.agent_id = k.a AND t.subject_key = k.s AND t.participants_key = k.p",
                value_groups(dialect, subject_keys.len(), 3, parenthesised),
                indexed(dialect, "threads t", "threads_subject")
            );
            let mut q = sqlx::query_as::<_, (String, String, String, String, i64, String)>(
                AssertSqlSafe(sql),
            );
            for (agent, subject, participants) in &subject_keys {
                q = q
                    .bind(agent.clone())
                    .bind(subject.clone())
                    .bind(participants.clone());
            }
            for (agent, subject, pkey, id, created, participants) in q.fetch_all(&mut **tx).await? {
                // The newest thread of that subject among those participants.
                let slot = st
                    .stored_by_subject
                    .entry((agent, subject, pkey))
                    .or_insert((created, id.clone()));
                if (created, &id) > (slot.0, &slot.1) {
                    *slot = (created, id.clone());
                }
                st.stored_participants.insert(id, participants);
            }
            st.subjects_prefetched = true;
        }
        st.headers_prefetched = true;
        Ok(())
    }

    /// Files one delivery into the batch. Database errors abort the batch
    /// (`Err`); refusals are per delivery (`Ok(Err(_))`).
    async fn file_one(
        &self,
        tx: &mut Tx,
        st: &mut Batch,
        p: &Prepared,
        now: i64,
    ) -> Result<Result<String, DeliveryError>> {
        let d = &p.delivery;
        let size = d.raw.len() as i64;
        // Recipients may have changed state since RCPT: resolve again, under the lock.
        let mut rcpts: Vec<Rcpt> = vec![];
        let mut suspended = false;
        for (rcpt, key) in d.rcpt_to.iter().zip(&p.rcpt_keys) {
            let Some(key) = key else {
                continue;
            };
            // `prefetch` read every recipient key of the batch.
            let Some(a) = st.agents.get(key).cloned().flatten() else {
                continue;
            };
            if a.status == "suspended" {
                suspended = true;
                continue;
            }
            if a.status != "active" {
                continue;
            }
            if rcpts.iter().any(|r| r.agent_id == a.id) {
                continue;
            }
            // One answer covers every recipient after DATA: a full mailbox
            // defers the whole message (452) rather than drop it silently
            // for one recipient.
            if p.filing == Filing::Inbound && a.used + size > a.quota {
                return Ok(Err(DeliveryError::Full));
            }
            rcpts.push(Rcpt {
                agent_id: a.id,
                address: a.address,
                rcpt: rcpt.clone(),
                key: key.clone(),
            });
        }
        if rcpts.is_empty() {
            return Ok(Err(if suspended {
                DeliveryError::Temp
            } else {
                DeliveryError::Rejected("no such recipient".into())
            }));
        }
        // A small blob is written here (an identical one is kept). A large
        // one was stored before; the collector may have removed an identical
        // blob that was unreferenced a moment ago, and it deletes under this
        // same lock, so checking here is enough.
        if st.blobs_seen.insert(p.blob_hash.clone()) {
            if self.db.blobs.fits_in_transaction(d.raw.len()) {
                st.table_blobs.push((p.blob_hash.clone(), d.raw.clone()));
            } else if !self.db.blobs.exists(tx, &p.blob_hash).await? {
                self.db.blobs.put(tx, &d.raw).await?;
            }
        }

        let pm = &p.parsed;
        st.seq += 1;
        let seq = st.seq;
        let id = uuid::Uuid::now_v7().to_string();
        let inbound = p.filing == Filing::Inbound;
        let envelope = Envelope {
            client_ip: inbound.then_some(d.client_ip.as_str()),
            helo: inbound.then_some(d.helo.as_str()),
            mail_from: &d.mail_from,
            rcpt_to: &d.rcpt_to,
            tls: d.tls,
            auth_results: d.auth_results.as_deref(),
        };
        st.messages.push(message_row(
            id.clone(),
            seq,
            p.blob_hash.clone(),
            &envelope,
            pm,
            Arc::clone(&p.fields),
            &rcpts
                .iter()
                .map(|r| r.agent_id.as_str())
                .collect::<Vec<_>>(),
        ));

        let spam =
            d.dmarc == "fail" && matches!(d.dmarc_policy.as_deref(), Some("quarantine" | "reject"));
        let folder = match p.filing {
            Filing::SentCopy => "sent",
            Filing::Inbound if spam => "spam",
            Filing::Inbound => "inbox",
        };
        for r in &rcpts {
            let thread_id = self
                .thread_for(tx, st, &r.agent_id, pm, &p.participants, now)
                .await?;
            if let Some(own) = &pm.message_id {
                st.order += 1;
                st.by_message_id.insert(
                    (r.agent_id.clone(), own.clone()),
                    (st.order, thread_id.clone()),
                );
            }
            st.entries.push((
                r.agent_id.clone(),
                st.messages.len() - 1,
                thread_id.clone(),
                folder,
                i64::from(inbound),
                size,
            ));
            if let Some(Some(a)) = st.agents.get_mut(&r.key) {
                a.used += size;
            }
            match st.usage.iter_mut().find(|u| u.0 == r.agent_id) {
                Some(u) => {
                    u.1 += size;
                    u.2 += 1;
                }
                None => st.usage.push((r.agent_id.clone(), size, 1)),
            }
            if !inbound {
                continue;
            }
            st.audit.push(NewEntry {
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
            });
            let built;
            let message = match &p.event {
                Some(message) => message,
                None => {
                    built = MessageEvent::of(pm, size);
                    &built
                }
            };
            let event = event_data(message, &r.agent_id, &r.address, &id, &thread_id, folder);
            // Mail filed straight to spam is reported as quarantined.
            let kind = if spam {
                "message.quarantined"
            } else {
                "message.received"
            };
            st.events.push((kind, r.agent_id.clone(), event));
        }
        Ok(Ok(id))
    }

    /// Threads by `References`/`In-Reply-To` (and the message's own id, so
    /// a duplicate joins its original); failing that, by the normalised
    /// subject among the same participants; else a new thread. What this
    /// batch filed counts first (it is the newest).
    async fn thread_for(
        &self,
        tx: &mut Tx,
        st: &mut Batch,
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
        let mut found: Option<String> = ids
            .iter()
            .filter_map(|i| st.by_message_id.get(&(agent_id.to_string(), i.to_string())))
            .max_by_key(|(order, _)| *order)
            .map(|(_, t)| t.clone());
        if found.is_none() && st.headers_prefetched {
            found = ids
                .iter()
                .filter_map(|i| {
                    st.stored_by_header
                        .get(&(agent_id.to_string(), i.to_string()))
                })
                .max_by_key(|(at, _)| *at)
                .map(|(_, t)| t.clone());
        } else if found.is_none() && !ids.is_empty() {
            // Written so that both planners start from the Message-ID index
            // and probe the entry by its key: with ORDER BY … LIMIT 1 here,
            // SQLite without statistics walks the agent's whole mailbox by
            // time instead, for every message (quadratic ingest). The
            // newest match is picked here; there are only a few.
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT e.thread_id, e.received_at FROM {} WHERE e.agent_id = $1 AND e.message_id IN \
                 (SELECT m.id FROM messages m WHERE m.message_id_header IN ({}))",
                indexed(Dialect::of(tx), "mailbox_entries e", "mailbox_entries_key"),
                marks.join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql)).bind(agent_id);
            for i in &ids {
                q = q.bind(i.to_string());
            }
            found = q
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .max_by_key(|r| r.1)
                .map(|r| r.0);
        }
        let participants_key = participants.join(" ");
        let subject_key = (
            agent_id.to_string(),
            pm.subject_key.clone(),
            participants_key.clone(),
        );
        if found.is_none() && !pm.subject_key.is_empty() {
            found = st.by_subject.get(&subject_key).cloned();
            if found.is_none() && st.subjects_prefetched {
                found = st
                    .stored_by_subject
                    .get(&subject_key)
                    .map(|(_, id)| id.clone());
            } else if found.is_none() {
                found = sqlx::query_as::<_, (String,)>(AssertSqlSafe(format!(
                    "SELECT id FROM {} WHERE agent_id = $1 AND subject_key = $2 AND participants_key = $3 \
                     ORDER BY created_at DESC LIMIT 1",
                    indexed(Dialect::of(tx), "threads", "threads_subject")
                )))
                .bind(agent_id)
                .bind(&pm.subject_key)
                .bind(&participants_key)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.0);
            }
        }
        if let Some(thread_id) = found {
            // Grow the participant list (it is display data, not the key).
            if !st.threads.contains_key(&thread_id) {
                let current = match st.stored_participants.get(&thread_id) {
                    Some(p) => p.clone(),
                    None => {
                        sqlx::query_as::<_, (String,)>(
                            "SELECT participants FROM threads WHERE id = $1",
                        )
                        .bind(&thread_id)
                        .fetch_one(&mut **tx)
                        .await?
                        .0
                    }
                };
                st.threads.insert(
                    thread_id.clone(),
                    ThreadState {
                        participants: current.split_whitespace().map(str::to_string).collect(),
                        changed: false,
                        new: None,
                    },
                );
            }
            if let Some(t) = st.threads.get_mut(&thread_id) {
                for p in participants {
                    if !t.participants.contains(p) && t.participants.len() < 200 {
                        t.participants.push(p.clone());
                        t.changed = true;
                    }
                }
            }
            return Ok(thread_id);
        }
        let thread_id = uuid::Uuid::now_v7().to_string();
        st.threads.insert(
            thread_id.clone(),
            ThreadState {
                participants: participants.to_vec(),
                changed: false,
                new: Some(NewThread {
                    agent_id: agent_id.to_string(),
                    subject: pm.subject.clone(),
                    subject_key: pm.subject_key.clone(),
                    participants_key,
                    created_at: now,
                }),
            },
        );
        st.new_threads.push(thread_id.clone());
        if !pm.subject_key.is_empty() {
            st.by_subject.insert(subject_key, thread_id.clone());
        }
        Ok(thread_id)
    }
}

/// The envelope of a message filed one at a time (not through the
/// inbound group commit): the sent copy of an outbound message, a bounce.
pub(crate) struct Envelope<'a> {
    pub client_ip: Option<&'a str>,
    pub helo: Option<&'a str>,
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    pub tls: bool,
    pub auth_results: Option<&'a str>,
}

/// The next full-text key; call under the write lock (`begin_write`).
pub(crate) async fn next_seq(tx: &mut Tx) -> Result<i64> {
    let (max_seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM messages")
        .fetch_one(&mut **tx)
        .await?;
    Ok(max_seq.unwrap_or(0) + 1)
}

/// The full-text token that marks a message as filed for this agent: the
/// id's hex digits behind a letter, one word for every tokenizer.
pub(crate) fn search_token(agent_id: &str) -> String {
    format!("a{}", agent_id.replace('-', ""))
}

fn message_row(
    id: String,
    seq: i64,
    blob_hash: String,
    d: &Envelope<'_>,
    pm: &Parsed,
    fields: Arc<MessageFields>,
    agents: &[&str],
) -> MessageRow {
    MessageRow {
        id,
        seq,
        blob_hash,
        size: fields.size,
        client_ip: d.client_ip.map(str::to_string),
        helo: d.helo.map(str::to_string),
        mail_from: d.mail_from.to_string(),
        tls: d.tls as i64,
        auth_results: d.auth_results.map(str::to_string),
        message_id: pm.message_id.clone(),
        subject: pm.subject.clone(),
        date_at: pm.date_at,
        snippet: pm.snippet.clone(),
        search_body: pm.search_body.clone(),
        fields,
        search_agents: agents.iter().map(|a| search_token(a)).collect(),
    }
}

impl Service {
    /// Stores one message (its blob must be stored) and files it in one
    /// agent's mailbox: message and search rows, thread, entry, usage,
    /// written by the group commit's own code. Returns the thread id; the
    /// caller records the audit entry and the event.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn file_message(
        &self,
        tx: &mut Tx,
        agent_id: &str,
        message_id: &str,
        seq: i64,
        blob_hash: &str,
        envelope: &Envelope<'_>,
        pm: &Parsed,
        folder: &'static str,
        unread: bool,
        size: i64,
        now: i64,
    ) -> Result<String> {
        let mut st = Batch::default();
        let fields = Arc::new(MessageFields::of(
            envelope.rcpt_to,
            pm,
            size,
            Dialect::of(tx),
        ));
        st.messages.push(message_row(
            message_id.to_string(),
            seq,
            blob_hash.to_string(),
            envelope,
            pm,
            fields,
            &[agent_id],
        ));
        let thread_id = self
            .thread_for(tx, &mut st, agent_id, pm, &pm.participants(), now)
            .await?;
        st.entries.push((
            agent_id.to_string(),
            0,
            thread_id.clone(),
            folder,
            i64::from(unread),
            size,
        ));
        st.usage.push((agent_id.to_string(), size, 1));
        st.flush(tx, now, None).await?;
        Ok(thread_id)
    }
}

/// A recipient's agent as the batch reads it: address key, id, address,
/// status, policy settings, bytes used.
type AgentRow = (String, String, String, String, Option<String>, i64);

/// A recipient as the batch sees it: usage includes what the batch filed.
#[derive(Clone)]
struct BatchAgent {
    id: String,
    address: String,
    status: String,
    quota: i64,
    used: i64,
}

struct MessageRow {
    id: String,
    seq: i64,
    blob_hash: String,
    size: i64,
    client_ip: Option<String>,
    helo: Option<String>,
    mail_from: String,
    tls: i64,
    auth_results: Option<String>,
    message_id: Option<String>,
    subject: Option<String>,
    date_at: Option<i64>,
    snippet: Option<String>,
    search_body: String,
    fields: Arc<MessageFields>,
    /// `search_token` of every agent the message is filed for.
    search_agents: Vec<String>,
}

/// A message's columns that do not depend on where it is filed, serialised
/// once. Inbound mail has them worked out before the queue, by its own
/// session, so the one committer task (on PostgreSQL inside the write
/// lock) only copies them: serialising them there was about a tenth of
/// the server's CPU at 20 connections (BENCHMARKS.md, session 17).
struct MessageFields {
    size: i64,
    rcpt_to: String,
    in_reply_to: String,
    refs: String,
    from_json: String,
    to_json: String,
    cc_json: String,
    reply_to_json: String,
    attachments: String,
    from_key: String,
    to_key: String,
    search_words: String,
    /// PostgreSQL: the message's own lexemes as a `tsvector` literal; the
    /// agents' tokens are added when it is filed.
    search_tsv: Option<String>,
}

/// The members of a `message.received` (or `message.quarantined`) event
/// that come from the message, serialised, in the order `serde_json`
/// writes an object's keys (sorted): `from` goes between `folder` and
/// `message_id`, the rest between `raw_path` and `thread_id`.
struct MessageEvent {
    from: String,
    rest: String,
}

impl MessageFields {
    fn of(rcpt_to: &[String], pm: &Parsed, size: i64, dialect: Dialect) -> Self {
        let to_json =
            |v: &Vec<parse::EmailAddress>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let mut to_all = pm.to.clone();
        to_all.extend(pm.cc.iter().cloned());
        let search_words = search_words(&pm.from, &to_all);
        let search_tsv = (dialect == Dialect::Postgres)
            .then(|| own_tsvector(pm.subject.as_deref(), &search_words, &pm.search_body));
        MessageFields {
            size,
            rcpt_to: json!(rcpt_to).to_string(),
            in_reply_to: json!(pm.in_reply_to).to_string(),
            refs: json!(pm.references).to_string(),
            from_json: to_json(&pm.from),
            to_json: to_json(&pm.to),
            cc_json: to_json(&pm.cc),
            reply_to_json: to_json(&pm.reply_to),
            attachments: serde_json::to_string(&pm.attachments).unwrap_or_else(|_| "[]".into()),
            from_key: search_key(&pm.from),
            to_key: search_key(&to_all),
            search_words,
            search_tsv,
        }
    }
}

impl MessageEvent {
    fn of(pm: &Parsed, size: i64) -> Self {
        MessageEvent {
            from: object_members(&json!({
                "from": pm.from.first().and_then(|a| a.address.clone()),
            })),
            rest: object_members(&json!({
                // The model-safe view, never the raw message (a link to it instead).
                "safe": { "text": pm.safe_text, "risk": pm.risk, "findings": pm.finding_kinds },
                "size_bytes": size,
                "snippet": pm.snippet,
                "subject": pm.subject,
            })),
        }
    }
}

/// An object's members without its braces, to splice into another object.
fn object_members(object: &serde_json::Value) -> String {
    let s = object.to_string();
    s.get(1..s.len().saturating_sub(1))
        .unwrap_or_default()
        .to_string()
}

/// A `message.received` event's data: the filing's members around the
/// message's own (`MessageEvent`), as `serde_json` would write the whole.
fn event_data(
    message: &MessageEvent,
    agent_id: &str,
    address: &str,
    message_id: &str,
    thread_id: &str,
    folder: &str,
) -> String {
    let text = |v: &str| serde_json::Value::from(v).to_string();
    format!(
        "{{\"address\":{},\"agent_id\":{},\"folder\":{},{},\"message_id\":{},\"raw_path\":{},{},\"thread_id\":{}}}",
        text(address),
        text(agent_id),
        text(folder),
        message.from,
        text(message_id),
        text(&format!(
            "/v1/agents/{agent_id}/messages/{message_id}?view=raw"
        )),
        message.rest,
        text(thread_id),
    )
}

struct NewThread {
    agent_id: String,
    subject: Option<String>,
    subject_key: String,
    participants_key: String,
    created_at: i64,
}

struct ThreadState {
    participants: Vec<String>,
    /// An existing thread whose participant list grew.
    changed: bool,
    /// A thread this batch created.
    new: Option<NewThread>,
}

/// What one group commit has filed so far, written out by `flush`.
#[derive(Default)]
struct Batch {
    seq: i64,
    order: u64,
    agents: HashMap<String, Option<BatchAgent>>,
    blobs_seen: HashSet<String>,
    /// Raw messages small enough for the `blobs` table: (hash, bytes).
    table_blobs: Vec<(String, Vec<u8>)>,
    messages: Vec<MessageRow>,
    /// (agent, index of the message in `messages`, thread, folder, unread, size)
    entries: Vec<(String, usize, String, &'static str, i64, i64)>,
    /// (agent, bytes, messages) added
    usage: Vec<(String, i64, i64)>,
    threads: HashMap<String, ThreadState>,
    new_threads: Vec<String>,
    by_message_id: HashMap<(String, String), (u64, String)>,
    by_subject: HashMap<(String, String, String), String>,
    audit: Vec<NewEntry>,
    /// (kind, agent, data as JSON)
    events: Vec<(&'static str, String, String)>,
    /// Set by `FirstRead`: every recipient is in `agents`, and these are
    /// the stored messages (id → Message-ID) the batch's Message-IDs name.
    agents_read: bool,
    stored_headers: Option<HashMap<String, String>>,
    /// Read by `prefetch` for the whole batch: the newest stored entry per
    /// (agent, Message-ID) as (received_at, thread); the newest thread per
    /// (agent, subject key, participants key) as (created_at, id); stored
    /// participant lists of those threads.
    headers_prefetched: bool,
    subjects_prefetched: bool,
    stored_by_header: HashMap<(String, String), (i64, String)>,
    stored_by_subject: HashMap<(String, String, String), (i64, String)>,
    stored_participants: HashMap<String, String>,
}

impl Batch {
    /// Notes the agents read for recipients `keys`; a key without a row
    /// has no live agent.
    fn note_agents(&mut self, rows: Vec<AgentRow>, keys: &[String]) {
        for (key, id, address, status, settings, used) in rows {
            let policy = PolicySettings::resolved(settings);
            self.agents.entry(key).or_insert(Some(BatchAgent {
                id,
                address,
                status,
                quota: policy.storage_bytes,
                used,
            }));
        }
        for k in keys {
            self.agents.entry(k.clone()).or_insert(None);
        }
    }

    /// Writes everything the batch filed, in the order the single-message
    /// path would have: threads, messages and their search rows, mailbox
    /// entries, usage, then the audit entries and events, continuing the
    /// chain from `head` (read with the batch's first statement): on
    /// SQLite two round trips in all (see [`WriteBatch`] and
    /// [`crate::events::record`]).
    async fn flush(mut self, tx: &mut Tx, now: i64, head: Option<Head>) -> Result<()> {
        let mut batch = WriteBatch::new(Dialect::of(tx));
        self.push_threads(&mut batch);
        self.push_blobs(&mut batch);
        self.push_rest(&mut batch, now);
        if self.audit.is_empty() && self.events.is_empty() {
            return batch.execute(tx).await;
        }
        let head = match head {
            Some(head) => head,
            None => crate::audit::read_head(tx, "").await?.0,
        };
        let events: Vec<(&str, Option<&str>, String)> = self
            .events
            .iter_mut()
            .map(|(kind, agent, data)| (*kind, Some(agent.as_str()), std::mem::take(data)))
            .collect();
        crate::events::record(tx, batch, head, now, &self.audit, events).await
    }

    /// The batch's small raw messages, a few multi-row inserts instead of
    /// one statement each (an identical stored blob is kept).
    fn push_blobs(&self, batch: &mut WriteBatch) {
        let dialect = batch.dialect();
        for chunk in self.table_blobs.chunks(32) {
            let sql = format!(
                "INSERT INTO blobs (hash, data) VALUES {} ON CONFLICT (hash) DO NOTHING",
                value_groups(dialect, chunk.len(), 2, parenthesised)
            );
            batch.push(&sql);
            for (hash, data) in chunk {
                batch.bind(hash.clone()).bind(data.clone());
            }
        }
    }

    /// The threads this batch created, and participant lists that grew.
    fn push_threads(&self, batch: &mut WriteBatch) {
        let dialect = batch.dialect();
        let new_threads: Vec<(&String, &ThreadState)> = self
            .new_threads
            .iter()
            .filter_map(|id| self.threads.get(id).map(|t| (id, t)))
            .collect();
        for chunk in new_threads.chunks(100) {
            let sql = format!(
                "INSERT INTO threads (id, agent_id, subject, subject_key, participants_key, participants, created_at) VALUES {}",
                value_groups(dialect, chunk.len(), 7, parenthesised)
            );
            batch.push(&sql);
            for (id, t) in chunk {
                let n = t.new.as_ref().expect("a new thread");
                batch
                    .bind(id.to_string())
                    .bind(n.agent_id.clone())
                    .bind(n.subject.clone())
                    .bind(n.subject_key.clone())
                    .bind(n.participants_key.clone())
                    .bind(t.participants.join(" "))
                    .bind(n.created_at);
            }
        }
        let update = format!(
            "UPDATE threads SET {}",
            value_groups(dialect, 1, 2, |m| format!(
                "participants = {} WHERE id = {}",
                m[0], m[1]
            ))
        );
        for (id, t) in &self.threads {
            if t.changed && t.new.is_none() {
                batch
                    .push(&update)
                    .bind(t.participants.join(" "))
                    .bind(id.clone());
            }
        }
    }

    fn push_rest(&self, batch: &mut WriteBatch, now: i64) {
        let dialect = batch.dialect();
        for chunk in self.messages.chunks(64) {
            let sql = format!(
                "INSERT INTO messages (id, seq, blob_hash, size_bytes, received_at, client_ip, helo, mail_from, rcpt_to, tls, \
                 auth_results, message_id_header, in_reply_to, refs, subject, from_json, to_json, cc_json, reply_to_json, date_at, \
                 snippet, attachments, from_key, to_key) VALUES {}",
                value_groups(dialect, chunk.len(), 24, parenthesised)
            );
            batch.push(&sql);
            for m in chunk {
                batch
                    .bind(m.id.clone())
                    .bind(m.seq)
                    .bind(m.blob_hash.clone())
                    .bind(m.size)
                    .bind(now)
                    .bind(m.client_ip.clone())
                    .bind(m.helo.clone())
                    .bind(m.mail_from.clone())
                    .bind(m.fields.rcpt_to.clone())
                    .bind(m.tls)
                    .bind(m.auth_results.clone())
                    .bind(m.message_id.clone())
                    .bind(m.fields.in_reply_to.clone())
                    .bind(m.fields.refs.clone())
                    .bind(m.subject.clone())
                    .bind(m.fields.from_json.clone())
                    .bind(m.fields.to_json.clone())
                    .bind(m.fields.cc_json.clone())
                    .bind(m.fields.reply_to_json.clone())
                    .bind(m.date_at)
                    .bind(m.snippet.clone())
                    .bind(m.fields.attachments.clone())
                    .bind(m.fields.from_key.clone())
                    .bind(m.fields.to_key.clone());
            }
            push_search_rows(batch, chunk);
        }
        // The list columns are bound from the message rows in memory: a join
        // with `messages` is planned without statistics on a young
        // PostgreSQL table and became a scan of every message per batch.
        for chunk in self.entries.chunks(100) {
            let sql = format!(
                "INSERT INTO mailbox_entries ({ENTRY_COLUMNS}) VALUES {}",
                value_groups(dialect, chunk.len(), 19, |m| format!(
                    "({}, 0, {})",
                    m[..5].join(", "),
                    m[5..].join(", ")
                ))
            );
            batch.push(&sql);
            for (agent, message, thread, folder, unread, size) in chunk {
                let m = &self.messages[*message];
                batch
                    .bind(agent.clone())
                    .bind(m.id.clone())
                    .bind(thread.clone())
                    .bind(*folder)
                    .bind(*unread)
                    .bind(now)
                    .bind(now)
                    .bind(*size)
                    .bind(m.seq)
                    .bind(m.subject.clone())
                    .bind(m.fields.from_json.clone())
                    .bind(m.fields.to_json.clone())
                    .bind(m.fields.cc_json.clone())
                    .bind(m.snippet.clone())
                    .bind(m.date_at)
                    .bind(i64::from(m.fields.attachments.len() > 2))
                    .bind(m.message_id.clone())
                    .bind(m.fields.from_key.clone())
                    .bind(m.fields.to_key.clone());
            }
        }
        // One statement for every mailbox the batch filed into (the agents
        // are distinct: `usage` is accumulated per agent).
        for chunk in self.usage.chunks(100) {
            let sql = format!(
                "INSERT INTO mailbox_usage (agent_id, bytes, messages) VALUES {} \
                 ON CONFLICT (agent_id) DO UPDATE SET bytes = mailbox_usage.bytes + excluded.bytes, \
                 messages = mailbox_usage.messages + excluded.messages",
                value_groups(dialect, chunk.len(), 3, parenthesised)
            );
            batch.push(&sql);
            for (agent, bytes, count) in chunk {
                batch.bind(agent.clone()).bind(*bytes).bind(*count);
            }
        }
    }
}

/// The batch's rows of the full-text index. SQLite's FTS5 tokenises the
/// text itself. PostgreSQL receives the words as a `tsvector` built here:
/// `to_tsvector` with PostgreSQL's default parser cost about 1 ms of its CPU
/// per 5 KB message on this project's benchmark machine, more than all of
/// the message's other rows, and all of it inside the group commit. The
/// words are what a search looks for ([`search_terms`] on both sides), so
/// both backends find the same messages.
fn push_search_rows(batch: &mut WriteBatch, rows: &[MessageRow]) {
    let dialect = batch.dialect();
    let sql = match dialect {
        Dialect::Sqlite => format!(
            "INSERT INTO message_search (rowid, subject, addresses, body, agents) VALUES {}",
            value_groups(dialect, rows.len(), 5, parenthesised)
        ),
        Dialect::Postgres => format!(
            "INSERT INTO message_search (rowid, tsv) VALUES {}",
            value_groups(dialect, rows.len(), 2, |m| format!(
                "({}, CAST({} AS tsvector))",
                m[0], m[1]
            ))
        ),
    };
    batch.push(&sql);
    for m in rows {
        match dialect {
            Dialect::Sqlite => batch
                .bind(m.seq)
                .bind(m.subject.clone())
                .bind(m.fields.search_words.clone())
                .bind(m.search_body.clone())
                .bind(m.search_agents.join(" ")),
            Dialect::Postgres => batch.bind(m.seq).bind(postgres_search_row(m)),
        };
    }
}

/// A message's `tsvector` literal: its own lexemes, worked out before the
/// commit, and the tokens of the agents it is filed for. PostgreSQL sorts
/// a literal's lexemes and drops repeats itself.
fn postgres_search_row(m: &MessageRow) -> String {
    let mut out = match &m.fields.search_tsv {
        Some(own) => own.clone(),
        None => own_tsvector(m.subject.as_deref(), &m.fields.search_words, &m.search_body),
    };
    for token in &m.search_agents {
        if !out.is_empty() {
            out.push(' ');
        }
        push_quoted_lexeme(&mut out, token);
    }
    out
}

/// The `tsvector` literal of a message's subject, names and addresses,
/// and body.
fn own_tsvector(subject: Option<&str>, search_words: &str, body: &str) -> String {
    tsvector_literal(
        [subject.unwrap_or_default(), search_words, body]
            .into_iter()
            .flat_map(search_terms),
    )
}

/// The words of `text` as search indexes and looks them up: runs of
/// letters and digits, lowercased. A search splits its query the same way.
pub(crate) fn search_terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        // PostgreSQL refuses a lexeme of 2 KiB or more.
        .filter(|w| !w.is_empty() && w.len() < 2048)
        .map(str::to_lowercase)
}

/// Most bytes of lexemes one message indexes on PostgreSQL: a `tsvector`
/// must stay under 1 MiB, or the insert, and with it the whole group
/// commit, fails. (The body is already cut at 200 KB; a huge subject or
/// address list is what this guards against.)
const TSVECTOR_BYTES: usize = 512 * 1024;

/// A `tsvector` in PostgreSQL's input syntax: each lexeme quoted, once.
fn tsvector_literal(terms: impl Iterator<Item = String>) -> String {
    let mut terms: Vec<String> = terms.collect();
    terms.sort_unstable();
    terms.dedup();
    let mut out = String::new();
    for t in &terms {
        if out.len() + t.len() + 3 > TSVECTOR_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        push_quoted_lexeme(&mut out, t);
    }
    out
}

/// A `tsquery` in PostgreSQL's input syntax that requires every word of a
/// search (its first 32, as on SQLite) and the agent's token.
pub(crate) fn tsquery_literal(text: &str, agent_token: &str) -> String {
    let mut terms: Vec<String> = search_terms(text).take(32).collect();
    terms.push(agent_token.to_string());
    terms.sort_unstable();
    terms.dedup();
    terms
        .iter()
        .map(|t| quoted_lexeme(t))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// One lexeme quoted as PostgreSQL's input syntax asks (a quote doubled, a
/// backslash escaped). Only letters and digits reach here; escape anyway.
fn quoted_lexeme(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    push_quoted_lexeme(&mut out, term);
    out
}

fn push_quoted_lexeme(out: &mut String, term: &str) {
    out.push('\'');
    for c in term.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_runs_of_letters_and_digits() {
        let terms: Vec<String> =
            search_terms("Re: Größe e-mail alice@Example.COM v1.5 don't").collect();
        assert_eq!(
            terms,
            [
                "re", "größe", "e", "mail", "alice", "example", "com", "v1", "5", "don", "t"
            ]
        );
        let long = "x".repeat(3000);
        assert_eq!(search_terms(&long).count(), 0);
    }

    /// The event assembled from its serialised parts is, byte for byte,
    /// the object `serde_json` writes for the same members.
    #[test]
    fn message_events_are_the_json_of_their_members() {
        let raw = "From: \"Ann \\\"Q\\\"\" <ann@example.org>\r\nTo: bot@agents.test\r\n\
                   Subject: caf\u{e9} \"quoted\" \\ line\r\n\r\nhello <b>there</b>\r\n";
        let pm = parse::parse(raw.as_bytes());
        let message = MessageEvent::of(&pm, 321);
        let (agent, id, thread) = ("0190-agent", "0190-message", "0190-thread");
        let expected = json!({
            "agent_id": agent,
            "address": "bot@agents.test",
            "message_id": id,
            "thread_id": thread,
            "folder": "inbox",
            "from": pm.from.first().and_then(|a| a.address.clone()),
            "subject": pm.subject,
            "snippet": pm.snippet,
            "safe": { "text": pm.safe_text, "risk": pm.risk, "findings": pm.finding_kinds },
            "size_bytes": 321,
            "raw_path": format!("/v1/agents/{agent}/messages/{id}?view=raw"),
        });
        let data = event_data(&message, agent, "bot@agents.test", id, thread, "inbox");
        assert_eq!(data, expected.to_string());
        assert_eq!(pm.subject.as_deref(), Some("caf\u{e9} \"quoted\" \\ line"));
        // Without a From address or subject the members are still valid JSON.
        let bare = parse::parse(b"\r\nno headers\r\n");
        let data = event_data(&MessageEvent::of(&bare, 1), "a", "b", "c", "d", "spam");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["from"], serde_json::Value::Null);
        assert_eq!(v["folder"], "spam");
        // SQLite tokenises the text itself: no literal is built for it.
        assert!(
            MessageFields::of(&[], &bare, 1, Dialect::Sqlite)
                .search_tsv
                .is_none()
        );
        let tsv = MessageFields::of(&[], &pm, 1, Dialect::Postgres).search_tsv;
        assert!(tsv.is_some_and(|t| t.contains("'caf\u{e9}'") && t.contains("'there'")));
    }

    #[test]
    fn postgres_literals_quote_every_lexeme_once() {
        let v = tsvector_literal(["b", "a", "b"].into_iter().map(String::from));
        assert_eq!(v, "'a' 'b'");
        let many = (0..200_000).map(|i| format!("w{i}"));
        assert!(tsvector_literal(many).len() <= TSVECTOR_BYTES);
        assert_eq!(quoted_lexeme("it's\\"), "'it''s\\\\'");
        assert_eq!(
            tsquery_literal("Needle OR -common \"x\"", "a00ff"),
            "'a00ff' & 'common' & 'needle' & 'or' & 'x'"
        );
    }
}
