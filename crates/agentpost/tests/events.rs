//! The event stream: JSON pages after an id, filters, the agent data
//! boundary, and Server-Sent Events that resume from `Last-Event-ID`
//! without missing or repeating an event while writes go on.

mod common;

use common::{Backend, Server, Store};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Every event through JSON paging.
async fn all_events(s: &Server, key: &str, query: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut after = 0;
    loop {
        let (st, v) = s
            .get(&format!("/v1/events?after={after}&limit=7{query}"), key)
            .await;
        assert_eq!(st, 200, "{v}");
        let data = v["data"].as_array().cloned().unwrap_or_default();
        if data.is_empty() {
            return out;
        }
        after = v["last_id"].as_i64().unwrap();
        out.extend(data);
    }
}

async fn pages_filters_and_boundary(backend: Backend) {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let s = Server::start(&store);
    let (a1, t1) = s.agent(&key, "first").await;
    let (a2, _) = s.agent(&key, "second").await;
    let (st, _) = s
        .post(&format!("/v1/agents/{a2}/suspend"), &key, json!({}))
        .await;
    assert_eq!(st, 200);

    let all = all_events(&s, &key, "").await;
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "contiguous, in order"
    );
    let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"agent.created")
            && types.contains(&"token.created")
            && types.contains(&"agent.suspended"),
        "{types:?}"
    );
    assert!(
        all.iter()
            .all(|e| e["at"].is_string() && e["data"].is_object())
    );

    let agents = all_events(&s, &key, "&type=agent.*").await;
    assert!(
        agents
            .iter()
            .all(|e| e["type"].as_str().unwrap().starts_with("agent."))
    );
    assert_eq!(agents.len(), 3);
    let two = all_events(&s, &key, "&type=agent.suspended,token.created").await;
    assert_eq!(two.len(), 3, "{two:?}");
    let of_a2 = all_events(&s, &key, &format!("&agent_id={a2}")).await;
    assert!(!of_a2.is_empty() && of_a2.iter().all(|e| e["agent_id"] == a2.as_str()));

    // An agent token sees only its own agent's events; another agent is not found.
    let own = all_events(&s, &t1, "").await;
    assert!(
        !own.is_empty() && own.iter().all(|e| e["agent_id"] == a1.as_str()),
        "{own:?}"
    );
    let (st, v) = s.get(&format!("/v1/events?agent_id={a2}"), &t1).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.get("/v1/events?type=Bad!", &key).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("type")), "{v}");
    let (st, v) = s.get("/v1/events?after=-1", &key).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("after")), "{v}");
    // Polling at the end answers an empty page that keeps the position.
    let last = *ids.last().unwrap();
    let (_, v) = s.get(&format!("/v1/events?after={last}"), &key).await;
    assert_eq!(v, json!({ "data": [], "last_id": last }));
}
both_backends!(
    pages_filters_and_boundary,
    crate::pages_filters_and_boundary
);

/// A minimal SSE client over reqwest.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(s: &Server, key: &str, query: &str, last_event_id: Option<i64>) -> Self {
        let mut r = s
            .http
            .get(format!("{}/v1/events{query}", s.base))
            .bearer_auth(key)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id.to_string());
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (id, JSON data), skipping keep-alive comments.
    async fn next(&mut self, within: Duration) -> Option<(i64, Value)> {
        let deadline = Instant::now() + within;
        loop {
            while let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf[..pos].to_string();
                self.buf.drain(..pos + 2);
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<i64>().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    return Some((id, serde_json::from_str(&data).unwrap()));
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                _ => return None,
            }
        }
    }
}

async fn sse_resumes_without_gaps(backend: Backend) {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let s = std::sync::Arc::new(Server::start(&store));

    let mut first = Sse::open(&s, &key, "", None).await;
    // Writes go on while the client reads, disconnects and comes back.
    let writer = {
        let s = s.clone();
        let key = key.clone();
        tokio::spawn(async move {
            for i in 0..12 {
                s.agent(&key, &format!("busy{i}")).await;
            }
        })
    };
    let mut seen = vec![];
    while seen.len() < 9 {
        let (id, ev) = first
            .next(Duration::from_secs(20))
            .await
            .expect("events on the first stream");
        assert_eq!(ev["id"], id);
        seen.push(id);
    }
    drop(first);
    let last = *seen.last().unwrap();
    writer.await.unwrap();
    let total = all_events(&s, &key, "").await.len() as i64;

    let mut second = Sse::open(&s, &key, "?after=0", Some(last)).await;
    while *seen.last().unwrap() < total {
        let (id, _) = second
            .next(Duration::from_secs(20))
            .await
            .expect("events on the resumed stream");
        seen.push(id);
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "nothing missed, nothing twice"
    );

    // New events arrive on an open stream.
    let (agent, token) = s.agent(&key, "live").await;
    let mut live = Vec::new();
    while live.len() < 2 {
        live.push(
            second
                .next(Duration::from_secs(10))
                .await
                .expect("live events")
                .1,
        );
    }
    assert_eq!(live[0]["type"], "agent.created");

    // An agent token's stream carries only its own agent's events.
    let mut mine = Sse::open(&s, &token, "", None).await;
    let (other, _) = s.agent(&key, "other").await;
    let (st, _) = s
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{other}"),
            &key,
            Some(json!({ "description": "x" })),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{agent}"),
            &key,
            Some(json!({ "description": "y" })),
        )
        .await;
    assert_eq!(st, 200);
    let mut got = vec![];
    while let Some((_, ev)) = mine.next(Duration::from_secs(3)).await {
        got.push(ev);
    }
    assert!(got.iter().any(|e| e["type"] == "agent.updated"), "{got:?}");
    assert!(
        got.iter().all(|e| e["agent_id"] == agent.as_str()),
        "{got:?}"
    );

    let r = s
        .http
        .get(format!("{}/v1/events", s.base))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
both_backends!(sse_resumes_without_gaps, crate::sse_resumes_without_gaps);
