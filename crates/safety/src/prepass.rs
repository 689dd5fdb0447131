//! A linear pre-scan that caps element nesting before html5ever sees the input.
//!
//! html5ever's tree builder scans its stack of open elements on many start tags,
//! so 100,000 unclosed `<div>`s take minutes. This lexer approximates the open
//! element stack (void elements, raw-text elements, comments, quoted attributes,
//! implied end tags of `p`/`li`/`td`/...) and drops everything nested deeper than
//! the cap — tags and text alike, so nothing hidden by a dropped ancestor can be
//! revealed — reporting the dropped text.

use std::borrow::Cow;

/// Formatting elements that html5ever re-opens after block boundaries; many of
/// them open at once make its "reconstruct the active formatting elements" step blow up.
const MAX_OPEN_FORMATTING: usize = 40;
/// Bytes of dropped text kept for the finding.
const DROPPED_TEXT_KEEP: usize = 4096;

pub(crate) struct Limited<'a> {
    pub html: Cow<'a, str>,
    /// Visible-ish text of the dropped regions (tags stripped), capped.
    pub dropped_text: String,
    pub dropped_bytes: usize,
}

/// Lowercased tag name packed into an integer (names longer than 15 bytes may collide with
/// each other, harmless; never with a name of 15 bytes or fewer, since the length is packed).
const fn pack(name: &[u8]) -> u128 {
    let mut v: u128 = if name.len() < 255 { name.len() } else { 255 } as u128;
    let mut i = 0;
    while i < name.len() && i < 15 {
        v = (v << 8) | name[i].to_ascii_lowercase() as u128;
        i += 1;
    }
    v
}

const fn packs<const N: usize>(names: [&[u8]; N]) -> [u128; N] {
    let mut out = [0u128; N];
    let mut i = 0;
    while i < N {
        out[i] = pack(names[i]);
        i += 1;
    }
    out
}

const VOID: [u128; 20] = packs([
    b"area",
    b"base",
    b"br",
    b"col",
    b"embed",
    b"hr",
    b"img",
    b"input",
    b"link",
    b"meta",
    b"source",
    b"track",
    b"wbr",
    b"param",
    b"keygen",
    b"frame",
    b"basefont",
    b"bgsound",
    b"image",
    b"command",
]);

const RAW_TEXT: [u128; 9] = packs([
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
    b"noscript",
]);

const FORMATTING: [u128; 14] = packs([
    b"a", b"b", b"big", b"code", b"em", b"font", b"i", b"nobr", b"s", b"small", b"strike",
    b"strong", b"tt", b"u",
]);

const SVG: u128 = pack(b"svg");
const MATH: u128 = pack(b"math");
const PLAINTEXT: u128 = pack(b"plaintext");

const F_VOID: u8 = 1;
const F_RAW: u8 = 2;
const F_FMT: u8 = 4;

/// Every name of the three sets with its flags, sorted by key for a binary search (one
/// lookup per tag instead of a linear scan of each set).
const CLASSES: [(u128, u8); VOID.len() + RAW_TEXT.len() + FORMATTING.len()] = {
    let mut out = [(0u128, 0u8); VOID.len() + RAW_TEXT.len() + FORMATTING.len()];
    let mut n = 0;
    let sets: [(&[u128], u8); 3] = [(&VOID, F_VOID), (&RAW_TEXT, F_RAW), (&FORMATTING, F_FMT)];
    let mut s = 0;
    while s < sets.len() {
        let (keys, flag) = sets[s];
        let mut i = 0;
        while i < keys.len() {
            out[n] = (keys[i], flag);
            n += 1;
            i += 1;
        }
        s += 1;
    }
    // Insertion sort (const context).
    let mut i = 1;
    while i < out.len() {
        let mut j = i;
        while j > 0 && out[j - 1].0 > out[j].0 {
            let t = out[j - 1];
            out[j - 1] = out[j];
            out[j] = t;
            j -= 1;
        }
        i += 1;
    }
    out
};

/// Flags of a packed tag name. All names in the sets are at most 15 bytes, so a packed key
/// equals one of them exactly when the name does (ASCII case-insensitively).
fn classify(key: u128) -> u8 {
    CLASSES
        .binary_search_by(|(k, _)| k.cmp(&key))
        .map_or(0, |i| CLASSES[i].1)
}

fn is_void(key: u128) -> bool {
    classify(key) & F_VOID != 0
}

/// Elements whose start tag implicitly closes an open element of the same kind.
fn self_closing_siblings(key: u128) -> &'static [u128] {
    const P: u128 = pack(b"p");
    const LI: u128 = pack(b"li");
    const DT: u128 = pack(b"dt");
    const DD: u128 = pack(b"dd");
    const OPTION: u128 = pack(b"option");
    const TR: u128 = pack(b"tr");
    const TD: u128 = pack(b"td");
    const TH: u128 = pack(b"th");
    match key {
        P => &[P],
        LI => &[LI],
        DT | DD => &[DT, DD],
        OPTION => &[OPTION],
        TR => &[TR, TD, TH],
        TD | TH => &[TD, TH],
        _ => &[],
    }
}

fn find_from(hay: &[u8], from: usize, needle: u8) -> Option<usize> {
    memchr::memchr(needle, hay.get(from..)?).map(|p| p + from)
}

fn find_seq(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let h = hay.get(from..)?;
    if needle.is_empty() || h.len() < needle.len() {
        return None;
    }
    memchr::memmem::find(h, needle).map(|p| p + from)
}

/// End (exclusive) of the raw text of element `name` starting at `from`: the index of `</name`.
fn raw_text_end(b: &[u8], from: usize, name: &[u8]) -> usize {
    let mut i = from;
    while let Some(lt) = find_from(b, i, b'<') {
        if b.get(lt + 1) == Some(&b'/') {
            let start = lt + 2;
            let end = start + name.len();
            if end <= b.len()
                && b[start..end].eq_ignore_ascii_case(name)
                && b.get(end)
                    .is_none_or(|c| c.is_ascii_whitespace() || *c == b'>' || *c == b'/')
            {
                return lt;
            }
        }
        i = lt + 1;
    }
    b.len()
}

/// Parses a tag starting at `lt` (`<` then a letter, or `</` then a letter).
/// Returns (name range, index after `>`, self-closing).
// Inlined into the full pass's loop, as the compiler did before that pass moved out of
// `limit_depth` (one call per tag otherwise shows up in profiles).
#[inline(always)]
fn scan_tag(b: &[u8], lt: usize, end_tag: bool) -> (usize, usize, usize, bool) {
    let name_start = lt + if end_tag { 2 } else { 1 };
    let mut i = name_start;
    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    let name_end = i;
    // Only `>` (end) and `=` (a value follows) matter between attributes: skip to them.
    // The tag is self-closing when a `/` outside any value directly precedes the `>`.
    let mut from = i;
    loop {
        while i < b.len() && b[i] != b'>' && b[i] != b'=' {
            i += 1;
        }
        match b.get(i) {
            None => return (name_start, name_end, b.len(), false),
            Some(b'>') => {
                let self_closing = i > from && b[i - 1] == b'/';
                return (name_start, name_end, i + 1, self_closing);
            }
            Some(_) => {}
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                i = find_from(b, i + 1, q).map_or(b.len(), |p| p + 1);
            }
            _ => {
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
            }
        }
        from = i;
    }
}

/// True when `b` has too few start tags for [`limit_depth`] to drop anything: fewer than
/// `max_depth` `<`+letter sequences in all, and fewer than `MAX_OPEN_FORMATTING` of them
/// with a formatting element's name. The full scan only pushes an element for such a
/// sequence (comments and raw text only add false positives, which fall back to it), so
/// it could never reach either limit. Most mail passes this quick count, which skips the
/// tag and attribute scanning of the full pass.
fn within_limits(b: &[u8], max_depth: usize) -> bool {
    let (mut starts, mut formatting) = (0usize, 0usize);
    for lt in memchr::memchr_iter(b'<', b) {
        if !b.get(lt + 1).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        starts += 1;
        if starts >= max_depth {
            return false;
        }
        // Formatting names are at most 6 bytes; the name ends as in `scan_tag`.
        let name = &b[lt + 1..b.len().min(lt + 8)];
        let len = name
            .iter()
            .position(|&c| c.is_ascii_whitespace() || c == b'/' || c == b'>')
            .unwrap_or(name.len());
        if len <= 6 && is_formatting_name(&name[..len]) {
            formatting += 1;
            if formatting >= MAX_OPEN_FORMATTING {
                return false;
            }
        }
    }
    true
}

/// `FORMATTING` membership without packing (the quick count runs on every start tag).
fn is_formatting_name(name: &[u8]) -> bool {
    let mut buf = [0u8; 6];
    let Some(dst) = buf.get_mut(..name.len()) else {
        return false;
    };
    for (d, s) in dst.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    matches!(
        &buf[..name.len()],
        b"a" | b"b"
            | b"big"
            | b"code"
            | b"em"
            | b"font"
            | b"i"
            | b"nobr"
            | b"s"
            | b"small"
            | b"strike"
            | b"strong"
            | b"tt"
            | b"u"
    )
}

/// Drops everything nested deeper than `max_depth` elements.
pub(crate) fn limit_depth(html: &str, max_depth: usize) -> Limited<'_> {
    if within_limits(html.as_bytes(), max_depth) {
        return Limited {
            html: Cow::Borrowed(html),
            dropped_text: String::new(),
            dropped_bytes: 0,
        };
    }
    limit_depth_scan(html, max_depth)
}

/// The full pass of [`limit_depth`].
fn limit_depth_scan(html: &str, max_depth: usize) -> Limited<'_> {
    let b = html.as_bytes();
    let mut stack: Vec<(u128, bool)> = Vec::with_capacity(64); // (name, is_formatting)
    let mut open_formatting = 0usize;
    let mut foreign = 0usize; // open <svg>/<math>: `/>` really self-closes there
    let mut skip_depth = 0usize;
    let mut skip_start = 0usize;
    let mut keep: Vec<(usize, usize)> = Vec::new();
    let mut kept_upto = 0usize;
    let mut dropped_text = String::new();
    let mut dropped_bytes = 0usize;
    let mut i = 0usize;

    let mut drop_range =
        |from: usize, to: usize, kept_upto: &mut usize, keep: &mut Vec<(usize, usize)>| {
            if from > *kept_upto {
                keep.push((*kept_upto, from));
            }
            *kept_upto = to;
            dropped_bytes += to.saturating_sub(from);
            if dropped_text.len() < DROPPED_TEXT_KEEP {
                strip_tags_into(&html[from..to], &mut dropped_text, DROPPED_TEXT_KEEP);
            }
        };

    while let Some(lt) = find_from(b, i, b'<') {
        i = lt + 1;
        let next = b.get(lt + 1).copied();
        match next {
            Some(b'!') => {
                if b[lt..].starts_with(b"<!--") {
                    i = find_seq(b, lt + 4, b"-->").map_or(b.len(), |p| p + 3);
                } else {
                    i = find_from(b, lt, b'>').map_or(b.len(), |p| p + 1);
                }
            }
            Some(b'?') => i = find_from(b, lt, b'>').map_or(b.len(), |p| p + 1),
            Some(b'/') if b.get(lt + 2).is_some_and(|c| c.is_ascii_alphabetic()) => {
                let (ns, ne, after, _) = scan_tag(b, lt, true);
                i = after;
                let name = &b[ns..ne];
                if skip_depth > 0 {
                    if !is_void(pack(name)) {
                        skip_depth -= 1;
                    }
                    if skip_depth == 0 {
                        drop_range(skip_start, after, &mut kept_upto, &mut keep);
                    }
                    continue;
                }
                let key = pack(name);
                if let Some(pos) = stack.iter().rposition(|(k, _)| *k == key) {
                    for (k, fmt) in stack.drain(pos..) {
                        if fmt {
                            open_formatting = open_formatting.saturating_sub(1);
                        }
                        if k == SVG || k == MATH {
                            foreign = foreign.saturating_sub(1);
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let (ns, ne, after, self_closing) = scan_tag(b, lt, false);
                i = after;
                let name = &b[ns..ne];
                let key = pack(name);
                let class = classify(key);
                let raw = class & F_RAW != 0;
                if raw {
                    i = raw_text_end(b, after, name);
                }
                if key == PLAINTEXT {
                    i = b.len();
                }
                let void = class & F_VOID != 0;
                if skip_depth > 0 {
                    if !(void || raw || (self_closing && foreign > 0)) {
                        skip_depth += 1;
                    }
                    continue;
                }
                if void || raw || (self_closing && foreign > 0) {
                    continue;
                }
                let keys = self_closing_siblings(key);
                if !keys.is_empty() {
                    let top = stack.len().saturating_sub(4);
                    if let Some(pos) = stack[top..].iter().rposition(|(k, _)| keys.contains(k)) {
                        for (_, fmt) in stack.drain(top + pos..) {
                            if fmt {
                                open_formatting = open_formatting.saturating_sub(1);
                            }
                        }
                    }
                }
                let fmt = class & F_FMT != 0;
                if stack.len() >= max_depth || (fmt && open_formatting >= MAX_OPEN_FORMATTING) {
                    skip_depth = 1;
                    skip_start = lt;
                    continue;
                }
                if fmt {
                    open_formatting += 1;
                }
                if key == SVG || key == MATH {
                    foreign += 1;
                }
                stack.push((key, fmt));
            }
            _ => {}
        }
    }
    if skip_depth > 0 {
        drop_range(skip_start, b.len(), &mut kept_upto, &mut keep);
    }
    if keep.is_empty() && kept_upto == 0 {
        return Limited {
            html: Cow::Borrowed(html),
            dropped_text,
            dropped_bytes,
        };
    }
    if kept_upto < b.len() {
        keep.push((kept_upto, b.len()));
    }
    let mut out = String::with_capacity(html.len() - dropped_bytes.min(html.len()));
    for (from, to) in keep {
        // Ranges start and end at '<' or just after '>', both char boundaries.
        if let Some(s) = html.get(from..to) {
            out.push_str(s);
        }
    }
    Limited {
        html: Cow::Owned(out),
        dropped_text,
        dropped_bytes,
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
mod tests {
    use super::*;

    #[test]
    fn formatting_names_match_the_set() {
        for name in [
            &b"a"[..],
            b"B",
            b"big",
            b"code",
            b"em",
            b"font",
            b"i",
            b"nobr",
            b"s",
            b"small",
            b"strike",
            b"Strong",
            b"tt",
            b"u",
            b"p",
            b"br",
            b"span",
            b"div",
            b"strikes",
            b"",
            b"bi",
            b"td",
        ] {
            assert_eq!(
                is_formatting_name(name),
                classify(pack(name)) & F_FMT != 0,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn quick_count_agrees_with_full_scan() {
        let cases = [
            "<b>".repeat(39) + "x",
            "<b>".repeat(40) + "x",
            "<b>".repeat(41) + "x",
            "<STRONG >".repeat(45) + "x",
            "<div>".repeat(9) + "x",
            "<div>".repeat(10) + "x",
            "<div>".repeat(11) + "x",
            "<div><p>".repeat(8) + "<!-- <a><a> -->",
            "<a/>".repeat(50),
            "<i".repeat(50),
            "<svg><b/>".repeat(30),
        ];
        for h in &cases {
            for depth in [4, 10, 500] {
                let full = limit_depth_scan(h, depth);
                let quick = limit_depth(h, depth);
                assert_eq!(full.html, quick.html, "{h} {depth}");
                assert_eq!(full.dropped_text, quick.dropped_text);
                assert_eq!(full.dropped_bytes, quick.dropped_bytes);
            }
        }
    }

    #[test]
    fn shallow_input_is_untouched() {
        let h = "<div><p>a<p>b<ul><li>x<li>y</ul></div><br><img src=x>";
        let l = limit_depth(h, 4);
        assert!(matches!(l.html, Cow::Borrowed(_)));
    }

    #[test]
    fn deep_input_is_cut() {
        let h = format!(
            "{}deep{}<p>after</p>",
            "<div>".repeat(20),
            "</div>".repeat(20)
        );
        let l = limit_depth(&h, 10);
        assert!(!l.html.contains("deep"));
        assert!(l.html.contains("after"));
        assert!(l.dropped_text.contains("deep"));
    }

    #[test]
    fn classification_matches_the_sets() {
        for (set, flag) in [
            (&VOID[..], F_VOID),
            (&RAW_TEXT[..], F_RAW),
            (&FORMATTING[..], F_FMT),
        ] {
            for &k in set {
                assert_eq!(classify(k), flag);
            }
        }
        for name in [&b"div"[..], b"p", b"td", b"SCRIPT", b"Br", b"svg", b"x"] {
            let k = pack(name);
            let expect = (VOID.contains(&k) as u8 * F_VOID)
                | (RAW_TEXT.contains(&k) as u8 * F_RAW)
                | (FORMATTING.contains(&k) as u8 * F_FMT);
            assert_eq!(classify(k), expect);
        }
    }

    #[test]
    fn quoted_gt_does_not_end_tag() {
        let h = "<div title=\"a > b\"><span>x</span></div>";
        let l = limit_depth(h, 2);
        assert!(l.html.contains("<span>x</span>"));
    }
}
