//! Removes invisible Unicode (zero-width, tag characters, bidi controls, variation-selector smuggling) and reports it.

use std::borrow::Cow;

use crate::FindingKind;
use crate::findings::Collector;

/// Characters that render as nothing (or are format controls) and carry no visible meaning.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE007F
        | 0xE0100..=0xE01EF)
}

fn is_tag(c: char) -> bool {
    matches!(c as u32, 0xE0000..=0xE007F)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c as u32, 0x202A..=0x202E | 0x2066..=0x2069)
}

fn is_variation_selector(c: char) -> bool {
    matches!(c as u32, 0xFE00..=0xFE0F | 0xE0100..=0xE01EF)
}

/// Zero-width and filler characters that are always dropped (ZWJ/ZWNJ are handled by context).
fn is_zero_width(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180E | 0x200B | 0x2060..=0x2065
        | 0x206A..=0x206F | 0x3164 | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB | 0x1D173..=0x1D17A)
}

fn is_emoji_like(c: char) -> bool {
    matches!(c as u32, 0x2190..=0x21FF | 0x2300..=0x23FF | 0x2600..=0x27BF | 0x2B00..=0x2BFF
        | 0x1F000..=0x1FAFF | 0xFE0F | 0x20E3)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF)
}

/// Letters of scripts where ZWNJ is part of correct spelling (Arabic, Persian, Indic, ...).
fn uses_zwnj(c: char) -> bool {
    (c as u32) >= 0x0590 && c.is_alphabetic()
}

/// Fast check: does `s` need any cleaning at all?
pub(crate) fn needs_cleaning(s: &str) -> bool {
    // No ASCII character is invisible or a line/paragraph separator; ASCII controls are
    // checked bytewise and only the non-ASCII runs are decoded.
    any_byte(s, |b| {
        (b < 0x20) & (b != b'\n') & (b != b'\t') & (b != b'\r') | (b == 0x7F)
    }) || (!s.is_ascii()
        && non_ascii_runs(s).any(|run| {
            run.chars()
                .any(|c| c.is_control() || is_invisible(c) || matches!(c, '\u{2028}' | '\u{2029}'))
        }))
}

/// Runs of tag characters reported one finding each; later runs share one finding. Every
/// finding is scanned for instructions, so a flood of tiny runs (one per word of a long text)
/// must not cost one scan each. Below the 100 findings listed per kind, so the shared one is
/// listed too.
const LISTED_TAG_RUNS: usize = 64;
/// Bytes of decoded tag text and variation-selector payload kept per call (the finding scan
/// reads at most 64 KB of each anyway).
const MAX_DECODED_BYTES: usize = 64 * 1024;

/// Counts of what one call removed, turned into findings at the end.
#[derive(Default)]
struct Removed {
    zero_width: usize,
    zero_width_sample: Option<char>,
    bidi: usize,
    control: usize,
    /// Decoded text of the first `LISTED_TAG_RUNS` tag runs.
    tags: Vec<String>,
    /// Decoded text of the later runs, space-separated and capped, and how many there were.
    more_tags: String,
    more_tag_runs: usize,
    /// Non-empty decoded variation-selector payloads, capped in total.
    vs_payloads: Vec<String>,
    vs_payload_bytes: usize,
    vs_count: usize,
}

impl Removed {
    fn tag_run(&mut self, run: &[char]) {
        let decoded = run.iter().filter_map(|&t| {
            let v = t as u32 - 0xE0000;
            (0x20..0x7F).contains(&v).then(|| char::from(v as u8))
        });
        if self.tags.len() < LISTED_TAG_RUNS {
            self.tags.push(decoded.collect());
            return;
        }
        self.more_tag_runs += 1;
        if self.more_tags.len() < MAX_DECODED_BYTES {
            if !self.more_tags.is_empty() {
                self.more_tags.push(' ');
            }
            self.more_tags.extend(decoded);
        }
    }

    fn vs_run(&mut self, run: &[char]) {
        self.vs_count += run.len();
        if self.vs_payload_bytes < MAX_DECODED_BYTES
            && let Some(p) = decode_vs_payload(run)
        {
            self.vs_payload_bytes += p.len();
            self.vs_payloads.push(p);
        }
    }
}

/// Removes invisible characters from `s` (visible text), recording findings at `location`.
pub(crate) fn clean<'a>(s: &'a str, location: &str, acc: &mut Collector) -> Cow<'a, str> {
    if !needs_cleaning(s) {
        return Cow::Borrowed(s);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut rm = Removed::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = out.chars().next_back();
        let next = chars.get(i + 1).copied();
        if is_tag(c) {
            let start = i;
            while i < chars.len() && is_tag(chars[i]) {
                i += 1;
            }
            let run = &chars[start..i];
            if prev == Some('\u{1F3F4}') && is_flag_tag_sequence(run) {
                out.extend(run.iter());
            } else {
                rm.tag_run(run);
            }
            continue;
        }
        if is_variation_selector(c) {
            let start = i;
            while i < chars.len() && is_variation_selector(chars[i]) {
                i += 1;
            }
            let run = &chars[start..i];
            let base_ok = prev.is_some_and(|p| !p.is_whitespace() && !is_invisible(p));
            let single_ok = run.len() == 1
                && base_ok
                && prev.is_some_and(|p| {
                    matches!(c, '\u{FE0E}' | '\u{FE0F}')
                        || is_cjk(p)
                        || (matches!(c as u32, 0xFE00..=0xFE0D) && !p.is_ascii())
                });
            if single_ok {
                out.push(c);
            } else {
                rm.vs_run(run);
            }
            continue;
        }
        i += 1;
        match c {
            '\u{200D}' => {
                // ZWJ is legitimate inside emoji sequences (👩‍💻) and in some Indic conjuncts.
                let keep = prev.is_some_and(|p| is_emoji_like(p) || uses_zwnj(p))
                    && next.is_some_and(|n| is_emoji_like(n) || uses_zwnj(n));
                if keep {
                    out.push(c);
                } else {
                    rm.zero_width += 1;
                    rm.zero_width_sample.get_or_insert(c);
                }
            }
            '\u{200C}' => {
                let keep = prev.is_some_and(uses_zwnj) && next.is_some_and(uses_zwnj);
                if keep {
                    out.push(c);
                } else {
                    rm.zero_width += 1;
                    rm.zero_width_sample.get_or_insert(c);
                }
            }
            '\u{2028}' | '\u{2029}' => out.push('\n'),
            // Bidi marks (LRM, RLM, ALM) are legitimate in right-to-left text and hide nothing.
            '\u{200E}' | '\u{200F}' | '\u{061C}' => out.push(c),
            c if is_bidi_control(c) => rm.bidi += 1,
            c if is_zero_width(c) => {
                rm.zero_width += 1;
                rm.zero_width_sample.get_or_insert(c);
            }
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => rm.control += 1,
            // Mongolian free variation selectors are legitimate after Mongolian letters.
            '\u{180B}'..='\u{180D}' | '\u{180F}'
                if !prev.is_some_and(|p| matches!(p as u32, 0x1800..=0x18AF)) =>
            {
                rm.zero_width += 1;
                rm.zero_width_sample.get_or_insert(c);
            }
            c => out.push(c),
        }
    }
    report(&rm, s, location, acc);
    Cow::Owned(out)
}

/// `🏴` + tag letters/digits + CANCEL TAG, as used for subdivision flags (England, Scotland, Wales).
fn is_flag_tag_sequence(run: &[char]) -> bool {
    let Some((last, body)) = run.split_last() else {
        return false;
    };
    *last == '\u{E007F}'
        && (2..=7).contains(&body.len())
        && body
            .iter()
            .all(|&t| matches!(t as u32, 0xE0030..=0xE0039 | 0xE0061..=0xE007A))
}

/// Decodes the "emoji smuggling" scheme: VS1-16 carry bytes 0-15, VS17-256 carry 16-255.
/// `None` unless the run is long enough and decodes to mostly printable text.
fn decode_vs_payload(run: &[char]) -> Option<String> {
    if run.len() < 4 {
        return None;
    }
    let bytes: Vec<u8> = run
        .iter()
        .map(|&c| match c as u32 {
            v @ 0xFE00..=0xFE0F => (v - 0xFE00) as u8,
            v => ((v - 0xE0100) as u8).wrapping_add(16),
        })
        .collect();
    let decoded = String::from_utf8_lossy(&bytes);
    let printable = decoded.chars().filter(|c| !c.is_control()).count();
    (printable * 10 >= decoded.chars().count() * 8).then(|| decoded.into_owned())
}

fn report(rm: &Removed, original: &str, location: &str, acc: &mut Collector) {
    for decoded in &rm.tags {
        // Decoded tag text is exactly what a model would read and a human would not see.
        acc.removed(
            FindingKind::UnicodeTags,
            &format!("decoded: {decoded}"),
            location,
        );
    }
    if rm.more_tag_runs > 0 {
        acc.removed(
            FindingKind::UnicodeTags,
            &format!(
                "{} more tag runs, decoded: {}",
                rm.more_tag_runs, rm.more_tags
            ),
            location,
        );
    }
    if rm.vs_count > 0 {
        let text = if rm.vs_payloads.is_empty() {
            format!("{} variation selectors", rm.vs_count)
        } else {
            format!(
                "{} variation selectors, decoded: {}",
                rm.vs_count,
                rm.vs_payloads.join(" ")
            )
        };
        acc.removed(FindingKind::VariationSelector, &text, location);
    }
    if rm.bidi > 0 {
        acc.note(
            FindingKind::BidiControl,
            format!(
                "{} bidi control(s) in: {}",
                rm.bidi,
                crate::findings::excerpt(original)
            ),
            location,
        );
    }
    if rm.zero_width > 0 {
        let sample = rm.zero_width_sample.map(|c| c as u32).unwrap_or(0);
        acc.note(
            FindingKind::InvisibleUnicode,
            format!(
                "{} invisible character(s) (e.g. U+{sample:04X}) in: {}",
                rm.zero_width,
                crate::findings::excerpt(original)
            ),
            location,
        );
    }
    if rm.control > 0 {
        acc.note(
            FindingKind::ControlCharacter,
            format!("{} control character(s)", rm.control),
            location,
        );
    }
}

/// Whether any byte satisfies `f`; branch-free within 32-byte chunks so it vectorises.
#[inline]
fn any_byte(s: &str, f: impl Fn(u8) -> bool) -> bool {
    s.as_bytes()
        .chunks(32)
        .any(|c| c.iter().fold(false, |acc, &b| acc | f(b)))
}

/// Index of the first non-ASCII byte of `b` at or after `from` (`b.len()` if none).
/// Whole 32-byte chunks are tested with a branch-free OR (vectorised): mail text is mostly
/// ASCII, and a byte-at-a-time loop here cost more than the scans it guards.
fn skip_ascii(b: &[u8], from: usize) -> usize {
    let rest = b.get(from..).unwrap_or_default();
    let mut at = from;
    for chunk in rest.chunks(32) {
        if chunk.iter().fold(0u8, |acc, &c| acc | c) & 0x80 != 0 {
            return at + chunk.iter().position(|c| !c.is_ascii()).unwrap_or(0);
        }
        at += chunk.len();
    }
    b.len()
}

/// Maximal runs of non-ASCII characters in `s`.
pub(crate) fn non_ascii_runs(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        i = skip_ascii(b, i);
        let start = i;
        while i < b.len() && !b[i].is_ascii() {
            i += 1;
        }
        // Runs start and end next to ASCII bytes (or the ends), so they are char boundaries.
        s.get(start..i).filter(|r| !r.is_empty())
    })
}

/// Strips invisible characters without reporting (used to normalise text before pattern scans).
pub(crate) fn strip_for_scan(s: &str) -> Cow<'_, str> {
    let ascii_dirty = any_byte(s, |b| (b < 0x20) & (b != b'\n') | (b == 0x7F));
    if !ascii_dirty
        && (s.is_ascii()
            || !non_ascii_runs(s).any(|run| {
                run.chars().any(|c| {
                    let v = c as u32;
                    (0x7F..0xA0).contains(&v) || (v > 0xA0 && is_invisible(c))
                })
            }))
    {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .filter(|&c| !is_invisible(c))
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_runs_match_a_bytewise_split() {
        let long = "a".repeat(40);
        let cases = [
            String::new(),
            "plain ascii".to_string(),
            "é".to_string(),
            format!("{long}é{long}ü{long}"),
            format!("{long}{long}\u{200B}\u{200B}x€"),
            format!("ñ{long}ñ"),
            format!("{}€", "b".repeat(31)),
            format!("{}€", "b".repeat(32)),
            format!("{}€€ €", "b".repeat(33)),
        ];
        for s in &cases {
            let expect: Vec<&str> = s
                .split(|c: char| c.is_ascii())
                .filter(|r| !r.is_empty())
                .collect();
            let got: Vec<&str> = non_ascii_runs(s).collect();
            assert_eq!(got, expect, "{s:?}");
        }
    }
}
