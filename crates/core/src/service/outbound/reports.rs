//! Delivery status notifications (RFC 3464) that come back over SMTP for
//! mail an agent sent: recipients the report marks `failed` are marked
//! failed on the send, with a `message.bounced` event. A report counts only
//! when it is addressed to the agent that sent the original, so one agent's
//! inbound mail can never change another agent's sends. The report itself
//! is filed in the inbox like any mail and is never answered.

use crate::error::Result;
use crate::service::{Ctx, Service};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;

/// One per-recipient block of a `message/delivery-status` part.
#[derive(Debug, PartialEq, Eq)]
struct Failed {
    recipient: String,
    status: String,
    diagnostic: String,
}

/// The failed recipients of a report and the Message-ID of the original.
fn read_report(raw: &[u8]) -> Option<(Option<String>, Vec<Failed>)> {
    let msg = MessageParser::default().parse(raw)?;
    let mut status_text: Option<String> = None;
    let mut original: Option<String> = None;
    for part in msg.parts.iter() {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let full = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase();
        match full.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => {
                status_text = Some(String::from_utf8_lossy(part.contents()).into_owned());
            }
            "text/rfc822-headers" | "message/rfc822-headers" => {
                let text = String::from_utf8_lossy(part.contents()).into_owned();
                original = original.or_else(|| header_message_id(&text));
            }
            "message/rfc822" | "message/global" => {
                if let Some(m) = part.message() {
                    original = original.or_else(|| m.message_id().map(str::to_string));
                } else {
                    let text = String::from_utf8_lossy(part.contents()).into_owned();
                    original = original.or_else(|| header_message_id(&text));
                }
            }
            _ => {}
        }
    }
    let status_text = status_text?;
    let original = original.or_else(|| {
        msg.in_reply_to()
            .as_text()
            .map(|s| s.trim_matches(['<', '>']).to_string())
    });
    let mut failed = vec![];
    // Blocks are separated by blank lines; the first is per-message.
    let unfolded = status_text
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    for block in unfolded.split("\n\n").skip(1) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let action = field("Action").unwrap_or_default().to_ascii_lowercase();
        if action != "failed" {
            continue;
        }
        let Some(rcpt) = field("Final-Recipient").or_else(|| field("Original-Recipient")) else {
            continue;
        };
        let recipient = rcpt
            .split_once(';')
            .map(|(_, a)| a)
            .unwrap_or(&rcpt)
            .trim()
            .trim_matches(['<', '>'])
            .to_ascii_lowercase();
        failed.push(Failed {
            recipient,
            status: field("Status").unwrap_or_else(|| "5.0.0".into()),
            diagnostic: field("Diagnostic-Code").unwrap_or_default(),
        });
    }
    Some((original, failed))
}

fn header_message_id(headers: &str) -> Option<String> {
    let unfolded = headers
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("message-id")
            .then(|| v.trim().trim_matches(['<', '>']).to_string())
    })
}

impl Service {
    /// Applies a delivery report that arrived over SMTP (`MAIL FROM:<>`)
    /// for `rcpt_to`. Returns how many recipients it marked failed.
    pub async fn apply_delivery_report(&self, rcpt_to: &[String], raw: &[u8]) -> Result<u64> {
        let Some((Some(original), failed)) = read_report(raw) else {
            return Ok(0);
        };
        if failed.is_empty() {
            return Ok(0);
        }
        let send: Option<(String, String, String)> = sqlx::query_as(
            "SELECT s.id, s.agent_id, a.address FROM sends s JOIN agents a ON a.id = s.agent_id WHERE s.message_id_header = $1",
        )
        .bind(&original)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((send_id, agent_id, address)) = send else {
            return Ok(0);
        };
        if !rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
            return Ok(0);
        }
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let mut marked = vec![];
        for f in &failed {
            let reply = format!(
                "{} (reported by a delivery status notification) {}",
                f.status, f.diagnostic
            );
            let changed = sqlx::query(
                "UPDATE outbound_queue SET status = 'failed', last_reply = $1, lease_until = NULL, updated_at = $2 \
                 WHERE send_id = $3 AND LOWER(recipient) = $4 AND status <> 'failed'",
            )
            .bind(reply.trim())
            .bind(now)
            .bind(&send_id)
            .bind(&f.recipient)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() > 0 {
                marked.push(
                    json!({ "recipient": f.recipient, "status": f.status, "reply": reply.trim() }),
                );
            }
        }
        if marked.is_empty() {
            return Ok(0);
        }
        // The send's final status reflects the report, even after `sent`.
        sqlx::query("UPDATE sends SET status = CASE WHEN status IN ('sent', 'partially_failed', 'failed') THEN 'queued' ELSE status END WHERE id = $1")
            .bind(&send_id)
            .execute(&mut *tx)
            .await?;
        self.finish_send(&mut tx, &send_id, now).await?;
        let ctx = Ctx::system("delivery-report");
        let entry = self.entry(
            &ctx,
            "message.bounce",
            Some("send"),
            Some(send_id.clone()),
            Some(agent_id.clone()),
            "failure",
            json!({ "recipients": marked, "source": "inbound delivery status notification" }),
        );
        let event = json!({
            "send_id": send_id,
            "agent_id": agent_id,
            "recipients": marked,
            "original_message_id_header": original,
            "source": "report",
        });
        self.record(&mut tx, &entry, Some(("message.bounced", event)))
            .await?;
        tx.commit().await?;
        Ok(marked.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_postfix_style_report() {
        let raw = b"From: MAILER-DAEMON@mx.remote.test\r\nTo: a@agents.test\r\nSubject: Undelivered Mail\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n\
Final-Recipient: rfc822; Bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n\
Final-Recipient: rfc822; carol@remote.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: a@agents.test\r\nMessage-ID: <orig-1@agents.test>\r\n\r\n--b--\r\n";
        let (original, failed) = read_report(raw).unwrap();
        assert_eq!(original.as_deref(), Some("orig-1@agents.test"));
        assert_eq!(
            failed,
            vec![Failed {
                recipient: "bob@remote.test".into(),
                status: "5.1.1".into(),
                diagnostic: "smtp; 550 5.1.1 no such user".into(),
            }]
        );
        assert!(read_report(b"From: x@y\r\n\r\nplain mail").is_none());
    }
}
