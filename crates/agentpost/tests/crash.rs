//! The durability promise under a crash, on SQLite and PostgreSQL: many
//! concurrent SMTP clients send messages and record every one that got
//! `250`; the server is killed with SIGKILL at a random moment; after a
//! restart every acknowledged message must be in its mailboxes. Duplicates
//! would be allowed (and are counted); a loss fails the test.

mod common;

use common::{Backend, Server, SmtpClient, Store, all_messages, smtp_addr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Below the receiver's per-address connection limit (20).
const CLIENTS: usize = 16;

/// One client: one connection, messages back to back until the server dies.
async fn client(
    addr: String,
    n: usize,
    acked: Arc<Mutex<Vec<(String, bool)>>>,
    refused: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let mut c = SmtpClient::new(stream);
    if c.reply().await.is_err() || c.cmd("EHLO crash.client.test").await.is_err() {
        return;
    }
    for i in 0.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let token = format!("crash-{n}-{i}");
        // Every third message also goes to the second agent; every fifth is large.
        let both = i % 3 == 0;
        let filler = if i % 5 == 0 {
            format!("{}\r\n", "y".repeat(76)).repeat(2_500)
        } else {
            String::new()
        };
        let body = format!(
            "From: c{n}@example.org\r\nTo: one@agents.localhost\r\nSubject: {token}\r\nMessage-ID: <{token}@example.org>\r\n\r\nbody {token}\r\n{filler}\r\n"
        );
        let steps = async {
            let r = c.cmd(&format!("MAIL FROM:<c{n}@example.org>")).await?;
            if !r.starts_with("250") {
                return Ok::<_, std::io::Error>(r);
            }
            c.cmd("RCPT TO:<one@agents.localhost>").await?;
            if both {
                c.cmd("RCPT TO:<two@agents.localhost>").await?;
            }
            c.cmd("DATA").await?;
            c.data(body.as_bytes()).await
        };
        match steps.await {
            Ok(r) if r.starts_with("250") => acked.lock().unwrap().push((token, both)),
            Ok(r) => {
                refused.lock().unwrap().push(r);
                return;
            }
            Err(_) => return, // the server died mid-transaction: unknown outcome, not acknowledged
        }
    }
}

async fn acknowledged_mail_survives_sigkill(backend: Backend) {
    let store = Store::new(backend);
    let admin = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let mut server = Server::start(&store);
    let (one, _) = server.agent(&admin, "one").await;
    let (two, _) = server.agent(&admin, "two").await;
    let smtp = smtp_addr(&server);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(client(
                smtp.clone(),
                n,
                acked.clone(),
                refused.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // A random moment between 1 and 4 seconds in.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let wait = Duration::from_millis(1000 + nanos % 3000);
    tokio::time::sleep(wait).await;
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap");
    let at_kill = acked.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, t).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        at_kill > 0,
        "no message was acknowledged before the kill ({wait:?}); log:\n{}",
        server.log_text()
    );
    assert_eq!(acked.len(), at_kill, "no 250 may arrive after the kill");
    assert!(
        refused.lock().unwrap().is_empty(),
        "refused before the crash: {:?}",
        refused.lock().unwrap()
    );

    let server = Server::start(&store);
    let mut found: HashMap<(String, String), usize> = HashMap::new();
    for (agent, name) in [(&one, "one"), (&two, "two")] {
        for m in all_messages(&server, &admin, agent, None).await {
            let subject = m["subject"].as_str().unwrap_or_default().to_string();
            *found.entry((name.to_string(), subject)).or_default() += 1;
        }
    }
    let mut lost = vec![];
    for (token, both) in &acked {
        for name in if *both {
            vec!["one", "two"]
        } else {
            vec!["one"]
        } {
            if !found.contains_key(&(name.to_string(), token.clone())) {
                lost.push(format!("{token} for {name}"));
            }
        }
    }
    let duplicates: usize = found.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    let filed_for_one = found.keys().filter(|(agent, _)| agent == "one").count();
    eprintln!(
        "{backend:?}: killed after {wait:?}; {} messages acknowledged, {filed_for_one} distinct ones filed for agent one after restart (in-flight, unacknowledged ones may be there too), {duplicates} duplicates, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    // The audit chain survived the crash too.
    let (s, v) = server.get("/v1/audit/verify", &admin).await;
    assert_eq!(s, 200);
    assert!(v["problem"].is_null(), "{v}");
}
both_backends!(
    acknowledged_mail_survives_sigkill,
    super::acknowledged_mail_survives_sigkill
);
