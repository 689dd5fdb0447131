//! The submission listener: accepts connections under the same connection
//! limits as the inbound side, runs a session per connection (upgrading to
//! TLS on STARTTLS) and shuts down gracefully on one broadcast signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::config::SubmissionConfig;
use super::handler::SubmissionHandler;
use super::session::{Context, Session};
use crate::server::{ServeError, Shutdown, accept_loop};
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
    accept_loop(
        listener,
        &limits,
        shutdown,
        "submission",
        move |socket, peer, mut sd| {
            let ctx = ctx.clone();
            async move { handle_connection(ctx, socket, peer, &mut sd).await }
        },
    )
    .await;
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
