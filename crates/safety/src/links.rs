//! Link checks: visible text naming another domain than the target, look-alike (mixed-script) domains, script URLs.
//!
//! The registrable-domain rule is an approximation (last two labels, three under
//! common second-level suffixes such as `co.uk`): no public suffix list is shipped.

use std::sync::LazyLock;

use regex::Regex;

use crate::FindingKind;
use crate::findings::{Collector, excerpt};

static URL_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"(?i)(?-u:\b)(?:https?://|www\.)[^\s<>"'`{}|\\^\[\]]+"#).ok());

const COMMON_TLDS: &[&str] = &[
    "com", "org", "net", "edu", "gov", "mil", "int", "io", "co", "ai", "app", "dev", "info", "biz",
    "me", "us", "uk", "de", "fr", "ru", "cn", "jp", "in", "br", "es", "it", "nl", "eu", "ca", "au",
    "ch", "se", "no", "pl", "be", "at", "dk", "fi", "ie", "nz", "za", "mx", "ar", "tr", "kr",
    "xyz", "online", "site", "top", "shop", "store", "tech", "cloud", "link", "click", "live",
    "email", "support", "help", "page", "ly", "gl", "to", "tv", "cc", "ws", "su", "ua", "id",
];

const SECOND_LEVEL: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "com.au", "net.au",
    "org.au", "edu.au", "gov.au", "co.jp", "ne.jp", "or.jp", "ac.jp", "com.br", "com.cn", "net.cn",
    "org.cn", "co.nz", "co.in", "co.za", "com.mx", "com.tr", "com.ar", "co.kr", "com.sg", "com.hk",
    "com.tw", "co.il", "com.ua", "com.pl",
];

/// `s` starts with `prefix`, ASCII case-insensitively.
#[inline]
pub(crate) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// URLs written in plain text.
pub(crate) fn urls_in_text(text: &str) -> Vec<String> {
    let Some(re) = URL_RE.as_ref() else {
        return Vec::new();
    };
    re.find_iter(text)
        .map(|m| {
            m.as_str()
                .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '>'])
                .to_string()
        })
        .collect()
}

/// The first domain named in visible text (needs a scheme, `www.` or a common TLD).
/// Hand-written token scan: a regex with bounded label repetition was the hot spot on link-heavy mail.
pub(crate) fn domain_in_text(text: &str) -> Option<String> {
    // Every candidate token contains a dot; most link texts have none (one SIMD search
    // instead of the per-character split).
    if !text.contains('.') {
        return None;
    }
    for raw in text
        .split(|c: char| {
            c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | ',' | '[' | ']')
        })
        .take(64)
    {
        if !raw.contains('.') {
            continue;
        }
        let lower = raw.to_lowercase();
        let (explicit, rest) = match lower.split_once("://") {
            Some((scheme, rest)) if scheme == "http" || scheme == "https" => (true, rest),
            Some(_) => continue,
            None => (false, lower.as_str()),
        };
        // An e-mail address shown as text names its domain too.
        let rest = rest.rsplit_once('@').map_or(rest, |(_, d)| d);
        let host = rest
            .split(['/', '?', '#', ':'])
            .next()
            .unwrap_or("")
            .trim_end_matches(['.', '!', ';']);
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            continue;
        }
        let tld = labels.last().copied().unwrap_or("");
        if tld.chars().count() < 2 || !tld.chars().all(char::is_alphabetic) {
            continue;
        }
        let explicit = explicit || host.starts_with("www.");
        if explicit || COMMON_TLDS.contains(&tld) || !tld.is_ascii() {
            return Some(host.to_string());
        }
    }
    None
}

/// Host of an `href` (ASCII/punycode), or the domain of a `mailto:` address.
pub(crate) fn host_of(href: &str) -> Option<String> {
    let href = href.trim();
    if let Some(rest) = href
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("mailto:"))
        .and_then(|_| href.get(7..))
    {
        let addr = rest.split(['?', ',']).next().unwrap_or("");
        let domain = addr.rsplit_once('@')?.1;
        return to_ascii(domain);
    }
    let url = url::Url::parse(href).ok()?;
    url.host_str()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
}

fn to_ascii(domain: &str) -> Option<String> {
    idna::domain_to_ascii(domain.trim().trim_end_matches('.'))
        .ok()
        .filter(|d| !d.is_empty())
}

/// The registrable part of a host (approximate eTLD+1).
pub(crate) fn registrable(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    if labels.len() <= 2 {
        return labels.join(".");
    }
    let n = labels.len();
    let last_two = format!("{}.{}", labels[n - 2], labels[n - 1]);
    if SECOND_LEVEL.contains(&last_two.as_str()) {
        format!("{}.{}", labels[n - 3], last_two)
    } else {
        last_two
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Script {
    Latin,
    Cyrillic,
    Greek,
    Other,
}

fn script_of(c: char) -> Option<Script> {
    if !c.is_alphabetic() {
        return None;
    }
    Some(match c as u32 {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => Script::Latin,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x52F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Script::Cyrillic,
        _ => Script::Other,
    })
}

/// Cyrillic and Greek letters that look like Latin ones.
fn latin_lookalike(c: char) -> bool {
    "аеорсухіјѕԁӏԛԝһкмптвнАВЕКМНОРСТУХІЈЅοαρνιτκυχεΑΒΕΗΙΚΜΝΟΡΤΥΧΖ".contains(c)
}

/// True for a domain whose labels mix Latin with Cyrillic/Greek, or spell Latin with look-alikes.
pub(crate) fn is_confusable(host: &str) -> bool {
    let (unicode, _) = idna::domain_to_unicode(host);
    let labels: Vec<&str> = unicode.split('.').collect();
    let tld_ascii = labels.last().is_some_and(|l| l.is_ascii());
    labels.iter().any(|label| {
        let scripts: Vec<Script> = label.chars().filter_map(script_of).collect();
        let has = |s| scripts.contains(&s);
        let mixed = has(Script::Latin) && (has(Script::Cyrillic) || has(Script::Greek));
        let all_lookalike = !label.is_ascii()
            && tld_ascii
            && label.chars().filter(|c| c.is_alphabetic()).count() >= 2
            && label
                .chars()
                .filter(|c| c.is_alphabetic())
                .all(latin_lookalike);
        mixed || all_lookalike
    })
}

/// Checks one visible link; returns whether its text names another domain than its target.
/// `location` is only built when there is something to report.
/// Whether `b` contains `xn--` (ASCII case-insensitively): a SIMD search for `--`, then a
/// look at the two bytes before it. Non-overlapping `--` matches suffice: a wanted `--` is
/// preceded by `n`, so it starts a run of dashes and the search stops there. (A byte-wise
/// window compare over every tracking URL was a visible cost on newsletters.)
fn has_punycode_label(b: &[u8]) -> bool {
    // Built once: `memmem::find_iter` builds a searcher on every call (per link).
    static DASHES: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"--"));
    DASHES.find_iter(b).any(|p| {
        p.checked_sub(2)
            .and_then(|s| b.get(s..p))
            .is_some_and(|xn| xn.eq_ignore_ascii_case(b"xn"))
    })
}

pub(crate) fn check_link(
    text: &str,
    href: &str,
    location: impl Fn() -> String,
    acc: &mut Collector,
) -> bool {
    let trimmed = href.trim_start();
    if starts_with_ci(trimmed, "javascript:")
        || starts_with_ci(trimmed, "vbscript:")
        || starts_with_ci(trimmed, "data:")
    {
        acc.note(FindingKind::SuspiciousLink, excerpt(href), &location());
        return false;
    }
    let shown = domain_in_text(text);
    // Parsing the URL is the costly part: only do it when there is something to compare.
    let maybe_idn = !href.is_ascii() || has_punycode_label(trimmed.as_bytes());
    let target = if shown.is_some() || maybe_idn {
        host_of(href)
    } else {
        None
    };
    if maybe_idn
        && let Some(t) = &target
        && is_confusable(t)
    {
        let (u, _) = idna::domain_to_unicode(t);
        acc.note(
            FindingKind::ConfusableDomain,
            excerpt(&format!("link target {u} ({t})")),
            &location(),
        );
    }
    if let Some(s) = &shown
        && !s.is_ascii()
        && let Some(ascii) = to_ascii(s)
        && is_confusable(&ascii)
    {
        acc.note(
            FindingKind::ConfusableDomain,
            excerpt(&format!("link text shows {s} ({ascii})")),
            &location(),
        );
    }
    match (shown.and_then(|s| to_ascii(&s)), target) {
        (Some(shown), Some(target)) if registrable(&shown) != registrable(&target) => {
            acc.note(
                FindingKind::LinkMismatch,
                excerpt(&format!("text shows {shown} but the link goes to {target}")),
                &location(),
            );
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punycode_search_matches_window_scan() {
        for h in [
            "",
            "xn--",
            "XN--",
            "a.xn--p1ai",
            "xn-",
            "x--",
            "-xn--",
            "---xn--",
            "axn---",
            "xn-x--",
            "https://click.example.com/t/1?u=abc",
            "n--",
            "xN---a",
            "--",
            "xn",
        ] {
            let b = h.as_bytes();
            let slow = b.windows(4).any(|w| w.eq_ignore_ascii_case(b"xn--"));
            assert_eq!(has_punycode_label(b), slow, "{h}");
        }
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable("www.paypal.com"), "paypal.com");
        assert_eq!(registrable("paypal.com.evil.ru"), "evil.ru");
        assert_eq!(registrable("shop.bbc.co.uk"), "bbc.co.uk");
    }

    #[test]
    fn domains_in_text() {
        assert_eq!(
            domain_in_text("Visit www.paypal.com now"),
            Some("www.paypal.com".into())
        );
        assert_eq!(domain_in_text("report.pdf"), None);
        assert_eq!(domain_in_text("Click here"), None);
    }

    #[test]
    fn confusables() {
        let spoof = idna::domain_to_ascii("p\u{430}ypal.com").expect("idna");
        assert!(is_confusable(&spoof));
        assert!(!is_confusable("paypal.com"));
        let russian =
            idna::domain_to_ascii("\u{43f}\u{440}\u{438}\u{43c}\u{435}\u{440}.com").expect("idna");
        assert!(!is_confusable(&russian));
    }

    #[test]
    fn mismatch() {
        let mut acc = Collector::new();
        assert!(check_link(
            "https://www.paypal.com/login",
            "https://paypal.com.evil.ru/x",
            || "a".to_string(),
            &mut acc
        ));
        assert!(!check_link(
            "Log in",
            "https://paypal.com.evil.ru/x",
            || "a".to_string(),
            &mut acc
        ));
        assert!(!check_link(
            "www.example.com",
            "https://example.com/",
            || "a".to_string(),
            &mut acc
        ));
    }
}
