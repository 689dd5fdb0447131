//! Extracts verification codes and sign-in/verification links from visible text, with the line each came from.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// What an [`Extracted`] item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractedKind {
    /// A one-time code (OTP, PIN, confirmation code).
    VerificationCode,
    /// A link that confirms an address or account.
    VerificationLink,
    /// A magic sign-in link.
    SignInLink,
    /// A password reset link.
    PasswordResetLink,
}

/// A code or link with the evidence it was found in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extracted {
    pub kind: ExtractedKind,
    /// The code (separators removed) or the URL.
    pub value: String,
    /// The line or sentence it came from.
    pub evidence: String,
}

static KEYWORD_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?-u:\b)(code|codes|otp|one[- ]time|passcode|pass code|pin|verification|verify|confirm|confirmation|security|sign[- ]?in|log[- ]?in|2fa|two[- ]factor|authenticat\w*|token|código|code de|bestätigung|認証|コード|验证码)",
    )
    .ok()
});

static CODE_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // 4-8 digits (optionally split by one space or dash, e.g. "123 456"), or 5-10 letters and
    // digits mixed (e.g. "G-482913", "AB12CD").
    Regex::new(r"(?-u:\b)(?:[A-Z]{1,3}-)?(\d{3,4}[ -]\d{3,4}|\d{4,8}|[A-Z0-9]{5,10})(?-u:\b)").ok()
});

static URL_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"https?://[^\s<>"'`]+"#).ok());

fn link_kind(url: &str, context: &str) -> Option<ExtractedKind> {
    let u = url.to_ascii_lowercase();
    let c = context.to_ascii_lowercase();
    let has = |s: &str, words: &[&str]| words.iter().any(|w| s.contains(w));
    if has(&u, &["reset", "recover", "forgot"])
        || has(&c, &["reset your password", "reset password"])
    {
        return Some(ExtractedKind::PasswordResetLink);
    }
    if has(
        &u,
        &[
            "magic",
            "signin",
            "sign-in",
            "sign_in",
            "login",
            "log-in",
            "auth/email",
            "passwordless",
        ],
    ) || has(&c, &["sign in", "log in", "magic link", "login link"])
    {
        return Some(ExtractedKind::SignInLink);
    }
    if has(
        &u,
        &[
            "verify",
            "verification",
            "confirm",
            "activate",
            "validate",
            "email-confirm",
            "token=",
        ],
    ) || has(
        &c,
        &[
            "verify your",
            "confirm your",
            "activate your",
            "verify email",
            "confirm email",
        ],
    ) {
        return Some(ExtractedKind::VerificationLink);
    }
    None
}

fn is_plausible_code(code: &str, line: &str) -> bool {
    let digits = code.chars().filter(|c| c.is_ascii_digit()).count();
    let letters = code.chars().filter(|c| c.is_ascii_alphabetic()).count();
    if digits == 0 {
        return false; // plain words such as "VERIFY"
    }
    if letters > 0 && digits < 2 {
        return false;
    }
    // Years and times are not codes.
    if digits == 4
        && letters == 0
        && code
            .parse::<u32>()
            .is_ok_and(|y| (1900..=2100).contains(&y))
    {
        return false;
    }
    let lower = line.to_ascii_lowercase();
    // Amounts, phone numbers and order numbers are common false positives.
    let pos = lower.find(&code.to_ascii_lowercase()).unwrap_or(0);
    let before = &lower[..pos];
    !(before.ends_with('$')
        || before.ends_with('€')
        || before.ends_with('£')
        || before.ends_with('+')
        || before.trim_end().ends_with("order")
        || before.trim_end().ends_with("order #")
        || before.trim_end().ends_with("phone:")
        || before.trim_end().ends_with("tel:"))
}

/// Verification codes and sign-in links in `text` (the visible text of a message).
pub fn extract_codes(text: &str) -> Vec<Extracted> {
    let (Some(kw), Some(code_re), Some(url_re)) =
        (KEYWORD_RE.as_ref(), CODE_RE.as_ref(), URL_RE.as_ref())
    else {
        return Vec::new();
    };
    let text = crate::findings::truncate_bytes(text, 1024 * 1024);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Extracted> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if out.len() >= 20 {
            break;
        }
        let evidence = crate::findings::excerpt(line.trim());
        // A code is accepted when a keyword is on its line or on one of the two lines before it.
        let context_has_keyword = kw.is_match(line)
            || (i >= 1 && kw.is_match(lines[i - 1]))
            || (i >= 2 && lines[i - 1].trim().is_empty() && kw.is_match(lines[i - 2]));
        let without_urls = url_re.replace_all(line, " ");
        if context_has_keyword {
            for m in code_re.find_iter(&without_urls) {
                let raw = m.as_str();
                if !is_plausible_code(raw, &without_urls) {
                    continue;
                }
                let value: String = raw.chars().filter(|c| *c != ' ').collect();
                if out.iter().any(|e| e.value == value) {
                    continue;
                }
                let evidence = if kw.is_match(line) || i == 0 {
                    evidence.clone()
                } else {
                    crate::findings::excerpt(&format!("{} {}", lines[i - 1].trim(), line.trim()))
                };
                out.push(Extracted {
                    kind: ExtractedKind::VerificationCode,
                    value,
                    evidence,
                });
            }
        }
        for m in url_re.find_iter(line) {
            let url = m
                .as_str()
                .trim_end_matches(['.', ',', ';', ')', '>', '!', '?']);
            let context = if i > 0 {
                format!("{} {}", lines[i - 1], line)
            } else {
                line.to_string()
            };
            if let Some(kind) = link_kind(url, &context)
                && !out.iter().any(|e| e.value == url)
            {
                out.push(Extracted {
                    kind,
                    value: url.to_string(),
                    evidence: evidence.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_codes_and_links() {
        let t = "Hi,\nYour verification code is 482 913.\nOr click Verify email <https://example.com/verify?token=abc>\nOrder #123456 total $4599";
        let e = extract_codes(t);
        assert!(
            e.iter()
                .any(|x| x.kind == ExtractedKind::VerificationCode && x.value == "482913")
        );
        assert!(e.iter().any(|x| x.kind == ExtractedKind::VerificationLink));
        assert!(!e.iter().any(|x| x.value == "123456"));
        assert!(!e.iter().any(|x| x.value == "4599"));
    }

    #[test]
    fn code_on_next_line() {
        let e =
            extract_codes("Enter this code to sign in:\n\n  739201\n\nIt expires in 10 minutes.");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].value, "739201");
    }
}
