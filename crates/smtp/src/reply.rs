//! SMTP replies: every code the receiver sends, in one place.
//!
//! Each reply carries an RFC 3463 enhanced status code (we advertise
//! ENHANCEDSTATUSCODES), except the greeting and the HELO/EHLO answers, which
//! RFC 2034 leaves without one.

use std::borrow::Cow;

use crate::handler::{DeliverError, RcptVerdict};

/// One single-line SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code; `None` only for greeting/HELO-style replies.
    pub status: Option<(u8, u8, u8)>,
    pub text: Cow<'static, str>,
}

const fn r(code: u16, a: u8, b: u8, c: u8, text: &'static str) -> Reply {
    Reply {
        code,
        status: Some((a, b, c)),
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    /// A reply with dynamic text; CR and LF are replaced so that text from a
    /// handler can never break the reply framing.
    pub fn dynamic(code: u16, status: (u8, u8, u8), text: impl Into<String>) -> Self {
        let text: String = text
            .into()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Reply {
            code,
            status: Some(status),
            text: Cow::Owned(text),
        }
    }

    /// A reply without an enhanced status code (greeting, HELO).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: None,
            text: Cow::Owned(text.into()),
        }
    }

    /// Appends the wire form (`"250 2.0.0 Ok\r\n"`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let line = match self.status {
            Some((a, b, c)) => format!("{} {a}.{b}.{c} {}\r\n", self.code, self.text),
            None => format!("{} {}\r\n", self.code, self.text),
        };
        out.extend_from_slice(line.as_bytes());
    }

    /// The wire form as a string.
    #[cfg(test)]
    pub fn to_line(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

// Positive completions.
pub const OK: Reply = r(250, 2, 0, 0, "Ok");
pub const SENDER_OK: Reply = r(250, 2, 1, 0, "Ok");
pub const RCPT_OK: Reply = r(250, 2, 1, 5, "Ok");
pub const BYE: Reply = r(221, 2, 0, 0, "Bye");
pub const START_DATA: Reply = r(354, 2, 0, 0, "End data with <CR><LF>.<CR><LF>");
pub const START_TLS: Reply = r(220, 2, 0, 0, "Ready to start TLS");
pub const VRFY: Reply = r(
    252,
    2,
    0,
    0,
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = r(214, 2, 0, 0, "See RFC 5321");

// Sequence, syntax and command errors.
pub const NEED_HELO: Reply = r(503, 5, 5, 1, "Send HELO/EHLO first");
pub const NESTED_MAIL: Reply = r(503, 5, 5, 1, "Nested MAIL command");
pub const NEED_MAIL: Reply = r(503, 5, 5, 1, "Need MAIL command");
pub const NO_VALID_RCPT: Reply = r(554, 5, 5, 1, "No valid recipients");
pub const TLS_ACTIVE: Reply = r(503, 5, 5, 1, "TLS already active");
pub const TLS_IN_TRANSACTION: Reply = r(
    503,
    5,
    5,
    1,
    "STARTTLS not allowed during a mail transaction",
);
pub const UNKNOWN_COMMAND: Reply = r(500, 5, 5, 1, "Command unrecognized");
pub const NOT_IMPLEMENTED: Reply = r(502, 5, 5, 1, "Command not implemented");
pub const LINE_TOO_LONG: Reply = r(500, 5, 5, 2, "Line too long");
pub const BAD_SENDER: Reply = r(501, 5, 1, 7, "Bad sender address syntax");
pub const BAD_RECIPIENT: Reply = r(501, 5, 1, 3, "Bad recipient address syntax");
pub const TOO_MANY_ERRORS: Reply = r(421, 4, 7, 0, "Too many errors, closing connection");

// Limits.
pub const TOO_BIG: Reply = r(
    552,
    5,
    3,
    4,
    "Message size exceeds fixed maximum message size",
);
pub const TOO_MANY_RCPTS: Reply = r(452, 4, 5, 3, "Too many recipients");
pub const TOO_MANY_CONNECTIONS: Reply = r(421, 4, 7, 0, "Too many connections, try again later");
pub const TOO_MANY_FROM_IP: Reply = r(
    421,
    4,
    7,
    0,
    "Too many connections from your address, try again later",
);
pub const TIMEOUT: Reply = r(421, 4, 4, 2, "Timeout exceeded, closing connection");
pub const SHUTTING_DOWN: Reply = r(421, 4, 3, 2, "Service shutting down, closing connection");

// DATA content violations.
pub const BARE_LINE_ENDING: Reply = r(
    550,
    5,
    6,
    0,
    "Message refused: bare CR or LF in message content (only CRLF line endings allowed)",
);

/// The `501 5.5.4` reply for a malformed command.
pub fn syntax(usage: &str) -> Reply {
    Reply::dynamic(501, (5, 5, 4), format!("Syntax: {usage}"))
}

/// The `501 5.5.4` reply for a bad MAIL/RCPT parameter value.
pub fn invalid_parameter(param: &str) -> Reply {
    Reply::dynamic(501, (5, 5, 4), format!("Invalid parameter {param}"))
}

/// The `555 5.5.4` reply for an unknown MAIL/RCPT parameter (RFC 5321 4.2.3).
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::dynamic(555, (5, 5, 4), format!("Unsupported parameter {param}"))
}

/// The answer to a RCPT verdict.
pub fn rcpt(verdict: RcptVerdict) -> Reply {
    match verdict {
        RcptVerdict::Accept => RCPT_OK,
        RcptVerdict::Unknown | RcptVerdict::Gone => {
            r(550, 5, 1, 1, "Recipient address rejected: no such mailbox")
        }
        RcptVerdict::Suspended => r(450, 4, 2, 1, "Mailbox temporarily unavailable"),
        RcptVerdict::MailboxFull => r(452, 4, 2, 2, "Mailbox full"),
        RcptVerdict::TempFail => r(451, 4, 3, 0, "Temporary failure, try again later"),
    }
}

/// The answer after DATA once the handler has (or has not) stored it.
pub fn delivered(result: Result<String, DeliverError>) -> Reply {
    match result {
        Ok(id) => Reply::dynamic(250, (2, 0, 0), format!("Ok: queued as {id}")),
        Err(DeliverError::Temp) => r(451, 4, 3, 0, "Temporary failure, try again later"),
        Err(DeliverError::Full) => r(452, 4, 2, 2, "Mailbox full"),
        Err(DeliverError::Perm(msg)) => Reply::dynamic(554, (5, 6, 0), msg),
    }
}

/// The reply when message processing took longer than allowed.
pub const PROCESSING_TIMEOUT: Reply = r(451, 4, 3, 0, "Temporary failure, try again later");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_enhanced_code_and_crlf() {
        assert_eq!(OK.to_line(), "250 2.0.0 Ok\r\n");
        assert_eq!(Reply::plain(220, "mx ESMTP").to_line(), "220 mx ESMTP\r\n");
    }

    #[test]
    fn handler_text_cannot_inject_lines() {
        let reply = delivered(Err(DeliverError::Perm("no\r\n250 fake".into())));
        assert_eq!(reply.to_line(), "554 5.6.0 no  250 fake\r\n");
    }
}
