//! Prints the safe view of a file (`.eml` as a message, `.html` as HTML, else text) as JSON.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dump FILE");
        std::process::exit(2);
    };
    let bytes = std::fs::read(&path).unwrap_or_default();
    let t = std::time::Instant::now();
    let view = if path.ends_with(".eml") {
        agentpost_safety::analyze_message(&bytes, &agentpost_safety::Provenance::default())
    } else if path.ends_with(".html") {
        agentpost_safety::analyze_html(&String::from_utf8_lossy(&bytes))
    } else {
        agentpost_safety::analyze_text(&String::from_utf8_lossy(&bytes))
    };
    let elapsed = t.elapsed();
    println!(
        "{}",
        serde_json::to_string_pretty(&view).unwrap_or_default()
    );
    eprintln!("took {elapsed:?}");
}
