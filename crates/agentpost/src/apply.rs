//! `agentpost apply -f agents.toml`: declarative provisioning. Creates the
//! agents that are missing, updates what changed, leaves the rest alone, and
//! with --prune decommissions live agents absent from the file.

use crate::client::Client;
use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Desired {
    #[serde(default, rename = "agent")]
    agents: Vec<DesiredAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredAgent {
    address: String,
    sponsor: String,
    display_name: Option<String>,
    description: Option<String>,
    policy_id: Option<String>,
}

pub struct ApplyOptions<'a> {
    pub file: &'a Path,
    pub prune: bool,
    pub yes: bool,
    pub tokens_out: Option<&'a Path>,
    pub dry_run: bool,
}

pub async fn apply(client: &Client, opts: ApplyOptions<'_>) -> Result<()> {
    let text = std::fs::read_to_string(opts.file)
        .with_context(|| format!("cannot read {}", opts.file.display()))?;
    let desired: Desired = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid agents file", opts.file.display()))?;
    let mut seen = std::collections::HashSet::new();
    for a in &desired.agents {
        if !seen.insert(a.address.to_lowercase()) {
            bail!("{} lists {} twice", opts.file.display(), a.address);
        }
    }

    let current: BTreeMap<String, Value> = client
        .all_pages("/v1/agents")
        .await?
        .into_iter()
        .filter(|a| matches!(a["status"].as_str(), Some("active") | Some("suspended")))
        .map(|a| (a["address"].as_str().unwrap_or("").to_lowercase(), a))
        .collect();

    let to_create: Vec<&DesiredAgent> = desired
        .agents
        .iter()
        .filter(|d| !current.contains_key(&d.address.to_lowercase()))
        .collect();
    let to_prune: Vec<&Value> = if opts.prune {
        current
            .iter()
            .filter(|(addr, _)| !seen.contains(*addr))
            .map(|(_, a)| a)
            .collect()
    } else {
        vec![]
    };

    // Refuse before changing anything if new tokens would have nowhere to go.
    let mut tokens_file = None;
    if !to_create.is_empty() && !opts.dry_run {
        let Some(path) = opts.tokens_out else {
            bail!(
                "{} agent(s) would be created; pass --tokens-out FILE to receive their tokens (written once, mode 0600)",
                to_create.len()
            );
        };
        tokens_file = Some(create_private_file(path)?);
    }
    if !to_prune.is_empty() && !opts.yes && !opts.dry_run {
        eprintln!("--prune would decommission {} agent(s):", to_prune.len());
        for a in &to_prune {
            eprintln!("  {}", a["address"].as_str().unwrap_or(""));
        }
        eprint!("Type 'yes' to decommission them (their data is exported then purged): ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing was decommissioned (pass --yes to skip this question)");
        }
    }

    let mut report: Vec<Value> = vec![];
    let mut tokens = serde_json::Map::new();
    for d in &desired.agents {
        let key = d.address.to_lowercase();
        match current.get(&key) {
            None => {
                if opts.dry_run {
                    report.push(json!({ "address": d.address, "action": "create" }));
                    continue;
                }
                let mut body = json!({ "address": d.address, "sponsor": d.sponsor });
                for (k, v) in [
                    ("display_name", &d.display_name),
                    ("description", &d.description),
                    ("policy_id", &d.policy_id),
                ] {
                    if let Some(v) = v {
                        body[k] = json!(v);
                    }
                }
                let created = client.call(Method::POST, "/v1/agents", Some(body)).await?;
                tokens.insert(d.address.clone(), created["token"]["secret"].clone());
                report.push(json!({ "address": d.address, "action": "created", "id": created["agent"]["id"] }));
            }
            Some(cur) => {
                let mut patch = serde_json::Map::new();
                let differs = |field: &str, want: &Option<String>| {
                    cur[field].as_str().map(str::to_string) != *want
                };
                if cur["sponsor"].as_str() != Some(d.sponsor.as_str()) {
                    patch.insert("sponsor".into(), json!(d.sponsor));
                }
                for (field, want) in [
                    ("display_name", &d.display_name),
                    ("description", &d.description),
                    ("policy_id", &d.policy_id),
                ] {
                    if differs(field, want) {
                        patch.insert(field.into(), json!(want.clone().unwrap_or_default()));
                    }
                }
                if patch.is_empty() {
                    report.push(json!({ "address": d.address, "action": "unchanged" }));
                } else if opts.dry_run {
                    report.push(json!({ "address": d.address, "action": "update", "fields": patch.keys().collect::<Vec<_>>() }));
                } else {
                    let fields: Vec<String> = patch.keys().cloned().collect();
                    let id = cur["id"].as_str().unwrap_or("");
                    client
                        .call(
                            Method::PATCH,
                            &format!("/v1/agents/{id}"),
                            Some(Value::Object(patch)),
                        )
                        .await?;
                    report.push(
                        json!({ "address": d.address, "action": "updated", "fields": fields }),
                    );
                }
            }
        }
    }
    for a in to_prune {
        let addr = a["address"].as_str().unwrap_or("");
        if opts.dry_run {
            report.push(json!({ "address": addr, "action": "decommission" }));
            continue;
        }
        let id = a["id"].as_str().unwrap_or("");
        client
            .call(Method::POST, &format!("/v1/agents/{id}/decommission"), None)
            .await?;
        report.push(json!({ "address": addr, "action": "decommissioned" }));
    }
    if let Some(mut f) = tokens_file {
        f.write_all(serde_json::to_string_pretty(&Value::Object(tokens))?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    if client.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "changes": report }))?
        );
    } else {
        for r in &report {
            let fields = r
                .get("fields")
                .map(|_| format!(" ({})", crate::client::cell(r, "fields")))
                .unwrap_or_default();
            println!(
                "{:<14} {}{}",
                r["action"].as_str().unwrap_or(""),
                r["address"].as_str().unwrap_or(""),
                fields
            );
        }
        if report.is_empty() {
            println!("nothing to do");
        }
    }
    Ok(())
}

/// Created new with mode 0600; an existing file is never overwritten, so
/// earlier tokens cannot be lost by a second run.
fn create_private_file(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).with_context(|| {
        format!(
            "cannot create {} (it must not exist yet; tokens are written once)",
            path.display()
        )
    })
}
