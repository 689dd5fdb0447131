//! agentpost: a mail and identity server for AI agents. This binary is the
//! CLI: `serve` wires the server together; the other commands either open
//! the store through the gate (init, audit) or call a running server's API.

// Many short-lived allocations per message and per row: mimalloc's
// thread-local free lists beat glibc malloc's arenas here (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apply;
mod client;
mod config;
mod inbound;
mod outbound;
mod serve;
mod submission;

use agentpost_core::Ctx;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use client::{Client, ClientArgs};
use config::{ServerArgs, StoreArgs};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "agentpost",
    version,
    about = "A mail and identity server for AI agents",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded SQLite in ./agentpost-data unless --database-url).
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create the organisation, its first domain and the first admin key (printed once).
    Init {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Provision and manage agents on a running server.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agent tokens on a running server.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mail domains and their DNS records.
    Domain {
        #[command(subcommand)]
        cmd: DomainCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Admin keys (organisation root credentials).
    AdminKey {
        #[command(subcommand)]
        cmd: AdminKeyCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Verify or export the audit trail, offline, straight from the store.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Make the server's agents match a file: create, update, and with --prune decommission.
    Apply {
        /// The desired agents ([[agent]] tables with address, sponsor, display_name, description, policy_id).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Decommission live agents that the file does not list.
        #[arg(long)]
        prune: bool,
        /// Do not ask before decommissioning.
        #[arg(long)]
        yes: bool,
        /// Where to write the tokens of created agents (created new, mode 0600).
        #[arg(long, value_name = "FILE")]
        tokens_out: Option<PathBuf>,
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the model-safe view of a message file (offline): the text a human
    /// sees, what was hidden, links, risk, reply text and prompt-ready text.
    Inspect {
        /// An RFC 5322 message (.eml), or - for standard input.
        file: PathBuf,
        /// Print exactly one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Create an agent and print its first token (once).
    Create {
        /// Full address, or a bare local part on the default domain.
        address: String,
        /// Email of the accountable human.
        #[arg(long)]
        sponsor: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        policy_id: Option<String>,
    },
    List {
        #[arg(long)]
        status: Option<String>,
    },
    Show {
        id: String,
    },
    Suspend {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Revoke credentials, export and purge the data, tombstone the address.
    Decommission {
        id: String,
        /// Save the export archive here.
        #[arg(long, value_name = "FILE")]
        export_to: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    Create {
        agent_id: String,
        #[arg(long)]
        name: Option<String>,
        /// Space- or comma-separated scopes.
        #[arg(long)]
        scopes: Option<String>,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<String>,
    },
    List {
        agent_id: String,
    },
    Revoke {
        agent_id: String,
        token_id: String,
    },
    Rotate {
        agent_id: String,
        token_id: String,
        /// Seconds the old token keeps working (default 86400).
        #[arg(long)]
        overlap_seconds: Option<i64>,
    },
}

#[derive(Subcommand)]
enum DomainCmd {
    Add {
        name: String,
    },
    List,
    /// The DNS records to publish.
    Dns {
        name: String,
    },
}

#[derive(Subcommand)]
enum AdminKeyCmd {
    Create {
        #[arg(long)]
        name: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
    Rotate {
        id: String,
        #[arg(long)]
        overlap_seconds: Option<i64>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; names the first entry edited, deleted or reordered.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write every entry, oldest first.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Only jsonl is supported.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentpost: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("agentpost: {e:#}");
            std::process::exit(1);
        }
    }
}

const AGENT_COLUMNS: &[&str] = &["id", "address", "status", "sponsor", "display_name"];
const CRED_COLUMNS: &[&str] = &[
    "id",
    "name",
    "hint",
    "scopes",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
];

fn print_secret(client: &Client, issued: &Value) {
    if client.json {
        println!(
            "{}",
            serde_json::to_string_pretty(issued).unwrap_or_default()
        );
    } else {
        client.print(&issued["credential"], CRED_COLUMNS);
        println!(
            "\nSecret (shown once, store it now):\n\n    {}\n",
            issued["secret"].as_str().unwrap_or("")
        );
    }
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve { store, server } => {
            let cfg = config::resolve(&store, Some(&server))?;
            serve::init_logging(cfg.log_json);
            serve::run(cfg).await?;
        }
        Command::Init {
            store,
            server,
            json,
        } => {
            let cfg = config::resolve(&store, Some(&server))?;
            let svc = serve::open(&cfg).await?;
            match serve::bootstrap(&svc, &cfg).await? {
                None => bail!(
                    "{} is already initialised; create more admin keys with `agentpost admin-key create`",
                    cfg.store.describe()
                ),
                Some(b) => {
                    let secret = b.admin_key.as_ref().map(|k| k.secret.clone());
                    if json {
                        println!(
                            "{}",
                            json!({ "organisation_id": b.organisation_id, "domain": b.domain, "admin_key_id": b.admin_key_id, "admin_key": secret })
                        );
                    } else {
                        println!(
                            "Initialised {} with domain {}.",
                            cfg.store.describe(),
                            b.domain
                        );
                        match secret {
                            Some(s) => println!(
                                "Admin key (shown once; store it like a root password):\n\n    {s}\n"
                            ),
                            None => println!("Admin key: the one from AGENTPOST_ADMIN_KEY_FILE."),
                        }
                    }
                }
            }
        }
        Command::Agent { cmd, client } => {
            let c = Client::new(&client)?;
            agent_cmd(&c, cmd).await?;
        }
        Command::Token { cmd, client } => {
            let c = Client::new(&client)?;
            token_cmd(&c, cmd).await?;
        }
        Command::Domain { cmd, client } => {
            let c = Client::new(&client)?;
            match cmd {
                DomainCmd::Add { name } => {
                    let d = c
                        .call(Method::POST, "/v1/domains", Some(json!({ "name": name })))
                        .await?;
                    print_domain(&c, &d);
                }
                DomainCmd::List => {
                    let d = c.call(Method::GET, "/v1/domains", None).await?;
                    c.print(&d, &["name", "is_default", "dkim_selectors", "created_at"]);
                }
                DomainCmd::Dns { name } => {
                    let d = c
                        .call(Method::GET, &format!("/v1/domains/{name}/dns"), None)
                        .await?;
                    print_domain(&c, &d);
                }
            }
        }
        Command::AdminKey { cmd, client } => {
            let c = Client::new(&client)?;
            match cmd {
                AdminKeyCmd::Create { name } => {
                    let k = c
                        .call(
                            Method::POST,
                            "/v1/admin-keys",
                            Some(json!({ "name": name })),
                        )
                        .await?;
                    print_secret(&c, &k);
                }
                AdminKeyCmd::List => c.print(
                    &Value::Array(c.all_pages("/v1/admin-keys").await?),
                    CRED_COLUMNS,
                ),
                AdminKeyCmd::Revoke { id } => {
                    let k = c
                        .call(Method::POST, &format!("/v1/admin-keys/{id}/revoke"), None)
                        .await?;
                    c.print(&k, CRED_COLUMNS);
                }
                AdminKeyCmd::Rotate {
                    id,
                    overlap_seconds,
                } => {
                    let k = c
                        .call(
                            Method::POST,
                            &format!("/v1/admin-keys/{id}/rotate"),
                            Some(json!({ "overlap_seconds": overlap_seconds })),
                        )
                        .await?;
                    print_secret(&c, &k);
                }
            }
        }
        Command::Audit { cmd } => return audit_cmd(cmd).await,
        Command::Apply {
            file,
            prune,
            yes,
            tokens_out,
            dry_run,
            client,
        } => {
            let c = Client::new(&client)?;
            apply::apply(
                &c,
                apply::ApplyOptions {
                    file: &file,
                    prune,
                    yes,
                    tokens_out: tokens_out.as_deref(),
                    dry_run,
                },
            )
            .await?;
        }
        Command::Inspect { file, json } => return inspect(&file, json),
        Command::Openapi => println!("{}", agentpost_api::openapi().to_pretty_json()?),
    }
    Ok(0)
}

fn print_domain(c: &Client, d: &Value) {
    if c.json {
        println!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
        return;
    }
    println!(
        "Domain {}: publish these records\n",
        d["name"].as_str().unwrap_or("")
    );
    let records: Vec<&Value> = d["dns_records"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    client::print_table(&records, &["type", "name", "value"]);
}

async fn agent_cmd(c: &Client, cmd: AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::Create {
            address,
            sponsor,
            display_name,
            description,
            policy_id,
        } => {
            let mut body = json!({ "sponsor": sponsor, "display_name": display_name, "description": description, "policy_id": policy_id });
            if address.contains('@') {
                body["address"] = json!(address);
            } else {
                body["local_part"] = json!(address);
            }
            let created = c.call(Method::POST, "/v1/agents", Some(body)).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                c.print(&created["agent"], AGENT_COLUMNS);
                println!(
                    "\nAgent token (shown once, store it now):\n\n    {}\n",
                    created["token"]["secret"].as_str().unwrap_or("")
                );
            }
        }
        AgentCmd::List { status } => {
            let path = match status {
                Some(s) => format!("/v1/agents?status={s}"),
                None => "/v1/agents".into(),
            };
            c.print(&Value::Array(c.all_pages(&path).await?), AGENT_COLUMNS);
        }
        AgentCmd::Show { id } => {
            let a = c
                .call(Method::GET, &format!("/v1/agents/{id}"), None)
                .await?;
            c.print(
                &a,
                &[
                    "id",
                    "address",
                    "status",
                    "sponsor",
                    "display_name",
                    "description",
                    "policy_id",
                    "created_at",
                    "updated_at",
                ],
            );
        }
        AgentCmd::Suspend { id } => c.print(
            &c.call(Method::POST, &format!("/v1/agents/{id}/suspend"), None)
                .await?,
            AGENT_COLUMNS,
        ),
        AgentCmd::Resume { id } => c.print(
            &c.call(Method::POST, &format!("/v1/agents/{id}/resume"), None)
                .await?,
            AGENT_COLUMNS,
        ),
        AgentCmd::Decommission { id, export_to } => {
            let d = c
                .call(Method::POST, &format!("/v1/agents/{id}/decommission"), None)
                .await?;
            if let Some(path) = export_to {
                let bytes = c.download(&format!("/v1/agents/{id}/export")).await?;
                std::fs::write(&path, bytes)?;
                eprintln!("export saved to {}", path.display());
            }
            if c.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                c.print(
                    &d,
                    &[
                        "agent.address",
                        "agent.status",
                        "credentials_revoked",
                        "tombstoned_until",
                        "export.download_path",
                    ],
                );
            }
        }
    }
    Ok(())
}

async fn token_cmd(c: &Client, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            agent_id,
            name,
            scopes,
            expires_at,
        } => {
            let scopes: Option<Vec<String>> = scopes.map(|s| {
                s.split(|ch: char| ch == ',' || ch.is_whitespace())
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            });
            let t = c
                .call(
                    Method::POST,
                    &format!("/v1/agents/{agent_id}/tokens"),
                    Some(json!({ "name": name, "scopes": scopes, "expires_at": expires_at })),
                )
                .await?;
            print_secret(c, &t);
        }
        TokenCmd::List { agent_id } => c.print(
            &Value::Array(
                c.all_pages(&format!("/v1/agents/{agent_id}/tokens"))
                    .await?,
            ),
            CRED_COLUMNS,
        ),
        TokenCmd::Revoke { agent_id, token_id } => c.print(
            &c.call(
                Method::POST,
                &format!("/v1/agents/{agent_id}/tokens/{token_id}/revoke"),
                None,
            )
            .await?,
            CRED_COLUMNS,
        ),
        TokenCmd::Rotate {
            agent_id,
            token_id,
            overlap_seconds,
        } => {
            let t = c
                .call(
                    Method::POST,
                    &format!("/v1/agents/{agent_id}/tokens/{token_id}/rotate"),
                    Some(json!({ "overlap_seconds": overlap_seconds })),
                )
                .await?;
            print_secret(c, &t);
        }
    }
    Ok(())
}

async fn audit_cmd(cmd: AuditCmd) -> Result<i32> {
    match cmd {
        AuditCmd::Verify { store, json } => {
            let cfg = config::resolve(&store, None)?;
            let svc = serve::open(&cfg).await?;
            let r = svc
                .verify_audit(&Ctx::system("cli"))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else if let Some(p) = &r.problem {
                println!(
                    "audit trail BROKEN at entry {} ({}): {}",
                    p.entry_id, p.kind, p.message
                );
            } else {
                println!(
                    "audit trail intact: {} entries, head {} {}",
                    r.entries, r.head_id, r.head_hash
                );
            }
            Ok(if r.problem.is_some() { 2 } else { 0 })
        }
        AuditCmd::Export { store, format } => {
            if format != "jsonl" {
                bail!("--format {format} is not supported; use jsonl");
            }
            let cfg = config::resolve(&store, None)?;
            let svc = serve::open(&cfg).await?;
            let ctx = Ctx::system("cli");
            let mut cursor: Option<String> = None;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            loop {
                let q = agentpost_core::AuditQuery {
                    order: Some("asc".into()),
                    cursor: cursor.clone(),
                    limit: Some(200),
                    ..Default::default()
                };
                let page = svc
                    .list_audit(&ctx, q)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for e in &page.data {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            out.flush()?;
            Ok(0)
        }
    }
}

/// `agentpost inspect`: the safe view, computed offline from a file.
fn inspect(file: &std::path::Path, json: bool) -> Result<i32> {
    use std::io::Read;
    let mut raw = vec![];
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut raw)?;
    } else {
        raw = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    }
    let view = agentpost_safety::analyze_message(&raw, &agentpost_safety::Provenance::default());
    let codes = agentpost_safety::extract_codes(&view.text);
    if json {
        let mut v = serde_json::to_value(&view)?;
        v["codes"] = serde_json::to_value(&codes)?;
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    println!(
        "risk: {:?} {}",
        view.risk.level,
        view.risk.reasons.join("; ")
    );
    if let Some(subject) = &view.subject {
        println!("subject: {subject}");
    }
    for f in &view.findings {
        println!(
            "removed: {} at {}: {}",
            f.kind.as_str(),
            f.location,
            f.excerpt
        );
    }
    for l in view.links.iter().filter(|l| l.mismatch) {
        println!("link mismatch: {:?} -> {}", l.text, l.href);
    }
    for c in &codes {
        println!("extracted: {c:?}");
    }
    println!("\n{}", view.text);
    Ok(0)
}
