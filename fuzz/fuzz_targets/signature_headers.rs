//! Client signature headers: Signature-Input / Signature / Content-Digest parsing.
#![no_main]
use keygate::auth::{sfv, signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = sfv::parse_dictionary(s);
    let _ = signature::parse_content_digest(s);
    let (input, sig) = s.split_once('\n').unwrap_or((s, "sig1=:AAAA:"));
    let _ = signature::parse(&[input], &[sig], &Default::default());
});
