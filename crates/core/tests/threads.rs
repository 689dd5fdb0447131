//! Thread lists, in-process on SQLite and PostgreSQL: the one-statement
//! aggregate (small mailboxes) and the walk over the newest entries (large
//! ones) give the same pages, cursor by cursor, with and without a folder.

use agentpost_core::clock::ManualClock;
use agentpost_core::{
    CoreConfig, Ctx, InboundDelivery, Ingest, MessagePatch, NewAgent, Service, StoreLocation,
    ThreadQuery,
};
use std::sync::Arc;

mod common;
use common::PgDb;

fn delivery(subject: &str, refs: Option<&str>, id: &str) -> InboundDelivery {
    let refs = refs
        .map(|r| format!("In-Reply-To: <{r}>\r\nReferences: <{r}>\r\n"))
        .unwrap_or_default();
    InboundDelivery {
        client_ip: "192.0.2.1".into(),
        helo: "mx.example.org".into(),
        mail_from: "sender@example.org".into(),
        rcpt_to: vec!["walker@agents.localhost".into()],
        tls: false,
        auth_results: None,
        dmarc: "none".into(),
        dmarc_policy: None,
        raw: format!(
            "From: sender@example.org\r\nTo: walker@agents.localhost\r\nMessage-ID: <{id}>\r\n{refs}Subject: {subject}\r\n\r\nbody\r\n"
        )
        .into_bytes(),
    }
}

async fn open(
    location: &StoreLocation,
    clock: &Arc<ManualClock>,
    aggregate_up_to: i64,
) -> Arc<Service> {
    let cfg = CoreConfig {
        threads_aggregate_up_to: aggregate_up_to,
        ..CoreConfig::default()
    };
    Arc::new(
        Service::open(location, cfg, clock.clone())
            .await
            .expect("open"),
    )
}

/// Every page as (thread id, count, unread, latest) in the order served.
async fn all_pages(
    svc: &Service,
    agent: &str,
    folder: Option<&str>,
    limit: u32,
) -> Vec<(String, i64, i64, i64)> {
    let mut out = vec![];
    let mut cursor = None;
    loop {
        let page = svc
            .list_threads(
                &Ctx::system("test"),
                agent,
                ThreadQuery {
                    folder: folder.map(str::to_string),
                    cursor: cursor.clone(),
                    limit: Some(limit),
                },
            )
            .await
            .expect("threads");
        out.extend(page.data.iter().map(|t| {
            (
                t.id.clone(),
                t.message_count,
                t.unread_count,
                t.latest_at_micros,
            )
        }));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn walk_equals_aggregate(location: StoreLocation) {
    let clock = ManualClock::new(1_767_225_600_000_000);
    let svc = open(&location, &clock, 1000).await;
    svc.bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap");
    let (agent, _) = svc
        .create_agent(
            &Ctx::system("test"),
            NewAgent {
                local_part: Some("walker".into()),
                sponsor: Some("owner@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .expect("agent");
    let agent = agent.id.0;
    let ingest = Ingest::start(svc.clone());
    // 60 threads; replies land out of order, so a thread's newest message
    // is often far from its first, and some messages share a timestamp.
    let mut ids = vec![];
    for i in 0..180usize {
        if i % 3 != 0 {
            clock.advance_secs(1);
        }
        let thread = (i * 7) % 60;
        let parent = (i >= 60).then(|| format!("t{thread}-0@example.org"));
        let own = if i < 60 {
            format!("t{thread}-0@example.org")
        } else {
            format!("t{thread}-{i}@example.org")
        };
        let id = ingest
            .deliver(delivery(
                &format!("Topic {thread}"),
                parent.as_deref(),
                &own,
            ))
            .await
            .expect("deliver");
        ids.push(id);
    }
    // Some read, some archived, some in trash.
    for (i, id) in ids.iter().enumerate() {
        let folder = match i % 11 {
            0 => Some("archive".to_string()),
            5 => Some("trash".to_string()),
            _ => None,
        };
        let unread = (i % 4 == 0).then_some(false);
        if folder.is_some() || unread.is_some() {
            svc.update_message(
                &Ctx::system("test"),
                &agent,
                id,
                MessagePatch {
                    folder,
                    unread,
                    ..Default::default()
                },
            )
            .await
            .expect("patch");
        }
    }
    drop(ingest);
    let walk = open(&location, &clock, 0).await;
    for folder in [None, Some("inbox"), Some("archive"), Some("trash")] {
        for limit in [1, 7, 50] {
            let a = all_pages(&svc, &agent, folder, limit).await;
            let w = all_pages(&walk, &agent, folder, limit).await;
            assert_eq!(a, w, "folder {folder:?}, limit {limit}");
            let mut unique: Vec<&String> = a.iter().map(|t| &t.0).collect();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), a.len(), "no thread twice");
            if folder.is_none() {
                assert_eq!(a.len(), 60);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    walk_equals_aggregate(StoreLocation::DataDir(dir.path().join("data"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let db = PgDb::new();
    walk_equals_aggregate(StoreLocation::Postgres(db.url())).await;
}
