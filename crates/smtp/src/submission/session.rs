//! One submission connection: the command state machine (greeting ->
//! EHLO -> [STARTTLS ->] AUTH -> MAIL -> RCPT -> DATA) and the AUTH
//! exchange.
//!
//! Line framing, buffered I/O, timeouts and the strict DATA receiver are the
//! inbound side's (`crate::session`, `crate::data`); only the state machine
//! differs. No SPF/DKIM/DMARC here (the client is authenticated) and no trace
//! header is added: the gate decides what the message gets.
//!
//! Nothing the client sends is logged verbatim, so an AUTH line (and the
//! app password in it) never reaches a trace.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING,
    EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME,
    MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::config::SubmissionConfig;
use super::handler::{AuthRefused, SubmissionHandler, SubmitOutcome};
use super::reply as sub;
use super::sasl::{Exchange, Mechanism, SaslError, Step};
use crate::data::{DataReceiver, DataViolation};
use crate::reply::{self, Reply};
use crate::server::Shutdown;
use crate::session::{Io, Line, Next, Read, flush, parse_error, read_more, take_line};

/// Shared, read-only per-listener context.
pub(crate) struct Context<H> {
    pub config: SubmissionConfig,
    pub handler: Arc<H>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What a command asks the connection to do next.
enum Action {
    Reply(Reply),
    Ehlo,
    Auth {
        mechanism: Mechanism,
        initial_response: Option<String>,
    },
    Data,
    StartTls,
    Quit,
}

struct Transaction {
    mail_from: String,
    rcpts: Vec<String>,
}

/// Why reading the next line did not give one.
enum NoLine {
    /// The line was longer than allowed; it has been skipped.
    TooLong,
    /// The connection is finished (closing reply sent, if any).
    Closed,
}

pub(crate) struct Session<H: SubmissionHandler> {
    ctx: Arc<Context<H>>,
    peer: SocketAddr,
    tls_active: bool,
    greeted: bool,
    identity: Option<H::Identity>,
    /// The username the identity was established with, for logs.
    username: String,
    tx: Option<Transaction>,
    errors: usize,
    auth_failures: usize,
}

impl<H: SubmissionHandler> Session<H> {
    pub(crate) fn new(ctx: Arc<Context<H>>, peer: SocketAddr, tls_active: bool) -> Self {
        Session {
            ctx,
            peer,
            tls_active,
            greeted: false,
            identity: None,
            username: String::new(),
            tx: None,
            errors: 0,
            auth_failures: 0,
        }
    }

    /// The greeting sent once per TCP connection.
    pub(crate) fn greeting(&self) -> Reply {
        Reply::plain(
            220,
            format!("{} ESMTP agentpost submission", self.ctx.config.hostname),
        )
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
        let max_command = self.ctx.config.limits.max_command_line;
        loop {
            let line = match self.next_line(stream, io, shutdown).await {
                // AUTH may carry a long initial response (RFC 4954 4).
                Ok(line) if line.len() > max_command && !is_auth_command(&line) => {
                    if self.push_reply(io, reply::LINE_TOO_LONG) {
                        return self.close(stream, io).await;
                    }
                    continue;
                }
                Ok(line) => line,
                Err(NoLine::TooLong) => {
                    if self.push_reply(io, reply::LINE_TOO_LONG) {
                        return self.close(stream, io).await;
                    }
                    continue;
                }
                Err(NoLine::Closed) => return self.close(stream, io).await,
            };

            match self.command(&line).await {
                Action::Reply(reply) => {
                    if self.push_reply(io, reply) {
                        return self.close(stream, io).await;
                    }
                }
                Action::Ehlo => self.write_ehlo(io),
                Action::Auth {
                    mechanism,
                    initial_response,
                } => {
                    let reply = match self
                        .authenticate(stream, io, shutdown, mechanism, initial_response)
                        .await
                    {
                        Ok(reply) => reply,
                        Err(NoLine::TooLong) => reply::LINE_TOO_LONG,
                        Err(NoLine::Closed) => return self.close(stream, io).await,
                    };
                    let close = self.push_reply(io, reply);
                    let max_failures = self.ctx.config.max_auth_failures.max(1);
                    if !close && self.auth_failures >= max_failures {
                        tracing::warn!(
                            peer = %self.peer,
                            failures = self.auth_failures,
                            "too many authentication failures, closing"
                        );
                        sub::TOO_MANY_AUTH_FAILURES.write_to(&mut io.output);
                        return self.close(stream, io).await;
                    }
                    if close {
                        return self.close(stream, io).await;
                    }
                }
                Action::Quit => {
                    reply::BYE.write_to(&mut io.output);
                    return self.close(stream, io).await;
                }
                Action::StartTls => {
                    reply::START_TLS.write_to(&mut io.output);
                    if !flush(stream, io).await {
                        return Next::Close;
                    }
                    // RFC 3207 4.2 (and CVE-2011-0411): anything pipelined
                    // after STARTTLS was sent in clear text and must not be
                    // executed inside the TLS session.
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

    /// The next line from the client, reading (and first flushing pending
    /// replies) as needed. On timeout or shutdown the closing `421` is
    /// queued and `Closed` returned.
    async fn next_line<S>(
        &mut self,
        stream: &mut S,
        io: &mut Io,
        shutdown: &mut Shutdown,
    ) -> Result<Vec<u8>, NoLine>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let config = &self.ctx.config;
        let frame_limit = config.limits.max_command_line.max(config.max_auth_line);
        loop {
            match take_line(io, frame_limit) {
                Line::Complete(line) => return Ok(line),
                Line::TooLong => return Err(NoLine::TooLong),
                Line::Incomplete => {}
            }
            if !flush(stream, io).await {
                return Err(NoLine::Closed);
            }
            match read_more(stream, io, config.timeouts.command, shutdown).await {
                Read::Data => {}
                Read::Eof | Read::Failed => return Err(NoLine::Closed),
                Read::Timeout => {
                    reply::TIMEOUT.write_to(&mut io.output);
                    return Err(NoLine::Closed);
                }
                Read::Shutdown => {
                    reply::SHUTTING_DOWN.write_to(&mut io.output);
                    return Err(NoLine::Closed);
                }
            }
        }
    }

    /// Queues a reply; returns true when the connection must close: a `421`
    /// (ours or a handler's), or too many errors (the closing `421` is then
    /// queued too).
    fn push_reply(&mut self, io: &mut Io, reply: Reply) -> bool {
        reply.write_to(&mut io.output);
        if reply.code == 421 {
            return true;
        }
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

    fn auth_allowed(&self) -> bool {
        self.tls_active || self.ctx.config.allow_plaintext_auth
    }

    fn write_ehlo(&self, io: &mut Io) {
        let mut ehlo = EhloResponse::new(self.ctx.config.hostname.as_str());
        ehlo.capabilities =
            EXT_PIPELINING | EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_SIZE | EXT_ENHANCED_STATUS_CODES;
        if self.ctx.tls.is_some() && !self.tls_active {
            ehlo.capabilities |= EXT_START_TLS;
        }
        if self.auth_allowed() {
            ehlo.capabilities |= EXT_AUTH;
            ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
        }
        ehlo.size = self.ctx.config.max_message_size;
        // Writing into a Vec cannot fail.
        let _ = ehlo.write(&mut io.output);
    }

    async fn command(&mut self, line: &[u8]) -> Action {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(err) => return Action::Reply(parse_error(err)),
        };
        match request {
            Request::Ehlo { .. } => {
                // Like RSET; the authentication (if any) stays.
                self.tx = None;
                self.greeted = true;
                Action::Ehlo
            }
            Request::Helo { .. } => {
                self.tx = None;
                self.greeted = true;
                Action::Reply(Reply::plain(250, self.ctx.config.hostname.clone()))
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth_command(mechanism, initial_response),
            Request::Mail { from } => Action::Reply(self.mail(from).await),
            Request::Rcpt { to } => Action::Reply(self.rcpt(to).await),
            Request::Data => match &self.tx {
                None if self.identity.is_none() => Action::Reply(sub::AUTH_REQUIRED),
                None => Action::Reply(reply::NEED_MAIL),
                Some(tx) if tx.rcpts.is_empty() => Action::Reply(sub::NO_VALID_RCPT),
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
            Request::Lhlo { .. } => Action::Reply(reply::UNKNOWN_COMMAND),
            Request::Expn { .. }
            | Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Action::Reply(reply::NOT_IMPLEMENTED),
        }
    }

    /// Checks whether an AUTH command may start an exchange (RFC 4954 4).
    fn auth_command(&self, mechanism: u64, initial_response: Cow<'_, str>) -> Action {
        if !self.greeted {
            return Action::Reply(reply::NEED_HELO);
        }
        // Also covers "not during a transaction": MAIL needs AUTH first.
        if self.identity.is_some() {
            return Action::Reply(sub::ALREADY_AUTHENTICATED);
        }
        if !self.auth_allowed() {
            return Action::Reply(sub::ENCRYPTION_REQUIRED);
        }
        let mechanism = match mechanism {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            _ => return Action::Reply(sub::AUTH_UNKNOWN_MECHANISM),
        };
        let initial_response = if initial_response.is_empty() {
            None
        } else {
            Some(initial_response.into_owned())
        };
        Action::Auth {
            mechanism,
            initial_response,
        }
    }

    /// Runs a SASL exchange (334 challenges) and asks the handler. Returns
    /// the final reply; the failure cap is checked by the caller.
    async fn authenticate<S>(
        &mut self,
        stream: &mut S,
        io: &mut Io,
        shutdown: &mut Shutdown,
        mechanism: Mechanism,
        initial_response: Option<String>,
    ) -> Result<Reply, NoLine>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut exchange, mut step) = Exchange::start(mechanism, initial_response.as_deref());
        drop(initial_response);
        let credentials = loop {
            match step {
                Step::Done(credentials) => break credentials,
                Step::Failed(SaslError::Cancelled) => return Ok(sub::AUTH_CANCELLED),
                Step::Failed(SaslError::BadEncoding) => return Ok(sub::AUTH_BAD_ENCODING),
                Step::Failed(SaslError::ForeignAuthzid) => {
                    return Ok(self.auth_failed("(authzid differs)").await);
                }
                Step::Challenge(challenge) => {
                    sub::challenge(challenge).write_to(&mut io.output);
                    let line = self.next_line(stream, io, shutdown).await?;
                    (exchange, step) = exchange.respond(&line);
                }
            }
        };

        let result = self
            .ctx
            .handler
            .authenticate(&credentials.username, &credentials.password, self.peer.ip())
            .await;
        match result {
            Ok(identity) => {
                tracing::info!(peer = %self.peer, username = %credentials.username, ?mechanism, "authenticated");
                self.identity = Some(identity);
                self.username = credentials.username;
                Ok(sub::AUTH_OK)
            }
            Err(AuthRefused::Temporary) => {
                tracing::warn!(peer = %self.peer, username = %credentials.username, "authentication temporarily unavailable");
                Ok(sub::AUTH_TEMPORARY)
            }
            Err(AuthRefused::Invalid) => Ok(self.auth_failed(&credentials.username).await),
        }
    }

    /// Counts a failed attempt and waits a little longer each time before
    /// answering `535`, to slow down guessing.
    async fn auth_failed(&mut self, username: &str) -> Reply {
        self.auth_failures += 1;
        tracing::info!(
            peer = %self.peer,
            username,
            failures = self.auth_failures,
            "authentication failed"
        );
        let factor = u32::try_from(self.auth_failures).unwrap_or(u32::MAX);
        let delay = self.ctx.config.auth_failure_delay.saturating_mul(factor);
        tokio::time::sleep(delay).await;
        sub::AUTH_INVALID
    }

    async fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Reply {
        if !self.greeted {
            return reply::NEED_HELO;
        }
        let Some(identity) = self.identity.as_ref() else {
            return sub::AUTH_REQUIRED;
        };
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        if let Some(param) = unadvertised_mail_param(&from) {
            return reply::unsupported_parameter(param);
        }
        if from.size > self.ctx.config.max_message_size {
            return reply::TOO_BIG;
        }
        let mail_from = from.address.into_owned();
        match self.ctx.handler.check_sender(identity, &mail_from).await {
            Ok(()) => {
                self.tx = Some(Transaction {
                    mail_from,
                    rcpts: Vec::new(),
                });
                reply::SENDER_OK
            }
            Err(refusal) => {
                tracing::info!(peer = %self.peer, username = %self.username, %mail_from, %refusal, "sender refused");
                sub::refusal(&refusal)
            }
        }
    }

    async fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Reply {
        let max_recipients = self.ctx.config.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return if self.identity.is_none() {
                sub::AUTH_REQUIRED
            } else {
                reply::NEED_MAIL
            };
        };
        let Some(identity) = self.identity.as_ref() else {
            return sub::AUTH_REQUIRED;
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
        let checked = self
            .ctx
            .handler
            .check_recipient(identity, &to.address, tx.rcpts.len())
            .await;
        match checked {
            Ok(()) => {
                tx.rcpts.push(to.address.into_owned());
                reply::RCPT_OK
            }
            Err(refusal) => {
                tracing::info!(peer = %self.peer, username = %self.username, rcpt = %to.address, %refusal, "recipient refused");
                sub::refusal(&refusal)
            }
        }
    }

    /// Reads message content up to `<CRLF>.<CRLF>` with the strict inbound
    /// receiver and answers it. `None` means the connection must close (the
    /// closing reply, if any, is queued).
    async fn receive_data<S>(
        &mut self,
        stream: &mut S,
        io: &mut Io,
        shutdown: &mut Shutdown,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let config = &self.ctx.config;
        let mut receiver = DataReceiver::new(config.max_message_size, config.limits.max_text_line);
        loop {
            if !io.input.is_empty() {
                let (used, done) = receiver.ingest(&io.input);
                io.input.drain(..used);
                if done {
                    break;
                }
            }
            match read_more(stream, io, config.timeouts.data_block, shutdown).await {
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
            tracing::info!(peer = %self.peer, username = %self.username, ?violation, size = receiver.size(), "message refused");
            return Some(match violation {
                DataViolation::TooBig => reply::TOO_BIG,
                DataViolation::BareLineEnding => reply::BARE_LINE_ENDING,
                DataViolation::LineTooLong => reply::LINE_TOO_LONG,
            });
        }
        let identity = self.identity.as_ref()?;
        let message = receiver.into_body();
        let size = message.len();
        let submit =
            self.ctx
                .handler
                .submit(identity, &tx.mail_from, &tx.rcpts, message, self.peer.ip());
        let outcome = match tokio::time::timeout(config.timeouts.data_end, submit).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(peer = %self.peer, username = %self.username, "submission timed out");
                return Some(reply::PROCESSING_TIMEOUT);
            }
        };
        match &outcome {
            SubmitOutcome::Queued { id } => {
                tracing::info!(peer = %self.peer, username = %self.username, id, size, rcpts = tx.rcpts.len(), "message queued")
            }
            SubmitOutcome::Held { send_id } => {
                tracing::info!(peer = %self.peer, username = %self.username, send_id, size, rcpts = tx.rcpts.len(), "message held for confirmation")
            }
            SubmitOutcome::Refused(refusal) => {
                tracing::info!(peer = %self.peer, username = %self.username, %refusal, "message refused by the gate")
            }
        }
        Some(sub::outcome(&outcome))
    }
}

/// `AUTH <...>` (case-insensitive), the one command allowed past
/// `max_command_line`.
fn is_auth_command(line: &[u8]) -> bool {
    line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// MAIL FROM parameters of extensions we do not advertise get `555`
/// (RFC 5321 4.1.1.11): SIZE, BODY=7BIT/8BITMIME, SMTPUTF8 and AUTH=
/// (RFC 4954 5, accepted and ignored: the session's identity is what
/// counts) are ours.
fn unadvertised_mail_param(from: &MailFrom<Cow<'_, str>>) -> Option<&'static str> {
    let ours = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
    if from.flags & MAIL_BODY_BINARYMIME != 0 {
        Some("BODY=BINARYMIME")
    } else if from.flags & !ours != 0
        || from.trans_id.is_some()
        || from.by != 0
        || from.env_id.is_some()
        || from.solicit.is_some()
        || from.mtrk.is_some()
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
    {
        Some("(extension not offered)")
    } else {
        None
    }
}
