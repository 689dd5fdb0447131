//! The contract between the submission listener and the rest of the server.
//!
//! The listener authenticates nobody and decides nothing itself: it asks a
//! [`SubmissionHandler`] (in the server, the gate) to check the app
//! password, the envelope sender, each recipient, and finally to take the
//! message. Tests use a small in-memory implementation.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;

/// The gate side of the submission listener (RFC 6409).
///
/// Every method is called only for a session that has authenticated, except
/// [`SubmissionHandler::authenticate`] itself. Refusals are turned into SMTP
/// replies exactly as given (see [`SubmitRefusal`]).
pub trait SubmissionHandler: Send + Sync + 'static {
    /// An authenticated identity (the agent) for the rest of the session.
    /// Forgotten on STARTTLS (RFC 3207 4.2) and when the connection closes.
    type Identity: Send + Sync + 'static;

    /// `AUTH PLAIN` / `AUTH LOGIN`. `username` is what the client sent (the
    /// agent's address); `password` is the app password and must never be
    /// logged; `client_ip` is for the audit trail. `Err(Invalid)` answers
    /// `535 5.7.8` and counts towards the per-connection failure cap;
    /// `Err(Temporary)` answers `454 4.7.0` and does not.
    fn authenticate(
        &self,
        username: &str,
        password: &str,
        client_ip: IpAddr,
    ) -> impl Future<Output = Result<Self::Identity, AuthRefused>> + Send;

    /// `MAIL FROM`: the envelope sender must be the identity's own address;
    /// otherwise refuse with [`SubmitRefusal::sender_not_owned`]
    /// (`553 5.7.1`). `mail_from` is empty for the null reverse-path `<>`.
    fn check_sender(
        &self,
        id: &Self::Identity,
        mail_from: &str,
    ) -> impl Future<Output = Result<(), SubmitRefusal>> + Send;

    /// `RCPT TO`, once per new recipient (duplicates are answered `250`
    /// without asking): syntax, block lists, recipients per message.
    /// `accepted_so_far` counts the recipients already accepted in this
    /// transaction. `Ok` answers `250 2.1.5`.
    fn check_recipient(
        &self,
        id: &Self::Identity,
        rcpt: &str,
        accepted_so_far: usize,
    ) -> impl Future<Output = Result<(), SubmitRefusal>> + Send;

    /// End of `DATA`: hand the message to the gate (From header check, caps,
    /// confirmation, queueing). `message` is the content as received:
    /// dot-unstuffed, CRLF line endings only, no header added. Resolve only
    /// once the outcome is durable: `250` means the message is safe.
    fn submit(
        &self,
        id: &Self::Identity,
        mail_from: &str,
        rcpt_to: &[String],
        message: Vec<u8>,
        client_ip: IpAddr,
    ) -> impl Future<Output = SubmitOutcome> + Send;
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Queued for delivery: `250 2.0.0 Ok: queued as <id>`.
    Queued { id: String },
    /// Held until a human approver confirms it:
    /// `250 2.0.0 Held for confirmation: send <send_id> waits for a human
    /// approver`. The message is safe (hence `250`); the client is told it
    /// has not left yet.
    Held { send_id: String },
    /// Not accepted; replied as given.
    Refused(SubmitRefusal),
}

/// Why [`SubmissionHandler::authenticate`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefused {
    /// Unknown user, wrong or revoked app password, suspended agent: all
    /// alike, so nothing leaks. `535 5.7.8` (RFC 4954).
    Invalid,
    /// The gate could not decide right now (database down): `454 4.7.0`
    /// (RFC 4954); the client may retry.
    Temporary,
}

/// A refusal with its SMTP reply: `code`, RFC 3463 enhanced status code and
/// human-readable text.
///
/// Use the constructors; their codes follow RFC 5321, RFC 3463 and RFC 4954:
///
/// | constructor | reply | for |
/// |---|---|---|
/// | [`sender_not_owned`](Self::sender_not_owned) | `553 5.7.1` | MAIL FROM is not the agent's address |
/// | [`bad_address`](Self::bad_address) | `501 5.1.3` | recipient syntax |
/// | [`policy`](Self::policy) | `550 5.7.1` | block list, recipient not allowed, agent suspended |
/// | [`too_many_recipients`](Self::too_many_recipients) | `452 4.5.3` | recipients per message (RFC 5321 4.5.3.1.10: the client sends the rest in another transaction) |
/// | [`too_big`](Self::too_big) | `552 5.3.4` | message size cap |
/// | [`over_limit`](Self::over_limit) | `451 4.7.0` | a send cap (per hour/day) is used up: temporary, the client retries later |
/// | [`temporary`](Self::temporary) | `451 4.3.0` | the gate failed transiently |
/// | [`content`](Self::content) | `554 5.6.0` | the message itself is refused (e.g. From header not the agent's) |
///
/// Any other code can be built with [`SubmitRefusal::new`]. The listener
/// keeps the reply well-formed whatever is given: a code outside 400..=599
/// becomes `451 4.3.0`, the enhanced class is aligned with the code, and
/// control characters in the text become spaces. A `421` refusal closes the
/// connection after the reply, as RFC 5321 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRefusal {
    pub code: u16,
    /// `(class, subject, detail)`, e.g. `(5, 7, 1)` for `5.7.1`.
    pub enhanced: (u8, u16, u16),
    pub text: String,
}

impl SubmitRefusal {
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Self {
        SubmitRefusal {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// `553 5.7.1`: the envelope sender is not the authenticated agent's
    /// address.
    pub fn sender_not_owned() -> Self {
        Self::new(
            553,
            (5, 7, 1),
            "Sender address rejected: not owned by the authenticated user",
        )
    }

    /// `501 5.1.3`: malformed recipient address.
    pub fn bad_address() -> Self {
        Self::new(501, (5, 1, 3), "Bad recipient address syntax")
    }

    /// `550 5.7.1`: refused by policy; `text` says which (it reaches the
    /// user's mail client).
    pub fn policy(text: impl Into<String>) -> Self {
        Self::new(550, (5, 7, 1), text)
    }

    /// `452 4.5.3`: too many recipients for one message.
    pub fn too_many_recipients() -> Self {
        Self::new(452, (4, 5, 3), "Too many recipients")
    }

    /// `552 5.3.4`: the message is larger than allowed.
    pub fn too_big() -> Self {
        Self::new(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// `451 4.7.0`: a sending cap is exhausted for now; `text` should say
    /// which and when it resets.
    pub fn over_limit(text: impl Into<String>) -> Self {
        Self::new(451, (4, 7, 0), text)
    }

    /// `451 4.3.0`: transient failure, try again later.
    pub fn temporary() -> Self {
        Self::new(451, (4, 3, 0), "Temporary failure, try again later")
    }

    /// `554 5.6.0`: the message content is refused; `text` says why.
    pub fn content(text: impl Into<String>) -> Self {
        Self::new(554, (5, 6, 0), text)
    }
}

impl fmt::Display for SubmitRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.enhanced;
        write!(f, "{} {a}.{b}.{c} {}", self.code, self.text)
    }
}
