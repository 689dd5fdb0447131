//! Strips quoted history from a message's text: `>` lines, "On … wrote:" and Outlook header blocks.
//!
//! HTML quote containers (Gmail, Apple Mail, Thunderbird, Outlook) are removed
//! earlier, while walking the DOM; this handles what remains as text.

use std::sync::LazyLock;

use regex::Regex;

static ATTRIBUTION: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*(on|le|am|el|il|op|em|den|w dniu|el día)(?-u:\b).{0,300}(?-u:\b)(wrote|a écrit|schrieb|escribió|ha scritto|schreef|escreveu|skrev|napisał)\s*:?\s*$",
    )
    .ok()
});

/// Cheap literal pre-check before the attribution regex (which has a long bounded repetition).
static ATTRIBUTION_VERB: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)wrote|écrit|schrieb|escribi|scritto|schreef|escreveu|skrev|napisa").ok()
});

static OUTLOOK_SEPARATOR: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original)\s*-{2,}|_{20,})\s*$",
    )
    .ok()
});

static HEADER_LINE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*\*?(from|von|de|sent|gesendet|envoyé|enviado|date|datum|to|an|à|para|subject|betreff|objet|asunto|cc)\s*:\*?\s")
        .ok()
});

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// True if lines starting at `i` look like an Outlook "From:/Sent:/To:/Subject:" block.
fn header_block_at(lines: &[&str], i: usize) -> bool {
    let first = lines[i].trim_start().trim_start_matches('*');
    let starts = |p: &str| {
        first
            .get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    if !(starts("from:") || starts("von:") || starts("de:")) {
        return false;
    }
    let following = lines[i + 1..]
        .iter()
        .take(5)
        .filter(|l| matches(&HEADER_LINE, l))
        .count();
    following >= 2
}

/// For each of `lines` (from `text.lines()`), whether it contains an attribution verb; one
/// search over the whole text instead of one per line (the verbs never span a line break).
fn verb_lines(text: &str, lines: &[&str]) -> Vec<bool> {
    let mut out = vec![false; lines.len()];
    let Some(re) = ATTRIBUTION_VERB.as_ref() else {
        return out;
    };
    let base = text.as_ptr() as usize;
    let mut li = 0;
    for m in re.find_iter(text) {
        // Lines are subslices of `text` in order: advance to the one holding the match.
        while let Some(line) = lines.get(li) {
            let start = line.as_ptr() as usize - base;
            if m.start() >= start && m.end() <= start + line.len() {
                if let Some(v) = out.get_mut(li) {
                    *v = true;
                }
                break;
            }
            if m.start() < start {
                break; // in a line break or a stripped `\r` (cannot happen for these literals)
            }
            li += 1;
        }
    }
    out
}

/// Whether some line could start quoted history: a separator (`-`, `_`), a `>` quote, an
/// Outlook header (`From:`), or an attribution starter (`On …`). Only such lines are looked
/// at more closely by [`strip_quoted`], so without one every line is kept.
fn may_quote(line: &str) -> bool {
    const STARTERS: [&str; 9] = ["on", "le", "am", "el", "il", "op", "em", "den", "w"];
    let t = line.trim_start();
    if t.starts_with(['-', '_', '>']) {
        return true;
    }
    let f = t.trim_start_matches('*');
    if ["from:", "von:", "de:"]
        .iter()
        .any(|p| crate::links::starts_with_ci(f, p))
    {
        return true;
    }
    // The first ASCII word, as the attribution pattern's `^\s*(on|le|…)\b` reads it.
    let word = t
        .bytes()
        .take(4)
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    word <= 3
        && STARTERS
            .iter()
            .any(|s| s.len() == word && crate::links::starts_with_ci(t, s))
}

/// `(some line may_quote, text is tidy)` in one pass over the lines (see [`crate::text::is_tidy`]).
fn survey(text: &str) -> (bool, bool) {
    let b = text.as_bytes();
    let mut tidy = b.first() != Some(&b'\n') && b.last() != Some(&b'\n');
    let mut line_start = 0;
    let mut prev_blank = false;
    for nl in memchr::memchr_iter(b'\n', b).chain(std::iter::once(b.len())) {
        let line = text.get(line_start..nl).unwrap_or("");
        if may_quote(line) {
            return (true, false);
        }
        if line.is_empty() {
            tidy &= !prev_blank;
            prev_blank = true;
        } else {
            prev_blank = false;
            tidy &= !line.ends_with(char::is_whitespace);
        }
        line_start = nl + 1;
    }
    (false, tidy)
}

/// The new part of a message: quoted history removed.
pub(crate) fn strip_quoted(text: String) -> String {
    let (may_quote, tidy) = survey(&text);
    if !may_quote {
        // Every line is kept (see `strip_lines`): the same result without splitting lines
        // or searching for attribution verbs.
        if tidy {
            return text;
        }
        return crate::text::tidy(&text);
    }
    strip_lines(&text)
}

/// [`strip_quoted`], line by line.
fn strip_lines(text: &str) -> String {
    let lines = crate::text::lines_of(text);
    let has_verb = verb_lines(text, &lines);
    let mut kept: Vec<&str> = Vec::with_capacity(lines.len());
    let mut all_kept = true;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if (trimmed.starts_with(['-', '_']) && matches(&OUTLOOK_SEPARATOR, line))
            || header_block_at(&lines, i)
        {
            all_kept = false;
            break;
        }
        let verb_here = has_verb.get(i).copied().unwrap_or(false);
        if verb_here && matches(&ATTRIBUTION, line) {
            all_kept = false;
            break;
        }
        // Gmail wraps long attributions over two lines.
        if i + 1 < lines.len()
            && trimmed
                .get(..3)
                .is_some_and(|h| h.eq_ignore_ascii_case("on "))
            && has_verb.get(i + 1).copied().unwrap_or(false)
            && lines[i + 1].len() < 200
            && matches(&ATTRIBUTION, &format!("{} {}", line, lines[i + 1]))
        {
            all_kept = false;
            break;
        }
        if line.trim_start().starts_with('>') {
            all_kept = false;
            i += 1;
            continue;
        }
        kept.push(line);
        i += 1;
    }
    if all_kept {
        // Nothing was quoted (the usual case once HTML quote containers are gone): the text
        // comes from `TextBuf::finish` or `tidy` and is normally tidy already, so copy it
        // rather than splitting, joining and re-tidying it. `tidy` of the joined lines equals
        // `tidy(text)`, since `tidy` splits with `lines()` itself.
        if crate::text::is_tidy(text) {
            return text.to_string();
        }
        return crate::text::tidy(text);
    }
    crate::text::tidy(&kept.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survey_shortcut_gives_the_line_by_line_result() {
        let lines = [
            "plain",
            "",
            "  ",
            "trailing ",
            "\r",
            "- item",
            "_x",
            "> quoted",
            "  >q",
            "From: a",
            "*From: a",
            "Sent: b",
            "To: c",
            "Subject: d",
            "von: x",
            "DE: y",
            "On Mon, Bob wrote:",
            "on",
            "ON x",
            "one",
            "once wrote:",
            "Le 3 mars, X a écrit :",
            "w dniu",
            "Em x",
            "den 3 skrev:",
            "am x schrieb:",
            "el día",
            "Il x ha scritto:",
            "Op x schreef:",
            "Example Media",
            "A short summary",
            "  \u{a0}on x",
            "on\u{e9}",
            "---- Original Message ----",
        ];
        let mut texts = vec![
            String::new(),
            "\n".to_string(),
            "a\n".to_string(),
            "\na".to_string(),
        ];
        for a in lines {
            for b in lines {
                texts.push(format!("{a}\n{b}"));
                texts.push(format!("intro\n\n{a}\n{b}\nwrote:\n> x"));
                texts.push(format!("{a}\n\n\n{b}\r\n"));
            }
        }
        for t in &texts {
            assert_eq!(strip_quoted(t.clone()), strip_lines(t), "{t:?}");
        }
    }

    #[test]
    fn strips_gmail_style() {
        let t = "Sounds good!\n\nOn Mon, 3 Mar 2025 at 10:00, Bob <bob@example.com> wrote:\n> earlier\n> text";
        assert_eq!(strip_quoted(t.to_string()), "Sounds good!");
    }

    #[test]
    fn strips_outlook_block() {
        let t = "Yes.\n\nFrom: Bob\nSent: Monday\nTo: Alice\nSubject: Re: x\n\nold";
        assert_eq!(strip_quoted(t.to_string()), "Yes.");
        let t = "Yes.\n-----Original Message-----\nFrom: Bob";
        assert_eq!(strip_quoted(t.to_string()), "Yes.");
    }

    #[test]
    fn verb_lines_match_per_line_search() {
        let text =
            "hi\r\nOn Mon Bob wrote:\n\nschrieb x ÉCRIT\r\nnothing\n\nLe lundi, a écrit :\nwrote";
        let lines: Vec<&str> = text.lines().collect();
        let per_line: Vec<bool> = lines
            .iter()
            .map(|l| matches(&ATTRIBUTION_VERB, l))
            .collect();
        assert_eq!(verb_lines(text, &lines), per_line);
        assert_eq!(per_line.iter().filter(|v| **v).count(), 4);
    }

    #[test]
    fn fast_path_equals_tidy_of_joined_lines() {
        for &t in crate::text::tests::TIDY_EDGE_CASES {
            let lines: Vec<&str> = t.lines().collect();
            assert_eq!(
                strip_quoted(t.to_string()),
                crate::text::tidy(&lines.join("\n")),
                "{t:?}"
            );
        }
    }

    #[test]
    fn keeps_interleaved_answers() {
        let t = "> question one\nanswer one\n> question two\nanswer two";
        assert_eq!(strip_quoted(t.to_string()), "answer one\nanswer two");
    }
}
