//! Upstream JSON bodies through the shape validators and usage extraction.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::response_json(data));
