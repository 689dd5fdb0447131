//! Strict, sans-IO receiver for the `DATA` phase.
//!
//! Hand-written rather than `smtp_proto::request::receiver::DataReceiver`
//! because that receiver is lenient in ways that matter here (checked against
//! smtp-proto 0.2.5):
//! - it copies bare CR and bare LF into the message, so SMTP-smuggling
//!   payloads (`\n.\r\n`, `\r.\r\n`, `\n.\n`, ...) end up stored inside one
//!   message and would be re-sent as-is to any lenient next hop;
//! - it only recognises a dot at the start of a line *after* a CRLF it has
//!   seen itself, so an empty message (`DATA`, `.`) never ends and a stuffed
//!   dot on the first line is not removed;
//! - it has no size or line-length limit.
//!
//! This receiver ends data only at `<CRLF>.<CRLF>` (the CRLF that ended the
//! `DATA` command counts as the first one), records the first violation
//! (bare CR/LF, over-long line, over-size) and keeps consuming until the real
//! terminator, so nothing after a fake terminator is ever read as a command.
//! Once the size limit is crossed it stops buffering.

/// Why a message must be refused once its data has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataViolation {
    /// More than the allowed number of octets: `552 5.3.4`.
    TooBig,
    /// A CR not followed by LF, or an LF not preceded by CR: `550 5.6.0`.
    BareLineEnding,
    /// A line longer than the limit (octets including CRLF): `500 5.5.2`.
    LineTooLong,
}

/// Consumes the bytes of one DATA phase.
#[derive(Debug)]
pub struct DataReceiver {
    body: Vec<u8>,
    /// Octets of message content seen (after unstuffing), buffered or not.
    size: usize,
    max_size: usize,
    max_line: usize,
    /// Octets in the current line so far, as sent (before unstuffing).
    line_len: usize,
    /// At the first octet of a line.
    line_start: bool,
    /// The current line began with a dot that we removed; if it is followed
    /// directly by CRLF, this is the end of data.
    dot_line: bool,
    /// The previous octet was a CR whose LF we are waiting for.
    cr: bool,
    violation: Option<DataViolation>,
}

impl DataReceiver {
    /// `max_size`: message octets allowed; `max_line`: line length in octets
    /// including CRLF (RFC 5321 4.5.3.1.6 says 1000).
    pub fn new(max_size: usize, max_line: usize) -> Self {
        DataReceiver {
            body: Vec::new(),
            size: 0,
            max_size,
            max_line,
            line_len: 0,
            line_start: true,
            dot_line: false,
            cr: false,
            violation: None,
        }
    }

    /// Feeds bytes; returns how many were consumed and whether the end of
    /// data was reached. Bytes after the terminator are left unconsumed (they
    /// are the next pipelined commands).
    pub fn ingest(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < bytes.len() {
            // Fast path: copy a run of ordinary octets in one go.
            if !self.cr && !self.line_start && !self.dot_line {
                let run_end =
                    memchr::memchr2(b'\r', b'\n', &bytes[i..]).map_or(bytes.len(), |p| i + p);
                if run_end > i {
                    self.line_len += run_end - i;
                    self.check_line();
                    self.push(&bytes[i..run_end]);
                    i = run_end;
                    continue;
                }
            }

            let b = bytes[i];
            i += 1;
            self.line_len += 1;
            self.check_line();

            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    if self.dot_line {
                        return (i, true);
                    }
                    self.push(b"\r\n");
                    self.line_start = true;
                    self.line_len = 0;
                    continue;
                }
                // CR followed by something else: a bare CR. Keep the CR as
                // content (the message is refused anyway) and look at `b`
                // as an ordinary octet of the same line.
                // A dot after it must not count as the start of a line, or
                // `<CRLF><CR>.<CRLF>` would end data.
                self.violate(DataViolation::BareLineEnding);
                self.push(b"\r");
                self.line_start = false;
                self.dot_line = false;
            }

            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    // A bare LF never ends a line here: a dot after it is
                    // content, not a terminator.
                    self.violate(DataViolation::BareLineEnding);
                    self.push(b"\n");
                    self.line_start = false;
                    self.dot_line = false;
                }
                b'.' if self.line_start => {
                    // RFC 5321 4.5.2: drop the first dot of a line.
                    self.line_start = false;
                    self.dot_line = true;
                }
                _ => {
                    self.push(&[b]);
                    self.line_start = false;
                    self.dot_line = false;
                }
            }
        }
        (bytes.len(), false)
    }

    /// The first violation seen, if any.
    pub fn violation(&self) -> Option<DataViolation> {
        self.violation
    }

    /// Message octets received (after unstuffing), counted even past the
    /// limit.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The message; empty if it was too big.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    fn check_line(&mut self) {
        // `line_len` counts the CR and LF too, like RFC 5321's 1000.
        if self.line_len > self.max_line {
            self.violate(DataViolation::LineTooLong);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size > self.max_size {
            self.violate(DataViolation::TooBig);
            // Stop buffering: keep reading to the end of data, then reply.
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }

    fn violate(&mut self, violation: DataViolation) {
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (DataReceiver, Option<Vec<u8>>) {
        let mut rx = DataReceiver::new(1 << 20, 1000);
        for chunk in chunks {
            let (used, done) = rx.ingest(chunk);
            if done {
                return (rx, Some(chunk[used..].to_vec()));
            }
        }
        (rx, None)
    }

    #[test]
    fn plain_message_and_rest() {
        let (rx, rest) = run(&[b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"]);
        assert_eq!(rest.as_deref(), Some(&b"QUIT\r\n"[..]));
        assert_eq!(rx.violation(), None);
        assert_eq!(rx.into_body(), b"Subject: x\r\n\r\nhi\r\n");
    }

    #[test]
    fn empty_message_and_first_line_unstuffing() {
        let (rx, rest) = run(&[b".\r\n"]);
        assert!(rest.is_some());
        assert!(rx.into_body().is_empty());
        let (rx, _) = run(&[b"..a\r\n..\r\n.\r\n"]);
        assert_eq!(rx.into_body(), b".a\r\n.\r\n");
    }

    #[test]
    fn terminator_split_across_chunks() {
        let (rx, rest) = run(&[b"a\r", b"\n", b".", b"\r", b"\nX"]);
        assert_eq!(rest.as_deref(), Some(&b"X"[..]));
        assert_eq!(rx.into_body(), b"a\r\n");
    }

    #[test]
    fn smuggling_terminators_are_content_and_flagged() {
        for fake in [
            &b"\n.\r\n"[..],
            b"\r.\r\n",
            b"\r\n.\n",
            b"\n.\n",
            b"\r\n.\r",
            b"\r.\r",
            b"\r\n.\rX",
            b"\r\n\r.\r\n",
            b"\r\n\n.\r\n",
        ] {
            let mut msg = b"Subject: s\r\n\r\nbody".to_vec();
            msg.extend_from_slice(fake);
            msg.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n");
            let mut rx = DataReceiver::new(1 << 20, 1000);
            let (used, done) = rx.ingest(&msg);
            assert!(!done, "fake terminator {fake:?} ended data");
            assert_eq!(used, msg.len());
            assert_eq!(
                rx.violation(),
                Some(DataViolation::BareLineEnding),
                "{fake:?}"
            );
            let (_, done) = rx.ingest(b".\r\n");
            assert!(done);
        }
    }

    #[test]
    fn size_limit_stops_buffering() {
        let mut rx = DataReceiver::new(10, 1000);
        let (_, done) = rx.ingest(b"0123456789abcdef\r\n.\r\n");
        assert!(done);
        assert_eq!(rx.violation(), Some(DataViolation::TooBig));
        assert!(rx.into_body().is_empty());
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        let (rx, _) = run(&[&ok]);
        assert_eq!(rx.violation(), None);
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (rx, _) = run(&[&long]);
        assert_eq!(rx.violation(), Some(DataViolation::LineTooLong));
    }
}
