//! Migration 0006 (mailbox entries carry their message's list columns; on
//! SQLite entries and threads are clustered by agent) carries existing mail
//! over: a store at migration 0005 with a mailbox in it, written with the
//! schema of that time, is opened by this build and lists, searches and
//! threads the same messages. SQLite and PostgreSQL.

use agentpost_core::clock::ManualClock;
use agentpost_core::{CoreConfig, Ctx, MessageQuery, Service, StoreLocation, ThreadQuery};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use std::sync::Arc;

mod common;
use common::PgDb;

const AGENT: &str = "0190f0a0-0000-7000-8000-000000000001";
const THREAD_A: &str = "0190f0a0-0000-7000-8000-0000000000a1";
const THREAD_B: &str = "0190f0a0-0000-7000-8000-0000000000b1";
const NOW: i64 = 1_767_225_600_000_000;

/// A message as the 0005 schema stored it.
struct OldMessage {
    id: &'static str,
    seq: i64,
    thread: &'static str,
    subject: &'static str,
    attachments: &'static str,
    /// Seconds after `NOW`.
    offset: i64,
    folder: &'static str,
    unread: i64,
}

const MESSAGES: [OldMessage; 3] = [
    OldMessage {
        id: "0190f0a0-0000-7000-8000-000000000101",
        seq: 1,
        thread: THREAD_A,
        subject: "Quarterly figures",
        attachments: "[]",
        offset: 0,
        folder: "inbox",
        unread: 1,
    },
    OldMessage {
        id: "0190f0a0-0000-7000-8000-000000000102",
        seq: 2,
        thread: THREAD_B,
        subject: "Invoice attached",
        attachments: r#"[{"index":0,"name":"invoice.pdf","content_type":"application/pdf","size":10}]"#,
        offset: 10,
        folder: "archive",
        unread: 0,
    },
    OldMessage {
        id: "0190f0a0-0000-7000-8000-000000000103",
        seq: 3,
        thread: THREAD_A,
        subject: "Re: Quarterly figures",
        attachments: "[]",
        offset: 20,
        folder: "inbox",
        unread: 1,
    },
];

/// What a summary shows: id, subject, attachments?, sender, snippet.
type Shown<'a> = (
    &'a str,
    Option<&'a str>,
    bool,
    Option<&'a str>,
    Option<&'a str>,
);

/// Writes an organisation, an agent and its mailbox with the statements of
/// the 0005 schema (no list columns in the entries).
async fn write_old_mailbox(url: &str, migrator: &Migrator) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    let before_0006 = Migrator {
        migrations: migrator
            .migrations
            .iter()
            .filter(|m| m.version < 6)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    before_0006.run(&pool).await.expect("migrations 1-5");
    let org = "0190f0a0-0000-7000-8000-00000000000a";
    let domain = "0190f0a0-0000-7000-8000-00000000000d";
    let statements = [
        format!(
            "INSERT INTO organisations (id, name, created_at) VALUES ('{org}', 'default', {NOW})"
        ),
        format!(
            "INSERT INTO domains (id, org_id, name, is_default, created_at) VALUES ('{domain}', '{org}', 'agents.localhost', 1, {NOW})"
        ),
        format!(
            "INSERT INTO agents (id, org_id, address, address_key, domain_id, sponsor, status, created_at, updated_at) \
             VALUES ('{AGENT}', '{org}', 'keeper@agents.localhost', 'keeper@agents.localhost', '{domain}', \
             'owner@example.com', 'active', {NOW}, {NOW})"
        ),
        format!(
            "INSERT INTO threads (id, agent_id, subject, subject_key, participants_key, participants, created_at) VALUES \
             ('{THREAD_A}', '{AGENT}', 'Quarterly figures', 'quarterly figures', 'a', 'cfo@example.org keeper@agents.localhost', {NOW}), \
             ('{THREAD_B}', '{AGENT}', 'Invoice attached', 'invoice attached', 'b', 'billing@example.org keeper@agents.localhost', {NOW})"
        ),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("setup row");
    }
    let token = format!("a{}", AGENT.replace('-', ""));
    for OldMessage {
        id,
        seq,
        thread,
        subject,
        attachments,
        offset,
        folder,
        unread,
    } in MESSAGES
    {
        let at = NOW + offset * 1_000_000;
        let from = if thread == THREAD_A {
            "cfo@example.org"
        } else {
            "billing@example.org"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO messages (id, seq, blob_hash, size_bytes, received_at, mail_from, rcpt_to, tls, message_id_header, \
             in_reply_to, refs, subject, from_json, to_json, cc_json, reply_to_json, date_at, snippet, attachments, from_key, to_key) \
             VALUES ('{id}', {seq}, 'h{seq}', 100, {at}, '{from}', '[\"keeper@agents.localhost\"]', 0, '<{seq}@example.org>', \
             '[]', '[]', '{subject}', '[{{\"address\":\"{from}\"}}]', '[{{\"address\":\"keeper@agents.localhost\"}}]', '[]', '[]', \
             {at}, 'Snippet {seq}', '{attachments}', '{from}', 'keeper@agents.localhost')"
        )))
        .execute(&pool)
        .await
        .expect("message row");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO mailbox_entries (agent_id, message_id, thread_id, folder, unread, starred, received_at, folder_at, size_bytes) \
             VALUES ('{AGENT}', '{id}', '{thread}', '{folder}', {unread}, 0, {at}, {at}, 100)"
        )))
        .execute(&pool)
        .await
        .expect("entry row");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO message_search (rowid, subject, addresses, body, agents) \
             VALUES ({seq}, '{subject}', '{from}', 'body of message {seq}', '{token}')"
        )))
        .execute(&pool)
        .await
        .expect("search row");
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO mailbox_usage (agent_id, bytes, messages) VALUES ('{AGENT}', 300, 3)"
    )))
    .execute(&pool)
    .await
    .expect("usage row");
    pool.close().await;
}

async fn check_migrated(location: &StoreLocation) {
    let svc = Arc::new(
        Service::open(
            location,
            CoreConfig::default(),
            ManualClock::new(NOW + 60_000_000),
        )
        .await
        .expect("open applies 0006"),
    );
    let ctx = Ctx::system("test");
    let page = svc
        .list_messages(&ctx, AGENT, MessageQuery::default())
        .await
        .expect("list");
    let got: Vec<Shown> = page
        .data
        .iter()
        .map(|m| {
            (
                m.id.as_str(),
                m.subject.as_deref(),
                m.has_attachments,
                m.from[0].address.as_deref(),
                m.snippet.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                MESSAGES[2].id,
                Some("Re: Quarterly figures"),
                false,
                Some("cfo@example.org"),
                Some("Snippet 3")
            ),
            (
                MESSAGES[1].id,
                Some("Invoice attached"),
                true,
                Some("billing@example.org"),
                Some("Snippet 2")
            ),
            (
                MESSAGES[0].id,
                Some("Quarterly figures"),
                false,
                Some("cfo@example.org"),
                Some("Snippet 1")
            ),
        ]
    );
    assert_eq!(page.data[1].folder, "archive");
    assert!(page.data[0].unread && !page.data[1].unread);
    assert_eq!(
        page.data[0].message_id_header.as_deref(),
        Some("<3@example.org>")
    );

    // Filters that read the copied columns: sender, unread, full text.
    let from_billing = svc
        .list_messages(
            &ctx,
            AGENT,
            MessageQuery {
                from: Some("billing@".into()),
                ..Default::default()
            },
        )
        .await
        .expect("from filter");
    assert_eq!(from_billing.data.len(), 1);
    assert_eq!(from_billing.data[0].id, MESSAGES[1].id);
    let found = svc
        .list_messages(
            &ctx,
            AGENT,
            MessageQuery {
                q: Some("quarterly".into()),
                ..Default::default()
            },
        )
        .await
        .expect("search");
    let ids: Vec<&str> = found.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec![MESSAGES[2].id, MESSAGES[0].id]);

    let threads = svc
        .list_threads(&ctx, AGENT, ThreadQuery::default())
        .await
        .expect("threads");
    let t: Vec<(&str, i64, i64)> = threads
        .data
        .iter()
        .map(|t| (t.id.as_str(), t.message_count, t.unread_count))
        .collect();
    assert_eq!(t, vec![(THREAD_A, 2, 2), (THREAD_B, 1, 0)]);
    let thread = svc.get_thread(&ctx, AGENT, THREAD_A).await.expect("thread");
    assert_eq!(thread.messages.len(), 2);
    assert_eq!(
        thread.messages[0].subject.as_deref(),
        Some("Quarterly figures")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let url = format!("sqlite://{}?mode=rwc", data.join("agentpost.db").display());
    write_old_mailbox(&url, &sqlx::migrate!("./migrations/sqlite")).await;
    let location = StoreLocation::DataDir(data.clone());
    check_migrated(&location).await;
    // The rebuilt tables keep every reference whole.
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    let violations = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&pool)
        .await
        .expect("foreign_key_check");
    assert!(
        violations.is_empty(),
        "{} foreign key violations",
        violations.len()
    );
    let integrity: (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .expect("integrity_check");
    assert_eq!(integrity.0, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let db = PgDb::new();
    write_old_mailbox(&db.url(), &sqlx::migrate!("./migrations/postgres")).await;
    check_migrated(&StoreLocation::Postgres(db.url())).await;
}
