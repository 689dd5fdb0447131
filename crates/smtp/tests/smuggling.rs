//! SMTP smuggling (CVE-2023-51764 and relatives): fake end-of-data sequences
//! must never end the data, the message carrying them is refused, and the
//! "commands" smuggled after them are never run as a second transaction.

mod common;

use common::{Client, config, expect, start};

/// Published end-of-data variants that lenient servers accepted
/// (SEC Consult's research; Postfix's smtpd_forbid_bare_newline advisory).
const FAKE_TERMINATORS: &[&[u8]] = &[
    b"\n.\r\n",
    b"\n.\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n\r.\r\n",
    b"\r\n\n.\r\n",
];

fn smuggled_commands() -> &'static [u8] {
    b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@agents.test>\r\nDATA\r\n\
From: ceo@bank.example\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
}

#[tokio::test]
async fn fake_terminators_are_refused_and_nothing_is_smuggled() {
    let server = start(config()).await;
    for fake in FAKE_TERMINATORS {
        let mut c = Client::ehlo(server.addr).await;
        expect(
            &c.cmd("MAIL FROM:<attacker@evil.example>").await,
            "250 2.1.0",
        );
        expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
        expect(&c.cmd("DATA").await, "354");
        let mut payload = b"From: attacker@evil.example\r\nSubject: hello\r\n\r\nhi".to_vec();
        payload.extend_from_slice(fake);
        payload.extend_from_slice(smuggled_commands());
        payload.extend_from_slice(b".\r\n");
        c.send(&payload).await;

        // Exactly one reply for the whole thing: the refusal...
        let reply = c.reply().await;
        expect(&reply, "550 5.6.0");
        // ...and the next reply belongs to our next command: no reply for a
        // smuggled MAIL/RCPT/DATA is waiting in between.
        assert_eq!(
            c.cmd("NOOP").await,
            "250 2.0.0 Ok\r\n",
            "payload {fake:?} left replies behind"
        );
        // The session is in a clean state: no transaction open.
        expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "503 5.5.1");
        expect(&c.cmd("QUIT").await, "221 2.0.0");
    }
    assert!(
        server.handler.delivered().is_empty(),
        "something was delivered"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn fake_terminator_split_across_packets() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(
        &c.cmd("MAIL FROM:<attacker@evil.example>").await,
        "250 2.1.0",
    );
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: x\r\n\r\nhi\n").await;
    c.send(b".").await;
    c.send(b"\r\n").await;
    c.send(smuggled_commands()).await;
    c.send(b"\r\n").await;
    c.send(b".\r\n").await;
    expect(&c.reply().await, "550 5.6.0");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
    assert!(server.handler.delivered().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn bare_line_endings_anywhere_are_refused() {
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    for body in [
        &b"Subject: x\r\n\r\nbare LF\nin the body\r\n"[..],
        b"Subject: x\r\n\r\nbare CR\rin the body\r\n",
        b"Subject: bare LF in header\n\r\nbody\r\n",
    ] {
        let reply = c
            .send_mail("a@sender.test", &["agent@agents.test"], body)
            .await;
        expect(&reply, "550 5.6.0");
    }
    assert!(server.handler.delivered().is_empty());
    // A clean message on the same connection still goes through.
    let reply = c
        .send_mail(
            "a@sender.test",
            &["agent@agents.test"],
            b"Subject: ok\r\n\r\nfine\r\n",
        )
        .await;
    expect(&reply, "250 2.0.0");
    server.shutdown().await;
}

#[tokio::test]
async fn real_terminator_followed_by_pipelined_commands_is_not_smuggling() {
    // The legitimate counterpart: a proper <CRLF>.<CRLF> and then commands
    // are two transactions, as PIPELINING allows.
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    expect(&c.cmd("MAIL FROM:<a@sender.test>").await, "250 2.1.0");
    expect(&c.cmd("RCPT TO:<agent@agents.test>").await, "250 2.1.5");
    expect(&c.cmd("DATA").await, "354");
    let mut payload = b"Subject: first\r\n\r\none".to_vec();
    payload.extend_from_slice(b"\r\n.\r\n");
    payload
        .extend_from_slice(b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<agent@agents.test>\r\nDATA\r\n");
    c.send(&payload).await;
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "250 2.1.0");
    expect(&c.reply().await, "250 2.1.5");
    expect(&c.reply().await, "354");
    c.send(b"Subject: second\r\n\r\ntwo\r\n.\r\n").await;
    expect(&c.reply().await, "250 2.0.0");
    assert_eq!(server.handler.delivered().len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn nul_before_dot_is_content_not_a_terminator() {
    // "\r\n\0.\r\n" fooled some receivers; here the dot is not at the start
    // of a line, so everything up to the real terminator is one message.
    let server = start(config()).await;
    let mut c = Client::ehlo(server.addr).await;
    let mut body = b"Subject: x\r\n\r\nhi\r\n\0.\r\n".to_vec();
    body.extend_from_slice(b"MAIL FROM:<ceo@bank.example>\r\n");
    let reply = c
        .send_mail("a@sender.test", &["agent@agents.test"], &body)
        .await;
    expect(&reply, "250 2.0.0");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
    let delivered = server.handler.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0]
            .raw
            .ends_with(b"\0.\r\nMAIL FROM:<ceo@bank.example>\r\n")
    );
    server.shutdown().await;
}
