//! Retention, driven in-process with a manual clock on SQLite and
//! PostgreSQL: spam expires after 7 days, inbox (and trash) after 30,
//! counted from when the message entered its folder; archive is kept; the
//! sweeper removes blobs nothing references, including crash leftovers.
//! Also: mail that fails DMARC under a reject/quarantine policy is filed in
//! spam and reported as `message.quarantined`.

use agentpost_core::clock::ManualClock;
use agentpost_core::{
    CoreConfig, Ctx, EventQuery, InboundDelivery, Ingest, MessagePatch, MessageQuery, NewAgent,
    Service, StoreLocation,
};
use std::sync::Arc;

mod common;
use common::PgDb;

const DAY: i64 = 86_400;

fn delivery(subject: &str) -> InboundDelivery {
    InboundDelivery {
        client_ip: "192.0.2.1".into(),
        helo: "mx.example.org".into(),
        mail_from: "sender@example.org".into(),
        rcpt_to: vec!["keeper@agents.localhost".into()],
        tls: false,
        auth_results: None,
        dmarc: "none".into(),
        dmarc_policy: None,
        raw: format!("From: sender@example.org\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n")
            .into_bytes(),
    }
}

/// Every mailbox row still has its agent, message and thread. PostgreSQL
/// has no foreign keys for these (migration 0009): what keeps them is the
/// order of the service's writes and deletes, checked here after purges.
async fn assert_no_orphans(store_url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(store_url).await.expect("store");
    let (orphans,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM mailbox_entries e WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = e.agent_id) \
           OR NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = e.message_id) \
           OR NOT EXISTS (SELECT 1 FROM threads t WHERE t.id = e.thread_id)) \
         + (SELECT COUNT(*) FROM threads t WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = t.agent_id)) \
         + (SELECT COUNT(*) FROM mailbox_usage u WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = u.agent_id))",
    )
    .fetch_one(&pool)
    .await
    .expect("orphan count");
    assert_eq!(
        orphans, 0,
        "mailbox rows without their agent, message or thread"
    );
    pool.close().await;
}

async fn retention_expires_by_folder(
    location: StoreLocation,
    data_dir: Option<std::path::PathBuf>,
    store_url: String,
) {
    let clock = ManualClock::new(1_767_225_600_000_000); // 2026-01-01
    let svc = Arc::new(
        Service::open(&location, CoreConfig::default(), clock.clone())
            .await
            .expect("open"),
    );
    svc.bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap");
    let ctx = Ctx::system("test");
    let (agent, _) = svc
        .create_agent(
            &ctx,
            NewAgent {
                local_part: Some("keeper".into()),
                sponsor: Some("owner@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .expect("agent");
    let id = agent.id.0.clone();
    let ingest = Ingest::start(svc.clone());
    let inbox = ingest
        .deliver(delivery("stays in inbox"))
        .await
        .expect("deliver");
    let spam = ingest
        .deliver(delivery("moved to spam"))
        .await
        .expect("deliver");
    let archived = ingest.deliver(delivery("archived")).await.expect("deliver");
    for (mid, folder) in [(&spam, "spam"), (&archived, "archive")] {
        let patch = MessagePatch {
            folder: Some(folder.into()),
            ..Default::default()
        };
        svc.update_message(&ctx, &id, mid, patch)
            .await
            .expect("move");
    }
    // A blob a crash left behind (written, never committed).
    let stray = data_dir.as_ref().map(|d| {
        let h = "ab".repeat(32);
        let p = d.join("blobs").join("ab").join(&h);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"orphan").unwrap();
        p
    });

    let ids = |svc: Arc<Service>, folder: &'static str| {
        let id = id.clone();
        async move {
            let q = MessageQuery {
                folder: Some(folder.into()),
                ..Default::default()
            };
            svc.list_messages(&Ctx::system("test"), &id, q)
                .await
                .expect("list")
                .data
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };

    clock.advance_secs(6 * DAY);
    let r = svc.sweep_retention().await.expect("sweep");
    assert_eq!(r.expired, 0);
    if let Some(p) = &stray {
        assert!(!p.exists(), "the orphan blob is collected");
        assert_eq!(r.blobs_removed, 1);
    }

    clock.advance_secs(2 * DAY); // day 8: spam (7 days) expired
    let r = svc.sweep_retention().await.expect("sweep");
    assert_eq!(r.expired, 1);
    assert_eq!(r.blobs_removed, 1, "the spam message's blob");
    if let Some(d) = &data_dir {
        // The full-text index holds no text (SQLite 0007): its delete by
        // rowid must still take the words out.
        use sqlx::Connection;
        let url = format!("sqlite://{}", d.join("agentpost.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
        let (spam_words,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM message_search WHERE message_search MATCH 'spam'")
                .fetch_one(&mut conn)
                .await
                .expect("search index");
        assert_eq!(spam_words, 0, "the purged message left the index");
        let (kept,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM message_search WHERE message_search MATCH 'inbox'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("search index");
        assert_eq!(kept, 1, "the others stay");
        conn.close().await.expect("close");
    }
    assert!(ids(svc.clone(), "spam").await.is_empty());
    assert_eq!(ids(svc.clone(), "inbox").await, vec![inbox.clone()]);
    assert_no_orphans(&store_url).await;

    clock.advance_secs(23 * DAY); // day 31: inbox (30 days) expired, archive kept
    let r = svc.sweep_retention().await.expect("sweep");
    assert_eq!(r.expired, 1);
    assert!(ids(svc.clone(), "inbox").await.is_empty());
    assert_eq!(ids(svc.clone(), "archive").await, vec![archived.clone()]);

    // Trash counts from the moment of deletion.
    svc.delete_message(&ctx, &id, &archived)
        .await
        .expect("trash");
    clock.advance_secs(29 * DAY);
    assert_eq!(svc.sweep_retention().await.expect("sweep").expired, 0);
    clock.advance_secs(2 * DAY);
    assert_eq!(svc.sweep_retention().await.expect("sweep").expired, 1);
    assert!(ids(svc.clone(), "trash").await.is_empty());
    assert_no_orphans(&store_url).await;

    let trail = svc
        .list_agent_audit(
            &ctx,
            &id,
            agentpost_core::AuditQuery {
                action: Some("mailbox.retention".into()),
                ..Default::default()
            },
        )
        .await
        .expect("audit");
    assert_eq!(trail.data.len(), 3);
    let report = svc.verify_audit(&ctx).await.expect("verify");
    assert!(report.problem.is_none(), "{:?}", report.problem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = format!("sqlite://{}", data.join("agentpost.db").display());
    retention_expires_by_folder(StoreLocation::DataDir(data.clone()), Some(data), url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let db = PgDb::new();
    retention_expires_by_folder(StoreLocation::Postgres(db.url()), None, db.url()).await;
}

async fn dmarc_failure_is_quarantined(location: StoreLocation) {
    let clock = ManualClock::new(1_767_225_600_000_000);
    let svc = Arc::new(
        Service::open(&location, CoreConfig::default(), clock)
            .await
            .expect("open"),
    );
    svc.bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap");
    let ctx = Ctx::system("test");
    svc.create_agent(
        &ctx,
        NewAgent {
            local_part: Some("keeper".into()),
            sponsor: Some("owner@example.com".into()),
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    let ingest = Ingest::start(svc.clone());
    let mut forged = delivery("forged bank notice");
    forged.dmarc = "fail".into();
    forged.dmarc_policy = Some("reject".into());
    ingest.deliver(forged).await.expect("deliver");
    ingest.deliver(delivery("ordinary")).await.expect("deliver");
    let events = svc
        .list_events(&ctx, &EventQuery::default())
        .await
        .expect("events");
    let mail: Vec<(String, String)> = events
        .data
        .iter()
        .filter(|e| e.kind.starts_with("message."))
        .map(|e| {
            (
                e.kind.clone(),
                e.data["folder"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        mail,
        vec![
            ("message.quarantined".to_string(), "spam".to_string()),
            ("message.received".to_string(), "inbox".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    dmarc_failure_is_quarantined(StoreLocation::DataDir(dir.path().join("data"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_postgres() {
    let db = PgDb::new();
    dmarc_failure_is_quarantined(StoreLocation::Postgres(db.url())).await;
}
