//! Configuration: flag > `AGENTPOST_*` environment variable >
//! agentpost.toml > built-in default. clap resolves the first two (each flag names its
//! variable); this module layers the file and the defaults beneath them.

use agentpost_core::{CoreConfig, StoreLocation};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "./agentpost-data";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8025";
pub const DEFAULT_DOMAIN: &str = "agents.localhost";
pub const DEFAULT_SMTP: &str = "127.0.0.1:2525";
pub const DEFAULT_SUBMISSION: &str = "127.0.0.1:2587";

/// Where the data lives; shared by every command that opens the store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory for the embedded default (SQLite + blobs).
    #[arg(long, env = "AGENTPOST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://…); when set, used instead of the data directory.
    #[arg(
        long,
        env = "AGENTPOST_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Configuration file [default: ./agentpost.toml if present].
    #[arg(long, env = "AGENTPOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// HTTP API listen address.
    #[arg(long, env = "AGENTPOST_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Mail domain created on first start.
    #[arg(long, env = "AGENTPOST_DOMAIN", value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// This server's host name (MX target in the DNS records).
    #[arg(long, env = "AGENTPOST_HOSTNAME", value_name = "HOST")]
    pub hostname: Option<String>,
    /// Days a decommissioned agent's address is refused and not reused.
    #[arg(long, env = "AGENTPOST_TOMBSTONE_DAYS", value_name = "DAYS")]
    pub tombstone_days: Option<i64>,
    /// Log format: text or json.
    #[arg(long, env = "AGENTPOST_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Inbound SMTP listen address [default: 127.0.0.1:2525].
    #[arg(long, env = "AGENTPOST_SMTP", value_name = "ADDR")]
    pub smtp: Option<SocketAddr>,
    /// STARTTLS certificate chain (PEM); without it a self-signed one is
    /// generated (development only: senders cannot verify it).
    #[arg(
        long,
        env = "AGENTPOST_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// STARTTLS private key (PEM), with --tls-cert.
    #[arg(
        long,
        env = "AGENTPOST_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// DNS for SPF/DKIM/DMARC: `system` (resolv.conf) or `offline` (no
    /// lookups, every sender authenticates as `none`; tests and air-gapped
    /// development).
    #[arg(long, env = "AGENTPOST_SMTP_DNS", value_name = "MODE", hide = true)]
    pub smtp_dns: Option<String>,
    /// Concurrent inbound SMTP connections overall; the next one is refused
    /// with `421 4.7.0` [default: 1000].
    #[arg(long, env = "AGENTPOST_SMTP_MAX_CONNECTIONS", value_name = "N")]
    pub smtp_max_connections: Option<usize>,
    /// Concurrent inbound SMTP connections from one client IP address
    /// [default: 20].
    #[arg(long, env = "AGENTPOST_SMTP_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub smtp_max_connections_per_ip: Option<usize>,
    /// Allow webhook endpoints on loopback, private and link-local addresses
    /// (refused by default: an agent's events must not reach internal services).
    #[arg(long, env = "AGENTPOST_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// Webhook retry waits, e.g. `1s,1s,2s` (tests; default 5s,5m,30m,2h,5h,10h,14h,20h,24h).
    #[arg(
        long,
        env = "AGENTPOST_WEBHOOK_RETRY_SCHEDULE",
        value_name = "LIST",
        hide = true
    )]
    pub webhook_retry_schedule: Option<String>,
    /// Disable an endpoint after failing this long (tests; default 5d).
    #[arg(
        long,
        env = "AGENTPOST_WEBHOOK_DISABLE_AFTER",
        value_name = "DURATION",
        hide = true
    )]
    pub webhook_disable_after: Option<String>,
    /// SMTP submission listen address for mail clients with app passwords
    /// [default: 127.0.0.1:2587].
    #[arg(long, env = "AGENTPOST_SUBMISSION", value_name = "ADDR")]
    pub submission: Option<SocketAddr>,
    /// Send all outbound mail through this smarthost (HOST:PORT); without
    /// it, mail goes directly to each recipient domain's MX. AUTH
    /// credentials come from AGENTPOST_RELAY_USERNAME and
    /// AGENTPOST_RELAY_PASSWORD (or AGENTPOST_RELAY_PASSWORD_FILE).
    #[arg(long, env = "AGENTPOST_RELAY", value_name = "HOST:PORT")]
    pub relay: Option<String>,
    /// STARTTLS towards the relay: required, opportunistic or none [default: required].
    #[arg(long, env = "AGENTPOST_RELAY_TLS", value_name = "MODE")]
    pub relay_tls: Option<String>,
    /// Give up on a recipient still failing temporarily after this long,
    /// e.g. 5d or 12h [default: 5d].
    #[arg(long, env = "AGENTPOST_OUTBOUND_GIVE_UP", value_name = "DURATION")]
    pub outbound_give_up: Option<String>,
    /// Outbound retry waits, e.g. `1s,2s` (tests; default 1m,5m,15m,30m,1h,2h,4h).
    #[arg(
        long,
        env = "AGENTPOST_OUTBOUND_RETRY_SCHEDULE",
        value_name = "LIST",
        hide = true
    )]
    pub outbound_retry_schedule: Option<String>,
    /// Direct delivery: the MX port (tests; default 25).
    #[arg(long, env = "AGENTPOST_DIRECT_PORT", value_name = "PORT", hide = true)]
    pub direct_port: Option<u16>,
    /// Direct delivery: ask this DNS server (IP:PORT) for MX records instead of the system's (tests).
    #[arg(long, env = "AGENTPOST_OUTBOUND_DNS", value_name = "ADDR", hide = true)]
    pub outbound_dns: Option<SocketAddr>,
}

/// agentpost.toml: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    http: Option<SocketAddr>,
    domain: Option<String>,
    hostname: Option<String>,
    tombstone_days: Option<i64>,
    log_format: Option<String>,
    smtp: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    smtp_dns: Option<String>,
    smtp_max_connections: Option<usize>,
    smtp_max_connections_per_ip: Option<usize>,
    webhooks_allow_private: Option<bool>,
    submission: Option<SocketAddr>,
    relay: Option<String>,
    relay_tls: Option<String>,
    outbound_give_up: Option<String>,
}

fn load_file(explicit: Option<&PathBuf>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from("agentpost.toml");
            if !p.exists() {
                return Ok(FileConfig::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{} is not valid agentpost configuration", path.display()))
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub store: StoreLocation,
    pub http: SocketAddr,
    pub core: CoreConfig,
    pub log_json: bool,
    pub smtp: SocketAddr,
    /// Certificate and key PEM files; None: self-signed.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// False: no DNS lookups for sender authentication.
    pub smtp_dns_system: bool,
    /// Concurrent SMTP connections overall and per client IP address.
    pub smtp_max_connections: usize,
    pub smtp_max_connections_per_ip: usize,
    pub submission: SocketAddr,
    pub route: OutboundRoute,
}

/// Where outbound mail goes.
#[derive(Debug, Clone)]
pub enum OutboundRoute {
    Relay {
        host: String,
        port: u16,
        tls: agentpost_smtp::RelayTls,
        credentials: Option<(String, String)>,
        accept_invalid_certs: bool,
    },
    Direct {
        nameserver: Option<SocketAddr>,
        port: u16,
    },
}

/// Relay AUTH credentials from the environment (never from a flag, so they
/// stay out of process listings and shell history).
fn relay_credentials() -> Result<Option<(String, String)>> {
    let Ok(user) = std::env::var("AGENTPOST_RELAY_USERNAME") else {
        return Ok(None);
    };
    let password = match (
        std::env::var("AGENTPOST_RELAY_PASSWORD"),
        std::env::var_os("AGENTPOST_RELAY_PASSWORD_FILE"),
    ) {
        (Ok(p), _) => p,
        (Err(_), Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "cannot read AGENTPOST_RELAY_PASSWORD_FILE ({})",
                    path.to_string_lossy()
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        _ => bail!(
            "AGENTPOST_RELAY_USERNAME is set: give the password in AGENTPOST_RELAY_PASSWORD or AGENTPOST_RELAY_PASSWORD_FILE"
        ),
    };
    Ok(Some((user, password)))
}

pub fn resolve(store: &StoreArgs, server: Option<&ServerArgs>) -> Result<Resolved> {
    let file = load_file(store.config.as_ref())?;
    let database_url = store.database_url.clone().or(file.database_url);
    let location = match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            StoreLocation::Postgres(url)
        }
        Some(url) => bail!(
            "--database-url must be a postgres:// URL (got {}); leave it unset to use the embedded SQLite data directory",
            agentpost_core::redact_url(&url)
        ),
        None => StoreLocation::DataDir(
            store
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        ),
    };
    let pick = |flag: Option<String>, file: Option<String>, default: &str| {
        flag.or(file).unwrap_or_else(|| default.to_string())
    };
    let server = server.cloned().unwrap_or(ServerArgs {
        http: None,
        domain: None,
        hostname: None,
        tombstone_days: None,
        log_format: None,
        smtp: None,
        tls_cert: None,
        tls_key: None,
        smtp_dns: None,
        smtp_max_connections: None,
        smtp_max_connections_per_ip: None,
        webhooks_allow_private: false,
        webhook_retry_schedule: None,
        webhook_disable_after: None,
        submission: None,
        relay: None,
        relay_tls: None,
        outbound_give_up: None,
        outbound_retry_schedule: None,
        direct_port: None,
        outbound_dns: None,
    });
    let mut webhooks = agentpost_core::WebhookSettings {
        allow_private: server.webhooks_allow_private
            || file.webhooks_allow_private.unwrap_or(false),
        ..Default::default()
    };
    if let Some(s) = &server.webhook_retry_schedule {
        webhooks.retry_schedule = agentpost_core::parse_durations(s)
            .map_err(|e| anyhow::anyhow!("AGENTPOST_WEBHOOK_RETRY_SCHEDULE: {e}"))?;
    }
    if let Some(s) = &server.webhook_disable_after {
        webhooks.disable_after = agentpost_core::parse_duration(s)
            .map_err(|e| anyhow::anyhow!("AGENTPOST_WEBHOOK_DISABLE_AFTER: {e}"))?;
    }
    let domain = pick(server.domain, file.domain, DEFAULT_DOMAIN);
    let hostname = server
        .hostname
        .or(file.hostname)
        .unwrap_or_else(|| format!("mail.{domain}"));
    let tombstone_days = server.tombstone_days.or(file.tombstone_days).unwrap_or(90);
    if !(0..=3650).contains(&tombstone_days) {
        bail!("--tombstone-days must be between 0 and 3650");
    }
    let log_format = pick(server.log_format, file.log_format, "text");
    if log_format != "text" && log_format != "json" {
        bail!("--log-format must be text or json");
    }
    let default_http: SocketAddr = DEFAULT_HTTP.parse().context("default listen address")?;
    let default_smtp: SocketAddr = DEFAULT_SMTP.parse().context("default SMTP address")?;
    let tls = match (
        server.tls_cert.or(file.tls_cert),
        server.tls_key.or(file.tls_key),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!(
            "--tls-cert and --tls-key go together: give both PEM files, or neither for a self-signed certificate"
        ),
    };
    let smtp_dns = pick(server.smtp_dns, file.smtp_dns, "system");
    if smtp_dns != "system" && smtp_dns != "offline" {
        bail!("--smtp-dns must be system or offline");
    }
    let smtp_limits = agentpost_smtp::Limits::default();
    let smtp_max_connections = server
        .smtp_max_connections
        .or(file.smtp_max_connections)
        .unwrap_or(smtp_limits.max_connections);
    let smtp_max_connections_per_ip = server
        .smtp_max_connections_per_ip
        .or(file.smtp_max_connections_per_ip)
        .unwrap_or(smtp_limits.max_connections_per_ip);
    if !(1..=1_000_000).contains(&smtp_max_connections) {
        bail!("--smtp-max-connections must be between 1 and 1000000");
    }
    if !(1..=smtp_max_connections).contains(&smtp_max_connections_per_ip) {
        bail!(
            "--smtp-max-connections-per-ip must be between 1 and --smtp-max-connections ({smtp_max_connections})"
        );
    }
    let mut outbound = agentpost_core::OutboundSettings::default();
    if let Some(s) = &server.outbound_retry_schedule {
        outbound.retry_schedule = agentpost_core::parse_durations(s)
            .map_err(|e| anyhow::anyhow!("AGENTPOST_OUTBOUND_RETRY_SCHEDULE: {e}"))?;
    }
    if let Some(s) = server.outbound_give_up.clone().or(file.outbound_give_up) {
        outbound.give_up_after = agentpost_core::parse_duration(&s)
            .map_err(|e| anyhow::anyhow!("--outbound-give-up: {e}"))?;
    }
    let relay_tls = match pick(server.relay_tls, file.relay_tls, "required").as_str() {
        "required" => agentpost_smtp::RelayTls::Required,
        "opportunistic" => agentpost_smtp::RelayTls::Opportunistic,
        "none" => agentpost_smtp::RelayTls::None,
        _ => bail!("--relay-tls must be required, opportunistic or none"),
    };
    let route = match server.relay.or(file.relay) {
        Some(relay) => {
            let (host, port) = relay
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((
                        h.trim_matches(['[', ']']).to_string(),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .filter(|(h, p)| !h.is_empty() && *p != 0)
                .ok_or_else(|| {
                    anyhow::anyhow!("--relay must be HOST:PORT, e.g. smtp.example.com:587")
                })?;
            OutboundRoute::Relay {
                host,
                port,
                tls: relay_tls,
                credentials: relay_credentials()?,
                accept_invalid_certs: std::env::var("AGENTPOST_RELAY_ACCEPT_INVALID_CERTS")
                    .is_ok_and(|v| v == "1" || v == "true"),
            }
        }
        None => OutboundRoute::Direct {
            nameserver: server.outbound_dns,
            port: server.direct_port.unwrap_or(25),
        },
    };
    let default_submission: SocketAddr = DEFAULT_SUBMISSION
        .parse()
        .context("default submission address")?;
    Ok(Resolved {
        store: location,
        http: server.http.or(file.http).unwrap_or(default_http),
        core: CoreConfig {
            default_domain: domain,
            hostname,
            tombstone_days,
            webhooks,
            outbound,
            ..CoreConfig::default()
        },
        log_json: log_format == "json",
        smtp: server.smtp.or(file.smtp).unwrap_or(default_smtp),
        tls,
        smtp_dns_system: smtp_dns == "system",
        smtp_max_connections,
        smtp_max_connections_per_ip,
        submission: server
            .submission
            .or(file.submission)
            .unwrap_or(default_submission),
        route,
    })
}
