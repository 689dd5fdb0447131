//! The bridge from the inbound SMTP receiver (`agentpost-smtp`) to the gate:
//! RCPT checks and deliveries become `Service` calls, and the gate's
//! answers become SMTP verdicts. No storage logic lives here.

use agentpost_core::{DeliveryError, InboundDelivery, Ingest, RecipientCheck};
use agentpost_smtp::{DeliverError, InboundHandler, InboundMessage, RcptVerdict};

pub struct Inbound {
    ingest: Ingest,
}

impl Inbound {
    pub fn new(ingest: Ingest) -> Self {
        Inbound { ingest }
    }
}

impl InboundHandler for Inbound {
    async fn check_recipient(&self, rcpt: &str) -> RcptVerdict {
        match self.ingest.service().check_recipient(rcpt).await {
            Ok(RecipientCheck::Accept) => RcptVerdict::Accept,
            Ok(RecipientCheck::Unknown) => RcptVerdict::Unknown,
            Ok(RecipientCheck::Suspended) => RcptVerdict::Suspended,
            Ok(RecipientCheck::Gone) => RcptVerdict::Gone,
            Ok(RecipientCheck::MailboxFull) => RcptVerdict::MailboxFull,
            Err(e) => {
                tracing::warn!(error = %e, "recipient check failed");
                RcptVerdict::TempFail
            }
        }
    }

    fn max_message_size(&self) -> usize {
        self.ingest.max_message_size()
    }

    async fn deliver(&self, msg: InboundMessage) -> Result<String, DeliverError> {
        // A bounce (null sender) may report on mail an agent sent.
        let report = msg
            .mail_from
            .is_empty()
            .then(|| (msg.rcpt_to.clone(), msg.raw.clone()));
        let delivery = InboundDelivery {
            client_ip: msg.client_ip.to_string(),
            helo: msg.helo,
            mail_from: msg.mail_from,
            rcpt_to: msg.rcpt_to,
            tls: msg.tls,
            auth_results: Some(msg.auth.header.trim_end().to_string()).filter(|h| !h.is_empty()),
            dmarc: msg.auth.dmarc.as_str().to_string(),
            dmarc_policy: msg.auth.dmarc_policy,
            raw: msg.raw,
        };
        let id = self.ingest.deliver(delivery).await.map_err(|e| match e {
            DeliveryError::Temp => DeliverError::Temp,
            DeliveryError::Full => DeliverError::Full,
            DeliveryError::Rejected(why) => DeliverError::Perm(why),
        })?;
        // The report is stored either way; applying it is best effort.
        if let Some((rcpt_to, raw)) = report
            && let Err(e) = self
                .ingest
                .service()
                .apply_delivery_report(&rcpt_to, &raw)
                .await
        {
            tracing::warn!(error = %e, "could not apply a delivery report");
        }
        Ok(id)
    }
}
