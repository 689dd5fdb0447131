//! Configuration: flag > `AGENTPOST_*` environment variable > agentpost.toml
//! > built-in default. clap resolves the first two (each flag names its
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

/// Where the data lives; shared by every command that opens the store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory for the embedded default (SQLite + blobs).
    #[arg(long, env = "AGENTPOST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://…); when set, used instead of the data directory.
    #[arg(long, env = "AGENTPOST_DATABASE_URL", value_name = "URL", hide_env_values = true)]
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
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not valid agentpost configuration", path.display()))
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub store: StoreLocation,
    pub http: SocketAddr,
    pub core: CoreConfig,
    pub log_json: bool,
}

pub fn resolve(store: &StoreArgs, server: Option<&ServerArgs>) -> Result<Resolved> {
    let file = load_file(store.config.as_ref())?;
    let database_url = store.database_url.clone().or(file.database_url);
    let location = match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => StoreLocation::Postgres(url),
        Some(url) => bail!(
            "--database-url must be a postgres:// URL (got {}); leave it unset to use the embedded SQLite data directory",
            agentpost_core::redact_url(&url)
        ),
        None => StoreLocation::DataDir(store.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))),
    };
    let pick = |flag: Option<String>, file: Option<String>, default: &str| flag.or(file).unwrap_or_else(|| default.to_string());
    let server = server.cloned().unwrap_or(ServerArgs {
        http: None,
        domain: None,
        hostname: None,
        tombstone_days: None,
        log_format: None,
    });
    let domain = pick(server.domain, file.domain, DEFAULT_DOMAIN);
    let hostname = server.hostname.or(file.hostname).unwrap_or_else(|| format!("mail.{domain}"));
    let tombstone_days = server.tombstone_days.or(file.tombstone_days).unwrap_or(90);
    if !(0..=3650).contains(&tombstone_days) {
        bail!("--tombstone-days must be between 0 and 3650");
    }
    let log_format = pick(server.log_format, file.log_format, "text");
    if log_format != "text" && log_format != "json" {
        bail!("--log-format must be text or json");
    }
    let default_http: SocketAddr = DEFAULT_HTTP.parse().context("default listen address")?;
    Ok(Resolved {
        store: location,
        http: server.http.or(file.http).unwrap_or(default_http),
        core: CoreConfig {
            default_domain: domain,
            hostname,
            tombstone_days,
        },
        log_json: log_format == "json",
    })
}
