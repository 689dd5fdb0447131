//! The delivery worker: claims due recipients with a lease (`SKIP LOCKED`
//! on PostgreSQL, so nodes sharing a database never take the same work),
//! hands each send to the transport one transaction per recipient domain,
//! and records the results: delivered, retried with backoff, or failed
//! with a bounce (RFC 3464 DSN) filed in the sending agent's inbox.
//!
//! Bounces are only ever filed locally, never mailed out, so a bounce can
//! never answer a bounce.

use super::commit::Batch;
use crate::error::{Error, Result};
use crate::service::mailbox::ingest::Envelope;
use crate::service::mailbox::parse;
use crate::service::{Ctx, Service};
use crate::store::{Dialect, Tx, list_marks, parenthesised, value_groups};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use serde_json::json;
use sqlx::{AssertSqlSafe, Row};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the receiving side said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Accepted (`2xx`); the reply text.
    Delivered(String),
    /// Try again later (`4xx`, connection or TLS trouble).
    Deferred(String),
    /// Refused for good (`5xx`).
    Failed(String),
}

/// Sends one message to its recipients over the network. Implemented by
/// the binary with the SMTP client (relay or direct to MX).
pub trait OutboundTransport: Send + Sync + 'static {
    fn deliver<'a>(
        &'a self,
        mail_from: &'a str,
        rcpt_to: &'a [String],
        message: &'a [u8],
    ) -> DeliveryFuture<'a>;
}

/// One result per recipient, in any order.
pub type DeliveryFuture<'a> =
    Pin<Box<dyn Future<Output = Vec<(String, DeliveryResult)>> + Send + 'a>>;

/// Claimed recipients of one send on one domain.
pub(crate) struct Claimed {
    send_id: String,
    rows: Vec<(String, String, i64)>, // (queue id, recipient, attempts)
    /// The send's envelope sender, and its bytes when small (read for the
    /// whole claim; see `load_claimed`).
    mail_from: String,
    blob_hash: String,
    raw: Option<Arc<Vec<u8>>>,
}

/// Most recipient rows claimed at once.
const CLAIM: i64 = 200;
/// Values per `IN (…)` list (far below both backends' bind limits).
const PREFETCH_CHUNK: usize = 300;
/// Messages up to this size are read with the claim; larger ones by
/// their delivery task.
const PREFETCH_BYTES_MAX: i64 = 128 * 1024;

/// One attempt's results, waiting for the group commit.
pub(crate) struct Attempted {
    batch: Claimed,
    results: Vec<(String, DeliveryResult)>,
    pub(crate) recorded: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Service {
    /// The per-node delivery worker. Runs until `stop` turns true.
    pub async fn run_outbound_worker(
        self: Arc<Self>,
        transport: Arc<dyn OutboundTransport>,
        mut stop: watch::Receiver<bool>,
    ) {
        let node = format!("node-{}", uuid::Uuid::now_v7());
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.outbound.concurrency.max(1),
        ));
        let mut inflight = tokio::task::JoinSet::new();
        // Expiry is checked once a second, not on every claim of a busy queue.
        let mut next_expiry = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if tokio::time::Instant::now() >= next_expiry {
                next_expiry = tokio::time::Instant::now() + Duration::from_secs(1);
                if let Err(e) = self.expire_pending_sends().await {
                    tracing::warn!(error = %e, "expiring pending sends failed");
                }
            }
            let free = permits.available_permits() as i64;
            let batches = if free > 0 {
                match self.claim_outbound(&node, CLAIM.min(free * 8)).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming outbound mail failed");
                        vec![]
                    }
                }
            } else {
                vec![]
            };
            let claimed = !batches.is_empty();
            for batch in batches {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let svc = self.clone();
                let transport = transport.clone();
                inflight.spawn(async move {
                    let send_id = batch.send_id.clone();
                    if let Err(e) = svc.deliver_batch(&*transport, batch).await {
                        tracing::error!(%send_id, error = %e, "outbound delivery failed; the lease will expire and it will be retried");
                    }
                    drop(permit);
                });
            }
            while inflight.try_join_next().is_some() {}
            if claimed {
                continue;
            }
            tokio::select! {
                _ = self.outbound_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
        // Deliveries in flight finish (their leases would otherwise expire
        // and they would be sent twice).
        while inflight.join_next().await.is_some() {}
    }

    async fn claim_outbound(&self, node: &str, n: i64) -> Result<Vec<Claimed>> {
        let now = self.now();
        let lease = now + self.cfg.outbound.lease.as_micros() as i64;
        if !self
            .db
            .has_due(crate::store::WorkQueue::Outbound, now)
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
            "UPDATE outbound_queue SET lease_until = $1, lease_owner = $2 WHERE id IN (\
             SELECT id FROM outbound_queue WHERE status = 'queued' AND next_attempt_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT {n}{lock}) \
             RETURNING id, send_id, recipient, domain, attempts"
        );
        let gate = self.db.write_gate().await;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(lease)
            .bind(node)
            .bind(now)
            .fetch_all(self.db.writer())
            .await?;
        drop(gate);
        let mut groups: BTreeMap<(String, String), Claimed> = BTreeMap::new();
        for r in rows {
            let send_id: String = r.try_get("send_id")?;
            let domain: String = r.try_get("domain")?;
            groups
                .entry((send_id.clone(), domain))
                .or_insert_with(|| Claimed {
                    send_id,
                    rows: vec![],
                    mail_from: String::new(),
                    blob_hash: String::new(),
                    raw: None,
                })
                .rows
                .push((
                    r.try_get("id")?,
                    r.try_get("recipient")?,
                    r.try_get("attempts")?,
                ));
        }
        let mut claimed: Vec<Claimed> = groups.into_values().collect();
        self.load_claimed(&mut claimed).await?;
        Ok(claimed)
    }

    /// The claimed sends' envelope senders, and the bytes of the small ones:
    /// two reads for the whole claim instead of two per send. A large
    /// message is read by its own delivery task when a permit lets it run,
    /// so a claim never holds many large messages in memory at once. A send
    /// whose row is gone is dropped (a purge removed it with its rows).
    async fn load_claimed(&self, claimed: &mut Vec<Claimed>) -> Result<()> {
        let dialect = self.db.dialect;
        let mut ids: Vec<String> = claimed.iter().map(|c| c.send_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut sends: HashMap<String, (String, String)> = HashMap::new();
        let mut blobs: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        for chunk in ids.chunks(PREFETCH_CHUNK) {
            let sql = format!(
                "SELECT id, mail_from, blob_hash, size_bytes FROM sends WHERE id IN ({})",
                list_marks(dialect, 1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String, String, i64)>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone());
            }
            let rows = q.fetch_all(&self.db.pool).await?;
            let small: Vec<String> = rows
                .iter()
                .filter(|r| r.3 <= PREFETCH_BYTES_MAX)
                .map(|r| r.2.clone())
                .collect();
            sends.extend(
                rows.into_iter()
                    .map(|(id, from, hash, _)| (id, (from, hash))),
            );
            if small.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT hash, data FROM blobs WHERE hash IN ({})",
                list_marks(dialect, 1, small.len())
            );
            let mut q = sqlx::query_as::<_, (String, Vec<u8>)>(AssertSqlSafe(sql));
            for h in small {
                q = q.bind(h);
            }
            blobs.extend(
                q.fetch_all(&self.db.pool)
                    .await?
                    .into_iter()
                    .map(|(h, d)| (h, Arc::new(d))),
            );
        }
        claimed.retain_mut(|c| match sends.get(&c.send_id) {
            Some((mail_from, hash)) => {
                c.mail_from = mail_from.clone();
                c.raw = blobs.get(hash).cloned();
                c.blob_hash = hash.clone();
                true
            }
            None => false,
        });
        Ok(())
    }

    async fn deliver_batch(&self, transport: &dyn OutboundTransport, batch: Claimed) -> Result<()> {
        let raw = match &batch.raw {
            Some(raw) => raw.clone(),
            None => Arc::new(
                self.db
                    .blobs
                    .get(&self.db.pool, &batch.blob_hash)
                    .await?
                    .ok_or_else(|| {
                        Error::Internal(format!("send blob {} is missing", batch.blob_hash))
                    })?,
            ),
        };
        let rcpts: Vec<String> = batch.rows.iter().map(|r| r.1.clone()).collect();
        let results = transport.deliver(&batch.mail_from, &rcpts, &raw).await;
        // Recorded by the group commit, with the sends and other results
        // waiting at that moment.
        let (recorded, answer) = tokio::sync::oneshot::channel();
        self.commit_attempt(Attempted {
            batch,
            results,
            recorded,
        })
        .await?;
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Internal("the group commit has stopped".into())))
    }

    /// Records a batch of attempts inside the group commit's `tx`: the
    /// sends' agents in one read, every delivered recipient in one
    /// multi-row update, each deferred or failed one on its own (with its
    /// bounce), then the sends whose last recipient finished.
    pub(crate) async fn record_attempts(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        batch: &[Attempted],
        now: i64,
    ) -> Result<()> {
        let dialect = Dialect::of(tx);
        let mut send_ids: Vec<&str> = batch.iter().map(|a| a.batch.send_id.as_str()).collect();
        send_ids.sort_unstable();
        send_ids.dedup();
        // A send removed meanwhile (its agent purged) has nothing to record.
        let mut agents: HashMap<String, String> = HashMap::new();
        for chunk in send_ids.chunks(PREFETCH_CHUNK) {
            let sql = format!(
                "SELECT id, agent_id FROM sends WHERE id IN ({})",
                list_marks(dialect, 1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            agents.extend(q.fetch_all(&mut **tx).await?);
        }
        let mut delivered: Vec<(&str, i64, String)> = vec![];
        for a in batch {
            let Some(agent_id) = agents.get(&a.batch.send_id) else {
                continue;
            };
            self.record_results(tx, b, &a.batch, agent_id, &a.results, &mut delivered, now)
                .await?;
        }
        for chunk in delivered.chunks(100) {
            let sql = format!(
                "UPDATE outbound_queue SET status = 'delivered', attempts = v.column2, last_reply = v.column3, \
                 lease_until = NULL, updated_at = v.column4 FROM (VALUES {}) AS v WHERE outbound_queue.id = v.column1",
                value_groups(dialect, chunk.len(), 4, parenthesised)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (queue_id, attempts, reply) in chunk {
                q = q
                    .bind(queue_id.to_string())
                    .bind(*attempts)
                    .bind(reply.clone())
                    .bind(now);
            }
            q.execute(&mut **tx).await?;
        }
        let finished: Vec<&str> = send_ids
            .into_iter()
            .filter(|id| agents.contains_key(*id))
            .collect();
        self.finish_sends(tx, &finished, now).await
    }

    /// One attempt's results inside `tx`: delivered recipients are gathered
    /// into `delivered` for the batch's update; the others are written here.
    #[allow(clippy::too_many_arguments)]
    async fn record_results<'a>(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        batch: &'a Claimed,
        agent_id: &str,
        results: &[(String, DeliveryResult)],
        delivered: &mut Vec<(&'a str, i64, String)>,
        now: i64,
    ) -> Result<()> {
        let settings = &self.cfg.outbound;
        let mut failed: Vec<(String, String)> = vec![];
        for (queue_id, rcpt, attempts) in &batch.rows {
            let result = results
                .iter()
                .find(|(r, _)| r.eq_ignore_ascii_case(rcpt))
                .map(|(_, res)| res.clone())
                .unwrap_or_else(|| {
                    DeliveryResult::Deferred("451 4.3.0 no result for this recipient".into())
                });
            let attempts = attempts + 1;
            match result {
                DeliveryResult::Delivered(reply) => {
                    let event = json!({ "send_id": batch.send_id, "agent_id": agent_id, "recipient": rcpt, "local": false, "reply": reply, "attempts": attempts });
                    b.event("message.delivered", agent_id, event);
                    delivered.push((queue_id.as_str(), attempts, reply));
                }
                DeliveryResult::Failed(reply) => {
                    self.fail_row(tx, queue_id, attempts, &reply, now).await?;
                    failed.push((rcpt.clone(), reply));
                }
                DeliveryResult::Deferred(reply) => {
                    let (give_up,): (i64,) =
                        sqlx::query_as("SELECT give_up_at FROM outbound_queue WHERE id = $1")
                            .bind(queue_id)
                            .fetch_one(&mut **tx)
                            .await?;
                    let wait = settings
                        .retry_schedule
                        .get((attempts as usize).saturating_sub(1))
                        .or(settings.retry_schedule.last())
                        .copied()
                        .unwrap_or(Duration::from_secs(300));
                    let next = now + wait.as_micros() as i64;
                    if next > give_up {
                        let reply =
                            format!("giving up after {attempts} attempts; last reply: {reply}");
                        self.fail_row(tx, queue_id, attempts, &reply, now).await?;
                        failed.push((rcpt.clone(), reply));
                    } else {
                        sqlx::query(
                            "UPDATE outbound_queue SET attempts = $1, last_reply = $2, next_attempt_at = $3, lease_until = NULL, updated_at = $4 WHERE id = $5",
                        )
                        .bind(attempts)
                        .bind(&reply)
                        .bind(next)
                        .bind(now)
                        .bind(queue_id)
                        .execute(&mut **tx)
                        .await?;
                        let event = json!({ "send_id": batch.send_id, "agent_id": agent_id, "recipient": rcpt, "reply": reply, "attempts": attempts, "next_attempt_at": crate::clock::to_rfc3339(next) });
                        b.event("message.deferred", agent_id, event);
                    }
                }
            }
        }
        if !failed.is_empty() {
            let agent = self
                .load_agent(&crate::ids::AgentId(agent_id.to_string()))
                .await?
                .ok_or_else(|| Error::Internal("the sending agent vanished".into()))?;
            self.bounce(tx, b, &batch.send_id, &agent, &failed, None, now)
                .await?;
        }
        Ok(())
    }

    async fn fail_row(
        &self,
        tx: &mut Tx,
        queue_id: &str,
        attempts: i64,
        reply: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbound_queue SET status = 'failed', attempts = $1, last_reply = $2, lease_until = NULL, updated_at = $3 WHERE id = $4",
        )
        .bind(attempts)
        .bind(reply)
        .bind(now)
        .bind(queue_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Files a delivery status notification (RFC 3464) for `failed`
    /// recipients in the sending agent's inbox, threaded under the sent
    /// message, with a `message.bounced` event and an audit entry.
    ///
    /// `original` is the sent message when the caller has it (a send
    /// queued in this very transaction is not yet readable from the pool).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn bounce(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        send_id: &str,
        agent: &crate::service::Agent,
        failed: &[(String, String)],
        original: Option<&[u8]>,
        now: i64,
    ) -> Result<()> {
        let (blob_hash, message_id_header, subject): (String, String, Option<String>) =
            sqlx::query_as("SELECT blob_hash, message_id_header, subject FROM sends WHERE id = $1")
                .bind(send_id)
                .fetch_one(&mut **tx)
                .await?;
        let stored;
        let original = match original {
            Some(raw) => raw,
            None => {
                stored = self
                    .db
                    .blobs
                    .get(&self.db.pool, &blob_hash)
                    .await?
                    .unwrap_or_default();
                &stored
            }
        };
        let dsn = build_dsn(
            &self.cfg.hostname,
            &agent.address,
            &message_id_header,
            subject.as_deref(),
            original,
            failed,
            now,
        )?;
        let dsn_hash = self.db.blobs.put(tx, &dsn).await?;
        let parsed = parse::parse(&dsn);
        let message_id = uuid::Uuid::now_v7().to_string();
        let seq = b.next_seq(tx).await?;
        let rcpt = vec![agent.address.clone()];
        let envelope = Envelope {
            client_ip: None,
            helo: None,
            mail_from: "",
            rcpt_to: &rcpt,
            tls: false,
            auth_results: None,
        };
        let size = dsn.len() as i64;
        let thread_id = self
            .file_message(
                tx,
                agent.id.as_str(),
                &message_id,
                seq,
                &dsn_hash,
                &envelope,
                &parsed,
                "inbox",
                true,
                size,
                now,
            )
            .await?;
        let recipients: Vec<serde_json::Value> = failed
            .iter()
            .map(|(r, reply)| json!({ "recipient": r, "status": status_code(reply, "5.0.0"), "reply": reply }))
            .collect();
        let ctx = Ctx::system("outbound");
        let entry = self.entry(
            &ctx,
            "message.bounce",
            Some("send"),
            Some(send_id.to_string()),
            Some(agent.id.0.clone()),
            "failure",
            json!({ "recipients": recipients, "dsn_message_id": message_id }),
        );
        let event = json!({
            "send_id": send_id,
            "agent_id": agent.id.0,
            "recipients": recipients,
            "message_id": message_id,
            "thread_id": thread_id,
            "original_message_id_header": message_id_header,
        });
        b.record(entry, Some(("message.bounced", event)));
        Ok(())
    }
}

/// The enhanced status code in an SMTP reply (`550 5.1.1 …` -> `5.1.1`).
fn status_code(reply: &str, default: &str) -> String {
    reply
        .split_whitespace()
        .take(3)
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .unwrap_or_else(|| default.to_string())
}

/// The header block of a message (up to the blank line).
fn header_block(raw: &[u8]) -> &[u8] {
    memchr_find(raw, b"\r\n\r\n")
        .map(|i| &raw[..i + 2])
        .unwrap_or(raw)
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An RFC 3464 report: human-readable part, `message/delivery-status`,
/// and the original headers (`text/rfc822-headers`).
fn build_dsn(
    hostname: &str,
    agent_address: &str,
    original_message_id: &str,
    subject: Option<&str>,
    original: &[u8],
    failed: &[(String, String)],
    now: i64,
) -> Result<Vec<u8>> {
    let domain = agent_address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(hostname);
    let mut human =
        String::from("Your message could not be delivered to one or more recipients.\r\n\r\n");
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nArrival-Date: {}\r\n",
        crate::clock::to_datetime(now).to_rfc2822()
    );
    for (rcpt, reply) in failed {
        let code = status_code(reply, "5.0.0");
        let clean: String = reply.chars().filter(|c| !c.is_control()).collect();
        human.push_str(&format!("  {rcpt}: {clean}\r\n"));
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {code}\r\nDiagnostic-Code: smtp; {clean}\r\n"
        ));
    }
    let headers = String::from_utf8_lossy(header_block(original)).into_owned();
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status),
            MimePart::new("text/rfc822-headers", headers),
        ],
    );
    MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("mailer-daemon@{domain}"),
        ))
        .to(Address::new_address(
            None::<&str>,
            agent_address.to_string(),
        ))
        .subject(format!(
            "Undelivered Mail Returned to Sender: {}",
            subject.unwrap_or("(no subject)")
        ))
        .message_id(format!("{}@{domain}", uuid::Uuid::now_v7()))
        .in_reply_to(original_message_id.to_string())
        .references(original_message_id.to_string())
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .date(now / 1_000_000)
        .body(report)
        .write_to_vec()
        .map_err(|e| Error::Internal(format!("building a DSN: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_come_from_the_reply() {
        assert_eq!(status_code("550 5.1.1 no such user", "5.0.0"), "5.1.1");
        assert_eq!(status_code("554 rejected", "5.0.0"), "5.0.0");
        assert_eq!(
            status_code(
                "giving up after 3 attempts; last reply: 451 4.3.0 x",
                "4.4.7"
            ),
            "4.4.7"
        );
    }

    #[test]
    fn dsn_is_a_multipart_report_threaded_under_the_original() {
        let orig = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: hi\r\nMessage-ID: <m1@x.test>\r\n\r\nbody secret\r\n";
        let dsn = build_dsn(
            "mx.x.test",
            "a@x.test",
            "m1@x.test",
            Some("hi"),
            orig,
            &[("b@y.test".into(), "550 5.1.1 unknown".into())],
            1_700_000_000_000_000,
        )
        .unwrap();
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("multipart/report"));
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status")
        );
        assert!(text.contains("Final-Recipient: rfc822; b@y.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("In-Reply-To: <m1@x.test>"));
        assert!(
            !text.contains("body secret"),
            "only the headers of the original go back"
        );
    }
}
