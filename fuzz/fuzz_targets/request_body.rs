//! Client JSON bodies: strict parsing (duplicate keys, depth).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::request_body(data));
