//! Credential secrets: `ap_<kind>_` + 43 base62 characters (256 random
//! bits) + 6 base62 characters of CRC32 over everything before them.
//! The prefix lets secret scanners recognise a leaked key; the checksum
//! rejects typos before any database lookup. Only SHA-256 hashes are stored.
//!
//! Hand-written: the format is ours (modelled on GitHub's token format), and
//! drawing base62 characters directly avoids a big-number encoder.

use rand::Rng;
use rand::distr::Uniform;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 43 characters of base62 carry 43 * log2(62) = 256.03 bits.
const RANDOM_LEN: usize = 43;
/// 62^6 > 2^32, so six characters hold any CRC32.
const CHECKSUM_LEN: usize = 6;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Admin,
    Agent,
    Approver,
    /// SMTP submission password for one agent (never an HTTP bearer token).
    AppPassword,
}

impl CredentialKind {
    pub fn prefix(self) -> &'static str {
        match self {
            CredentialKind::Admin => "ap_adm_",
            CredentialKind::Agent => "ap_agt_",
            CredentialKind::Approver => "ap_apr_",
            CredentialKind::AppPassword => "ap_app_",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Admin => "admin",
            CredentialKind::Agent => "agent",
            CredentialKind::Approver => "approver",
            CredentialKind::AppPassword => "app_password",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(CredentialKind::Admin),
            "agent" => Some(CredentialKind::Agent),
            "approver" => Some(CredentialKind::Approver),
            "app_password" => Some(CredentialKind::AppPassword),
            _ => None,
        }
    }
}

/// A freshly minted secret. Deliberately not `Debug`/`Display` so it cannot
/// slip into a log line by accident; `expose()` is the one way out.
pub struct Secret(String);

impl Secret {
    pub fn generate(kind: CredentialKind) -> Self {
        let mut rng = rand::rng();
        let dist =
            Uniform::new(0, ALPHABET.len()).unwrap_or_else(|_| unreachable!("non-empty range"));
        let mut s = String::with_capacity(7 + RANDOM_LEN + CHECKSUM_LEN);
        s.push_str(kind.prefix());
        for _ in 0..RANDOM_LEN {
            s.push(ALPHABET[rng.sample(dist)] as char);
        }
        let crc = crc32fast::hash(s.as_bytes());
        s.push_str(&encode_checksum(crc));
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn encode_checksum(mut crc: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a presented string is not a credential. The caller answers 401 for
/// all of these without saying which, but the CLI can tell the operator.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not an agentpost credential (expected ap_adm_, ap_agt_ or ap_apr_ prefix)")]
    Prefix,
    #[error("credential has the wrong length")]
    Length,
    #[error("credential contains characters outside base62")]
    Charset,
    #[error("credential checksum does not match (a typo or a truncated copy)")]
    Checksum,
}

/// Checks prefix, length, alphabet and checksum; no database involved.
pub fn parse(presented: &str) -> Result<CredentialKind, FormatError> {
    let kind = [
        CredentialKind::Admin,
        CredentialKind::Agent,
        CredentialKind::Approver,
        CredentialKind::AppPassword,
    ]
    .into_iter()
    .find(|k| presented.starts_with(k.prefix()))
    .ok_or(FormatError::Prefix)?;
    let body = &presented[kind.prefix().len()..];
    if body.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(FormatError::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FormatError::Charset);
    }
    let split = presented.len() - CHECKSUM_LEN;
    let expected = encode_checksum(crc32fast::hash(&presented.as_bytes()[..split]));
    if expected != presented[split..] {
        return Err(FormatError::Checksum);
    }
    Ok(kind)
}

/// What is stored: hex SHA-256 of the whole secret. High-entropy secrets need
/// no slow hash; argon2 is for human passwords (app passwords).
pub fn hash(presented: &str) -> String {
    hex::encode(Sha256::digest(presented.as_bytes()))
}

/// The last four characters, shown in listings to tell keys apart.
pub fn last4(presented: &str) -> String {
    presented[presented.len().saturating_sub(4)..].to_string()
}

/// A key for sealing idempotent replays that contain this caller's new
/// secrets: derived from the caller's own secret, so only a caller holding
/// it can read the replay (see service::idempotency).
pub fn replay_key(presented: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"agentpost idempotency replay v1\0");
    h.update(presented.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_carry_256_bits() {
        for kind in [
            CredentialKind::Admin,
            CredentialKind::Agent,
            CredentialKind::Approver,
        ] {
            let s = Secret::generate(kind);
            assert_eq!(parse(s.expose()), Ok(kind));
            assert_eq!(s.expose().len(), 7 + 43 + 6);
            assert!((RANDOM_LEN as f64) * 62f64.log2() >= 256.0);
        }
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let s = Secret::generate(CredentialKind::Agent).into_exposed();
        let mut chars: Vec<char> = s.chars().collect();
        let i = 20;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(parse(&typo), Err(FormatError::Checksum));
        assert_eq!(parse(&s[..s.len() - 1]), Err(FormatError::Length));
        assert_eq!(parse("ghp_abc"), Err(FormatError::Prefix));
        let bad = format!("{}!{}", &s[..10], &s[11..]);
        assert_eq!(parse(&bad), Err(FormatError::Charset));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::generate(CredentialKind::Admin);
        assert!(!format!("{s:?}").contains(s.expose()));
    }
}
