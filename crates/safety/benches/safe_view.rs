//! Throughput of `analyze_html` against `ammonia::clean` on the same realistic HTML (newsletters, replies, receipts, corpus bodies).
//!
//! Run with `cargo bench -p agentpost-safety`. Plain `std::time` timing, no harness.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, PartType};

fn newsletter(items: usize) -> String {
    let mut s = String::from(
        r##"<!DOCTYPE html><html><head><meta charset="utf-8"><title>Weekly digest</title><style>
body{margin:0;background:#f4f4f4;font-family:Arial,sans-serif}
.wrapper{width:100%;background:#f4f4f4}.content{max-width:600px;margin:0 auto;background:#ffffff}
.preheader{display:none!important;visibility:hidden;opacity:0;color:transparent;height:0;width:0}
h1{font-size:24px;color:#222}.item td{padding:12px 24px;border-bottom:1px solid #eee}
.item .title a{color:#0b57d0;text-decoration:none}.muted{color:#888;font-size:12px}
@media only screen and (max-width:600px){.content{width:100%!important}.hide-mobile{display:none!important}}
@media (prefers-color-scheme:dark){body{background:#111}.content{background:#1b1b1b}}
</style></head><body><div class="preheader">This week: twelve stories you should not miss.</div>
<table class="wrapper" role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td>
<table class="content" role="presentation" width="600" align="center" bgcolor="#ffffff"><tr><td style="padding:24px"><h1>Weekly digest</h1>
<p style="color:#555;font-size:14px;line-height:20px">Hello reader, here is what happened this week.</p></td></tr>"##,
    );
    for i in 0..items {
        s.push_str(&format!(
            r##"<tr class="item"><td><table role="presentation" width="100%"><tr><td class="hide-mobile" width="120"><img src="https://cdn.example.com/i/{i}.jpg" width="120" height="80" alt="Story {i}"></td>
<td class="title"><a href="https://click.example.com/t/{i}?u=abc&amp;l=https%3A%2F%2Fnews.example.com%2F{i}" style="font-size:18px;font-weight:bold">Story number {i}: markets, weather and a long headline that wraps</a>
<p style="margin:4px 0;color:#333;font-size:14px;line-height:20px">A short summary of story {i}, written in a couple of sentences so that the newsletter looks like a real one. <b>Read more</b> inside.</p>
<span class="muted">5 min read &middot; <a href="https://news.example.com/topic/{i}" style="color:#888">Topic {i}</a></span></td></tr></table></td></tr>"##
        ));
    }
    s.push_str(r##"<tr><td style="padding:24px;color:#999;font-size:11px" align="center">You are receiving this email because you subscribed. <a href="https://example.com/unsubscribe" style="color:#999">Unsubscribe</a><br>Example Media, 1 Main Street, Springfield</td></tr></table></td></tr></table></body></html>"##);
    s
}

fn reply_chain(depth: usize) -> String {
    let mut s = String::from(
        r##"<html><body><div dir="ltr">Thanks, that works. Let's go with option B and review on Friday.</div><br>"##,
    );
    for i in 0..depth {
        s.push_str(&format!(
            r##"<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Mar {d}, 2025 at 9:{i:02} AM Person {i} &lt;p{i}@example.com&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex"><div dir="ltr"><p>Message {i} in the thread. We discussed the budget, the schedule and the vendor shortlist; see the notes below.</p><ul><li>Budget: approved</li><li>Schedule: two weeks</li><li>Vendors: three candidates</li></ul>"##,
            d = 1 + i % 28
        ));
    }
    for _ in 0..depth {
        s.push_str("</div></blockquote></div>");
    }
    s.push_str("</body></html>");
    s
}

fn receipt(lines: usize) -> String {
    let mut s = String::from(
        r##"<html><body style="font-family:Helvetica"><h2>Order #A-10293 confirmed</h2><p>Thanks for your order, Sam.</p><table width="100%" cellpadding="6" style="border-collapse:collapse"><tr bgcolor="#f0f0f0"><th align="left">Item</th><th>Qty</th><th align="right">Price</th></tr>"##,
    );
    for i in 0..lines {
        s.push_str(&format!(
            r##"<tr><td style="border-bottom:1px solid #ddd">Item {i} &ndash; espresso beans, 1&nbsp;kg</td><td align="center">{q}</td><td align="right">${p}.00</td></tr>"##,
            q = 1 + i % 3,
            p = 10 + i
        ));
    }
    s.push_str(r##"<tr><td colspan="2" align="right"><b>Total</b></td><td align="right"><b>$999.00</b></td></tr></table><p style="color:#777;font-size:12px">Questions? Reply to this email or visit <a href="https://shop.example.com/help">our help centre</a>.</p></body></html>"##);
    s
}

fn corpus_html() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
    {
        let Ok(raw) = std::fs::read(f) else { continue };
        if let Some(msg) = MessageParser::default().parse(&raw) {
            for part in &msg.parts {
                if let PartType::Html(h) = &part.body {
                    out.push(h.to_string());
                }
            }
        }
    }
    out
}

/// Runs `f` over all inputs repeatedly for at least `min` and returns MB/s.
fn throughput(inputs: &[String], min: Duration, mut f: impl FnMut(&str) -> usize) -> f64 {
    let bytes: usize = inputs.iter().map(String::len).sum();
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < min {
        for s in inputs {
            black_box(f(s));
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (bytes as f64 * rounds as f64) / secs / 1e6
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Timed runs per set and implementation; overridable with `SAFE_VIEW_BENCH_RUNS`.
fn runs() -> usize {
    std::env::var("SAFE_VIEW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(7)
}

fn main() {
    let sets: Vec<(&str, Vec<String>)> = vec![
        (
            "newsletters (3 x 10-120 items)",
            vec![newsletter(10), newsletter(40), newsletter(120)],
        ),
        (
            "reply chains (depth 3-25)",
            vec![reply_chain(3), reply_chain(10), reply_chain(25)],
        ),
        (
            "receipts (5-200 lines)",
            vec![receipt(5), receipt(50), receipt(200)],
        ),
        ("corpus HTML bodies", corpus_html()),
    ];
    // The machine is shared: each set alternates short runs of both implementations so that
    // load changes hit both alike, and reports medians (the ratio is the median of the
    // per-pair ratios).
    let runs = runs();
    let min = Duration::from_millis(400);
    println!(
        "{runs} alternating runs of >= {} ms per implementation and set; medians",
        min.as_millis()
    );
    println!("| input set | bytes | analyze_html MB/s | ammonia::clean MB/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let (mut all_ours, mut all_theirs) = (0.0, 0.0);
    let mut all_ratios = Vec::new();
    for (name, inputs) in &sets {
        let bytes: usize = inputs.iter().map(String::len).sum();
        for s in inputs {
            // Warm-up (lazy statics, allocator).
            black_box(agentpost_safety::analyze_html(s));
            black_box(ammonia::clean(s));
        }
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let o = throughput(inputs, min, |s| {
                agentpost_safety::analyze_html(s).text.len()
            });
            let t = throughput(inputs, min, |s| ammonia::clean(s).len());
            ours.push(o);
            theirs.push(t);
            ratios.push(o / t);
        }
        let (o, t, r) = (median(&mut ours), median(&mut theirs), median(&mut ratios));
        all_ours += o;
        all_theirs += t;
        all_ratios.push(r);
        println!("| {name} | {bytes} | {o:.1} | {t:.1} | {r:.2}x |");
    }
    let n = sets.len() as f64;
    let geo = all_ratios.iter().map(|r| r.ln()).sum::<f64>() / n;
    println!(
        "| mean of sets | | {:.1} | {:.1} | {:.2}x (geometric mean of ratios {:.2}x) |",
        all_ours / n,
        all_theirs / n,
        all_ours / all_theirs,
        geo.exp()
    );
}
