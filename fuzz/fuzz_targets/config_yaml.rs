//! The config loader: any text gives a Runtime or a list of path-named errors, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::config_yaml(data));
