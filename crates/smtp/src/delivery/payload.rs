//! The DATA payload: CRLF line endings, dot-stuffing, the final dot.
//!
//! Done here rather than by `mail-send` 0.6 (`SmtpClient::write_message`):
//! that one dot-stuffs correctly but keeps bare LF and bare CR, which RFC
//! 5321 4.1.1.4 forbids and strict receivers refuse, and it always writes
//! CRLF before the final dot, adding an empty line to a message that already
//! ends with CRLF.

/// A message ready to be written after `354`, terminator included.
pub(crate) struct Payload {
    /// The wire bytes, ending with `CRLF . CRLF`.
    pub(crate) bytes: Vec<u8>,
    /// Size of the message itself (CRLF form, before dot-stuffing), for
    /// `SIZE=`.
    pub(crate) size: usize,
    /// Any octet above 127 (for `BODY=8BITMIME`).
    pub(crate) eight_bit: bool,
}

impl Payload {
    pub(crate) fn prepare(message: &[u8]) -> Payload {
        let mut bytes = Vec::with_capacity(message.len() + message.len() / 64 + 8);
        let mut size = 0;
        let mut line_start = true;
        let mut iter = message.iter().copied().peekable();
        while let Some(byte) = iter.next() {
            match byte {
                b'\r' => {
                    // CRLF stays; a bare CR becomes CRLF.
                    if iter.peek() == Some(&b'\n') {
                        iter.next();
                    }
                    bytes.extend_from_slice(b"\r\n");
                    size += 2;
                    line_start = true;
                }
                b'\n' => {
                    bytes.extend_from_slice(b"\r\n");
                    size += 2;
                    line_start = true;
                }
                _ => {
                    if line_start && byte == b'.' {
                        // RFC 5321 4.5.2: transparency.
                        bytes.push(b'.');
                    }
                    bytes.push(byte);
                    size += 1;
                    line_start = false;
                }
            }
        }
        if !line_start {
            bytes.extend_from_slice(b"\r\n");
            size += 2;
        }
        bytes.extend_from_slice(b".\r\n");
        Payload {
            bytes,
            size,
            eight_bit: message.iter().any(|&b| b >= 0x80),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(message: &str) -> String {
        String::from_utf8(Payload::prepare(message.as_bytes()).bytes).expect("utf-8")
    }

    #[test]
    fn crlf_and_dots() {
        assert_eq!(wire("A: b\r\n\r\nbody\r\n"), "A: b\r\n\r\nbody\r\n.\r\n");
        assert_eq!(wire("A: b\n\nbody"), "A: b\r\n\r\nbody\r\n.\r\n");
        assert_eq!(wire(".\n..x\n"), "..\r\n...x\r\n.\r\n");
        assert_eq!(wire("a\rb\r\r\nc"), "a\r\nb\r\n\r\nc\r\n.\r\n");
        assert_eq!(
            wire("x\n.\r\nMAIL FROM:<>"),
            "x\r\n..\r\nMAIL FROM:<>\r\n.\r\n"
        );
        assert_eq!(wire("a.b\n"), "a.b\r\n.\r\n");
        assert_eq!(wire(""), ".\r\n");
    }

    #[test]
    fn size_and_eight_bit() {
        let payload = Payload::prepare("a\n.b\n".as_bytes());
        assert_eq!(payload.size, 7);
        assert!(!payload.eight_bit);
        assert!(Payload::prepare("é".as_bytes()).eight_bit);
    }
}
