//! Settings of the submission listener: name, TLS, limits, timeouts and the
//! authentication rules.

use std::time::Duration;

use crate::config::{Limits, Timeouts};
use crate::handler::DEFAULT_MAX_MESSAGE_SIZE;
use crate::tls::TlsSource;

/// Everything [`crate::serve_submission`] needs besides the socket and the
/// handler.
#[derive(Debug, Clone)]
pub struct SubmissionConfig {
    /// Our host name: greeting and EHLO reply.
    pub hostname: String,
    /// Where the STARTTLS certificate comes from. With
    /// [`TlsSource::Disabled`] and `allow_plaintext_auth` off nobody can
    /// authenticate (the listener logs a warning at start).
    pub tls: TlsSource,
    /// Protocol and connection limits, shared with the inbound side:
    /// `max_recipients` (`452 4.5.3` beyond), `max_command_line`,
    /// `max_text_line`, `max_connections`, `max_connections_per_ip` and
    /// `max_errors` (5xx replies before `421`).
    pub limits: Limits,
    /// Idle and processing timeouts, shared with the inbound side;
    /// `data_end` bounds [`crate::SubmissionHandler::submit`].
    pub timeouts: Timeouts,
    /// Largest message accepted, advertised as `SIZE` and enforced at
    /// `MAIL FROM SIZE=` and during `DATA` (`552 5.3.4`). The gate may cap
    /// lower per agent by refusing in `submit`.
    pub max_message_size: usize,
    /// Offer and accept `AUTH` before STARTTLS. **For loopback tests only**:
    /// it sends app passwords in clear text. Off by default; without it
    /// `AUTH` before TLS answers `538 5.7.11 Encryption required`
    /// (RFC 4954 6) and EHLO does not advertise `AUTH`.
    pub allow_plaintext_auth: bool,
    /// Failed `AUTH` attempts (`535`) allowed per connection; the last one
    /// is followed by `421 4.7.0` and the connection closes.
    pub max_auth_failures: usize,
    /// Pause before answering a failed `AUTH`, multiplied by the number of
    /// failures so far in the connection, to slow down password guessing.
    pub auth_failure_delay: Duration,
    /// Implicit TLS (RFC 8314 3.3, port 465): the TLS handshake comes first
    /// and STARTTLS is not offered. Needs a certificate (`tls` not
    /// `Disabled`). Off by default (port 587 with STARTTLS).
    pub implicit_tls: bool,
    /// Longest `AUTH` command or SASL response line in octets including
    /// CRLF (RFC 4954 4: 12288); other commands keep
    /// `limits.max_command_line`.
    pub max_auth_line: usize,
}

impl SubmissionConfig {
    /// RFC defaults; STARTTLS with a generated self-signed certificate
    /// (development: set [`SubmissionConfig::tls`] for production).
    pub fn new(hostname: impl Into<String>) -> Self {
        SubmissionConfig {
            hostname: hostname.into(),
            tls: TlsSource::SelfSigned,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            allow_plaintext_auth: false,
            implicit_tls: false,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            max_auth_line: 12288,
        }
    }
}
