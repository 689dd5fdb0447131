//! Whole-message analysis: MIME via mail-parser, the part a client shows, plain/HTML alternative
//! comparison, headers, attachment names and calendar fields.

use std::collections::HashSet;

use mail_parser::{MessageParser, MimeHeaders, PartType};

use crate::findings::{Collector, truncate_bytes};
use crate::html::{self, Rendered};
use crate::{FindingKind, Provenance, SafeView, finish, risk, text, unicode};

/// Bytes of one header field or calendar value that are cleaned.
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Bytes of a plain alternative compared against the HTML.
const MAX_COMPARE_BYTES: usize = 512 * 1024;

pub(crate) fn analyze_message(raw: &[u8], provenance: &Provenance) -> SafeView {
    let mut acc = Collector::new();
    let Some(msg) = MessageParser::default().parse(raw) else {
        let text = String::from_utf8_lossy(truncate_slice(raw, crate::MAX_HTML_BYTES));
        let out = text::render_plain(&text, "body", &mut acc);
        return finish(out, acc, provenance, None);
    };

    let subject = msg
        .subject()
        .map(|s| clean_field_into(s, "header:subject", &mut acc));
    let mut from_address = None;
    if let Some(from) = msg.from() {
        for (i, addr) in from.iter().take(4).enumerate() {
            if let Some(name) = addr.name() {
                let loc = if i == 0 {
                    "header:from.name".to_string()
                } else {
                    format!("header:from[{i}].name")
                };
                clean_field_into(name, &loc, &mut acc);
            }
            if from_address.is_none() {
                from_address = addr
                    .address()
                    .map(|a| clean_field_into(a, "header:from", &mut acc));
            }
        }
    }

    // The parts a client shows: mail-parser's html_body is the HTML alternative where there
    // is one, and the plain part otherwise.
    let mut shown: Vec<Rendered> = Vec::new();
    let mut html_ids: Vec<u32> = Vec::new();
    for &pid in msg.html_body.iter().take(32) {
        let Some(part) = msg.parts.get(pid as usize) else {
            continue;
        };
        acc.prefix = format!("part[{pid}]");
        match &part.body {
            PartType::Html(h) => {
                html_ids.push(pid);
                shown.push(html::render(h, "html", &mut acc));
            }
            PartType::Text(t) if !is_calendar(part) => {
                shown.push(text::render_plain(t, "text", &mut acc));
            }
            _ => {}
        }
    }

    // A plain alternative that says materially different things than the HTML.
    if !html_ids.is_empty() {
        let html_text: String = shown
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for &pid in msg.text_body.iter().take(8) {
            if msg.html_body.contains(&pid) {
                continue;
            }
            if let Some(part) = msg.parts.get(pid as usize)
                && let PartType::Text(t) = &part.body
                && !is_calendar(part)
            {
                acc.prefix.clear();
                compare_alternative(t, &html_text, &format!("part[{pid}]:text/plain"), &mut acc);
            }
        }
    }
    acc.prefix.clear();

    for (i, &pid) in msg.attachments.iter().take(200).enumerate() {
        if let Some(part) = msg.parts.get(pid as usize)
            && let Some(name) = part.attachment_name()
        {
            clean_field_into(name, &format!("attachment[{i}].filename"), &mut acc);
        }
    }

    let mut calendar = String::new();
    for (pid, part) in msg.parts.iter().enumerate().take(256) {
        if !is_calendar(part) {
            continue;
        }
        let body = match &part.body {
            PartType::Text(t) | PartType::Html(t) => t.as_ref(),
            PartType::Binary(b) | PartType::InlineBinary(b) => std::str::from_utf8(b).unwrap_or(""),
            _ => "",
        };
        let rendered = calendar_text(body, &format!("part[{pid}]:calendar"), &mut acc);
        if !rendered.is_empty() {
            if !calendar.is_empty() {
                calendar.push_str("\n\n");
            }
            calendar.push_str(&rendered);
        }
    }

    let mut out = Rendered::default();
    for r in shown {
        for (buf, part) in [(&mut out.text, &r.text), (&mut out.reply, &r.reply)] {
            if !part.is_empty() {
                if !buf.is_empty() {
                    buf.push_str("\n\n");
                }
                buf.push_str(part);
            }
        }
        out.links.extend(r.links);
    }
    if !calendar.is_empty() {
        for buf in [&mut out.text, &mut out.reply] {
            if !buf.is_empty() {
                buf.push_str("\n\n");
            }
            buf.push_str(&calendar);
        }
    }
    let provenance = Provenance {
        sender: provenance.sender.clone().or(from_address),
        auth: provenance.auth.clone(),
    };
    finish(out, acc, &provenance, subject)
}

fn truncate_slice(b: &[u8], max: usize) -> &[u8] {
    &b[..b.len().min(max)]
}

fn is_calendar(part: &mail_parser::MessagePart) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("text")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("calendar"))
    }) || part
        .attachment_name()
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".ics"))
}

/// Does this value look like an HTML document rather than text that mentions a tag?
fn looks_like_html(s: &str) -> bool {
    let t = s.trim_start();
    if !t.starts_with('<') {
        return false;
    }
    let head = truncate_bytes(t, 512).to_ascii_lowercase();
    [
        "<!doctype",
        "<html",
        "<body",
        "<div",
        "<p>",
        "<p ",
        "<span",
        "<table",
        "<br",
        "<font",
        "<meta",
        "<head",
    ]
    .iter()
    .any(|p| head.starts_with(p))
}

/// Cleans one field into a single line (or HTML rendered to text), recording findings.
pub(crate) fn clean_field_into(s: &str, location: &str, acc: &mut Collector) -> String {
    let s = truncate_bytes(s, MAX_FIELD_BYTES);
    if looks_like_html(s) {
        let saved = std::mem::replace(&mut acc.prefix, location.to_string());
        let r = html::render(s, location, acc);
        acc.prefix = saved;
        return r.text;
    }
    let cleaned = unicode::clean(s, location, acc);
    let mut out = String::with_capacity(cleaned.len());
    for word in cleaned.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Reports lines of the plain alternative whose words mostly do not appear in the HTML view.
fn compare_alternative(plain: &str, html_text: &str, location: &str, acc: &mut Collector) {
    let plain = unicode::strip_for_scan(truncate_bytes(plain, MAX_COMPARE_BYTES)).into_owned();
    let html_lower = html_text.to_lowercase();
    let html_words: HashSet<&str> = words(&html_lower).collect();
    let html_compact: String = html_lower.chars().filter(|c| !c.is_whitespace()).collect();
    let mut plain_only: Vec<&str> = Vec::new();
    let mut plain_only_words = 0usize;
    let mut substring_checks = 0usize;
    for line in plain.lines() {
        let no_urls = crate::links::urls_in_text(line)
            .iter()
            .fold(line.to_lowercase(), |l, u| {
                l.replace(&u.to_lowercase(), " ")
            });
        let toks: Vec<&str> = words(&no_urls).collect();
        if toks.len() < 3 {
            continue;
        }
        let found = toks
            .iter()
            .filter(|t| {
                html_words.contains(*t)
                    || (!t.is_ascii() && {
                        substring_checks += 1;
                        substring_checks < 2000 && html_compact.contains(*t)
                    })
            })
            .count();
        if found * 2 < toks.len() {
            plain_only.push(line.trim());
            plain_only_words += toks.len();
        }
    }
    if plain_only.is_empty() {
        return;
    }
    let joined = plain_only.join("\n");
    if plain_only_words >= 12 || risk::scan(&joined).is_some() {
        acc.removed(FindingKind::AlternativeMismatch, &joined, location);
    }
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
}

/// Unfolds an iCalendar body and renders the fields a calendar client shows.
fn calendar_text(ics: &str, location: &str, acc: &mut Collector) -> String {
    let ics = truncate_bytes(ics, 2 * 1024 * 1024);
    let mut lines: Vec<String> = Vec::new();
    for raw in ics.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(cont) = raw.strip_prefix([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push_str(cont);
            continue;
        }
        lines.push(raw.to_string());
        if lines.len() > 20_000 {
            break;
        }
    }
    let mut out = Vec::new();
    let mut has_description = false;
    let mut alt_desc: Option<String> = None;
    for line in &lines {
        let Some(colon) = value_colon(line) else {
            continue;
        };
        let (head, value) = (&line[..colon], &line[colon + 1..]);
        let name = head.split(';').next().unwrap_or("").to_ascii_uppercase();
        let label = match name.as_str() {
            "SUMMARY" => "Event",
            "LOCATION" => "Location",
            "DESCRIPTION" => "Description",
            "COMMENT" => "Comment",
            "X-ALT-DESC" => "X-ALT-DESC",
            _ => continue,
        };
        let value = unescape_ics(value);
        let loc = format!("{location}.{}", name.to_ascii_lowercase());
        let cleaned = clean_calendar_value(&value, &loc, acc);
        if name == "X-ALT-DESC" {
            alt_desc = Some(cleaned);
            continue;
        }
        if name == "DESCRIPTION" {
            has_description = true;
        }
        if !cleaned.is_empty() {
            out.push(format!("{label}: {cleaned}"));
        }
    }
    if !has_description && let Some(alt) = alt_desc.filter(|a| !a.is_empty()) {
        out.push(format!("Description: {alt}"));
    }
    out.join("\n")
}

/// Calendar descriptions keep their line breaks; other fields become one line.
fn clean_calendar_value(value: &str, location: &str, acc: &mut Collector) -> String {
    if looks_like_html(value) {
        return clean_field_into(value, location, acc);
    }
    let cleaned = unicode::clean(truncate_bytes(value, MAX_FIELD_BYTES), location, acc);
    crate::text::tidy(&cleaned)
}

/// Index of the `:` that separates name/parameters from the value (parameters may quote `:`).
fn value_colon(line: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn unescape_ics(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
