//! Client signature headers: Signature-Input / Signature / Content-Digest parsing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::signature_headers(data));
