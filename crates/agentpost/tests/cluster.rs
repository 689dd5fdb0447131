//! Several `serve` processes on one PostgreSQL: first start and provisioning
//! races resolve in the database, never in process memory.

mod common;

use common::{Backend, Server, Store, all_messages, smtp_addr, smtp_send};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres() {
    let store = Store::new(Backend::Postgres);
    // Both start on an empty database at once: one organisation, one key.
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| Server::start(&store));
        let b = sc.spawn(|| Server::start(&store));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(store.sql("SELECT COUNT(*) FROM organisations"), "1");
    assert_eq!(
        store.sql("SELECT COUNT(*) FROM credentials WHERE kind = 'admin'"),
        "1"
    );
    let printed: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|s| {
            s.log_text()
                .lines()
                .filter(|l| l.trim_start().starts_with("ap_adm_"))
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        printed.len(),
        1,
        "exactly one server printed the first admin key"
    );
    let key = printed[0].clone();

    // The same address provisioned through both servers at the same instant.
    for round in 0..25 {
        let body = json!({ "local_part": format!("race{round}"), "sponsor": "o@example.com" });
        let (ra, rb) = tokio::join!(
            a.post("/v1/agents", &key, body.clone()),
            b.post("/v1/agents", &key, body)
        );
        let mut codes = [ra.0, rb.0];
        codes.sort();
        assert_eq!(codes, [201, 409], "round {round}: {ra:?} {rb:?}");
    }
    let (_, list) = a.get("/v1/agents?limit=200", &key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 25);
    // The audit chain stayed linear across both writers.
    let (_, v) = b.get("/v1/audit/verify", &key).await;
    assert_eq!(v["ok"], true, "{v}");
}

/// Both servers file inbound mail into one mailbox at once, each with its
/// own group committer. A batch reads the audit head, the last full-text key
/// and the mailbox's usage under the organisation's write lock: a read that
/// saw the database as it was before the lock (the other server's last
/// batch not yet visible) would reuse an audit id, an event id or a
/// full-text key and fail the batch, or count the mailbox's bytes wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_file_mail_into_one_mailbox() {
    let store = Store::new(Backend::Postgres);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let (a, b) = (Server::start(&store), Server::start(&store));
    let (agent, _) = a.agent(&key, "shared").await;
    let (smtp_a, smtp_b) = (smtp_addr(&a), smtp_addr(&b));
    const SENDERS: usize = 8;
    const EACH: usize = 12;
    let mut tasks = vec![];
    for sender in 0..SENDERS {
        let addr = if sender % 2 == 0 {
            smtp_a.clone()
        } else {
            smtp_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                let msg = format!(
                    "From: s{sender}@example.org\r\nTo: shared@agents.localhost\r\n\
                     Subject: batch {sender}-{n}\r\nMessage-ID: <{sender}.{n}@example.org>\r\n\r\nhello {n}\r\n"
                );
                let r = smtp_send(&addr, "s@example.org", &["shared@agents.localhost"], msg.as_bytes())
                    .await
                    .unwrap();
                assert!(r.starts_with("250"), "sender {sender}, message {n}: {r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let messages = all_messages(&a, &key, &agent, None).await;
    assert_eq!(messages.len(), SENDERS * EACH);
    for server in [&a, &b] {
        assert!(
            !server.log_text().contains("group commit failed"),
            "a batch failed and was retried message by message"
        );
    }
    let received = store.sql("SELECT COUNT(*) FROM events WHERE type = 'message.received'");
    assert_eq!(received, (SENDERS * EACH).to_string());
    assert_eq!(
        store.sql("SELECT COUNT(DISTINCT seq) FROM messages"),
        (SENDERS * EACH).to_string()
    );
    // No batch wrote the mailbox's usage from a stale read.
    assert_eq!(
        store.sql("SELECT bytes FROM mailbox_usage"),
        store.sql("SELECT SUM(size_bytes) FROM mailbox_entries")
    );
    let (_, v) = b.get("/v1/audit/verify", &key).await;
    assert_eq!(v["ok"], true, "{v}");
}
