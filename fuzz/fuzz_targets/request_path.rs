//! Request paths and raw header blocks.
#![no_main]
use keygate::request::hygiene;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hygiene::has_cl_and_te(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if hygiene::check_path(s).is_ok() {
            assert!(!s.split('/').any(|seg| seg == ".." || seg == "."));
        }
    }
});
