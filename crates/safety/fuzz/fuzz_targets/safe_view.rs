//! Fuzz target: every public entry point must return (never panic, never overflow the stack) on any bytes.
#![no_main]

use agentpost_safety::{
    Provenance, analyze_html, analyze_message, analyze_text, clean_field, extract_codes,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let view = analyze_html(&s);
    let _ = extract_codes(&view.text);
    let _ = analyze_text(&s);
    let _ = clean_field(&s);
    let message = analyze_message(data, &Provenance::default());
    assert_eq!(message.prompt_text.matches("</untrusted_content>").count(), 1);
});
