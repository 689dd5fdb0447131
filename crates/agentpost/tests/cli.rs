//! The CLI as an operator uses it: client commands against a running server,
//! declarative `apply`, configuration precedence, keys handed in by file.

mod common;

use common::{Backend, Server, Store, cli};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

async fn commands(backend: Backend) {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let s = Server::start(&store);
    let cwd = store.dir.path();
    let env = [
        ("AGENTPOST_URL", s.base.as_str()),
        ("AGENTPOST_ADMIN_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| {
        let (code, out, err) = cli(args, &env, cwd);
        assert_eq!(code, 0, "agentpost {args:?} failed: {err}");
        out
    };

    // Without a key the CLI says what to do; a key is never an argument.
    let (code, _, err) = cli(
        &["agent", "list"],
        &[("AGENTPOST_URL", s.base.as_str())],
        cwd,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("AGENTPOST_ADMIN_KEY") && err.contains("--admin-key-file"),
        "{err}"
    );
    let (code, _, err) = cli(
        &["agent", "list"],
        &[
            ("AGENTPOST_URL", s.base.as_str()),
            ("AGENTPOST_ADMIN_KEY", "ap_adm_typo"),
        ],
        cwd,
    );
    assert_eq!(code, 1);
    assert!(err.contains("not usable"), "{err}");
    let key_file = cwd.join("admin.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let (code, out, _) = cli(
        &[
            "agent",
            "list",
            "--admin-key-file",
            key_file.to_str().unwrap(),
        ],
        &[("AGENTPOST_URL", s.base.as_str())],
        cwd,
    );
    assert_eq!(code, 0, "{out}");
    let mut child = std::process::Command::new(common::BIN)
        .args(["agent", "list", "--json", "--admin-key-file", "-"])
        .env("AGENTPOST_URL", &s.base)
        .env_remove("AGENTPOST_ADMIN_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{key}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "key from standard input");

    let out = run(&[
        "agent",
        "create",
        "helpdesk",
        "--sponsor",
        "lead@example.com",
        "--display-name",
        "Help Desk",
    ]);
    assert!(
        out.contains("helpdesk@agents.localhost") && out.contains("ap_agt_"),
        "{out}"
    );
    let created = json_of(&run(&[
        "agent",
        "create",
        "ops@agents.localhost",
        "--sponsor",
        "lead@example.com",
        "--json",
    ]));
    let id = created["agent"]["id"].as_str().unwrap().to_string();
    let table = run(&["agent", "list"]);
    assert!(
        table.starts_with("ID")
            && table.contains("helpdesk@agents.localhost")
            && table.contains("ops@agents.localhost"),
        "{table}"
    );
    assert_eq!(
        json_of(&run(&["agent", "show", &id, "--json"]))["address"],
        "ops@agents.localhost"
    );
    assert_eq!(
        json_of(&run(&["agent", "suspend", &id, "--json"]))["status"],
        "suspended"
    );
    assert_eq!(
        json_of(&run(&["agent", "resume", &id, "--json"]))["status"],
        "active"
    );

    let t = json_of(&run(&[
        "token",
        "create",
        &id,
        "--name",
        "ro",
        "--scopes",
        "mail.read,calendar.read",
        "--json",
    ]));
    assert_eq!(
        t["credential"]["scopes"],
        serde_json::json!(["mail.read", "calendar.read"])
    );
    let tid = t["credential"]["id"].as_str().unwrap().to_string();
    let tokens = run(&["token", "list", &id]);
    assert!(
        tokens.contains("ro") && !tokens.contains(t["secret"].as_str().unwrap()),
        "{tokens}"
    );
    let rotated = run(&["token", "rotate", &id, &tid, "--overlap-seconds", "60"]);
    assert!(rotated.contains("shown once"), "{rotated}");
    assert!(json_of(&run(&["token", "revoke", &id, &tid, "--json"]))["revoked_at"].is_string());
    let (code, _, err) = cli(
        &["token", "create", &id, "--scopes", "mail.everything"],
        &env,
        cwd,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("422") && err.contains("field: scopes"),
        "{err}"
    );

    let dns = run(&["domain", "add", "agents.example.org"]);
    assert!(
        dns.contains("_domainkey.agents.example.org.")
            && dns.contains("v=DKIM1; k=ed25519")
            && dns.contains("k=rsa"),
        "{dns}"
    );
    assert!(
        dns.contains("_dmarc.agents.example.org.")
            && dns.contains("v=spf1 mx -all")
            && dns.contains("MX"),
        "{dns}"
    );
    assert!(run(&["domain", "dns", "agents.example.org", "--json"]).contains("dns_records"));

    let export = cwd.join("ops.tar.gz");
    let out = run(&[
        "agent",
        "decommission",
        &id,
        "--export-to",
        export.to_str().unwrap(),
    ]);
    assert!(out.contains("decommissioned"), "{out}");
    assert!(std::fs::metadata(&export).unwrap().len() > 100);
}
both_backends!(client_commands, super::commands);

async fn apply(backend: Backend) {
    let store = Store::new(backend);
    let key = store.init(&[])["admin_key"].as_str().unwrap().to_string();
    let s = Server::start(&store);
    let cwd = store.dir.path();
    let env = [
        ("AGENTPOST_URL", s.base.as_str()),
        ("AGENTPOST_ADMIN_KEY", key.as_str()),
    ];
    let file = cwd.join("agents.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap().to_string();
    write(
        r#"
[[agent]]
address = "triage@agents.localhost"
sponsor = "lead@example.com"
display_name = "Triage"

[[agent]]
address = "reports@agents.localhost"
sponsor = "lead@example.com"
description = "weekly reports"
"#,
    );
    // Creating needs somewhere to put the tokens; nothing happens without it.
    let (code, _, err) = cli(&["apply", "-f", &f], &env, cwd);
    assert_eq!(code, 1);
    assert!(err.contains("--tokens-out"), "{err}");
    assert_eq!(
        s.get("/v1/agents", &key).await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let tokens = cwd.join("tokens.json");
    let (code, out, err) = cli(
        &["apply", "-f", &f, "--tokens-out", tokens.to_str().unwrap()],
        &env,
        cwd,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created").count(), 2, "{out}");
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    let triage_token = written["triage@agents.localhost"].as_str().unwrap();
    assert_eq!(s.get("/v1/me", triage_token).await.0, 200);

    // A second run changes nothing.
    let (code, out, _) = cli(&["apply", "-f", &f, "--json"], &env, cwd);
    assert_eq!(code, 0);
    let changes = json_of(&out)["changes"].as_array().unwrap().clone();
    assert!(changes.iter().all(|c| c["action"] == "unchanged"), "{out}");

    // A change is applied as an update; --prune decommissions what the file dropped.
    write(
        r#"
[[agent]]
address = "triage@agents.localhost"
sponsor = "lead@example.com"
display_name = "Triage Bot"
"#,
    );
    let (code, out, _) = cli(&["apply", "-f", &f, "--dry-run", "--prune"], &env, cwd);
    assert_eq!(code, 0);
    assert!(
        out.contains("update") && out.contains("decommission"),
        "{out}"
    );
    let (code, out, err) = cli(&["apply", "-f", &f, "--prune", "--yes"], &env, cwd);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("updated")
            && out.contains("display_name")
            && out.contains("decommissioned")
            && out.contains("reports@"),
        "{out}"
    );
    let (_, live) = s.get("/v1/agents?status=active", &key).await;
    let live: Vec<&str> = live["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["display_name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(live, vec!["Triage Bot"]);
    // Pruning without --yes asks, and a missing answer changes nothing.
    write("");
    let (code, _, err) = cli(&["apply", "-f", &f, "--prune"], &env, cwd);
    assert_eq!(code, 1);
    assert!(err.contains("not confirmed"), "{err}");
    assert_eq!(
        s.get("/v1/agents?status=active", &key).await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
both_backends!(declarative_apply, super::apply);

#[test]
fn configuration_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let init = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["init", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&all, env, cwd);
        assert_eq!(code, 0, "{err}");
        json_of(&out)
    };
    // Default: ./agentpost-data, agents.localhost.
    assert_eq!(init(&[], &[])["domain"], "agents.localhost");
    assert!(cwd.join("agentpost-data/agentpost.db").exists());
    // File beats default.
    std::fs::write(
        cwd.join("agentpost.toml"),
        "data_dir = \"from-file\"\ndomain = \"file.example.com\"\n",
    )
    .unwrap();
    assert_eq!(init(&[], &[])["domain"], "file.example.com");
    assert!(cwd.join("from-file/agentpost.db").exists());
    // Environment beats file.
    let v = init(
        &[],
        &[
            ("AGENTPOST_DOMAIN", "env.example.com"),
            ("AGENTPOST_DATA_DIR", "from-env"),
        ],
    );
    assert_eq!(v["domain"], "env.example.com");
    assert!(cwd.join("from-env/agentpost.db").exists());
    // Flag beats environment.
    let v = init(
        &["--domain", "flag.example.com", "--data-dir", "from-flag"],
        &[("AGENTPOST_DOMAIN", "env.example.com")],
    );
    assert_eq!(v["domain"], "flag.example.com");
    // A second init refuses and says what to do instead.
    let (code, _, err) = cli(&["init", "--data-dir", "from-flag"], &[], cwd);
    assert_eq!(code, 1);
    assert!(err.contains("already initialised"), "{err}");
    // Bad configuration is a clear message.
    std::fs::write(cwd.join("agentpost.toml"), "domian = \"typo\"\n").unwrap();
    let (code, _, err) = cli(&["init"], &[], cwd);
    assert_eq!(code, 1);
    assert!(
        err.contains("agentpost.toml") && err.contains("domian"),
        "{err}"
    );
    std::fs::remove_file(cwd.join("agentpost.toml")).unwrap();
    let (code, _, err) = cli(&["serve", "--database-url", "mysql://x"], &[], cwd);
    assert_eq!(code, 1);
    assert!(err.contains("postgres://"), "{err}");
}

async fn key_from_file(backend: Backend) {
    let store = Store::new(backend);
    let key =
        agentpost_core::secret::Secret::generate(agentpost_core::secret::CredentialKind::Admin)
            .into_exposed();
    let file = store.dir.path().join("provided.key");
    std::fs::write(&file, &key).unwrap();
    let s = Server::start_with(
        &store,
        &[],
        &[("AGENTPOST_ADMIN_KEY_FILE", file.to_str().unwrap())],
    );
    let (st, me) = s.get("/v1/me", &key).await;
    assert_eq!((st, me["kind"].as_str()), (200, Some("admin")));
    assert!(
        !s.log_text().contains(&key[7..]),
        "a provided key is never printed"
    );
    drop(s);
    // A file holding something else is refused with a reason.
    let store = Store::new(backend);
    let file = store.dir.path().join("bad.key");
    std::fs::write(&file, "ap_agt_nope").unwrap();
    let (code, _, err) = cli(
        &["init", "--data-dir", store.data_dir().to_str().unwrap()],
        &[("AGENTPOST_ADMIN_KEY_FILE", file.to_str().unwrap())],
        store.dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("admin_key_file"), "{err}");
}
both_backends!(admin_key_handed_in_by_file, super::key_from_file);

#[test]
fn inspect_prints_the_safe_view_of_a_message_file() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../safety/tests/corpus");
    let expect: toml::Value = toml::from_str(
        &std::fs::read_to_string(corpus.join("css_display_none.expect.toml")).unwrap(),
    )
    .unwrap();
    let file = corpus.join("css_display_none.eml");
    let (code, out, err) = cli(&["inspect", file.to_str().unwrap(), "--json"], &[], &corpus);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().lines().count(), 1, "exactly one JSON object");
    let v = json_of(&out);
    for field in [
        "text",
        "findings",
        "links",
        "risk",
        "reply_text",
        "prompt_text",
        "codes",
    ] {
        assert!(v.get(field).is_some(), "inspect --json lacks {field}");
    }
    let text = v["text"].as_str().unwrap();
    for phrase in expect["must_contain"].as_array().unwrap() {
        assert!(
            text.contains(phrase.as_str().unwrap()),
            "visible text lost {phrase}: {text}"
        );
    }
    for phrase in expect["must_not_contain"].as_array().unwrap() {
        assert!(
            !text.contains(phrase.as_str().unwrap()),
            "hidden text {phrase} leaked: {text}"
        );
        assert!(
            !v["prompt_text"]
                .as_str()
                .unwrap()
                .contains(phrase.as_str().unwrap())
        );
    }
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "hidden_css"),
        "{v}"
    );
    // As text for a human.
    let (code, out, _) = cli(&["inspect", file.to_str().unwrap()], &[], &corpus);
    assert_eq!(code, 0);
    assert!(out.contains("removed: hidden_css"), "{out}");
    let (code, _, err) = cli(&["inspect", "/nonexistent.eml"], &[], &corpus);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}
