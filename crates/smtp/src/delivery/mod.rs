//! Outbound delivery: the SMTP client the delivery queue calls for one
//! message.
//!
//! [`deliver`] takes one message and its envelope and returns one
//! [`Outcome`] per recipient, in the order of [`OutboundEnvelope::rcpt_to`]. It never
//! panics on anything the network says and never returns an error: whatever
//! goes wrong becomes a `Deferred` (retry later) or `Failed` (bounce) outcome
//! with a reply text fit for a DSN. Queueing, retries, back-off and DSNs are
//! the caller's business.
//!
//! Two modes ([`DeliveryMode`]):
//! - **Relay**: everything goes to one smarthost, with STARTTLS required,
//!   opportunistic or off, and optional AUTH PLAIN/LOGIN.
//! - **Direct**: recipients are grouped by domain (one SMTP transaction per
//!   domain, domains in parallel); each domain's MX hosts are tried in order of
//!   preference, falling back to the next host when one cannot be reached.
//!
//! ```no_run
//! # use agentpost_smtp::*;
//! # async fn run() -> Result<(), MxResolverError> {
//! let cfg = OutboundConfig::new("mail.example.org", DeliveryMode::direct(MxResolver::system()?));
//! let env = OutboundEnvelope {
//!     mail_from: "agent@example.org".into(),
//!     rcpt_to: vec!["someone@example.net".into()],
//! };
//! for (rcpt, outcome) in deliver(&cfg, &env, b"Subject: hi\r\n\r\nhello\r\n").await {
//!     println!("{rcpt}: {outcome:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Reply texts
//!
//! Every outcome carries a one-line reply `"<code> <x.y.z> <text>"`: the
//! remote server's own reply when it gave one (multi-line replies joined with
//! spaces; the enhanced code is omitted when the server sent none), or one we
//! make up for local conditions (DNS, connection, TLS, timeouts), which always
//! has a 4xx code for `Deferred` and a 5xx code for `Failed` and names the
//! host involved. Codes used for local conditions: `4.4.1` cannot connect,
//! `4.4.2` connection lost or timed out, `4.4.3` DNS failure, `4.7.5` TLS
//! handshake failed, `4.7.10` STARTTLS required but missing or refused,
//! `4.7.8` relay authentication failed, `5.1.2` domain does not exist,
//! `5.1.3`/`5.1.7` malformed recipient/sender address, `5.1.10` null MX,
//! `5.3.4` message larger than the server's SIZE, `5.6.7` non-ASCII address
//! without SMTPUTF8.
//!
//! # What is sent
//!
//! The message is sent CRLF-normalised (bare LF and bare CR become CRLF),
//! dot-stuffed, and with a final CRLF added only when it lacks one. `mail-send`
//! 0.6's own `data()` cannot be used for this: it dot-stuffs but leaves bare
//! LFs alone, and it always appends CRLF before the final dot, so a message
//! that already ends in CRLF would gain an empty line. We therefore send the
//! DATA command with `mail-send` and write the prepared payload ourselves.
//! Sign (DKIM) the message in its CRLF form before calling [`deliver`].
//! `BODY=8BITMIME` is declared when the message has 8-bit bytes and the server
//! offers it, `SMTPUTF8` when an address is non-ASCII, `SIZE=` when offered.
//! Lines longer than 998 octets are sent as they are: the message builder
//! must keep lines short.

mod dns;
mod payload;
mod session;
mod tls;

use std::time::Duration;

pub use dns::{MxResolver, MxResolverError};

use dns::{MxAnswer, MxHost};
use payload::Payload;
use session::{Policy, SessionError, Target, Transaction};

/// How and where [`deliver`] sends mail.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Our host name, sent with EHLO (and HELO when EHLO is refused).
    pub helo_name: String,
    /// Relay through a smarthost, or deliver to each domain's MX.
    pub mode: DeliveryMode,
    /// Establishing the TCP connection, per address tried (30 s).
    pub connect_timeout: Duration,
    /// Waiting for the greeting and for the reply to each command, and for
    /// each block of message data to be written (RFC 5321 4.5.3.2: 5 min).
    pub command_timeout: Duration,
    /// Waiting for the reply after the final dot (RFC 5321 4.5.3.2.6: 10
    /// min). When it expires the message may or may not have been accepted;
    /// the outcome is `Deferred` and a retry can duplicate it (RFC 1047).
    pub data_timeout: Duration,
}

impl OutboundConfig {
    /// RFC 5321 timeouts: connect 30 s, commands 5 min, end of data 10 min.
    pub fn new(helo_name: impl Into<String>, mode: DeliveryMode) -> Self {
        OutboundConfig {
            helo_name: helo_name.into(),
            mode,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Where the mail goes.
#[derive(Debug, Clone)]
pub enum DeliveryMode {
    /// Everything to one smarthost.
    Relay {
        /// Host name or IP address; also the name the certificate must match.
        host: String,
        /// Usually 587 (submission with STARTTLS) or 25.
        port: u16,
        tls: RelayTls,
        /// `(username, password)` for AUTH PLAIN (or LOGIN when PLAIN is not
        /// offered). Never sent over an unencrypted connection unless `tls`
        /// is [`RelayTls::None`].
        credentials: Option<(String, String)>,
        /// Accept any certificate (self-signed test relays). Off: the
        /// certificate must chain to the system's roots and match `host`.
        accept_invalid_certs: bool,
    },
    /// To each recipient domain's MX hosts, with opportunistic STARTTLS.
    ///
    /// Certificates are not verified here: without DANE or MTA-STS there is
    /// no way to know which certificate an MX should have, and MTAs
    /// (Postfix's `may` level, RFC 7435 opportunistic security) encrypt
    /// without authenticating rather than fall back to plaintext. If the TLS
    /// handshake fails, the same host is retried once without STARTTLS.
    Direct {
        resolver: MxResolver,
        /// 25, except in tests.
        port: u16,
    },
}

impl DeliveryMode {
    /// Direct delivery on port 25.
    pub fn direct(resolver: MxResolver) -> Self {
        DeliveryMode::Direct { resolver, port: 25 }
    }
}

/// STARTTLS towards a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// STARTTLS must be offered and succeed, else every recipient is
    /// `Deferred` with the reason.
    Required,
    /// STARTTLS when offered; plaintext when not offered or refused, or when
    /// the handshake fails (then on a new connection). Credentials are not
    /// sent over plaintext in this mode.
    Opportunistic,
    /// Never STARTTLS (e.g. a relay on localhost).
    None,
}

/// The SMTP envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundEnvelope {
    /// Reverse path without angle brackets; empty for bounces (`MAIL
    /// FROM:<>`).
    pub mail_from: String,
    /// Forward paths without angle brackets.
    pub rcpt_to: Vec<String>,
}

/// What happened to one recipient. `reply` is described in the [module
/// documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiving server accepted responsibility (2xx after the data).
    Delivered { reply: String },
    /// Temporary: a 4xx reply, or a DNS, connection, TLS or timeout problem.
    /// Retry later.
    Deferred { reply: String },
    /// Permanent: a 5xx reply, a domain that does not exist or accepts no
    /// mail, a malformed address. Do not retry; bounce.
    Failed { reply: String },
}

impl Outcome {
    /// The reply text, whatever the outcome.
    pub fn reply(&self) -> &str {
        match self {
            Outcome::Delivered { reply }
            | Outcome::Deferred { reply }
            | Outcome::Failed { reply } => reply,
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    pub fn is_deferred(&self) -> bool {
        matches!(self, Outcome::Deferred { .. })
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }

    /// From an SMTP reply code: 2xx delivered, 5xx failed, anything else
    /// (4xx, or a code that makes no sense at this point) deferred.
    pub(crate) fn from_code(code: u16, reply: String) -> Self {
        match code {
            200..=299 => Outcome::Delivered { reply },
            500..=599 => Outcome::Failed { reply },
            _ => Outcome::Deferred { reply },
        }
    }

    fn deferred(reply: impl Into<String>) -> Self {
        Outcome::Deferred {
            reply: reply.into(),
        }
    }

    fn failed(reply: impl Into<String>) -> Self {
        Outcome::Failed {
            reply: reply.into(),
        }
    }
}

/// Sessions (connections) tried for one domain or relay before giving up
/// until the next attempt, across all MX hosts and their addresses.
const MAX_SESSIONS: usize = 10;

/// Sends `message` to every recipient of `env` and returns one outcome per
/// recipient, in the order of `env.rcpt_to` (duplicates included).
///
/// `message` is the complete message (headers and body); see the [module
/// documentation](self) for how it is put on the wire.
pub async fn deliver(
    cfg: &OutboundConfig,
    env: &OutboundEnvelope,
    message: &[u8],
) -> Vec<(String, Outcome)> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; env.rcpt_to.len()];

    if let Some(problem) = address_problem(&env.mail_from, true) {
        let reply = format!(
            "550 5.1.7 sender address <{}> {problem}",
            printable(&env.mail_from)
        );
        return env
            .rcpt_to
            .iter()
            .map(|rcpt| (rcpt.clone(), Outcome::failed(reply.clone())))
            .collect();
    }

    // Valid recipients, grouped by the unit of one transaction.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (index, rcpt) in env.rcpt_to.iter().enumerate() {
        if let Some(problem) = address_problem(rcpt, false) {
            outcomes[index] = Some(Outcome::failed(format!(
                "553 5.1.3 recipient address <{}> {problem}",
                printable(rcpt)
            )));
            continue;
        }
        let key = match cfg.mode {
            DeliveryMode::Relay { .. } => String::new(),
            DeliveryMode::Direct { .. } => domain_of(rcpt).to_ascii_lowercase(),
        };
        match groups.iter_mut().find(|(domain, _)| *domain == key) {
            Some((_, members)) => members.push(index),
            None => groups.push((key, vec![index])),
        }
    }

    let payload = Payload::prepare(message);
    let results = futures::future::join_all(groups.iter().map(|(domain, members)| {
        let txn = Transaction {
            mail_from: &env.mail_from,
            rcpts: members.iter().map(|&i| env.rcpt_to[i].as_str()).collect(),
            payload: &payload,
        };
        async move {
            match &cfg.mode {
                DeliveryMode::Relay {
                    host,
                    port,
                    tls,
                    credentials,
                    accept_invalid_certs,
                } => {
                    let relay = Relay {
                        host,
                        port: *port,
                        tls: *tls,
                        credentials: credentials.as_ref(),
                        accept_invalid_certs: *accept_invalid_certs,
                    };
                    deliver_relay(cfg, &relay, &txn).await
                }
                DeliveryMode::Direct { resolver, port } => {
                    deliver_domain(cfg, resolver, *port, domain, &txn).await
                }
            }
        }
    }))
    .await;

    for ((_, members), group_outcomes) in groups.iter().zip(results) {
        for (&index, outcome) in members.iter().zip(group_outcomes) {
            outcomes[index] = Some(outcome);
        }
    }

    env.rcpt_to
        .iter()
        .zip(outcomes)
        .map(|(rcpt, outcome)| {
            let outcome = outcome.unwrap_or_else(|| {
                // Unreachable by construction; a deferral is the safe answer.
                Outcome::deferred("451 4.3.0 internal error: recipient was not attempted")
            });
            match &outcome {
                Outcome::Delivered { reply } => {
                    tracing::info!(rcpt = %rcpt, %reply, "outbound: delivered")
                }
                Outcome::Deferred { reply } => {
                    tracing::warn!(rcpt = %rcpt, %reply, "outbound: deferred")
                }
                Outcome::Failed { reply } => {
                    tracing::warn!(rcpt = %rcpt, %reply, "outbound: failed")
                }
            }
            (rcpt.clone(), outcome)
        })
        .collect()
}

struct Relay<'a> {
    host: &'a str,
    port: u16,
    tls: RelayTls,
    credentials: Option<&'a (String, String)>,
    accept_invalid_certs: bool,
}

async fn deliver_relay(
    cfg: &OutboundConfig,
    relay: &Relay<'_>,
    txn: &Transaction<'_>,
) -> Vec<Outcome> {
    let all = |outcome: Outcome| vec![outcome; txn.rcpts.len()];
    let policy = match relay.tls {
        RelayTls::None => Policy::Plain,
        RelayTls::Required | RelayTls::Opportunistic => {
            match tls::connector(!relay.accept_invalid_certs) {
                Ok(connector) if relay.tls == RelayTls::Required => Policy::Required(connector),
                Ok(connector) => Policy::Opportunistic(connector),
                Err(err) => {
                    return all(Outcome::deferred(format!(
                        "451 4.7.5 cannot set up TLS certificate verification: {err}"
                    )));
                }
            }
        }
    };

    let addrs = match tokio::time::timeout(
        cfg.connect_timeout,
        tokio::net::lookup_host((relay.host, relay.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.take(MAX_SESSIONS).collect::<Vec<_>>(),
        Ok(Err(err)) => {
            return all(Outcome::deferred(format!(
                "451 4.4.3 cannot resolve relay host {}: {err}",
                relay.host
            )));
        }
        Err(_) => {
            return all(Outcome::deferred(format!(
                "451 4.4.3 resolving relay host {} timed out",
                relay.host
            )));
        }
    };
    if addrs.is_empty() {
        return all(Outcome::deferred(format!(
            "451 4.4.3 relay host {} has no address",
            relay.host
        )));
    }

    let mut last = None;
    for addr in addrs {
        let target = Target {
            host: relay.host,
            addr,
            credentials: relay.credentials,
            // Plaintext AUTH only when the operator turned TLS off.
            plaintext_auth: relay.tls == RelayTls::None,
        };
        match session::attempt(cfg, &target, &policy, txn).await {
            Ok(outcomes) => return outcomes,
            Err(err) => last = Some(err),
        }
    }
    all(Outcome::deferred(last.map_or_else(
        || "451 4.4.1 no relay address could be tried".to_string(),
        SessionError::into_reply,
    )))
}

async fn deliver_domain(
    cfg: &OutboundConfig,
    resolver: &MxResolver,
    port: u16,
    domain: &str,
    txn: &Transaction<'_>,
) -> Vec<Outcome> {
    let all = |outcome: Outcome| vec![outcome; txn.rcpts.len()];
    let hosts = match resolver.mx_hosts(domain).await {
        MxAnswer::Hosts(hosts) => hosts,
        MxAnswer::NullMx => {
            return all(Outcome::failed(format!(
                "556 5.1.10 domain {domain} does not accept mail (null MX, RFC 7505)"
            )));
        }
        MxAnswer::NoDomain(reason) => {
            return all(Outcome::failed(format!("550 5.1.2 {reason}")));
        }
        MxAnswer::TempFail(reason) => return all(Outcome::deferred(format!("451 4.4.3 {reason}"))),
    };

    let policy = match tls::connector(false) {
        Ok(connector) => Policy::Opportunistic(connector),
        // Cannot happen with the built-in provider; plaintext is what an MTA
        // without TLS would do.
        Err(_) => Policy::Plain,
    };

    let mut sessions = 0;
    let mut last: Option<String> = None;
    let mut unresolved = Vec::new();
    for MxHost { name, implicit, .. } in &hosts {
        let addrs = match resolver.addresses(name).await {
            Ok(addrs) => addrs,
            Err(dns::AddrError::NoAddress(reason)) if *implicit => {
                // No MX and no address: nothing can ever be delivered.
                return all(Outcome::failed(format!("550 5.1.2 {reason}")));
            }
            Err(dns::AddrError::NoAddress(reason) | dns::AddrError::TempFail(reason)) => {
                tracing::debug!(%domain, mx = %name, %reason, "outbound: MX host unresolvable");
                unresolved.push(reason);
                continue;
            }
        };
        for ip in addrs {
            if sessions == MAX_SESSIONS {
                break;
            }
            sessions += 1;
            let target = Target {
                host: name,
                addr: std::net::SocketAddr::new(ip, port),
                credentials: None,
                plaintext_auth: false,
            };
            match session::attempt(cfg, &target, &policy, txn).await {
                Ok(outcomes) => return outcomes,
                Err(err) => {
                    tracing::debug!(%domain, mx = %name, %ip, error = %err.reply(), "outbound: MX host failed, trying the next");
                    last = Some(err.into_reply());
                }
            }
        }
    }
    let reply = match last {
        Some(reply) => reply,
        None => format!(
            "451 4.4.3 no MX host of {domain} could be resolved: {}",
            unresolved.join("; ")
        ),
    };
    all(Outcome::deferred(reply))
}

/// The domain of `user@domain` (after the last `@`).
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, domain)| domain)
}

/// Why `addr` cannot go into `MAIL FROM:<…>` / `RCPT TO:<…>`, if it cannot.
/// Spaces, control characters and angle brackets would let an address inject
/// SMTP commands, so they are refused (quoted local parts with spaces are
/// therefore not supported).
fn address_problem(addr: &str, is_sender: bool) -> Option<&'static str> {
    if addr.is_empty() {
        return if is_sender { None } else { Some("is empty") };
    }
    if addr.len() > 254 {
        return Some("is longer than 254 octets");
    }
    if addr
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
    {
        return Some("contains a space, control character or angle bracket");
    }
    match addr.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => None,
        _ => Some("is not of the form local-part@domain"),
    }
}

/// An address for an error message: control characters replaced.
fn printable(addr: &str) -> String {
    addr.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address_problem("", true), None);
        assert!(address_problem("", false).is_some());
        assert_eq!(address_problem("a@b.example", false), None);
        assert_eq!(address_problem("pelé@exemple.fr", false), None);
        assert!(address_problem("a@b>\r\nRSET", false).is_some());
        assert!(address_problem("a b@c", false).is_some());
        assert!(address_problem("nodomain", false).is_some());
        assert!(address_problem("@b", false).is_some());
        assert!(address_problem("a@", false).is_some());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@B.example"), "B.example");
        assert_eq!(domain_of("\"a@x\"@y.example"), "y.example");
    }

    #[test]
    fn outcome_from_code() {
        assert!(Outcome::from_code(250, String::new()).is_delivered());
        assert!(Outcome::from_code(450, String::new()).is_deferred());
        assert!(Outcome::from_code(354, String::new()).is_deferred());
        assert!(Outcome::from_code(550, String::new()).is_failed());
    }
}
