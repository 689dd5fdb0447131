//! Agent addresses, parsed once ("parse, don't validate"): an RFC 5321
//! dot-atom local part on a domain the organisation owns.

use crate::error::{Error, Result};

/// Local parts an agent may never hold: role mailboxes a human must read
/// (RFC 2142) and the ones mail systems assume.
pub const RESERVED_LOCAL_PARTS: &[&str] = &[
    "postmaster",
    "abuse",
    "hostmaster",
    "webmaster",
    "mailer-daemon",
    "noc",
    "security",
    "root",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddress {
    local: String,
    domain: String,
}

impl AgentAddress {
    /// Parses `local@domain`; `field` names the request field in errors.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        let s = s.trim();
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| Error::invalid(field, "must be an email address like name@domain"))?;
        Self::from_parts(local, domain, field)
    }

    pub fn from_parts(local: &str, domain: &str, field: &str) -> Result<Self> {
        validate_local_part(local, field)?;
        let domain = normalise_domain(domain).map_err(|m| Error::invalid(field, m))?;
        if RESERVED_LOCAL_PARTS.contains(&local.to_ascii_lowercase().as_str()) {
            return Err(Error::invalid(
                field,
                format!("'{local}' is reserved for humans and cannot be an agent address"),
            ));
        }
        Ok(Self {
            local: local.to_string(),
            domain,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// Case-insensitive uniqueness key.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// RFC 5321 dot-atom local part (quoted strings are legal but no agent
/// needs one, and they confuse every other system; refused with a reason).
fn validate_local_part(local: &str, field: &str) -> Result<()> {
    if local.is_empty() {
        return Err(Error::invalid(field, "local part is empty"));
    }
    if local.len() > 64 {
        return Err(Error::invalid(
            field,
            "local part is longer than 64 octets (RFC 5321 4.5.3.1.1)",
        ));
    }
    if local.starts_with('"') {
        return Err(Error::invalid(
            field,
            "quoted local parts are not supported; use letters, digits and . _ - +",
        ));
    }
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(Error::invalid(
                field,
                "local part may not start or end with a dot or contain two dots in a row",
            ));
        }
        if let Some(c) = atom
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(*c)))
        {
            return Err(Error::invalid(
                field,
                format!("local part may not contain {c:?}"),
            ));
        }
    }
    Ok(())
}

/// Lower-cased, trailing dot removed, LDH labels.
pub fn normalise_domain(domain: &str) -> std::result::Result<String, String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 {
        return Err("domain must be 1 to 253 characters".into());
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!("'{domain}' is not a valid domain name"));
        }
    }
    if !d.contains('.') {
        return Err(format!("'{domain}' is not a fully qualified domain name"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_folds_case_for_uniqueness() {
        let a = AgentAddress::parse("Support-Agent+x@Agents.Example.com", "address").unwrap();
        assert_eq!(a.to_string(), "Support-Agent+x@agents.example.com");
        assert_eq!(a.key(), "support-agent+x@agents.example.com");
    }

    #[test]
    fn refuses_with_the_field_named() {
        for bad in [
            "nobody",
            "a..b@x.com",
            ".a@x.com",
            "a b@x.com",
            "\"q\"@x.com",
            "postmaster@x.com",
            "Abuse@x.com",
            "a@-x.com",
            "a@localhost",
        ] {
            match AgentAddress::parse(bad, "address") {
                Err(Error::Invalid { field, .. }) => assert_eq!(field, "address", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long = format!("{}@x.com", "a".repeat(65));
        assert!(AgentAddress::parse(&long, "address").is_err());
    }
}
