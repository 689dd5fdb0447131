//! Inbound mail end to end, on SQLite and PostgreSQL: real SMTP clients
//! (Python's smtplib, swaks, a small Rust client) deliver to `agentpost
//! serve`, and the messages appear through the HTTP API: filed once per
//! recipient, threaded, searchable, with flags, folders, labels,
//! attachments, the raw view, quotas, decommission export and purge.

mod common;

use common::{Backend, Server, Store, all_messages, smtp_addr, smtp_send};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;

async fn start(backend: Backend) -> (Store, Server, String) {
    let store = Store::new(backend);
    let init = store.init(&[]);
    let admin = init["admin_key"].as_str().expect("admin key").to_string();
    let server = Server::start(&store);
    (store, server, admin)
}

/// Sends with Python's smtplib (STARTTLS against the self-signed
/// certificate); returns what the script prints: JSON of refused recipients,
/// or the SMTP error.
fn smtplib(
    addr: &str,
    from: &str,
    to: &[&str],
    subject: &str,
    body: &str,
    attachment: Option<(&str, &[u8])>,
) -> Value {
    let script = r#"
import json, smtplib, ssl, sys
from email.message import EmailMessage
host, port = sys.argv[1].rsplit(":", 1)
frm, to, subject, body = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
m = EmailMessage()
m["From"] = "Sender Person <%s>" % frm
m["To"] = ", ".join(to)
m["Subject"] = subject
m["Message-ID"] = "<%s@client.test>" % subject.replace(" ", "-")
m.set_content(body)
if len(sys.argv) > 6:
    data = open(sys.argv[7], "rb").read()
    m.add_attachment(data, maintype="application", subtype="pdf", filename=sys.argv[6])
s = smtplib.SMTP(host, int(port), timeout=60)
s.ehlo("py.client.test")
s.starttls(context=ssl._create_unverified_context())
s.ehlo("py.client.test")
try:
    refused = s.send_message(m)
    print(json.dumps({"ok": True, "refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}}))
except smtplib.SMTPRecipientsRefused as e:
    print(json.dumps({"ok": False, "refused": {k: [v[0], v[1].decode()] for k, v in e.recipients.items()}}))
except smtplib.SMTPResponseException as e:
    print(json.dumps({"ok": False, "code": e.smtp_code, "error": e.smtp_error.decode()}))
s.quit()
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        script,
        addr,
        from,
        &json!(to).to_string(),
        subject,
        body,
    ]);
    if let Some((name, bytes)) = attachment {
        let p = dir.path().join("att.bin");
        std::fs::write(&p, bytes).expect("write attachment");
        cmd.arg(name).arg(&p);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script prints JSON")
}

async fn raw_get(server: &Server, path: &str, key: &str) -> reqwest::Response {
    server
        .http
        .get(format!("{}{}", server.base, path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request")
}

async fn smtplib_delivers_once_to_several_agents(backend: Backend) {
    let (store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, a_token) = server.agent(&admin, "alice").await;
    let (b, b_token) = server.agent(&admin, "bob").await;
    let pdf: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let r = smtplib(
        &smtp,
        "sender@example.org",
        &["alice@agents.localhost", "bob@agents.localhost"],
        "Quarterly numbers",
        "Hello agents,\nthe numbers are attached.\n",
        Some(("report q3.pdf", &pdf)),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["refused"], json!({}));

    // Filed in both mailboxes, stored once.
    let la = all_messages(&server, &a_token, &a, None).await;
    let lb = all_messages(&server, &b_token, &b, None).await;
    assert_eq!(la.len(), 1, "{la:?}");
    assert_eq!(lb.len(), 1);
    assert_eq!(la[0]["id"], lb[0]["id"]);
    assert_eq!(store.sql("SELECT COUNT(*) FROM messages"), "1");
    assert_eq!(store.sql("SELECT COUNT(*) FROM mailbox_entries"), "2");

    let m = &la[0];
    assert_eq!(m["subject"], "Quarterly numbers");
    assert_eq!(m["folder"], "inbox");
    assert_eq!(m["unread"], true);
    assert_eq!(m["has_attachments"], true);
    assert_eq!(m["from"][0]["address"], "sender@example.org");
    assert_eq!(m["from"][0]["name"], "Sender Person");
    assert_eq!(m["message_id_header"], "Quarterly-numbers@client.test");
    assert!(
        m["snippet"].as_str().unwrap().starts_with("Hello agents,"),
        "{m}"
    );
    let id = m["id"].as_str().unwrap();

    let (s, d) = server
        .get(&format!("/v1/agents/{a}/messages/{id}"), &a_token)
        .await;
    assert_eq!(s, 200, "{d}");
    // The default view is the model-safe one; bodies as sent are withheld.
    assert!(
        d["safe"]["text"]
            .as_str()
            .unwrap()
            .contains("the numbers are attached"),
        "{d}"
    );
    // Prompt-ready text names its provenance: the sender and our verdicts.
    let prompt = d["safe"]["prompt_text"].as_str().unwrap();
    let from = d["from"][0]["address"].as_str().unwrap();
    assert!(
        prompt.contains("untrusted_content") && prompt.contains(from),
        "{prompt}"
    );
    assert!(prompt.contains("spf="), "{prompt}");
    assert!(d["text"].is_null() && d["html"].is_null(), "{d}");
    let (s, _) = server
        .get(
            &format!("/v1/agents/{a}/messages/{id}?view=parsed"),
            &a_token,
        )
        .await;
    assert_eq!(s, 403, "bodies as sent need mail.read_raw");
    assert_eq!(d["envelope"]["mail_from"], "sender@example.org");
    assert_eq!(
        d["envelope"]["rcpt_to"],
        json!(["alice@agents.localhost"]),
        "other recipients stay hidden"
    );
    assert_eq!(d["envelope"]["tls"], true);
    assert!(
        d["envelope"]["authentication_results"]
            .as_str()
            .unwrap()
            .starts_with("Authentication-Results:")
    );
    let att = &d["attachments"][0];
    assert_eq!(att["name"], "report q3.pdf");
    assert_eq!(att["content_type"], "application/pdf");
    assert_eq!(att["size_bytes"], pdf.len());

    // The attachment, as a download that a browser will not render.
    let resp = raw_get(
        &server,
        &format!("/v1/agents/{a}/messages/{id}/attachments/0"),
        &a_token,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"report q3.pdf\"")
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), pdf);
    let (s, _) = server
        .get(
            &format!("/v1/agents/{a}/messages/{id}/attachments/7"),
            &a_token,
        )
        .await;
    assert_eq!(s, 404);

    // The raw view needs mail.read_raw: the default token lacks it, an admin has it.
    let (s, p) = server
        .get(&format!("/v1/agents/{a}/messages/{id}?view=raw"), &a_token)
        .await;
    assert_eq!(s, 403, "{p}");
    let resp = raw_get(
        &server,
        &format!("/v1/agents/{a}/messages/{id}?view=raw"),
        &admin,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "message/rfc822");
    let raw = resp.bytes().await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.starts_with("Authentication-Results:") || raw.starts_with("Received:"),
        "{}",
        &raw[..200]
    );
    assert!(raw.contains("Subject: Quarterly numbers"));
    // ... and a token with mail.read_raw.
    let (s, t) = server
        .post(
            &format!("/v1/agents/{a}/tokens"),
            &admin,
            json!({ "name": "raw", "scopes": ["mail.read", "mail.read_raw"] }),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let raw_token = t["secret"].as_str().unwrap();
    let (s, _) = server
        .get(&format!("/v1/agents/{a}/messages/{id}?view=raw"), raw_token)
        .await;
    assert_eq!(s, 200);

    // The data boundary: another agent's mailbox is not found.
    let (s, _) = server
        .get(&format!("/v1/agents/{b}/messages"), &a_token)
        .await;
    assert_eq!(s, 404);
    let (s, _) = server
        .get(&format!("/v1/agents/{b}/messages/{id}"), &a_token)
        .await;
    assert_eq!(s, 404);
    // A token without mail.read is refused.
    let (s, t) = server
        .post(
            &format!("/v1/agents/{a}/tokens"),
            &admin,
            json!({ "name": "cal", "scopes": ["calendar.read"] }),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let (s, _) = server
        .get(
            &format!("/v1/agents/{a}/messages"),
            t["secret"].as_str().unwrap(),
        )
        .await;
    assert_eq!(s, 403);

    // Audit: the receipt (client, envelope sender, recipient, message id),
    // and the admin's reads of the mailbox.
    let (s, trail) = server
        .get(&format!("/v1/agents/{a}/audit?limit=200"), &admin)
        .await;
    assert_eq!(s, 200);
    let entries = trail["data"].as_array().unwrap();
    let rec = entries
        .iter()
        .find(|e| e["action"] == "message.receive")
        .expect("receipt audited");
    assert_eq!(rec["actor"]["kind"], "smtp");
    assert_eq!(rec["details"]["client_ip"], "127.0.0.1");
    assert_eq!(rec["details"]["mail_from"], "sender@example.org");
    assert_eq!(
        rec["details"]["recipients"],
        json!(["alice@agents.localhost"])
    );
    assert_eq!(
        rec["details"]["message_id"],
        "Quarterly-numbers@client.test"
    );
    assert_eq!(rec["target_id"], id);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "message.read_raw" && e["actor"]["kind"] == "admin")
    );
    let (s, v) = server.get("/v1/audit/verify", &admin).await;
    assert_eq!(s, 200);
    assert!(v["problem"].is_null(), "{v}");
    assert_eq!(
        store.sql("SELECT COUNT(*) FROM events WHERE type = 'message.received'"),
        "2"
    );
}
both_backends!(
    smtplib_delivers_once_to_several_agents,
    super::smtplib_delivers_once_to_several_agents
);

async fn recipients_are_checked(backend: Backend) {
    let (_store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, _) = server.agent(&admin, "live").await;
    let (s_id, _) = server.agent(&admin, "sleepy").await;
    let (d_id, _) = server.agent(&admin, "gone").await;
    let (s, v) = server
        .post(&format!("/v1/agents/{s_id}/suspend"), &admin, json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = server
        .post(
            &format!("/v1/agents/{d_id}/decommission"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let msg = b"Subject: hi\r\n\r\nhello\r\n";
    let r = smtp_send(&smtp, "x@example.org", &["nobody@agents.localhost"], msg)
        .await
        .unwrap();
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let r = smtp_send(&smtp, "x@example.org", &["sleepy@agents.localhost"], msg)
        .await
        .unwrap();
    assert!(r.starts_with("450 4.2.1"), "{r}");
    let r = smtp_send(&smtp, "x@example.org", &["gone@agents.localhost"], msg)
        .await
        .unwrap();
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // Mixed: the live recipient gets it.
    let r = smtp_send(
        &smtp,
        "x@example.org",
        &["gone@agents.localhost", "LIVE@agents.localhost"],
        msg,
    )
    .await
    .unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(all_messages(&server, &admin, &a, None).await.len(), 1);

    // swaks, a real-world client, with STARTTLS when its TLS support is installed.
    let out = Command::new("swaks")
        .args([
            "--server",
            &smtp,
            "--from",
            "swaks@example.org",
            "--to",
            "live@agents.localhost",
        ])
        .args([
            "--header",
            "Subject: sent by swaks",
            "--body",
            "swaks body text",
            "--silent",
            "2",
        ])
        .output()
        .expect("swaks must be installed (apt-get install swaks)");
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("swaks")
        .args([
            "--server",
            &smtp,
            "--from",
            "swaks@example.org",
            "--to",
            "nobody@agents.localhost",
            "--silent",
            "2",
        ])
        .output()
        .expect("swaks");
    assert!(!out.status.success(), "unknown recipient must be refused");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("550 5.1.1"), "{said}");
    let list = all_messages(&server, &admin, &a, None).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["subject"], "sent by swaks", "newest first");
}
both_backends!(recipients_are_checked, super::recipients_are_checked);

async fn threads_search_flags_folders(backend: Backend) {
    let (_store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, tok) = server.agent(&admin, "planner").await;
    let send = |mid: &str, subject: &str, extra: &str, body: &str| {
        format!(
            "From: Carol <carol@example.org>\r\nTo: planner@agents.localhost\r\nSubject: {subject}\r\nMessage-ID: <{mid}>\r\n{extra}\r\n{body}\r\n"
        )
        .into_bytes()
    };
    let to = ["planner@agents.localhost"];
    for (mid, subject, extra, body) in [
        (
            "p1@example.org",
            "Project plan",
            "",
            "first draft of the zanzibar itinerary",
        ),
        (
            "p2@example.org",
            "Re: Project plan",
            "In-Reply-To: <p1@example.org>\r\nReferences: <p1@example.org>\r\n",
            "looks good",
        ),
        ("p3@example.org", "RE: project plan", "", "one more thought"),
        ("o1@example.org", "Lunch?", "", "tacos at noon"),
    ] {
        let r = smtp_send(
            &smtp,
            "carol@example.org",
            &to,
            &send(mid, subject, extra, body),
        )
        .await
        .unwrap();
        assert!(r.starts_with("250"), "{r}");
    }
    // A message from someone else with the same subject is a thread of its own.
    let other = b"From: dave@example.net\r\nTo: planner@agents.localhost\r\nSubject: Project plan\r\n\r\nunrelated\r\n";
    assert!(
        smtp_send(&smtp, "dave@example.net", &to, other)
            .await
            .unwrap()
            .starts_with("250")
    );

    let (s, threads) = server.get(&format!("/v1/agents/{a}/threads"), &tok).await;
    assert_eq!(s, 200, "{threads}");
    let threads = threads["data"].as_array().unwrap().clone();
    assert_eq!(threads.len(), 3, "{threads:?}");
    let plan = threads
        .iter()
        .find(|t| t["message_count"] == 3)
        .expect("references + subject threading");
    assert_eq!(plan["subject"], "Project plan");
    assert_eq!(plan["unread_count"], 3);
    assert_eq!(
        plan["participants"],
        json!(["carol@example.org", "planner@agents.localhost"])
    );
    assert_eq!(
        threads[0]["subject"], "Project plan",
        "most recent first: dave's"
    );
    assert_eq!(threads[0]["message_count"], 1);
    let (s, t) = server
        .get(
            &format!("/v1/agents/{a}/threads/{}", plan["id"].as_str().unwrap()),
            &tok,
        )
        .await;
    assert_eq!(s, 200);
    let subjects: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["Project plan", "Re: Project plan", "RE: project plan"]
    );

    // Full-text search (and its input is never query syntax).
    let q = |q: &str| format!("/v1/agents/{a}/messages?q={}", q);
    let (s, r) = server.get(&q("zanzibar"), &tok).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    assert_eq!(r["data"][0]["message_id_header"], "p1@example.org");
    let (_, r) = server.get(&q("tacos%20noon"), &tok).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    let (_, r) = server.get(&q("carol"), &tok).await;
    assert_eq!(
        r["data"].as_array().unwrap().len(),
        4,
        "addresses are searchable"
    );
    let (s, _) = server.get(&q("%22unbalanced%20OR%20*"), &tok).await;
    assert_eq!(s, 200);

    // Filters and pagination.
    let (_, r) = server
        .get(&format!("/v1/agents/{a}/messages?from=dave"), &tok)
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    let (_, r) = server
        .get(
            &format!("/v1/agents/{a}/messages?to=planner@&limit=2"),
            &tok,
        )
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let cursor = r["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, r2) = server
        .get(
            &format!("/v1/agents/{a}/messages?to=planner@&limit=2&cursor={cursor}"),
            &tok,
        )
        .await;
    assert_eq!(r2["data"].as_array().unwrap().len(), 2);
    assert_ne!(r["data"][1]["id"], r2["data"][0]["id"]);
    let (_, r) = server
        .get(
            &format!(
                "/v1/agents/{a}/messages?thread_id={}",
                plan["id"].as_str().unwrap()
            ),
            &tok,
        )
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 3);
    let (_, r) = server.get(&format!("/v1/agents/{a}/messages?received_after=2000-01-01T00:00:00Z&received_before=2000-01-02T00:00:00Z"), &tok).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 0);
    let (s, p) = server
        .get(&format!("/v1/agents/{a}/messages?folder=nope"), &tok)
        .await;
    assert_eq!((s, p["field"].as_str()), (422, Some("folder")));
    let (s, _) = server
        .get(&format!("/v1/agents/{a}/messages?cursor=bogus"), &tok)
        .await;
    assert_eq!(s, 422);

    // PATCH flags, labels and folder.
    let lunch = all_messages(&server, &tok, &a, None)
        .await
        .into_iter()
        .find(|m| m["subject"] == "Lunch?")
        .unwrap();
    let lid = lunch["id"].as_str().unwrap().to_string();
    let path = format!("/v1/agents/{a}/messages/{lid}");
    let (s, m) = server
        .req(
            Method::PATCH,
            &path,
            &tok,
            Some(json!({ "unread": false, "starred": true, "add_labels": ["food", "team"] })),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(
        (m["unread"].clone(), m["starred"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(m["labels"], json!(["food", "team"]));
    let (s, p) = server
        .req(
            Method::PATCH,
            &path,
            &tok,
            Some(json!({ "add_labels": ["inbox"] })),
        )
        .await;
    assert_eq!((s, p["field"].as_str()), (422, Some("add_labels")));
    let (s, p) = server
        .req(Method::PATCH, &path, &tok, Some(json!({ "colour": "red" })))
        .await;
    assert_eq!(s, 422, "{p}");
    let (_, r) = server
        .get(&format!("/v1/agents/{a}/messages?label=food"), &tok)
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    let (_, r) = server
        .get(&format!("/v1/agents/{a}/messages?unread=false"), &tok)
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    let (s, m) = server
        .req(
            Method::PATCH,
            &path,
            &tok,
            Some(json!({ "folder": "archive", "remove_labels": ["team"] })),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(m["folder"], "archive");
    assert_eq!(m["labels"], json!(["food"]));

    let (s, f) = server.get(&format!("/v1/agents/{a}/folders"), &tok).await;
    assert_eq!(s, 200, "{f}");
    let count = |name: &str| {
        f["folders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        count("inbox"),
        json!({ "name": "inbox", "total": 4, "unread": 4 })
    );
    assert_eq!(
        count("archive"),
        json!({ "name": "archive", "total": 1, "unread": 0 })
    );
    assert_eq!(count("spam")["total"], 0);
    assert_eq!(
        f["labels"],
        json!([{ "name": "food", "total": 1, "unread": 0 }])
    );
    assert_eq!(f["storage_quota_bytes"], 1u64 << 30);
    assert!(f["storage_bytes"].as_i64().unwrap() > 0);

    // DELETE: to trash, then for good.
    let (s, r) = server.req(Method::DELETE, &path, &tok, None).await;
    assert_eq!((s, r["outcome"].as_str()), (200, Some("trashed")));
    assert_eq!(
        all_messages(&server, &tok, &a, None).await.len(),
        4,
        "trash is not listed by default"
    );
    assert_eq!(
        all_messages(&server, &tok, &a, Some("trash")).await.len(),
        1
    );
    let (s, r) = server.req(Method::DELETE, &path, &tok, None).await;
    assert_eq!((s, r["outcome"].as_str()), (200, Some("purged")));
    let (s, _) = server.get(&path, &tok).await;
    assert_eq!(s, 404);
    let (_, f) = server.get(&format!("/v1/agents/{a}/folders"), &tok).await;
    assert_eq!(f["labels"], json!([]));
    let (s, trail) = server
        .get(
            &format!("/v1/agents/{a}/audit?action=message.delete"),
            &admin,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(trail["data"].as_array().unwrap().len(), 2);
}
both_backends!(
    threads_search_flags_folders,
    super::threads_search_flags_folders
);

/// Real-world oddities that must parse without error.
fn odd_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "nested multipart",
            b"From: a@example.org\r\nTo: odd@agents.localhost\r\nSubject: nested\r\nMessage-ID: <n1@x>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain nested body\r\n--inner\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html <b>nested</b> body</p>\r\n--rel\r\nContent-Type: image/png\r\nContent-ID: <img1@x>\r\n\
Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--rel--\r\n--inner--\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n\
From: inner@example.org\r\nSubject: forwarded one\r\n\r\ninner body\r\n--outer--\r\n"
                .to_vec(),
        ),
        (
            "legacy charsets",
            [
                &b"From: =?iso-8859-1?q?J=F6rg?= <jorg@example.de>\r\nTo: odd@agents.localhost\r\nSubject: =?windows-1252?Q?Caf=E9_=96_r=E9sum=E9?=\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\n"[..],
                b"\x1b$B$3$s$K$A$O\x1b(B\r\n",
            ]
            .concat(),
        ),
        (
            "RFC 2231 names, missing Message-ID",
            b"From: b@example.org\r\nTo: odd@agents.localhost\r\nSubject: rfc2231\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n\
Content-Type: application/octet-stream; name*=utf-8''%E2%82%AC%20rates.txt\r\n\
Content-Disposition: attachment; filename*0*=utf-8''%E2%82%AC%20ra; filename*1=tes.txt\r\n\r\nEUR 1.08\r\n--b1\r\n\
Content-Type: text/plain; name=\"=?UTF-8?B?w7xiZXIudHh0?=\"\r\nContent-Disposition: attachment; filename=\"=?UTF-8?B?w7xiZXIudHh0?=\"\r\n\r\nueber\r\n--b1--\r\n"
                .to_vec(),
        ),
        (
            "8-bit headers",
            "From: Zoë Çelik <zoe@example.org>\r\nTo: odd@agents.localhost\r\nSubject: Grüße aus München – ☃\r\n\r\nraw utf-8 headers\r\n"
                .as_bytes()
                .to_vec(),
        ),
        ("no headers at all", b"\r\njust a body\r\n".to_vec()),
    ];
    // A 20 MB attachment, base64 in 76-column lines.
    let payload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut big = b"From: big@example.org\r\nTo: odd@agents.localhost\r\nSubject: big one\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=BIG\r\n\r\n--BIG\r\nContent-Type: text/plain\r\n\r\nbig attachment\r\n--BIG\r\n\
Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    for chunk in b64.as_bytes().chunks(76) {
        big.extend_from_slice(chunk);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"--BIG--\r\n");
    v.push(("20 MB attachment", big));
    v
}

async fn odd_messages_parse(backend: Backend) {
    let (_store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, tok) = server.agent(&admin, "odd").await;
    for (what, raw) in odd_messages() {
        let r = smtp_send(&smtp, "x@example.org", &["odd@agents.localhost"], &raw)
            .await
            .unwrap();
        assert!(r.starts_with("250"), "{what}: {r}");
    }
    let list = all_messages(&server, &tok, &a, None).await;
    assert_eq!(list.len(), 6);
    let by = |s: &str| {
        list.iter()
            .find(|m| m["subject"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("no message {s}: {list:?}"))
    };
    for m in &list {
        let (s, d) = server
            .get(
                &format!("/v1/agents/{a}/messages/{}", m["id"].as_str().unwrap()),
                &tok,
            )
            .await;
        assert_eq!(s, 200, "{d}");
    }
    let get = |m: &Value| format!("/v1/agents/{a}/messages/{}", m["id"].as_str().unwrap());

    let (_, safe) = server.get(&get(&by("nested")), &tok).await;
    assert!(
        safe["safe"]["text"].as_str().unwrap().contains("nested"),
        "{safe}"
    );
    let parsed = |m: &Value| format!("{}?view=parsed", get(m));
    let (_, d) = server.get(&parsed(&by("nested")), &admin).await;
    assert_eq!(d["text"], "plain nested body");
    assert!(d["html"].as_str().unwrap().contains("<b>nested</b>"));
    let names: Vec<Value> = d["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| json!([x["content_type"], x["content_id"]]))
        .collect();
    assert!(names.contains(&json!(["image/png", "img1@x"])), "{names:?}");
    assert!(names.iter().any(|n| n[0] == "message/rfc822"), "{names:?}");

    let (_, d) = server.get(&parsed(&by("Café – résumé")), &admin).await;
    assert_eq!(d["from"][0]["name"], "Jörg");
    assert_eq!(d["text"].as_str().unwrap().trim(), "こんにちは");
    let (_, d) = server.get(&get(&by("Café – résumé")), &tok).await;
    assert_eq!(d["safe"]["text"].as_str().unwrap().trim(), "こんにちは");

    let m = by("rfc2231");
    assert!(m["message_id_header"].is_null());
    let (_, d) = server.get(&get(&m), &tok).await;
    let names: Vec<&str> = d["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["€ rates.txt", "über.txt"]);

    let (_, d) = server.get(&get(&by("Grüße aus München – ☃")), &tok).await;
    assert_eq!(d["from"][0]["name"], "Zoë Çelik");

    let (_, d) = server.get(&get(&by("big one")), &tok).await;
    assert_eq!(d["attachments"][0]["size_bytes"], 20 * 1024 * 1024);
    let resp = raw_get(
        &server,
        &format!("{}/attachments/0", get(&by("big one"))),
        &tok,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().len(), 20 * 1024 * 1024);

    assert!(
        list.iter().any(|m| m["subject"].is_null()),
        "the headerless message is stored too"
    );
}
both_backends!(odd_messages_parse, super::odd_messages_parse);

async fn quota_is_enforced(backend: Backend) {
    let (store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, _) = server.agent(&admin, "tiny").await;
    let body = |n: usize| {
        format!(
            "Subject: m{n}\r\n\r\n{}",
            format!("{}\r\n", "x".repeat(98)).repeat(10)
        )
        .into_bytes()
    };
    let r = smtp_send(&smtp, "x@example.org", &["tiny@agents.localhost"], &body(0))
        .await
        .unwrap();
    assert!(r.starts_with("250"), "{r}");
    let (_, f) = server.get(&format!("/v1/agents/{a}/folders"), &admin).await;
    let one = f["storage_bytes"].as_i64().unwrap();
    // Room for two and a half messages. Policy CRUD is another issue: set
    // the policy row directly.
    store.sql(&format!(
        "INSERT INTO policies (id, org_id, name, settings, is_default, created_at, updated_at) \
         SELECT '0190a0a0-0000-7000-8000-000000000001', id, 'tiny', '{{\"storage_bytes\": {}}}', 0, 0, 0 FROM organisations; \
         UPDATE agents SET policy_id = '0190a0a0-0000-7000-8000-000000000001' WHERE id = '{a}'",
        one * 5 / 2
    ));
    let mut codes = vec![];
    for n in 1..4 {
        codes.push(
            smtp_send(&smtp, "x@example.org", &["tiny@agents.localhost"], &body(n))
                .await
                .unwrap(),
        );
    }
    // The second fits; the third would exceed the quota: deferred after DATA.
    assert!(codes[0].starts_with("250"), "{codes:?}");
    assert!(
        codes[1..].iter().all(|c| c.starts_with("452 4.2.2")),
        "{codes:?}"
    );
    assert_eq!(all_messages(&server, &admin, &a, None).await.len(), 2);
    let (_, f) = server.get(&format!("/v1/agents/{a}/folders"), &admin).await;
    assert_eq!(f["storage_quota_bytes"], one * 5 / 2);
    // Full to the byte: already RCPT is refused.
    store.sql(&format!(
        "UPDATE mailbox_usage SET bytes = {} WHERE agent_id = '{a}'",
        one * 5 / 2
    ));
    let r = smtp_send(&smtp, "x@example.org", &["tiny@agents.localhost"], &body(9))
        .await
        .unwrap();
    assert!(r.starts_with("452 4.2.2"), "{r}");

    // The size limit is advertised (50 MB).
    let out = Command::new("swaks")
        .args([
            "--server",
            &smtp,
            "--quit-after",
            "EHLO",
            "--to",
            "tiny@agents.localhost",
        ])
        .output()
        .expect("swaks");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SIZE 52428800"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
both_backends!(quota_is_enforced, super::quota_is_enforced);

async fn decommission_exports_then_purges(backend: Backend) {
    let (store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, _) = server.agent(&admin, "leaving").await;
    let (b, _) = server.agent(&admin, "staying").await;
    let shared = b"Subject: to both\r\nMessage-ID: <both@x>\r\n\r\nshared\r\n";
    let own = b"Subject: only leaving\r\nMessage-ID: <own@x>\r\n\r\nmine alone\r\n";
    assert!(
        smtp_send(
            &smtp,
            "x@example.org",
            &["leaving@agents.localhost", "staying@agents.localhost"],
            shared
        )
        .await
        .unwrap()
        .starts_with("250")
    );
    assert!(
        smtp_send(&smtp, "x@example.org", &["leaving@agents.localhost"], own)
            .await
            .unwrap()
            .starts_with("250")
    );
    let blobs_before = blob_count(&store);
    assert_eq!(blobs_before, 2);

    let (s, d) = server
        .post(&format!("/v1/agents/{a}/decommission"), &admin, json!({}))
        .await;
    assert_eq!(s, 200, "{d}");
    let resp = raw_get(&server, &format!("/v1/agents/{a}/export"), &admin).await;
    assert_eq!(resp.status(), 200);
    let gz = resp.bytes().await.unwrap().to_vec();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut files = std::collections::BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut buf = vec![];
        std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
        files.insert(name, buf);
    }
    let emls: Vec<&String> = files.keys().filter(|k| k.ends_with(".eml")).collect();
    assert_eq!(emls.len(), 2, "{:?}", files.keys());
    let eml = String::from_utf8_lossy(&files[emls[1]]).into_owned();
    assert!(eml.contains("Subject: only leaving"));
    let meta: Value = serde_json::from_slice(&files[&emls[1].replace(".eml", ".json")]).unwrap();
    assert_eq!(meta["subject"], "only leaving");
    let manifest = files
        .iter()
        .find(|(k, _)| k.ends_with("manifest.json"))
        .unwrap()
        .1;
    assert_eq!(
        serde_json::from_slice::<Value>(manifest).unwrap()["messages"],
        2
    );

    // Purged: the leaving agent's rows and its own message are gone; the
    // shared message stays for the other agent; its blob with it.
    assert_eq!(
        store.sql(&format!(
            "SELECT COUNT(*) FROM mailbox_entries WHERE agent_id = '{a}'"
        )),
        "0"
    );
    assert_eq!(
        store.sql(&format!(
            "SELECT COUNT(*) FROM threads WHERE agent_id = '{a}'"
        )),
        "0"
    );
    assert_eq!(store.sql("SELECT COUNT(*) FROM messages"), "1");
    assert_eq!(all_messages(&server, &admin, &b, None).await.len(), 1);
    // The lone message's blob is collected once the purge commits (plus
    // the export's own blob).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while blob_count(&store) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "blob not collected: {}",
            blob_count(&store)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
both_backends!(
    decommission_exports_then_purges,
    super::decommission_exports_then_purges
);

/// Blobs held by the store (files in SQLite mode, rows in PostgreSQL).
/// Stored blobs: rows of the `blobs` table, plus files for the large ones
/// on SQLite.
fn blob_count(store: &Store) -> usize {
    let rows: usize = store.sql("SELECT COUNT(*) FROM blobs").parse().unwrap();
    match store.backend {
        Backend::Postgres => rows,
        Backend::Sqlite => {
            let root = store.data_dir().join("blobs");
            let files: usize = std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .filter(|d| d.file_name() != "tmp")
                .map(|d| std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0))
                .sum();
            rows + files
        }
    }
}

/// Hidden instructions never reach an agent: not in the list's subject or
/// snippet, not in the default view, and they are reported as findings.
async fn hidden_injection_stays_hidden(backend: Backend) {
    let (_store, server, admin) = start(backend).await;
    let smtp = smtp_addr(&server);
    let (a, tok) = server.agent(&admin, "reader").await;
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../safety/tests/corpus");
    let raw = std::fs::read(corpus.join("css_display_none.eml")).unwrap();
    let raw = String::from_utf8_lossy(&raw)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let r = smtp_send(
        &smtp,
        "x@example.org",
        &["reader@agents.localhost"],
        raw.as_bytes(),
    )
    .await
    .unwrap();
    assert!(r.starts_with("250"), "{r}");
    let (_, list) = server.get(&format!("/v1/agents/{a}/messages"), &tok).await;
    let m = &list["data"][0];
    let listed = m.to_string();
    assert!(
        listed.contains("Hello Sam") || listed.contains("statement"),
        "{listed}"
    );
    for hidden in ["Ignore all previous", "attacker@evil"] {
        assert!(!listed.contains(hidden), "list leaks {hidden}: {listed}");
    }
    let (_, d) = server
        .get(
            &format!("/v1/agents/{a}/messages/{}", m["id"].as_str().unwrap()),
            &tok,
        )
        .await;
    let view = d["safe"].to_string();
    assert!(
        d["safe"]["text"]
            .as_str()
            .unwrap()
            .contains("Your monthly statement is ready to view."),
        "{view}"
    );
    assert!(
        !d["safe"]["text"]
            .as_str()
            .unwrap()
            .contains("Ignore all previous"),
        "{view}"
    );
    assert!(
        !d["safe"]["prompt_text"]
            .as_str()
            .unwrap()
            .contains("attacker@evil"),
        "{view}"
    );
    assert!(
        d["safe"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "hidden_css"),
        "{view}"
    );
    assert_eq!(d["safe"]["risk"]["level"], "high", "{view}");
    assert!(d.get("text").is_none_or(Value::is_null) && d.get("html").is_none_or(Value::is_null));
    // A change answers with the same safe view, never the bodies as sent.
    let (st, patched) = server
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{a}/messages/{}", m["id"].as_str().unwrap()),
            &tok,
            Some(json!({ "unread": false })),
        )
        .await;
    assert_eq!(st, 200, "{patched}");
    assert!(
        patched["text"].is_null() && patched["html"].is_null(),
        "{patched}"
    );
    for field in ["text", "prompt_text", "reply_text"] {
        let v = patched["safe"][field].as_str().unwrap();
        assert!(!v.contains("Ignore all previous"), "{field}: {v}");
    }
    assert!(
        patched["safe"]["text"]
            .as_str()
            .unwrap()
            .contains("monthly statement")
    );
    // The message.received event carries the safe view and a link, never the raw message.
    let (_, events) = server.get("/v1/events?type=message.received", &admin).await;
    let e = &events["data"][0]["data"];
    assert!(
        e["safe"]["text"]
            .as_str()
            .unwrap()
            .contains("monthly statement"),
        "{e}"
    );
    assert!(!e.to_string().contains("Ignore all previous"), "{e}");
    assert!(
        e["safe"]["findings"]
            .as_array()
            .unwrap()
            .contains(&json!("hidden_css")),
        "{e}"
    );
    assert!(
        e["raw_path"].as_str().unwrap().ends_with("?view=raw"),
        "{e}"
    );
}
both_backends!(
    hidden_injection_stays_hidden,
    super::hidden_injection_stays_hidden
);
