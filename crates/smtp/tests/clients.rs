//! Real SMTP clients against the server: Python's smtplib and swaks, spawned
//! as processes. Both are required: a missing one fails the test with the
//! command that installs it.

mod common;

use std::process::Output;

use agentpost_smtp::TlsSource;
use common::{config, start};
use tokio::process::Command;

async fn run(program: &str, args: &[&str], install: &str) -> Output {
    match Command::new(program).args(args).output().await {
        Ok(output) => output,
        Err(err) => panic!("cannot run `{program}` ({err}); install it with: {install}"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const PYTHON: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage

host, port = sys.argv[1], int(sys.argv[2])

def message(subject):
    m = EmailMessage()
    m["From"] = "alice@sender.test"
    m["To"] = "agent@agents.test"
    m["Subject"] = subject
    m.set_content("Grüße aus smtplib\n.leading dot\n")  # 8-bit body, dot stuffing
    return m

with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("python.test")
    for ext in ("pipelining", "8bitmime", "smtputf8", "size", "enhancedstatuscodes", "starttls"):
        assert s.has_extn(ext), ext
    refused = s.send_message(message("plain"), to_addrs=["agent@agents.test", "unknown@agents.test"])
    assert list(refused) == ["unknown@agents.test"], refused
    assert refused["unknown@agents.test"][0] == 550, refused
    code, text = s.noop()
    assert code == 250 and text.startswith(b"2.0.0"), (code, text)
    code, text = s.verify("agent@agents.test")
    assert code == 252, (code, text)
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("python.test")
    assert not s.has_extn("starttls")
    s.send_message(message("over tls"), mail_options=["SMTPUTF8"])
    try:
        s.sendmail("alice@sender.test", ["unknown@agents.test"], "Subject: x\r\n\r\nx\r\n")
        raise SystemExit("expected SMTPRecipientsRefused")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["unknown@agents.test"][0] == 550
print("python ok")
"#;

#[tokio::test]
async fn python_smtplib() {
    let mut cfg = config();
    cfg.tls = TlsSource::SelfSigned;
    let server = start(cfg).await;
    let port = server.addr.port().to_string();
    let output = run(
        "python3",
        &["-c", PYTHON, "127.0.0.1", &port],
        "apt-get install -y python3",
    )
    .await;
    assert!(
        output.status.success(),
        "smtplib failed:\n{}",
        text(&output)
    );

    let delivered = server.handler.delivered();
    assert_eq!(delivered.len(), 2, "{}", text(&output));
    assert_eq!(delivered[0].rcpt_to, vec!["agent@agents.test"]);
    assert!(!delivered[0].tls);
    assert!(delivered[1].tls);
    let raw = String::from_utf8_lossy(&delivered[0].raw).into_owned();
    assert!(raw.contains("Subject: plain"), "{raw}");
    // smtplib dot-stuffed the line; we removed the stuffing again.
    assert!(raw.contains("\r\n.leading dot\r\n"), "{raw}");
    server.shutdown().await;
}

#[tokio::test]
async fn swaks() {
    let install = "apt-get update && apt-get install -y swaks";
    let mut cfg = config();
    cfg.tls = TlsSource::SelfSigned;
    let server = start(cfg).await;
    let port = server.addr.port().to_string();
    let base = [
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--helo",
        "swaks.test",
    ];

    // Plain, pipelined.
    let mut args = base.to_vec();
    args.extend([
        "--from",
        "bob@sender.test",
        "--to",
        "agent@agents.test",
        "--pipeline",
        "--header",
        "Subject: from swaks",
        "--body",
        "hello from swaks",
    ]);
    let output = run("swaks", &args, install).await;
    let out = text(&output);
    assert!(output.status.success(), "swaks failed:\n{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as M1"), "{out}");
    assert!(out.contains("PIPELINING"), "{out}");

    // STARTTLS.
    let mut args = base.to_vec();
    args.extend([
        "--from",
        "bob@sender.test",
        "--to",
        "agent@agents.test",
        "--tls",
    ]);
    let output = run("swaks", &args, install).await;
    let out = text(&output);
    assert!(output.status.success(), "swaks --tls failed:\n{out}");
    assert!(out.contains("220 2.0.0 Ready to start TLS"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as M2"), "{out}");

    // An unknown recipient is refused with the right codes.
    let mut args = base.to_vec();
    args.extend(["--from", "bob@sender.test", "--to", "unknown@agents.test"]);
    let output = run("swaks", &args, install).await;
    let out = text(&output);
    assert!(!output.status.success(), "swaks should fail:\n{out}");
    assert!(out.contains("550 5.1.1"), "{out}");

    let delivered = server.handler.delivered();
    assert_eq!(delivered.len(), 2, "{out}");
    assert_eq!(delivered[0].helo, "swaks.test");
    assert!(!delivered[0].tls);
    assert!(delivered[1].tls);
    assert!(String::from_utf8_lossy(&delivered[0].raw).contains("hello from swaks"));
    server.shutdown().await;
}
