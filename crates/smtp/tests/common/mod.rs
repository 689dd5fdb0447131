//! Shared test fixtures: an in-memory `InboundHandler`, a server on a random
//! loopback port, and a minimal line-oriented SMTP client.

#![allow(dead_code)] // each test binary uses a different part of this file

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentpost_smtp::{
    DeliverError, DnsResolver, InboundHandler, InboundMessage, RcptVerdict, ServeError, SmtpConfig,
    StaticDns, TlsSource,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const HOST: &str = "mx.test";

/// Recipients' local parts choose the verdict; the first recipient's local
/// part chooses the delivery outcome. Everything else is accepted.
pub struct TestHandler {
    pub max_size: usize,
    pub delivered: Mutex<Vec<InboundMessage>>,
    pub deliver_delay: Duration,
    count: AtomicUsize,
}

impl TestHandler {
    pub fn new() -> Self {
        TestHandler {
            max_size: agentpost_smtp::DEFAULT_MAX_MESSAGE_SIZE,
            delivered: Mutex::new(Vec::new()),
            deliver_delay: Duration::ZERO,
            count: AtomicUsize::new(0),
        }
    }

    pub fn delivered(&self) -> Vec<InboundMessage> {
        self.delivered.lock().expect("lock").clone()
    }
}

fn local_part(addr: &str) -> &str {
    addr.split('@').next().unwrap_or(addr)
}

impl InboundHandler for TestHandler {
    async fn check_recipient(&self, rcpt: &str) -> RcptVerdict {
        match local_part(rcpt) {
            "unknown" => RcptVerdict::Unknown,
            "suspended" => RcptVerdict::Suspended,
            "gone" => RcptVerdict::Gone,
            "full" => RcptVerdict::MailboxFull,
            "tempfail" => RcptVerdict::TempFail,
            _ => RcptVerdict::Accept,
        }
    }

    fn max_message_size(&self) -> usize {
        self.max_size
    }

    async fn deliver(&self, msg: InboundMessage) -> Result<String, DeliverError> {
        tokio::time::sleep(self.deliver_delay).await;
        match msg.rcpt_to.first().map(|r| local_part(r)) {
            Some("deliver-temp") => return Err(DeliverError::Temp),
            Some("deliver-full") => return Err(DeliverError::Full),
            Some("deliver-perm") => return Err(DeliverError::Perm("policy says no".into())),
            _ => {}
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.delivered.lock().expect("lock").push(msg);
        Ok(format!("M{n}"))
    }
}

/// A running server on 127.0.0.1 and a way to stop it.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("serve did not return after shutdown")
                .expect("serve task panicked")
                .expect("serve failed");
        }
    }
}

/// Test configuration: fixed DNS with no records, TLS disabled.
pub fn config() -> SmtpConfig {
    config_with_dns(StaticDns::new())
}

pub fn config_with_dns(records: StaticDns) -> SmtpConfig {
    let dns = DnsResolver::fixed(records).expect("fixed resolver");
    let mut config = SmtpConfig::new(HOST, Arc::new(dns));
    config.tls = TlsSource::Disabled;
    config
}

pub async fn start(config: SmtpConfig) -> Server {
    start_with(config, TestHandler::new()).await
}

pub async fn start_with(config: SmtpConfig, handler: TestHandler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(handler);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agentpost_smtp::serve(
        listener,
        config,
        handler.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        handler,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A bare SMTP client that sends exactly the bytes it is given.
pub struct Client<S> {
    pub stream: BufReader<S>,
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Client<TcpStream> {
    /// Connects and returns the client and the greeting.
    pub async fn connect(addr: std::net::SocketAddr) -> (Self, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Connected and greeted with EHLO.
    pub async fn ehlo(addr: std::net::SocketAddr) -> Self {
        let (mut client, greeting) = Self::connect(addr).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        let ehlo = client.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        client
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
        self.stream.get_mut().flush().await.expect("flush");
    }

    /// Reads one (possibly multi-line) reply; "" on EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("timed out waiting for a reply")
                .expect("read");
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends `line` + CRLF and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True once the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }

    /// A full transaction; returns the reply to the end of data.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250 "), "MAIL: {r}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250 "), "RCPT: {r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354 "), "DATA: {r}");
        self.send(message).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Asserts a reply's code and enhanced status code, e.g. `"550 5.1.1"`;
/// a bare code also matches the first line of a multi-line reply.
#[track_caller]
pub fn expect(reply: &str, prefix: &str) {
    let ok = reply.starts_with(&format!("{prefix} "))
        || (prefix.len() == 3 && reply.starts_with(&format!("{prefix}-")));
    assert!(ok, "expected {prefix}, got {reply:?}");
}
