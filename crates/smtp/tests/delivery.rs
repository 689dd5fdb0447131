//! Outbound delivery against real receivers over real sockets: Python's
//! aiosmtpd (`tests/py/smtp_sink.py`, started per test) as the receiving
//! server, and for direct mode a small DNS server in this file serving MX
//! records that point at 127.0.0.1.
//!
//! Needs Python 3 with aiosmtpd (Debian `python3-aiosmtpd`, or `python3 -m
//! pip install aiosmtpd`); `AGENTPOST_PYTHON` overrides the interpreter. A
//! missing one fails the tests with that message: nothing is skipped.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentpost_smtp::{
    DeliveryMode, MxResolver, OutboundConfig, OutboundEnvelope, Outcome, RelayTls, deliver,
    generate_self_signed,
};
use base64::Engine;
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, MX};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

// ---------------------------------------------------------------------------
// The receiving server

fn python() -> String {
    std::env::var("AGENTPOST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

const INSTALL_HINT: &str = "the outbound delivery tests need Python 3 with aiosmtpd: \
    apt-get install python3-aiosmtpd, or python3 -m pip install aiosmtpd \
    (set AGENTPOST_PYTHON to choose the interpreter)";

/// One aiosmtpd process; killed when dropped.
struct Sink {
    _child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Keeps the TLS certificate files alive.
    _tls: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct Received {
    mail_from: String,
    rcpt_tos: Vec<String>,
    mail_options: Vec<String>,
    data: Vec<u8>,
    tls: bool,
    auth_user: Option<String>,
}

impl Sink {
    /// Starts a sink with the options of `smtp_sink.py` (`dir` is added);
    /// `tls: true` in `options` means STARTTLS with a fresh self-signed
    /// certificate for `localhost`.
    async fn start(mut options: Value) -> Sink {
        let dir = tempfile::tempdir().expect("temp dir");
        options["dir"] = json!(dir.path());
        let mut tls_dir = None;
        if options.get("tls") == Some(&json!(true)) {
            let (cert, key) = generate_self_signed("localhost").expect("certificate");
            let certs = tempfile::tempdir().expect("temp dir");
            let cert_path = certs.path().join("cert.pem");
            let key_path = certs.path().join("key.pem");
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            options["tls_cert"] = json!(cert_path);
            options["tls_key"] = json!(key_path);
            tls_dir = Some(certs);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/smtp_sink.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}; {INSTALL_HINT}", python()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the SMTP sink did not start within 60 s")
            .expect("reading the SMTP sink's output")
            .unwrap_or_default();
        if line.starts_with("MISSING") {
            panic!("{line}; {INSTALL_HINT}");
        }
        let port = line
            .strip_prefix("READY ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| {
                panic!("the SMTP sink did not start (said {line:?}; see stderr); {INSTALL_HINT}")
            });
        Sink {
            _child: child,
            port,
            dir,
            _tls: tls_dir,
        }
    }

    fn messages(&self) -> Vec<Received> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("sink dir")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("msg-") && name.ends_with(".json")
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let value: Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("read message"))
                        .expect("message JSON");
                let strings = |key: &str| -> Vec<String> {
                    value[key]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|item| item.as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .unwrap_or_default()
                };
                Received {
                    mail_from: value["mail_from"].as_str().unwrap_or("?").to_string(),
                    rcpt_tos: strings("rcpt_tos"),
                    mail_options: strings("mail_options"),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(value["data_b64"].as_str().unwrap_or(""))
                        .expect("base64"),
                    tls: value["tls"].as_bool().unwrap_or(false),
                    auth_user: value["auth_user"].as_str().map(str::to_string),
                }
            })
            .collect()
    }

    /// Commands as the sink logged them (`MAIL FROM:<…>`, `RCPT TO:<…>`,
    /// `DATA`, `STARTTLS`, `AUTH PLAIN`, …).
    fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("commands.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn timeouts(mut cfg: OutboundConfig) -> OutboundConfig {
    cfg.connect_timeout = Duration::from_secs(10);
    cfg.command_timeout = Duration::from_secs(30);
    cfg.data_timeout = Duration::from_secs(30);
    cfg
}

fn relay(port: u16, tls: RelayTls) -> OutboundConfig {
    timeouts(OutboundConfig::new(
        "client.agentpost.test",
        DeliveryMode::Relay {
            host: "127.0.0.1".into(),
            port,
            tls,
            credentials: None,
            accept_invalid_certs: true,
        },
    ))
}

fn with_credentials(mut cfg: OutboundConfig, user: &str, password: &str) -> OutboundConfig {
    if let DeliveryMode::Relay { credentials, .. } = &mut cfg.mode {
        *credentials = Some((user.into(), password.into()));
    }
    cfg
}

fn verifying(mut cfg: OutboundConfig) -> OutboundConfig {
    if let DeliveryMode::Relay {
        accept_invalid_certs,
        ..
    } = &mut cfg.mode
    {
        *accept_invalid_certs = false;
    }
    cfg
}

fn envelope(from: &str, to: &[&str]) -> OutboundEnvelope {
    OutboundEnvelope {
        mail_from: from.into(),
        rcpt_to: to.iter().map(|rcpt| rcpt.to_string()).collect(),
    }
}

const MESSAGE: &[u8] =
    b"From: agent@agentpost.test\r\nTo: someone@sink.test\r\nSubject: hello\r\n\r\nHello.\r\n";

fn outcome<'a>(results: &'a [(String, Outcome)], rcpt: &str) -> &'a Outcome {
    &results
        .iter()
        .find(|(r, _)| r == rcpt)
        .unwrap_or_else(|| panic!("no result for {rcpt}: {results:?}"))
        .1
}

fn assert_delivered(results: &[(String, Outcome)], rcpt: &str) {
    let got = outcome(results, rcpt);
    assert!(
        got.is_delivered() && got.reply().starts_with("250"),
        "{rcpt}: {got:?}"
    );
}

fn assert_deferred(results: &[(String, Outcome)], rcpt: &str, reply_start: &str) {
    let got = outcome(results, rcpt);
    assert!(
        got.is_deferred() && got.reply().starts_with(reply_start),
        "{rcpt}: expected Deferred starting with {reply_start:?}, got {got:?}"
    );
}

fn assert_failed(results: &[(String, Outcome)], rcpt: &str, reply_start: &str) {
    let got = outcome(results, rcpt);
    assert!(
        got.is_failed() && got.reply().starts_with(reply_start),
        "{rcpt}: expected Failed starting with {reply_start:?}, got {got:?}"
    );
}

// ---------------------------------------------------------------------------
// Relay mode

#[tokio::test]
async fn per_recipient_results_in_one_transaction() {
    let sink = Sink::start(json!({
        "rcpt": {
            "busy@sink.test": "450 4.2.1 mailbox busy, try later",
            "nobody@sink.test": "550 5.1.1 no such user here",
        }
    }))
    .await;
    let cfg = relay(sink.port, RelayTls::None);
    let env = envelope(
        "agent@agentpost.test",
        &[
            "one@sink.test",
            "busy@sink.test",
            "nobody@sink.test",
            "two@sink.test",
        ],
    );
    let results = deliver(&cfg, &env, MESSAGE).await;

    let order: Vec<&str> = results.iter().map(|(rcpt, _)| rcpt.as_str()).collect();
    assert_eq!(order, env.rcpt_to, "results in envelope order");
    assert_delivered(&results, "one@sink.test");
    assert_delivered(&results, "two@sink.test");
    assert_eq!(
        outcome(&results, "busy@sink.test"),
        &Outcome::Deferred {
            reply: "450 4.2.1 mailbox busy, try later".into()
        }
    );
    assert_eq!(
        outcome(&results, "nobody@sink.test"),
        &Outcome::Failed {
            reply: "550 5.1.1 no such user here".into()
        }
    );
    assert!(
        outcome(&results, "one@sink.test")
            .reply()
            .starts_with("250 2.0.0 queued as 1"),
        "the final reply is kept: {results:?}"
    );

    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "one transaction");
    assert_eq!(messages[0].mail_from, "agent@agentpost.test");
    assert_eq!(messages[0].rcpt_tos, ["one@sink.test", "two@sink.test"]);
    assert_eq!(messages[0].data, MESSAGE);
    assert!(!messages[0].tls);
    let commands = sink.commands();
    assert_eq!(commands.iter().filter(|c| c.starts_with("MAIL")).count(), 1);
    assert_eq!(commands.iter().filter(|c| c.starts_with("RCPT")).count(), 4);
}

#[tokio::test]
async fn no_data_when_every_recipient_is_refused() {
    let sink = Sink::start(json!({
        "rcpt": {
            "a@sink.test": "550 5.1.1 no",
            "b@sink.test": "451 4.3.0 later",
        }
    }))
    .await;
    let cfg = relay(sink.port, RelayTls::None);
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["a@sink.test", "b@sink.test"]),
        MESSAGE,
    )
    .await;
    assert_failed(&results, "a@sink.test", "550 5.1.1 no");
    assert_deferred(&results, "b@sink.test", "451 4.3.0 later");
    let commands = sink.commands();
    assert!(
        !commands.iter().any(|c| c == "DATA"),
        "DATA must not be sent: {commands:?}"
    );
    assert!(commands.iter().any(|c| c == "QUIT"), "{commands:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn dot_stuffing_and_crlf_normalisation() {
    let sink = Sink::start(json!({})).await;
    let cfg = relay(sink.port, RelayTls::None);
    let env = envelope("agent@agentpost.test", &["rcpt@sink.test"]);

    // Bare LFs, a bare CR, lines starting with dots, a lone dot, something
    // that looks like a command after it, and no final line break.
    let raw =
        b"Subject: dots\n\n.leading dot\n..two dots\n.\nMAIL FROM:<evil@x>\nbare\rCR\nlast line";
    let results = deliver(&cfg, &env, raw).await;
    assert_delivered(&results, "rcpt@sink.test");

    // A message already in CRLF form and ending with CRLF arrives unchanged
    // (no extra empty line before the final dot).
    let clean = b"Subject: clean\r\n\r\n.dot\r\nend\r\n";
    let results = deliver(&cfg, &env, clean).await;
    assert_delivered(&results, "rcpt@sink.test");

    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        2,
        "the lone dot must not end the first message"
    );
    assert_eq!(
        String::from_utf8_lossy(&messages[0].data),
        "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nMAIL FROM:<evil@x>\r\nbare\r\nCR\r\nlast line\r\n"
    );
    assert_eq!(messages[1].data, clean);
    let commands = sink.commands();
    let mails = commands.iter().filter(|c| c.starts_with("MAIL")).count();
    assert_eq!(mails, 2, "no smuggled MAIL FROM: {commands:?}");
}

#[tokio::test]
async fn eight_bit_and_size_parameters() {
    let sink = Sink::start(json!({})).await;
    let cfg = relay(sink.port, RelayTls::None);
    let body = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n".as_bytes();
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        body,
    )
    .await;
    assert_delivered(&results, "rcpt@sink.test");
    let messages = sink.messages();
    assert_eq!(messages[0].data, body);
    assert!(
        messages[0]
            .mail_options
            .iter()
            .any(|o| o == "BODY=8BITMIME"),
        "{:?}",
        messages[0].mail_options
    );
    let size = format!("SIZE={}", body.len());
    assert!(
        messages[0].mail_options.contains(&size),
        "{:?}",
        messages[0].mail_options
    );
}

#[tokio::test]
async fn empty_mail_from_for_bounces() {
    let sink = Sink::start(json!({})).await;
    let cfg = relay(sink.port, RelayTls::None);
    let results = deliver(&cfg, &envelope("", &["rcpt@sink.test"]), MESSAGE).await;
    assert_delivered(&results, "rcpt@sink.test");
    let messages = sink.messages();
    // aiosmtpd records the null reverse-path as "<>".
    assert_eq!(messages[0].mail_from, "<>");
    assert!(
        sink.commands()
            .iter()
            .any(|c| c.starts_with("MAIL FROM:<> ")),
        "{:?}",
        sink.commands()
    );
}

#[tokio::test]
async fn temporary_failure_at_end_of_data_defers_accepted_recipients() {
    let sink = Sink::start(json!({
        "rcpt": { "nobody@sink.test": "550 5.1.1 no such user" },
        "data_reply": "451 4.3.0 queue full, try again later",
    }))
    .await;
    let cfg = relay(sink.port, RelayTls::None);
    let results = deliver(
        &cfg,
        &envelope(
            "agent@agentpost.test",
            &["a@sink.test", "nobody@sink.test", "b@sink.test"],
        ),
        MESSAGE,
    )
    .await;
    for rcpt in ["a@sink.test", "b@sink.test"] {
        assert_eq!(
            outcome(&results, rcpt),
            &Outcome::Deferred {
                reply: "451 4.3.0 queue full, try again later".into()
            }
        );
    }
    assert_failed(&results, "nobody@sink.test", "550 5.1.1 no such user");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn permanent_failure_at_end_of_data_fails_accepted_recipients() {
    let sink = Sink::start(json!({
        "data_reply": "554 5.6.0 message content rejected",
    }))
    .await;
    let cfg = relay(sink.port, RelayTls::None);
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["a@sink.test", "b@sink.test"]),
        MESSAGE,
    )
    .await;
    for rcpt in ["a@sink.test", "b@sink.test"] {
        assert_eq!(
            outcome(&results, rcpt),
            &Outcome::Failed {
                reply: "554 5.6.0 message content rejected".into()
            }
        );
    }
}

#[tokio::test]
async fn receiver_down_is_deferred() {
    // A port that was free a moment ago: connection refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = relay(port, RelayTls::Opportunistic);
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["a@sink.test", "b@sink.test"]),
        MESSAGE,
    )
    .await;
    for rcpt in ["a@sink.test", "b@sink.test"] {
        assert_deferred(&results, rcpt, "451 4.4.1 cannot connect to 127.0.0.1");
    }
}

#[tokio::test]
async fn required_starttls_and_auth_plain() {
    let sink = Sink::start(json!({
        "tls": true,
        "require_starttls": true,
        "auth_user": "agent",
        "auth_password": "s3cret pass",
    }))
    .await;
    let cfg = with_credentials(relay(sink.port, RelayTls::Required), "agent", "s3cret pass");
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        MESSAGE,
    )
    .await;
    assert_delivered(&results, "rcpt@sink.test");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].tls, "sent over TLS");
    assert_eq!(messages[0].auth_user.as_deref(), Some("agent"));
    let commands = sink.commands();
    let starttls = commands.iter().position(|c| c == "STARTTLS");
    let auth = commands.iter().position(|c| c == "AUTH PLAIN");
    let mail = commands.iter().position(|c| c.starts_with("MAIL"));
    assert!(
        starttls.is_some() && auth.is_some() && starttls < auth && auth < mail,
        "STARTTLS, then AUTH PLAIN, then MAIL: {commands:?}"
    );
    // EHLO again after STARTTLS.
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("EHLO")).count(),
        2,
        "{commands:?}"
    );
}

#[tokio::test]
async fn wrong_password_is_deferred() {
    let sink = Sink::start(json!({
        "tls": true,
        "auth_user": "agent",
        "auth_password": "right",
    }))
    .await;
    let cfg = with_credentials(relay(sink.port, RelayTls::Required), "agent", "wrong");
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        MESSAGE,
    )
    .await;
    let got = outcome(&results, "rcpt@sink.test");
    assert!(
        got.is_deferred()
            && got
                .reply()
                .starts_with("451 4.7.8 authentication to 127.0.0.1")
            && got.reply().contains("535"),
        "{got:?}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn required_starttls_without_starttls_is_deferred() {
    let sink = Sink::start(json!({})).await;
    let cfg = relay(sink.port, RelayTls::Required);
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        MESSAGE,
    )
    .await;
    let got = outcome(&results, "rcpt@sink.test");
    assert!(
        got.is_deferred()
            && got.reply().starts_with("451 4.7.10")
            && got.reply().contains("does not offer STARTTLS"),
        "{got:?}"
    );
    assert!(
        !sink.commands().iter().any(|c| c.starts_with("MAIL")),
        "nothing sent in plaintext: {:?}",
        sink.commands()
    );
}

#[tokio::test]
async fn certificates_are_verified_by_default() {
    let sink = Sink::start(json!({ "tls": true })).await;
    let cfg = verifying(relay(sink.port, RelayTls::Required));
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        MESSAGE,
    )
    .await;
    let got = outcome(&results, "rcpt@sink.test");
    assert!(
        got.is_deferred()
            && got
                .reply()
                .starts_with("451 4.7.5 TLS handshake with 127.0.0.1")
            && got.reply().contains("certificate"),
        "a self-signed certificate must not pass: {got:?}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn opportunistic_uses_starttls_when_offered() {
    let sink = Sink::start(json!({ "tls": true })).await;
    let cfg = relay(sink.port, RelayTls::Opportunistic);
    let results = deliver(
        &cfg,
        &envelope("agent@agentpost.test", &["rcpt@sink.test"]),
        MESSAGE,
    )
    .await;
    assert_delivered(&results, "rcpt@sink.test");
    assert!(sink.messages()[0].tls);
}

#[tokio::test]
async fn opportunistic_falls_back_to_plaintext() {
    // Not offered: plaintext on the same connection.
    let plain = Sink::start(json!({})).await;
    let cfg = relay(plain.port, RelayTls::Opportunistic);
    let env = envelope("agent@agentpost.test", &["rcpt@sink.test"]);
    assert_delivered(&deliver(&cfg, &env, MESSAGE).await, "rcpt@sink.test");
    assert!(!plain.messages()[0].tls);

    // Offered but the handshake fails (certificate not trusted): a new
    // connection without STARTTLS.
    let untrusted = Sink::start(json!({ "tls": true })).await;
    let cfg = verifying(relay(untrusted.port, RelayTls::Opportunistic));
    assert_delivered(&deliver(&cfg, &env, MESSAGE).await, "rcpt@sink.test");
    let messages = untrusted.messages();
    assert_eq!(messages.len(), 1);
    assert!(!messages[0].tls);
    assert_eq!(
        untrusted
            .commands()
            .iter()
            .filter(|c| *c == "STARTTLS")
            .count(),
        1
    );
}

#[tokio::test]
async fn credentials_are_never_sent_in_plaintext_opportunistically() {
    let sink = Sink::start(json!({
        "auth_user": "agent",
        "auth_password": "pw",
        "auth_require_tls": false,
    }))
    .await;
    let cfg = with_credentials(relay(sink.port, RelayTls::Opportunistic), "agent", "pw");
    let env = envelope("agent@agentpost.test", &["rcpt@sink.test"]);
    let results = deliver(&cfg, &env, MESSAGE).await;
    let got = outcome(&results, "rcpt@sink.test");
    assert!(
        got.is_deferred() && got.reply().contains("unencrypted"),
        "{got:?}"
    );
    assert!(!sink.commands().iter().any(|c| c.starts_with("AUTH")));

    // tls = none is the explicit opt-in to plaintext AUTH.
    let cfg = with_credentials(relay(sink.port, RelayTls::None), "agent", "pw");
    assert_delivered(&deliver(&cfg, &env, MESSAGE).await, "rcpt@sink.test");
    assert_eq!(sink.messages()[0].auth_user.as_deref(), Some("agent"));
}

#[tokio::test]
async fn malformed_addresses_fail_without_injection() {
    let sink = Sink::start(json!({})).await;
    let cfg = relay(sink.port, RelayTls::None);
    let results = deliver(
        &cfg,
        &envelope(
            "agent@agentpost.test",
            &["ok@sink.test", "x@sink.test>\r\nRSET", "no-at-sign"],
        ),
        MESSAGE,
    )
    .await;
    assert_delivered(&results, "ok@sink.test");
    assert_failed(&results, "x@sink.test>\r\nRSET", "553 5.1.3");
    assert_failed(&results, "no-at-sign", "553 5.1.3");
    assert_eq!(sink.messages()[0].rcpt_tos, ["ok@sink.test"]);

    let results = deliver(&cfg, &envelope("bad sender@x", &["ok@sink.test"]), MESSAGE).await;
    assert_failed(&results, "ok@sink.test", "550 5.1.7");
}

// ---------------------------------------------------------------------------
// Direct mode: a DNS server on 127.0.0.1 serving a fixed zone over UDP.

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    nxdomain: HashSet<String>,
    /// Names whose queries are never answered (timeouts).
    silent: HashSet<String>,
}

impl Zone {
    fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        let exchange = Name::from_ascii(exchange).expect("name");
        self.records
            .entry((name.to_string(), RecordType::MX))
            .or_default()
            .push(RData::MX(MX::new(preference, exchange)));
        self
    }

    fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.records
            .entry((name.to_string(), RecordType::A))
            .or_default()
            .push(RData::A(A(ip)));
        self
    }
}

/// Serves `zone` until the test ends; returns its address and the log of
/// queries (`"name TYPE"`) in the order received.
async fn dns_server(zone: Zone) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
    let addr = socket.local_addr().expect("DNS addr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let queries = log.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(query) = request.queries.first().cloned() else {
                continue;
            };
            let name = query
                .name
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            queries
                .lock()
                .expect("log")
                .push(format!("{name} {}", query.query_type));
            if zone.silent.contains(&name) {
                continue;
            }
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.authoritative = true;
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_query(query.clone());
            if zone.nxdomain.contains(&name) {
                response.metadata.response_code = ResponseCode::NXDomain;
            } else if let Some(rdatas) = zone.records.get(&(name.clone(), query.query_type)) {
                for rdata in rdatas {
                    response.add_answer(Record::from_rdata(query.name.clone(), 60, rdata.clone()));
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, log)
}

#[tokio::test]
async fn direct_mode_groups_by_domain_and_follows_mx() {
    let sink = Sink::start(json!({ "tls": true })).await;
    let mut zone = Zone::default()
        // Listed worst first: the client must sort. down.mx.test has the
        // best preference but nothing listens at 127.0.0.2.
        .mx("mx.test", 20, "good.mx.test.")
        .mx("mx.test", 10, "down.mx.test.")
        .a("good.mx.test", Ipv4Addr::LOCALHOST)
        .a("down.mx.test", Ipv4Addr::new(127, 0, 0, 2))
        // No MX: the domain's own address (implicit MX).
        .a("implicit.test", Ipv4Addr::LOCALHOST)
        // RFC 7505 null MX.
        .mx("null.test", 0, ".");
    zone.nxdomain.insert("gone.test".into());
    zone.silent.insert("slow.test".into());
    let (dns, queries) = dns_server(zone).await;

    let resolver =
        MxResolver::with_nameserver_timeout(dns, Duration::from_secs(1), 1).expect("resolver");
    let cfg = timeouts(OutboundConfig::new(
        "client.agentpost.test",
        DeliveryMode::Direct {
            resolver,
            port: sink.port,
        },
    ));
    let env = envelope(
        "agent@agentpost.test",
        &[
            "a@mx.test",
            "c@implicit.test",
            "d@null.test",
            "B@MX.test",
            "e@gone.test",
            "f@slow.test",
            "g@[127.0.0.1]",
        ],
    );
    let results = deliver(&cfg, &env, MESSAGE).await;

    let order: Vec<&str> = results.iter().map(|(rcpt, _)| rcpt.as_str()).collect();
    assert_eq!(order, env.rcpt_to);
    assert_delivered(&results, "a@mx.test");
    assert_delivered(&results, "B@MX.test");
    assert_delivered(&results, "c@implicit.test");
    assert_failed(&results, "d@null.test", "556 5.1.10");
    assert_failed(&results, "e@gone.test", "550 5.1.2");
    assert_deferred(&results, "f@slow.test", "451 4.4.3");
    // A domain literal needs no DNS.
    assert_delivered(&results, "g@[127.0.0.1]");

    let mut messages = sink.messages();
    messages.sort_by(|a, b| a.rcpt_tos.cmp(&b.rcpt_tos));
    assert_eq!(
        messages.len(),
        3,
        "one transaction per domain: {messages:?}"
    );
    assert_eq!(messages[0].rcpt_tos, ["a@mx.test", "B@MX.test"]);
    assert_eq!(messages[1].rcpt_tos, ["c@implicit.test"]);
    assert_eq!(messages[2].rcpt_tos, ["g@[127.0.0.1]"]);
    assert!(
        messages.iter().all(|m| m.tls),
        "opportunistic STARTTLS with an unverifiable certificate"
    );

    let queries = queries.lock().expect("log").clone();
    let down = queries.iter().position(|q| q == "down.mx.test A");
    let good = queries.iter().position(|q| q == "good.mx.test A");
    assert!(
        down.is_some() && down < good,
        "the preferred MX is tried first: {queries:?}"
    );
}

#[tokio::test]
async fn direct_mode_defers_when_every_mx_is_down() {
    let zone = Zone::default()
        .mx("down.test", 10, "mx1.down.test.")
        .mx("down.test", 20, "mx2.down.test.")
        .a("mx1.down.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("mx2.down.test", Ipv4Addr::new(127, 0, 0, 3));
    let (dns, _) = dns_server(zone).await;
    let resolver =
        MxResolver::with_nameserver_timeout(dns, Duration::from_secs(1), 1).expect("resolver");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = timeouts(OutboundConfig::new(
        "client.agentpost.test",
        DeliveryMode::Direct { resolver, port },
    ));
    let results = deliver(&cfg, &envelope("", &["x@down.test"]), MESSAGE).await;
    assert_deferred(
        &results,
        "x@down.test",
        "451 4.4.1 cannot connect to mx2.down.test",
    );
}
