//! Model-safe views of untrusted mail content: the text a human would see, plus findings for everything left out.
//!
//! Entry points: [`analyze_message`] (a full RFC 5322 message), [`analyze_html`],
//! [`analyze_text`], [`clean_field`] (subjects, names, file names, calendar fields)
//! and [`extract_codes`] (verification codes and sign-in links). All of them are
//! pure functions: no I/O, bounded time and memory, and they never panic.

mod ancestors;
mod codes;
mod color;
mod css;
mod findings;
mod html;
mod links;
mod message;
mod parse;
mod prompt;
mod reply;
mod risk;
mod select;
mod sink;
mod tag;
mod text;
mod unicode;

use serde::Serialize;

pub use codes::{Extracted, ExtractedKind, extract_codes};

/// Largest HTML (in bytes) that is analysed; the rest is dropped with a `truncated` finding.
pub const MAX_HTML_BYTES: usize = 5 * 1024 * 1024;
/// Largest plain text (in bytes) that is analysed; the rest is dropped with a `truncated`
/// finding. Lower than the HTML cap: plain text has no parse budget, and every byte goes
/// through the Unicode clean-up, NFKC and the instruction scan (the slowest 5 MB inputs took
/// 130-170 ms, too close to the 250 ms budget on a loaded machine).
pub const MAX_TEXT_BYTES: usize = 2 * 1024 * 1024;
/// Deepest element nesting that is analysed; deeper content is dropped with a finding.
pub const MAX_DOM_DEPTH: usize = 512;

/// Where a piece of content came from, written into `prompt_text`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Provenance {
    /// Sender address (or display form), e.g. `alice@example.com`.
    pub sender: Option<String>,
    /// Authentication verdicts, e.g. `spf=pass dkim=pass dmarc=pass`.
    pub auth: Option<String>,
}

/// The model-safe view of one message or fragment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SafeView {
    /// Visible text in reading order; blocks become line breaks, links `text <url>`.
    pub text: String,
    /// Everything removed or altered, in document order.
    pub findings: Vec<Finding>,
    /// Visible links with their real targets.
    pub links: Vec<Link>,
    /// Overall risk with reasons.
    pub risk: Risk,
    /// The new part of the message, without quoted history.
    pub reply_text: String,
    /// `text` wrapped in untrusted-content delimiters with provenance.
    pub prompt_text: String,
    /// Cleaned subject (messages only).
    pub subject: Option<String>,
}

/// One thing that was removed or altered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Short excerpt of what was removed, with invisible characters escaped.
    pub excerpt: String,
    /// Where it was, e.g. `part[1]:body>div.preheader` or `header:subject`.
    pub location: String,
}

/// What kind of thing a [`Finding`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// `display:none`, `visibility:hidden`, `opacity:0`, `hidden`, `mso-hide:all`.
    HiddenCss,
    /// Font size zero or a few pixels.
    TinyText,
    /// Text colour transparent or too close to the effective background.
    LowContrast,
    /// Positioned or indented off the screen.
    Offscreen,
    /// Zero width/height box with hidden overflow, or `width`/`height` attributes of 0.
    ZeroSize,
    /// `clip`, `clip-path` or `transform: scale(0)` to nothing.
    Clipped,
    /// HTML comment.
    Comment,
    /// Outlook conditional comment (`<!--[if mso]>`).
    ConditionalComment,
    /// `<script>`, `<style>`, `<template>`, `<noscript>`, `<head>`, closed `<details>`, ...
    NonRenderedElement,
    /// `alt`, `title`, `aria-*` text that is not rendered as text.
    NonRenderedAttribute,
    /// CSS `content:` in `::before`/`::after` rules.
    CssGeneratedContent,
    /// Zero-width and other invisible characters.
    InvisibleUnicode,
    /// Unicode tag characters (U+E0000 block) outside emoji flag sequences.
    UnicodeTags,
    /// Bidi overrides and isolates.
    BidiControl,
    /// Variation selectors used to carry data.
    VariationSelector,
    /// C0/C1 control characters.
    ControlCharacter,
    /// The `text/plain` alternative says materially different things than the HTML.
    AlternativeMismatch,
    /// A link whose visible text names another domain than its target.
    LinkMismatch,
    /// A domain built from look-alike characters from several scripts.
    ConfusableDomain,
    /// `javascript:`/`data:`/`vbscript:` link targets.
    SuspiciousLink,
    /// Input over the size/depth/time budget; the rest was dropped.
    Truncated,
}

impl FindingKind {
    /// The snake_case name used in JSON and in expectations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HiddenCss => "hidden_css",
            Self::TinyText => "tiny_text",
            Self::LowContrast => "low_contrast",
            Self::Offscreen => "offscreen",
            Self::ZeroSize => "zero_size",
            Self::Clipped => "clipped",
            Self::Comment => "comment",
            Self::ConditionalComment => "conditional_comment",
            Self::NonRenderedElement => "non_rendered_element",
            Self::NonRenderedAttribute => "non_rendered_attribute",
            Self::CssGeneratedContent => "css_generated_content",
            Self::InvisibleUnicode => "invisible_unicode",
            Self::UnicodeTags => "unicode_tags",
            Self::BidiControl => "bidi_control",
            Self::VariationSelector => "variation_selector",
            Self::ControlCharacter => "control_character",
            Self::AlternativeMismatch => "alternative_mismatch",
            Self::LinkMismatch => "link_mismatch",
            Self::ConfusableDomain => "confusable_domain",
            Self::SuspiciousLink => "suspicious_link",
            Self::Truncated => "truncated",
        }
    }

    /// Kinds whose content a human does not see (used by the risk scorer).
    pub(crate) fn is_hidden_content(self) -> bool {
        !matches!(
            self,
            Self::LinkMismatch | Self::ConfusableDomain | Self::SuspiciousLink
        )
    }
}

/// A visible link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The text a human sees.
    pub text: String,
    /// The real target (`href`).
    pub href: String,
    /// True when the visible text names a different domain than the target.
    pub mismatch: bool,
}

/// Overall risk of a view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Risk {
    pub level: RiskLevel,
    pub reasons: Vec<String>,
}

/// Ordered risk levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    #[default]
    None,
    Low,
    Medium,
    High,
}

impl RiskLevel {
    /// Parses `none|low|medium|high`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

/// A cleaned single field (subject, display name, file name, calendar field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanField {
    pub text: String,
    pub findings: Vec<Finding>,
}

/// Analyse a full RFC 5322 message (MIME decoded with mail-parser).
pub fn analyze_message(raw: &[u8], provenance: &Provenance) -> SafeView {
    message::analyze_message(raw, provenance)
}

/// Analyse an HTML document or fragment.
pub fn analyze_html(html: &str) -> SafeView {
    let mut acc = findings::Collector::new();
    let out = html::render(html, "html", &mut acc);
    finish(out, acc, &Provenance::default(), None)
}

/// Analyse plain text (invisible Unicode, quoted history, instruction-like text).
pub fn analyze_text(text: &str) -> SafeView {
    let mut acc = findings::Collector::new();
    let out = text::render_plain(text, "text", &mut acc);
    finish(out, acc, &Provenance::default(), None)
}

/// Clean one short field: subjects, display names, attachment file names and
/// calendar summaries/descriptions/locations. A value that is an HTML document
/// (e.g. `X-ALT-DESC;FMTTYPE=text/html`) is rendered as HTML first.
pub fn clean_field(s: &str) -> CleanField {
    let mut acc = findings::Collector::new();
    let text = message::clean_field_into(s, "field", &mut acc);
    CleanField {
        text,
        findings: acc.into_findings(),
    }
}

/// Assembles the final view from rendered text and the collected findings.
pub(crate) fn finish(
    out: html::Rendered,
    acc: findings::Collector,
    provenance: &Provenance,
    subject: Option<String>,
) -> SafeView {
    let risk = risk::assess(&out.text, &acc, subject.as_deref());
    let reply_text = reply::strip_quoted(out.reply);
    let findings = acc.into_findings();
    let prompt_text = prompt::wrap(
        &out.text,
        subject.as_deref(),
        provenance,
        &risk,
        findings.len(),
    );
    SafeView {
        text: out.text,
        findings,
        links: out.links,
        risk,
        reply_text,
        prompt_text,
        subject,
    }
}
