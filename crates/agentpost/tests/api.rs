//! The HTTP API of the foundation, on both storage backends: provisioning,
//! validation, the data boundary, credentials, idempotency, decommissioning.

mod common;

use common::{Backend, Server, Store};
use reqwest::Method;
use serde_json::{Value, json};

async fn setup(backend: Backend) -> (Store, Server, String) {
    let store = Store::new(backend);
    let init = store.init(&[]);
    let key = init["admin_key"].as_str().expect("admin key").to_string();
    let server = Server::start(&store);
    (store, server, key)
}

async fn provisioning(backend: Backend) {
    let (_store, s, key) = setup(backend).await;
    let http = reqwest::Client::new();
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let body = http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains(want), "{path}: {body}");
    }

    // The seed's call, verbatim but for base URL and key.
    let resp = http
        .post(format!("{}/v3/connect/custom", s.base))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/json")
        .body(r#"{"provider": "nylas", "settings": {"email": "support-agent@agents.localhost"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let grant: Value = resp.json().await.unwrap();
    assert!(grant["request_id"].is_string());
    assert_eq!(grant["data"]["provider"], "nylas");
    assert_eq!(grant["data"]["grant_status"], "valid");
    assert_eq!(grant["data"]["email"], "support-agent@agents.localhost");
    assert!(grant["data"]["created_at"].as_i64().unwrap() > 1_700_000_000);
    let gid = grant["data"]["id"].as_str().unwrap();
    let (st, g) = s.get(&format!("/v3/grants/{gid}"), &key).await;
    assert_eq!(
        (st, g["data"]["email"].as_str()),
        (200, Some("support-agent@agents.localhost"))
    );

    // Provision with local_part; the token carries the default scopes.
    let (st, created) = s
        .post("/v1/agents", &key, json!({ "local_part": "Billing.Bot", "display_name": "Billing", "sponsor": "alice@example.com", "description": "pays invoices" }))
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["agent"]["address"], "Billing.Bot@agents.localhost");
    let token = created["token"]["secret"].as_str().unwrap().to_string();
    assert!(token.starts_with("ap_agt_"));
    let (st, me) = s.get("/v1/me", &token).await;
    assert_eq!(st, 200);
    assert_eq!(me["kind"], "agent");
    assert_eq!(me["agent"]["id"], created["agent"]["id"]);
    assert_eq!(
        me["scopes"],
        json!([
            "mail.read",
            "mail.draft",
            "mail.send",
            "calendar.read",
            "calendar.write"
        ])
    );
    let (_, me) = s.get("/v1/me", &key).await;
    assert_eq!(me["kind"], "admin");

    // Case-insensitive uniqueness.
    let (st, p) = s
        .post(
            "/v1/agents",
            &key,
            json!({ "address": "billing.bot@AGENTS.localhost", "sponsor": "a@example.com" }),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (409, Some("address")), "{p}");
    assert_eq!(p["type"], "urn:agentpost:problem:address-taken");

    // Each validation failure is a 422 naming its field.
    let cases = [
        (json!({ "address": "x@agents.localhost" }), "sponsor"),
        (
            json!({ "address": "x@agents.localhost", "sponsor": "not an email" }),
            "sponsor",
        ),
        (
            json!({ "address": "no-at-sign", "sponsor": "a@example.com" }),
            "address",
        ),
        (
            json!({ "address": "a..b@agents.localhost", "sponsor": "a@example.com" }),
            "address",
        ),
        (
            json!({ "address": "x@elsewhere.example", "sponsor": "a@example.com" }),
            "address",
        ),
        (
            json!({ "address": "postmaster@agents.localhost", "sponsor": "a@example.com" }),
            "address",
        ),
        (
            json!({ "address": "abuse@agents.localhost", "sponsor": "a@example.com" }),
            "address",
        ),
        (
            json!({ "local_part": "x y", "sponsor": "a@example.com" }),
            "local_part",
        ),
        (json!({ "sponsor": "a@example.com" }), "address"),
        (
            json!({ "address": "x@agents.localhost", "sponsor": "a@example.com", "scopes": ["mail.root"] }),
            "scopes",
        ),
        (
            json!({ "address": "x@agents.localhost", "sponsor": "a@example.com", "policy_id": "nope" }),
            "policy_id",
        ),
        (
            json!({ "address": "x@agents.localhost", "sponsor": "a@example.com", "colour": "red" }),
            "colour",
        ),
        (
            json!({ "address": 5, "sponsor": "a@example.com" }),
            "address",
        ),
    ];
    for (body, field) in cases {
        let (st, p) = s.post("/v1/agents", &key, body.clone()).await;
        assert_eq!(st, 422, "{body} -> {p}");
        assert_eq!(p["field"], field, "{body} -> {p}");
        assert_eq!(p["status"], 422);
    }
    let (st, p) = s
        .post(
            "/v3/connect/custom",
            &key,
            json!({ "provider": "google", "settings": { "email": "y@agents.localhost" } }),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (422, Some("provider")));

    // Malformed JSON is a 400 problem, not a panic; wrong media type is 415.
    let r = http
        .post(format!("{}/v1/agents", s.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = http
        .post(format!("{}/v1/agents", s.base))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http
        .post(format!("{}/v1/agents", s.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Pagination and the status filter.
    for i in 0..5 {
        s.agent(&key, &format!("pager{i}")).await;
    }
    let (_, page1) = s.get("/v1/agents?limit=3", &key).await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = s
        .get(&format!("/v1/agents?limit=3&cursor={cursor}"), &key)
        .await;
    let mut ids: Vec<String> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "pages overlap");
    let (st, p) = s.get("/v1/agents?limit=0", &key).await;
    assert_eq!((st, p["field"].as_str()), (422, Some("limit")));
    let (st, p) = s.get("/v1/agents?status=sleeping", &key).await;
    assert_eq!((st, p["field"].as_str()), (422, Some("status")));
    let (st, p) = s.get("/v1/agents?limit=abc", &key).await;
    assert_eq!((st, p["field"].as_str()), (400, Some("limit")));

    // PATCH, suspend (tokens stop working), resume.
    let id = created["agent"]["id"].as_str().unwrap();
    let (st, a) = s
        .req(
            Method::PATCH,
            &format!("/v1/agents/{id}"),
            &key,
            Some(json!({ "display_name": "Billing Bot" })),
        )
        .await;
    assert_eq!((st, a["display_name"].as_str()), (200, Some("Billing Bot")));
    let (st, _) = s
        .post(&format!("/v1/agents/{id}/suspend"), &key, json!({}))
        .await;
    assert_eq!(st, 200);
    let (_, a) = s.get(&format!("/v1/agents/{id}"), &key).await;
    assert_eq!(a["status"], "suspended");
    assert_eq!(s.get("/v1/me", &token).await.0, 401);
    let (st, p) = s
        .post(&format!("/v1/agents/{id}/resume"), &key, json!({}))
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(s.get("/v1/me", &token).await.0, 200);
    let (st, p) = s
        .post(&format!("/v1/agents/{id}/resume"), &key, json!({}))
        .await;
    assert_eq!(st, 200, "resuming an active agent is a no-op: {p}");

    // Errors everywhere are problem documents.
    let (st, p) = s.get("/v1/nothing-here", &key).await;
    assert_eq!((st, p["status"].as_i64()), (404, Some(404)));
    let r = http
        .get(format!("{}/v1/agents", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
    let (st, _) = s.get("/v1/agents/not-a-uuid", &key).await;
    assert_eq!(st, 404);

    // Operational endpoints.
    let doc: Value = http
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/agents",
        "/v1/agents/{id}",
        "/v1/agents/{id}/suspend",
        "/v1/agents/{id}/resume",
        "/v1/agents/{id}/decommission",
        "/v1/agents/{id}/export",
        "/v1/agents/{id}/tokens",
        "/v1/agents/{id}/tokens/{token_id}/revoke",
        "/v1/agents/{id}/tokens/{token_id}/rotate",
        "/v1/agents/{id}/audit",
        "/v1/me",
        "/v1/admin-keys",
        "/v1/approvers",
        "/v1/domains",
        "/v1/domains/{name}/dns",
        "/v1/audit",
        "/v1/audit/verify",
        "/v3/connect/custom",
        "/v3/grants/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        json!([{}]),
        "operational routes need no credential"
    );
    let docs = http
        .get(format!("{}/docs", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("/v1/agents/{id}/decommission") && docs.contains("<h2>"));
    let metrics = http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("agentpost_http_requests_total"),
        "{metrics}"
    );
}
both_backends!(provisioning_validation_and_lifecycle, super::provisioning);

async fn data_boundary(backend: Backend) {
    let (_store, s, key) = setup(backend).await;
    let (a, a_token) = s.agent(&key, "agent-a").await;
    let (b, _b_token) = s.agent(&key, "agent-b").await;
    let (_, b_tokens) = s.get(&format!("/v1/agents/{b}/tokens"), &key).await;
    let b_token_id = b_tokens["data"][0]["id"].as_str().unwrap().to_string();
    let (_, b_before) = s.get(&format!("/v1/agents/{b}"), &key).await;

    // Every route that names agent B or B's objects: not found, never forbidden.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/agents/{b}"), None),
        (
            Method::PATCH,
            format!("/v1/agents/{b}"),
            Some(json!({ "display_name": "pwned" })),
        ),
        (Method::POST, format!("/v1/agents/{b}/suspend"), None),
        (Method::POST, format!("/v1/agents/{b}/resume"), None),
        (Method::POST, format!("/v1/agents/{b}/decommission"), None),
        (Method::GET, format!("/v1/agents/{b}/export"), None),
        (Method::GET, format!("/v1/agents/{b}/tokens"), None),
        (
            Method::POST,
            format!("/v1/agents/{b}/tokens"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/agents/{b}/tokens/{b_token_id}/revoke"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/agents/{b}/tokens/{b_token_id}/rotate"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/agents/{b}/audit"), None),
        (Method::GET, format!("/v3/grants/{b}"), None),
        (Method::DELETE, format!("/v3/grants/{b}"), None),
        // B's token addressed through A's own agent id is still not A's.
        (
            Method::POST,
            format!("/v1/agents/{a}/tokens/{b_token_id}/revoke"),
            None,
        ),
    ];
    for (m, path, body) in &routes {
        let (st, p) = s.req(m.clone(), path, &a_token, body.clone()).await;
        assert_eq!(st, 404, "{m} {path} as agent A -> {st} {p}");
        assert_eq!(p["type"], "urn:agentpost:problem:not-found");
    }
    // Nothing outside A, and no privileged action on A itself.
    let forbidden: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({ "local_part": "sneaky", "sponsor": "x@example.com" })),
        ),
        (
            Method::POST,
            format!("/v1/agents/{a}/tokens"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/agents/{a}/tokens"), None),
        (Method::POST, format!("/v1/agents/{a}/decommission"), None),
        (
            Method::PATCH,
            format!("/v1/agents/{a}"),
            Some(json!({ "sponsor": "me@example.com" })),
        ),
        (Method::GET, "/v1/audit".into(), None),
        (Method::GET, "/v1/audit/verify".into(), None),
        (Method::GET, "/v1/admin-keys".into(), None),
        (Method::POST, "/v1/admin-keys".into(), Some(json!({}))),
        (
            Method::POST,
            "/v1/approvers".into(),
            Some(json!({ "email": "x@example.com" })),
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            Some(json!({ "name": "evil.example" })),
        ),
        (Method::GET, "/v1/domains".into(), None),
        (
            Method::POST,
            "/v3/connect/custom".into(),
            Some(json!({ "provider": "nylas", "settings": { "email": "z@agents.localhost" } })),
        ),
    ];
    for (m, path, body) in &forbidden {
        let (st, p) = s.req(m.clone(), path, &a_token, body.clone()).await;
        assert!(st == 403 || st == 404, "{m} {path} as agent A -> {st} {p}");
    }
    // The list shows A alone; A sees itself and its own audit trail.
    let (_, list) = s.get("/v1/agents", &a_token).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str()]);
    assert_eq!(s.get(&format!("/v1/agents/{a}"), &a_token).await.0, 200);
    let (st, trail) = s.get(&format!("/v1/agents/{a}/audit"), &a_token).await;
    assert_eq!(st, 200);
    assert!(
        trail["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["agent_id"] == json!(a))
    );

    // B is exactly as it was; the refused attempts were audited.
    let (_, b_after) = s.get(&format!("/v1/agents/{b}"), &key).await;
    assert_eq!(b_before, b_after);
    let (_, tokens_after) = s.get(&format!("/v1/agents/{b}/tokens"), &key).await;
    assert_eq!(tokens_after["data"].as_array().unwrap().len(), 1);
    assert!(tokens_after["data"][0]["revoked_at"].is_null());
    let (_, denied) = s.get("/v1/audit?action=agent.create", &key).await;
    assert!(
        denied["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "denied"),
        "{denied}"
    );
}
both_backends!(
    agent_token_cannot_cross_the_data_boundary,
    super::data_boundary
);

async fn credentials(backend: Backend) {
    let (_store, s, key) = setup(backend).await;
    let (a, first) = s.agent(&key, "creds").await;

    let (st, t) = s
        .post(&format!("/v1/agents/{a}/tokens"), &key, json!({ "name": "reader", "scopes": ["mail.read", "mail.read_raw"], "expires_at": "2099-01-01T00:00:00Z" }))
        .await;
    assert_eq!(st, 201, "{t}");
    let reader = t["secret"].as_str().unwrap().to_string();
    let reader_id = t["credential"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        t["credential"]["last4"].as_str().unwrap(),
        &reader[reader.len() - 4..]
    );
    let (_, me) = s.get("/v1/me", &reader).await;
    assert_eq!(me["scopes"], json!(["mail.read", "mail.read_raw"]));
    let (st, p) = s
        .post(
            &format!("/v1/agents/{a}/tokens"),
            &key,
            json!({ "expires_at": "yesterday" }),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (422, Some("expires_at")));
    let (st, p) = s
        .post(
            &format!("/v1/agents/{a}/tokens"),
            &key,
            json!({ "expires_at": "2001-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (422, Some("expires_at")));

    // Listing shows name, prefix, last four, scopes, times: never a secret or hash.
    let (st, list) = s.get(&format!("/v1/agents/{a}/tokens"), &key).await;
    assert_eq!(st, 200);
    let text = list.to_string();
    assert!(!text.contains(&reader) && !text.contains(&first));
    let row = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == json!(reader_id))
        .unwrap();
    for f in [
        "name",
        "prefix",
        "last4",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
    ] {
        assert!(row.get(f).is_some(), "listing lacks {f}");
    }
    assert_eq!(row["prefix"], "ap_agt_");
    assert!(
        row["last_used_at"].is_string(),
        "last use is recorded: {row}"
    );

    // Rotation with overlap: both work until the window ends.
    let (st, rotated) = s
        .post(
            &format!("/v1/agents/{a}/tokens/{reader_id}/rotate"),
            &key,
            json!({ "overlap_seconds": 3600 }),
        )
        .await;
    assert_eq!(st, 201, "{rotated}");
    let new_reader = rotated["secret"].as_str().unwrap().to_string();
    assert_eq!(s.get("/v1/me", &reader).await.0, 200);
    assert_eq!(s.get("/v1/me", &new_reader).await.0, 200);
    let (_, me) = s.get("/v1/me", &new_reader).await;
    assert_eq!(me["scopes"], json!(["mail.read", "mail.read_raw"]));
    // Zero overlap: the old one stops at once.
    let new_id = rotated["credential"]["id"].as_str().unwrap();
    let (st, again) = s
        .post(
            &format!("/v1/agents/{a}/tokens/{new_id}/rotate"),
            &key,
            json!({ "overlap_seconds": 0 }),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(s.get("/v1/me", &new_reader).await.0, 401);
    assert_eq!(
        s.get("/v1/me", again["secret"].as_str().unwrap()).await.0,
        200
    );
    let (st, p) = s
        .post(
            &format!("/v1/agents/{a}/tokens/{new_id}/rotate"),
            &key,
            json!({ "overlap_seconds": -5 }),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (422, Some("overlap_seconds")));

    // Revocation is immediate.
    let (_, list) = s.get(&format!("/v1/agents/{a}/tokens"), &key).await;
    let first_id = list["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.post(
            &format!("/v1/agents/{a}/tokens/{first_id}/revoke"),
            &key,
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(s.get("/v1/me", &first).await.0, 401);

    // A typo is caught by the checksum and audited as a failed authentication.
    let mut typo: Vec<char> = first.chars().collect();
    typo[15] = if typo[15] == 'x' { 'y' } else { 'x' };
    let typo: String = typo.into_iter().collect();
    let (st, p) = s.get("/v1/me", &typo).await;
    assert_eq!(st, 401);
    assert!(!p.to_string().contains(&typo));
    let (_, failed) = s.get("/v1/audit?action=auth.failed", &key).await;
    let reasons: Vec<String> = failed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "checksum mismatch"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "revoked credential"),
        "{reasons:?}"
    );

    // Admin keys: create, list, rotate; the last valid one cannot be revoked.
    let (st, k2) = s
        .post("/v1/admin-keys", &key, json!({ "name": "ci" }))
        .await;
    assert_eq!(st, 201);
    let k2_secret = k2["secret"].as_str().unwrap().to_string();
    let (_, keys) = s.get("/v1/admin-keys", &key).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 2);
    let first_key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let k2_id = k2["credential"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.post(
            &format!("/v1/admin-keys/{first_key_id}/revoke"),
            &k2_secret,
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(s.get("/v1/me", &key).await.0, 401);
    let (st, p) = s
        .post(
            &format!("/v1/admin-keys/{k2_id}/revoke"),
            &k2_secret,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, p["type"].as_str()),
        (409, Some("urn:agentpost:problem:last-admin-key"))
    );

    // Approver tokens: a human identity that sees only the agents it sponsors.
    let (st, apr) = s
        .post(
            "/v1/approvers",
            &k2_secret,
            json!({ "email": "owner@example.com", "name": "Owner" }),
        )
        .await;
    assert_eq!(st, 201, "{apr}");
    let apr_secret = apr["secret"].as_str().unwrap();
    assert!(apr_secret.starts_with("ap_apr_"));
    let (_, me) = s.get("/v1/me", apr_secret).await;
    assert_eq!(
        (me["kind"].as_str(), me["subject"].as_str()),
        (Some("approver"), Some("owner@example.com"))
    );
    assert_eq!(
        s.get(&format!("/v1/agents/{a}"), apr_secret).await.0,
        200,
        "owner@example.com sponsors this agent"
    );
    let (_, other) = s
        .post(
            "/v1/agents",
            &k2_secret,
            json!({ "local_part": "not-yours", "sponsor": "someone@example.com" }),
        )
        .await;
    assert_eq!(
        s.get(
            &format!("/v1/agents/{}", other["agent"]["id"].as_str().unwrap()),
            apr_secret
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.post(&format!("/v1/agents/{a}/suspend"), apr_secret, json!({}))
            .await
            .0,
        403
    );
    let (st, p) = s
        .post("/v1/approvers", &k2_secret, json!({ "name": "nobody" }))
        .await;
    assert_eq!((st, p["field"].as_str()), (422, Some("email")));
}
both_backends!(credential_lifecycle, super::credentials);

async fn idempotency(backend: Backend) {
    let (_store, s, key) = setup(backend).await;
    let http = reqwest::Client::new();
    let send = |k: &'static str, body: Value, admin: String| {
        let http = http.clone();
        let url = format!("{}/v1/agents", s.base);
        async move {
            let r = http
                .post(url)
                .bearer_auth(admin)
                .header("Idempotency-Key", k)
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = r.headers().get("idempotency-replayed").is_some();
            let st = r.status().as_u16();
            (st, replayed, r.json::<Value>().await.unwrap())
        }
    };
    let body = json!({ "local_part": "idem", "sponsor": "a@example.com" });
    let (st1, rep1, first) = send("key-1", body.clone(), key.clone()).await;
    assert_eq!((st1, rep1), (201, false), "{first}");
    let (st2, rep2, second) = send("key-1", body.clone(), key.clone()).await;
    assert_eq!((st2, rep2), (201, true));
    assert_eq!(
        first, second,
        "the replay is the same response, token included"
    );
    assert_eq!(
        s.get("/v1/me", second["token"]["secret"].as_str().unwrap())
            .await
            .0,
        200
    );
    let (_, list) = s.get("/v1/agents", &key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "created once");

    let (st, _, p) = send(
        "key-1",
        json!({ "local_part": "other", "sponsor": "a@example.com" }),
        key.clone(),
    )
    .await;
    assert_eq!(
        (st, p["field"].as_str()),
        (409, Some("Idempotency-Key")),
        "{p}"
    );

    // Errors replay too; keys belong to the caller.
    let bad = json!({ "local_part": "postmaster", "sponsor": "a@example.com" });
    let (st, _, _) = send("key-2", bad.clone(), key.clone()).await;
    assert_eq!(st, 422);
    let (st, rep, _) = send("key-2", bad, key.clone()).await;
    assert_eq!((st, rep), (422, true));
    let (_, other_admin) = s.post("/v1/admin-keys", &key, json!({})).await;
    let other = other_admin["secret"].as_str().unwrap().to_string();
    let (st, rep, p) = send(
        "key-1",
        json!({ "local_part": "idem2", "sponsor": "a@example.com" }),
        other,
    )
    .await;
    assert_eq!((st, rep), (201, false), "{p}");
    let r = http
        .post(format!("{}/v1/agents", s.base))
        .bearer_auth(&key)
        .header("Idempotency-Key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}
both_backends!(idempotency_replay_and_conflict, super::idempotency);

async fn decommission(backend: Backend) {
    let (store, s, key) = setup(backend).await;
    let (id, token) = s.agent(&key, "leaver").await;
    let (_, extra) = s
        .post(
            &format!("/v1/agents/{id}/tokens"),
            &key,
            json!({ "name": "second" }),
        )
        .await;
    let second = extra["secret"].as_str().unwrap().to_string();

    let (st, d) = s
        .post(&format!("/v1/agents/{id}/decommission"), &key, json!({}))
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["agent"]["status"], "decommissioned");
    assert_eq!(d["credentials_revoked"], 2);
    assert_eq!(s.get("/v1/me", &token).await.0, 401);
    assert_eq!(s.get("/v1/me", &second).await.0, 401);
    let (st, _) = s
        .post(&format!("/v1/agents/{id}/decommission"), &key, json!({}))
        .await;
    assert_eq!(st, 409);

    // The export is a real archive with the agent's metadata and audit trail.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/agents/{id}/export", s.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let bytes = resp.bytes().await.unwrap();
    let path = store.dir.path().join("export.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "agent.json",
        "credentials.json",
        "audit.jsonl",
        "manifest.json",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(f)),
            "export lacks {f}: {listing}"
        );
    }
    let audit = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&path)
        .arg(format!("agentpost-export-{id}/audit.jsonl"))
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("agent.create") && !audit.contains(&token),
        "{audit}"
    );

    // The address is tombstoned: refused in any case, not silently reused.
    let (st, p) = s
        .post(
            "/v1/agents",
            &key,
            json!({ "address": "LEAVER@agents.localhost", "sponsor": "a@example.com" }),
        )
        .await;
    assert_eq!(
        (st, p["type"].as_str(), p["field"].as_str()),
        (
            409,
            Some("urn:agentpost:problem:address-tombstoned"),
            Some("address")
        ),
        "{p}"
    );
    let (_, grant) = s.get(&format!("/v3/grants/{id}"), &key).await;
    assert_eq!(grant["data"]["grant_status"], "invalid");
    let (_, listed) = s.get("/v1/agents?status=decommissioned", &key).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    drop(s);

    // With a zero-day window the address is free again at once.
    let s = Server::start_with(&store, &["--tombstone-days", "0"], &[]);
    let (id2, _) = s.agent(&key, "quick").await;
    let (st, _) = s
        .req(Method::DELETE, &format!("/v3/grants/{id2}"), &key, None)
        .await;
    assert_eq!(st, 200);
    let (st, p) = s
        .post(
            "/v1/agents",
            &key,
            json!({ "local_part": "quick", "sponsor": "a@example.com" }),
        )
        .await;
    assert_eq!(st, 201, "{p}");
}
both_backends!(
    decommission_exports_revokes_and_tombstones,
    super::decommission
);
