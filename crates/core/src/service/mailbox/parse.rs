//! Turns a raw RFC 5322 message into the metadata the mailbox stores and
//! searches. Parsing is `mail-parser`'s (robust, fuzzed); this file only
//! picks fields and normalises them. It never fails: a message too broken
//! to parse is still stored, with empty metadata.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

/// How much safe text a `message.received` event carries (webhook payloads
/// stay small; the full view is one API call away).
const EVENT_TEXT_BYTES: usize = 16 * 1024;
/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;
/// Body text indexed for search, in bytes (the rest is not searchable).
const SEARCH_BODY_BYTES: usize = 200_000;

/// A mailbox (name and address) from a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailAddress {
    pub name: Option<String>,
    pub address: Option<String>,
}

/// One attachment's metadata; its bytes are read from the raw message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachmentInfo {
    /// Position among the message's attachments; the download path uses it.
    pub index: u32,
    pub name: Option<String>,
    pub content_type: String,
    /// Decoded size in bytes.
    pub size_bytes: i64,
    pub content_id: Option<String>,
    /// `inline` or `attachment`, as the sender marked it (default attachment).
    pub disposition: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Parsed {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: Option<String>,
    /// Subject without `Re:`/`Fwd:` prefixes, lowercased: the thread key.
    pub subject_key: String,
    pub from: Vec<EmailAddress>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub reply_to: Vec<EmailAddress>,
    pub date_at: Option<i64>,
    pub snippet: Option<String>,
    /// Injection risk of the safe view: none, low, medium or high.
    pub risk: String,
    /// The safe view's text, bounded, for `message.received` events.
    pub safe_text: String,
    /// Kinds of what the safe view removed (hidden_css, …).
    pub finding_kinds: Vec<String>,
    pub search_body: String,
    pub attachments: Vec<AttachmentInfo>,
}

impl Parsed {
    /// Lowercased addresses of From, To and Cc, sorted and unique: threads
    /// fall back to "same subject among the same participants".
    pub fn participants(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .from
            .iter()
            .chain(&self.to)
            .chain(&self.cc)
            .filter_map(|a| a.address.as_deref())
            .map(str::to_lowercase)
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

fn addresses(a: Option<&Address<'_>>) -> Vec<EmailAddress> {
    let Some(a) = a else { return vec![] };
    a.iter()
        .map(|x| EmailAddress {
            name: x.name().map(safe_line).filter(|s| !s.is_empty()),
            address: x.address().map(clean_line).filter(|s| !s.is_empty()),
        })
        .filter(|x| x.name.is_some() || x.address.is_some())
        .take(500)
        .collect()
}

/// Header text for display: no control characters, bounded.
fn clean_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect();
    s.trim().to_string()
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    let mut out: Vec<String> = match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => vec![],
    };
    out.retain(|s| !s.is_empty() && s.len() <= 998);
    out.truncate(100);
    out
}

/// A header value as a human would see it: invisible and bidi controls
/// removed by the safety crate, whitespace collapsed.
fn safe_line(s: &str) -> String {
    clean_line(&agentpost_safety::clean_field(s).text)
}

/// Collapses whitespace; used for the snippet.
fn squash(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= max_chars {
            break;
        }
    }
    let out: String = out
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    out
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The thread key of a subject (RFC 5256 base subject, lowercased).
pub(crate) fn subject_key(subject: Option<&str>) -> String {
    let Some(s) = subject else {
        return String::new();
    };
    let mut base = mail_parser::parsers::fields::thread::thread_name(s)
        .trim()
        .to_string();
    // thread_name handles Re:/Fwd:/[list] prefixes; localised ones are common too.
    loop {
        let lower = base.to_lowercase();
        let stripped = ["aw:", "wg:", "sv:", "vs:", "antw:", "tr:", "rif:", "r:"]
            .iter()
            .find_map(|p| {
                lower
                    .starts_with(p)
                    .then(|| base[p.len()..].trim().to_string())
            });
        match stripped {
            Some(s) => base = s,
            None => break,
        }
    }
    squash(&base, 500).to_lowercase()
}

pub(crate) fn parse(raw: &[u8]) -> Parsed {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Parsed::default();
    };
    // Subjects and snippets are what list endpoints show agents: they come
    // from the model-safe view (what a human sees), never the raw parts.
    let safe = agentpost_safety::analyze_message(raw, &agentpost_safety::Provenance::default());
    let subject = msg.subject().map(safe_line);
    let text = msg.body_text(0);
    let snippet = Some(squash(&safe.text, SNIPPET_CHARS)).filter(|s| !s.is_empty());
    let risk = safe.risk.level;
    let mut finding_kinds: Vec<&'static str> =
        safe.findings.iter().map(|f| f.kind.as_str()).collect();
    finding_kinds.sort_unstable();
    finding_kinds.dedup();
    let search_body = text
        .as_deref()
        .map(|t| truncate_bytes(t, SEARCH_BODY_BYTES).to_string())
        .unwrap_or_default();
    let attachments = msg
        .attachments()
        .enumerate()
        .map(|(i, part)| {
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| match part.body {
                    PartType::Message(_) => "message/rfc822".into(),
                    PartType::Text(_) => "text/plain".into(),
                    PartType::Html(_) => "text/html".into(),
                    _ => "application/octet-stream".into(),
                })
                .to_ascii_lowercase();
            let disposition = part
                .content_disposition()
                .map(|d| d.ctype().to_ascii_lowercase())
                .filter(|d| d == "inline")
                .unwrap_or_else(|| "attachment".into());
            AttachmentInfo {
                index: i as u32,
                name: part.attachment_name().map(safe_line).or_else(|| {
                    part.message()
                        .and_then(|m| m.subject())
                        .map(|s| format!("{}.eml", safe_line(s)))
                }),
                content_type,
                size_bytes: part.len() as i64,
                content_id: part.content_id().map(clean_line),
                disposition,
            }
        })
        .collect();
    Parsed {
        message_id: msg.message_id().map(clean_line).filter(|s| !s.is_empty()),
        in_reply_to: id_list(msg.in_reply_to()),
        references: id_list(msg.references()),
        subject_key: subject_key(subject.as_deref()),
        subject,
        from: addresses(msg.from()),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        reply_to: addresses(msg.reply_to()),
        date_at: msg
            .date()
            .map(|d| d.to_timestamp().saturating_mul(1_000_000)),
        snippet,
        risk: format!("{risk:?}").to_lowercase(),
        safe_text: truncate_bytes(&safe.text, EVENT_TEXT_BYTES).to_string(),
        finding_kinds: finding_kinds.into_iter().map(str::to_string).collect(),
        search_body,
        attachments,
    }
}

/// Decoded bodies and attachment bytes, read back from the raw message.
pub(crate) struct Bodies {
    pub text: Option<String>,
    pub html: Option<String>,
}

pub(crate) fn bodies(raw: &[u8]) -> Bodies {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Bodies {
            text: None,
            html: None,
        };
    };
    let html = msg.html_part(0).and_then(|p| match &p.body {
        PartType::Html(h) => Some(h.to_string()),
        _ => None,
    });
    Bodies {
        text: msg.body_text(0).map(|t| t.into_owned()),
        html,
    }
}

/// The decoded bytes of attachment `index`, with the type recorded for it.
pub(crate) fn attachment(raw: &[u8], index: u32) -> Option<Vec<u8>> {
    let msg = MessageParser::default().parse(raw)?;
    let part = msg.attachments().nth(index as usize)?;
    Some(part.contents().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keys_ignore_reply_prefixes() {
        assert_eq!(subject_key(Some("Re: Fwd: Hello  World")), "hello world");
        assert_eq!(subject_key(Some("AW: hello world")), "hello world");
        assert_eq!(subject_key(None), "");
    }

    #[test]
    fn broken_input_still_parses() {
        let p = parse(b"\xff\xfe garbage without headers");
        assert!(p.message_id.is_none());
        let p = parse(b"");
        assert!(p.subject.is_none());
    }

    #[test]
    fn encoded_names_and_references() {
        let raw = b"From: =?UTF-8?B?SsO2cmc=?= <jorg@example.com>\r\nTo: a@x.test, \"B\" <b@x.test>\r\n\
Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nMessage-ID: <m1@x>\r\nIn-Reply-To: <m0@x>\r\nReferences: <a@x> <m0@x>\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\r\nHall\xf6chen\r\n";
        let p = parse(raw);
        assert_eq!(p.from[0].name.as_deref(), Some("Jörg"));
        assert_eq!(p.subject.as_deref(), Some("Grüße"));
        assert_eq!(p.message_id.as_deref(), Some("m1@x"));
        assert_eq!(p.references, vec!["a@x", "m0@x"]);
        assert_eq!(p.in_reply_to, vec!["m0@x"]);
        assert_eq!(p.snippet.as_deref(), Some("Hallöchen"));
        assert_eq!(
            p.participants(),
            vec!["a@x.test", "b@x.test", "jorg@example.com"]
        );
    }
}
