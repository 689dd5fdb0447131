//! Sender authentication with `mail-auth`: SPF at MAIL FROM; DKIM, ARC and
//! DMARC at the end of DATA; the `Authentication-Results` header; removal of
//! headers a stranger must not be able to set.
//!
//! DNS is injectable through [`DnsResolver`]: production asks the system's
//! resolver; tests hand over fixed records and nothing ever leaves the
//! process. A DNS failure becomes `temperror` in the verdicts; it never loses
//! a message.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::resolver::ToFqdn;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, DnsError, MX,
    MessageAuthenticator, Parameters, RecordSet, ResolverCache, SpfOutput, SpfResult, Txt,
};

use crate::handler::{AuthResult, AuthVerdicts};

/// The header we add for local agent-to-agent mail only; one arriving from
/// outside is a forgery.
pub const VERIFIED_SENDER_HEADER: &str = "X-Agentpost-Verified-Sender";

/// DNS for sender authentication.
pub struct DnsResolver {
    authenticator: MessageAuthenticator,
    zone: Zone,
}

impl DnsResolver {
    /// The system's resolver (`/etc/resolv.conf`), for production.
    /// hickory caches answers by TTL itself.
    pub fn system() -> Result<Self, DnsSetupError> {
        let authenticator = MessageAuthenticator::new_system_conf()
            .map_err(|err| DnsSetupError(err.to_string()))?;
        Ok(DnsResolver {
            authenticator,
            zone: Zone::default(),
        })
    }

    /// Fixed records and nothing else, for tests: no query ever reaches a
    /// network. Names without records answer "no such record"; names given
    /// to [`StaticDns::fail`] answer with a resolver error (`temperror`).
    pub fn fixed(records: StaticDns) -> Result<Self, DnsSetupError> {
        // No name servers at all: anything the zone does not answer fails at
        // once with "no connections" instead of going out.
        let authenticator = MessageAuthenticator::new(
            ResolverConfig::from_name_servers(Vec::new()),
            ResolverOpts::default(),
        )
        .map_err(|err| DnsSetupError(err.to_string()))?;
        Ok(DnsResolver {
            authenticator,
            zone: records.into_zone(),
        })
    }

    fn params<P>(&self, params: P) -> Parameters<'_, P, Zone, Zone, Zone, Zone, Zone> {
        Parameters::new(params)
            .with_txt_cache(&self.zone)
            .with_mx_cache(&self.zone)
            .with_ptr_cache(&self.zone)
            .with_ipv4_cache(&self.zone)
            .with_ipv6_cache(&self.zone)
    }

    /// SPF for the MAIL FROM identity, or the HELO identity for the null
    /// sender (RFC 7208 2.4).
    pub async fn check_spf(
        &self,
        ip: IpAddr,
        helo: &str,
        our_hostname: &str,
        mail_from: &str,
    ) -> SpfOutput {
        let params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, our_hostname)
        } else {
            SpfParameters::verify_mail_from(ip, helo, our_hostname, mail_from)
        };
        self.authenticator.verify_spf(self.params(params)).await
    }

    /// DKIM, ARC and DMARC for a received message; builds the
    /// `Authentication-Results` header and removes untrusted headers. The
    /// caller prepends the header (and its trace field) to `message`.
    pub async fn authenticate(&self, envelope: Envelope<'_>, body: &[u8]) -> Authenticated {
        let Envelope {
            ip,
            helo,
            our_hostname,
            mail_from,
            spf,
        } = envelope;
        let mut results = AuthenticationResults::new(our_hostname);
        results = if mail_from.is_empty() {
            results.with_spf_ehlo_result(spf, ip, helo)
        } else {
            results.with_spf_mailfrom_result(spf, ip, mail_from, helo)
        };

        let mut dkim = AuthResult::None;
        let mut arc = AuthResult::None;
        let mut dmarc = AuthResult::None;
        let mut dmarc_policy = None;
        if let Some(message) = AuthenticatedMessage::parse(body) {
            let dkim_output = self.authenticator.verify_dkim(self.params(&message)).await;
            let arc_output = self.authenticator.verify_arc(self.params(&message)).await;
            let mail_from_domain = match mail_from.rsplit_once('@') {
                Some((_, domain)) => domain,
                None => helo,
            };
            let dmarc_output = self
                .authenticator
                .verify_dmarc(self.params(DmarcParameters::new(
                    &message,
                    &dkim_output,
                    mail_from_domain,
                    spf,
                )))
                .await;

            dkim = best_dkim(dkim_output.iter().map(|o| o.result()));
            arc = dkim_result(arc_output.result());
            dmarc = dmarc_result(&dmarc_output.result());
            dmarc_policy = dmarc_output.dmarc_record().map(|_| {
                match dmarc_output.policy() {
                    Policy::Reject => "reject",
                    Policy::Quarantine => "quarantine",
                    Policy::None | Policy::Unspecified => "none",
                }
                .to_string()
            });
            let header_from = message.from.first().map(String::as_str).unwrap_or("");
            results = results
                .with_dkim_results(&dkim_output, header_from)
                .with_arc_result(&arc_output, ip)
                .with_dmarc_result(&dmarc_output);
        }
        let header = results.to_header();

        // Verify first, strip after: the verdicts describe what the sender
        // actually signed.
        let (stripped, forged_verified_sender, forged_auth_results) =
            strip_untrusted_headers(body, our_hostname);

        Authenticated {
            verdicts: AuthVerdicts {
                spf: spf_result(spf.result()),
                dkim,
                dmarc,
                dmarc_policy,
                arc,
                header,
                forged_verified_sender,
                forged_auth_results,
            },
            message: stripped,
        }
    }
}

/// The DNS resolver could not be set up (e.g. unreadable resolv.conf).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}; check /etc/resolv.conf")]
pub struct DnsSetupError(String);

/// What the session knows when the data ends.
pub struct Envelope<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    pub our_hostname: &'a str,
    pub mail_from: &'a str,
    pub spf: &'a SpfOutput,
}

/// The outcome of [`DnsResolver::authenticate`].
pub struct Authenticated {
    pub verdicts: AuthVerdicts,
    /// The message with untrusted headers removed, nothing prepended yet.
    pub message: Vec<u8>,
}

fn spf_result(result: SpfResult) -> AuthResult {
    match result {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(result: &DkimResult) -> AuthResult {
    match result {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

/// One passing signature is enough; otherwise report the first result.
fn best_dkim<'a>(mut results: impl Iterator<Item = &'a DkimResult>) -> AuthResult {
    let Some(first) = results.next() else {
        return AuthResult::None;
    };
    if first == &DkimResult::Pass || results.any(|r| r == &DkimResult::Pass) {
        AuthResult::Pass
    } else {
        dkim_result(first)
    }
}

fn dmarc_result(result: &DmarcResult) -> AuthResult {
    match result {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

/// Removes `X-Agentpost-Verified-Sender` fields and `Authentication-Results`
/// fields that claim our authserv-id. Returns the message and how many of
/// each were removed.
///
/// Hand-written because we need exact byte ranges of whole fields (with
/// their folded continuation lines) and must leave every other byte as it
/// was, so that DKIM signatures over the remaining headers keep verifying;
/// the header block is a few lines of RFC 5322 2.2.3 to walk. The data phase
/// has already guaranteed CRLF-only line endings.
fn strip_untrusted_headers(message: &[u8], our_hostname: &str) -> (Vec<u8>, usize, usize) {
    let mut out = Vec::with_capacity(message.len());
    let mut forged_sender = 0;
    let mut forged_results = 0;
    let mut pos = 0;
    while pos < message.len() {
        // End of the header block: an empty line.
        if message[pos..].starts_with(b"\r\n") {
            break;
        }
        // A field runs to the first CRLF not followed by a space or tab.
        let mut end = pos;
        loop {
            match memchr::memmem::find(&message[end..], b"\r\n") {
                Some(p) => {
                    end += p + 2;
                    if !matches!(message.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = message.len();
                    break;
                }
            }
        }
        let field = &message[pos..end];
        let name_end = memchr::memchr(b':', field).unwrap_or(0);
        let name = trim(&field[..name_end]);
        if name.eq_ignore_ascii_case(VERIFIED_SENDER_HEADER.as_bytes()) {
            forged_sender += 1;
        } else if name.eq_ignore_ascii_case(b"Authentication-Results")
            && authserv_id(&field[name_end + 1..]).eq_ignore_ascii_case(our_hostname.as_bytes())
        {
            forged_results += 1;
        } else {
            out.extend_from_slice(field);
        }
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
    (out, forged_sender, forged_results)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end.max(start)]
}

/// The authserv-id: the value up to the first `;` (or space, for a version
/// number), ignoring surrounding whitespace.
fn authserv_id(value: &[u8]) -> &[u8] {
    let value = trim(value);
    let end = value
        .iter()
        .position(|b| *b == b';' || b.is_ascii_whitespace())
        .unwrap_or(value.len());
    &value[..end]
}

/// Fixed DNS records for tests (see [`DnsResolver::fixed`]).
///
/// Names without A/AAAA/MX/PTR records answer with an empty set, so SPF's
/// `a`/`mx` mechanisms simply do not match; one imprecision follows from
/// mail-auth's cache hook: an SPF `exists:` mechanism always matches here.
#[derive(Default)]
pub struct StaticDns {
    txt: Vec<(String, String)>,
    a: Vec<(String, Vec<Ipv4Addr>)>,
    aaaa: Vec<(String, Vec<Ipv6Addr>)>,
    mx: Vec<(String, Vec<(u16, String)>)>,
    ptr: Vec<(IpAddr, Vec<String>)>,
    fail: Vec<String>,
}

impl StaticDns {
    pub fn new() -> Self {
        Self::default()
    }

    /// A TXT record. Its kind is taken from its content: `v=spf1`,
    /// `v=DMARC1`, or a DKIM key (`v=DKIM1`, or any record under
    /// `_domainkey`).
    pub fn txt(mut self, name: &str, value: &str) -> Self {
        self.txt.push((name.to_string(), value.to_string()));
        self
    }

    pub fn a(mut self, name: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.a.push((name.to_string(), addrs.into_iter().collect()));
        self
    }

    pub fn aaaa(mut self, name: &str, addrs: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        self.aaaa
            .push((name.to_string(), addrs.into_iter().collect()));
        self
    }

    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        self.mx
            .push((name.to_string(), vec![(preference, exchange.to_string())]));
        self
    }

    pub fn ptr(mut self, ip: IpAddr, names: impl IntoIterator<Item = String>) -> Self {
        self.ptr.push((ip, names.into_iter().collect()));
        self
    }

    /// Every query for `name` fails as if the DNS server were unreachable.
    pub fn fail(mut self, name: &str) -> Self {
        self.fail.push(name.to_string());
        self
    }

    fn into_zone(self) -> Zone {
        let key = |name: &str| name.to_fqdn().into_owned().into_boxed_str();
        let mut zone = Zone {
            authoritative: true,
            ..Zone::default()
        };
        for (name, value) in self.txt {
            let record = parse_txt(&name, value.as_bytes());
            zone.txt.insert(key(&name), record);
        }
        for (name, addrs) in self.a {
            zone.a.insert(key(&name), record_set(addrs));
        }
        for (name, addrs) in self.aaaa {
            zone.aaaa.insert(key(&name), record_set(addrs));
        }
        for (name, entries) in self.mx {
            let mx: Vec<MX> = entries
                .into_iter()
                .map(|(preference, exchange)| MX {
                    exchanges: vec![key(&exchange)].into_boxed_slice(),
                    preference,
                })
                .collect();
            zone.mx.insert(key(&name), record_set(mx));
        }
        for (ip, names) in self.ptr {
            let names: Vec<Box<str>> = names.iter().map(|n| key(n)).collect();
            zone.ptr.insert(ip, record_set(names));
        }
        zone.fail = self.fail.iter().map(|n| key(n)).collect();
        zone
    }
}

fn parse_txt(name: &str, value: &[u8]) -> Txt {
    let lower = String::from_utf8_lossy(value).to_ascii_lowercase();
    if lower.starts_with("v=spf1") {
        Spf::parse(value).into()
    } else if lower.starts_with("v=dmarc1") {
        Dmarc::parse(value).into()
    } else if lower.starts_with("v=dkim1") || name.to_ascii_lowercase().contains("._domainkey.") {
        DomainKey::parse(value).into()
    } else {
        Txt::Error(mail_auth::Error::Dns(DnsError::InvalidRecordType))
    }
}

/// The records `mail-auth` consults before asking DNS, through its
/// `ResolverCache` hook. Empty and non-authoritative in production (every
/// lookup goes to hickory); authoritative in tests (it answers everything).
#[derive(Default)]
struct Zone {
    authoritative: bool,
    txt: HashMap<Box<str>, Txt>,
    a: HashMap<Box<str>, RecordSet<Ipv4Addr>>,
    aaaa: HashMap<Box<str>, RecordSet<Ipv6Addr>>,
    mx: HashMap<Box<str>, RecordSet<MX>>,
    ptr: HashMap<IpAddr, RecordSet<Box<str>>>,
    fail: HashSet<Box<str>>,
}

impl Zone {
    /// The answer for `name`: `None` sends the query on to hickory, which in
    /// test mode has no servers and so yields a resolver error.
    fn answer<Q, V>(
        &self,
        map: &HashMap<Box<str>, V>,
        name: &Q,
        empty: impl FnOnce() -> V,
    ) -> Option<V>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        if !self.authoritative || self.fail.contains(name) {
            return None;
        }
        Some(map.get(name).cloned().unwrap_or_else(empty))
    }
}

fn record_set<T>(records: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(records),
        dnssec_status: Default::default(),
    }
}

fn empty_set<T>() -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(Vec::new()),
        dnssec_status: Default::default(),
    }
}

impl ResolverCache<Box<str>, Txt> for Zone {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.authoritative && self.fail.contains(name) {
            // TXT can carry an error, so say exactly what happened.
            return Some(Txt::Error(mail_auth::Error::Dns(DnsError::Resolver(
                "injected DNS failure".into(),
            ))));
        }
        self.answer(&self.txt, name, || {
            Txt::Error(mail_auth::Error::Dns(DnsError::RecordNotFound(
                ResponseCode::NXDomain,
            )))
        })
    }
    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
}

macro_rules! record_set_cache {
    ($value:ty, $field:ident) => {
        impl ResolverCache<Box<str>, RecordSet<$value>> for Zone {
            fn get<Q>(&self, name: &Q) -> Option<RecordSet<$value>>
            where
                Box<str>: std::borrow::Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.answer(&self.$field, name, empty_set)
            }
            fn remove<Q>(&self, _: &Q) -> Option<RecordSet<$value>>
            where
                Box<str>: std::borrow::Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }
            fn insert(&self, _: Box<str>, _: RecordSet<$value>, _: Instant) {}
        }
    };
}
record_set_cache!(Ipv4Addr, a);
record_set_cache!(Ipv6Addr, aaaa);
record_set_cache!(MX, mx);

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for Zone {
    fn get<Q>(&self, addr: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.authoritative {
            return None;
        }
        Some(self.ptr.get(addr).cloned().unwrap_or_else(empty_set))
    }
    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: IpAddr, _: RecordSet<Box<str>>, _: Instant) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_forged_headers_only() {
        let msg = b"Received: x\r\nX-Agentpost-Verified-Sender: a@b\r\n\tcontinued\r\n\
Authentication-Results: mx.test; spf=pass\r\nAuthentication-Results: other.example; dkim=pass\r\n\
Subject: hi\r\n\r\nX-Agentpost-Verified-Sender: body stays\r\n";
        let (out, sender, results) = strip_untrusted_headers(msg, "mx.test");
        assert_eq!((sender, results), (1, 1));
        assert_eq!(
            out,
            b"Received: x\r\nAuthentication-Results: other.example; dkim=pass\r\n\
Subject: hi\r\n\r\nX-Agentpost-Verified-Sender: body stays\r\n"
        );
    }

    #[test]
    fn headers_only_message() {
        let (out, sender, _) =
            strip_untrusted_headers(b"x-agentpost-verified-sender : y\r\nA: b", "mx");
        assert_eq!(sender, 1);
        assert_eq!(out, b"A: b");
    }
}
