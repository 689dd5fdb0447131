//! The bridge from the gate's delivery queue to the SMTP client: the queue
//! decides what to send and records results; this only puts one message on
//! the wire (relay or direct to MX) and maps the outcome per recipient.

use agentpost_core::{DeliveryFuture, DeliveryResult, OutboundTransport};
use agentpost_smtp::{OutboundConfig, OutboundEnvelope, Outcome};

pub struct SmtpTransport {
    cfg: OutboundConfig,
}

impl SmtpTransport {
    pub fn new(cfg: OutboundConfig) -> Self {
        SmtpTransport { cfg }
    }
}

impl OutboundTransport for SmtpTransport {
    fn deliver<'a>(
        &'a self,
        mail_from: &'a str,
        rcpt_to: &'a [String],
        message: &'a [u8],
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let env = OutboundEnvelope {
                mail_from: mail_from.to_string(),
                rcpt_to: rcpt_to.to_vec(),
            };
            agentpost_smtp::deliver(&self.cfg, &env, message)
                .await
                .into_iter()
                .map(|(rcpt, outcome)| {
                    let result = match outcome {
                        Outcome::Delivered { reply } => DeliveryResult::Delivered(reply),
                        Outcome::Deferred { reply } => DeliveryResult::Deferred(reply),
                        Outcome::Failed { reply } => DeliveryResult::Failed(reply),
                    };
                    (rcpt, result)
                })
                .collect()
        })
    }
}
