//! A stream's text ([`StreamText`]): every string of its events, each field joined
//! across events as a client joins it, checked as it grows.

use super::{check_json, extend_path, hash_str, walk_json, Channels, Rules, ITEMS, ROOT};
use crate::response::probe::Probe;
use crate::response::validate::Rejection;
use serde_json::Value;

/// A JSON array of answers (Gemini's `streamGenerateContent` without `alt=sse`): the
/// whole walked as [`check_json`] walks a body (text joined across the items as a client
/// joins it), then the items as a stream's events are checked (a [`StreamText`]: each
/// candidate's text joined across the items on its own, as a client reading
/// `candidates[i]` joins it; the body walk gives every candidate one path), and each
/// item, which must be an object, for its probe.
pub fn check_json_items(rules: &Rules, body: &[u8]) -> Result<Vec<Probe>, Rejection> {
    walk_json(rules, body)?;
    let items: Vec<Value> = serde_json::from_slice(body).map_err(|_| Rejection::InvalidJson)?;
    let mut text = StreamText::default();
    items
        .iter()
        .map(|item| {
            let bytes = serde_json::to_vec(item).map_err(|_| Rejection::InvalidJson)?;
            text.check(rules, &bytes, Some((&bytes, item)))?;
            check_json(rules, &bytes)
        })
        .collect()
}

/// What a member's value is to the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Text a client joins.
    Text,
    /// A label (`type`): checked alone, opens no channel.
    Identifier,
    /// Gemini's `candidates`, OpenAI's `choices`: their items are told apart by `index`,
    /// 0 when left out.
    Choices,
}

/// The text fields of a stream, each concatenated across events.
#[derive(Debug, Default)]
pub struct StreamText {
    channels: Channels,
    /// Bytes of model output read ([`OUTPUT_KEYS`]): a stream cut short of its usage
    /// report is estimated from these, not from its framing (an Anthropic text delta is
    /// about 130 bytes of event for one or two tokens).
    output_bytes: usize,
}

/// Members that say which choice, block, output item, part or annotation an event is
/// about (OpenAI, Anthropic, Gemini, the Responses API). Not every `…_index`: a citation's
/// `start_index`/`end_index` are character offsets, and taken for positions each opened
/// new text fields, so a stream with some dozens of citations ran out of them.
const POSITION_KEYS: [&str; 5] = [
    "index",
    "output_index",
    "content_index",
    "summary_index",
    "annotation_index",
];

/// Members whose string value is model output in the providers' stream events (text,
/// tool-call arguments, reasoning, refusals, transcripts).
const OUTPUT_KEYS: [&str; 9] = [
    "content",
    "text",
    "delta",
    "partial_json",
    "arguments",
    "thinking",
    "refusal",
    "transcript",
    "reasoning_content",
];

impl StreamText {
    /// Check one event: its raw bytes (an SSE event as framed, `data: ` lines and all),
    /// then, when it is JSON, every string of `parsed` (the JSON text and its value), each
    /// extending its channels' text. `Err` at the first rule broken.
    pub fn check(
        &mut self,
        rules: &Rules,
        raw: &[u8],
        parsed: Option<(&[u8], &Value)>,
    ) -> Result<(), Rejection> {
        if let Some(r) = rules.hit(raw) {
            return Err(r);
        }
        match parsed {
            Some((json, v)) => {
                // Without a backslash every string is its raw bytes (seen above).
                let backslash = json.contains(&b'\\');
                // The parsed value keeps the last of duplicate members; a client parser
                // may keep the first. With escapes, every string of the JSON as written
                // is checked on its own too (the body walk reads each one). The JSON
                // text, not the framed event: `data: {…}` is no JSON document, and every
                // event with an escape (a newline, a quote, non-ASCII) was refused.
                if backslash && v.is_object() {
                    check_json(rules, json)?;
                }
                let escapes = backslash || rules.patterns.is_some();
                self.walk(rules, v, escapes, (ROOT, ROOT), Member::Text)
            }
            None => Ok(()),
        }
    }

    /// `indexed` tells choices, tool calls, blocks and items apart by their index;
    /// `joined` does not (both are kept: clients read streams either way).
    fn walk(
        &mut self,
        rules: &Rules,
        v: &Value,
        escapes: bool,
        (indexed, joined): (u64, u64),
        of: Member,
    ) -> Result<(), Rejection> {
        match v {
            Value::String(s) if of == Member::Identifier => match escapes {
                true => rules.text(s).map_or(Ok(()), Err),
                false => Ok(()),
            },
            Value::String(s) => {
                self.channels.extend(rules, indexed, s, !escapes)?;
                if joined != indexed {
                    self.channels.extend(rules, joined, s, !escapes)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                let (i, j) = (extend_path(indexed, ITEMS), extend_path(joined, ITEMS));
                let candidates = of == Member::Choices;
                items.iter().try_for_each(|x| match x {
                    Value::Object(m) => self.walk_object(rules, m, escapes, (i, j), candidates),
                    _ => self.walk(rules, x, escapes, (i, j), Member::Text),
                })
            }
            Value::Object(m) => self.walk_object(rules, m, escapes, (indexed, joined), false),
            _ => Ok(()),
        }
    }

    /// [`StreamText::walk`] of an object; `candidate`: it is an item of Gemini's
    /// `candidates` or OpenAI's `choices`.
    fn walk_object(
        &mut self,
        rules: &Rules,
        m: &serde_json::Map<String, Value>,
        escapes: bool,
        (indexed, joined): (u64, u64),
        candidate: bool,
    ) -> Result<(), Rejection> {
        // Members that say which choice, tool call, block or item this is: `index`
        // first, 0 for a candidate that has none. Gemini (proto3 JSON) leaves out a
        // candidate's index 0, and candidate 0 must not share the joined path that every
        // candidate's text extends; so for a choice (an OpenAI-compatible server may do the
        // same). Only there: for every other item an implied index would open a second
        // channel per field, where one serves.
        let index = m.get("index").and_then(Value::as_u64);
        let mut here = match (index, candidate) {
            (None, false) => indexed,
            (n, _) => extend_path(extend_path(indexed, hash_str("index")), n.unwrap_or(0)),
        };
        for (k, x) in m {
            if k == "index" {
                continue;
            }
            if let (true, Some(n)) = (POSITION_KEYS.contains(&k.as_str()), x.as_u64()) {
                here = extend_path(extend_path(here, hash_str(k)), n);
            }
        }
        for (k, x) in m {
            if let Some(r) = escapes.then(|| rules.text(k)).flatten() {
                return Err(r);
            }
            if let Value::String(s) = x {
                if OUTPUT_KEYS.contains(&k.as_str()) {
                    self.output_bytes += s.len();
                }
            }
            let c = hash_str(k);
            let (i, j) = (extend_path(here, c), extend_path(joined, c));
            // Stream helpers (openai-python's `accumulate_delta`) join every
            // string of a delta but `type`: ids and names are text here too.
            let of = match k.as_str() {
                "type" => Member::Identifier,
                "candidates" | "choices" => Member::Choices,
                _ => Member::Text,
            };
            self.walk(rules, x, escapes, (i, j), of)?;
        }
        Ok(())
    }

    /// Bytes of model output read so far.
    pub fn output_bytes(&self) -> usize {
        self.output_bytes
    }

    /// Channels open (at most [`MAX_CHANNELS`]).
    pub fn channels(&self) -> usize {
        self.channels.map.len()
    }
}
