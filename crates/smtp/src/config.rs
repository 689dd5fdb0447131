//! Settings of the inbound SMTP listener: name, limits, timeouts, TLS, DNS.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::DnsResolver;
use crate::tls::TlsSource;

/// Everything [`crate::serve`] needs besides the socket and the handler.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Our host name: greeting, EHLO reply, and the authserv-id of the
    /// `Authentication-Results` header.
    pub hostname: String,
    /// Where the STARTTLS certificate comes from.
    pub tls: TlsSource,
    /// Resolver for SPF, DKIM, DMARC and ARC lookups.
    pub dns: Arc<DnsResolver>,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

impl SmtpConfig {
    /// Defaults from RFC 5321 and the design notes; TLS with a generated
    /// self-signed certificate (development).
    pub fn new(hostname: impl Into<String>, dns: Arc<DnsResolver>) -> Self {
        SmtpConfig {
            hostname: hostname.into(),
            tls: TlsSource::SelfSigned,
            dns,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Protocol and resource limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Recipients per transaction (RFC 5321 4.5.3.1.8 minimum 100): beyond it
    /// `452 4.5.3`.
    pub max_recipients: usize,
    /// Command line length in octets including CRLF (RFC 5321 4.5.3.1.4).
    pub max_command_line: usize,
    /// Text line length in DATA, octets including CRLF (RFC 5321 4.5.3.1.6).
    pub max_text_line: usize,
    /// Concurrent connections overall; the next one gets `421 4.7.0`.
    pub max_connections: usize,
    /// Concurrent connections from one IP address; the next gets `421 4.7.0`.
    pub max_connections_per_ip: usize,
    /// Permanent (5xx) replies in one session before `421 4.7.0` and close:
    /// bad commands, but also unknown recipients, so address harvesting is
    /// slowed down too.
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_connections: 1000,
            max_connections_per_ip: 20,
            max_errors: 20,
        }
    }
}

/// Idle timeouts (RFC 5321 4.5.3.2); shorten them in tests.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Waiting for the next command (5 minutes).
    pub command: Duration,
    /// Waiting for the next block of DATA (3 minutes).
    pub data_block: Duration,
    /// From the end of data to our reply: authentication checks plus
    /// [`crate::InboundHandler::deliver`] (10 minutes, the client's own
    /// limit). On expiry the client gets `451 4.3.0`.
    pub data_end: Duration,
    /// The STARTTLS handshake.
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(5 * 60),
            data_block: Duration::from_secs(3 * 60),
            data_end: Duration::from_secs(10 * 60),
            tls_handshake: Duration::from_secs(60),
        }
    }
}
