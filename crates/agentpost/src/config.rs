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
    webhooks_allow_private: Option<bool>,
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
        webhooks_allow_private: false,
        webhook_retry_schedule: None,
        webhook_disable_after: None,
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
    Ok(Resolved {
        store: location,
        http: server.http.or(file.http).unwrap_or(default_http),
        core: CoreConfig {
            default_domain: domain,
            hostname,
            tombstone_days,
            webhooks,
        },
        log_json: log_format == "json",
        smtp: server.smtp.or(file.smtp).unwrap_or(default_smtp),
        tls,
        smtp_dns_system: smtp_dns == "system",
    })
}
