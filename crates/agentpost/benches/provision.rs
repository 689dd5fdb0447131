//! Benchmark: provision 10,000 agents over HTTP, then list them all, on
//! SQLite and on PostgreSQL. Reports agents/s, p50/p99 latency and the
//! server's peak RSS. Run: `cargo bench -p agentpost --bench provision`
//! (AGENTS=… CONCURRENCY=… to change the load).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Backend, Server, Store};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

async fn run(backend: Backend, agents: usize, concurrency: usize) -> String {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let server = Arc::new(Server::start_with(
        &store,
        &[],
        &[("AGENTPOST_LOG", "warn,agentpost=info")],
    ));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (server, key, next) = (server.clone(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= agents {
                    return lat;
                }
                let t = Instant::now();
                let (st, body) = server
                    .post(
                        "/v1/agents",
                        &key,
                        json!({ "local_part": format!("bench{i}"), "sponsor": "ops@example.com" }),
                    )
                    .await;
                assert_eq!(st, 201, "{body}");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let provision_secs = start.elapsed().as_secs_f64();
    lat.sort();

    // List them all, page by page (200 per page).
    let start = Instant::now();
    let mut cursor = String::new();
    let mut listed = 0;
    let mut page_lat = vec![];
    loop {
        let t = Instant::now();
        let (st, page) = server
            .get(&format!("/v1/agents?limit=200{cursor}"), &key)
            .await;
        page_lat.push(t.elapsed());
        assert_eq!(st, 200);
        listed += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let list_secs = start.elapsed().as_secs_f64();
    page_lat.sort();
    assert_eq!(listed, agents);
    let rss = peak_rss_mib(server.child.id());
    format!(
        "| {:?} | {agents} | {concurrency} | {:.0} | {:.1} | {:.1} | {:.0} ({} pages of 200, p99 {:.1} ms) | {:.0} |",
        backend,
        agents as f64 / provision_secs,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        listed as f64 / list_secs,
        page_lat.len(),
        pct(&page_lat, 0.99),
        rss
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let agents = env_num("AGENTS", 10_000);
    let concurrency = env_num("CONCURRENCY", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| backend | agents | concurrency | agents/s | p50 ms | p99 ms | listed agents/s | server peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        println!("{}", rt.block_on(run(backend, agents, concurrency)));
    }
}
