//! One SMTP session with one server address, on `mail-send`'s low-level
//! client: connect, greeting, EHLO, STARTTLS, AUTH, then one transaction
//! with a result per recipient.
//!
//! `mail-send`'s `send()` stops at the first rejected recipient and its
//! builder either requires TLS or never uses it, so the session is driven
//! step by step here: `connect`, `read`, `ehlo`, `cmd("STARTTLS")` +
//! `into_tls` (so that opportunistic TLS can fall back to plaintext),
//! `authenticate`, `mail_from`, `rcpt_to`, and `cmd("DATA")` followed by our
//! own payload writer (see `payload.rs` for why not `data()`).

use std::net::SocketAddr;
use std::time::Duration;

use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
    Response,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::Outcome;
use super::payload::Payload;

/// STARTTLS policy of one session.
pub(crate) enum Policy {
    /// STARTTLS must be offered and succeed.
    Required(TlsConnector),
    /// STARTTLS when offered; plaintext otherwise.
    Opportunistic(TlsConnector),
    /// Never STARTTLS.
    Plain,
}

/// The server to talk to.
pub(crate) struct Target<'a> {
    /// Its name: for messages, and the name its certificate must match.
    pub(crate) host: &'a str,
    pub(crate) addr: SocketAddr,
    pub(crate) credentials: Option<&'a (String, String)>,
    /// Whether the credentials may go over an unencrypted connection.
    pub(crate) plaintext_auth: bool,
}

/// One message to some recipients.
pub(crate) struct Transaction<'a> {
    pub(crate) mail_from: &'a str,
    pub(crate) rcpts: Vec<&'a str>,
    pub(crate) payload: &'a Payload,
}

/// The session failed before the transaction began: the caller may try
/// another address or host. The reply always has a 4xx code.
#[derive(Debug)]
pub(crate) struct SessionError {
    reply: String,
    /// The TLS handshake failed (the connection is unusable).
    tls_handshake: bool,
}

impl SessionError {
    fn new(reply: String) -> Self {
        SessionError {
            reply,
            tls_handshake: false,
        }
    }

    pub(crate) fn reply(&self) -> &str {
        &self.reply
    }

    pub(crate) fn into_reply(self) -> String {
        self.reply
    }
}

/// Size of the blocks the message is written in; each must be written
/// within the command timeout.
const WRITE_BLOCK: usize = 64 * 1024;

/// How long to wait for the reply to QUIT, which is a courtesy.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt at `target`. With opportunistic TLS, a failed handshake
/// leaves the connection unusable, so the same address is tried once more
/// without STARTTLS (as MTAs do; `mail-send` has no such fallback).
///
/// `Ok` once the transaction began (`MAIL FROM` was sent): the outcomes are
/// final for this attempt, one per recipient of `txn`.
pub(crate) async fn attempt(
    cfg: &super::OutboundConfig,
    target: &Target<'_>,
    policy: &Policy,
    txn: &Transaction<'_>,
) -> Result<Vec<Outcome>, SessionError> {
    match run(cfg, target, policy, txn).await {
        Err(err) if err.tls_handshake && matches!(policy, Policy::Opportunistic(_)) => {
            tracing::warn!(host = %target.host, addr = %target.addr, error = %err.reply,
                "outbound: TLS handshake failed; retrying without STARTTLS");
            run(cfg, target, &Policy::Plain, txn).await
        }
        other => other,
    }
}

async fn run(
    cfg: &super::OutboundConfig,
    target: &Target<'_>,
    policy: &Policy,
    txn: &Transaction<'_>,
) -> Result<Vec<Outcome>, SessionError> {
    let who = format!("{} [{}]", target.host, target.addr);
    let mut client = match SmtpClient::connect(target.addr, cfg.connect_timeout).await {
        Ok(client) => client,
        Err(mail_send::Error::Timeout) => {
            return Err(SessionError::new(format!(
                "451 4.4.1 no answer from {who} within {}",
                seconds(cfg.connect_timeout)
            )));
        }
        Err(err) => {
            return Err(SessionError::new(format!(
                "451 4.4.1 cannot connect to {who}: {}",
                error_text(&err)
            )));
        }
    };
    client.timeout = cfg.command_timeout;

    match tokio::time::timeout(cfg.command_timeout, client.read()).await {
        Ok(Ok(reply)) if (200..300).contains(&reply.code) => {}
        Ok(Ok(reply)) => {
            quit(client).await;
            return Err(SessionError::new(format!(
                "451 4.4.2 {who} refused the session: {}",
                format_reply(&reply)
            )));
        }
        Ok(Err(err)) => return Err(lost(&who, "the greeting", &err)),
        Err(_) => {
            return Err(SessionError::new(format!(
                "451 4.4.2 no greeting from {who} within {}",
                seconds(cfg.command_timeout)
            )));
        }
    }

    let ehlo = hello(&mut client, &cfg.helo_name, &who).await?;
    let (connector, required) = match policy {
        Policy::Plain => return finish(client, &ehlo, false, cfg, target, txn, &who).await,
        Policy::Required(connector) => (connector, true),
        Policy::Opportunistic(connector) => (connector, false),
    };
    if !ehlo.has_capability(EXT_START_TLS) {
        if required {
            quit(client).await;
            return Err(SessionError::new(format!(
                "451 4.7.10 {who} does not offer STARTTLS, and TLS is required for this relay"
            )));
        }
        return finish(client, &ehlo, false, cfg, target, txn, &who).await;
    }
    let reply = client
        .cmd(b"STARTTLS\r\n")
        .await
        .map_err(|err| lost(&who, "STARTTLS", &err))?;
    if !(200..300).contains(&reply.code) {
        if required {
            quit(client).await;
            return Err(SessionError::new(format!(
                "451 4.7.10 {who} refused STARTTLS, and TLS is required for this relay: {}",
                format_reply(&reply)
            )));
        }
        // Still in plaintext on the same connection.
        return finish(client, &ehlo, false, cfg, target, txn, &who).await;
    }
    let mut client = match client.into_tls(connector, target.host).await {
        Ok(client) => client,
        Err(err) => {
            return Err(SessionError {
                reply: format!(
                    "451 4.7.5 TLS handshake with {who} failed: {}",
                    error_text(&err)
                ),
                tls_handshake: true,
            });
        }
    };
    // RFC 3207 4.2: forget what was learnt before TLS and ask again.
    let ehlo = hello(&mut client, &cfg.helo_name, &who).await?;
    finish(client, &ehlo, true, cfg, target, txn, &who).await
}

/// EHLO, or HELO when the server does not know EHLO (RFC 5321 3.2).
async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    helo_name: &str,
    who: &str,
) -> Result<EhloResponse<String>, SessionError> {
    match client.ehlo(helo_name).await {
        Ok(ehlo) => Ok(ehlo),
        Err(mail_send::Error::UnexpectedReply(reply)) if matches!(reply.code, 500..=502) => {
            let reply = client
                .cmd(format!("HELO {helo_name}\r\n"))
                .await
                .map_err(|err| lost(who, "HELO", &err))?;
            if (200..300).contains(&reply.code) {
                // No extensions.
                Ok(EhloResponse::new(String::new()))
            } else {
                Err(SessionError::new(format!(
                    "451 4.4.2 {who} refused HELO: {}",
                    format_reply(&reply)
                )))
            }
        }
        Err(mail_send::Error::UnexpectedReply(reply)) => Err(SessionError::new(format!(
            "451 4.4.2 {who} refused EHLO: {}",
            format_reply(&reply)
        ))),
        Err(err) => Err(lost(who, "EHLO", &err)),
    }
}

/// AUTH when configured, the transaction, QUIT.
async fn finish<T: AsyncRead + AsyncWrite + Unpin>(
    mut client: SmtpClient<T>,
    ehlo: &EhloResponse<String>,
    encrypted: bool,
    cfg: &super::OutboundConfig,
    target: &Target<'_>,
    txn: &Transaction<'_>,
    who: &str,
) -> Result<Vec<Outcome>, SessionError> {
    if let Some((username, password)) = target.credentials {
        if !encrypted && !target.plaintext_auth {
            quit(client).await;
            return Err(SessionError::new(format!(
                "451 4.7.10 not sending credentials to {who} over an unencrypted connection \
                 (no STARTTLS, or it failed); use tls = required, or tls = none to allow \
                 plaintext AUTH"
            )));
        }
        // Only the mechanisms this build of mail-send implements: without
        // its cram-md5/digest-md5 features it would start those exchanges
        // and then give up in the middle.
        let mut offered = EhloResponse::new(String::new());
        offered.auth_mechanisms = ehlo.auth_mechanisms & (AUTH_PLAIN | AUTH_LOGIN);
        let credentials = Credentials::new(username.clone(), password.clone());
        let result = client
            .authenticate(&credentials, &offered)
            .await
            .map(|_| ());
        if let Err(err) = result {
            let reply = match err {
                mail_send::Error::UnsupportedAuthMechanism => format!(
                    "451 4.7.8 {who} offers neither AUTH PLAIN nor AUTH LOGIN{}",
                    if ehlo.auth_mechanisms == 0 {
                        " (no AUTH at all)"
                    } else {
                        ""
                    }
                ),
                mail_send::Error::AuthenticationFailed(reply)
                | mail_send::Error::UnexpectedReply(reply) => format!(
                    "451 4.7.8 authentication to {who} failed: {}",
                    format_reply(&reply)
                ),
                err => return Err(lost(who, "AUTH", &err)),
            };
            quit(client).await;
            return Err(SessionError::new(reply));
        }
    }
    let outcomes = transaction(&mut client, ehlo, cfg, txn, who).await;
    quit(client).await;
    Ok(outcomes)
}

/// MAIL FROM, RCPT TO for each recipient, DATA if any was accepted.
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    ehlo: &EhloResponse<String>,
    cfg: &super::OutboundConfig,
    txn: &Transaction<'_>,
    who: &str,
) -> Vec<Outcome> {
    let count = txn.rcpts.len();
    let all = |outcome: Outcome| vec![outcome; count];
    let payload = txn.payload;

    if ehlo.has_capability(EXT_SIZE) && ehlo.size > 0 && payload.size > ehlo.size {
        return all(Outcome::Failed {
            reply: format!(
                "552 5.3.4 the message ({} octets) is larger than {who} accepts ({} octets)",
                payload.size, ehlo.size
            ),
        });
    }
    let utf8 = ehlo.has_capability(EXT_SMTP_UTF8);
    if !txn.mail_from.is_ascii() && !utf8 {
        return all(Outcome::Failed {
            reply: format!(
                "553 5.6.7 the sender address is not ASCII and {who} does not support SMTPUTF8"
            ),
        });
    }
    let mut params = Parameters::new();
    if payload.eight_bit && ehlo.has_capability(EXT_8BIT_MIME) {
        params.add(("BODY", "8BITMIME"));
    }
    if utf8 && (!txn.mail_from.is_ascii() || txn.rcpts.iter().any(|rcpt| !rcpt.is_ascii())) {
        params.add("SMTPUTF8");
    }
    if ehlo.has_capability(EXT_SIZE) {
        params.add(("SIZE".to_string(), payload.size.to_string()));
    }

    match client.mail_from(txn.mail_from, &params).await {
        Ok(()) => {}
        Err(mail_send::Error::UnexpectedReply(reply)) => {
            return all(Outcome::from_code(reply.code, format_reply(&reply)));
        }
        Err(err) => {
            return all(Outcome::Deferred {
                reply: lost(who, "MAIL FROM", &err).reply,
            });
        }
    }

    let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
    let mut accepted = Vec::new();
    for (index, rcpt) in txn.rcpts.iter().enumerate() {
        if !rcpt.is_ascii() && !utf8 {
            outcomes[index] = Some(Outcome::Failed {
                reply: format!(
                    "553 5.6.7 the recipient address is not ASCII and {who} does not support SMTPUTF8"
                ),
            });
            continue;
        }
        match client.rcpt_to(rcpt, &Parameters::new()).await {
            Ok(()) => accepted.push(index),
            Err(mail_send::Error::UnexpectedReply(reply)) => {
                outcomes[index] = Some(Outcome::from_code(reply.code, format_reply(&reply)));
            }
            Err(err) => {
                let reply = lost(who, "RCPT TO", &err).reply;
                return fill(outcomes, Outcome::Deferred { reply });
            }
        }
    }
    if accepted.is_empty() {
        // Nothing to send: no DATA (the outcomes are all set).
        return fill(
            outcomes,
            Outcome::Deferred {
                reply: "451 4.3.0 internal error: no recipient result".into(),
            },
        );
    }

    let end = send_data(client, cfg, payload, who).await;
    for index in accepted {
        outcomes[index] = Some(end.clone());
    }
    fill(
        outcomes,
        Outcome::Deferred {
            reply: "451 4.3.0 internal error: no recipient result".into(),
        },
    )
}

/// The DATA command, the message, and the reply that applies to every
/// accepted recipient.
async fn send_data<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    cfg: &super::OutboundConfig,
    payload: &Payload,
    who: &str,
) -> Outcome {
    match client.cmd(b"DATA\r\n").await {
        Ok(reply) if reply.code == 354 => {}
        Ok(reply) => {
            // Anything but 354 means the data must not be sent; a 2xx here
            // would be a protocol error, so it is not a delivery either.
            let text = format_reply(&reply);
            return if reply.code >= 500 {
                Outcome::Failed { reply: text }
            } else {
                Outcome::Deferred { reply: text }
            };
        }
        Err(err) => {
            return Outcome::Deferred {
                reply: lost(who, "DATA", &err).reply,
            };
        }
    }

    for block in payload.bytes.chunks(WRITE_BLOCK) {
        match tokio::time::timeout(cfg.command_timeout, client.stream.write_all(block)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Outcome::Deferred {
                    reply: format!(
                        "451 4.4.2 connection to {who} lost while sending the message: {err}"
                    ),
                };
            }
            Err(_) => {
                return Outcome::Deferred {
                    reply: format!(
                        "451 4.4.2 {who} stopped reading the message for {}",
                        seconds(cfg.command_timeout)
                    ),
                };
            }
        }
    }
    let flushed = match tokio::time::timeout(cfg.command_timeout, client.stream.flush()).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    };
    if let Err(err) = flushed {
        return Outcome::Deferred {
            reply: format!("451 4.4.2 connection to {who} lost while sending the message: {err}"),
        };
    }

    match tokio::time::timeout(cfg.data_timeout, client.read()).await {
        Ok(Ok(reply)) => Outcome::from_code(reply.code, format_reply(&reply)),
        Ok(Err(err)) => Outcome::Deferred {
            reply: format!(
                "451 4.4.2 connection to {who} lost after the end of the message, before its \
                 reply ({}); it may have been delivered (RFC 1047)",
                error_text(&err)
            ),
        },
        Err(_) => Outcome::Deferred {
            reply: format!(
                "451 4.4.2 no reply from {who} within {} after the end of the message; it may \
                 have been delivered (RFC 1047)",
                seconds(cfg.data_timeout)
            ),
        },
    }
}

fn fill(outcomes: Vec<Option<Outcome>>, rest: Outcome) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| rest.clone()))
        .collect()
}

/// QUIT, best effort: the outcomes are already decided.
async fn quit<T: AsyncRead + AsyncWrite + Unpin>(mut client: SmtpClient<T>) {
    client.timeout = client.timeout.min(QUIT_TIMEOUT);
    let _ = client.quit().await;
}

fn lost(who: &str, step: &str, err: &mail_send::Error) -> SessionError {
    SessionError::new(match err {
        mail_send::Error::Timeout => format!("451 4.4.2 {who} did not answer {step} in time"),
        mail_send::Error::UnexpectedReply(reply) => format!(
            "451 4.4.2 unexpected reply from {who} to {step}: {}",
            format_reply(reply)
        ),
        err => format!(
            "451 4.4.2 connection to {who} failed at {step}: {}",
            error_text(err)
        ),
    })
}

fn error_text(err: &mail_send::Error) -> String {
    match err {
        mail_send::Error::UnparseableReply => {
            "connection closed, or a reply that is not SMTP".to_string()
        }
        mail_send::Error::UnexpectedReply(reply) => format_reply(reply),
        err => err.to_string(),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

/// `"<code> <x.y.z> <text>"` on one line, the lines of a multi-line reply
/// joined with spaces; without the enhanced code when the server sent none.
pub(crate) fn format_reply(reply: &Response<String>) -> String {
    let text = reply
        .message
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let [class, subject, detail] = reply.esc;
    let mut out = if class != 0 {
        format!("{} {class}.{subject}.{detail}", reply.code)
    } else {
        reply.code.to_string()
    };
    if !text.is_empty() {
        out.push(' ');
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let reply = Response {
            code: 550,
            esc: [5, 1, 1],
            message: "no such user\nreally".to_string(),
        };
        assert_eq!(format_reply(&reply), "550 5.1.1 no such user really");
        let reply = Response {
            code: 250,
            esc: [0, 0, 0],
            message: "OK".to_string(),
        };
        assert_eq!(format_reply(&reply), "250 OK");
    }
}
