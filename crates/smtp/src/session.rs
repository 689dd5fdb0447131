//! One SMTP connection: the command state machine and its byte I/O.
//!
//! Parsing is sans-IO (`smtp-proto` for command lines, [`DataReceiver`] for
//! message content); this file frames lines, keeps the session state
//! (greeting -> HELO/EHLO -> MAIL -> RCPT -> DATA), calls the handler and
//! writes replies. Replies to pipelined commands are written in order and
//! flushed whenever the client's input runs dry (RFC 2920).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::SpfOutput;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS, EhloResponse, Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME,
    MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::Envelope;
use crate::config::SmtpConfig;
use crate::data::{DataReceiver, DataViolation};
use crate::handler::{InboundHandler, InboundMessage, RcptVerdict};
use crate::reply::{self, Reply};
use crate::server::Shutdown;

/// What the connection does after a session run.
pub(crate) enum Next {
    Close,
    /// `220` has been sent; wrap the stream in TLS and run a fresh session.
    StartTls,
}

/// Read and write buffers of one connection; reset on STARTTLS.
#[derive(Default)]
pub(crate) struct Io {
    pub(crate) input: Vec<u8>,
    pub(crate) output: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    discarding: bool,
}

pub(crate) enum Line {
    Complete(Vec<u8>),
    TooLong,
    Incomplete,
}

pub(crate) enum Read {
    Data,
    Eof,
    Timeout,
    Shutdown,
    Failed,
}

/// What a command asks the connection to do next.
enum Action {
    Reply(Reply),
    Ehlo,
    Data,
    StartTls,
    Quit,
}

struct Transaction {
    mail_from: String,
    /// MAIL FROM carried SMTPUTF8 (RFC 6531).
    smtputf8: bool,
    rcpts: Vec<String>,
    spf: SpfOutput,
}

/// Shared, read-only per-server context.
pub(crate) struct Context<H> {
    pub config: SmtpConfig,
    pub handler: Arc<H>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub(crate) struct Session<H> {
    ctx: Arc<Context<H>>,
    peer: SocketAddr,
    tls_active: bool,
    helo: Option<String>,
    /// EHLO (not HELO) was used: for the Received header's protocol.
    esmtp: bool,
    tx: Option<Transaction>,
    errors: usize,
}

impl<H: InboundHandler> Session<H> {
    pub(crate) fn new(ctx: Arc<Context<H>>, peer: SocketAddr, tls_active: bool) -> Self {
        Session {
            ctx,
            peer,
            tls_active,
            helo: None,
            esmtp: false,
            tx: None,
            errors: 0,
        }
    }

    /// The greeting sent once per TCP connection.
    pub(crate) fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP agentpost", self.ctx.config.hostname))
    }

    /// Runs commands until the client quits, fails, or asks for TLS.
    pub(crate) async fn run<S>(
        &mut self,
        stream: &mut S,
        io: &mut Io,
        shutdown: &mut Shutdown,
    ) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max_line = self.ctx.config.limits.max_command_line;
        loop {
            let line = match take_line(io, max_line) {
                Line::Complete(line) => line,
                Line::TooLong => {
                    if self.push_reply(io, reply::LINE_TOO_LONG) {
                        return self.close(stream, io).await;
                    }
                    continue;
                }
                Line::Incomplete => {
                    if !flush(stream, io).await {
                        return Next::Close;
                    }
                    let timeout = self.ctx.config.timeouts.command;
                    match read_more(stream, io, timeout, shutdown).await {
                        Read::Data => continue,
                        Read::Eof | Read::Failed => return Next::Close,
                        Read::Timeout => {
                            reply::TIMEOUT.write_to(&mut io.output);
                            return self.close(stream, io).await;
                        }
                        Read::Shutdown => {
                            reply::SHUTTING_DOWN.write_to(&mut io.output);
                            return self.close(stream, io).await;
                        }
                    }
                }
            };

            match self.command(&line).await {
                Action::Reply(reply) => {
                    if self.push_reply(io, reply) {
                        return self.close(stream, io).await;
                    }
                }
                Action::Ehlo => self.write_ehlo(io),
                Action::Quit => {
                    reply::BYE.write_to(&mut io.output);
                    return self.close(stream, io).await;
                }
                Action::StartTls => {
                    reply::START_TLS.write_to(&mut io.output);
                    if !flush(stream, io).await {
                        return Next::Close;
                    }
                    // RFC 3207 4.2 (and CVE-2011-0411): anything the client
                    // pipelined after STARTTLS was sent in clear text and
                    // must not be executed inside the TLS session.
                    io.input.clear();
                    return Next::StartTls;
                }
                Action::Data => {
                    reply::START_DATA.write_to(&mut io.output);
                    if !flush(stream, io).await {
                        return Next::Close;
                    }
                    match self.receive_data(stream, io, shutdown).await {
                        Some(reply) => {
                            if self.push_reply(io, reply) {
                                return self.close(stream, io).await;
                            }
                        }
                        None => return self.close(stream, io).await,
                    }
                }
            }
        }
    }

    /// Queues a reply; counts errors and returns true once the session has
    /// had too many (the closing `421` is then queued too).
    fn push_reply(&mut self, io: &mut Io, reply: Reply) -> bool {
        reply.write_to(&mut io.output);
        if reply.code >= 500 {
            self.errors += 1;
            if self.errors >= self.ctx.config.limits.max_errors {
                reply::TOO_MANY_ERRORS.write_to(&mut io.output);
                return true;
            }
        }
        false
    }

    async fn close<S>(&self, stream: &mut S, io: &mut Io) -> Next
    where
        S: AsyncWrite + Unpin,
    {
        if flush(stream, io).await {
            // Best effort: lets TLS send close_notify.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
        Next::Close
    }

    fn write_ehlo(&self, io: &mut Io) {
        let mut ehlo = EhloResponse::new(self.ctx.config.hostname.as_str());
        ehlo.capabilities =
            EXT_PIPELINING | EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_SIZE | EXT_ENHANCED_STATUS_CODES;
        if self.ctx.tls.is_some() && !self.tls_active {
            ehlo.capabilities |= EXT_START_TLS;
        }
        ehlo.size = self.ctx.handler.max_message_size();
        // Writing into a Vec cannot fail.
        let _ = ehlo.write(&mut io.output);
    }

    async fn command(&mut self, line: &[u8]) -> Action {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(err) => return Action::Reply(parse_error(err)),
        };
        match request {
            Request::Ehlo { host } => {
                self.tx = None;
                self.esmtp = true;
                self.helo = Some(host.into_owned());
                Action::Ehlo
            }
            Request::Helo { host } => {
                self.tx = None;
                self.esmtp = false;
                self.helo = Some(host.into_owned());
                Action::Reply(Reply::plain(250, self.ctx.config.hostname.clone()))
            }
            Request::Mail { from } => Action::Reply(self.mail(from).await),
            Request::Rcpt { to } => Action::Reply(self.rcpt(to).await),
            Request::Data => match &self.tx {
                None => Action::Reply(reply::NEED_MAIL),
                Some(tx) if tx.rcpts.is_empty() => Action::Reply(reply::NO_VALID_RCPT),
                Some(_) => Action::Data,
            },
            Request::Rset => {
                self.tx = None;
                Action::Reply(reply::OK)
            }
            Request::Noop { .. } => Action::Reply(reply::OK),
            Request::Quit => Action::Quit,
            Request::Vrfy { .. } => Action::Reply(reply::VRFY),
            Request::Help { .. } => Action::Reply(reply::HELP),
            Request::StartTls => {
                if self.tls_active {
                    Action::Reply(reply::TLS_ACTIVE)
                } else if self.ctx.tls.is_none() {
                    Action::Reply(reply::NOT_IMPLEMENTED)
                } else if self.tx.is_some() {
                    Action::Reply(reply::TLS_IN_TRANSACTION)
                } else {
                    Action::StartTls
                }
            }
            // LMTP's greeting has no place on an SMTP port.
            Request::Lhlo { .. } => Action::Reply(reply::UNKNOWN_COMMAND),
            Request::Expn { .. }
            | Request::Bdat { .. }
            | Request::Auth { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Action::Reply(reply::NOT_IMPLEMENTED),
        }
    }

    async fn mail(&mut self, from: MailFrom<std::borrow::Cow<'_, str>>) -> Reply {
        let Some(helo) = self.helo.as_deref() else {
            return reply::NEED_HELO;
        };
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        if let Some(param) = unadvertised_mail_param(&from) {
            return reply::unsupported_parameter(param);
        }
        if from.size > self.ctx.handler.max_message_size() {
            return reply::TOO_BIG;
        }
        let mail_from = from.address.into_owned();
        let spf = self
            .ctx
            .config
            .dns
            .check_spf(self.peer.ip(), helo, &self.ctx.config.hostname, &mail_from)
            .await;
        self.tx = Some(Transaction {
            mail_from,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            rcpts: Vec::new(),
            spf,
        });
        reply::SENDER_OK
    }

    async fn rcpt(&mut self, to: RcptTo<std::borrow::Cow<'_, str>>) -> Reply {
        let max_recipients = self.ctx.config.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return reply::NEED_MAIL;
        };
        // NOTIFY/ORCPT (DSN) and RRVS are not advertised.
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return reply::unsupported_parameter("NOTIFY/ORCPT/RRVS");
        }
        if to.address.is_empty() {
            return reply::BAD_RECIPIENT;
        }
        if tx.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&to.address)) {
            return reply::RCPT_OK;
        }
        if tx.rcpts.len() >= max_recipients {
            return reply::TOO_MANY_RCPTS;
        }
        let verdict = self.ctx.handler.check_recipient(&to.address).await;
        if verdict == RcptVerdict::Accept {
            tx.rcpts.push(to.address.into_owned());
        }
        reply::rcpt(verdict)
    }

    /// Reads message content up to `<CRLF>.<CRLF>` and answers it. `None`
    /// means the connection must close (the closing reply, if any, is
    /// queued).
    async fn receive_data<S>(
        &mut self,
        stream: &mut S,
        io: &mut Io,
        shutdown: &mut Shutdown,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max_size = self.ctx.handler.max_message_size();
        let mut receiver = DataReceiver::new(max_size, self.ctx.config.limits.max_text_line);
        loop {
            if !io.input.is_empty() {
                let (used, done) = receiver.ingest(&io.input);
                io.input.drain(..used);
                if done {
                    break;
                }
            }
            match read_more(stream, io, self.ctx.config.timeouts.data_block, shutdown).await {
                Read::Data => {}
                Read::Eof | Read::Failed => return None,
                Read::Timeout => {
                    reply::TIMEOUT.write_to(&mut io.output);
                    return None;
                }
                Read::Shutdown => {
                    reply::SHUTTING_DOWN.write_to(&mut io.output);
                    return None;
                }
            }
        }

        // The transaction ends here whatever the outcome (RFC 5321 4.1.1.4).
        let tx = self.tx.take()?;
        if let Some(violation) = receiver.violation() {
            tracing::info!(peer = %self.peer, ?violation, size = receiver.size(), "message refused");
            return Some(match violation {
                DataViolation::TooBig => reply::TOO_BIG,
                DataViolation::BareLineEnding => reply::BARE_LINE_ENDING,
                DataViolation::LineTooLong => reply::LINE_TOO_LONG,
            });
        }
        let body = receiver.into_body();
        let deadline = self.ctx.config.timeouts.data_end;
        match tokio::time::timeout(deadline, self.finish(tx, body)).await {
            Ok(reply) => Some(reply),
            Err(_) => {
                tracing::warn!(peer = %self.peer, "message processing timed out");
                Some(reply::PROCESSING_TIMEOUT)
            }
        }
    }

    /// Authenticates and hands the message to the handler.
    async fn finish(&self, tx: Transaction, body: Vec<u8>) -> Reply {
        let helo = self.helo.clone().unwrap_or_default();
        let config = &self.ctx.config;
        let authenticated = config
            .dns
            .authenticate(
                Envelope {
                    ip: self.peer.ip(),
                    helo: &helo,
                    our_hostname: &config.hostname,
                    mail_from: &tx.mail_from,
                    spf: &tx.spf,
                },
                &body,
            )
            .await;
        drop(body);
        let header = authenticated.verdicts.header.as_bytes();
        let received = self.received_header(&helo, tx.smtputf8);
        let mut raw =
            Vec::with_capacity(header.len() + received.len() + authenticated.message.len());
        raw.extend_from_slice(header);
        raw.extend_from_slice(received.as_bytes());
        raw.extend_from_slice(&authenticated.message);
        drop(authenticated.message);
        if authenticated.verdicts.forged_verified_sender > 0 {
            tracing::warn!(
                peer = %self.peer,
                mail_from = %tx.mail_from,
                "removed forged X-Agentpost-Verified-Sender header"
            );
        }
        let message = InboundMessage {
            client_ip: self.peer.ip(),
            helo,
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpts,
            tls: self.tls_active,
            auth: authenticated.verdicts,
            raw,
        };
        let result = self.ctx.handler.deliver(message).await;
        match &result {
            Ok(id) => tracing::info!(peer = %self.peer, id = %id, "message accepted"),
            Err(err) => tracing::info!(peer = %self.peer, ?err, "delivery refused"),
        }
        reply::delivered(result)
    }
}

impl<H> Session<H> {
    /// The RFC 5321 4.4 trace field, with the RFC 3848 / RFC 6531 protocol
    /// keyword. Client-supplied text is reduced to printable characters so
    /// it cannot break the header.
    fn received_header(&self, helo: &str, smtputf8: bool) -> String {
        let helo: String = helo
            .chars()
            .map(|c| {
                if c.is_control() || c == '(' || c == ')' {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        let protocol = match (smtputf8, self.esmtp, self.tls_active) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
            (false, false, _) => "SMTP",
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (agentpost) with {protocol};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = self.ctx.config.hostname,
            date = chrono::Utc::now().to_rfc2822(),
        )
    }
}

/// MAIL FROM parameters of extensions we do not advertise get `555`
/// (RFC 5321 4.1.1.11): only SIZE, BODY=7BIT/8BITMIME and SMTPUTF8 are ours.
fn unadvertised_mail_param(from: &MailFrom<std::borrow::Cow<'_, str>>) -> Option<&'static str> {
    let ours = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
    if from.flags & MAIL_BODY_BINARYMIME != 0 {
        Some("BODY=BINARYMIME")
    } else if from.flags & !ours != 0
        || from.trans_id.is_some()
        || from.by != 0
        || from.env_id.is_some()
        || from.solicit.is_some()
        || from.mtrk.is_some()
        || from.auth.is_some()
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
    {
        Some("(extension not offered)")
    } else {
        None
    }
}

pub(crate) fn parse_error(err: ParseError) -> Reply {
    match err {
        ParseError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ParseError::InvalidSenderAddress => reply::BAD_SENDER,
        ParseError::InvalidRecipientAddress => reply::BAD_RECIPIENT,
        ParseError::SyntaxError { syntax } => reply::syntax(syntax),
        ParseError::InvalidParameter { param } => reply::invalid_parameter(param),
        ParseError::UnsupportedParameter { param } => reply::unsupported_parameter(&param),
        ParseError::ResponseTooLong => reply::LINE_TOO_LONG,
        // We only parse complete lines, so these mean a malformed one.
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            reply::syntax("command line not understood")
        }
    }
}

/// Takes one command line (through its LF) off the input buffer. Lines over
/// `max` octets are skipped up to their LF and reported once, in order.
pub(crate) fn take_line(io: &mut Io, max: usize) -> Line {
    match memchr::memchr(b'\n', &io.input) {
        Some(pos) => {
            let line: Vec<u8> = io.input.drain(..=pos).collect();
            if std::mem::take(&mut io.discarding) || line.len() > max {
                Line::TooLong
            } else {
                Line::Complete(line)
            }
        }
        None => {
            if io.discarding || io.input.len() > max {
                io.discarding = true;
                io.input.clear();
            }
            Line::Incomplete
        }
    }
}

pub(crate) async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, io: &mut Io) -> bool {
    if io.output.is_empty() {
        return true;
    }
    let ok = stream.write_all(&io.output).await.is_ok() && stream.flush().await.is_ok();
    io.output.clear();
    ok
}

pub(crate) async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    io: &mut Io,
    timeout: Duration,
    shutdown: &mut Shutdown,
) -> Read {
    io.input.reserve(16 * 1024);
    tokio::select! {
        result = tokio::time::timeout(timeout, stream.read_buf(&mut io.input)) => match result {
            Ok(Ok(0)) => Read::Eof,
            Ok(Ok(_)) => Read::Data,
            Ok(Err(_)) => Read::Failed,
            Err(_) => Read::Timeout,
        },
        _ = shutdown.recv() => Read::Shutdown,
    }
}
