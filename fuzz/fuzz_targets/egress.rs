//! The secret-egress scan over upstream JSON bodies and SSE streams (escapes, splits).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::egress(data));
