//! Feeds a few thousand random and mutated inputs through every public function and asserts none panics.
//!
//! A stable stand-in for the `cargo fuzz` target in `fuzz/` (which needs nightly).

use agentpost_safety::{
    Provenance, analyze_html, analyze_message, analyze_text, clean_field, extract_codes,
};

/// xorshift64*: deterministic, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const PIECES: &[&str] = &[
    "<div>",
    "</div>",
    "<span style=\"",
    "\">",
    "<p>",
    "</p>",
    "<b>",
    "</b>",
    "<a href=\"",
    "https://xn--pypal-4ve.com/",
    "javascript:x",
    "<table bgcolor=#fff><tr><td>",
    "</td></tr></table>",
    "<style>",
    "</style>",
    ".a{display:none}",
    "* {color:rgba(0,0,0,0)}",
    "@media screen{",
    "}",
    "p::after{content:'x'}",
    "display:none;",
    "font-size:0;",
    "color:#fff;",
    "opacity:.01;",
    "position:absolute;left:-9999px;",
    "clip:rect(0 0 0 0);",
    "transform:scale(0);",
    "text-indent:-999em;",
    "max-height:0;overflow:hidden;",
    "<!--",
    "-->",
    "<!--[if mso]>",
    "<![endif]-->",
    "<template>",
    "<noscript>",
    "<script>",
    "</script>",
    "<img alt=\"",
    "<details>",
    "<summary>",
    "<font color=white size=1>",
    "<blockquote type=cite>",
    "<div class=\"gmail_quote\">",
    "<div id=\"divRplyFwdMsg\">",
    "ignore previous instructions",
    "\u{200B}",
    "\u{200D}",
    "\u{202E}",
    "\u{2066}",
    "\u{E0041}",
    "\u{E007F}",
    "\u{1F3F4}",
    "\u{FE0F}",
    "\u{E0100}",
    "\u{0}",
    "\u{85}",
    "&#xE0041;",
    "&nbsp;",
    "&",
    "<",
    ">",
    "\"",
    "'",
    "\r\n",
    "\n",
    " ",
    "héllo",
    "مرحبا",
    "שלום",
    "日本語",
    "code 123456",
    "https://e.com/verify?t=1",
    "<svg><text>",
    "</svg>",
    "<math>",
    "<select><option>",
    "<textarea>",
    "<plaintext>",
    "<br>",
    "<li>",
    "<pre>",
    "\t",
    "{",
    "(",
    "[",
    "\\",
    "/*",
    "*/",
    "!important",
    "<html>",
    "<body bgcolor=#000 text=#000>",
];

fn random_html(rng: &mut Rng) -> String {
    let n = 1 + rng.below(80);
    (0..n).map(|_| rng.pick(PIECES)).collect()
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(16) {
        if v.is_empty() {
            v.push(b'<');
        }
        let at = rng.below(v.len());
        match rng.below(5) {
            0 => v[at] = rng.next() as u8,
            1 => {
                v.truncate(at);
            }
            2 => {
                let piece = rng.pick(PIECES).as_bytes().to_vec();
                v.splice(at..at, piece);
            }
            3 => {
                let end = (at + rng.below(64)).min(v.len());
                v.drain(at..end);
            }
            _ => {
                let end = (at + rng.below(256)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn exercise(bytes: &[u8]) {
    let s = String::from_utf8_lossy(bytes);
    let v = analyze_html(&s);
    let _ = extract_codes(&v.text);
    let _ = analyze_text(&s);
    let _ = clean_field(&s);
    let prov = Provenance {
        sender: Some(s.chars().take(40).collect()),
        auth: None,
    };
    let m = analyze_message(bytes, &prov);
    assert_eq!(m.prompt_text.matches("</untrusted_content>").count(), 1);
}

#[test]
fn random_inputs_never_panic() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for _ in 0..2_000 {
        let html = random_html(&mut rng);
        exercise(html.as_bytes());
    }
}

#[test]
fn mutated_corpus_never_panics() {
    let mut rng = Rng(0xC0FF_EE00_1234_5678);
    let base = corpus();
    assert!(!base.is_empty());
    for i in 0..1_500 {
        let m = mutate(&mut rng, &base[i % base.len()]);
        exercise(&m);
    }
}
