//! Webhooks end to end: the real server delivers to a receiver written in
//! Python that verifies every signature with the `standardwebhooks` package
//! from PyPI. Retries while the receiver is down, a restart between
//! attempts, replay with the same `webhook-id`, secret rotation, refusal of
//! private targets, automatic disabling, and two servers sharing one queue.

mod common;

use common::{Backend, Server, Store};
use serde_json::{Value, json};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCHEDULE: &str = "AGENTPOST_WEBHOOK_RETRY_SCHEDULE";
const ALLOW: &str = "--webhooks-allow-private";

/// The Python receiver (tests/py/webhook_receiver.py); killed on drop.
struct Receiver {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &Path, port: Option<u16>, secrets: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(dir.join("port"));
        std::fs::write(dir.join("secrets"), secrets.join("\n")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/webhook_receiver.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(dir);
        if let Some(p) = port {
            cmd.arg(p.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with `pip install standardwebhooks`");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.join("port")) {
                break p.trim().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the Python receiver did not start (is `standardwebhooks` installed?)"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set_status(&self, code: u16) {
        std::fs::write(self.dir.join("status"), code.to_string()).unwrap();
    }

    fn set_secrets(&self, secrets: &[&str]) {
        std::fs::write(self.dir.join("secrets"), secrets.join("\n")).unwrap();
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["payload"]["type"] == kind)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it yields a value.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn admin_key(store: &Store) -> String {
    store.init(&[])["admin_key"].as_str().unwrap().to_string()
}

async fn create_hook(s: &Server, key: &str, url: &str, types: Value) -> (String, String) {
    let (st, v) = s
        .post(
            "/v1/webhooks",
            key,
            json!({ "url": url, "event_types": types, "description": "ops" }),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v}");
    (v["webhook"]["id"].as_str().unwrap().to_string(), secret)
}

async fn deliveries(s: &Server, key: &str, hook: &str) -> Vec<Value> {
    let (st, v) = s.get(&format!("/v1/webhooks/{hook}/deliveries"), key).await;
    assert_eq!(st, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

async fn patch_agent(s: &Server, key: &str, agent: &str, description: &str) {
    let (st, v) = s
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{agent}"),
            key,
            Some(json!({ "description": description })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Receiver down for the first attempts, then up: delivered, signed, and the
/// secret appears nowhere but in the creation answer.
async fn delivered_after_receiver_comes_up(backend: Backend) {
    let store = Store::new(backend);
    let key = admin_key(&store);
    let s = Server::start_with(&store, &[ALLOW], &[(SCHEDULE, "1s,1s,1s,1s,1s,1s,1s,1s")]);
    let port = free_port();
    let (hook, secret) = create_hook(
        &s,
        &key,
        &format!("http://127.0.0.1:{port}/hook"),
        json!(["agent.*"]),
    )
    .await;
    let (agent, _) = s.agent(&key, "watched").await;
    let failed = eventually(30, "two failed attempts", || async {
        let d = deliveries(&s, &key, &hook).await;
        d.into_iter()
            .find(|d| d["attempts"].as_array().is_some_and(|a| a.len() >= 2))
    })
    .await;
    let first = &failed["attempts"][0];
    assert!(
        first["status_code"].is_null() && first["error"].as_str().unwrap().contains("connect"),
        "{failed}"
    );
    assert_eq!(failed["status"], "pending");

    let rx = Receiver::start(&store.dir.path().join("rx"), Some(port), &[&secret]);
    let got = eventually(30, "the delivery", || async {
        rx.of_type("agent.created").into_iter().next()
    })
    .await;
    assert_eq!(got["verified"], true, "{got}");
    assert_eq!(got["payload"]["agent_id"], agent.as_str());
    assert_eq!(got["webhook_id"], failed["webhook_id"]);
    let done = eventually(10, "succeeded", || async {
        deliveries(&s, &key, &hook)
            .await
            .into_iter()
            .find(|d| d["status"] == "succeeded")
    })
    .await;
    let attempts = done["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{done}");
    assert_eq!(attempts.last().unwrap()["status_code"], 200);
    assert!(attempts.last().unwrap()["latency_ms"].as_i64().unwrap() >= 0);
    // The filter: agent.* only, so the token.created of the same call is not sent.
    assert!(rx.of_type("token.created").is_empty());

    let key_part = secret.trim_start_matches("whsec_");
    let (_, list) = s.get("/v1/webhooks", &key).await;
    let (_, audit) = s.get("/v1/audit?limit=200", &key).await;
    let (_, events) = s.get("/v1/events?limit=200", &key).await;
    for (what, text) in [
        ("listing", list.to_string()),
        ("audit", audit.to_string()),
        ("events", events.to_string()),
        ("log", s.log_text()),
    ] {
        assert!(
            !text.contains(key_part),
            "the webhook secret leaked into the {what}"
        );
    }
    assert_eq!(list["data"][0]["id"], hook.as_str());
    assert!(audit.to_string().contains("webhook.create"));
}
both_backends!(
    delivered_after_receiver_comes_up,
    crate::delivered_after_receiver_comes_up
);

/// A restart between attempts: the schedule continues where it was.
async fn restart_continues_schedule(backend: Backend) {
    let store = Store::new(backend);
    let key = admin_key(&store);
    let env = [(SCHEDULE, "2s,2s,2s,2s,2s,2s,2s")];
    let s = Server::start_with(&store, &[ALLOW], &env);
    let port = free_port();
    let (hook, secret) = create_hook(
        &s,
        &key,
        &format!("http://127.0.0.1:{port}/hook"),
        json!(["agent.created"]),
    )
    .await;
    s.agent(&key, "restarted").await;
    eventually(30, "a failed attempt", || async {
        deliveries(&s, &key, &hook)
            .await
            .into_iter()
            .find(|d| !d["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    drop(s);
    let rx = Receiver::start(&store.dir.path().join("rx"), Some(port), &[&secret]);
    let s = Server::start_with(&store, &[ALLOW], &env);
    let got = eventually(30, "the delivery after the restart", || async {
        rx.of_type("agent.created").into_iter().next()
    })
    .await;
    assert_eq!(got["verified"], true, "{got}");
    let d = eventually(10, "succeeded", || async {
        deliveries(&s, &key, &hook)
            .await
            .into_iter()
            .find(|d| d["status"] == "succeeded")
    })
    .await;
    let numbers: Vec<i64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert!(numbers.len() >= 2, "{d}");
    assert_eq!(
        numbers,
        (1..=numbers.len() as i64).collect::<Vec<_>>(),
        "attempts continue across the restart: {d}"
    );
    assert_eq!(rx.of_type("agent.created").len(), 1);
}
both_backends!(
    restart_continues_schedule,
    crate::restart_continues_schedule
);

/// Replay (one event; every failed delivery since a time) re-sends with the
/// same webhook-id; rotation signs with both secrets; the test ping.
async fn replay_rotation_and_test(backend: Backend) {
    let store = Store::new(backend);
    let key = admin_key(&store);
    let s = Server::start_with(&store, &[ALLOW], &[(SCHEDULE, "1s")]);
    let rx = Receiver::start(&store.dir.path().join("rx"), None, &[]);
    let (hook, s1) = create_hook(&s, &key, &rx.url(), json!(["agent.*"])).await;
    rx.set_secrets(&[&s1]);
    let (agent, _) = s.agent(&key, "replayed").await;
    let first = eventually(30, "first delivery", || async {
        rx.of_type("agent.created").into_iter().next()
    })
    .await;
    assert_eq!(first["verified"], true, "{first}");
    let event_id = first["payload"]["id"].as_i64().unwrap();
    let (st, v) = s
        .post(
            &format!("/v1/webhooks/{hook}/replay"),
            &key,
            json!({ "event_id": event_id }),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let again = eventually(30, "the replay", || async {
        let all = rx.of_type("agent.created");
        (all.len() >= 2).then(|| all[1].clone())
    })
    .await;
    assert_eq!(
        again["webhook_id"], first["webhook_id"],
        "replay keeps the webhook-id"
    );
    assert_eq!(again["verified"], true);

    // Rotation: both secrets sign during the overlap.
    let (st, v) = s
        .post(
            &format!("/v1/webhooks/{hook}/rotate-secret"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let s2 = v["secret"].as_str().unwrap().to_string();
    assert!(
        v["webhook"]["previous_secret_valid_until"].is_string(),
        "{v}"
    );
    rx.set_secrets(&[&s1, &s2]);
    patch_agent(&s, &key, &agent, "after rotation").await;
    let rotated = eventually(30, "a delivery after rotation", || async {
        rx.of_type("agent.updated").into_iter().next()
    })
    .await;
    assert_eq!(rotated["signatures"], 2, "{rotated}");
    assert_eq!(rotated["verified_by"], json!([0, 1]), "{rotated}");

    // Failed deliveries since a time are re-sent with their webhook-id.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rx.set_status(500);
    patch_agent(&s, &key, &agent, "receiver failing").await;
    let failed = eventually(30, "a failed delivery", || async {
        let (_, v) = s
            .get(
                &format!("/v1/webhooks/{hook}/deliveries?status=failed"),
                &key,
            )
            .await;
        v["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await;
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        2,
        "one retry with schedule 1s: {failed}"
    );
    assert_eq!(failed["attempts"][0]["status_code"], 500);
    rx.set_status(200);
    let (st, v) = s
        .post(
            &format!("/v1/webhooks/{hook}/replay"),
            &key,
            json!({ "since": since }),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["deliveries"], 1, "{v}");
    eventually(30, "the replayed failure", || async {
        let ok: Vec<Value> = rx
            .received()
            .into_iter()
            .filter(|r| r["webhook_id"] == failed["webhook_id"])
            .collect();
        (ok.len() == 3).then_some(())
    })
    .await;
    let (st, v) = s
        .post(&format!("/v1/webhooks/{hook}/replay"), &key, json!({}))
        .await;
    assert_eq!((st, v["field"].as_str()), (422, Some("event_id")), "{v}");

    // The test ping.
    let (st, v) = s
        .post(&format!("/v1/webhooks/{hook}/test"), &key, json!({}))
        .await;
    assert_eq!(st, 202, "{v}");
    let ping = eventually(30, "the test ping", || async {
        rx.of_type("webhook.test").into_iter().next()
    })
    .await;
    assert_eq!(ping["verified"], true);
    assert_eq!(ping["webhook_id"], v["webhook_id"]);
}
both_backends!(replay_rotation_and_test, crate::replay_rotation_and_test);

/// Private targets are refused at creation, and again at delivery time.
async fn private_targets_refused(backend: Backend) {
    let store = Store::new(backend);
    let key = admin_key(&store);
    let rx = Receiver::start(&store.dir.path().join("rx"), None, &[]);
    let hook = {
        let s = Server::start_with(&store, &[ALLOW], &[]);
        create_hook(&s, &key, &rx.url(), json!(["agent.*"])).await.0
    };
    let s = Server::start(&store);
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.0.0.1/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "ftp://example.com/",
        "not a url",
    ] {
        let (st, v) = s.post("/v1/webhooks", &key, json!({ "url": url })).await;
        assert_eq!(st, 422, "{url}: {v}");
        assert_eq!(v["field"], "url", "{v}");
    }
    let (st, v) = s
        .post("/v1/webhooks", &key, json!({ "url": "http://10.0.0.1/x" }))
        .await;
    assert!(
        v["detail"].as_str().unwrap().contains("private"),
        "{st} {v}"
    );
    let (st, v) = s
        .post(
            "/v1/webhooks",
            &key,
            json!({ "url": "https://example.com/x", "event_types": ["Agent"] }),
        )
        .await;
    assert_eq!((st, v["field"].as_str()), (422, Some("event_types")), "{v}");
    let (_, token) = s.agent(&key, "nosy").await;
    let (st, _) = s.get("/v1/webhooks", &token).await;
    assert_eq!(st, 403);
    let (st, _) = s
        .post(
            "/v1/webhooks",
            &token,
            json!({ "url": "https://example.com/x" }),
        )
        .await;
    assert_eq!(st, 403);
    // Delivery time: the endpoint was accepted by a server that allowed it;
    // this one does not, so the attempt is refused before connecting.
    let d = eventually(30, "a refused attempt", || async {
        deliveries(&s, &key, &hook)
            .await
            .into_iter()
            .find(|d| !d["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    let err = d["attempts"][0]["error"].as_str().unwrap();
    assert!(err.contains("loopback"), "{d}");
    assert!(rx.received().is_empty());
}
both_backends!(private_targets_refused, crate::private_targets_refused);

/// `410 Gone` disables at once; days of failure (here: 3 s) disable too,
/// each with an event and an audit entry.
async fn endpoints_get_disabled(backend: Backend) {
    let store = Store::new(backend);
    let key = admin_key(&store);
    let s = Server::start_with(
        &store,
        &[ALLOW],
        &[
            (SCHEDULE, "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"),
            ("AGENTPOST_WEBHOOK_DISABLE_AFTER", "3s"),
        ],
    );
    let gone = Receiver::start(&store.dir.path().join("gone"), None, &[]);
    gone.set_status(410);
    let failing = Receiver::start(&store.dir.path().join("failing"), None, &[]);
    failing.set_status(503);
    let (h_gone, _) = create_hook(&s, &key, &gone.url(), json!(["agent.*"])).await;
    let (h_fail, _) = create_hook(&s, &key, &failing.url(), json!(["agent.*"])).await;
    s.agent(&key, "unlucky").await;
    for (hook, reason) in [(&h_gone, "410"), (&h_fail, "failed for 3 s")] {
        let w = eventually(30, "the endpoint disabled", || async {
            let (_, w) = s.get(&format!("/v1/webhooks/{hook}"), &key).await;
            (w["enabled"] == false).then_some(w)
        })
        .await;
        assert!(
            w["disabled_reason"].as_str().unwrap().contains(reason),
            "{w}"
        );
    }
    assert_eq!(gone.received().len(), 1, "no retries after 410");
    let (_, ev) = s.get("/v1/events?type=webhook.disabled", &key).await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 2, "{ev}");
    let (_, audit) = s.get("/v1/audit?action=webhook.disable", &key).await;
    let entries = audit["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert!(entries.iter().all(|e| e["actor"]["kind"] == "system"));
    // Re-enable; the failed deliveries can then be replayed.
    failing.set_status(200);
    let (st, w) = s
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{h_fail}"),
            &key,
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!((st, &w["enabled"]), (200, &json!(true)), "{w}");
    let (st, v) = s
        .post(
            &format!("/v1/webhooks/{h_fail}/replay"),
            &key,
            json!({ "since": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    eventually(30, "the replayed delivery", || async {
        deliveries(&s, &key, &h_fail)
            .await
            .into_iter()
            .find(|d| d["status"] == "succeeded")
    })
    .await;
    let (st, _) = s
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{h_gone}"),
            &key,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s.get(&format!("/v1/webhooks/{h_gone}"), &key).await;
    assert_eq!(st, 404);
}
both_backends!(endpoints_get_disabled, crate::endpoints_get_disabled);

/// Two servers on one PostgreSQL database: every delivery is made once,
/// and both nodes take part (SKIP LOCKED leases, LISTEN/NOTIFY wake-ups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue() {
    let store = Store::new(Backend::Postgres);
    let key = admin_key(&store);
    let a = Server::start_with(&store, &[ALLOW], &[]);
    let b = Server::start_with(&store, &[ALLOW], &[]);
    let rx = Receiver::start(&store.dir.path().join("rx"), None, &[]);
    std::fs::write(rx.dir.join("delay"), "0.05").unwrap();
    let (_hook, secret) = create_hook(&a, &key, &rx.url(), json!(["agent.created"])).await;
    rx.set_secrets(&[&secret]);
    let n = 40;
    for i in 0..n {
        let s = if i % 2 == 0 { &a } else { &b };
        s.agent(&key, &format!("node{i}")).await;
    }
    let got = eventually(60, "every delivery", || async {
        let r = rx.of_type("agent.created");
        (r.len() >= n).then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_after = rx.of_type("agent.created");
    assert_eq!(got_after.len(), n, "each delivery once");
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    assert!(got.iter().all(|r| r["verified"] == true));
    let count = |s: &Server| s.log_text().matches("webhook delivered").count();
    let (ca, cb) = (count(&a), count(&b));
    assert_eq!(ca + cb, n, "a={ca} b={cb}");
    assert!(ca > 0 && cb > 0, "both nodes deliver: a={ca} b={cb}");
}
