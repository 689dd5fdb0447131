//! The submission listener: accepts connections under the same connection
//! limits as the inbound side, runs a session per connection (upgrading to
//! TLS on STARTTLS) and shuts down gracefully on one broadcast signal.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::config::SubmissionConfig;
use super::handler::SubmissionHandler;
use super::session::{Context, Session};
use crate::reply;
use crate::server::{IpSlot, ServeError, Shutdown, reject};
use crate::session::{Io, Next};
use crate::tls::{self, TlsSource};

/// Accepts submission connections (RFC 6409, port 587) on `listener` until
/// `shutdown` completes, then stops accepting, tells every session to finish
/// (idle sessions and those receiving data get `421 4.3.2`; a submission
/// already handed to the handler completes) and returns once all have
/// closed.
///
/// Fails only at start, when the TLS certificate cannot be loaded.
pub async fn serve_submission<H: SubmissionHandler>(
    listener: TcpListener,
    config: SubmissionConfig,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls =
        tls::server_config(&config.tls, &config.hostname)?.map(tokio_rustls::TlsAcceptor::from);
    if matches!(config.tls, TlsSource::Disabled) && config.implicit_tls {
        tracing::error!(
            "submission listener configured for implicit TLS without a certificate: every connection will be closed"
        );
    } else if matches!(config.tls, TlsSource::Disabled) && !config.allow_plaintext_auth {
        tracing::warn!(
            "submission listener has neither TLS nor allow_plaintext_auth: nobody can authenticate; configure a certificate"
        );
    }
    if config.allow_plaintext_auth {
        tracing::warn!(
            "submission listener accepts AUTH without TLS (allow_plaintext_auth): for loopback tests only"
        );
    }
    let limits = config.limits.clone();
    let ctx = Arc::new(Context {
        config,
        handler,
        tls,
    });
    let (notify_shutdown, _) = broadcast::channel::<()>(1);
    // Every connection task holds a sender; when all are dropped, `recv`
    // returns `None` and we know every session has closed.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));

    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };

        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "submission connection limit reached");
            reject(socket, reply::TOO_MANY_CONNECTIONS);
            continue;
        };
        let Some(ip_slot) = IpSlot::take(&per_ip, peer.ip(), limits.max_connections_per_ip) else {
            tracing::warn!(%peer, "submission per-address connection limit reached");
            reject(socket, reply::TOO_MANY_FROM_IP);
            continue;
        };

        let ctx = ctx.clone();
        let mut shutdown = Shutdown::new(notify_shutdown.subscribe());
        let done = done_tx.clone();
        tokio::spawn(async move {
            handle_connection(ctx, socket, peer, &mut shutdown).await;
            drop((permit, ip_slot, done));
        });
    }

    drop(notify_shutdown);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

async fn handle_connection<H: SubmissionHandler>(
    ctx: Arc<Context<H>>,
    mut socket: TcpStream,
    peer: SocketAddr,
    shutdown: &mut Shutdown,
) {
    tracing::debug!(%peer, "submission connection opened");
    let _ = socket.set_nodelay(true);
    if ctx.config.implicit_tls {
        // RFC 8314: TLS first, then the greeting inside it.
        tls_session(&ctx, socket, peer, shutdown, true).await;
    } else {
        let mut session = Session::new(ctx.clone(), peer, false);
        let mut io = Io::default();
        session.greeting().write_to(&mut io.output);
        if let Next::StartTls = session.run(&mut socket, &mut io, shutdown).await {
            // RFC 3207 4.2: forget everything learnt before TLS, including
            // any authentication.
            drop(session);
            tls_session(&ctx, socket, peer, shutdown, false).await;
        }
    }
    tracing::debug!(%peer, "submission connection closed");
}

/// TLS handshake, then a fresh session inside TLS (greeting first with
/// implicit TLS; after STARTTLS the client speaks first).
async fn tls_session<H: SubmissionHandler>(
    ctx: &Arc<Context<H>>,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: &mut Shutdown,
    greet: bool,
) {
    let Some(acceptor) = ctx.tls.clone() else {
        return;
    };
    let handshake =
        tokio::time::timeout(ctx.config.timeouts.tls_handshake, acceptor.accept(socket)).await;
    match handshake {
        Ok(Ok(mut tls)) => {
            let mut session = Session::new(ctx.clone(), peer, true);
            let mut io = Io::default();
            if greet {
                session.greeting().write_to(&mut io.output);
            }
            // The session cannot ask for TLS twice (it answers 503).
            let _ = session.run(&mut tls, &mut io, shutdown).await;
        }
        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
