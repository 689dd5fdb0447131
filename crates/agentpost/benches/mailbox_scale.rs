//! Benchmark: mailbox read latency at scale. Loads MESSAGES messages
//! (default 1,000,000) across AGENTS agents (default 10,000) through the
//! service layer's inbound delivery (`Ingest::deliver`, the path SMTP uses,
//! durable group commit included), on SQLite and on PostgreSQL, then starts
//! the real `agentpost serve` on that store and measures over HTTP, with
//! agent tokens, from random agents:
//!
//! - `GET /v1/agents/{id}/messages?limit=50` (first page), a cursor page,
//!   `folder=inbox&unread=true`, and `q=` full text (a common and a rare
//!   word);
//! - `GET /v1/agents/{id}/messages/{mid}` (the safe view);
//! - `GET /v1/agents/{id}/threads?limit=50`.
//!
//! Agent 0 is a busy mailbox that gets HOT_PERCENT (default 5) % of all
//! mail; it is measured on its own too, with a cursor page in the middle of
//! its mailbox.
//!
//! Run: `cargo bench -p agentpost --bench mailbox_scale`. Env: MESSAGES,
//! AGENTS, HOT_PERCENT, REQUESTS (per row, default 2000), CLIENTS
//! (concurrent HTTP clients, default 1), BACKENDS (`sqlite postgres`),
//! LOAD_CONCURRENCY (default 64). The loaded store is cached under
//! `$SCALE_CACHE` (default `$CARGO_TARGET_DIR/bench-mailbox-scale`) and a
//! PostgreSQL database `bench_scale_<agents>_<messages>_<hot>`, keyed by the
//! counts; `FRESH=1` reloads. `KEEP=0` deletes them afterwards.

#[path = "../tests/common/mod.rs"]
mod common;

use agentpost_core::clock::SystemClock;
use agentpost_core::{CoreConfig, Ctx, InboundDelivery, Ingest, NewAgent, Service, StoreLocation};
use common::{BIN, Server};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, so a cached dataset matches its key.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "invoice",
    "payment",
    "order",
    "shipping",
    "delivery",
    "account",
    "password",
    "meeting",
    "schedule",
    "report",
    "quarterly",
    "budget",
    "contract",
    "renewal",
    "support",
    "ticket",
    "refund",
    "subscription",
    "update",
    "release",
    "deploy",
    "server",
    "outage",
    "incident",
    "review",
    "feedback",
    "proposal",
    "project",
    "deadline",
    "launch",
    "customer",
    "partner",
    "pricing",
    "discount",
    "webinar",
    "newsletter",
    "security",
    "alert",
    "login",
    "verify",
    "travel",
    "booking",
    "hotel",
    "flight",
    "conference",
    "agenda",
    "minutes",
    "summary",
    "question",
    "request",
    "approval",
    "budgeting",
    "forecast",
    "hiring",
    "candidate",
    "interview",
    "onboarding",
    "offboarding",
    "laptop",
    "license",
    "compliance",
    "audit",
    "policy",
    "vacation",
    "holiday",
    "birthday",
    "lunch",
    "coffee",
    "weekly",
    "monthly",
];
/// In one message in about 5,000: the selective full-text query.
const RARE_WORD: &str = "zanzibar";
/// In about half of all messages: the unselective one.
const COMMON_WORD: &str = "regards";
const SENDER_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "vendor.test",
    "partner.test",
    "shop.test",
    "bank.test",
    "airline.test",
    "saas.test",
    "news.test",
];

struct Generated {
    rcpt: usize,
    raw: Vec<u8>,
}

/// Message `i` of the dataset: to one agent (agent 0 gets `hot` percent of
/// all mail), from one of ~2,000 senders; a third are replies to an earlier
/// message of the same agent's correspondence (same subject, References).
fn message(i: usize, agents: usize, hot: usize) -> Generated {
    let mut r = Rng::new(i as u64 + 1);
    let rcpt = if r.below(100) < hot {
        0
    } else {
        1 + r.below(agents.max(2) - 1)
    };
    let sender_n = r.below(2000);
    let sender = format!(
        "user{sender_n}@{}",
        SENDER_DOMAINS[sender_n % SENDER_DOMAINS.len()]
    );
    let name = format!("User {sender_n}");
    // Topic: a few hundred subjects per sender pair keep threads realistic.
    let topic = r.below(40);
    let subject_words: Vec<&str> = (0..3)
        .map(|k| WORDS[(sender_n * 7 + topic * 13 + k * 31) % WORDS.len()])
        .collect();
    let reply = r.below(3) == 0 && i > agents;
    let subject = if reply {
        format!("Re: {} #{topic}", subject_words.join(" "))
    } else {
        format!("{} #{topic}", subject_words.join(" "))
    };
    let mut body = String::new();
    let words = 120 + r.below(140); // ~1-2 KB of text
    for w in 0..words {
        body.push_str(WORDS[r.below(WORDS.len())]);
        body.push(if w % 14 == 13 { '\n' } else { ' ' });
    }
    if r.below(5000) == 0 {
        body.push_str(RARE_WORD);
        body.push('\n');
    }
    if r.below(2) == 0 {
        body.push_str("\nBest ");
        body.push_str(COMMON_WORD);
        body.push('\n');
    }
    let body = body.replace('\n', "\r\n");
    let mid = format!("<m{i}.{sender_n}@{}>", SENDER_DOMAINS[sender_n % 10]);
    let mut headers = format!(
        "From: {name} <{sender}>\r\nTo: agent{rcpt}@agents.localhost\r\nSubject: {subject}\r\n\
         Date: Mon, 1 Dec 2025 10:{:02}:{:02} +0000\r\nMessage-ID: {mid}\r\n",
        (i / 60) % 60,
        i % 60
    );
    if reply {
        // An earlier message of the same sender and topic (maybe to another
        // agent: then it threads by subject instead).
        let earlier = i - 1 - r.below(i.min(5000));
        let parent = format!("<m{earlier}.{sender_n}@{}>", SENDER_DOMAINS[sender_n % 10]);
        headers.push_str(&format!(
            "In-Reply-To: {parent}\r\nReferences: {parent}\r\n"
        ));
    }
    headers.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    let mut raw = headers.into_bytes();
    raw.extend_from_slice(body.as_bytes());
    Generated { rcpt, raw }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Dataset {
    backend: Backend,
    args: Vec<String>,
    manifest: Value,
    /// Deleted on drop unless kept.
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl Drop for Dataset {
    fn drop(&mut self) {
        if let Some(f) = self.cleanup.take() {
            f();
        }
    }
}

fn pg_admin() -> String {
    std::env::var("AGENTPOST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The PostgreSQL database of a dataset key.
fn key_db(key: &str) -> String {
    format!("bench_scale_{key}")
}

fn analyze(db: &str) {
    analyze_with(db, "ANALYZE");
}

fn analyze_with(db: &str, sql: &str) {
    let analyzed = Command::new("psql")
        .args([&pg_url(db), "-qtAc", sql])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(analyzed, "{sql} on {db} failed");
}

fn pg_url(db: &str) -> String {
    let admin = pg_admin();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin);
    format!("{base}/{db}")
}

fn psql(sql: &str) -> bool {
    Command::new("psql")
        .args([&pg_admin(), "-qtAc", sql])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cache_root() -> PathBuf {
    if let Ok(d) = std::env::var("SCALE_CACHE") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("bench-mailbox-scale")
}

async fn load(
    backend: Backend,
    agents: usize,
    messages: usize,
    hot: usize,
    fresh: bool,
    keep: bool,
) -> Dataset {
    let key = format!("{agents}_{messages}_{hot}");
    let root = cache_root();
    std::fs::create_dir_all(&root).expect("cache dir");
    let manifest_path = root.join(format!("{backend:?}-{key}.json").to_lowercase());
    let (location, args, cleanup): (StoreLocation, Vec<String>, Box<dyn FnOnce()>) = match backend {
        Backend::Sqlite => {
            let dir = root.join(format!("sqlite-{key}"));
            let (d, m) = (dir.clone(), manifest_path.clone());
            (
                StoreLocation::DataDir(dir.clone()),
                vec!["--data-dir".into(), dir.display().to_string()],
                Box::new(move || {
                    let _ = std::fs::remove_dir_all(d);
                    let _ = std::fs::remove_file(m);
                }),
            )
        }
        Backend::Postgres => {
            let db = key_db(&key);
            let (d, m) = (db.clone(), manifest_path.clone());
            (
                StoreLocation::Postgres(pg_url(&db)),
                vec!["--database-url".into(), pg_url(&db)],
                Box::new(move || {
                    psql(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"));
                    let _ = std::fs::remove_file(m);
                }),
            )
        }
    };
    let cached = (!fresh)
        .then(|| std::fs::read(&manifest_path).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|m| m["complete"] == json!(true));
    let cleanup = (!keep).then_some(cleanup);
    if let Some(manifest) = cached {
        eprintln!(
            "{backend:?}: using the cached dataset ({})",
            manifest_path.display()
        );
        return Dataset {
            backend,
            args,
            manifest,
            cleanup,
        };
    }
    // A fresh store.
    let _ = std::fs::remove_file(&manifest_path);
    match backend {
        Backend::Sqlite => {
            if let StoreLocation::DataDir(d) = &location {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        Backend::Postgres => {
            let db = key_db(&key);
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
            assert!(
                psql(&format!("CREATE DATABASE {db}")),
                "PostgreSQL at {} is needed",
                pg_admin()
            );
        }
    }
    let svc = Arc::new(
        Service::open(&location, CoreConfig::default(), Arc::new(SystemClock))
            .await
            .expect("open store"),
    );
    let boot = svc
        .bootstrap("agents.localhost", None)
        .await
        .expect("bootstrap")
        .expect("a fresh store");
    let admin_key = boot.admin_key.expect("generated key").secret;

    // Agents, 16 at a time.
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..16 {
        let (svc, next) = (svc.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = Ctx::system("bench");
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= agents {
                    return out;
                }
                let (agent, token) = svc
                    .create_agent(
                        &ctx,
                        NewAgent {
                            local_part: Some(format!("agent{i}")),
                            sponsor: Some("ops@example.com".into()),
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("create agent");
                out.push((i, agent.id.0.clone(), token.secret));
            }
        }));
    }
    let mut list = vec![];
    for t in tasks {
        list.extend(t.await.unwrap());
    }
    list.sort();
    eprintln!(
        "{backend:?}: {agents} agents in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Messages through the inbound path, LOAD_CONCURRENCY at a time.
    let ingest = Ingest::start(svc.clone());
    let conc = env_num("LOAD_CONCURRENCY", 64);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = vec![];
    // PostgreSQL's statistics during the load, as autovacuum keeps them on a
    // live server (it is off on this project's CI PostgreSQL): planned
    // without them, the committer's lookups scan whole young tables.
    let analyze_db = (backend == Backend::Postgres).then(|| key_db(&key));
    for _ in 0..conc {
        let (ingest, next, analyze_db) = (ingest.clone(), next.clone(), analyze_db.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return;
                }
                let g = message(i, agents, hot);
                let d = InboundDelivery {
                    client_ip: "127.0.0.1".into(),
                    helo: "bench.test".into(),
                    mail_from: "sender@example.org".into(),
                    rcpt_to: vec![format!("agent{}@agents.localhost", g.rcpt)],
                    tls: false,
                    auth_results: None,
                    dmarc: "none".into(),
                    dmarc_policy: None,
                    raw: g.raw,
                };
                ingest.deliver(d).await.expect("delivery");
                if i > 0 && i % 100_000 == 0 {
                    eprintln!("  {i} messages");
                }
                if let Some(db) = analyze_db.clone().filter(|_| i % 50_000 == 1_000) {
                    tokio::task::spawn_blocking(move || analyze(&db))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{backend:?}: {messages} messages in {secs:.0}s ({:.0}/s, {conc} concurrent deliveries)",
        messages as f64 / secs
    );
    drop(ingest);
    let manifest = json!({
        "complete": true,
        "admin_key": admin_key,
        "agents": list.iter().map(|(_, id, tok)| json!([id, tok])).collect::<Vec<_>>(),
        "messages": messages,
        "load_seconds": secs,
    });
    // Let the committer finish and the pool close before the server opens the store.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(svc);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).expect("manifest");
    Dataset {
        backend,
        args,
        manifest,
        cleanup,
    }
}

fn start_server(ds: &Dataset, dir: &Path) -> Server {
    let log = dir.join("server.log");
    let child = Command::new(BIN)
        .arg("serve")
        .args(&ds.args)
        .args(["--http", "127.0.0.1:0", "--log-format", "json"])
        .env("AGENTPOST_LOG", "warn,agentpost=info")
        .env("AGENTPOST_SMTP", "127.0.0.1:0")
        .env("AGENTPOST_SUBMISSION", "127.0.0.1:0")
        .env("AGENTPOST_SMTP_DNS", "offline")
        .env_remove("AGENTPOST_ADMIN_KEY_FILE")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn agentpost serve");
    let deadline = Instant::now() + Duration::from_secs(600);
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| {
                v.pointer("/fields/http")
                    .and_then(|h| h.as_str())
                    .map(String::from)
            })
        {
            break a;
        }
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    Server {
        child,
        base,
        log,
        http: reqwest::Client::new(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

/// One request shape: builds the path for a random agent (index, id) and
/// what it needs prepared (a cursor, a message id).
type Prep = Arc<Vec<(usize, String, String, String)>>; // (agent idx, id, token, path)

/// Times REQUESTS requests over the prepared paths from CLIENTS clients.
async fn measure(
    server: &Arc<Server>,
    prepared: Prep,
    requests: usize,
    clients: usize,
) -> (Vec<Duration>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..clients {
        let (server, prepared, next) = (server.clone(), prepared.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut items = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return (lat, items);
                }
                let (_, _, token, path) = &prepared[i % prepared.len()];
                let t = Instant::now();
                let (st, body) = server.get(path, token).await;
                lat.push(t.elapsed());
                assert_eq!(st, 200, "{path}: {body}");
                items += body["data"].as_array().map_or(1, |a| a.len());
            }
        }));
    }
    let mut lat = vec![];
    let mut items = 0;
    for t in tasks {
        let (l, n) = t.await.unwrap();
        lat.extend(l);
        items += n;
    }
    lat.sort();
    (lat, items)
}

async fn run(ds: &Dataset, requests: usize, clients: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let server = Arc::new(start_server(ds, dir.path()));
    let startup = t.elapsed().as_secs_f64();
    let agents: Vec<(String, String)> = ds.manifest["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().into(), a[1].as_str().unwrap().into()))
        .collect();
    let mut rng = Rng::new(42);
    let sample: Vec<usize> = (0..requests.min(2000))
        .map(|_| 1 + rng.below(agents.len().max(2) - 1))
        .collect();
    let at = |i: usize, path: String| (i, agents[i].0.clone(), agents[i].1.clone(), path);
    let mut rows = vec![];
    let mut row = |name: &str, lat: &[Duration], items: usize| {
        rows.push(format!(
            "| {:?} | {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
            ds.backend,
            lat.len(),
            pct(lat, 0.50),
            pct(lat, 0.99),
            pct(lat, 1.0),
            items as f64 / lat.len() as f64
        ));
        eprintln!("{}", rows.last().unwrap());
    };

    // Warm-up and preparation (untimed): each sampled agent's first page
    // gives a message id and the cursor of its second page.
    let mut msgs = vec![];
    let mut cursors = vec![];
    for &i in &sample {
        let (st, v) = server
            .get(
                &format!("/v1/agents/{}/messages?limit=50", agents[i].0),
                &agents[i].1,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        if let Some(m) = v["data"]
            .as_array()
            .and_then(|a| a.get(rng.below(a.len().max(1))))
        {
            msgs.push(at(
                i,
                format!(
                    "/v1/agents/{}/messages/{}",
                    agents[i].0,
                    m["id"].as_str().unwrap()
                ),
            ));
        }
        if let Some(c) = v["next_cursor"].as_str() {
            cursors.push(at(
                i,
                format!("/v1/agents/{}/messages?limit=50&cursor={c}", agents[i].0),
            ));
        }
    }
    let shapes: Vec<(&str, Vec<_>)> = vec![
        (
            "messages, first page",
            sample
                .iter()
                .map(|&i| at(i, format!("/v1/agents/{}/messages?limit=50", agents[i].0)))
                .collect(),
        ),
        ("messages, cursor page 2", cursors),
        (
            "messages, folder=inbox&unread=true",
            sample
                .iter()
                .map(|&i| {
                    at(
                        i,
                        format!(
                            "/v1/agents/{}/messages?limit=50&folder=inbox&unread=true",
                            agents[i].0
                        ),
                    )
                })
                .collect(),
        ),
        (
            "messages, q=common word",
            sample
                .iter()
                .map(|&i| {
                    at(
                        i,
                        format!(
                            "/v1/agents/{}/messages?limit=50&q={COMMON_WORD}",
                            agents[i].0
                        ),
                    )
                })
                .collect(),
        ),
        (
            "messages, q=two words",
            sample
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    at(
                        i,
                        format!(
                            "/v1/agents/{}/messages?limit=50&q={}+{}",
                            agents[i].0,
                            WORDS[k % WORDS.len()],
                            WORDS[(k * 7 + 3) % WORDS.len()]
                        ),
                    )
                })
                .collect(),
        ),
        (
            "messages, q=rare word",
            sample
                .iter()
                .map(|&i| {
                    at(
                        i,
                        format!("/v1/agents/{}/messages?limit=50&q={RARE_WORD}", agents[i].0),
                    )
                })
                .collect(),
        ),
        ("message, safe view", msgs),
        (
            "threads, first page",
            sample
                .iter()
                .map(|&i| at(i, format!("/v1/agents/{}/threads?limit=50", agents[i].0)))
                .collect(),
        ),
    ];
    for (name, prepared) in shapes {
        if prepared.is_empty() {
            continue;
        }
        let (lat, items) = measure(&server, Arc::new(prepared), requests, clients).await;
        row(name, &lat, items);
    }

    // The busy mailbox (agent 0): a cursor from the middle of it.
    let (hot_id, hot_tok) = agents[0].clone();
    let (_, folders) = server
        .get(&format!("/v1/agents/{hot_id}/folders"), &hot_tok)
        .await;
    let hot_total = folders["folders"][0]["total"].as_i64().unwrap_or(0);
    let mut cursor = None;
    let mut path = format!("/v1/agents/{hot_id}/messages?limit=200");
    for _ in 0..(hot_total / 2 / 200) {
        let (_, v) = server.get(&path, &hot_tok).await;
        match v["next_cursor"].as_str() {
            Some(c) => {
                cursor = Some(c.to_string());
                path = format!("/v1/agents/{hot_id}/messages?limit=200&cursor={c}");
            }
            None => break,
        }
    }
    let hot = |p: String| Arc::new(vec![(0, hot_id.clone(), hot_tok.clone(), p)]);
    let n = (requests / 4).max(50);
    let mut hot_shapes = vec![
        (
            format!("busy mailbox ({hot_total} msgs), first page"),
            hot(format!("/v1/agents/{hot_id}/messages?limit=50")),
        ),
        (
            "busy mailbox, unread".into(),
            hot(format!(
                "/v1/agents/{hot_id}/messages?limit=50&folder=inbox&unread=true"
            )),
        ),
        (
            "busy mailbox, q=common word".into(),
            hot(format!(
                "/v1/agents/{hot_id}/messages?limit=50&q={COMMON_WORD}"
            )),
        ),
        (
            "busy mailbox, q=rare word".into(),
            hot(format!(
                "/v1/agents/{hot_id}/messages?limit=50&q={RARE_WORD}"
            )),
        ),
        (
            "busy mailbox, threads".into(),
            hot(format!("/v1/agents/{hot_id}/threads?limit=50")),
        ),
    ];
    if let Some(c) = cursor {
        hot_shapes.insert(
            1,
            (
                "busy mailbox, cursor page in the middle".into(),
                hot(format!("/v1/agents/{hot_id}/messages?limit=50&cursor={c}")),
            ),
        );
    }
    for (name, prepared) in hot_shapes {
        let (lat, items) = measure(&server, prepared, n, clients).await;
        row(&name, &lat, items);
    }
    eprintln!(
        "{:?}: server started on the loaded store in {startup:.1}s",
        ds.backend
    );
    rows
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let messages = env_num("MESSAGES", 1_000_000);
    let agents = env_num("AGENTS", 10_000).max(2);
    let hot = env_num("HOT_PERCENT", 5).min(100);
    let requests = env_num("REQUESTS", 2000);
    let clients = env_num("CLIENTS", 1).max(1);
    let fresh = std::env::var("FRESH").is_ok_and(|v| v == "1");
    let keep = !std::env::var("KEEP").is_ok_and(|v| v == "0");
    let backends: Vec<Backend> = std::env::var("BACKENDS")
        .unwrap_or_else(|_| "sqlite postgres".into())
        .split_whitespace()
        .filter_map(|b| match b {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" => Some(Backend::Postgres),
            _ => None,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = vec![];
    for backend in backends {
        let ds = rt.block_on(load(backend, agents, messages, hot, fresh, keep));
        if backend == Backend::Postgres {
            // A bulk load leaves PostgreSQL without statistics until
            // autovacuum gets to it; a live server has them. Without them the
            // planner guesses a few rows per agent and sorts whole mailboxes.
            // VACUUM as well: it sets the pages' hint bits and visibility
            // map, which the first reads after a bulk load would otherwise
            // do (dirtying pages, writing them out at checkpoints).
            analyze_with(
                &key_db(&format!("{agents}_{messages}_{hot}")),
                "VACUUM ANALYZE",
            );
        }
        out.extend(rt.block_on(run(&ds, requests, clients)));
    }
    println!(
        "\n{messages} messages, {agents} agents ({hot}% to one busy mailbox), {clients} client(s)\n"
    );
    println!("| backend | request | n | p50 ms | p99 ms | max ms | items/response |");
    println!("|---|---|---|---|---|---|---|");
    for r in out {
        println!("{r}");
    }
}
