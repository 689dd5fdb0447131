//! Several `serve` processes on one PostgreSQL: first start and provisioning
//! races resolve in the database, never in process memory.

mod common;

use common::{Backend, Server, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres() {
    let store = Store::new(Backend::Postgres);
    // Both start on an empty database at once: one organisation, one key.
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| Server::start(&store));
        let b = sc.spawn(|| Server::start(&store));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(store.sql("SELECT COUNT(*) FROM organisations"), "1");
    assert_eq!(
        store.sql("SELECT COUNT(*) FROM credentials WHERE kind = 'admin'"),
        "1"
    );
    let printed: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|s| {
            s.log_text()
                .lines()
                .filter(|l| l.trim_start().starts_with("ap_adm_"))
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        printed.len(),
        1,
        "exactly one server printed the first admin key"
    );
    let key = printed[0].clone();

    // The same address provisioned through both servers at the same instant.
    for round in 0..25 {
        let body = json!({ "local_part": format!("race{round}"), "sponsor": "o@example.com" });
        let (ra, rb) = tokio::join!(
            a.post("/v1/agents", &key, body.clone()),
            b.post("/v1/agents", &key, body)
        );
        let mut codes = [ra.0, rb.0];
        codes.sort();
        assert_eq!(codes, [201, 409], "round {round}: {ra:?} {rb:?}");
    }
    let (_, list) = a.get("/v1/agents?limit=200", &key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 25);
    // The audit chain stayed linear across both writers.
    let (_, v) = b.get("/v1/audit/verify", &key).await;
    assert_eq!(v["ok"], true, "{v}");
}
