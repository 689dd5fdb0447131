//! The submission listener (RFC 6409) over real sockets: STARTTLS, AUTH
//! PLAIN/LOGIN, the sender/recipient/submit checks through a test
//! `SubmissionHandler`, strict DATA, pipelining, limits, and Python's
//! smtplib as a real client.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentpost_smtp::{
    AuthRefused, ServeError, SubmissionConfig, SubmissionHandler, SubmitOutcome, SubmitRefusal,
    TlsSource, generate_self_signed, serve_submission,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Client, expect};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const HOST: &str = "submit.test";
const AGENT: &str = "agent@agents.test";
const PASSWORD: &str = "ap_test_correct-horse-battery";
/// An agent whose sends need a human's confirmation.
const CAREFUL: &str = "careful@agents.test";
const CAREFUL_PASSWORD: &str = "ap_test_careful";
/// The gate is down for this one.
const DOWN: &str = "down@agents.test";

// ---------------------------------------------------------------------------
// Test handler: an in-memory identity table and a list of submitted messages.

#[derive(Debug, Clone)]
struct Agent {
    address: String,
}

#[derive(Debug, Clone)]
struct Submitted {
    agent: String,
    mail_from: String,
    rcpt_to: Vec<String>,
    message: Vec<u8>,
    client_ip: IpAddr,
}

struct TestGate {
    passwords: HashMap<String, String>,
    max_rcpts: usize,
    submitted: Mutex<Vec<Submitted>>,
    count: AtomicUsize,
}

impl TestGate {
    fn new() -> Self {
        let passwords = [(AGENT, PASSWORD), (CAREFUL, CAREFUL_PASSWORD)]
            .into_iter()
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect();
        TestGate {
            passwords,
            max_rcpts: 3,
            submitted: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
        }
    }

    fn submitted(&self) -> Vec<Submitted> {
        self.submitted.lock().expect("lock").clone()
    }
}

fn local_part(addr: &str) -> &str {
    addr.split('@').next().unwrap_or(addr)
}

impl SubmissionHandler for TestGate {
    type Identity = Agent;

    async fn authenticate(
        &self,
        username: &str,
        password: &str,
        _client_ip: IpAddr,
    ) -> Result<Agent, AuthRefused> {
        if username == DOWN {
            return Err(AuthRefused::Temporary);
        }
        match self.passwords.get(&username.to_ascii_lowercase()) {
            Some(expected) if expected == password => Ok(Agent {
                address: username.to_ascii_lowercase(),
            }),
            _ => Err(AuthRefused::Invalid),
        }
    }

    async fn check_sender(&self, id: &Agent, mail_from: &str) -> Result<(), SubmitRefusal> {
        if mail_from.eq_ignore_ascii_case(&id.address) {
            Ok(())
        } else {
            Err(SubmitRefusal::sender_not_owned())
        }
    }

    async fn check_recipient(
        &self,
        _id: &Agent,
        rcpt: &str,
        accepted_so_far: usize,
    ) -> Result<(), SubmitRefusal> {
        match local_part(rcpt) {
            "blocked" => Err(SubmitRefusal::policy("Recipient blocked by policy")),
            "capped" => Err(SubmitRefusal::over_limit(
                "Daily send cap reached, resets at 00:00 UTC",
            )),
            "goodbye" => Err(SubmitRefusal::new(421, (4, 3, 2), "Service shutting down")),
            _ if accepted_so_far >= self.max_rcpts => Err(SubmitRefusal::too_many_recipients()),
            _ => Ok(()),
        }
    }

    async fn submit(
        &self,
        id: &Agent,
        mail_from: &str,
        rcpt_to: &[String],
        message: Vec<u8>,
        client_ip: IpAddr,
    ) -> SubmitOutcome {
        if rcpt_to.iter().any(|r| local_part(r) == "tempfail") {
            return SubmitOutcome::Refused(SubmitRefusal::temporary());
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.submitted.lock().expect("lock").push(Submitted {
            agent: id.address.clone(),
            mail_from: mail_from.to_string(),
            rcpt_to: rcpt_to.to_vec(),
            message,
            client_ip,
        });
        if id.address == CAREFUL {
            SubmitOutcome::Held {
                send_id: format!("snd_{n:04}"),
            }
        } else {
            SubmitOutcome::Queued {
                id: format!("Q{n}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Server and client fixtures.

struct Server {
    addr: SocketAddr,
    gate: Arc<TestGate>,
    cert: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("serve_submission did not return after shutdown")
                .expect("serve task panicked")
                .expect("serve failed");
        }
    }
}

/// Test configuration: a pinned self-signed certificate, short delays.
fn config() -> (SubmissionConfig, String) {
    let (cert, key) = generate_self_signed(HOST).expect("self-signed");
    let mut cfg = SubmissionConfig::new(HOST);
    cfg.tls = TlsSource::Pem {
        cert: cert.clone(),
        key,
    };
    cfg.auth_failure_delay = Duration::from_millis(20);
    (cfg, cert)
}

async fn start(cfg: SubmissionConfig, cert: String) -> Server {
    start_with(cfg, cert, TestGate::new()).await
}

async fn start_with(cfg: SubmissionConfig, cert: String, gate: TestGate) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Arc::new(gate);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_submission(listener, cfg, gate.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        gate,
        cert,
        stop: Some(stop),
        task: Some(task),
    }
}

async fn default_server() -> Server {
    let (cfg, cert) = config();
    start(cfg, cert).await
}

/// Accepts exactly the test's certificate, checking handshake signatures.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("unexpected certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connector that trusts exactly `cert_pem`.
fn connector(cert_pem: &str) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// STARTTLS on a plain client, checking the 220, then the handshake.
async fn upgrade(mut c: Client<TcpStream>, cert_pem: &str) -> Client<TlsStream<TcpStream>> {
    expect(&c.cmd("STARTTLS").await, "220 2.0.0");
    let tls = connector(cert_pem)
        .connect(
            ServerName::try_from(HOST).expect("name"),
            c.stream.into_inner(),
        )
        .await
        .expect("TLS handshake");
    Client {
        stream: BufReader::new(tls),
    }
}

/// EHLO, STARTTLS, handshake, EHLO; returns the client and the last EHLO
/// reply.
async fn tls_client(server: &Server) -> (Client<TlsStream<TcpStream>>, String) {
    let c = Client::ehlo(server.addr).await;
    let mut t = upgrade(c, &server.cert).await;
    let ehlo = t.cmd("EHLO client.test").await;
    expect(&ehlo, "250");
    (t, ehlo)
}

fn plain_token(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// A TLS client authenticated as `user` with AUTH PLAIN.
async fn logged_in(server: &Server, user: &str, password: &str) -> Client<TlsStream<TcpStream>> {
    let (mut t, _) = tls_client(server).await;
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(user, password)))
        .await;
    expect(&reply, "235 2.7.0");
    t
}

const MESSAGE: &[u8] =
    b"From: agent@agents.test\r\nTo: friend@example.org\r\nSubject: hi\r\n\r\nhello\r\n";

// ---------------------------------------------------------------------------
// EHLO and AUTH.

#[tokio::test]
async fn ehlo_offers_auth_only_after_starttls() {
    let server = default_server().await;
    let mut c = Client::ehlo(server.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing: {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear text: {ehlo}");
    drop(c);

    let (mut t, ehlo) = tls_client(&server).await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN\r\n") || ehlo.contains("AUTH LOGIN PLAIN\r\n"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    expect(&t.cmd("QUIT").await, "221 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_refused_before_starttls_and_mail_needs_auth() {
    let server = default_server().await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("MAIL FROM:<agent@agents.test>").await, "530 5.7.0");
    let token = plain_token(AGENT, PASSWORD);
    expect(&c.cmd(&format!("AUTH PLAIN {token}")).await, "538 5.7.11");
    expect(&c.cmd("AUTH LOGIN").await, "538 5.7.11");
    expect(&c.cmd("RCPT TO:<friend@example.org>").await, "530 5.7.0");
    expect(&c.cmd("DATA").await, "530 5.7.0");
    // Also inside TLS, before AUTH.
    let (mut t, _) = tls_client(&server).await;
    expect(&t.cmd("MAIL FROM:<agent@agents.test>").await, "530 5.7.0");
    assert!(server.gate.submitted().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn auth_plain_with_initial_response_then_send() {
    let server = default_server().await;
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    let reply = t
        .send_mail(AGENT, &["friend@example.org", "other@example.net"], MESSAGE)
        .await;
    expect(&reply, "250 2.0.0");
    assert!(reply.contains("queued as Q1"), "{reply}");
    let submitted = server.gate.submitted();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].agent, AGENT);
    assert_eq!(submitted[0].mail_from, AGENT);
    assert_eq!(
        submitted[0].rcpt_to,
        vec!["friend@example.org", "other@example.net"]
    );
    // Exactly as sent: no Received or Authentication-Results added here.
    assert_eq!(submitted[0].message, MESSAGE);
    assert!(submitted[0].client_ip.is_loopback());
    expect(&t.cmd("QUIT").await, "221 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_plain_without_initial_response() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    let challenge = t.cmd("AUTH PLAIN").await;
    assert_eq!(challenge, "334 \r\n");
    expect(&t.cmd(&plain_token(AGENT, PASSWORD)).await, "235 2.7.0");
    // A second AUTH is a sequence error.
    let again = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&again, "503 5.5.1");
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_login_with_and_without_initial_response() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    assert_eq!(t.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(t.cmd(&b64(AGENT)).await, "334 UGFzc3dvcmQ6\r\n");
    expect(&t.cmd(&b64(PASSWORD)).await, "235 2.7.0");
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");

    let (mut t, _) = tls_client(&server).await;
    let reply = t.cmd(&format!("auth login {}", b64(CAREFUL))).await;
    assert_eq!(reply, "334 UGFzc3dvcmQ6\r\n");
    expect(&t.cmd(&b64(CAREFUL_PASSWORD)).await, "235 2.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_cancel_bad_base64_and_unknown_mechanism() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    expect(&t.cmd("AUTH LOGIN").await, "334");
    expect(&t.cmd("*").await, "501 5.0.0");
    expect(&t.cmd("AUTH LOGIN").await, "334");
    expect(&t.cmd(&b64(AGENT)).await, "334");
    expect(&t.cmd("*").await, "501 5.0.0");
    expect(&t.cmd("AUTH PLAIN").await, "334");
    expect(&t.cmd("not base64 at all!").await, "501 5.5.2");
    expect(&t.cmd("AUTH PLAIN %%%").await, "501 5.5.2");
    // Decodes, but is not a PLAIN message.
    expect(
        &t.cmd(&format!("AUTH PLAIN {}", b64("no-nul"))).await,
        "501 5.5.2",
    );
    expect(&t.cmd("AUTH CRAM-MD5").await, "504 5.5.4");
    // None of these counted as a failed password: we can still log in.
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&reply, "235 2.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_needs_ehlo_first() {
    let (mut cfg, cert) = config();
    cfg.allow_plaintext_auth = true;
    let server = start(cfg, cert).await;
    let (mut c, _) = Client::connect(server.addr).await;
    let token = plain_token(AGENT, PASSWORD);
    expect(&c.cmd(&format!("AUTH PLAIN {token}")).await, "503 5.5.1");
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd(&format!("AUTH PLAIN {token}")).await, "235 2.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_password_and_failure_cap() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    let started = Instant::now();
    let bad = plain_token(AGENT, "guess");
    expect(&t.cmd(&format!("AUTH PLAIN {bad}")).await, "535 5.7.8");
    // LOGIN failures count too.
    expect(&t.cmd("AUTH LOGIN").await, "334");
    expect(&t.cmd(&b64(AGENT)).await, "334");
    expect(&t.cmd(&b64("guess2")).await, "535 5.7.8");
    // Unknown user looks the same as a wrong password.
    let unknown = plain_token("nobody@agents.test", PASSWORD);
    let last = t.cmd(&format!("AUTH PLAIN {unknown}")).await;
    expect(&last, "535 5.7.8");
    // The third failure (default cap) ends the connection with 421.
    expect(&t.reply().await, "421 4.7.0");
    assert!(t.closed().await);
    // 20 ms, then 40, then 60: the delay grows with each failure.
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
    // A new connection may try again (the gate rate-limits across
    // connections).
    let t = logged_in(&server, AGENT, PASSWORD).await;
    drop(t);
    server.shutdown().await;
}

#[tokio::test]
async fn temporary_auth_failure_is_454_and_not_counted() {
    let (mut cfg, cert) = config();
    cfg.max_auth_failures = 1;
    let server = start(cfg, cert).await;
    let (mut t, _) = tls_client(&server).await;
    for _ in 0..3 {
        let reply = t
            .cmd(&format!("AUTH PLAIN {}", plain_token(DOWN, "x")))
            .await;
        expect(&reply, "454 4.7.0");
    }
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, "wrong")))
        .await;
    expect(&reply, "535 5.7.8");
    expect(&t.reply().await, "421 4.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn foreign_authorization_identity_is_refused() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    let token = B64.encode(format!("{CAREFUL}\0{AGENT}\0{PASSWORD}"));
    expect(&t.cmd(&format!("AUTH PLAIN {token}")).await, "535 5.7.8");
    let token = B64.encode(format!("{AGENT}\0{AGENT}\0{PASSWORD}"));
    expect(&t.cmd(&format!("AUTH PLAIN {token}")).await, "235 2.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn long_auth_line_is_allowed_other_long_lines_are_not() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    let long_user = format!("{}@agents.test", "a".repeat(600));
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(&long_user, "pw")))
        .await;
    expect(&reply, "535 5.7.8");
    let reply = t.cmd(&format!("NOOP {}", "x".repeat(600))).await;
    expect(&reply, "500 5.5.2");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Envelope and outcome.

#[tokio::test]
async fn sender_mismatch_is_553() {
    let server = default_server().await;
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    expect(&t.cmd("MAIL FROM:<ceo@agents.test>").await, "553 5.7.1");
    expect(&t.cmd("MAIL FROM:<>").await, "553 5.7.1");
    // Case-insensitive match is the handler's business; it accepts here.
    expect(&t.cmd("MAIL FROM:<Agent@Agents.Test>").await, "250 2.1.0");
    server.shutdown().await;
}

#[tokio::test]
async fn recipients_refused_by_the_gate() {
    let server = default_server().await;
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");
    let blocked = t.cmd("RCPT TO:<blocked@example.org>").await;
    expect(&blocked, "550 5.7.1");
    assert!(blocked.contains("Recipient blocked by policy"), "{blocked}");
    expect(&t.cmd("DATA").await, "554 5.5.1");
    expect(&t.cmd("RCPT TO:<capped@example.org>").await, "451 4.7.0");
    for n in 0..3 {
        expect(
            &t.cmd(&format!("RCPT TO:<r{n}@example.org>")).await,
            "250 2.1.5",
        );
    }
    // A duplicate is fine and is not counted.
    expect(&t.cmd("RCPT TO:<r0@example.org>").await, "250 2.1.5");
    // The gate's recipients-per-message limit (accepted_so_far = 3).
    expect(&t.cmd("RCPT TO:<r3@example.org>").await, "452 4.5.3");
    expect(&t.cmd("DATA").await, "354");
    t.send(MESSAGE).await;
    t.send(b".\r\n").await;
    expect(&t.reply().await, "250 2.0.0");
    assert_eq!(server.gate.submitted()[0].rcpt_to.len(), 3);

    // A refusal at the end of DATA.
    let reply = t.send_mail(AGENT, &["tempfail@example.org"], MESSAGE).await;
    expect(&reply, "451 4.3.0");
    // A 421 from the gate closes the connection.
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");
    expect(&t.cmd("RCPT TO:<goodbye@example.org>").await, "421 4.3.2");
    assert!(t.closed().await);
    server.shutdown().await;
}

#[tokio::test]
async fn protocol_limit_on_recipients() {
    let (mut cfg, cert) = config();
    cfg.limits.max_recipients = 2;
    let mut gate = TestGate::new();
    gate.max_rcpts = 100;
    let server = start_with(cfg, cert, gate).await;
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");
    expect(&t.cmd("RCPT TO:<a@example.org>").await, "250 2.1.5");
    expect(&t.cmd("RCPT TO:<b@example.org>").await, "250 2.1.5");
    expect(&t.cmd("RCPT TO:<c@example.org>").await, "452 4.5.3");
    server.shutdown().await;
}

#[tokio::test]
async fn held_outcome_names_the_send() {
    let server = default_server().await;
    let mut t = logged_in(&server, CAREFUL, CAREFUL_PASSWORD).await;
    let reply = t.send_mail(CAREFUL, &["friend@example.org"], MESSAGE).await;
    expect(&reply, "250 2.0.0");
    assert!(
        reply.contains("held for confirmation") || reply.contains("Held for confirmation"),
        "{reply}"
    );
    assert!(reply.contains("snd_0001"), "{reply}");
    assert_eq!(server.gate.submitted()[0].agent, CAREFUL);
    server.shutdown().await;
}

#[tokio::test]
async fn size_limits() {
    let (mut cfg, cert) = config();
    cfg.max_message_size = 100;
    let server = start(cfg, cert).await;
    let (mut t, ehlo) = tls_client(&server).await;
    assert!(ehlo.contains("SIZE 100\r\n"), "{ehlo}");
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&reply, "235 2.7.0");
    expect(
        &t.cmd(&format!("MAIL FROM:<{AGENT}> SIZE=101")).await,
        "552 5.3.4",
    );
    // AUTH= (RFC 4954 5) is accepted; DSN is not offered.
    expect(
        &t.cmd(&format!("MAIL FROM:<{AGENT}> AUTH=<>")).await,
        "250 2.1.0",
    );
    expect(
        &t.cmd("RCPT TO:<a@example.org> NOTIFY=NEVER").await,
        "555 5.5.4",
    );
    expect(&t.cmd("RCPT TO:<a@example.org>").await, "250 2.1.5");
    expect(&t.cmd("DATA").await, "354");
    t.send(&[b'x'; 200]).await;
    t.send(b"\r\n.\r\n").await;
    expect(&t.reply().await, "552 5.3.4");
    assert!(server.gate.submitted().is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// DATA, pipelining, STARTTLS, timeouts.

#[tokio::test]
async fn smuggling_payload_is_refused() {
    let server = default_server().await;
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "250 2.1.0");
    expect(&t.cmd("RCPT TO:<friend@example.org>").await, "250 2.1.5");
    expect(&t.cmd("DATA").await, "354");
    // A bare-LF fake terminator followed by a second, smuggled transaction.
    t.send(
        b"Subject: one\r\n\r\nbody\n.\r\nMAIL FROM:<agent@agents.test>\r\n\
          RCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n",
    )
    .await;
    expect(&t.reply().await, "550 5.6.0");
    // The smuggled commands were content, not commands: the next reply is
    // for what we send now.
    expect(&t.cmd("NOOP").await, "250 2.0.0");
    assert!(server.gate.submitted().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_transactions() {
    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    // AUTH with an initial response, then a whole transaction in one write.
    let mut batch = format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<{AGENT}>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<blocked@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        plain_token(AGENT, PASSWORD)
    )
    .into_bytes();
    batch.extend_from_slice(MESSAGE);
    batch.extend_from_slice(
        b".\r\nRSET\r\nMAIL FROM:<agent@agents.test>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n",
    );
    batch.extend_from_slice(b"Subject: two\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
    t.send(&batch).await;
    for prefix in [
        "235 2.7.0",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.7.1",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "221 2.0.0",
    ] {
        expect(&t.reply().await, prefix);
    }
    let submitted = server.gate.submitted();
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0].rcpt_to, vec!["a@example.org", "b@example.org"]);
    assert_eq!(submitted[0].message, MESSAGE);
    assert_eq!(submitted[1].message, b"Subject: two\r\n\r\n.dot\r\n");
    server.shutdown().await;
}

#[tokio::test]
async fn plaintext_auth_when_allowed_and_starttls_forgets_it() {
    let (mut cfg, cert) = config();
    cfg.allow_plaintext_auth = true;
    let server = start(cfg, cert).await;
    let mut c = Client::ehlo(server.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH "), "{ehlo}");
    let reply = c
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&reply, "235 2.7.0");
    let reply = c.send_mail(AGENT, &["friend@example.org"], MESSAGE).await;
    expect(&reply, "250 2.0.0");
    // RFC 3207 4.2: after STARTTLS the identity is forgotten.
    drop(c);
    let mut c = Client::ehlo(server.addr).await;
    let reply = c
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&reply, "235 2.7.0");
    let mut t = upgrade(c, &server.cert).await;
    expect(&t.cmd("EHLO client.test").await, "250");
    expect(&t.cmd(&format!("MAIL FROM:<{AGENT}>")).await, "530 5.7.0");
    server.shutdown().await;
}

#[tokio::test]
async fn implicit_tls() {
    let (mut cfg, cert) = config();
    cfg.implicit_tls = true;
    let server = start(cfg, cert).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let tls = connector(&server.cert)
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS handshake before any SMTP");
    let mut t = Client {
        stream: BufReader::new(tls),
    };
    expect(&t.reply().await, "220");
    let ehlo = t.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    expect(&t.cmd("STARTTLS").await, "503 5.5.1");
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_token(AGENT, PASSWORD)))
        .await;
    expect(&reply, "235 2.7.0");
    let reply = t.send_mail(AGENT, &["friend@example.org"], MESSAGE).await;
    expect(&reply, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_timeout() {
    let (mut cfg, cert) = config();
    cfg.timeouts.command = Duration::from_millis(200);
    let server = start(cfg, cert).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.reply().await, "421 4.4.2");
    assert!(c.closed().await);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_sessions() {
    let server = default_server().await;
    let mut idle = Client::ehlo(server.addr).await;
    let stop = tokio::spawn(server.shutdown());
    expect(&idle.reply().await, "421 4.3.2");
    stop.await.expect("shutdown");
}

#[tokio::test]
async fn connection_limit_per_ip() {
    let (mut cfg, cert) = config();
    cfg.limits.max_connections_per_ip = 1;
    let server = start(cfg, cert).await;
    let _first = Client::ehlo(server.addr).await;
    let (_, greeting) = Client::connect(server.addr).await;
    expect(&greeting, "421 4.7.0");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The password never reaches a trace.

/// Collects formatted trace output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn password_never_traced() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime is single-threaded: the server's tasks run on this
    // thread and see this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = default_server().await;
    let (mut t, _) = tls_client(&server).await;
    expect(
        &t.cmd(&format!(
            "AUTH PLAIN {}",
            plain_token(AGENT, "wrong-pass-1")
        ))
        .await,
        "535",
    );
    expect(&t.cmd("AUTH LOGIN").await, "334");
    expect(&t.cmd(&b64(AGENT)).await, "334");
    expect(&t.cmd(&b64("wrong-pass-2")).await, "535");
    drop(t);
    let mut t = logged_in(&server, AGENT, PASSWORD).await;
    let reply = t.send_mail(AGENT, &["friend@example.org"], MESSAGE).await;
    expect(&reply, "250 2.0.0");
    expect(&t.cmd("QUIT").await, "221");
    server.shutdown().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert!(logs.contains("authentication failed"), "{logs}");
    assert!(logs.contains("authenticated"), "{logs}");
    for secret in [
        PASSWORD.to_string(),
        "wrong-pass-1".to_string(),
        "wrong-pass-2".to_string(),
        plain_token(AGENT, PASSWORD),
        plain_token(AGENT, "wrong-pass-1"),
        b64("wrong-pass-2"),
        b64(PASSWORD),
    ] {
        assert!(!logs.contains(&secret), "{secret} in traces:\n{logs}");
    }
}

// ---------------------------------------------------------------------------
// A real client: Python's smtplib.

const PYTHON: &str = r#"
import smtplib, ssl, sys

host, port = sys.argv[1], int(sys.argv[2])
agent, password, careful, careful_password = sys.argv[3:7]
ctx = ssl._create_unverified_context()

def message(sender, subject):
    return (f"From: {sender}\r\nTo: friend@example.org\r\nSubject: {subject}\r\n\r\n"
            "Gr\u00fc\u00dfe aus smtplib\r\n.leading dot\r\n").encode("utf-8")

# Plain connection: STARTTLS offered, AUTH not; login refused.
with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("python.test")
    assert s.has_extn("starttls")
    assert not s.has_extn("auth"), s.esmtp_features
    try:
        s.login(agent, password)
        raise SystemExit("login without TLS should fail")
    except smtplib.SMTPNotSupportedError:
        pass
    code, text = s.docmd("AUTH", "PLAIN AGFAYgBj")
    assert code == 538, (code, text)

# STARTTLS + login (PLAIN) + sendmail: queued.
with smtplib.SMTP(host, port, timeout=10) as s:
    s.starttls(context=ctx)
    s.ehlo("python.test")
    for ext in ("pipelining", "8bitmime", "smtputf8", "size", "enhancedstatuscodes", "auth"):
        assert s.has_extn(ext), ext
    assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
    code, text = s.login(agent, password)
    assert code == 235, (code, text)
    refused = s.sendmail(agent, ["friend@example.org"], message(agent, "queued"))
    assert refused == {}, refused
    try:
        s.sendmail("ceo@agents.test", ["friend@example.org"], message(agent, "spoof"))
        raise SystemExit("spoofed sender accepted")
    except smtplib.SMTPSenderRefused as e:
        assert e.smtp_code == 553 and e.smtp_error.startswith(b"5.7.1"), e

# Wrong password.
with smtplib.SMTP(host, port, timeout=10) as s:
    s.starttls(context=ctx)
    s.ehlo("python.test")
    try:
        s.login(agent, "not-the-password")
        raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e

# AUTH LOGIN, then a held send, reading the reply text step by step.
with smtplib.SMTP(host, port, timeout=10) as s:
    s.starttls(context=ctx)
    s.ehlo("python.test")
    s.user, s.password = careful, careful_password
    code, text = s.auth("LOGIN", s.auth_login)
    assert code == 235, (code, text)
    code, text = s.mail(careful)
    assert code == 250, (code, text)
    code, text = s.rcpt("friend@example.org")
    assert code == 250, (code, text)
    code, text = s.data(message(careful, "held"))
    assert code == 250, (code, text)
    print("HELD:", text.decode())
print("python ok")
"#;

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn python_smtplib() {
    let server = default_server().await;
    let port = server.addr.port().to_string();
    let output = match tokio::process::Command::new("python3")
        .args([
            "-c",
            PYTHON,
            "127.0.0.1",
            &port,
            AGENT,
            PASSWORD,
            CAREFUL,
            CAREFUL_PASSWORD,
        ])
        .output()
        .await
    {
        Ok(output) => output,
        Err(err) => {
            panic!("cannot run python3 ({err}); install it with: apt-get install -y python3")
        }
    };
    let out = text(&output);
    assert!(output.status.success(), "smtplib failed:\n{out}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("python ok"), "{out}");
    assert!(
        stdout.contains("HELD: 2.0.0 Held for confirmation: send snd_0002"),
        "{out}"
    );

    let submitted = server.gate.submitted();
    assert_eq!(submitted.len(), 2, "{out}");
    assert_eq!(submitted[0].agent, AGENT);
    assert_eq!(submitted[0].rcpt_to, vec!["friend@example.org"]);
    let raw = String::from_utf8_lossy(&submitted[0].message).into_owned();
    assert!(raw.contains("Subject: queued\r\n"), "{raw}");
    assert!(raw.contains("Grüße aus smtplib"), "{raw}");
    // smtplib dot-stuffed the line; the receiver removed the stuffing.
    assert!(raw.contains("\r\n.leading dot\r\n"), "{raw}");
    assert_eq!(submitted[1].agent, CAREFUL);
    assert!(String::from_utf8_lossy(&submitted[1].message).contains("Subject: held"));
    server.shutdown().await;
}
