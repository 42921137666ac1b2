//! SSE framing of upstream bytes, cut into chunks at fuzzer-chosen points.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::sse_framer(data));
