//! MX resolution for direct delivery (RFC 5321 5.1, RFC 7505).

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// DNS for direct delivery: MX, A and AAAA lookups. Cheap to clone (shares
/// the cache).
#[derive(Clone)]
pub struct MxResolver {
    inner: Arc<TokioResolver>,
    description: String,
}

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxResolver")
            .field("servers", &self.description)
            .finish()
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the MX resolver: {0}")]
pub struct MxResolverError(String);

impl MxResolver {
    /// The system's resolver (`/etc/resolv.conf`), for production. hickory
    /// caches answers by their TTL.
    pub fn system() -> Result<Self, MxResolverError> {
        let inner = TokioResolver::builder_tokio()
            .map_err(|err| MxResolverError(format!("{err}; check /etc/resolv.conf")))?
            .build()
            .map_err(|err| MxResolverError(err.to_string()))?;
        Ok(MxResolver {
            inner: Arc::new(inner),
            description: "system".into(),
        })
    }

    /// One name server at `addr` (UDP, then TCP), e.g. a test server on a
    /// high port; 5 s per query, two attempts.
    pub fn with_nameserver(addr: SocketAddr) -> Result<Self, MxResolverError> {
        Self::with_nameserver_timeout(addr, ResolverOpts::default().timeout, 2)
    }

    /// Like [`MxResolver::with_nameserver`], with `timeout` per query and
    /// `attempts` tries before a lookup counts as failed (`Deferred`).
    pub fn with_nameserver_timeout(
        addr: SocketAddr,
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, MxResolverError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            addr.ip(),
            true,
            vec![udp, tcp],
        )]);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = attempts.max(1);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|err| MxResolverError(err.to_string()))?;
        Ok(MxResolver {
            inner: Arc::new(inner),
            description: addr.to_string(),
        })
    }

    /// The hosts to try for `domain`, best first.
    pub(crate) async fn mx_hosts(&self, domain: &str) -> MxAnswer {
        if let Some(ip) = domain_literal(domain) {
            return MxAnswer::Hosts(vec![MxHost {
                name: ip.to_string(),
                preference: 0,
                implicit: true,
            }]);
        }
        let fqdn = fqdn(domain);
        match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let records: Vec<(u16, String, bool)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => {
                            Some((mx.preference, mx.exchange.to_ascii(), mx.exchange.is_root()))
                        }
                        _ => None,
                    })
                    .collect();
                mx_answer(domain, records)
            }
            Err(err) => classify(domain, "MX", &err, true),
        }
    }

    /// The addresses of one MX host (A and AAAA).
    pub(crate) async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, AddrError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.inner.lookup_ip(fqdn(host).as_str()).await {
            Ok(lookup) => {
                let addrs: Vec<IpAddr> = lookup.iter().collect();
                if addrs.is_empty() {
                    Err(AddrError::NoAddress(format!(
                        "{host} has no address (A/AAAA) records"
                    )))
                } else {
                    Ok(addrs)
                }
            }
            Err(err) => match classify(host, "A/AAAA", &err, false) {
                MxAnswer::TempFail(reason) => Err(AddrError::TempFail(reason)),
                MxAnswer::NoDomain(reason) => Err(AddrError::NoAddress(reason)),
                MxAnswer::NullMx | MxAnswer::Hosts(_) => Err(AddrError::NoAddress(format!(
                    "{host} has no address (A/AAAA) records"
                ))),
            },
        }
    }
}

/// The result of an MX lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MxAnswer {
    /// Hosts to try in this order (at least one).
    Hosts(Vec<MxHost>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// The domain does not exist: permanent.
    NoDomain(String),
    /// Timeout, SERVFAIL, network trouble: try later.
    TempFail(String),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MxHost {
    /// Host name without the trailing dot, or an IP address.
    pub(crate) name: String,
    pub(crate) preference: u16,
    /// No MX record: the domain itself (RFC 5321 5.1 implicit MX).
    pub(crate) implicit: bool,
}

#[derive(Debug)]
pub(crate) enum AddrError {
    NoAddress(String),
    TempFail(String),
}

/// Orders MX records: lowest preference first; hosts of equal preference in
/// random order (RFC 5321 5.1) so that load spreads. Null MX records (`.`)
/// are dropped; a domain with nothing but a null MX accepts no mail.
fn mx_answer(domain: &str, records: Vec<(u16, String, bool)>) -> MxAnswer {
    if records.is_empty() {
        // An answer without MX records (e.g. only a CNAME): implicit MX.
        return implicit(domain);
    }
    let random = RandomState::new();
    let mut hosts: Vec<(u16, u64, MxHost)> = records
        .into_iter()
        .filter(|(_, _, is_root)| !is_root)
        .map(|(preference, name, _)| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let tiebreak = random.hash_one(&name);
            (
                preference,
                tiebreak,
                MxHost {
                    name,
                    preference,
                    implicit: false,
                },
            )
        })
        .collect();
    if hosts.is_empty() {
        return MxAnswer::NullMx;
    }
    hosts.sort_by_key(|(preference, tiebreak, _)| (*preference, *tiebreak));
    let mut seen = HashSet::new();
    hosts.retain(|(_, _, host)| seen.insert(host.name.clone()));
    MxAnswer::Hosts(hosts.into_iter().map(|(_, _, host)| host).collect())
}

fn implicit(domain: &str) -> MxAnswer {
    MxAnswer::Hosts(vec![MxHost {
        name: domain.trim_end_matches('.').to_string(),
        preference: 0,
        implicit: true,
    }])
}

/// A failed lookup: NXDOMAIN is permanent; "no records" means implicit MX
/// (for an MX query); anything else (timeout, SERVFAIL, refused) is
/// temporary.
fn classify(name: &str, what: &str, err: &NetError, mx_query: bool) -> MxAnswer {
    if err.is_nx_domain() {
        MxAnswer::NoDomain(format!("domain {name} does not exist (NXDOMAIN)"))
    } else if err.is_no_records_found() {
        if mx_query {
            implicit(name)
        } else {
            MxAnswer::NoDomain(format!("{name} has no {what} records"))
        }
    } else {
        MxAnswer::TempFail(format!("DNS lookup of {what} for {name} failed: {err}"))
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3).
fn domain_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(answer: MxAnswer) -> Vec<String> {
        match answer {
            MxAnswer::Hosts(hosts) => hosts.into_iter().map(|h| h.name).collect(),
            other => panic!("expected hosts, got {other:?}"),
        }
    }

    #[test]
    fn sorted_by_preference() {
        let records = vec![
            (30, "c.example.".to_string(), false),
            (10, "a.example.".to_string(), false),
            (20, "b.example.".to_string(), false),
        ];
        assert_eq!(
            names(mx_answer("example", records)),
            ["a.example", "b.example", "c.example"]
        );
    }

    #[test]
    fn equal_preferences_all_kept() {
        let records = vec![
            (10, "a.example.".to_string(), false),
            (10, "b.example.".to_string(), false),
            (5, "first.example.".to_string(), false),
            (10, "A.example.".to_string(), false),
        ];
        let got = names(mx_answer("example", records));
        assert_eq!(got[0], "first.example");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn null_mx() {
        assert_eq!(
            mx_answer("example", vec![(0, ".".to_string(), true)]),
            MxAnswer::NullMx
        );
        // A null MX beside real ones is ignored.
        assert_eq!(
            names(mx_answer(
                "example",
                vec![(0, ".".into(), true), (10, "mx.example.".into(), false)]
            )),
            ["mx.example"]
        );
    }

    #[test]
    fn no_records_is_implicit_mx() {
        assert_eq!(
            mx_answer("example.org", Vec::new()),
            MxAnswer::Hosts(vec![MxHost {
                name: "example.org".into(),
                preference: 0,
                implicit: true
            }])
        );
    }

    #[test]
    fn literals() {
        assert_eq!(
            domain_literal("[127.0.0.1]"),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(
            domain_literal("[IPv6:::1]"),
            Some("::1".parse().expect("ip"))
        );
        assert_eq!(domain_literal("example.org"), None);
        assert_eq!(domain_literal("[example.org]"), None);
    }
}
