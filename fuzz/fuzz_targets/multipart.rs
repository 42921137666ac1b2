//! Multipart uploads (transcriptions, image edits) parsed as they pass, cut anywhere.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::multipart(data));
