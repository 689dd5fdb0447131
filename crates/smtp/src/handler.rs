//! The contract between the SMTP receiver and the rest of the server.
//!
//! The receiver knows nothing about storage: it asks an [`InboundHandler`]
//! whether a recipient exists and hands it finished messages. The core service
//! layer implements this trait; tests use a small in-memory one.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;

/// What the gate says about one `RCPT TO` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A live agent mailbox: `250 2.1.5`.
    Accept,
    /// No such address: `550 5.1.1`.
    Unknown,
    /// The agent exists but is suspended: `450 4.2.1` so senders retry later.
    Suspended,
    /// Decommissioned or tombstoned address: `550 5.1.1`, same as unknown so
    /// nothing leaks about past agents.
    Gone,
    /// Over quota: `452 4.2.2`.
    MailboxFull,
    /// The gate could not decide right now: `451 4.3.0`.
    TempFail,
}

/// Why [`InboundHandler::deliver`] did not store a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// Transient failure (database busy, disk hiccup): `451 4.3.0`.
    Temp,
    /// A recipient's quota would be exceeded: `452 4.2.2`.
    Full,
    /// Refused for good; the text goes into the `554 5.6.0` reply.
    Perm(String),
}

/// The store-side contract of the inbound SMTP receiver.
pub trait InboundHandler: Send + Sync + 'static {
    /// RCPT check; see [`RcptVerdict`] for how each answer is replied.
    fn check_recipient(&self, rcpt: &str) -> impl Future<Output = RcptVerdict> + Send;

    /// Largest message accepted (policy; 50 MB unless the gate says
    /// otherwise). Advertised in EHLO as `SIZE` and enforced at `MAIL FROM`
    /// (`SIZE=`) and during `DATA`.
    fn max_message_size(&self) -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }

    /// Store durably. Must resolve only once the message is committed
    /// (blob fsynced and database committed): `Ok(id)` becomes
    /// `250 2.0.0 Ok: queued as <id>`; errors map as documented on
    /// [`DeliverError`].
    fn deliver(
        &self,
        msg: InboundMessage,
    ) -> impl Future<Output = Result<String, DeliverError>> + Send;
}

/// 50 MB, the default message size limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 50 * 1024 * 1024;

/// One accepted transaction, ready to store.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// The connecting peer.
    pub client_ip: IpAddr,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The envelope sender; empty for the null reverse-path (bounces).
    pub mail_from: String,
    /// The accepted envelope recipients, in order, without duplicates.
    pub rcpt_to: Vec<String>,
    /// Whether the transaction ran under STARTTLS.
    pub tls: bool,
    /// Sender authentication results.
    pub auth: AuthVerdicts,
    /// The message as received (dot-unstuffed, CRLF line endings only), with
    /// our `Authentication-Results` and `Received` headers prepended and
    /// forged trust headers removed.
    pub raw: Vec<u8>,
}

/// An RFC 8601 result keyword for one authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    /// The keyword as written in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for AuthResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sender-authentication verdicts of one message, as also written into
/// its `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthVerdicts {
    /// SPF of the MAIL FROM identity (the HELO identity for bounces).
    pub spf: AuthResult,
    /// Best DKIM result over all signatures (`pass` if any passes).
    pub dkim: AuthResult,
    /// DMARC of the RFC 5322 From domain.
    pub dmarc: AuthResult,
    /// The published DMARC policy (`none`, `quarantine`, `reject`), if any:
    /// the gate decides what to do with a `dmarc=fail`.
    pub dmarc_policy: Option<String>,
    /// ARC chain validation.
    pub arc: AuthResult,
    /// The full header as prepended, e.g.
    /// `Authentication-Results: mx.example; spf=pass ...\r\n`.
    pub header: String,
    /// How many `X-Agentpost-Verified-Sender` headers arrived from outside
    /// and were removed (a non-zero count means someone tried to forge one).
    pub forged_verified_sender: usize,
    /// How many `Authentication-Results` headers claiming our own
    /// authserv-id arrived and were removed (RFC 8601 section 5).
    pub forged_auth_results: usize,
}
