//! Builds readable text from rendered fragments (whitespace collapsing, line breaks) and renders plain-text parts.

use crate::findings::Collector;
use crate::html::Rendered;
use crate::{Link, unicode};

/// Unicode White_Space within ASCII (TAB, LF, VT, FF, CR, space) as a table: the word loop
/// below tests every byte of the visible text.
static ASCII_WS: [bool; 256] = {
    let mut t = [false; 256];
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[0x0B] = true;
    t[0x0C] = true;
    t[b'\r' as usize] = true;
    t[b' ' as usize] = true;
    t
};

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
            let is_ws = |c: u8| ASCII_WS[usize::from(c)];
            // Usual case: once trimmed, words separated by single spaces, which the loop below
            // would copy as one run; one vectorised pass proves it.
            let Some(start) = b.iter().position(|&c| !is_ws(c)) else {
                return;
            };
            let end = b.iter().rposition(|&c| !is_ws(c)).map_or(start, |e| e + 1);
            let ws = |c: u8| (c == b' ') | (0x09..=0x0D).contains(&c);
            if let Some(core) = s.get(start..end)
                && !any_pair(core.as_bytes(), |p, c| {
                    (ws(c) & (c != b' ')) | (ws(p) & ws(c))
                })
            {
                word(self, core);
                if s.ends_with(char::is_whitespace) {
                    self.pending_space = true;
                }
                return;
            }
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
        // Usually already tidy (breaks are only added before text): keep the buffer then.
        if is_tidy(&self.out) {
            return self.out;
        }
        tidy(&self.out)
    }
}

/// Whether `f(b[i], b[i + 1])` holds for some `i`. Blocks of 32 pairs are tested
/// branch-free on fixed-size arrays, so that the test vectorises (these run over whole texts).
#[inline]
pub(crate) fn any_pair(b: &[u8], f: impl Fn(u8, u8) -> bool) -> bool {
    let mut i = 0;
    while let Some(block) = b.get(i..i + 33).and_then(|s| <&[u8; 33]>::try_from(s).ok()) {
        let mut hit = false;
        for k in 0..32 {
            hit |= f(block[k], block[k + 1]);
        }
        if hit {
            return true;
        }
        i += 32;
    }
    b.get(i..)
        .unwrap_or_default()
        .windows(2)
        .any(|w| f(w[0], w[1]))
}

/// True when [`tidy`] would return `s` unchanged (checked instead of re-tidying text that
/// is already tidy, the common case): no line ends in whitespace (`\r`
/// included), no leading blank line, no run of two blank lines, no trailing newline.
pub(crate) fn is_tidy(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() == Some(&b'\n') || b.last() == Some(&b'\n') {
        return false;
    }
    // One SIMD scan for line breaks (splitting on '\n' searched each short line separately).
    let mut line_start = 0;
    let mut prev_blank = false;
    for nl in memchr::memchr_iter(b'\n', b).chain(std::iter::once(b.len())) {
        if nl == line_start {
            if prev_blank {
                return false;
            }
            prev_blank = true;
        } else {
            prev_blank = false;
            let last = s.get(line_start..nl).and_then(|l| l.chars().next_back());
            if last.is_some_and(char::is_whitespace) {
                return false;
            }
        }
        line_start = nl + 1;
    }
    true
}

/// `s.lines()` collected, found with one SIMD scan for line breaks (the same lines: split
/// after each '\n', which is dropped with a '\r' before it; no empty last line).
pub(crate) fn lines_of(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(memchr::memchr_iter(b'\n', b).count() + 1);
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', b) {
        let line = s.get(start..nl).unwrap_or("");
        out.push(line.strip_suffix('\r').unwrap_or(line));
        start = nl + 1;
    }
    if start < s.len() {
        out.push(s.get(start..).unwrap_or(""));
    }
    out
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

/// Appends the text of an HTML fragment with tags removed (cheap, approximate).
pub(crate) fn strip_tags_into(html: &str, out: &mut String, cap: usize) {
    let mut in_tag = false;
    let mut last_space = out.ends_with(' ') || out.is_empty();
    for c in html.chars() {
        if out.len() >= cap {
            return;
        }
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn ascii_runs_match_split_whitespace() {
        // The non-ASCII branch of `TextBuf::text`, for any input.
        fn reference(t: &mut TextBuf, s: &str) {
            if s.starts_with(char::is_whitespace) {
                t.pending_space = true;
            }
            let mut first = true;
            for w in s.split_whitespace() {
                if first {
                    t.flush();
                    first = false;
                } else {
                    t.out.push(' ');
                }
                t.out.push_str(w);
            }
            if s.ends_with(char::is_whitespace) {
                t.pending_space = true;
            }
        }
        let parts = [
            "a", "bc", " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", "x y", "", ".",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let s = format!("{a}{b}{c}");
                    let (mut fast, mut slow) = (TextBuf::default(), TextBuf::default());
                    for t in [&mut fast, &mut slow] {
                        t.out.push('w');
                    }
                    fast.text(&s, false);
                    reference(&mut slow, &s);
                    fast.text("z", false);
                    reference(&mut slow, "z");
                    assert_eq!(fast.out, slow.out, "{s:?}");
                }
            }
        }
    }

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

    #[test]
    fn ascii_ws_table_is_unicode_white_space() {
        for b in 0u8..=127 {
            assert_eq!(
                ASCII_WS[usize::from(b)],
                char::from(b).is_whitespace(),
                "{b}"
            );
        }
    }

    #[test]
    fn lines_of_matches_lines() {
        for s in [
            "",
            "\n",
            "a",
            "a\n",
            "a\r\n",
            "a\r",
            "\r\n\r\n",
            "a\n\nb\r\nc\r",
            "é\r\n\n",
            "\n\na",
        ] {
            assert_eq!(lines_of(s), s.lines().collect::<Vec<_>>(), "{s:?}");
        }
    }

    /// Line-break and whitespace edge cases for the tidy fast paths (here and in `reply`).
    pub(crate) const TIDY_EDGE_CASES: &[&str] = &[
        "",
        "a",
        "a\n",
        "\na",
        "a\n\nb",
        "a\n\n\nb",
        "a \nb",
        "a\r\nb",
        "a\u{a0}\nb",
        "a\n \nb",
        "a\rb",
        "x\n\n",
    ];

    #[test]
    fn is_tidy_agrees_with_tidy() {
        let more = ["\n", " ", "a\u{3000}", "a\n\t", "a\r", "é\n\nü"];
        for s in TIDY_EDGE_CASES.iter().chain(&more) {
            assert_eq!(is_tidy(s), tidy(s) == *s, "{s:?}");
        }
        // Line ends on both sides of the 32-byte blocks of the fast path.
        for pad in 25..40 {
            for end in [
                "x", " ", "\t", "\r", "\u{b}", "\u{c}", "é", "\u{a0}", "\u{2028}", "\n",
            ] {
                let s = format!("{}{end}\nnext line", "a".repeat(pad));
                assert_eq!(is_tidy(&s), tidy(&s) == s, "{s:?}");
            }
        }
    }
}
