//! Outbound rules driven in-process with a manual clock, on SQLite and
//! PostgreSQL: policies (CRUD, 409 while in use), caps counted per UTC day
//! (429 with Retry-After to midnight, `quota.exceeded`, usage), two-step
//! confirmation (the agent cannot confirm, the sponsor's approver can,
//! another approver cannot even see it, an edited draft voids, expiry
//! rejects), and local agent-to-agent delivery with a verified sender and a
//! bounce for an unknown local address. Delivery over the network is in the
//! binary's tests against a real SMTP receiver.

use agentpost_core::clock::ManualClock;
use agentpost_core::{
    Compose, CoreConfig, Ctx, Error, EventQuery, MessageQuery, NewAgent, NewApprover,
    RecipientInput, Service, StoreLocation,
};
use serde_json::json;
use std::sync::Arc;

mod common;
use common::PgDb;

/// A store on the chosen backend; the guard keeps it alive.
async fn open(pg: bool, clock: Arc<ManualClock>) -> (Arc<Service>, Box<dyn std::any::Any>) {
    let (location, guard): (StoreLocation, Box<dyn std::any::Any>) = if pg {
        let db = PgDb::new();
        (StoreLocation::Postgres(db.url()), Box::new(db))
    } else {
        let dir = tempfile::tempdir().expect("tempdir");
        (
            StoreLocation::DataDir(dir.path().to_path_buf()),
            Box::new(dir),
        )
    };
    let svc = Arc::new(
        Service::open(&location, CoreConfig::default(), clock)
            .await
            .expect("open"),
    );
    svc.bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap");
    (svc, guard)
}

async fn agent(svc: &Service, local: &str, policy: Option<&str>) -> (String, Ctx) {
    let admin = Ctx::system("test");
    let (a, token) = svc
        .create_agent(
            &admin,
            NewAgent {
                local_part: Some(local.into()),
                sponsor: Some("boss@example.com".into()),
                policy_id: policy.map(str::to_string),
                ..Default::default()
            },
        )
        .await
        .expect("agent");
    (a.id.0.clone(), ctx_of(svc, &token.secret).await)
}

async fn ctx_of(svc: &Service, secret: &str) -> Ctx {
    Ctx {
        principal: svc
            .authenticate(secret, None, None)
            .await
            .expect("authenticate"),
        request_id: None,
        source: Some("test".into()),
    }
}

fn to(addr: &str, subject: &str) -> Compose {
    Compose {
        to: vec![RecipientInput::Address(addr.into())],
        subject: Some(subject.into()),
        text: Some(format!("body of {subject}")),
        ..Default::default()
    }
}

async fn events(svc: &Service, kind: &str) -> Vec<serde_json::Value> {
    let q = EventQuery {
        kind: Some(kind.into()),
        limit: Some(200),
        ..Default::default()
    };
    svc.list_events(&Ctx::system("test"), &q)
        .await
        .expect("events")
        .data
        .into_iter()
        .map(|e| e.data)
        .collect()
}

async fn caps_and_policies(pg: bool) {
    // 2026-11-28T18:00:00Z
    let clock = ManualClock::new(1_795_888_800_000_000);
    let (svc, _guard) = open(pg, clock.clone()).await;
    let admin = Ctx::system("test");
    let policy = svc
        .create_policy(&admin, json!({ "name": "tight", "sends_per_day": 2 }))
        .await
        .expect("policy");
    assert_eq!(policy.settings.sends_per_day, 2);
    assert_eq!(policy.settings.recipients_per_message, 50);
    let bad = svc
        .create_policy(&admin, json!({ "name": "x", "confirmation": "sometimes" }))
        .await;
    assert!(
        matches!(bad, Err(Error::Invalid { ref field, .. }) if field == "confirmation"),
        "{bad:?}"
    );
    let (id, ctx) = agent(&svc, "capped", Some(&policy.id)).await;
    let (_peer, _) = agent(&svc, "peer", None).await;
    for i in 0..2 {
        let s = svc
            .send_message(&ctx, &id, to("peer@agents.localhost", &format!("n{i}")))
            .await
            .expect("send");
        assert_eq!(s.status, "sent", "local delivery completes at once");
    }
    let over = svc
        .send_message(&ctx, &id, to("peer@agents.localhost", "n2"))
        .await;
    match over {
        Err(Error::RateLimited {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, 6 * 3600),
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(events(&svc, "quota.exceeded").await.len(), 1);
    let usage = svc.usage(&ctx, &id).await.expect("usage");
    assert_eq!((usage.sent_today, usage.sends_per_day), (2, 2));
    assert_eq!(usage.day_resets_at, "2026-11-29T00:00:00Z");
    // The policy is in use: deleting it names the agent.
    match svc.delete_policy(&admin, &policy.id).await {
        Err(Error::Conflict { code, message, .. }) => {
            assert_eq!(code, "policy-in-use");
            assert!(message.contains("capped@agents.localhost"), "{message}");
        }
        other => panic!("expected 409, got {other:?}"),
    }
    // A new UTC day resets the count.
    clock.advance_secs(6 * 3600);
    svc.send_message(&ctx, &id, to("peer@agents.localhost", "next day"))
        .await
        .expect("send after midnight");
    // Loosening the policy applies at once.
    svc.update_policy(
        &admin,
        &policy.id,
        json!({ "sends_per_day": 10, "block_recipients": ["blocked.example"] }),
    )
    .await
    .expect("patch");
    let blocked = svc
        .send_message(&ctx, &id, to("x@blocked.example", "no"))
        .await;
    assert!(
        matches!(blocked, Err(Error::Invalid { ref field, .. }) if field == "to[0]"),
        "{blocked:?}"
    );
    // Agent tokens cannot manage policies.
    assert!(matches!(
        svc.create_policy(&ctx, json!({ "name": "mine" })).await,
        Err(Error::Forbidden(_))
    ));
}

async fn confirmation_is_two_step(pg: bool) {
    let clock = ManualClock::new(1_795_888_800_000_000);
    let (svc, _guard) = open(pg, clock.clone()).await;
    let admin = Ctx::system("test");
    let policy = svc
        .create_policy(&admin, json!({ "name": "held", "confirmation": "always" }))
        .await
        .expect("policy");
    let (id, ctx) = agent(&svc, "careful", Some(&policy.id)).await;
    agent(&svc, "inbox", None).await;
    let sponsor = svc
        .create_approver(
            &admin,
            NewApprover {
                email: Some("boss@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .expect("approver");
    let sponsor = ctx_of(&svc, &sponsor.secret).await;
    let stranger = svc
        .create_approver(
            &admin,
            NewApprover {
                email: Some("someone@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .expect("approver");
    let stranger = ctx_of(&svc, &stranger.secret).await;

    let held = svc
        .send_message(&ctx, &id, to("inbox@agents.localhost", "please approve"))
        .await
        .expect("send");
    assert_eq!(held.status, "pending_confirmation");
    assert_eq!(held.sha256.len(), 64);
    assert!(held.expires_at.is_some());
    // The blob collector keeps the bytes of a send that waits.
    svc.sweep_retention().await.expect("sweep");
    let raw = svc
        .get_send_raw(&sponsor, &held.send_id)
        .await
        .expect("raw");
    assert_eq!(
        hex_sha256(&raw),
        held.sha256,
        "the hash covers the exact bytes"
    );
    // The agent cannot confirm its own send; another approver cannot see it.
    assert!(matches!(
        svc.confirm_send(&ctx, &held.send_id, None).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        svc.confirm_send(&stranger, &held.send_id, None).await,
        Err(Error::NotFound(_))
    ));
    let pending = svc
        .list_sends(
            &sponsor,
            agentpost_core::SendQuery {
                status: Some("pending".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(pending.data.len(), 1);
    assert!(matches!(
        svc.confirm_send(&sponsor, &held.send_id, Some(&"0".repeat(64)))
            .await,
        Err(Error::Invalid { .. })
    ));
    let done = svc
        .confirm_send(&sponsor, &held.send_id, Some(&held.sha256))
        .await
        .expect("confirm");
    assert_eq!(done.status, "sent");
    assert!(
        done.decided_by
            .as_deref()
            .unwrap_or("")
            .contains("boss@example.com")
    );
    assert!(matches!(
        svc.confirm_send(&sponsor, &held.send_id, None).await,
        Err(Error::Conflict { .. })
    ));

    // Editing the draft voids its pending send.
    let draft = svc
        .create_draft(&ctx, &id, to("inbox@agents.localhost", "draft one"))
        .await
        .expect("draft");
    let pending = svc
        .send_draft(&ctx, &id, &draft.id)
        .await
        .expect("send draft");
    assert_eq!(pending.status, "pending_confirmation");
    svc.update_draft(&ctx, &id, &draft.id, json!({ "subject": "changed" }))
        .await
        .expect("edit");
    let voided = svc.get_send(&ctx, &pending.send_id).await.expect("get");
    assert_eq!(voided.status, "voided");
    assert!(matches!(
        svc.confirm_send(&sponsor, &pending.send_id, None).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(events(&svc, "send.voided").await.len(), 1);

    // Expiry fails closed.
    let late = svc
        .send_message(&ctx, &id, to("inbox@agents.localhost", "too late"))
        .await
        .expect("send");
    clock.advance_secs(25 * 3600);
    assert!(matches!(
        svc.confirm_send(&sponsor, &late.send_id, None).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        svc.get_send(&ctx, &late.send_id).await.expect("get").status,
        "expired"
    );
    assert_eq!(events(&svc, "send.expired").await.len(), 1);
    // Rejection with a reason.
    let no = svc
        .send_message(&ctx, &id, to("inbox@agents.localhost", "no"))
        .await
        .expect("send");
    let rejected = svc
        .reject_send(&sponsor, &no.send_id, Some("not today".into()))
        .await
        .expect("reject");
    assert_eq!(
        (rejected.status.as_str(), rejected.reason.as_deref()),
        ("rejected", Some("not today"))
    );

    // Decommissioning revokes app passwords and voids what waits for a human.
    let pw = svc
        .create_app_password(&Ctx::system("test"), &id, Default::default())
        .await
        .expect("app password");
    svc.authenticate_app_password("careful@agents.localhost", &pw.password, "127.0.0.1")
        .await
        .expect("app password works");
    let waiting = svc
        .send_message(&ctx, &id, to("inbox@agents.localhost", "left behind"))
        .await
        .expect("send");
    let gone = svc
        .decommission_agent(&Ctx::system("test"), &id)
        .await
        .expect("decommission");
    assert_eq!(
        gone.credentials_revoked, 2,
        "the agent token and the app password"
    );
    let after = svc
        .get_send(&Ctx::system("test"), &waiting.send_id)
        .await
        .expect("get");
    assert_eq!(after.status, "voided");
    assert!(matches!(
        svc.authenticate_app_password("careful@agents.localhost", &pw.password, "127.0.0.1")
            .await,
        Err(Error::Unauthenticated(_))
    ));
}

async fn local_delivery_names_the_sender(pg: bool) {
    let clock = ManualClock::new(1_795_888_800_000_000);
    let (svc, _guard) = open(pg, clock.clone()).await;
    let (alice, actx) = agent(&svc, "alice", None).await;
    let (bob, bctx) = agent(&svc, "bob", None).await;
    let sent = svc
        .send_message(&actx, &alice, to("Bob@agents.localhost", "hello bob"))
        .await
        .expect("send");
    assert_eq!(sent.status, "sent");
    assert!(
        sent.recipients
            .iter()
            .all(|r| r.status == "delivered" && r.local)
    );
    let inbox = svc
        .list_messages(
            &bctx,
            &bob,
            MessageQuery {
                folder: Some("inbox".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(inbox.data.len(), 1);
    let raw = svc
        .get_raw_message(&Ctx::system("test"), &bob, &inbox.data[0].id)
        .await
        .expect("raw");
    let text = String::from_utf8_lossy(&raw.bytes).to_string();
    assert!(
        text.starts_with(&format!(
            "X-Agentpost-Verified-Sender: alice@agents.localhost; agent={alice}"
        )),
        "{text}"
    );
    let received = events(&svc, "message.received").await;
    assert_eq!(received[0]["verified_sender"]["agent_id"], json!(alice));
    let sent_folder = svc
        .list_messages(
            &actx,
            &alice,
            MessageQuery {
                folder: Some("sent".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(sent_folder.data.len(), 1);
    let sent_raw = svc
        .get_raw_message(&Ctx::system("test"), &alice, &sent_folder.data[0].id)
        .await
        .expect("raw");
    assert_eq!(
        hex_sha256(&sent_raw.bytes),
        sent.sha256,
        "sent holds the bytes that went out"
    );
    assert!(String::from_utf8_lossy(&sent_raw.bytes).contains("DKIM-Signature:"));

    // Bob replies in the thread.
    let reply = svc
        .reply_to_message(
            &bctx,
            &bob,
            &inbox.data[0].id,
            agentpost_core::ReplyRequest {
                text: Some("hi alice".into()),
                ..Default::default()
            },
        )
        .await
        .expect("reply");
    assert_eq!(reply.status, "sent");
    let alice_inbox = svc
        .list_messages(
            &actx,
            &alice,
            MessageQuery {
                folder: Some("inbox".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        alice_inbox.data[0].subject.as_deref(),
        Some("Re: hello bob")
    );
    assert_eq!(
        alice_inbox.data[0].thread_id, sent_folder.data[0].thread_id,
        "the reply joins the thread"
    );

    // Nobody at that address: a bounce in the sender's inbox.
    let failed = svc
        .send_message(&actx, &alice, to("nobody@agents.localhost", "lost"))
        .await
        .expect("send");
    assert_eq!(failed.status, "failed");
    assert_eq!(events(&svc, "message.bounced").await.len(), 1);
    let alice_inbox = svc
        .list_messages(
            &actx,
            &alice,
            MessageQuery {
                folder: Some("inbox".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert!(
        alice_inbox
            .data
            .iter()
            .any(|m| m.subject.as_deref() == Some("Undelivered Mail Returned to Sender: lost"))
    );
}

/// Concurrent sends to the outside world are committed in shared
/// transactions (the group commit writes their sent copies, send rows and
/// queue rows together): the cap still refuses exactly the sends over it,
/// each accepted send has its own read copy in `sent` holding the bytes
/// that go out, its queue rows and its `message.sent` event; a draft sent
/// twice at once goes out once; the audit chain stays intact.
async fn remote_sends_committed_together(pg: bool) {
    let clock = ManualClock::new(1_795_888_800_000_000);
    let (svc, _guard) = open(pg, clock).await;
    let admin = Ctx::system("test");
    let policy = svc
        .create_policy(
            &admin,
            json!({ "name": "twenty-five", "sends_per_day": 25 }),
        )
        .await
        .expect("policy");
    let (id, ctx) = agent(&svc, "batcher", Some(&policy.id)).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (svc, ctx, id) = (svc.clone(), ctx.clone(), id.clone());
        calls.spawn(async move {
            svc.send_message(
                &ctx,
                &id,
                to(&format!("r{i}@remote.example"), &format!("s{i}")),
            )
            .await
        });
    }
    let mut accepted = vec![];
    let mut refused = 0;
    while let Some(r) = calls.join_next().await {
        match r.expect("task") {
            Ok(info) => accepted.push(info),
            Err(Error::RateLimited { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((accepted.len(), refused), (25, 5));
    assert_eq!(events(&svc, "quota.exceeded").await.len(), 5);
    let usage = svc.usage(&ctx, &id).await.expect("usage");
    assert_eq!(usage.sent_today, 25);
    let sent_events = events(&svc, "message.sent").await;
    assert_eq!(sent_events.len(), 25);
    let sent = svc
        .list_messages(
            &ctx,
            &id,
            MessageQuery {
                folder: Some("sent".into()),
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("sent folder");
    assert_eq!(sent.data.len(), 25);
    for info in &accepted {
        assert_eq!(info.status, "queued", "{info:?}");
        assert_eq!(info.recipients.len(), 1);
        assert_eq!(info.recipients[0].status, "queued");
        assert!(!info.recipients[0].local);
        let event = sent_events
            .iter()
            .find(|e| e["send_id"] == json!(info.send_id))
            .expect("a message.sent event per send");
        let copy = sent
            .data
            .iter()
            .find(|m| json!(m.id) == event["message_id"])
            .expect("the event names the sent copy");
        assert_eq!(json!(copy.thread_id), event["thread_id"]);
        assert!(!copy.unread, "a sent copy is read");
        let raw = svc
            .get_raw_message(&Ctx::system("test"), &id, &copy.id)
            .await
            .expect("raw");
        assert_eq!(hex_sha256(&raw.bytes), info.sha256);
    }
    // A draft sent twice at once goes out once.
    let (other, octx) = agent(&svc, "drafter", None).await;
    let draft = svc
        .create_draft(&octx, &other, to("someone@remote.example", "draft"))
        .await
        .expect("draft");
    let (a, b) = tokio::join!(
        svc.send_draft(&octx, &other, &draft.id),
        svc.send_draft(&octx, &other, &draft.id)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    assert!(svc.get_draft(&octx, &other, &draft.id).await.is_err());
    let report = svc.verify_audit(&admin).await.expect("verify");
    assert!(report.problem.is_none(), "{report:?}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(true).await
            }
        }
    };
}

both!(caps_and_policies);
both!(confirmation_is_two_step);
both!(local_delivery_names_the_sender);
both!(remote_sends_committed_together);
