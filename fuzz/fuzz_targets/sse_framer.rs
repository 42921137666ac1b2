//! SSE framing of upstream bytes, cut into chunks at fuzzer-chosen points.
#![no_main]
use keygate::response::sse::SseFramer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut f = SseFramer::new(4096);
    for chunk in rest.chunks(cut as usize % 64 + 1) {
        match f.push(chunk) {
            Ok(events) => {
                for e in events {
                    let _ = keygate::response::validate::check_event_data(&e.data);
                }
            }
            Err(_) => break,
        }
        assert!(f.pending() <= 4096 + 64, "framer buffer is bounded");
    }
});
