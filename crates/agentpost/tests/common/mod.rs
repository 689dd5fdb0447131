//! Test harness: runs the real `agentpost` binary against a fresh SQLite data
//! directory or a fresh PostgreSQL database, and talks to it over HTTP.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentpost");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the suite uses (trust auth). Each test gets its own
/// database on it.
pub fn pg_admin_url() -> String {
    std::env::var("AGENTPOST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("psql must be installed (postgresql-client) for the PostgreSQL tests");
    assert!(
        out.status.success(),
        "PostgreSQL at {url} is required for the test suite and did not answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One isolated store: a temp data dir, or a fresh database dropped on drop.
pub struct Store {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub pg_db: Option<String>,
}

impl Store {
    pub fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg_db = (backend == Backend::Postgres).then(|| {
            let name = format!("ap_test_{}", uuid::Uuid::now_v7().simple());
            psql(&pg_admin_url(), &format!("CREATE DATABASE {name}"));
            name
        });
        Store {
            backend,
            dir,
            pg_db,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn database_url(&self) -> Option<String> {
        self.pg_db.as_ref().map(|db| {
            let admin = pg_admin_url();
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin);
            format!("{base}/{db}")
        })
    }

    /// `--data-dir X` or `--database-url Y`.
    pub fn args(&self) -> Vec<String> {
        match self.database_url() {
            Some(url) => vec!["--database-url".into(), url],
            None => vec!["--data-dir".into(), self.data_dir().display().to_string()],
        }
    }

    /// Runs SQL directly against the store, bypassing the server (tampering tests).
    pub fn sql(&self, sql: &str) -> String {
        match self.database_url() {
            Some(url) => psql(&url, sql),
            None => {
                let out = Command::new("sqlite3")
                    .arg(self.data_dir().join("agentpost.db"))
                    .arg(sql)
                    .output()
                    .expect("sqlite3 must be installed for the SQLite tampering tests");
                assert!(
                    out.status.success(),
                    "sqlite3: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        }
    }

    /// Every byte the store holds, for secret scanning.
    pub fn dump(&self) -> Vec<u8> {
        match self.database_url() {
            Some(url) => {
                let out = Command::new("pg_dump").arg(&url).output().expect("pg_dump");
                assert!(
                    out.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
            None => {
                let mut all = vec![];
                for entry in walk(&self.data_dir()) {
                    if let Ok(mut f) = std::fs::File::open(&entry) {
                        let _ = f.read_to_end(&mut all);
                    }
                }
                all
            }
        }
    }

    pub fn init(&self, extra: &[&str]) -> Value {
        let out = Command::new(BIN)
            .arg("init")
            .args(self.args())
            .args(extra)
            .arg("--json")
            .output()
            .expect("run agentpost init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("init --json prints one JSON object")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(db) = &self.pg_db {
            let _ = Command::new("psql")
                .args([
                    &pg_admin_url(),
                    "-tAc",
                    &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// A running `agentpost serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    pub fn start(store: &Store) -> Self {
        Self::start_with(store, &[], &[])
    }

    pub fn start_with(store: &Store, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = store
            .dir
            .path()
            .join(format!("server-{}.log", uuid::Uuid::now_v7().simple()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(store.args())
            .args(["--http", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("AGENTPOST_LOG", "debug,sqlx=info,hyper=info,h2=info")
            // Any free port (tests run side by side), no DNS lookups for sender authentication.
            .env("AGENTPOST_SMTP", "127.0.0.1:0")
            .env("AGENTPOST_SUBMISSION", "127.0.0.1:0")
            .env("AGENTPOST_SMTP_DNS", "offline")
            .env_remove("AGENTPOST_ADMIN_KEY_FILE")
            .current_dir(store.dir.path())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn agentpost serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| {
                    v.pointer("/fields/http")
                        .and_then(|h| h.as_str())
                        .map(str::to_string)
                })
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Server {
            child,
            base,
            log,
            http: reqwest::Client::new(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, key, Some(body)).await
    }

    /// Creates an agent and returns (agent id, token secret).
    pub async fn agent(&self, key: &str, local: &str) -> (String, String) {
        let (s, v) = self
            .post(
                "/v1/agents",
                key,
                json!({ "local_part": local, "sponsor": "owner@example.com" }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["agent"]["id"].as_str().unwrap().to_string(),
            v["token"]["secret"].as_str().unwrap().to_string(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with the given environment; returns (status, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("AGENTPOST_ADMIN_KEY")
        .env_remove("AGENTPOST_ADMIN_KEY_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run agentpost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Declares one async test per backend: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::common::Backend::Postgres).await
            }
        }
    };
}

/// The inbound SMTP address of a running server (`fields.smtp` of its
/// "agentpost listening" log line).
pub fn smtp_addr(server: &Server) -> String {
    server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v.pointer("/fields/smtp")
                .and_then(|h| h.as_str())
                .map(str::to_string)
        })
        .expect("the server logs its SMTP address")
}

/// Reads every message of an agent through the API (all folders, every page).
pub async fn all_messages(
    server: &Server,
    key: &str,
    agent: &str,
    folder: Option<&str>,
) -> Vec<Value> {
    let mut out = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/agents/{agent}/messages?limit=200");
        if let Some(f) = folder {
            path.push_str(&format!("&folder={f}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = server.get(&path, key).await;
        assert_eq!(s, 200, "{v}");
        out.extend(v["data"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// One SMTP transaction with a tiny client: returns the final reply line
/// (e.g. `250 2.0.0 Ok: queued as …`) or the first refusal.
pub async fn smtp_send(
    addr: &str,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
) -> std::io::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let mut c = SmtpClient::new(stream);
    c.reply().await?;
    c.cmd("EHLO client.test").await?;
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await?;
    if !r.starts_with('2') {
        return Ok(r);
    }
    let mut any = false;
    let mut last = String::new();
    for r in rcpts {
        last = c.cmd(&format!("RCPT TO:<{r}>")).await?;
        any |= last.starts_with('2');
    }
    if !any {
        return Ok(last);
    }
    let r = c.cmd("DATA").await?;
    if !r.starts_with('3') {
        return Ok(r);
    }
    let r = c.data(data).await?;
    let _ = c.cmd("QUIT").await;
    Ok(r)
}

/// A minimal SMTP client for tests (reply lines, dot-stuffing).
pub struct SmtpClient {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl SmtpClient {
    pub fn new(stream: tokio::net::TcpStream) -> Self {
        let (r, w) = stream.into_split();
        SmtpClient {
            r: tokio::io::BufReader::new(r),
            w,
        }
    }

    /// The last line of a (possibly multi-line) reply.
    pub async fn reply(&mut self) -> std::io::Result<String> {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(line.trim_end().to_string());
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        use tokio::io::AsyncWriteExt;
        self.w.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Sends the message body (CRLF line endings expected) and the final dot.
    pub async fn data(&mut self, data: &[u8]) -> std::io::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut at_line_start = true;
        for &b in data {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.w.write_all(&out).await?;
        self.reply().await
    }
}
