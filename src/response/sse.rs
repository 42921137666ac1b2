//! Incremental Server-Sent Events framing with a bounded event size.
//!
//! Chunks from the network do not align with events; [`SseFramer::push`] buffers at
//! most `max_event` bytes of an unfinished event and returns each complete one.

/// One event: its `event:` name and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    /// The event's raw bytes including the terminating blank line.
    pub raw: Vec<u8>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// An event grew past the bound.
    EventTooLarge,
    /// Not UTF-8.
    NotUtf8,
}

/// Splits a byte stream into events.
#[derive(Debug)]
pub struct SseFramer {
    buf: Vec<u8>,
    max_event: usize,
    /// Past the stream's first bytes (where a byte-order mark may stand).
    started: bool,
}

/// A UTF-8 byte-order mark: stripped at the start of a stream, as EventSource does, so
/// the first event is read as a client reads it.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseFramer {
    pub fn new(max_event: usize) -> Self {
        SseFramer {
            buf: Vec::new(),
            max_event,
            started: false,
        }
    }

    /// Bytes held for an unfinished event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed a chunk; return the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut search_from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(chunk);
        if !self.started {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(out);
            }
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            self.started = true;
            search_from = 0;
        }
        let mut start = 0;
        let mut i = search_from;
        while let Some(end) = find_blank_line(&self.buf, i.max(start)) {
            let (body_end, next) = end;
            let mut ev = parse_event(&self.buf[start..body_end])?;
            ev.raw = self.buf[start..next].to_vec();
            out.push(ev);
            start = next;
            i = next;
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max_event {
            return Err(SseError::EventTooLarge);
        }
        Ok(out)
    }
}

/// Find the end of an event (a blank line: `\n\n`, `\r\n\r\n`, `\r\r`, or mixed) at or
/// after `from`. Returns (end of the event's lines, index after the blank line).
fn find_blank_line(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < b.len() {
        let eol = match b[i] {
            b'\n' => 1,
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => {
                if i + 1 == b.len() {
                    // A lone CR at the end may be the first half of CRLF.
                    return None;
                }
                1
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let j = i + eol;
        // Is the next line empty?
        match (b.get(j), b.get(j + 1)) {
            (Some(b'\n'), _) => return Some((i, j + 1)),
            (Some(b'\r'), Some(b'\n')) => return Some((i, j + 2)),
            (Some(b'\r'), Some(_)) => return Some((i, j + 1)),
            (Some(b'\r'), None) => return None,
            _ => {}
        }
        i = j;
    }
    None
}

fn parse_event(bytes: &[u8]) -> Result<Event, SseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SseError::NotUtf8)?;
    let mut ev = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => data.push(value),
            "event" => ev.event = Some(value.to_string()),
            _ => {}
        }
    }
    ev.data = data.join("\n");
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_leading_byte_order_mark_is_stripped_even_when_cut() {
        for cut in 0..=4 {
            let stream = b"\xEF\xBB\xBFdata: {\"a\":1}\n\n";
            let mut f = SseFramer::new(1024);
            let mut evs = f.push(&stream[..cut]).unwrap();
            evs.extend(f.push(&stream[cut..]).unwrap());
            assert_eq!(evs.len(), 1, "cut at {cut}");
            assert_eq!(evs[0].data, "{\"a\":1}", "cut at {cut}");
        }
        // Only at the start: later it is data like any other.
        let mut f = SseFramer::new(1024);
        f.push(b"data: x\n\n").unwrap();
        let evs = f.push(b"\xEF\xBB\xBFdata: y\n\n").unwrap();
        assert_ne!(evs[0].data, "y");
    }

    #[test]
    fn frames_across_chunks_and_line_endings() {
        let mut f = SseFramer::new(1024);
        assert!(f.push(b"data: {\"a\"").unwrap().is_empty());
        let evs = f
            .push(b":1}\n\nevent: x\r\ndata: y\r\n\r\ndata: [DONE]\n")
            .unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(
            (evs[1].event.as_deref(), evs[1].data.as_str()),
            (Some("x"), "y")
        );
        let evs = f.push(b"\n").unwrap();
        assert_eq!(evs[0].data, "[DONE]");
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn multi_line_data_and_comments() {
        let mut f = SseFramer::new(1024);
        let evs = f.push(b": keep-alive\n\ndata: a\ndata: b\n\n").unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].data, "a\nb");
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut f = SseFramer::new(16);
        assert_eq!(f.push(&[b'x'; 40]).unwrap_err(), SseError::EventTooLarge);
    }

    proptest! {
        /// However a stream is cut into chunks, the same events come out.
        #[test]
        fn chunking_does_not_change_events(datas in proptest::collection::vec("[a-z{}\":0-9 ]{0,20}", 1..8), cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let stream: String = datas.iter().map(|d| format!("data: {d}\n\n")).collect();
            let bytes = stream.as_bytes();
            let mut whole = SseFramer::new(4096);
            let expected: Vec<String> = whole.push(bytes).unwrap().into_iter().map(|e| e.data).collect();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort();
            let mut f = SseFramer::new(4096);
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                got.extend(f.push(&bytes[last..p]).unwrap().into_iter().map(|e| e.data));
                last = p;
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10)) {
            let mut f = SseFramer::new(256);
            for c in chunks {
                if f.push(&c).is_err() { break; }
            }
        }
    }
}
