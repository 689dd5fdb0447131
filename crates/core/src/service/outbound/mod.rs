//! Outbound mail: drafts, sends, caps, two-step confirmation, the delivery
//! queue, local (agent-to-agent) delivery, bounces and app passwords.
//!
//! A send is stored as its exact bytes (a blob, DKIM-signed) plus a row in
//! `sends`. Caps are counted in `send_counters` inside the same write
//! transaction that records the send, so nodes sharing one database can
//! never exceed them together. A send that needs confirmation waits as
//! `pending_confirmation`; once it is queued, its copy is filed in the
//! agent's `sent` folder, recipients on the organisation's own domains get
//! it straight into their mailbox (with a verified-sender header nobody
//! outside can forge), and every other recipient gets a row in
//! `outbound_queue` for the delivery worker.
//!
//! - `compose`: validation, building with mail-builder, DKIM signing;
//! - `send`: the send path, confirmation, listing, usage;
//! - `drafts`: draft CRUD, replies and forwards;
//! - `queue`: the delivery worker, retries, bounces (DSNs);
//! - `reports`: delivery reports arriving over SMTP for our sends;
//! - `app_passwords`: credentials for SMTP submission.

mod app_passwords;
mod commit;
mod compose;
mod drafts;
mod queue;
mod reports;
mod send;

pub use app_passwords::{AppPassword, IssuedAppPassword, NewAppPassword, SubmissionIdentity};
pub(crate) use commit::SendQueue;
pub use compose::{AttachmentInput, Compose, RecipientInput};
pub use drafts::{Draft, ForwardRequest, ReplyRequest};
pub use queue::{DeliveryFuture, DeliveryResult, OutboundTransport};
pub use send::{RecipientStatus, SendInfo, SendQuery, Usage};

use std::time::Duration;

/// The header that names the sending agent on local deliveries. The SMTP
/// receiver strips it from everything arriving from outside.
pub const VERIFIED_SENDER_HEADER: &str = "X-Agentpost-Verified-Sender";

/// Delivery queue behaviour (configuration).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Waits before each retry after a temporary failure; the last one
    /// repeats.
    pub retry_schedule: Vec<Duration>,
    /// A recipient still failing temporarily this long after the send is
    /// given up and bounced.
    pub give_up_after: Duration,
    /// How long a node owns claimed work; a crashed node's work is picked
    /// up by another after this.
    pub lease: Duration,
    /// Deliveries in flight per node.
    pub concurrency: usize,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        OutboundSettings {
            // First retry within minutes, then growing to every 4 hours.
            retry_schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            give_up_after: Duration::from_secs(5 * 86_400),
            lease: Duration::from_secs(600),
            concurrency: 32,
        }
    }
}
