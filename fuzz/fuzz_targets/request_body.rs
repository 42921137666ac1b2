//! Client JSON bodies: strict parsing (duplicate keys, depth).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keygate::request::body::parse_strict(data);
});
