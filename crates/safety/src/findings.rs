//! Collects findings while content is analysed, with caps, excerpts and instruction-like scanning of hidden text.

use std::collections::HashMap;

use crate::risk::{self, Hit};
use crate::{Finding, FindingKind};

/// Findings listed per kind before the rest are only counted.
const MAX_PER_KIND: usize = 100;
/// Characters kept in an excerpt.
const EXCERPT_CHARS: usize = 160;
/// Bytes of one hidden fragment that are scanned for instruction-like text.
const SCAN_BYTES: usize = 64 * 1024;

/// An instruction-like phrase found somewhere a human does not see.
#[derive(Debug, Clone)]
pub(crate) struct HiddenHit {
    pub kind: FindingKind,
    pub location: String,
    pub hit: Hit,
}

/// Accumulates findings for one analysis.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    findings: Vec<Finding>,
    per_kind: HashMap<FindingKind, usize>,
    unlisted: usize,
    /// Instruction-like text found in hidden places.
    pub hidden_hits: Vec<HiddenHit>,
    /// Characters of hidden text (CSS-hidden, comments, non-rendered) seen.
    pub hidden_chars: usize,
    /// Prefix for locations, e.g. `part[1]`.
    pub prefix: String,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    fn locate(&self, location: &str) -> String {
        if self.prefix.is_empty() {
            location.to_string()
        } else {
            format!("{}:{}", self.prefix, location)
        }
    }

    /// Records a finding whose content `text` was removed; the text is scanned for instructions.
    pub fn removed(&mut self, kind: FindingKind, text: &str, location: &str) {
        let scan = truncate_bytes(text, SCAN_BYTES);
        if kind.is_hidden_content() {
            self.hidden_chars += scan.chars().filter(|c| !c.is_whitespace()).count();
            if let Some(hit) = risk::scan(scan) {
                self.hidden_hits.push(HiddenHit {
                    kind,
                    location: self.locate(location),
                    hit,
                });
            }
        }
        let excerpt = excerpt(text);
        self.push(kind, excerpt, location);
    }

    /// Records a finding with a ready-made excerpt and nothing to scan.
    pub fn note(&mut self, kind: FindingKind, excerpt: String, location: &str) {
        self.push(kind, excerpt, location);
    }

    fn push(&mut self, kind: FindingKind, excerpt: String, location: &str) {
        let n = self.per_kind.entry(kind).or_insert(0);
        *n += 1;
        if *n > MAX_PER_KIND {
            self.unlisted += 1;
            return;
        }
        let location = self.locate(location);
        self.findings.push(Finding {
            kind,
            excerpt,
            location,
        });
    }

    /// Number of findings of `kind`, listed or not.
    pub fn count(&self, kind: FindingKind) -> usize {
        self.per_kind.get(&kind).copied().unwrap_or(0)
    }

    pub fn into_findings(mut self) -> Vec<Finding> {
        if self.unlisted > 0 {
            self.findings.push(Finding {
                kind: FindingKind::Truncated,
                excerpt: format!("{} more findings not listed", self.unlisted),
                location: "findings".to_string(),
            });
        }
        self.findings
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub(crate) fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A short, single-line excerpt with invisible and control characters escaped.
pub(crate) fn excerpt(s: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in s.chars() {
        if count >= EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_whitespace() && !crate::unicode::is_invisible(c) {
            if !last_space {
                out.push(' ');
                count += 1;
            }
            last_space = true;
            continue;
        }
        last_space = false;
        if crate::unicode::is_invisible(c) || c.is_control() {
            out.push_str(&format!("\\u{{{:X}}}", c as u32));
        } else {
            out.push(c);
        }
        count += 1;
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}
