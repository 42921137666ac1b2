//! Request paths and raw header blocks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::request_path(data));
