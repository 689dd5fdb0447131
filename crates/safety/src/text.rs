//! Builds readable text from rendered fragments (whitespace collapsing, line breaks) and renders plain-text parts.

use crate::findings::Collector;
use crate::html::Rendered;
use crate::{Link, unicode};

/// Accumulates visible text with CSS-like whitespace collapsing.
#[derive(Debug, Default, Clone)]
pub(crate) struct TextBuf {
    pub out: String,
    pending_nl: u8,
    pending_space: bool,
}

impl TextBuf {
    pub fn with_capacity(n: usize) -> Self {
        TextBuf {
            out: String::with_capacity(n.min(1 << 20)),
            ..Default::default()
        }
    }

    fn trailing_newlines(&self) -> u8 {
        self.out.bytes().rev().take_while(|&b| b == b'\n').count() as u8
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            self.pending_nl = 0;
            self.pending_space = false;
            return;
        }
        if self.pending_nl > 0 {
            while self.out.ends_with(' ') {
                self.out.pop();
            }
            let have = self.trailing_newlines();
            for _ in have..self.pending_nl {
                self.out.push('\n');
            }
        } else if self.pending_space && !self.out.ends_with(['\n', ' ']) {
            self.out.push(' ');
        }
        self.pending_nl = 0;
        self.pending_space = false;
    }

    /// Appends text; whitespace runs collapse to one space unless `pre`.
    pub fn text(&mut self, s: &str, pre: bool) {
        if pre {
            if s.is_empty() {
                return;
            }
            self.flush();
            self.out.extend(s.chars().filter(|&c| c != '\r'));
            return;
        }
        if s.starts_with(char::is_whitespace) {
            self.pending_space = true;
        }
        // After the first word nothing is pending and the text ends in a non-space, so `flush`
        // would always add exactly one space: do that directly.
        let mut first = true;
        let mut word = |this: &mut Self, w: &str| {
            if first {
                this.flush();
                first = false;
            } else {
                this.out.push(' ');
            }
            this.out.push_str(w);
        };
        if s.is_ascii() {
            // Unicode White_Space within ASCII (`split_whitespace`): TAB, LF, VT, FF, CR, space.
            let b = s.as_bytes();
            let is_ws = |c: u8| matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ');
            let mut i = 0;
            while i < b.len() {
                while i < b.len() && is_ws(b[i]) {
                    i += 1;
                }
                // Words separated by exactly one space are copied as one run: the result is
                // the same as pushing them one by one with a space in between.
                let start = i;
                loop {
                    while i < b.len() && !is_ws(b[i]) {
                        i += 1;
                    }
                    if i + 1 < b.len() && b[i] == b' ' && !is_ws(b[i + 1]) {
                        i += 1;
                        continue;
                    }
                    break;
                }
                if let Some(w) = s.get(start..i).filter(|w| !w.is_empty()) {
                    word(self, w);
                }
            }
        } else {
            for w in s.split_whitespace() {
                word(self, w);
            }
        }
        if s.ends_with(char::is_whitespace) {
            self.pending_space = true;
        }
    }

    /// Raw marker text (list bullets) placed after any pending break.
    pub fn marker(&mut self, s: &str) {
        self.flush();
        self.out.push_str(s);
    }

    pub fn space(&mut self) {
        self.pending_space = true;
    }

    /// Ensures at least `n` line breaks before the next text (1 = new line, 2 = blank line).
    pub fn newline(&mut self, n: u8) {
        self.pending_nl = self.pending_nl.max(n);
        self.pending_space = false;
    }

    /// `<br>`: always starts a new line.
    pub fn br(&mut self) {
        if self.out.is_empty() {
            return;
        }
        self.pending_space = false;
        self.flush();
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        self.out.push('\n');
    }

    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Final text: trailing spaces trimmed per line, at most one blank line in a row.
    pub fn finish(self) -> String {
        tidy(&self.out)
    }
}

/// Trims line ends and collapses runs of blank lines.
pub(crate) fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// Renders a `text/plain` body: invisible Unicode removed, URLs listed as links.
pub(crate) fn render_plain(text: &str, location: &str, acc: &mut Collector) -> Rendered {
    let limited = crate::findings::truncate_bytes(text, crate::MAX_TEXT_BYTES);
    if limited.len() < text.len() {
        acc.note(
            crate::FindingKind::Truncated,
            format!(
                "text over 2 MB: {} bytes dropped",
                text.len() - limited.len()
            ),
            location,
        );
    }
    let cleaned = unicode::clean(limited, location, acc);
    let normalised = cleaned.replace("\r\n", "\n").replace('\r', "\n");
    let text = tidy(&normalised);
    let links = crate::links::urls_in_text(&text)
        .into_iter()
        .take(200)
        .map(|u| Link {
            text: u.clone(),
            href: u,
            mismatch: false,
        })
        .collect();
    Rendered {
        reply: text.clone(),
        text,
        links,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_whitespace_and_breaks() {
        let mut t = TextBuf::default();
        t.text("  Hello   ", false);
        t.text("world ", false);
        t.newline(2);
        t.text("\n next", false);
        t.br();
        t.text("line", false);
        assert_eq!(t.finish(), "Hello world\n\nnext\nline");
    }
}
