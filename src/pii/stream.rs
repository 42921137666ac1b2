//! Restoring placeholders in a streamed answer, event by event.
//!
//! The SSE framer already hands over whole events, so a placeholder split across TCP
//! chunks is never seen in halves. A model's text deltas may split one, though
//! (`[EMA` + `IL_1]` in two events). Per text field (its JSON path, e.g.
//! `choices/0/delta/content`), a trailing piece that could start an issued placeholder
//! is held back and put in front of that field's next delta, so the added delay is at
//! most one placeholder. Held text is sent before the next event that carries no text
//! at all (a finish or usage chunk, `content_block_stop`, `[DONE]`), or at the end of
//! the stream, in a copy of the last event that carried it.

use super::mapping::Pseudonyms;
use serde_json::Value;
use std::sync::Arc;

/// The most text fields held at once. Real streams have one per choice or content block;
/// an upstream that sends an event with thousands of fields each ending in `[` made each
/// hold a copy of the whole event (gigabytes from one 1 MiB event). Past it, text is sent
/// as it is: a placeholder cut across deltas in such a field reaches the client in halves
/// (keygate's own token, not the private text).
const MAX_HELD: usize = 32;

/// The most event bytes held as envelopes at once (each distinct event counted once, by
/// its data's size). Fields held from 32 different events held 32 copies of events up to
/// the SSE event bound each (32 MiB a stream). Past it, text held from earlier events is
/// sent before the event that would pass it.
const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// The event held text is sent in, shared by every field it carried.
struct Envelope {
    name: Option<String>,
    value: Value,
    /// The event's data size as received.
    size: usize,
}
type Template = Arc<Envelope>;

/// One text field with held-back text.
struct Held {
    path: Vec<PathPart>,
    text: String,
    /// The last event that carried this field, to send held text in.
    template: Option<Template>,
}

#[derive(Clone, PartialEq, Eq)]
enum PathPart {
    Key(String),
    Index(usize),
}

/// Per-stream restoration state. `Debug` shows only how much is held.
#[derive(Default)]
pub struct StreamRestorer {
    held: Vec<Held>,
}

impl std::fmt::Debug for StreamRestorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamRestorer({} fields held)", self.held.len())
    }
}

/// Fields holding model text in provider stream events.
fn is_text_key(k: &str) -> bool {
    matches!(k, "content" | "text")
}

impl StreamRestorer {
    /// Restore one event's JSON (`size` bytes of data as received) in place. Returns
    /// events to send *before* this one (held text flushed), and whether `v` changed.
    pub fn event(
        &mut self,
        name: Option<&str>,
        v: &mut Value,
        size: usize,
        map: &Pseudonyms,
    ) -> (Vec<u8>, bool) {
        let mut before = Vec::new();
        let mut has_text = false;
        let mut changed = false;
        let mut path = Vec::new();
        self.walk(v, &mut path, map, &mut has_text, &mut changed);
        if !has_text {
            before = self.flush(map);
        } else if self.held.iter().any(|h| h.template.is_none()) {
            // Remember where held text goes, with this event as its envelope (one copy
            // for every field it carried), within the bound on envelopes.
            if self.envelope_bytes().saturating_add(size) > MAX_TEMPLATE_BYTES {
                before = self.flush(map);
            }
            let t = Arc::new(Envelope {
                name: name.map(str::to_string),
                value: v.clone(),
                size,
            });
            for h in self.held.iter_mut().filter(|h| h.template.is_none()) {
                h.template = Some(t.clone());
            }
        }
        (before, changed)
    }

    /// The bytes of the distinct events held as envelopes.
    fn envelope_bytes(&self) -> usize {
        let mut seen: Vec<&Template> = Vec::new();
        for t in self.held.iter().filter_map(|h| h.template.as_ref()) {
            if !seen.iter().any(|s| Arc::ptr_eq(s, t)) {
                seen.push(t);
            }
        }
        seen.iter().map(|t| t.size).sum()
    }

    fn walk(
        &mut self,
        v: &mut Value,
        path: &mut Vec<PathPart>,
        map: &Pseudonyms,
        has_text: &mut bool,
        changed: &mut bool,
    ) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    path.push(PathPart::Key(k.clone()));
                    match x {
                        Value::String(s) if is_text_key(k) => {
                            *has_text = true;
                            if let Some(new) = self.delta(path, s, map) {
                                *s = new;
                                *changed = true;
                            }
                        }
                        Value::String(s) => {
                            if let std::borrow::Cow::Owned(new) = map.restore(s) {
                                *s = new;
                                *changed = true;
                            }
                        }
                        _ => self.walk(x, path, map, has_text, changed),
                    }
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    path.push(PathPart::Index(i));
                    self.walk(x, path, map, has_text, changed);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// New text for one delta of the field at `path`, or `None` if unchanged.
    fn delta(&mut self, path: &[PathPart], s: &str, map: &Pseudonyms) -> Option<String> {
        let slot = self.held.iter().position(|h| h.path == path);
        let prior = slot.map(|i| self.held.remove(i).text).unwrap_or_default();
        let joined = if prior.is_empty() {
            std::borrow::Cow::Borrowed(s)
        } else {
            std::borrow::Cow::Owned(format!("{prior}{s}"))
        };
        // Hold back a trailing `[…` that could still become an issued placeholder.
        let cut = joined
            .rfind('[')
            .filter(|&i| self.held.len() < MAX_HELD && map.is_issued_prefix(&joined[i..]))
            .unwrap_or(joined.len());
        let (send, hold) = joined.split_at(cut);
        if !hold.is_empty() {
            self.held.push(Held {
                path: path.to_vec(),
                text: hold.to_string(),
                template: None,
            });
        }
        let restored = map.restore(send);
        if prior.is_empty() && hold.is_empty() && matches!(restored, std::borrow::Cow::Borrowed(_))
        {
            None
        } else {
            Some(restored.into_owned())
        }
    }

    /// Events carrying all held text that has its envelope (at the end of the stream,
    /// before an event without text, or to stay within [`MAX_TEMPLATE_BYTES`]). Held text
    /// is not a complete placeholder: it is sent as is. Fields held from one event go out
    /// together, in one copy of it. Text held from the event being read stays.
    pub fn flush(&mut self, map: &Pseudonyms) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut held, current): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.template.is_some());
        self.held = current;
        while let Some(template) = held.first().and_then(|h| h.template.clone()) {
            let (name, mut v) = (template.name.clone(), template.value.clone());
            strip_for_flush(&mut v);
            blank_text(&mut v);
            held.retain(|h| {
                let same = h
                    .template
                    .as_ref()
                    .is_some_and(|t| Arc::ptr_eq(t, &template));
                if same {
                    set_path(
                        &mut v,
                        &h.path,
                        Value::String(map.restore(&h.text).into_owned()),
                    );
                }
                !same
            });
            out.extend_from_slice(&event_bytes(name.as_deref(), &v.to_string()));
        }
        out
    }
}

/// A flushed copy must not repeat the template's usage or finish reason.
fn strip_for_flush(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !matches!(
                    k.as_str(),
                    "usage" | "usageMetadata" | "finishReason" | "finish_reason"
                )
            });
            m.values_mut().for_each(strip_for_flush);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_for_flush),
        _ => {}
    }
}

/// Empty every text field of a copied event (only the held text is sent in it).
fn blank_text(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if is_text_key(k) => s.clear(),
                    _ => blank_text(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(blank_text),
        _ => {}
    }
}

fn set_path(v: &mut Value, path: &[PathPart], new: Value) {
    let mut cur = v;
    for p in path {
        let next = match (p, cur) {
            (PathPart::Key(k), Value::Object(m)) => m.get_mut(k),
            (PathPart::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    *cur = new;
}

/// One SSE event with `data` on a single line (JSON from serde has no newlines).
pub fn event_bytes(name: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::detect::{Detector, BUILTIN_KINDS};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map_for(text: &str) -> (Pseudonyms, String) {
        let d = Detector::new(&BUILTIN_KINDS, &[]).unwrap();
        let mut p = Pseudonyms::for_request(text);
        let out = p.pseudonymize(&d, text).unwrap_or_else(|| text.to_string());
        (p, out)
    }

    /// Run OpenAI-shaped deltas through the restorer; return the client's text.
    fn run_openai(map: &Pseudonyms, deltas: &[String]) -> String {
        let mut r = StreamRestorer::default();
        let mut events = Vec::new();
        for d in deltas {
            let mut v = json!({"choices":[{"index":0,"delta":{"content": d}}]});
            let (before, _) = r.event(None, &mut v, d.len(), map);
            events.extend_from_slice(&before);
            events.extend_from_slice(&event_bytes(None, &v.to_string()));
        }
        let mut usage = json!({"choices":[],"usage":{"total_tokens":3}});
        let (before, _) = r.event(None, &mut usage, 40, map);
        events.extend_from_slice(&before);
        events.extend_from_slice(&r.flush(map));
        let mut framer = crate::response::sse::SseFramer::new(1 << 20);
        let mut text = String::new();
        for ev in framer.push(&events).unwrap() {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            if let Some(s) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(s);
            }
            assert!(v.get("usage").is_none(), "flush copies carry no usage");
        }
        text
    }

    #[test]
    fn placeholder_split_across_deltas_is_restored() {
        let (map, sent) = map_for("write to jane@example.com now");
        assert_eq!(sent, "write to [EMAIL_1] now");
        let deltas: Vec<String> = ["write to [EM", "AIL", "_1] now"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(run_openai(&map, &deltas), "write to jane@example.com now");
    }

    #[test]
    fn held_text_is_flushed_before_a_textless_event() {
        let (map, _) = map_for("jane@example.com");
        let deltas = vec!["ends with [EMAIL_".to_string()];
        assert_eq!(run_openai(&map, &deltas), "ends with [EMAIL_");
    }

    #[test]
    fn unrelated_brackets_are_not_held() {
        let (map, _) = map_for("jane@example.com");
        let mut r = StreamRestorer::default();
        let mut v = json!({"delta":{"text":"a [link"}});
        let (_, changed) = r.event(Some("content_block_delta"), &mut v, 30, &map);
        assert!(!changed);
        assert!(r.held.is_empty());
    }

    /// An upstream's event with 70,000 text fields, each a placeholder's start: each
    /// held a copy of the whole event.
    #[test]
    fn an_event_with_thousands_of_held_fields_holds_a_few() {
        let (map, _) = map_for("jane@example.com");
        let choices: Vec<Value> = (0..70_000)
            .map(|i| json!({"index": i, "text": "["}))
            .collect();
        let mut v = json!({ "choices": choices });
        let mut r = StreamRestorer::default();
        r.event(None, &mut v, 1 << 20, &map);
        assert_eq!(r.held.len(), MAX_HELD);
        let flushed = r.flush(&map);
        // One copy of the event carries every held field.
        assert_eq!(flushed.windows(6).filter(|w| w == b"data: ").count(), 1);
    }

    /// Fields held from many different large events: each held its own copy of its
    /// event (32 × the SSE event bound a stream). Older ones are sent to stay in bound,
    /// and no held text is lost.
    #[test]
    fn envelopes_of_many_large_events_stay_within_the_bound() {
        let (map, _) = map_for("jane@example.com");
        let pad = "p".repeat(100 * 1024);
        let mut r = StreamRestorer::default();
        let mut out = Vec::new();
        for i in 0..40 {
            // Choice i's text, at its own path (earlier choices carry none here).
            let mut choices: Vec<Value> = (0..i).map(|j| json!({ "index": j })).collect();
            choices.push(json!({"index": i, "delta": {"content": format!("t{i}[")}}));
            let mut v = json!({"pad": pad, "choices": choices});
            let size = v.to_string().len();
            let (before, _) = r.event(None, &mut v, size, &map);
            out.extend_from_slice(&before);
            out.extend_from_slice(&event_bytes(None, &v.to_string()));
            assert!(
                r.envelope_bytes() <= 1 << 20,
                "event {i}: {} bytes held",
                r.envelope_bytes()
            );
        }
        out.extend_from_slice(&r.flush(&map));
        let mut framer = crate::response::sse::SseFramer::new(1 << 20);
        let mut text = String::new();
        for ev in framer.push(&out).unwrap() {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            for c in v["choices"].as_array().into_iter().flatten() {
                text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(text.matches('[').count(), 40, "no held text is lost");
        for i in 0..40 {
            assert!(text.contains(&format!("t{i}")));
        }
    }

    proptest! {
        /// However the model's text is cut into deltas, the client gets the original.
        #[test]
        fn any_delta_split_restores(cuts in proptest::collection::vec(0usize..80, 0..12)) {
            let original = "Mail jane@example.com or +1 415 555 2671, card 4111 1111 1111 1111 [x] [EMAIL_9]";
            let (map, sent) = map_for(original);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (sent.len() + 1)).collect();
            points.sort();
            let mut deltas = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([sent.len()]) {
                deltas.push(sent[last..p].to_string());
                last = p;
            }
            prop_assert_eq!(run_openai(&map, &deltas), original);
        }
    }
}
