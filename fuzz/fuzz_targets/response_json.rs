//! Upstream JSON bodies through the shape validators and usage extraction.
#![no_main]
use keygate::response::{usage, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = usage::find(&v);
        let mut t = String::new();
        validate::event_text(&v, &mut t);
    }
    for ep in [
        validate::Endpoint::ChatCompletions,
        validate::Endpoint::AnthropicMessages,
        validate::Endpoint::GeminiGenerate,
        validate::Endpoint::Embeddings,
        validate::Endpoint::Other,
    ] {
        if let Ok(p) = validate::check_json_body(ep, 200, data) {
            let _ = p.usage();
        }
    }
});
