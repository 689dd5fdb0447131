//! agentpost's inbound SMTP receiver (the MX side).
//!
//! A protocol layer only: it parses SMTP, authenticates senders (SPF, DKIM,
//! DMARC, ARC), enforces protocol limits and refuses SMTP smuggling, and
//! talks to the rest of the server through one trait, [`InboundHandler`]:
//! "does this recipient exist?" and "store this message durably".
//!
//! The submission listener (RFC 6409, [`serve_submission`]) lets mail
//! clients send as an agent with an app password, through
//! [`SubmissionHandler`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use agentpost_smtp::*;
//! # async fn run<H: InboundHandler>(handler: Arc<H>) -> Result<(), Box<dyn std::error::Error>> {
//! let dns = Arc::new(DnsResolver::system()?);
//! let config = SmtpConfig::new("mx.example.org", dns);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:25").await?;
//! serve(listener, config, handler, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod auth;
mod config;
mod data;
mod delivery;
mod handler;
mod reply;
mod server;
mod session;
mod submission;
mod tls;

pub use auth::{DnsResolver, DnsSetupError, StaticDns, VERIFIED_SENDER_HEADER};
pub use config::{Limits, SmtpConfig, Timeouts};
pub use data::{DataReceiver, DataViolation};
pub use delivery::{
    DeliveryMode, MxResolver, MxResolverError, OutboundConfig, OutboundEnvelope, Outcome, RelayTls,
    deliver,
};
pub use handler::{
    AuthResult, AuthVerdicts, DEFAULT_MAX_MESSAGE_SIZE, DeliverError, InboundHandler,
    InboundMessage, RcptVerdict,
};
pub use server::{ServeError, serve};
pub use submission::{
    AuthRefused, SubmissionConfig, SubmissionHandler, SubmitOutcome, SubmitRefusal,
    serve_submission,
};
pub use tls::{TlsError, TlsSource, generate_self_signed, server_config};
