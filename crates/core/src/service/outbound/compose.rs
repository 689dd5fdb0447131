//! What a caller asks to send, validated; the RFC 5322 message built from
//! it with `mail-builder`; and its DKIM signatures (`mail-auth`), one per
//! key of the sending domain (Ed25519 and RSA), so receivers that do not
//! know Ed25519 still verify.

use crate::address::normalise_domain;
use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{
    Algorithm, DkimKey as ParsedKey, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::headers::Writable;
use mail_auth::dkim::DkimSigner;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::message_id::MessageId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest subject, in characters.
const MAX_SUBJECT: usize = 998;
/// Most attachments on one message.
const MAX_ATTACHMENTS: usize = 100;
/// The headers every signature covers (absent ones are skipped).
const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
];

/// A recipient: `"a@example.com"` or `{"email": "a@example.com", "name": "A"}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RecipientInput {
    Address(String),
    Named { email: String, name: Option<String> },
}

/// An attachment given inline, its content base64-encoded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub filename: String,
    /// Default `application/octet-stream`.
    pub content_type: Option<String>,
    /// The bytes, standard base64.
    pub content: String,
    /// Set to reference it from the HTML as `cid:…` (sent inline).
    pub content_id: Option<String>,
}

/// The fields of a draft or a send.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Compose {
    #[serde(default)]
    pub to: Vec<RecipientInput>,
    #[serde(default)]
    pub cc: Vec<RecipientInput>,
    /// Envelope only: never written into the message.
    #[serde(default)]
    pub bcc: Vec<RecipientInput>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// A message in this agent's mailbox: sets `In-Reply-To`, `References`
    /// and so the thread.
    pub reply_to_message_id: Option<String>,
    /// Display name on `From` (the address is always the agent's own);
    /// default the agent's display name.
    pub from_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mailbox {
    pub email: String,
    pub name: Option<String>,
}

pub(crate) struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub content_id: Option<String>,
}

/// A compose request that passed validation.
pub(crate) struct Validated {
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub from_name: Option<String>,
    pub reply_to_message_id: Option<String>,
}

impl Validated {
    /// Every envelope recipient once, in to, cc, bcc order, lowercased.
    pub fn envelope(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for m in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            let e = m.email.to_ascii_lowercase();
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }

    /// The field name of envelope recipient `i` (for error messages).
    pub fn field_of(&self, email: &str) -> String {
        let find = |list: &[Mailbox], name: &str| {
            list.iter()
                .position(|m| m.email.eq_ignore_ascii_case(email))
                .map(|i| format!("{name}[{i}]"))
        };
        find(&self.to, "to")
            .or_else(|| find(&self.cc, "cc"))
            .or_else(|| find(&self.bcc, "bcc"))
            .unwrap_or_else(|| "to".into())
    }
}

/// An address as the API accepts it: `local@domain`, ASCII, no display
/// syntax. The domain is lowercased; the local part keeps its case.
pub(crate) fn parse_address(field: &str, s: &str) -> Result<String> {
    let s = s.trim();
    let bad = || {
        Error::invalid(
            field,
            format!(
                "'{}' is not an email address like name@example.com",
                excerpt(s)
            ),
        )
    };
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:@\"".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err(bad());
    }
    let domain = normalise_domain(domain).map_err(|m| Error::invalid(field, m))?;
    Ok(format!("{local}@{domain}"))
}

fn excerpt(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A header value from a caller: one line, bounded.
fn header_text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    if v.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be one line without control characters",
        ));
    }
    let v = v.trim().to_string();
    Ok((!v.is_empty()).then_some(v))
}

fn mailboxes(field: &str, list: &[RecipientInput]) -> Result<Vec<Mailbox>> {
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("{field}[{i}]");
            let (email, name) = match r {
                RecipientInput::Address(a) => (a.as_str(), None),
                RecipientInput::Named { email, name } => (email.as_str(), name.clone()),
            };
            Ok(Mailbox {
                email: parse_address(&f, email)?,
                name: header_text(&format!("{f}.name"), name, 200)?,
            })
        })
        .collect()
}

/// Validates the request. Recipients are optional here (a draft may have
/// none yet); `require_recipients` is the send-time check.
pub(crate) fn validate(c: &Compose) -> Result<Validated> {
    let to = mailboxes("to", &c.to)?;
    let cc = mailboxes("cc", &c.cc)?;
    let bcc = mailboxes("bcc", &c.bcc)?;
    if c.attachments.len() > MAX_ATTACHMENTS {
        return Err(Error::invalid(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    let mut attachments = Vec::with_capacity(c.attachments.len());
    for (i, a) in c.attachments.iter().enumerate() {
        let f = format!("attachments[{i}]");
        let filename = header_text(&format!("{f}.filename"), Some(a.filename.clone()), 255)?
            .ok_or_else(|| Error::invalid(format!("{f}.filename"), "is required"))?;
        let content_type = match &a.content_type {
            None => "application/octet-stream".to_string(),
            Some(ct) => {
                let ct = ct.trim().to_ascii_lowercase();
                let ok = ct.split_once('/').is_some_and(|(t, s)| {
                    let token = |x: &str| {
                        !x.is_empty()
                            && x.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                    };
                    token(t) && token(s)
                });
                if !ok {
                    return Err(Error::invalid(
                        format!("{f}.content_type"),
                        "must be a media type such as application/pdf",
                    ));
                }
                ct
            }
        };
        let bytes = B64
            .decode(a.content.as_bytes())
            .map_err(|_| Error::invalid(format!("{f}.content"), "must be standard base64"))?;
        let content_id = header_text(&format!("{f}.content_id"), a.content_id.clone(), 200)?
            .map(|s| s.trim_matches(['<', '>']).to_string());
        attachments.push(Attachment {
            filename,
            content_type,
            bytes,
            content_id,
        });
    }
    let text = c.text.clone();
    let html = c.html.clone();
    for (name, body) in [("text", &text), ("html", &html)] {
        if body.as_ref().is_some_and(|b| b.contains('\0')) {
            return Err(Error::invalid(name, "may not contain NUL characters"));
        }
    }
    Ok(Validated {
        to,
        cc,
        bcc,
        subject: header_text("subject", c.subject.clone(), MAX_SUBJECT)?,
        text,
        html,
        attachments,
        from_name: header_text("from_name", c.from_name.clone(), 200)?,
        reply_to_message_id: c.reply_to_message_id.clone(),
    })
}

/// Threading headers of the message being answered.
pub(crate) struct ReplyRefs {
    pub in_reply_to: String,
    pub references: Vec<String>,
}

/// One DKIM key of the sending domain, as stored.
pub(crate) struct DkimKey {
    pub selector: String,
    pub algorithm: String,
    pub private_key_pem: String,
}

/// Builds the message: From is always `from_address`.
pub(crate) fn build(
    v: &Validated,
    from_address: &str,
    from_name: Option<&str>,
    message_id: &str,
    reply: Option<&ReplyRefs>,
    now_secs: i64,
) -> Result<Vec<u8>> {
    let list = |l: &[Mailbox]| {
        Address::new_list(
            l.iter()
                .map(|m| Address::new_address(m.name.clone(), m.email.clone()))
                .collect(),
        )
    };
    let mut b = MessageBuilder::new()
        .from(Address::new_address(
            from_name.map(str::to_string),
            from_address.to_string(),
        ))
        .message_id(message_id.to_string())
        .date(now_secs);
    if !v.to.is_empty() {
        b = b.to(list(&v.to));
    }
    if !v.cc.is_empty() {
        b = b.cc(list(&v.cc));
    }
    if let Some(s) = &v.subject {
        b = b.subject(s.clone());
    }
    if let Some(r) = reply {
        b = b.in_reply_to(r.in_reply_to.clone());
        if !r.references.is_empty() {
            b = b.references(MessageId::new_list(r.references.iter().cloned()));
        }
    }
    match (&v.text, &v.html) {
        (None, None) => b = b.text_body(String::new()),
        (t, h) => {
            if let Some(t) = t {
                b = b.text_body(t.clone());
            }
            if let Some(h) = h {
                b = b.html_body(h.clone());
            }
        }
    }
    for a in &v.attachments {
        b = match &a.content_id {
            Some(cid) => b.inline(a.content_type.clone(), cid.clone(), a.bytes.clone()),
            None => b.attachment(a.content_type.clone(), a.filename.clone(), a.bytes.clone()),
        };
    }
    let built = b
        .write_to_vec()
        .map_err(|e| Error::Internal(format!("building a message: {e}")))?;
    Ok(crlf(&built))
}

/// mail-builder keeps a body's bare LFs; the wire needs CRLF. Normalising
/// here, before signing and hashing, makes the bytes that are signed,
/// confirmed by their SHA-256 and filed in `sent` the bytes that go out
/// (the SMTP client's own normalisation then changes nothing).
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Prepends one DKIM-Signature per key. A key that cannot be loaded is
/// logged and skipped: mail still goes out, and the receiver's DMARC
/// verdict will show the gap.
pub(crate) fn sign(message: Vec<u8>, domain: &str, keys: &[DkimKey]) -> Vec<u8> {
    let mut headers = String::new();
    for k in keys {
        match sign_one(&message, domain, k) {
            Ok(h) => headers.push_str(&h),
            Err(e) => {
                tracing::error!(domain, selector = %k.selector, error = %e, "DKIM signing failed")
            }
        }
    }
    let mut out = Vec::with_capacity(headers.len() + message.len());
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(&message);
    out
}

fn sign_one(message: &[u8], domain: &str, k: &DkimKey) -> Result<String, String> {
    DkimSigner::from_key(SharedKey(parsed_key(k)?))
        .domain(domain)
        .selector(&k.selector)
        .headers(SIGNED_HEADERS)
        .sign(message)
        .map(|s| s.to_header())
        .map_err(|e| format!("signature: {e}"))
}

/// Parsed signing keys by their PEM text. Loading an RSA key checks it and
/// precomputes its blinding values, which cost more than the signature
/// itself; keyed by content, a rotated key is simply a new entry.
static PARSED_KEYS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<ParsedKey>>>,
> = std::sync::LazyLock::new(Default::default);
/// Keys kept at most (two per domain); beyond it the cache starts over.
const PARSED_KEYS_MAX: usize = 256;

fn parsed_key(k: &DkimKey) -> Result<Arc<ParsedKey>, String> {
    let lookup = |cache: &std::collections::HashMap<String, Arc<ParsedKey>>| {
        cache.get(&k.private_key_pem).cloned()
    };
    if let Some(key) = PARSED_KEYS.lock().ok().and_then(|c| lookup(&c)) {
        return Ok(key);
    }
    let key = Arc::new(if k.algorithm == "ed25519" {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&k.private_key_pem)
            .map_err(|e| format!("ed25519 key: {e}"))?;
        ParsedKey::Ed25519(
            Ed25519Key::from_seed_and_public_key(&key.to_bytes(), key.verifying_key().as_bytes())
                .map_err(|e| format!("ed25519 key: {e}"))?,
        )
    } else {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_slice(k.private_key_pem.as_bytes())
            .map_err(|e| format!("rsa key: {e}"))?;
        ParsedKey::Rsa(RsaKey::<Sha256>::from_key_der(der).map_err(|e| format!("rsa key: {e}"))?)
    });
    if let Ok(mut cache) = PARSED_KEYS.lock() {
        if cache.len() >= PARSED_KEYS_MAX {
            cache.clear();
        }
        cache.insert(k.private_key_pem.clone(), key.clone());
    }
    Ok(key)
}

/// A cached key lent to one signer (`DkimSigner` takes its key by value).
struct SharedKey(Arc<ParsedKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_domains_lowercased() {
        assert_eq!(
            parse_address("to[0]", " Bob@Example.COM ").unwrap(),
            "Bob@example.com"
        );
        for bad in [
            "bob",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a<b>@x.com",
            "a\r\n@x.com",
            "a..b@x.com",
        ] {
            assert!(parse_address("to[0]", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bcc_is_envelope_only_and_recipients_are_unique() {
        let c: Compose = serde_json::from_value(serde_json::json!({
            "to": ["a@x.com", {"email": "B@x.com", "name": "Bee"}],
            "cc": ["a@X.com"],
            "bcc": ["hidden@y.org"],
            "subject": "Hi",
            "text": "hello\n.\nworld"
        }))
        .unwrap();
        let v = validate(&c).unwrap();
        assert_eq!(v.envelope(), vec!["a@x.com", "b@x.com", "hidden@y.org"]);
        let raw = build(
            &v,
            "agent@agents.test",
            Some("Agent"),
            "m1@agents.test",
            None,
            1_700_000_000,
        )
        .unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains("From: \"Agent\" <agent@agents.test>")
                || text.contains("From: Agent <agent@agents.test>")
        );
        assert!(!text.to_ascii_lowercase().contains("hidden@y.org"));
        assert!(text.contains("Message-ID: <m1@agents.test>"));
        assert!(
            text.ends_with("\r\n\r\nhello\r\n.\r\nworld"),
            "CRLF only: {text:?}"
        );
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn header_injection_is_refused() {
        let c = Compose {
            subject: Some("hi\r\nBcc: x@evil.com".into()),
            ..Default::default()
        };
        assert!(matches!(validate(&c), Err(Error::Invalid { field, .. }) if field == "subject"));
    }

    #[test]
    fn signs_with_both_generated_keys() {
        let keys: Vec<DkimKey> = crate::dkim::generate("ap202611")
            .unwrap()
            .into_iter()
            .map(|k| DkimKey {
                selector: k.selector,
                algorithm: k.algorithm.into(),
                private_key_pem: k.private_key_pem,
            })
            .collect();
        let v = validate(&Compose {
            to: vec![RecipientInput::Address("a@x.com".into())],
            text: Some("hi".into()),
            ..Default::default()
        })
        .unwrap();
        let raw = build(
            &v,
            "agent@agents.test",
            None,
            "m@agents.test",
            None,
            1_700_000_000,
        )
        .unwrap();
        let signed = String::from_utf8(sign(raw, "agents.test", &keys)).unwrap();
        assert_eq!(signed.matches("DKIM-Signature:").count(), 2);
        assert!(signed.contains("a=ed25519-sha256"));
        assert!(signed.contains("a=rsa-sha256"));
        assert!(signed.contains("s=ap202611e"));
    }
}
