//! The listener: accepts connections, enforces the connection limits, runs a
//! session per connection (upgrading to TLS on STARTTLS) and shuts down
//! gracefully on one broadcast signal, as in tokio's mini-redis.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::config::SmtpConfig;
use crate::handler::InboundHandler;
use crate::reply::{self, Reply};
use crate::session::{Context, Io, Next, Session};
use crate::tls::{self, TlsError};

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up STARTTLS: {0}")]
    Tls(#[from] TlsError),
}

/// Accepts SMTP connections on `listener` until `shutdown` completes, then
/// stops accepting, tells every session to finish (sessions idle or
/// receiving data get `421 4.3.2`; a delivery already under way completes)
/// and returns once all have closed.
///
/// `shutdown` is any future: `tokio::signal::ctrl_c()`, a broadcast
/// receiver's `recv()`, a `CancellationToken::cancelled_owned()`...
pub async fn serve<H: InboundHandler>(
    listener: TcpListener,
    config: SmtpConfig,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls =
        tls::server_config(&config.tls, &config.hostname)?.map(tokio_rustls::TlsAcceptor::from);
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
        "smtp",
        move |socket, peer, mut sd| {
            let ctx = ctx.clone();
            async move { handle_connection(ctx, socket, peer, &mut sd).await }
        },
    )
    .await;
    Ok(())
}

/// The accept loop shared by the inbound and submission listeners: the
/// connection limits overall and per client address, one task per
/// connection, and a graceful stop once `shutdown` completes (sessions are
/// told to finish, and this returns when the last one has closed).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &crate::config::Limits,
    shutdown: impl Future<Output = ()> + Send,
    listener_name: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
                    // Usually out of file descriptors: back off instead of
                    // spinning.
                    tracing::warn!(%err, listener = listener_name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };

        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listener = listener_name, "connection limit reached");
            reject(socket, reply::TOO_MANY_CONNECTIONS);
            continue;
        };
        let Some(ip_slot) = IpSlot::take(&per_ip, peer.ip(), limits.max_connections_per_ip) else {
            tracing::warn!(%peer, listener = listener_name, "per-address connection limit reached");
            reject(socket, reply::TOO_MANY_FROM_IP);
            continue;
        };

        let session = handle(socket, peer, Shutdown::new(notify_shutdown.subscribe()));
        let done = done_tx.clone();
        tokio::spawn(async move {
            session.await;
            drop((permit, ip_slot, done));
        });
    }

    // Tell sessions to finish, then wait for the last one.
    drop(notify_shutdown);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

async fn handle_connection<H: InboundHandler>(
    ctx: Arc<Context<H>>,
    mut socket: TcpStream,
    peer: SocketAddr,
    shutdown: &mut Shutdown,
) {
    tracing::debug!(%peer, "connection opened");
    let _ = socket.set_nodelay(true);
    let mut session = Session::new(ctx.clone(), peer, false);
    let mut io = Io::default();
    session.greeting().write_to(&mut io.output);
    if let Next::StartTls = session.run(&mut socket, &mut io, shutdown).await {
        let Some(acceptor) = ctx.tls.clone() else {
            return;
        };
        let handshake =
            tokio::time::timeout(ctx.config.timeouts.tls_handshake, acceptor.accept(socket)).await;
        match handshake {
            Ok(Ok(mut tls)) => {
                // RFC 3207 4.2: forget everything learnt before TLS.
                let mut session = Session::new(ctx.clone(), peer, true);
                let mut io = Io::default();
                // The session cannot ask for TLS twice (it answers 503).
                let _ = session.run(&mut tls, &mut io, shutdown).await;
            }
            Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
    tracing::debug!(%peer, "connection closed");
}

/// Answers `421` and closes, without holding up the accept loop.
fn reject(mut socket: TcpStream, reply: Reply) {
    tokio::spawn(async move {
        let mut line = Vec::new();
        reply.write_to(&mut line);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = socket.write_all(&line).await;
            let _ = socket.shutdown().await;
        })
        .await;
    });
}

/// One connection's share of its client address's limit; released on drop.
struct IpSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut counts = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Listens for the server's shutdown signal (mini-redis `Shutdown`).
pub(crate) struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new(notify: broadcast::Receiver<()>) -> Self {
        Shutdown {
            is_shutdown: false,
            notify,
        }
    }

    /// Resolves once shutdown has been signalled (at once if it already
    /// was). Dropping the sender is the signal.
    pub(crate) async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
