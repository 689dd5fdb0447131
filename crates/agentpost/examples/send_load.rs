//! Load generator for `bench/outbound-send`: posts MSGS sends of SIZE bytes
//! of text over `POST /v1/agents/{id}/messages/send` from CONC concurrent
//! keep-alive HTTP clients, spread over every server URL given, and prints
//! one JSON line: how many were accepted and how long the calls took.
//!
//! Usage: send_load TOKEN AGENT_ID MSGS SIZE CONC URL...
//!
//! Written in Rust so that the client costs little CPU next to the server
//! on the same machine (a Python client spent a core at 1,000 calls/s).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [token, agent, msgs, size, conc, urls @ ..] = args.as_slice() else {
        anyhow::bail!("usage: send_load TOKEN AGENT_ID MSGS SIZE CONC URL...");
    };
    anyhow::ensure!(!urls.is_empty(), "give at least one server URL");
    let msgs: usize = msgs.parse()?;
    let size: usize = size.parse()?;
    let conc: usize = conc.parse()?;
    let text: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(size)
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (client, next, accepted, refused) = (
            client.clone(),
            next.clone(),
            accepted.clone(),
            refused.clone(),
        );
        let (token, agent, text, urls) =
            (token.clone(), agent.clone(), text.clone(), urls.to_vec());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= msgs {
                    break;
                }
                let url = format!("{}/v1/agents/{agent}/messages/send", urls[i % urls.len()]);
                let body = serde_json::json!({
                    "to": [format!("rcpt{}@relay.test", i % 50)],
                    "subject": format!("bench {i}"),
                    "text": text,
                });
                let status = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                match status {
                    Ok(202) => accepted.fetch_add(1, Ordering::Relaxed),
                    Ok(code) => {
                        eprintln!("send {i}: HTTP {code}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("send {i}: {e}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "accepted": accepted.load(Ordering::Relaxed),
            "refused": refused.load(Ordering::Relaxed),
            "seconds": secs,
        })
    );
    Ok(())
}
