//! Protocol tests over real sockets: every reply code, sequencing, limits,
//! timeouts, connection caps, pipelining and graceful shutdown.

mod common;

use std::time::Duration;

use common::{Client, TestHandler, config, expect, start, start_with};

const MSG: &[u8] = b"From: a@sender.test\r\nTo: agent@agents.test\r\nSubject: hi\r\n\r\nHello.\r\n";

#[tokio::test]
async fn greeting_and_ehlo_capabilities() {
    let server = start(config()).await;
    let (mut c, greeting) = Client::connect(server.addr).await;
    assert_eq!(greeting, "220 mx.test ESMTP agentpost\r\n");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250-mx.test"), "{ehlo}");
    for cap in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 52428800",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(
            ehlo.contains(&format!("{cap}\r\n")),
            "missing {cap}: {ehlo}"
        );
    }
    // TLS is disabled in this configuration: neither offered nor accepted.
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    expect(&c.cmd("STARTTLS").await, "502 5.5.1");
    assert_eq!(c.cmd("HELO client.test").await, "250 mx.test\r\n");
    expect(&c.cmd("QUIT").await, "221 2.0.0");
    assert!(c.closed().await);
    server.shutdown().await;
}

#[tokio::test]
async fn simple_commands() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("NOOP").await, "250 2.0.0");
    expect(&c.cmd("NOOP whatever").await, "250 2.0.0");
    expect(&c.cmd("RSET").await, "250 2.0.0");
    expect(&c.cmd("VRFY agent@agents.test").await, "252 2.0.0");
    expect(&c.cmd("HELP").await, "214 2.0.0");
    expect(&c.cmd("EXPN staff").await, "502 5.5.1");
    expect(&c.cmd("BDAT 10 LAST").await, "502 5.5.1");
    expect(&c.cmd("AUTH PLAIN AGFAAGI=").await, "502 5.5.1");
    expect(&c.cmd("LHLO client.test").await, "500 5.5.1");
    expect(&c.cmd("FOO bar").await, "500 5.5.1");
    expect(&c.cmd("").await, "500 5.5.1");
    expect(&c.cmd("QUIT").await, "221 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn sequence_errors() {
    let server = start(config()).await;
    let (mut c, _) = Client::connect(server.addr).await;
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "503 5.5.1");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "503 5.5.1");
    expect(&c.cmd("DATA").await, "503 5.5.1");
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "503 5.5.1");
    expect(&c.cmd("DATA").await, "503 5.5.1");
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "503 5.5.1");
    // MAIL given, but no accepted recipient.
    expect(&c.cmd("RCPT TO:<unknown@agents.test>").await, "550 5.1.1");
    expect(&c.cmd("DATA").await, "554 5.5.1");
    // RSET ends the transaction: RCPT is out of sequence again.
    expect(&c.cmd("RSET").await, "250 2.0.0");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "503 5.5.1");
    // EHLO also resets.
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    expect(&c.cmd("EHLO again.test").await, "250");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "503 5.5.1");
    server.shutdown().await;
}

#[tokio::test]
async fn syntax_errors() {
    let server = start(config()).await;
    let (mut c, _) = Client::connect(server.addr).await;
    expect(&c.cmd("HELO").await, "501 5.5.4");
    expect(&c.cmd("EHLO").await, "501 5.5.4");
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd("MAIL FROM:a@sender.test").await, "501 5.5.4");
    expect(&c.cmd("MAIL TO:<a@sender.test>").await, "501 5.5.4");
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> SIZE=abc").await,
        "501 5.5.4",
    );
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> FOO=BAR").await,
        "555 5.5.4",
    );
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> RET=FULL").await,
        "555 5.5.4",
    );
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> BODY=BINARYMIME").await,
        "555 5.5.4",
    );
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> SIZE=100 BODY=8BITMIME SMTPUTF8")
            .await,
        "250 2.1.0",
    );
    expect(&c.cmd("RCPT agent@agents.test").await, "501 5.5.4");
    expect(&c.cmd("RCPT TO:<>").await, "501 5.1.3");
    expect(
        &c.cmd("RCPT TO:<agent@agents.test> NOTIFY=NEVER").await,
        "555 5.5.4",
    );
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
    // Null reverse-path (bounces) is valid.
    expect(&c.cmd("RSET").await, "250 2.0.0");
    expect(&c.cmd("MAIL FROM:<>").await, "250 2.1.0");
    server.shutdown().await;
}

#[tokio::test]
async fn recipient_verdicts() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    for (rcpt, code) in [
        ("agent@agents.test", "250 2.1.5"),
        ("unknown@agents.test", "550 5.1.1"),
        ("suspended@agents.test", "450 4.2.1"),
        ("gone@agents.test", "550 5.1.1"),
        ("full@agents.test", "452 4.2.2"),
        ("tempfail@agents.test", "451 4.3.0"),
        // A duplicate is accepted once.
        ("Agent@agents.test", "250 2.1.5"),
    ] {
        expect(&c.cmd(&format!("RCPT TO:<{rcpt}>")).await, code);
    }
    expect(&c.cmd("DATA").await, "354");
    c.send(MSG).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await, "250 2.0.0");
    let delivered = server.handler.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].rcpt_to, vec!["agent@agents.test"]);
    assert_eq!(delivered[0].mail_from, "a@sender.test");
    assert_eq!(delivered[0].helo, "client.test");
    assert!(!delivered[0].tls);
    server.shutdown().await;
}

#[tokio::test]
async fn delivery_outcomes() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    let ok = c
        .send_mail("a@sender.test", &["agent@agents.test"], MSG)
        .await;
    assert_eq!(ok, "250 2.0.0 Ok: queued as M1\r\n");
    for (rcpt, code) in [
        ("deliver-temp@agents.test", "451 4.3.0"),
        ("deliver-full@agents.test", "452 4.2.2"),
        ("deliver-perm@agents.test", "554 5.6.0"),
    ] {
        let reply = c.send_mail("a@sender.test", &[rcpt], MSG).await;
        expect(&reply, code);
    }
    // The session goes on after failures.
    let ok = c
        .send_mail("a@sender.test", &["agent@agents.test"], MSG)
        .await;
    assert_eq!(ok, "250 2.0.0 Ok: queued as M2\r\n");
    let delivered = server.handler.delivered();
    let raw = String::from_utf8_lossy(&delivered[0].raw).into_owned();
    assert!(raw.starts_with("Authentication-Results: mx.test;"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nHello.\r\n"), "{raw}");
    server.shutdown().await;
}

#[tokio::test]
async fn dot_stuffing_is_undone() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["agent@agents.test"],
            b"Subject: dots\r\n\r\n..leading dot\r\n..\r\n",
        )
        .await;
    expect(&reply, "250 2.0.0");
    let raw = server.handler.delivered()[0].raw.clone();
    assert!(raw.ends_with(b"\r\n\r\n.leading dot\r\n.\r\n"));
    // An empty message is a valid (if useless) one.
    let reply = c.send_mail("", &["agent@agents.test"], b"").await;
    expect(&reply, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn size_limits() {
    let mut handler = TestHandler::new();
    handler.max_size = 1000;
    let server = start_with(config(), handler).await;
    let mut c = Client::ehlo(server.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("SIZE 1000\r\n"), "{ehlo}");

    // Declared too big at MAIL FROM.
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> SIZE=1001").await,
        "552 5.3.4",
    );

    // Actually too big: read to the end, then refuse.
    expect(
        &c.cmd("MAIL FROM:<a@sender.test> SIZE=500").await,
        "250 2.1.0",
    );
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
    expect(&c.cmd("DATA").await, "354");
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..50 {
        c.send(line.as_bytes()).await;
    }
    c.send(b".\r\n").await;
    expect(&c.reply().await, "552 5.3.4");
    assert!(server.handler.delivered().is_empty());

    // The session is still usable and exactly at the limit is fine.
    let body = "y".repeat(998) + "\r\n";
    let reply = c
        .send_mail("a@sender.test", &["agent@agents.test"], body.as_bytes())
        .await;
    expect(&reply, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn recipient_limit() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    // Pipelined for speed: 100 accepted, the 101st refused.
    let mut batch = String::new();
    for i in 0..101 {
        batch.push_str(&format!("RCPT TO:<agent{i}@agents.test>\r\n"));
    }
    c.send(batch.as_bytes()).await;
    for _ in 0..100 {
        expect(&c.reply().await, "250 2.1.5");
    }
    expect(&c.reply().await, "452 4.5.3");
    expect(&c.cmd("DATA").await, "354");
    c.send(MSG).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await, "250 2.0.0");
    assert_eq!(server.handler.delivered()[0].rcpt_to.len(), 100);
    server.shutdown().await;
}

#[tokio::test]
async fn line_length_limits() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    // 512 octets including CRLF is the maximum command line.
    let ok = format!("NOOP {}", "a".repeat(505));
    assert_eq!(ok.len() + 2, 512);
    expect(&c.cmd(&ok).await, "250 2.0.0");
    let long = format!("NOOP {}", "a".repeat(506));
    expect(&c.cmd(&long).await, "500 5.5.2");
    // A much longer line is skipped whole and answered once.
    let huge = format!("MAIL FROM:<{}@x>", "a".repeat(100_000));
    expect(&c.cmd(&huge).await, "500 5.5.2");
    expect(&c.cmd("NOOP").await, "250 2.0.0");

    // 1000 octets including CRLF is the maximum text line.
    let fine = format!("{}\r\n", "b".repeat(998));
    let reply = c
        .send_mail("a@sender.test", &["agent@agents.test"], fine.as_bytes())
        .await;
    expect(&reply, "250 2.0.0");
    let too_long = format!("{}\r\n", "b".repeat(999));
    let reply = c
        .send_mail("a@sender.test", &["agent@agents.test"], too_long.as_bytes())
        .await;
    expect(&reply, "500 5.5.2");
    assert_eq!(server.handler.delivered().len(), 1);
    expect(&c.cmd("NOOP").await, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn pipelining() {
    let server = start(config()).await;
    let (mut c, _) = Client::connect(server.addr).await;
    // One write: the whole envelope up to DATA.
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<agent@agents.test>\r\n\
RCPT TO:<unknown@agents.test>\r\nRCPT TO:<other@agents.test>\r\nDATA\r\n",
    )
    .await;
    expect(&c.reply().await, "250");
    expect(&c.reply().await, "250 2.1.0");
    expect(&c.reply().await, "250 2.1.5");
    expect(&c.reply().await, "550 5.1.1");
    expect(&c.reply().await, "250 2.1.5");
    expect(&c.reply().await, "354");
    // Content, end of data and the next transaction in one write.
    let mut batch = MSG.to_vec();
    batch.extend_from_slice(
        b".\r\nMAIL FROM:<b@sender.test>\r\nRCPT TO:<agent@agents.test>\r\nDATA\r\n",
    );
    c.send(&batch).await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as M1\r\n");
    expect(&c.reply().await, "250 2.1.0");
    expect(&c.reply().await, "250 2.1.5");
    expect(&c.reply().await, "354");
    let mut batch = MSG.to_vec();
    batch.extend_from_slice(b".\r\nQUIT\r\n");
    c.send(&batch).await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as M2\r\n");
    expect(&c.reply().await, "221 2.0.0");
    assert!(c.closed().await);
    let delivered = server.handler.delivered();
    assert_eq!(
        delivered[0].rcpt_to,
        vec!["agent@agents.test", "other@agents.test"]
    );
    assert_eq!(delivered[1].mail_from, "b@sender.test");
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_errors_closes() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    for _ in 0..19 {
        expect(&c.cmd("BOGUS").await, "500 5.5.1");
    }
    let last = c.cmd("BOGUS").await;
    expect(&last, "500 5.5.1");
    expect(&c.reply().await, "421 4.7.0");
    assert!(c.closed().await);
    server.shutdown().await;
}

#[tokio::test]
async fn command_timeout() {
    let mut cfg = config();
    cfg.timeouts.command = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut c = Client::ehlo(server.addr).await;
    // Say nothing: the server gives up.
    expect(&c.reply().await, "421 4.4.2");
    assert!(c.closed().await);
    server.shutdown().await;
}

#[tokio::test]
async fn data_block_timeout() {
    let mut cfg = config();
    cfg.timeouts.data_block = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: never ends\r\n").await;
    expect(&c.reply().await, "421 4.4.2");
    assert!(c.closed().await);
    assert!(server.handler.delivered().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn data_end_timeout() {
    let mut cfg = config();
    cfg.timeouts.data_end = Duration::from_millis(200);
    let mut handler = TestHandler::new();
    handler.deliver_delay = Duration::from_secs(5);
    let server = start_with(cfg, handler).await;
    let mut c = Client::ehlo(server.addr).await;
    let reply = c
        .send_mail("a@sender.test", &["agent@agents.test"], MSG)
        .await;
    expect(&reply, "451 4.3.0");
    expect(&c.cmd("NOOP").await, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limits() {
    let mut cfg = config();
    cfg.limits.max_connections = 3;
    cfg.limits.max_connections_per_ip = 2;
    let server = start(cfg).await;
    let (a, _) = Client::connect(server.addr).await;
    let (_b, _) = Client::connect(server.addr).await;
    // Third from the same address: over the per-address limit.
    let (mut c, reply) = Client::connect(server.addr).await;
    expect(&reply, "421 4.7.0");
    assert!(reply.contains("your address"), "{reply}");
    assert!(c.closed().await);
    // A slot frees up when a connection ends.
    drop(a);
    let mut ok = None;
    for _ in 0..50 {
        let (c, reply) = Client::connect(server.addr).await;
        if reply.starts_with("220 ") {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "slot was not released");
    server.shutdown().await;

    // Overall limit.
    let mut cfg = config();
    cfg.limits.max_connections = 1;
    let server = start(cfg).await;
    let (_a, reply) = Client::connect(server.addr).await;
    expect(&reply, "220");
    let (_, reply) = Client::connect(server.addr).await;
    expect(&reply, "421 4.7.0");
    assert!(reply.contains("Too many connections"), "{reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown() {
    let server = start(config()).await;
    let mut idle = Client::ehlo(server.addr).await;
    let mut in_data = Client::ehlo(server.addr).await;
    expect(&in_data.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    expect(
        &in_data.cmd("RCPT TO:<agent@agents.test>").await,
        "250 2.1.5",
    );
    expect(&in_data.cmd("DATA").await, "354");
    in_data.send(b"Subject: half\r\n").await;
    let addr = server.addr;
    let handler = server.handler.clone();
    server.shutdown().await;
    expect(&idle.reply().await, "421 4.3.2");
    assert!(idle.closed().await);
    expect(&in_data.reply().await, "421 4.3.2");
    assert!(in_data.closed().await);
    assert!(handler.delivered().is_empty());
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
