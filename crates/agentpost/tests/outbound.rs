//! Outbound mail end to end against a real SMTP receiver: Python's
//! `aiosmtpd` plays the smarthost, and `dkimpy` verifies the DKIM
//! signatures of everything it receives (tests/py/smtp_receiver.py).
//! Sends over the API and over SMTP submission (Python's smtplib with an
//! app password), 4xx then success, 5xx bounce, the receiver down across a
//! restart of agentpost, and two servers on one PostgreSQL racing 1,000
//! sends against a cap of 200.

mod common;

use base64::Engine;
use common::{Backend, Server, Store};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The aiosmtpd receiver; killed on drop.
struct Receiver {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &Path, port: Option<u16>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(dir.join("port"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/smtp_receiver.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(dir);
        if let Some(p) = port {
            cmd.arg(p.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd and dkimpy (pip install aiosmtpd dkimpy pynacl)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.join("port")) {
                break p.trim().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the aiosmtpd receiver did not start (pip install aiosmtpd dkimpy pynacl)"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn messages(&self) -> Vec<Value> {
        let mut out: Vec<(u64, Value)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let n: u64 = name
                    .strip_prefix("msg-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((n, serde_json::from_str(&text).ok()?))
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.into_iter().map(|(_, v)| v).collect()
    }

    fn rules(&self, rules: &str) {
        std::fs::write(self.dir.join("rules"), rules).unwrap();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw_of(m: &Value) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(m["raw"].as_str().unwrap())
        .unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

async fn wait_for<F: Fn() -> bool>(what: &str, secs: u64, f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn relay_args(r: &Receiver) -> Vec<String> {
    vec![
        "--relay".into(),
        format!("127.0.0.1:{}", r.port),
        "--relay-tls".into(),
        "none".into(),
    ]
}

fn start(store: &Store, r: &Receiver) -> Server {
    let args = relay_args(r);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(
        store,
        &args,
        &[
            ("AGENTPOST_OUTBOUND_RETRY_SCHEDULE", "1s"),
            ("AGENTPOST_SUBMISSION", "127.0.0.1:0"),
        ],
    )
}

/// Publishes the domain's DKIM keys to the receiver's DNS file.
async fn publish_dkim(server: &Server, key: &str, r: &Receiver) {
    let (s, domains) = server.get("/v1/domains", key).await;
    assert_eq!(s, 200, "{domains}");
    let mut lines = String::new();
    for d in domains.as_array().unwrap() {
        for rec in d["dns_records"].as_array().unwrap() {
            if rec["name"].as_str().unwrap_or("").contains("._domainkey.") {
                lines.push_str(&format!(
                    "{} {}\n",
                    rec["name"].as_str().unwrap(),
                    rec["value"].as_str().unwrap()
                ));
            }
        }
    }
    assert!(lines.lines().count() >= 2, "two DKIM records: {domains}");
    std::fs::write(r.dir.join("dns"), lines).unwrap();
}

async fn send_relay_dkim_and_retries(backend: Backend) {
    let store = Store::new(backend);
    let init = store.init(&[]);
    let key = init["admin_key"].as_str().unwrap().to_string();
    let r = Receiver::start(&store.dir.path().join("rx"), None);
    let server = start(&store, &r);
    publish_dkim(&server, &key, &r).await;
    let (id, token) = server.agent(&key, "sender").await;

    // A plain send: relayed, DKIM verified by dkimpy, stored in sent byte for byte.
    let body = json!({
        "to": [{"email": "Carol@Remote.test", "name": "Carol"}],
        "cc": ["dave@remote.test"],
        "bcc": ["eve@remote.test"],
        "subject": "Quarterly numbers",
        "text": "Hello.\n.\nA line with a lone dot above, and\r\nmixed endings.",
        "html": "<p>Hello.</p>",
        "attachments": [{"filename": "n.csv", "content_type": "text/csv", "content": "YSxiCjEsMgo="}]
    });
    let (s, sent) = server
        .post(&format!("/v1/agents/{id}/messages/send"), &token, body)
        .await;
    assert_eq!(s, 202, "{sent}");
    assert_eq!(sent["status"], "queued");
    let send_id = sent["send_id"].as_str().unwrap().to_string();
    wait_for("delivery", 30, || r.messages().len() == 1).await;
    let m = &r.messages()[0];
    assert_eq!(m["mail_from"], "sender@agents.localhost");
    let mut rcpts: Vec<String> = m["rcpt_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_lowercase())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["carol@remote.test", "dave@remote.test", "eve@remote.test"]
    );
    let dkim = m["dkim"].as_array().unwrap();
    assert_eq!(dkim.len(), 2, "{dkim:?}");
    for sig in dkim {
        assert_eq!(sig["ok"], true, "dkimpy verification: {sig}");
    }
    let raw = raw_of(m);
    assert!(
        !raw.to_lowercase().contains("eve@remote.test"),
        "bcc is envelope only"
    );
    assert!(
        raw.contains("Hello.\r\n.\r\nA line with a lone dot above, and\r\nmixed endings."),
        "a lone dot survives and every line ends in CRLF: {raw}"
    );
    let status = loop {
        let (_, v) = server.get(&format!("/v1/sends/{send_id}"), &token).await;
        if v["status"] == "sent" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "delivered")
    );
    let mid = status["message_id"].as_str().unwrap();
    let resp = server
        .http
        .get(format!(
            "{}/v1/agents/{id}/messages/{mid}?view=raw",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        raw.as_bytes(),
        "sent folder holds the delivered bytes"
    );

    // A delivery report arriving later over SMTP marks that recipient failed.
    let header = status["message_id_header"].as_str().unwrap();
    let dsn = format!(
        "From: MAILER-DAEMON@mx.remote.test\r\nTo: sender@agents.localhost\r\nSubject: Undelivered Mail\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.remote.test\r\n\r\nFinal-Recipient: rfc822; dave@remote.test\r\nAction: failed\r\n\
Status: 5.2.1\r\nDiagnostic-Code: smtp; 550 5.2.1 mailbox disabled\r\n\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n\
From: sender@agents.localhost\r\nMessage-ID: <{header}>\r\n\r\n--b--\r\n"
    );
    let reply = common::smtp_send(
        &common::smtp_addr(&server),
        "",
        &["sender@agents.localhost"],
        dsn.as_bytes(),
    )
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let (_, v) = server.get(&format!("/v1/sends/{send_id}"), &token).await;
    assert_eq!(v["status"], "partially_failed", "{v}");
    let dave = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == "dave@remote.test")
        .unwrap();
    assert_eq!(dave["status"], "failed", "{v}");

    // 4xx twice then success: retried, delivered once.
    r.rules("slow@remote.test 450 2\nnever@remote.test 550\n");
    let (s, v) = server
        .post(
            &format!("/v1/agents/{id}/messages/send"),
            &token,
            json!({"to": ["slow@remote.test"], "subject": "retry me", "text": "x"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let slow_id = v["send_id"].as_str().unwrap().to_string();
    wait_for("retried delivery", 60, || r.messages().len() == 2).await;
    // The receiver writes the message before it answers 250; wait for the record.
    let v = loop {
        let (_, v) = server.get(&format!("/v1/sends/{slow_id}"), &token).await;
        if v["status"] == "sent" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["recipients"][0]["attempts"], 3, "two 450s, then 250: {v}");

    // 5xx: failed, a DSN in the inbox, message.bounced.
    let (s, v) = server
        .post(
            &format!("/v1/agents/{id}/messages/send"),
            &token,
            json!({"to": ["never@remote.test"], "subject": "doomed", "text": "x"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let doomed = v["send_id"].as_str().unwrap().to_string();
    let v = loop {
        let (_, v) = server.get(&format!("/v1/sends/{doomed}"), &token).await;
        if v["status"] == "failed" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        v["recipients"][0]["last_reply"]
            .as_str()
            .unwrap()
            .starts_with("550"),
        "{v}"
    );
    let (_, inbox) = server
        .get(&format!("/v1/agents/{id}/messages?folder=inbox"), &token)
        .await;
    assert!(
        inbox["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["subject"] == "Undelivered Mail Returned to Sender: doomed"),
        "{inbox}"
    );
    let (_, ev) = server.get("/v1/events?type=message.bounced", &key).await;
    assert_eq!(
        ev["data"].as_array().unwrap().len(),
        2,
        "the report and the 5xx: {ev}"
    );
    let (_, ev) = server.get("/v1/events?type=message.delivered", &key).await;
    assert!(ev["data"].as_array().unwrap().len() >= 4, "{ev}");
    assert_eq!(
        r.messages().len(),
        2,
        "the refused message was not delivered"
    );

    // A large message (its bytes are read by its own delivery task, not
    // with the claim) goes out whole and signed.
    use base64::Engine;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 300 * 1024]);
    let body = json!({
        "to": ["big@remote.test"],
        "subject": "Large attachment",
        "text": "See attached.",
        "attachments": [{"filename": "big.bin", "content_type": "application/octet-stream", "content": big}]
    });
    let (s, sent) = server
        .post(&format!("/v1/agents/{id}/messages/send"), &token, body)
        .await;
    assert_eq!(s, 202, "{sent}");
    wait_for("large delivery", 30, || r.messages().len() == 3).await;
    let m = &r.messages()[2];
    assert!(raw_of(m).len() > 400 * 1024, "the whole message arrived");
    for sig in m["dkim"].as_array().unwrap() {
        assert_eq!(sig["ok"], true, "dkimpy verification: {sig}");
    }
}

async fn receiver_down_across_restart(backend: Backend) {
    let store = Store::new(backend);
    let init = store.init(&[]);
    let key = init["admin_key"].as_str().unwrap().to_string();
    // Reserve a port, then stop the receiver so deliveries fail with a connection error.
    let r = Receiver::start(&store.dir.path().join("rx"), None);
    let port = r.port;
    drop(r);
    let r = Receiver {
        child: Command::new("true").spawn().unwrap(),
        dir: store.dir.path().join("rx"),
        port,
    };
    let server = start(&store, &r);
    let (id, token) = server.agent(&key, "patient").await;
    let mut ids = vec![];
    for i in 0..5 {
        let (s, v) = server
            .post(&format!("/v1/agents/{id}/messages/send"), &token, json!({"to": [format!("r{i}@remote.test")], "subject": format!("m{i}"), "text": "x"}))
            .await;
        assert_eq!(s, 202, "{v}");
        ids.push(v["send_id"].as_str().unwrap().to_string());
    }
    // Let at least one attempt fail, then restart agentpost and bring the receiver up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(server);
    let r = Receiver::start(&store.dir.path().join("rx"), Some(port));
    let server = start(&store, &r);
    wait_for("deliveries after restart", 60, || r.messages().len() >= 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut subjects: Vec<String> = r
        .messages()
        .iter()
        .map(|m| {
            raw_of(m)
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (0..5).map(|i| format!("Subject: m{i}")).collect::<Vec<_>>(),
        "each once"
    );
    for sid in ids {
        let (_, v) = server.get(&format!("/v1/sends/{sid}"), &token).await;
        assert_eq!(v["status"], "sent", "{v}");
    }
}

/// SMTP submission with an app password, driven by Python's smtplib.
async fn submission_with_smtplib(backend: Backend) {
    let store = Store::new(backend);
    let init = store.init(&[]);
    let key = init["admin_key"].as_str().unwrap().to_string();
    let r = Receiver::start(&store.dir.path().join("rx"), None);
    let server = start(&store, &r);
    publish_dkim(&server, &key, &r).await;
    let (id, token) = server.agent(&key, "mailer").await;
    let (s, pw) = server
        .post(
            &format!("/v1/agents/{id}/app-passwords"),
            &token,
            json!({"name": "thunderbird"}),
        )
        .await;
    assert_eq!(s, 201, "{pw}");
    let password = pw["password"].as_str().unwrap();
    assert!(password.starts_with("ap_app_"));
    // An app password is not an API credential.
    let (s, _) = server.get("/v1/me", password).await;
    assert_eq!(s, 401);
    let submission = server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v.pointer("/fields/submission")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .expect("submission address in the log");
    let script = r#"
import smtplib, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
user, pw, to = sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, int(port), timeout=30)
s.ehlo(); s.starttls(context=ctx); s.ehlo()
s.login(user, pw)
# Sending as someone else is refused.
code, msg = s.mail("ceo@agents.localhost")
print("MAILAS", code, msg.decode())
s.rset()
msg = "From: Mailer <%s>\r\nTo: %s\r\nSubject: via submission\r\n\r\nsent by a mail client\r\n" % (user, to)
print("SEND", s.sendmail(user, [to], msg))
s.quit()
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &submission,
            "mailer@agents.localhost",
            password,
            "friend@remote.test",
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MAILAS 553"), "{stdout}");
    assert!(stdout.contains("SEND {}"), "{stdout}");
    wait_for("submitted message delivered", 30, || {
        r.messages().len() == 1
    })
    .await;
    let m = &r.messages()[0];
    assert!(raw_of(m).contains("sent by a mail client"));
    assert!(
        m["dkim"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ok"] == true),
        "{m}"
    );
    // A wrong password is refused.
    let out = Command::new("python3")
        .args(["-c", "import smtplib,ssl,sys\nh,p=sys.argv[1].rsplit(':',1)\nc=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE\ns=smtplib.SMTP(h,int(p));s.starttls(context=c)\ntry:\n  s.login('mailer@agents.localhost','wrong')\nexcept smtplib.SMTPAuthenticationError as e:\n  print('REFUSED', e.smtp_code)\n", &submission])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("REFUSED 535"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

both_backends!(
    send_relay_dkim_and_retries,
    super::send_relay_dkim_and_retries
);
both_backends!(
    receiver_down_across_restart,
    super::receiver_down_across_restart
);
both_backends!(submission_with_smtplib, super::submission_with_smtplib);

/// Two servers on one PostgreSQL, 1,000 concurrent sends from one agent
/// whose cap is 200: exactly 200 accepted, each delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_enforce_one_cap() {
    let store = Store::new(Backend::Postgres);
    let init = store.init(&[]);
    let key = init["admin_key"].as_str().unwrap().to_string();
    let r = Receiver::start(&store.dir.path().join("rx"), None);
    let a = start(&store, &r);
    let b = start(&store, &r);
    let (s, p) = a
        .post(
            "/v1/policies",
            &key,
            json!({"name": "cap200", "sends_per_day": 200}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let (s, v) = a
        .post(
            "/v1/agents",
            &key,
            json!({"local_part": "busy", "sponsor": "o@example.com", "policy_id": p["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["agent"]["id"].as_str().unwrap().to_string();
    let token = v["token"]["secret"].as_str().unwrap().to_string();
    let servers = [a.base.clone(), b.base.clone()];
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..1000 {
        let url = format!("{}/v1/agents/{id}/messages/send", servers[i % 2]);
        let (client, token, sem) = (client.clone(), token.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"to": ["sink@remote.test"], "subject": format!("n{i}"), "text": "x"}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").is_some();
            (status, retry)
        });
    }
    let mut accepted = 0;
    let mut limited = 0;
    while let Some(res) = tasks.join_next().await {
        match res.unwrap() {
            (202, _) => accepted += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, limited), (200, 800));
    wait_for("200 deliveries", 120, || r.messages().len() >= 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut subjects: Vec<String> = r
        .messages()
        .iter()
        .map(|m| {
            raw_of(m)
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(subjects.len(), 200, "delivered exactly once each");
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 200, "no duplicates");
}
