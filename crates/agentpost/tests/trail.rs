//! The audit trail is tamper-evident, and no secret ever lands in logs, the
//! database or an audit entry — on both backends.

mod common;

use common::{Backend, Server, Store, cli};
use serde_json::{Value, json};

fn verify(store: &Store) -> (i32, Value) {
    let mut args = vec!["audit", "verify", "--json"];
    let store_args = store.args();
    args.extend(store_args.iter().map(String::as_str));
    let (code, out, err) = cli(&args, &[], store.dir.path());
    (
        code,
        serde_json::from_str(&out)
            .unwrap_or_else(|_| panic!("verify printed no JSON: {out} {err}")),
    )
}

async fn tamper(backend: Backend) {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    {
        let s = Server::start(&store);
        for i in 0..4 {
            s.agent(&key, &format!("audited{i}")).await;
        }
    }
    let (code, r) = verify(&store);
    assert_eq!(code, 0, "untouched chain must verify: {r}");
    assert!(r["problem"].is_null());
    let n = r["entries"].as_i64().unwrap();
    assert!(n >= 9, "init + 4 agents with their tokens: {r}");

    // Edited: a changed detail in entry 4.
    let original = store.sql("SELECT details FROM audit_log WHERE id = 4");
    store.sql(r#"UPDATE audit_log SET details = '{"address":"someone-else@agents.localhost"}' WHERE id = 4"#);
    let (code, r) = verify(&store);
    assert_eq!(
        (
            code,
            r["problem"]["entry_id"].as_i64(),
            r["problem"]["kind"].as_str()
        ),
        (2, Some(4), Some("edited")),
        "{r}"
    );
    store.sql(&format!(
        "UPDATE audit_log SET details = '{}' WHERE id = 4",
        original.replace('\'', "''")
    ));
    assert_eq!(verify(&store).0, 0, "restored chain verifies again");

    // Reordered: entries 5 and 6 swap places.
    store.sql("UPDATE audit_log SET id = -6 WHERE id = 6");
    store.sql("UPDATE audit_log SET id = 6 WHERE id = 5");
    store.sql("UPDATE audit_log SET id = 5 WHERE id = -6");
    let (code, r) = verify(&store);
    assert_eq!(
        (code, r["problem"]["entry_id"].as_i64()),
        (2, Some(5)),
        "{r}"
    );
    store.sql("UPDATE audit_log SET id = -6 WHERE id = 6");
    store.sql("UPDATE audit_log SET id = 6 WHERE id = 5");
    store.sql("UPDATE audit_log SET id = 5 WHERE id = -6");
    assert_eq!(verify(&store).0, 0);

    // Deleted: entry 3 vanishes; then the newest vanishes (truncation).
    let row3 = store.sql("SELECT COUNT(*) FROM audit_log WHERE id = 3");
    assert_eq!(row3, "1");
    store.sql("CREATE TABLE audit_backup AS SELECT * FROM audit_log WHERE id = 3");
    store.sql("DELETE FROM audit_log WHERE id = 3");
    let (code, r) = verify(&store);
    assert_eq!(
        (
            code,
            r["problem"]["entry_id"].as_i64(),
            r["problem"]["kind"].as_str()
        ),
        (2, Some(3), Some("deleted")),
        "{r}"
    );
    store.sql("INSERT INTO audit_log SELECT * FROM audit_backup");
    assert_eq!(verify(&store).0, 0);
    store.sql(&format!("DELETE FROM audit_log WHERE id = {n}"));
    let (code, r) = verify(&store);
    assert_eq!(
        (
            code,
            r["problem"]["entry_id"].as_i64(),
            r["problem"]["kind"].as_str()
        ),
        (2, Some(n), Some("truncated")),
        "{r}"
    );

    // Export prints every entry, oldest first, as JSON lines.
    let mut args = vec!["audit", "export", "--format", "jsonl"];
    let store_args = store.args();
    args.extend(store_args.iter().map(String::as_str));
    let (code, out, _) = cli(&args, &[], store.dir.path());
    assert_eq!(code, 0);
    let ids: Vec<i64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..n).collect::<Vec<_>>());
}
both_backends!(audit_verify_names_the_tampered_entry, super::tamper);

async fn secrets(backend: Backend) {
    let store = Store::new(backend);
    let init_key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let s = Server::start(&store);
    let mut secrets = vec![init_key.clone()];
    let mut take = |v: &Value| {
        let found = v["secret"]
            .as_str()
            .or(v["token"]["secret"].as_str())
            .or(v["data"]["agentpost_token"].as_str());
        secrets.push(
            found
                .unwrap_or_else(|| panic!("no secret in {v}"))
                .to_string(),
        );
    };

    // Every way a secret is minted, used, rotated, replayed and revoked.
    let (_, k) = s
        .post("/v1/admin-keys", &init_key, json!({ "name": "second" }))
        .await;
    take(&k);
    let key = k["secret"].as_str().unwrap().to_string();
    let (_, a) = s
        .post(
            "/v1/agents",
            &key,
            json!({ "local_part": "keeper", "sponsor": "o@example.com" }),
        )
        .await;
    take(&a);
    let id = a["agent"]["id"].as_str().unwrap().to_string();
    let (_, g) = s
        .post(
            "/v3/connect/custom",
            &key,
            json!({ "provider": "nylas", "settings": { "email": "grant@agents.localhost" } }),
        )
        .await;
    take(&g);
    let (_, t) = s
        .post(
            &format!("/v1/agents/{id}/tokens"),
            &key,
            json!({ "name": "t" }),
        )
        .await;
    take(&t);
    let tid = t["credential"]["id"].as_str().unwrap().to_string();
    let (_, r) = s
        .post(
            &format!("/v1/agents/{id}/tokens/{tid}/rotate"),
            &key,
            json!({}),
        )
        .await;
    take(&r);
    let (_, apr) = s
        .post("/v1/approvers", &key, json!({ "email": "o@example.com" }))
        .await;
    take(&apr);
    let (_, kr) = s
        .post(
            &format!(
                "/v1/admin-keys/{}/rotate",
                k["credential"]["id"].as_str().unwrap()
            ),
            &init_key,
            json!({}),
        )
        .await;
    take(&kr);
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let v: Value = http
            .post(format!("{}/v1/agents", s.base))
            .bearer_auth(&key)
            .header("Idempotency-Key", "secret-replay")
            .json(&json!({ "local_part": "replayed", "sponsor": "o@example.com" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        take(&v);
    }
    for sec in secrets.clone() {
        s.get("/v1/me", &sec).await;
        // A failed attempt with a near-miss of each secret.
        s.get("/v1/me", &format!("{}x", &sec[..sec.len() - 1]))
            .await;
    }
    assert_eq!(
        s.post(
            &format!("/v1/agents/{id}/tokens/{tid}/revoke"),
            &key,
            json!({})
        )
        .await
        .0,
        200
    );
    s.post(&format!("/v1/agents/{id}/decommission"), &key, json!({}))
        .await;

    // Collect every audit entry through the API.
    let mut audit = String::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = s
            .get(&format!("/v1/audit?limit=200&order=asc{cursor}"), &init_key)
            .await;
        audit.push_str(&page["data"].to_string());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert!(audit.contains("token.rotate") && audit.contains("auth.failed"));
    drop(s);
    let log: String = std::fs::read_dir(store.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log.contains("agentpost listening"),
        "the server log was captured"
    );
    let dump = store.dump();
    assert!(dump.len() > 10_000, "the dump holds the data");
    let dump = String::from_utf8_lossy(&dump);
    for sec in &secrets {
        // The random body alone, so no encoding of the prefix can hide it.
        let core = &sec[7..];
        assert!(!log.contains(core), "a secret is in the server log");
        assert!(!dump.contains(core), "a secret is in the {backend:?} dump");
        assert!(!audit.contains(core), "a secret is in the audit trail");
    }
}
both_backends!(no_secret_in_logs_database_or_audit, super::secrets);
