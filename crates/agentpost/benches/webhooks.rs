//! Benchmark: webhook delivery throughput and lag. 100 endpoints (all on one
//! local receiver), events made by PATCHing an agent; each event fans out to
//! every endpoint. Reports events/s and deliveries/s from the first commit to
//! the receiver's last 2xx, and p50/p99 lag from an event's commit (its API
//! answer) to each receiver 2xx. SQLite with one server; PostgreSQL with one
//! and with two servers.
//! Run: `cargo bench -p agentpost --bench webhooks` (EVENTS=…, ENDPOINTS=…,
//! WRITERS=… to change the load).

#[path = "../tests/common/mod.rs"]
mod common;

use axum::extract::State;
use axum::routing::post;
use common::{Backend, Server, Store};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

type Arrivals = Arc<Mutex<Vec<(usize, Instant)>>>;

async fn receive(State(arr): State<Arrivals>, body: String) -> &'static str {
    let now = Instant::now();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Some(seq) = v
        .pointer("/data/changes/description")
        .and_then(|d| d.as_str())
        .and_then(|d| d.strip_prefix("seq-"))
        .and_then(|n| n.parse::<usize>().ok())
    {
        arr.lock().unwrap().push((seq, now));
    }
    "ok"
}

async fn run(
    backend: Backend,
    nodes: usize,
    endpoints: usize,
    events: usize,
    writers: usize,
) -> String {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let servers: Vec<Arc<Server>> = (0..nodes)
        .map(|_| {
            Arc::new(Server::start_with(
                &store,
                &["--webhooks-allow-private"],
                &[("AGENTPOST_LOG", "warn,agentpost=info")],
            ))
        })
        .collect();
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook/{n}", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s0 = servers[0].clone();
    for i in 0..endpoints {
        let (st, v) = s0
            .post("/v1/webhooks", &key, json!({ "url": format!("http://127.0.0.1:{port}/hook/{i}"), "event_types": ["agent.updated"] }))
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let mut agents = vec![];
    for w in 0..writers {
        agents.push(s0.agent(&key, &format!("bench{w}")).await.0);
    }
    let commits: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; events]));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for (w, agent) in agents.into_iter().enumerate() {
        let (server, key, next, commits) = (
            servers[w % nodes].clone(),
            key.clone(),
            next.clone(),
            commits.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return;
                }
                let (st, v) = server
                    .req(
                        reqwest::Method::PATCH,
                        &format!("/v1/agents/{agent}"),
                        &key,
                        Some(json!({ "description": format!("seq-{i}") })),
                    )
                    .await;
                assert_eq!(st, 200, "{v}");
                commits.lock().unwrap()[i] = Some(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let write_secs = start.elapsed().as_secs_f64();
    let want = events * endpoints;
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().unwrap().len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} deliveries arrived",
            arrivals.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arr = arrivals.lock().unwrap().clone();
    let last = arr.iter().map(|a| a.1).max().unwrap();
    let secs = last.duration_since(start).as_secs_f64();
    let commits = commits.lock().unwrap().clone();
    let mut lag: Vec<Duration> = arr
        .iter()
        .map(|(seq, at)| at.saturating_duration_since(commits[*seq].unwrap_or(start)))
        .collect();
    lag.sort();
    let name = match (backend, nodes) {
        (Backend::Sqlite, _) => "SQLite, 1 server".to_string(),
        (Backend::Postgres, n) => format!("PostgreSQL, {n} server{}", if n > 1 { "s" } else { "" }),
    };
    format!(
        "| {name} | {endpoints} | {events} | {want} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        events as f64 / write_secs,
        events as f64 / secs,
        want as f64 / secs,
        pct(&lag, 0.5),
        pct(&lag, 0.99),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let endpoints = env_num("ENDPOINTS", 100);
    let events = env_num("EVENTS", 100);
    let writers = env_num("WRITERS", 4);
    let mut rows = vec![];
    rows.push(run(Backend::Sqlite, 1, endpoints, events, writers).await);
    rows.push(run(Backend::Postgres, 1, endpoints, events, writers).await);
    rows.push(run(Backend::Postgres, 2, endpoints, events, writers).await);
    println!(
        "| store | endpoints | events | deliveries | events/s committed | events/s delivered | deliveries/s | lag p50 ms | lag p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
