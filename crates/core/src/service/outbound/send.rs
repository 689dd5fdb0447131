//! The send path: gate checks, policy (recipients, lists, size), caps
//! counted in the database with the send, two-step confirmation, and the
//! enqueue that files the sent copy, delivers locally and queues the rest.

use super::commit::{Batch, PendingSend};
use super::compose::{self, Compose, DkimKey, ReplyRefs, Validated};
use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::service::mailbox::ingest::Envelope;
use crate::service::mailbox::parse::{self, Parsed};
use crate::service::policies::{Confirmation, PolicySettings, effective_policy};
use crate::service::{Agent, AgentStatus, Ctx, Page, PrincipalKind, Service, page_limit, paginate};
use crate::store::{Tx, blob_hash};
use chrono::{Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

pub(crate) const HOUR_MICROS: i64 = 3_600_000_000;
/// Messages up to this size are parsed on the calling task.
const INLINE_PARSE_MAX: usize = 64 * 1024;

/// One recipient of a send and where its delivery stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecipientStatus {
    pub recipient: String,
    /// `pending` (awaiting confirmation), `queued`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// The receiving server's last reply (or ours, for local delivery).
    pub last_reply: Option<String>,
    pub next_attempt_at: Option<String>,
    /// Delivered into a mailbox on this server.
    pub local: bool,
}

/// A send: its exact bytes (by SHA-256), envelope and state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SendInfo {
    pub send_id: String,
    pub agent_id: String,
    /// `pending_confirmation`, `queued`, `sent`, `partially_failed`,
    /// `failed`, `rejected`, `expired` or `voided`.
    pub status: String,
    /// SHA-256 (hex) of the exact bytes that will be (or were) sent:
    /// confirmation applies to these bytes only.
    pub sha256: String,
    pub size_bytes: i64,
    pub from: String,
    pub subject: Option<String>,
    /// The `Message-ID` header, without angle brackets.
    pub message_id_header: String,
    /// The copy in the agent's `sent` folder, once queued.
    pub message_id: Option<String>,
    pub draft_id: Option<String>,
    /// `api` or `smtp` (submission).
    pub via: String,
    pub recipients: Vec<RecipientStatus>,
    pub created_at: String,
    /// When an unconfirmed send is rejected.
    pub expires_at: Option<String>,
    pub decided_at: Option<String>,
    /// Who confirmed or rejected it (credential hint and subject).
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SendQuery {
    /// `pending` (= pending_confirmation) or any send status.
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Sends counted against the caps, and storage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub agent_id: String,
    pub sent_today: i64,
    pub sends_per_day: i64,
    /// Next UTC midnight, when the daily count starts again.
    pub day_resets_at: String,
    pub sent_this_hour: i64,
    pub sends_per_hour: Option<i64>,
    pub hour_resets_at: String,
    pub storage_bytes_used: i64,
    pub storage_bytes_limit: i64,
    pub messages_stored: i64,
}

/// A send ready to be recorded: built, signed, checked against the policy.
pub(crate) struct Outgoing {
    pub raw: Vec<u8>,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub message_id_header: String,
    pub subject: Option<String>,
    pub draft: Option<(String, i64)>,
    pub via: &'static str,
}

/// Which cap a send hit.
pub(crate) struct OverCap {
    pub period: &'static str,
    pub cap: i64,
    pub retry_after_secs: u64,
}

impl OverCap {
    /// The `429` the caller gets.
    pub(crate) fn into_error(self) -> Error {
        Error::RateLimited {
            message: format!(
                "the agent has reached its cap of {} sends per {} (sends_per_{}); try again in {} seconds",
                self.cap, self.period, self.period, self.retry_after_secs
            ),
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// A recorded send being queued: what `enqueue` needs of its row.
pub(crate) struct Queued<'a> {
    pub send_id: &'a str,
    pub recipients: &'a [String],
    pub message_id_header: &'a str,
}

/// Counts an agent's sends of one batch against its day and hour caps,
/// inside `tx`, one statement per period: the counter grows by the number
/// of sends, and when that passes the cap the batch's last sends are the
/// ones over it; they are refused and taken off the counters again, so the
/// counters hold exactly the accepted sends. Returns, per send in order,
/// `None` (accepted) or the cap it hit.
pub(crate) async fn count_sends(
    tx: &mut Tx,
    agent_id: &str,
    policy: &PolicySettings,
    sends: usize,
    now: i64,
) -> Result<Vec<Option<OverCap>>> {
    let (day, day_end) = day_key(now);
    let (hour, hour_end) = hour_key(now);
    let mut periods = vec![(day, policy.sends_per_day, day_end, "day")];
    if let Some(cap) = policy.sends_per_hour {
        periods.push((hour, cap, hour_end, "hour"));
    }
    let mut verdicts: Vec<Option<OverCap>> = (0..sends).map(|_| None).collect();
    let mut accepted = sends as i64;
    let mut counted: Vec<&str> = Vec::with_capacity(periods.len());
    for (key, cap, end, period) in &periods {
        if accepted == 0 {
            break;
        }
        let (count,): (i64,) = sqlx::query_as(
            "INSERT INTO send_counters (agent_id, period, count) VALUES ($1, $2, $3) \
             ON CONFLICT (agent_id, period) DO UPDATE SET count = send_counters.count + $3 RETURNING count",
        )
        .bind(agent_id)
        .bind(key)
        .bind(accepted)
        .fetch_one(&mut **tx)
        .await?;
        counted.push(key);
        let over = (count - cap).clamp(0, accepted);
        if over == 0 {
            continue;
        }
        for v in verdicts[(accepted - over) as usize..accepted as usize].iter_mut() {
            *v = Some(OverCap {
                period,
                cap: *cap,
                retry_after_secs: ((end - now).max(0) as u64).div_ceil(1_000_000),
            });
        }
        accepted -= over;
        // Refused sends are not counted, in this period or the earlier ones.
        for key in &counted {
            sqlx::query(
                "UPDATE send_counters SET count = count - $1 WHERE agent_id = $2 AND period = $3",
            )
            .bind(over)
            .bind(agent_id)
            .bind(*key)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(verdicts)
}

fn day_key(now: i64) -> (String, i64) {
    let t = crate::clock::to_datetime(now);
    let midnight = Utc
        .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
        .single()
        .map(|d| d.timestamp_micros())
        .unwrap_or(now);
    (
        format!("day:{}", t.format("%Y-%m-%d")),
        midnight + 24 * HOUR_MICROS,
    )
}

fn hour_key(now: i64) -> (String, i64) {
    let t = crate::clock::to_datetime(now);
    let start = now - (t.minute() as i64 * 60 + t.second() as i64) * 1_000_000 - (now % 1_000_000);
    (
        format!("hour:{}", t.format("%Y-%m-%dT%H")),
        start + HOUR_MICROS,
    )
}

const SEND_COLUMNS: &str = "id, agent_id, draft_id, status, blob_hash, sha256, size_bytes, mail_from, recipients, \
     message_id_header, subject, message_id, via, created_at, expires_at, decided_at, decided_by, reason";

impl Service {
    /// May: the caller may send as this agent (`mail.send`; admins too),
    /// and the agent is active.
    pub(crate) async fn sending_agent(&self, ctx: &Ctx, agent_id: &str) -> Result<Agent> {
        let agent = self
            .mailbox_access(ctx, agent_id, "mail.send", "message.send")
            .await?;
        match agent.status {
            AgentStatus::Active => Ok(agent),
            AgentStatus::Suspended => Err(Error::conflict(
                "agent-suspended",
                "a suspended agent cannot send; resume it first",
            )),
            _ => Err(Error::not_found("agent")),
        }
    }

    /// `POST /v1/agents/{id}/messages/send`.
    pub async fn send_message(&self, ctx: &Ctx, agent_id: &str, c: Compose) -> Result<SendInfo> {
        let agent = self.sending_agent(ctx, agent_id).await?;
        self.send_composed(ctx, &agent, &c, None).await
    }

    /// Validates, builds, signs and records a composed message.
    pub(crate) async fn send_composed(
        &self,
        ctx: &Ctx,
        agent: &Agent,
        c: &Compose,
        draft: Option<(String, i64)>,
    ) -> Result<SendInfo> {
        let v = compose::validate(c)?;
        let policy =
            effective_policy(&self.db.pool, agent.policy_id.as_ref().map(|p| p.as_str())).await?;
        let recipients = v.envelope();
        if recipients.is_empty() {
            return Err(Error::invalid(
                "to",
                "at least one recipient (to, cc or bcc) is required",
            ));
        }
        self.check_recipients(ctx, agent, &policy, &recipients, |r| v.field_of(r))
            .await?;
        let reply = match &v.reply_to_message_id {
            Some(mid) => Some(self.reply_refs(agent, mid).await?),
            None => None,
        };
        let raw = self.build_signed(agent, &v, reply.as_ref()).await?;
        if raw.0.len() as i64 > policy.max_outbound_bytes {
            let field = if v.attachments.is_empty() {
                "text"
            } else {
                "attachments"
            };
            return Err(Error::invalid(
                field,
                format!(
                    "the message would be {} bytes; the agent's policy allows {} (max_outbound_bytes)",
                    raw.0.len(),
                    policy.max_outbound_bytes
                ),
            ));
        }
        let out = Outgoing {
            raw: raw.0,
            mail_from: agent.address.clone(),
            recipients,
            message_id_header: raw.1,
            subject: v.subject.clone(),
            draft,
            via: "api",
        };
        self.record_send(ctx, agent, &policy, out).await
    }

    /// The message built from `v`, DKIM-signed, and its Message-ID.
    pub(crate) async fn build_signed(
        &self,
        agent: &Agent,
        v: &Validated,
        reply: Option<&ReplyRefs>,
    ) -> Result<(Vec<u8>, String)> {
        let domain = agent
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let message_id = format!("{}@{domain}", uuid::Uuid::now_v7());
        let from_name = v.from_name.clone().or_else(|| agent.display_name.clone());
        let raw = compose::build(
            v,
            &agent.address,
            from_name.as_deref(),
            &message_id,
            reply,
            self.now() / 1_000_000,
        )?;
        let keys = self.dkim_keys(&domain).await?;
        Ok((compose::sign(raw, &domain, &keys), message_id))
    }

    pub(crate) async fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKey>> {
        let rows = sqlx::query(
            "SELECT k.selector, k.algorithm, k.private_key_pem FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
             WHERE d.name = $1 ORDER BY k.algorithm",
        )
        .bind(domain)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DkimKey {
                    selector: r.try_get("selector")?,
                    algorithm: r.try_get("algorithm")?,
                    private_key_pem: r.try_get("private_key_pem")?,
                })
            })
            .collect()
    }

    /// Threading headers for answering a message in the agent's mailbox.
    pub(crate) async fn reply_refs(&self, agent: &Agent, message_id: &str) -> Result<ReplyRefs> {
        let row = self
            .entry_row(agent, message_id)
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::invalid(
                    "reply_to_message_id",
                    "no such message in this agent's mailbox",
                ),
                e => e,
            })?;
        let header: Option<String> = row.try_get("message_id_header")?;
        let refs: String = row.try_get("refs")?;
        let in_reply: String = row.try_get("in_reply_to")?;
        let Some(header) = header else {
            return Err(Error::invalid(
                "reply_to_message_id",
                "that message has no Message-ID to answer",
            ));
        };
        let mut references: Vec<String> = serde_json::from_str(&refs).unwrap_or_default();
        if references.is_empty() {
            references = serde_json::from_str(&in_reply).unwrap_or_default();
        }
        references.retain(|r| r != &header);
        references.push(header.clone());
        // RFC 5322 allows trimming long chains; keep the root and the tail.
        if references.len() > 20 {
            let tail = references.split_off(references.len() - 19);
            references.truncate(1);
            references.extend(tail);
        }
        Ok(ReplyRefs {
            in_reply_to: header,
            references,
        })
    }

    /// Limits: recipients per message, block list, allow list. Refusals
    /// are audited.
    pub(crate) async fn check_recipients(
        &self,
        ctx: &Ctx,
        agent: &Agent,
        policy: &PolicySettings,
        recipients: &[String],
        field_of: impl Fn(&str) -> String,
    ) -> Result<()> {
        let refuse = |field: String, message: String, why: &'static str| async move {
            let entry = self.entry(
                ctx,
                "message.send",
                Some("agent"),
                Some(agent.id.0.clone()),
                Some(agent.id.0.clone()),
                "denied",
                json!({ "reason": why, "field": field }),
            );
            if let Err(e) = self.record_alone(&entry).await {
                tracing::error!(error = %e, "could not audit a refused send");
            }
            Err(Error::invalid(field, message))
        };
        if recipients.len() as i64 > policy.recipients_per_message {
            return refuse(
                "to".into(),
                format!(
                    "{} recipients; the agent's policy allows {} per message (recipients_per_message)",
                    recipients.len(),
                    policy.recipients_per_message
                ),
                "recipients_per_message",
            )
            .await;
        }
        for r in recipients {
            if PolicySettings::listed(&policy.block_recipients, r) {
                return refuse(
                    field_of(r),
                    format!("{r} is blocked by the agent's policy (block_recipients)"),
                    "block_recipients",
                )
                .await;
            }
            if policy.block_if_not_allowed && !PolicySettings::listed(&policy.allow_recipients, r) {
                return refuse(
                    field_of(r),
                    format!("{r} is not on the agent's allow list (block_if_not_allowed)"),
                    "block_if_not_allowed",
                )
                .await;
            }
        }
        Ok(())
    }

    /// The organisation's mail domains, lowercase.
    pub(crate) async fn local_domains<'e, E>(&self, exec: E) -> Result<Vec<String>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM domains")
            .fetch_all(exec)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn needs_confirmation(
        &self,
        policy: &PolicySettings,
        recipients: &[String],
    ) -> Result<bool> {
        Ok(match policy.confirmation {
            Confirmation::Never => false,
            Confirmation::Always => true,
            Confirmation::External => {
                let local = self.local_domains(&self.db.pool).await?;
                recipients.iter().any(|r| {
                    let domain = r.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                    !local.iter().any(|d| d == domain)
                        && !PolicySettings::listed(&policy.allow_recipients, r)
                })
            }
        })
    }

    /// Records a send: counts it (refusing over the cap), then holds it for
    /// confirmation or queues it, all in one transaction shared with the
    /// other sends waiting at that moment (group commit, `commit.rs`).
    pub(crate) async fn record_send(
        &self,
        ctx: &Ctx,
        agent: &Agent,
        policy: &PolicySettings,
        out: Outgoing,
    ) -> Result<SendInfo> {
        let hold = self.needs_confirmation(policy, &out.recipients).await?;
        // The SHA-256 a human confirms is also the blob's content address.
        let sha256 = blob_hash(&out.raw);
        // A large blob is stored before the transaction, outside the write
        // lock (an aborted send leaves an orphan the collector removes); a
        // small one joins the transaction instead, saving a commit per send.
        let early_blob = if self.db.blobs.fits_in_transaction(out.raw.len()) {
            None
        } else {
            Some(self.db.blobs.put_alone(&self.db.pool, &out.raw).await?)
        };
        let parsed = if hold {
            None
        } else {
            Some(parse_off_thread(out.raw.clone()).await?)
        };
        let send_id = uuid::Uuid::now_v7().to_string();
        let committed = self
            .commit_send_grouped(PendingSend {
                ctx: ctx.clone(),
                agent: agent.clone(),
                policy: policy.clone(),
                out,
                send_id: send_id.clone(),
                hold,
                sha256,
                early_blob,
                parsed,
            })
            .await?;
        if !hold {
            self.outbound_wake.notify_waiters();
        }
        match committed {
            Some(info) => Ok(info),
            None => self.send_info(&send_id).await,
        }
    }

    /// Queues a send inside `tx`: files the sent copy, delivers to agents
    /// on this server, queues the remote recipients, bounces what failed
    /// locally, and sets the send's status.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn enqueue(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        queued: &Queued<'_>,
        agent: &Agent,
        raw: &[u8],
        blob_hash: &str,
        parsed: &Parsed,
        now: i64,
    ) -> Result<()> {
        let Queued {
            send_id,
            recipients,
            message_id_header,
        } = *queued;
        let size = raw.len() as i64;
        // The copy in sent: the very bytes that go out.
        let message_id = uuid::Uuid::now_v7().to_string();
        let seq = b.next_seq(tx).await?;
        let envelope = Envelope {
            client_ip: None,
            helo: None,
            mail_from: &agent.address,
            rcpt_to: recipients,
            tls: false,
            auth_results: None,
        };
        let thread_id = self
            .file_message(
                tx,
                agent.id.as_str(),
                &message_id,
                seq,
                blob_hash,
                &envelope,
                parsed,
                "sent",
                false,
                size,
                now,
            )
            .await?;
        sqlx::query("UPDATE sends SET message_id = $1 WHERE id = $2")
            .bind(&message_id)
            .bind(send_id)
            .execute(&mut **tx)
            .await?;

        let local = b.local_domains(self, tx).await?.to_vec();
        let give_up = now + self.cfg.outbound.give_up_after.as_micros() as i64;
        let mut failed: Vec<(String, String)> = vec![];
        let mut remote = 0;
        for r in recipients {
            let domain = r
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default();
            let (status, reply) = if local.contains(&domain) {
                match self
                    .deliver_local(tx, b, send_id, agent, r, raw, message_id_header, now)
                    .await?
                {
                    Ok(reply) => ("delivered", reply),
                    Err(reply) => {
                        failed.push((r.clone(), reply.clone()));
                        ("failed", reply)
                    }
                }
            } else {
                remote += 1;
                ("queued", String::new())
            };
            sqlx::query(
                "INSERT INTO outbound_queue (id, send_id, agent_id, recipient, domain, status, attempts, next_attempt_at, \
                 give_up_at, last_reply, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,0,$7,$8,$9,$7,$7)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(send_id)
            .bind(agent.id.as_str())
            .bind(r)
            .bind(if status == "queued" { domain.as_str() } else { "" })
            .bind(status)
            .bind(now)
            .bind(give_up)
            .bind((!reply.is_empty()).then_some(reply))
            .execute(&mut **tx)
            .await?;
        }
        let event = json!({
            "send_id": send_id,
            "agent_id": agent.id.0,
            "message_id": message_id,
            "thread_id": thread_id,
            "message_id_header": message_id_header,
            "recipients": recipients,
            "subject": parsed.subject,
        });
        b.event("message.sent", agent.id.as_str(), event);
        if !failed.is_empty() {
            self.bounce(tx, b, send_id, agent, &failed, Some(raw), now)
                .await?;
        }
        if remote == 0 {
            self.finish_send(tx, send_id, now).await?;
        }
        Ok(())
    }

    /// Files a send in the mailbox of a recipient agent on this server,
    /// with the verified-sender header. `Ok(reply)` when delivered,
    /// `Err(reply)` when it cannot be (the sender gets a bounce).
    #[allow(clippy::too_many_arguments)]
    async fn deliver_local(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        send_id: &str,
        sender: &Agent,
        rcpt: &str,
        raw: &[u8],
        message_id_header: &str,
        now: i64,
    ) -> Result<Result<String, String>> {
        let Ok(addr) = crate::address::AgentAddress::parse(rcpt, "rcpt") else {
            return Ok(Err("550 5.1.1 no such agent on this server".into()));
        };
        let row = sqlx::query(
            "SELECT a.id, a.address, a.status, a.policy_id, COALESCE(u.bytes, 0) AS used FROM agents a \
             LEFT JOIN mailbox_usage u ON u.agent_id = a.id WHERE a.address_key = $1 AND a.status <> 'decommissioned'",
        )
        .bind(addr.key())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err("550 5.1.1 no such agent on this server".into()));
        };
        let status: String = row.try_get("status")?;
        if status != "active" {
            return Ok(Err(format!("550 5.2.1 the recipient agent is {status}")));
        }
        let rcpt_agent: String = row.try_get("id")?;
        let rcpt_address: String = row.try_get("address")?;
        let policy_id: Option<String> = row.try_get("policy_id")?;
        let used: i64 = row.try_get("used")?;
        // The header goes first, above the DKIM signatures, which stay valid.
        let mut bytes = format!(
            "{VERIFIED_SENDER}: {}; agent={}; send={send_id}\r\n",
            sender.address, sender.id
        )
        .into_bytes();
        bytes.extend_from_slice(raw);
        let size = bytes.len() as i64;
        let policy =
            crate::service::mailbox::mailbox_policy(&mut **tx, policy_id.as_deref()).await?;
        if used + size > policy.storage_bytes {
            return Ok(Err("552 5.2.2 the recipient agent's mailbox is full".into()));
        }
        let blob_hash = self.db.blobs.put(tx, &bytes).await?;
        let parsed = parse::parse(&bytes);
        let message_id = uuid::Uuid::now_v7().to_string();
        let seq = b.next_seq(tx).await?;
        let rcpt_list = vec![rcpt.to_string()];
        let envelope = Envelope {
            client_ip: None,
            helo: None,
            mail_from: &sender.address,
            rcpt_to: &rcpt_list,
            tls: false,
            auth_results: Some("local delivery from a verified agent"),
        };
        let thread_id = self
            .file_message(
                tx,
                &rcpt_agent,
                &message_id,
                seq,
                &blob_hash,
                &envelope,
                &parsed,
                "inbox",
                true,
                size,
                now,
            )
            .await?;
        let entry = NewEntry {
            actor: crate::audit::Actor {
                kind: "agent".into(),
                id: Some(sender.id.0.clone()),
                credential: None,
            },
            action: "message.receive",
            target_kind: Some("message"),
            target_id: Some(message_id.clone()),
            agent_id: Some(rcpt_agent.clone()),
            outcome: "success",
            request_id: None,
            source: Some("local".into()),
            details: json!({
                "mail_from": sender.address,
                "verified_sender": { "agent_id": sender.id.0, "address": sender.address },
                "recipients": [rcpt],
                "message_id": message_id_header,
                "send_id": send_id,
                "size_bytes": size,
                "folder": "inbox",
            }),
        };
        let mut event = crate::service::mailbox::received_event(
            &rcpt_agent,
            &rcpt_address,
            &message_id,
            &thread_id,
            "inbox",
            &parsed,
            size,
        );
        event["verified_sender"] = json!({ "agent_id": sender.id.0, "address": sender.address });
        b.record(entry, Some(("message.received", event)));
        let delivered = json!({
            "send_id": send_id,
            "agent_id": sender.id.0,
            "recipient": rcpt,
            "local": true,
            "reply": "250 2.0.0 delivered locally",
        });
        b.event("message.delivered", sender.id.as_str(), delivered);
        Ok(Ok("250 2.0.0 delivered locally".into()))
    }

    /// Sets a send's final status once no recipient is still queued.
    pub(crate) async fn finish_send(&self, tx: &mut Tx, send_id: &str, now: i64) -> Result<()> {
        self.finish_sends(tx, &[send_id], now).await
    }

    /// `finish_send` for several sends: one read of their recipients'
    /// states, one update per final status.
    pub(crate) async fn finish_sends(
        &self,
        tx: &mut Tx,
        send_ids: &[&str],
        now: i64,
    ) -> Result<()> {
        let dialect = crate::store::Dialect::of(tx);
        let mut counts: std::collections::HashMap<String, [i64; 3]> = Default::default();
        for chunk in send_ids.chunks(300) {
            let sql = format!(
                "SELECT send_id, status, COUNT(*) FROM outbound_queue WHERE send_id IN ({}) GROUP BY send_id, status",
                crate::store::list_marks(dialect, 1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String, i64)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for (send_id, status, n) in q.fetch_all(&mut **tx).await? {
                let slot = match status.as_str() {
                    "queued" => 0,
                    "delivered" => 1,
                    "failed" => 2,
                    _ => continue,
                };
                counts.entry(send_id).or_default()[slot] += n;
            }
        }
        let mut by_status: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (send_id, [queued, delivered, failed]) in counts {
            if queued > 0 {
                continue;
            }
            let status = match (delivered, failed) {
                (_, 0) => "sent",
                (0, _) => "failed",
                _ => "partially_failed",
            };
            by_status.entry(status).or_default().push(send_id);
        }
        for (status, ids) in by_status {
            for chunk in ids.chunks(300) {
                let sql = format!(
                    "UPDATE sends SET status = {}, completed_at = {} WHERE id IN ({})",
                    crate::store::list_marks(dialect, 1, 1),
                    crate::store::list_marks(dialect, 2, 1),
                    crate::store::list_marks(dialect, 3, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(status).bind(now);
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q.execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn send_info(&self, send_id: &str) -> Result<SendInfo> {
        let sql = format!("SELECT {SEND_COLUMNS} FROM sends WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(send_id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| Error::not_found("send"))?;
        let mut info = send_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT recipient, status, attempts, last_reply, next_attempt_at, domain FROM outbound_queue WHERE send_id = $1 ORDER BY id",
        )
        .bind(send_id)
        .fetch_all(&self.db.pool)
        .await?;
        if !rows.is_empty() {
            info.recipients = rows
                .iter()
                .map(|r| {
                    let status: String = r.try_get("status")?;
                    let domain: String = r.try_get("domain")?;
                    Ok(RecipientStatus {
                        recipient: r.try_get("recipient")?,
                        next_attempt_at: (status == "queued")
                            .then(|| {
                                r.try_get::<i64, _>("next_attempt_at")
                                    .map(crate::clock::to_rfc3339)
                            })
                            .transpose()?,
                        local: domain.is_empty(),
                        status,
                        attempts: r.try_get("attempts")?,
                        last_reply: r.try_get("last_reply")?,
                    })
                })
                .collect::<Result<_>>()?;
        }
        Ok(info)
    }

    /// May: who can see a send. Its agent (own sends), admins, and
    /// approvers of agents they sponsor; anyone else is told *not found*.
    async fn visible_send(&self, ctx: &Ctx, send_id: &str) -> Result<(SendInfo, Agent)> {
        if uuid::Uuid::parse_str(send_id).is_err() {
            return Err(Error::not_found("send"));
        }
        let info = self.send_info(send_id).await?;
        let agent = self
            .visible_agent(ctx, &info.agent_id)
            .await
            .map_err(|_| Error::not_found("send"))?;
        Ok((info, agent))
    }

    pub async fn get_send(&self, ctx: &Ctx, send_id: &str) -> Result<SendInfo> {
        Ok(self.visible_send(ctx, send_id).await?.0)
    }

    /// The exact bytes of a send, for the human deciding on it.
    pub async fn get_send_raw(&self, ctx: &Ctx, send_id: &str) -> Result<Vec<u8>> {
        let (info, _) = self.visible_send(ctx, send_id).await?;
        let (hash,): (String,) = sqlx::query_as("SELECT blob_hash FROM sends WHERE id = $1")
            .bind(&info.send_id)
            .fetch_one(&self.db.pool)
            .await?;
        self.db
            .blobs
            .get(&self.db.pool, &hash)
            .await?
            .ok_or_else(|| Error::Internal(format!("send blob {hash} is missing")))
    }

    pub async fn list_sends(&self, ctx: &Ctx, q: SendQuery) -> Result<Page<SendInfo>> {
        let limit = page_limit(q.limit)?;
        let status = match q.status.as_deref() {
            None => None,
            Some("pending") | Some("pending_confirmation") => Some("pending_confirmation"),
            Some(
                s @ ("queued" | "sent" | "partially_failed" | "failed" | "rejected" | "expired"
                | "voided"),
            ) => Some(s),
            Some(_) => {
                return Err(Error::invalid(
                    "status",
                    "must be pending, queued, sent, partially_failed, failed, rejected, expired or voided",
                ));
            }
        };
        self.expire_pending_sends().await?;
        let p = &ctx.principal;
        // The boundary, in SQL: agents their own, approvers their sponsored agents.
        let (scope_sql, scope_val) = match p.kind {
            PrincipalKind::Agent => (
                " AND s.agent_id = $3",
                p.agent_id.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            ),
            PrincipalKind::Approver => (
                " AND LOWER(a.sponsor) = $3",
                p.subject.clone().unwrap_or_default().to_lowercase(),
            ),
            _ => (" AND $3 = $3", String::new()),
        };
        let mut sql = format!(
            "SELECT s.id FROM sends s JOIN agents a ON a.id = s.agent_id WHERE s.id > $1 AND ($2 = '' OR s.status = $2){scope_sql}"
        );
        if q.agent_id.is_some() {
            sql.push_str(" AND s.agent_id = $5");
        } else {
            sql.push_str(" AND $5 = $5");
        }
        sql.push_str(" ORDER BY s.id LIMIT $4");
        let ids: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(q.cursor.clone().unwrap_or_default())
            .bind(status.unwrap_or(""))
            .bind(scope_val)
            .bind(limit + 1)
            .bind(q.agent_id.clone().unwrap_or_default())
            .fetch_all(&self.db.pool)
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for (id,) in ids {
            items.push(self.send_info(&id).await?);
        }
        Ok(paginate(items, limit, |s| s.send_id.clone()))
    }

    /// May: a human other than the agent — an admin key, or an approver
    /// token of the agent's sponsor — decides on a pending send.
    async fn decider(
        &self,
        ctx: &Ctx,
        send_id: &str,
        action: &'static str,
    ) -> Result<(SendInfo, Agent)> {
        let (info, agent) = self.visible_send(ctx, send_id).await?;
        match ctx.principal.kind {
            PrincipalKind::Admin | PrincipalKind::Approver => {}
            _ => {
                self.record_denied(ctx, action, Some(send_id)).await;
                return Err(Error::Forbidden(
                    "an agent cannot confirm or reject its own send; a human approver or admin must".into(),
                ));
            }
        }
        if info.status != "pending_confirmation" {
            return Err(Error::conflict(
                "send-not-pending",
                format!("the send is {}, not pending_confirmation", info.status),
            ));
        }
        Ok((info, agent))
    }

    fn decided_by(ctx: &Ctx) -> String {
        let p = &ctx.principal;
        match (&p.credential_hint, &p.subject) {
            (Some(h), Some(s)) => format!("{h} ({s})"),
            (Some(h), None) => h.clone(),
            _ => "system".into(),
        }
    }

    /// `POST /v1/sends/{id}/confirm`: queues exactly the bytes the send
    /// was created with. `sha256`, when given, must match them.
    pub async fn confirm_send(
        &self,
        ctx: &Ctx,
        send_id: &str,
        sha256: Option<&str>,
    ) -> Result<SendInfo> {
        self.expire_pending_sends().await?;
        let (info, agent) = self.decider(ctx, send_id, "send.confirm").await?;
        if agent.status != AgentStatus::Active {
            return Err(Error::conflict(
                "agent-not-active",
                format!(
                    "the agent is {}; its sends cannot be confirmed",
                    agent.status.as_str()
                ),
            ));
        }

        if let Some(expected) = sha256
            && !expected.eq_ignore_ascii_case(&info.sha256)
        {
            return Err(Error::invalid(
                "sha256",
                "does not match the bytes of this send; fetch it again before confirming",
            ));
        }
        let raw = self.get_send_raw(ctx, send_id).await?;
        if blob_hash(&raw) != info.sha256 {
            return Err(Error::Internal(format!(
                "send {send_id}: stored bytes do not match their hash"
            )));
        }
        let (blob_hash,): (String,) = sqlx::query_as("SELECT blob_hash FROM sends WHERE id = $1")
            .bind(send_id)
            .fetch_one(&self.db.pool)
            .await?;
        let parsed = parse_off_thread(raw.clone()).await?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        // Decided once: a concurrent confirm or reject, or the expiry, wins.
        let changed = sqlx::query(
            "UPDATE sends SET status = 'queued', decided_at = $1, decided_by = $2 WHERE id = $3 AND status = 'pending_confirmation' AND expires_at > $1",
        )
        .bind(now)
        .bind(Self::decided_by(ctx))
        .bind(send_id)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() != 1 {
            return Err(Error::conflict(
                "send-not-pending",
                "the send is no longer pending confirmation",
            ));
        }
        if let Some(draft_id) = &info.draft_id {
            sqlx::query("DELETE FROM drafts WHERE id = $1")
                .bind(draft_id)
                .execute(&mut *tx)
                .await?;
        }
        let entry = self.entry(
            ctx,
            "send.confirm",
            Some("send"),
            Some(send_id.to_string()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "sha256": info.sha256, "recipients": info.recipients.iter().map(|r| &r.recipient).collect::<Vec<_>>() }),
        );
        let event = json!({ "send_id": send_id, "agent_id": agent.id.0, "sha256": info.sha256, "decided_by": Self::decided_by(ctx) });
        self.record(&mut tx, &entry, Some(("send.confirmed", event)))
            .await?;
        let recipients: Vec<String> = info
            .recipients
            .iter()
            .map(|r| r.recipient.clone())
            .collect();
        let queued = Queued {
            send_id,
            recipients: &recipients,
            message_id_header: &info.message_id_header,
        };
        let mut b = Batch::default();
        self.enqueue(
            &mut tx, &mut b, &queued, &agent, &raw, &blob_hash, &parsed, now,
        )
        .await?;
        b.flush(&mut tx, now).await?;
        tx.commit().await?;
        self.outbound_wake.notify_waiters();
        self.send_info(send_id).await
    }

    pub async fn reject_send(
        &self,
        ctx: &Ctx,
        send_id: &str,
        reason: Option<String>,
    ) -> Result<SendInfo> {
        self.expire_pending_sends().await?;
        let reason = crate::service::clean_text("reason", reason, 1000)?;
        let (info, agent) = self.decider(ctx, send_id, "send.reject").await?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE sends SET status = 'rejected', decided_at = $1, decided_by = $2, reason = $3, completed_at = $1 \
             WHERE id = $4 AND status = 'pending_confirmation'",
        )
        .bind(now)
        .bind(Self::decided_by(ctx))
        .bind(reason.clone())
        .bind(send_id)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() != 1 {
            return Err(Error::conflict(
                "send-not-pending",
                "the send is no longer pending confirmation",
            ));
        }
        let entry = self.entry(
            ctx,
            "send.reject",
            Some("send"),
            Some(send_id.to_string()),
            Some(agent.id.0.clone()),
            "success",
            json!({ "sha256": info.sha256, "reason": reason }),
        );
        let event = json!({ "send_id": send_id, "agent_id": agent.id.0, "reason": reason, "decided_by": Self::decided_by(ctx) });
        self.record(&mut tx, &entry, Some(("send.rejected", event)))
            .await?;
        tx.commit().await?;
        self.send_info(send_id).await
    }

    /// Fails closed: pending sends past their expiry are rejected as
    /// `expired`, each with an event and an audit entry.
    pub async fn expire_pending_sends(&self) -> Result<u64> {
        let now = self.now();
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, agent_id FROM sends WHERE status = 'pending_confirmation' AND expires_at <= $1 ORDER BY id LIMIT 500",
        )
        .bind(now)
        .fetch_all(&self.db.pool)
        .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let ctx = Ctx::system("confirmation-expiry");
        let mut tx = self.db.begin_write().await?;
        let mut n = 0;
        for (id, agent_id) in due {
            let changed = sqlx::query(
                "UPDATE sends SET status = 'expired', completed_at = $1, reason = 'not confirmed before it expired' \
                 WHERE id = $2 AND status = 'pending_confirmation'",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() == 0 {
                continue;
            }
            n += 1;
            let entry = self.entry(
                &ctx,
                "send.expire",
                Some("send"),
                Some(id.clone()),
                Some(agent_id.clone()),
                "success",
                json!({}),
            );
            self.record(
                &mut tx,
                &entry,
                Some((
                    "send.expired",
                    json!({ "send_id": id, "agent_id": agent_id }),
                )),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// `GET /v1/agents/{id}/usage`.
    pub async fn usage(&self, ctx: &Ctx, agent_id: &str) -> Result<Usage> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        let policy =
            effective_policy(&self.db.pool, agent.policy_id.as_ref().map(|p| p.as_str())).await?;
        let now = self.now();
        let (day, day_end) = day_key(now);
        let (hour, hour_end) = hour_key(now);
        let agent_id = agent.id.0.clone();
        let pool = &self.db.pool;
        let count = |period: String| {
            let agent_id = agent_id.clone();
            async move {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT count FROM send_counters WHERE agent_id = $1 AND period = $2",
                )
                .bind(agent_id)
                .bind(period)
                .fetch_optional(pool)
                .await?;
                Ok::<i64, Error>(row.map(|r| r.0).unwrap_or(0))
            }
        };
        let sent_today = count(day).await?.min(policy.sends_per_day);
        let sent_this_hour = count(hour).await?;
        let storage: Option<(i64, i64)> =
            sqlx::query_as("SELECT bytes, messages FROM mailbox_usage WHERE agent_id = $1")
                .bind(agent.id.as_str())
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(Usage {
            agent_id: agent.id.0.clone(),
            sent_today,
            sends_per_day: policy.sends_per_day,
            day_resets_at: crate::clock::to_rfc3339(day_end),
            sent_this_hour,
            sends_per_hour: policy.sends_per_hour,
            hour_resets_at: crate::clock::to_rfc3339(hour_end),
            storage_bytes_used: storage.map(|s| s.0).unwrap_or(0),
            storage_bytes_limit: policy.storage_bytes,
            messages_stored: storage.map(|s| s.1).unwrap_or(0),
        })
    }
}

const VERIFIED_SENDER: &str = super::VERIFIED_SENDER_HEADER;

/// MIME parsing plus the safe view is CPU work: keep it off the reactor.
pub(crate) async fn parse_off_thread(raw: Vec<u8>) -> Result<Parsed> {
    // A small message parses in about a tenth of a millisecond: on this
    // thread, that costs less than the hand-off to a blocking thread and
    // back (two context switches).
    if raw.len() <= INLINE_PARSE_MAX {
        return Ok(parse::parse(&raw));
    }
    tokio::task::spawn_blocking(move || parse::parse(&raw))
        .await
        .map_err(|e| Error::Internal(format!("parser task: {e}")))
}

fn send_from_row(r: &sqlx::any::AnyRow) -> Result<SendInfo> {
    let recipients: String = r.try_get("recipients")?;
    let recipients: Vec<String> = serde_json::from_str(&recipients).unwrap_or_default();
    let status: String = r.try_get("status")?;
    let pending = status == "pending_confirmation";
    Ok(SendInfo {
        send_id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        sha256: r.try_get("sha256")?,
        size_bytes: r.try_get("size_bytes")?,
        from: r.try_get("mail_from")?,
        subject: r.try_get("subject")?,
        message_id_header: r.try_get("message_id_header")?,
        message_id: r.try_get("message_id")?,
        draft_id: r.try_get("draft_id")?,
        via: r.try_get("via")?,
        recipients: recipients
            .into_iter()
            .map(|recipient| RecipientStatus {
                recipient,
                status: if pending { "pending" } else { "queued" }.into(),
                attempts: 0,
                last_reply: None,
                next_attempt_at: None,
                local: false,
            })
            .collect(),
        created_at: crate::clock::to_rfc3339(r.try_get("created_at")?),
        expires_at: crate::service::opt_rfc3339(r.try_get("expires_at")?),
        decided_at: crate::service::opt_rfc3339(r.try_get("decided_at")?),
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_resets() {
        // 2026-11-28T18:30:15.5Z
        let now = Utc
            .with_ymd_and_hms(2026, 11, 28, 18, 30, 15)
            .unwrap()
            .timestamp_micros()
            + 500_000;
        let (d, end) = day_key(now);
        assert_eq!(d, "day:2026-11-28");
        assert_eq!(crate::clock::to_rfc3339(end), "2026-11-29T00:00:00Z");
        let (h, end) = hour_key(now);
        assert_eq!(h, "hour:2026-11-28T18");
        assert_eq!(crate::clock::to_rfc3339(end), "2026-11-28T19:00:00Z");
    }
}
