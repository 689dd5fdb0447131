//! The SMTP submission listener (RFC 6409): an ordinary mail client sends as
//! an agent, authenticated with the agent's app password.
//!
//! Protocol only, like the inbound side: AUTH PLAIN/LOGIN (RFC 4954, only
//! under STARTTLS unless configured otherwise), MAIL/RCPT/DATA with the same
//! limits and the same strict DATA receiver (SMTP smuggling refused). Every
//! decision (is the password right, may this agent use this sender, this
//! recipient, send this message now) belongs to the gate, reached through
//! [`SubmissionHandler`].

mod config;
mod handler;
mod reply;
mod sasl;
mod server;
mod session;

pub use config::SubmissionConfig;
pub use handler::{AuthRefused, SubmissionHandler, SubmitOutcome, SubmitRefusal};
pub use server::serve_submission;
