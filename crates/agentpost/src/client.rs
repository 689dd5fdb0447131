//! The CLI's HTTP client: `agent`, `token`, `domain`, `admin-key`,
//! `approver` talk to a running server at AGENTPOST_URL with the admin key
//! from AGENTPOST_ADMIN_KEY or --admin-key-file (never from an argument, so
//! it cannot show up in `ps` or shell history).

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "AGENTPOST_URL",
        default_value = "http://127.0.0.1:8025",
        global = true
    )]
    pub url: String,
    /// File holding the admin key, or - for standard input (else AGENTPOST_ADMIN_KEY).
    #[arg(
        long,
        env = "AGENTPOST_ADMIN_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub admin_key_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    pub json: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let key = match &args.admin_key_file {
            Some(p) if p.as_os_str() == "-" => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("cannot read the admin key from standard input")?;
                line.trim().to_string()
            }
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the admin key file {}", p.display()))?
                .trim()
                .to_string(),
            None => std::env::var("AGENTPOST_ADMIN_KEY").map_err(|_| {
                anyhow!("no admin key: set AGENTPOST_ADMIN_KEY or pass --admin-key-file FILE (keys are never taken as arguments)")
            })?,
        };
        if let Err(e) = agentpost_core::secret::parse(&key) {
            bail!("the admin key is not usable: {e}");
        }
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base: args.url.trim_end_matches('/').to_string(),
            key,
            json: args.json,
        })
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.call_raw(method, path, body).await?;
        if status.is_success() {
            return Ok(v);
        }
        let detail = v.get("detail").and_then(|d| d.as_str()).unwrap_or("");
        let field = v
            .get("field")
            .and_then(|d| d.as_str())
            .map(|f| format!(" (field: {f})"))
            .unwrap_or_default();
        bail!("server answered {status}: {detail}{field}")
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach agentpost at {} (is `agentpost serve` running? set AGENTPOST_URL)",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }

    pub async fn download(&self, path: &str) -> Result<Vec<u8>> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("server answered {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// Every page of a cursor-paginated listing.
    pub async fn all_pages(&self, path: &str) -> Result<Vec<Value>> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let p = match &cursor {
                Some(c) => format!("{path}{sep}limit=200&cursor={c}"),
                None => format!("{path}{sep}limit=200"),
            };
            let page = self.call(Method::GET, &p, None).await?;
            if let Some(items) = page.get("data").and_then(|d| d.as_array()) {
                out.extend(items.iter().cloned());
            }
            match page.get("next_cursor").and_then(|c| c.as_str()) {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(out),
            }
        }
    }

    pub fn print(&self, v: &Value, columns: &[&str]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
            return;
        }
        let rows: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        print_table(&rows, columns);
    }
}

pub fn cell(v: &Value, col: &str) -> String {
    match v.pointer(&format!("/{}", col.replace('.', "/"))) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => other.to_string(),
    }
}

pub fn print_table(rows: &[&Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |vals: Vec<String>| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{:w$}", v, w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in cells {
        println!("{}", line(r));
    }
}
