//! Full-text search, in-process on SQLite and PostgreSQL: a search sees only
//! the agent's own mail (the index holds a token per agent), a message filed
//! for two agents is found by both, both plans (the newest-entries window
//! and the start from the index's matches) give complete, ordered pages,
//! and migration 0005 rebuilds an index that predates the agent tokens.

use agentpost_core::clock::ManualClock;
use agentpost_core::{
    CoreConfig, Ctx, InboundDelivery, Ingest, MessageQuery, NewAgent, Service, StoreLocation,
};
use std::collections::HashSet;
use std::sync::Arc;

mod common;
use common::PgDb;

fn delivery(to: &[&str], subject: &str, body: &str) -> InboundDelivery {
    InboundDelivery {
        client_ip: "192.0.2.1".into(),
        helo: "mx.example.org".into(),
        mail_from: "sender@example.org".into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        tls: false,
        auth_results: None,
        dmarc: "none".into(),
        dmarc_policy: None,
        raw: format!(
            "From: sender@example.org\r\nTo: {}\r\nSubject: {subject}\r\n\r\n{body}\r\n",
            to.join(", ")
        )
        .into_bytes(),
    }
}

async fn open(location: &StoreLocation, clock: &Arc<ManualClock>) -> Arc<Service> {
    Arc::new(
        Service::open(location, CoreConfig::default(), clock.clone())
            .await
            .expect("open"),
    )
}

async fn agent(svc: &Service, local: &str) -> String {
    let (agent, _) = svc
        .create_agent(
            &Ctx::system("test"),
            NewAgent {
                local_part: Some(local.into()),
                sponsor: Some("owner@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .expect("agent");
    agent.id.0
}

/// Every match, page by page, as subjects in the order served.
async fn search_all(svc: &Service, agent: &str, q: &str, limit: u32) -> Vec<String> {
    let mut out = vec![];
    let mut cursor = None;
    loop {
        let page = svc
            .list_messages(
                &Ctx::system("test"),
                agent,
                MessageQuery {
                    q: Some(q.into()),
                    limit: Some(limit),
                    cursor: cursor.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("search");
        out.extend(
            page.data
                .iter()
                .map(|m| m.subject.clone().unwrap_or_default()),
        );
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn search_is_per_agent(location: StoreLocation, sqlite_file: Option<std::path::PathBuf>) {
    let clock = ManualClock::new(1_767_225_600_000_000);
    let svc = open(&location, &clock).await;
    svc.bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap");
    let a = agent(&svc, "alpha").await;
    let b = agent(&svc, "beta").await;
    let ingest = Ingest::start(svc.clone());
    let (to_a, to_b) = ("alpha@agents.localhost", "beta@agents.localhost");

    // An old rare word, then enough mail that it falls out of the newest
    // 200 entries the first plan looks at.
    ingest
        .deliver(delivery(&[to_a], "m000", "the needle is here, common"))
        .await
        .expect("deliver");
    for i in 1..260 {
        clock.advance_secs(1);
        let body = if i % 2 == 0 {
            "common even"
        } else {
            "common odd"
        };
        ingest
            .deliver(delivery(&[to_a], &format!("m{i:03}"), body))
            .await
            .expect("deliver");
    }
    clock.advance_secs(1);
    ingest
        .deliver(delivery(&[to_b], "for beta", "a secret needle for beta"))
        .await
        .expect("deliver");
    clock.advance_secs(1);
    ingest
        .deliver(delivery(&[to_a, to_b], "to both", "shared words"))
        .await
        .expect("deliver");

    // A small mailbox (searched straight from the index's matches on
    // PostgreSQL) pages the same way: every match, newest first.
    let c = agent(&svc, "gamma").await;
    for i in 0..30 {
        clock.advance_secs(1);
        let body = if i % 3 == 0 { "common third" } else { "common" };
        ingest
            .deliver(delivery(
                &["gamma@agents.localhost"],
                &format!("g{i:02}"),
                body,
            ))
            .await
            .expect("deliver");
    }
    let expected: Vec<String> = (0..30).rev().map(|i| format!("g{i:02}")).collect();
    assert_eq!(search_all(&svc, &c, "common", 7).await, expected);
    let expected: Vec<String> = (0..30)
        .rev()
        .filter(|i| i % 3 == 0)
        .map(|i| format!("g{i:02}"))
        .collect();
    assert_eq!(search_all(&svc, &c, "third", 4).await, expected);
    assert!(search_all(&svc, &c, "needle", 7).await.is_empty());

    // Only the agent's own mail, even for a word in the other's mailbox.
    assert_eq!(search_all(&svc, &a, "needle", 50).await, ["m000"]);
    assert_eq!(search_all(&svc, &b, "needle", 50).await, ["for beta"]);
    assert!(search_all(&svc, &a, "secret", 50).await.is_empty());
    assert_eq!(search_all(&svc, &a, "shared", 50).await, ["to both"]);
    assert_eq!(search_all(&svc, &b, "shared", 50).await, ["to both"]);
    // Words that are not query syntax, and no word at all: every word must
    // match on both backends ("or" and "-" are not operators).
    assert!(search_all(&svc, &a, "\"needle OR *", 50).await.len() <= 1);
    assert_eq!(search_all(&svc, &a, "needle -common", 50).await, ["m000"]);
    assert!(
        search_all(&svc, &a, "needle or secret", 50)
            .await
            .is_empty()
    );
    assert!(search_all(&svc, &a, "!!!", 50).await.is_empty());

    // A common word pages through every match, newest first, no repeats.
    let common = search_all(&svc, &a, "common", 50).await;
    let expected: Vec<String> = (0..260).rev().map(|i| format!("m{i:03}")).collect();
    assert_eq!(common, expected);
    // Half of the mailbox: the window yields less than a page at small
    // limits only when the word is rarer; check both plans agree anyway.
    let odd = search_all(&svc, &a, "odd", 7).await;
    let expected: Vec<String> = (1..260)
        .rev()
        .filter(|i| i % 2 == 1)
        .map(|i| format!("m{i:03}"))
        .collect();
    assert_eq!(odd, expected);
    let unique: HashSet<&String> = odd.iter().collect();
    assert_eq!(unique.len(), odd.len());

    // An index built before agent tokens existed is rebuilt by migration
    // 0005 with the tokens, then by 0007 without its copy of the text, and
    // search works on it (SQLite).
    drop(ingest);
    match &location {
        // Migration 0007 dropped the text that 0005 rebuilt PostgreSQL's
        // index from; tests/migration.rs upgrades a PostgreSQL store from
        // 0005 instead.
        StoreLocation::Postgres(_) => {}
        StoreLocation::DataDir(_) => {
            let file = sqlite_file.expect("database file");
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .expect("sqlite");
            for sql in [
                "CREATE VIRTUAL TABLE old_search USING fts5(subject, addresses, body, tokenize = 'unicode61 remove_diacritics 2')",
                // The index keeps no text since 0007: rebuild the old one's
                // from the messages (these bodies fit in the snippet).
                "INSERT INTO old_search (rowid, subject, addresses, body) \
                 SELECT seq, coalesce(subject, ''), mail_from || ' ' || rcpt_to, snippet FROM messages",
                "DROP TABLE message_search",
                "ALTER TABLE old_search RENAME TO message_search",
                "DELETE FROM _sqlx_migrations WHERE version IN (5, 7)",
            ] {
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            conn.close().await.expect("close");
        }
    }
    drop(svc);
    let svc = open(&location, &clock).await;
    assert_eq!(search_all(&svc, &a, "needle", 50).await, ["m000"]);
    assert!(search_all(&svc, &a, "secret", 50).await.is_empty());
    assert_eq!(search_all(&svc, &b, "shared", 50).await, ["to both"]);
    assert_eq!(search_all(&svc, &a, "common", 100).await.len(), 260);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    search_is_per_agent(
        StoreLocation::DataDir(data.clone()),
        Some(data.join("agentpost.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let db = PgDb::new();
    search_is_per_agent(StoreLocation::Postgres(db.url()), None).await;
}
