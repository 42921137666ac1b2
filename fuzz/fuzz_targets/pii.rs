//! PII detection and restoration on arbitrary text (see `keygate::fuzzing::pii`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::pii(data));
