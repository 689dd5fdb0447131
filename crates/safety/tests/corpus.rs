//! Runs every message of the adversarial/benign corpus against its `.expect.toml` and reports all failures at once.

use std::path::{Path, PathBuf};

use agentpost_safety::{Provenance, RiskLevel, SafeView, analyze_message};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    description: String,
    #[serde(default)]
    benign: bool,
    #[serde(default)]
    must_contain: Vec<String>,
    #[serde(default)]
    must_not_contain: Vec<String>,
    #[serde(default)]
    reply_must_contain: Vec<String>,
    #[serde(default)]
    reply_must_not_contain: Vec<String>,
    /// Finding kinds that must be reported.
    #[serde(default)]
    findings: Vec<String>,
    /// Finding kinds that must not be reported.
    #[serde(default)]
    findings_absent: Vec<String>,
    risk_at_least: Option<String>,
    risk_at_most: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn check(name: &str, view: &SafeView, e: &Expect) -> Vec<String> {
    let mut errs = Vec::new();
    let kinds: Vec<&str> = view.findings.iter().map(|f| f.kind.as_str()).collect();
    for s in &e.must_contain {
        if !view.text.contains(s.as_str()) {
            errs.push(format!("text lacks {s:?}"));
        }
    }
    for s in &e.must_not_contain {
        if view.text.contains(s.as_str()) {
            errs.push(format!("text contains {s:?}"));
        }
        if view.reply_text.contains(s.as_str()) {
            errs.push(format!("reply_text contains {s:?}"));
        }
    }
    for s in &e.reply_must_contain {
        if !view.reply_text.contains(s.as_str()) {
            errs.push(format!("reply_text lacks {s:?}"));
        }
    }
    for s in &e.reply_must_not_contain {
        if view.reply_text.contains(s.as_str()) {
            errs.push(format!("reply_text contains {s:?}"));
        }
    }
    for k in &e.findings {
        if !kinds.contains(&k.as_str()) {
            errs.push(format!("missing finding {k}"));
        }
    }
    for k in &e.findings_absent {
        if kinds.contains(&k.as_str()) {
            errs.push(format!("unexpected finding {k}"));
        }
    }
    if let Some(min) = e.risk_at_least.as_deref() {
        match RiskLevel::parse(min) {
            Some(min) if view.risk.level >= min => {}
            Some(_) => errs.push(format!("risk {:?} below {min}", view.risk.level)),
            None => errs.push(format!("bad risk_at_least {min}")),
        }
    }
    if let Some(max) = e.risk_at_most.as_deref() {
        match RiskLevel::parse(max) {
            Some(max) if view.risk.level <= max => {}
            Some(_) => errs.push(format!("risk {:?} above {max}", view.risk.level)),
            None => errs.push(format!("bad risk_at_most {max}")),
        }
    }
    // Whatever the case, the prompt text must carry exactly one pair of delimiters.
    if view.prompt_text.matches("</untrusted_content>").count() != 1 {
        errs.push("prompt_text delimiters not unique".to_string());
    }
    if !errs.is_empty() {
        errs.insert(
            0,
            format!(
                "{name} ({}):\n      text={:?}\n      reply={:?}\n      findings={:?}\n      risk={:?}",
                e.description, view.text, view.reply_text, kinds, view.risk
            ),
        );
    }
    errs
}

#[test]
fn corpus_cases_hold() {
    let dir = corpus_dir();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    entries.sort();
    let (mut benign, mut adversarial) = (0, 0);
    let mut failures = Vec::new();
    let prov = Provenance {
        sender: Some("sender@example.com".into()),
        auth: Some("spf=pass dkim=pass dmarc=pass".into()),
    };
    for path in &entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let expect_path = path.with_extension("expect.toml");
        let expect: Expect = match std::fs::read_to_string(&expect_path)
            .map_err(|e| e.to_string())
            .and_then(|s| toml::from_str(&s).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(err) => {
                failures.push(format!("{name}: cannot read expectations: {err}"));
                continue;
            }
        };
        if expect.benign {
            benign += 1;
        } else {
            adversarial += 1;
        }
        let raw = std::fs::read(path).expect("read eml");
        let view = analyze_message(&raw, &prov);
        let errs = check(&name, &view, &expect);
        if !errs.is_empty() {
            failures.push(errs.join("\n    "));
        }
    }
    assert!(
        benign >= 15,
        "need at least 15 benign controls, have {benign}"
    );
    assert!(
        benign + adversarial >= 60,
        "need at least 60 cases, have {}",
        benign + adversarial
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n  {}",
        failures.len(),
        entries.len(),
        failures.join("\n  ")
    );
}
