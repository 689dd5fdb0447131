//! Shared by the core's integration tests: a fresh PostgreSQL database per
//! test on the suite's server (trust auth), dropped afterwards.

use std::process::Command;

/// A fresh database on the suite's PostgreSQL (trust auth), dropped on drop.
pub struct PgDb(String);

impl PgDb {
    pub fn new() -> Self {
        let name = format!("ap_core_{}", uuid::Uuid::now_v7().simple());
        let out = Command::new("psql")
            .args([&admin_url(), "-tAc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "PostgreSQL is required: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgDb(name)
    }
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin);
        format!("{base}/{}", self.0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &admin_url(),
                "-tAc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
            ])
            .output();
    }
}

pub fn admin_url() -> String {
    std::env::var("AGENTPOST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}
