//! `agentpost serve`: opens the store, initialises it on first start, and
//! runs the HTTP API, the inbound SMTP listener and the background sweepers
//! until SIGINT/SIGTERM.

use crate::config::{OutboundRoute, Resolved};
use crate::inbound::Inbound;
use crate::outbound::SmtpTransport;
use crate::submission::Submission;
use agentpost_core::clock::SystemClock;
use agentpost_core::{Bootstrapped, Ingest, Service};
use agentpost_smtp::{DnsResolver, SmtpConfig, StaticDns, TlsSource};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads a deployment-provided admin key (AGENTPOST_ADMIN_KEY_FILE).
pub fn provided_admin_key() -> Result<Option<String>> {
    match std::env::var_os("AGENTPOST_ADMIN_KEY_FILE") {
        None => Ok(None),
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read AGENTPOST_ADMIN_KEY_FILE ({})",
                    path.to_string_lossy()
                )
            })?;
            Ok(Some(text.trim().to_string()))
        }
    }
}

pub async fn open(cfg: &Resolved) -> Result<Service> {
    Service::open(&cfg.store, cfg.core.clone(), Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.store.describe()))
}

pub async fn bootstrap(svc: &Service, cfg: &Resolved) -> Result<Option<Bootstrapped>> {
    let provided = provided_admin_key()?;
    svc.bootstrap(&cfg.core.default_domain, provided.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn run(cfg: Resolved) -> Result<()> {
    let svc = Arc::new(open(&cfg).await?);
    if let Some(b) = bootstrap(&svc, &cfg).await? {
        // The one deliberate time a secret is printed: the operator needs it.
        match &b.admin_key {
            Some(k) => eprintln!(
                "\nagentpost initialised: organisation {}, domain {}.\n\
                 Admin key (shown once; store it like a root password):\n\n    {}\n",
                b.organisation_id, b.domain, k.secret
            ),
            None => eprintln!(
                "agentpost initialised with the admin key from AGENTPOST_ADMIN_KEY_FILE; domain {}.",
                b.domain
            ),
        }
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics disabled"))
        .ok();
    let app = agentpost_api::router(svc.clone(), metrics);
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another agentpost running? choose one with --http)",
                cfg.http
            )
        })?;
    let addr = listener.local_addr()?;
    let smtp_listener = tokio::net::TcpListener::bind(cfg.smtp)
        .await
        .with_context(|| {
            format!(
                "cannot listen for SMTP on {} (port taken? choose one with --smtp)",
                cfg.smtp
            )
        })?;
    let smtp_addr = smtp_listener.local_addr()?;
    let smtp_config = smtp_config(&cfg)?;
    let submission_listener = tokio::net::TcpListener::bind(cfg.submission)
        .await
        .with_context(|| {
            format!(
                "cannot listen for SMTP submission on {} (port taken? choose one with --submission)",
                cfg.submission
            )
        })?;
    let submission_addr = submission_listener.local_addr()?;
    let mut submission_config = agentpost_smtp::SubmissionConfig::new(cfg.core.hostname.clone());
    submission_config.tls = smtp_config.tls.clone();
    let transport = Arc::new(SmtpTransport::new(outbound_config(&cfg)?));
    tracing::info!(
        http = %format!("http://{addr}"),
        smtp = %smtp_addr,
        submission = %submission_addr,
        store = %cfg.store.describe(),
        "agentpost listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(sweep(svc.clone(), stop_rx.clone()));
    let pg_url = match &cfg.store {
        agentpost_core::StoreLocation::Postgres(url) => Some(url.clone()),
        agentpost_core::StoreLocation::DataDir(_) => None,
    };
    let webhooks = tokio::spawn(svc.clone().run_webhook_worker(pg_url, stop_rx.clone()));
    let inbound = Arc::new(Inbound::new(Ingest::start(svc.clone())));
    let mut smtp_stop = stop_rx.clone();
    let smtp = tokio::spawn(agentpost_smtp::serve(
        smtp_listener,
        smtp_config,
        inbound,
        async move {
            let _ = smtp_stop.wait_for(|s| *s).await;
        },
    ));
    let mut submission_stop = stop_rx.clone();
    let submission = tokio::spawn(agentpost_smtp::serve_submission(
        submission_listener,
        submission_config,
        Arc::new(Submission::new(svc.clone())),
        async move {
            let _ = submission_stop.wait_for(|s| *s).await;
        },
    ));
    let delivery = tokio::spawn(svc.clone().run_outbound_worker(transport, stop_rx.clone()));
    let mut http_stop = stop_rx.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    server
        .await
        .context("http server task")?
        .context("http server")?;
    smtp.await
        .context("smtp server task")?
        .context("smtp server")?;
    submission
        .await
        .context("submission server task")?
        .context("submission server")?;
    let _ = sweeper.await;
    let _ = webhooks.await;
    let _ = delivery.await;
    Ok(())
}

fn smtp_config(cfg: &Resolved) -> Result<SmtpConfig> {
    let dns = if cfg.smtp_dns_system {
        DnsResolver::system()
            .map_err(|e| anyhow::anyhow!("cannot set up DNS for sender authentication: {e}"))?
    } else {
        DnsResolver::fixed(StaticDns::new()).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let mut c = SmtpConfig::new(cfg.core.hostname.clone(), Arc::new(dns));
    c.limits.max_connections = cfg.smtp_max_connections;
    c.limits.max_connections_per_ip = cfg.smtp_max_connections_per_ip;
    if let Some((cert, key)) = &cfg.tls {
        c.tls = TlsSource::PemFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
    }
    Ok(c)
}

fn outbound_config(cfg: &Resolved) -> Result<agentpost_smtp::OutboundConfig> {
    use agentpost_smtp::{DeliveryMode, MxResolver};
    let mode = match &cfg.route {
        OutboundRoute::Relay {
            host,
            port,
            tls,
            credentials,
            accept_invalid_certs,
        } => DeliveryMode::Relay {
            host: host.clone(),
            port: *port,
            tls: *tls,
            credentials: credentials.clone(),
            accept_invalid_certs: *accept_invalid_certs,
        },
        OutboundRoute::Direct { nameserver, port } => {
            let resolver = match nameserver {
                Some(ns) => MxResolver::with_nameserver(*ns),
                None => MxResolver::system(),
            }
            .map_err(|e| anyhow::anyhow!("cannot set up DNS for outbound delivery: {e} (or relay through a smarthost with --relay)"))?;
            DeliveryMode::Direct {
                resolver,
                port: *port,
            }
        }
    };
    Ok(agentpost_smtp::OutboundConfig::new(
        cfg.core.hostname.clone(),
        mode,
    ))
}

/// Periodic housekeeping; every node runs it, the work is idempotent.
async fn sweep(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = svc.sweep_idempotency_keys().await {
            tracing::warn!(error = %e, "idempotency sweep failed");
        }
        match svc.sweep_retention().await {
            Ok(r) if r.expired > 0 || r.blobs_removed > 0 => {
                tracing::info!(
                    expired = r.expired,
                    blobs_removed = r.blobs_removed,
                    "retention sweep"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
