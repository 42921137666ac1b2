use super::stream_text::{check_json_items, StreamText};
use super::*;
use crate::response::probe::Kind;
use proptest::prelude::*;
use serde_json::{json, Value};

const KEY: &str = "sk-acc-0123456789abcdefXYZ";

fn scanner() -> &'static SecretScanner {
    static S: std::sync::OnceLock<SecretScanner> = std::sync::OnceLock::new();
    S.get_or_init(|| SecretScanner::new(&[KEY.to_string()]))
}

/// The rules of these tests: the one key, no block patterns.
fn rules() -> Rules<'static> {
    Rules {
        secrets: scanner(),
        patterns: None,
    }
}

/// `s` with the characters at `mask` positions written as `\u00XX` (as JSON source text).
fn escaped(s: &str, mask: &[bool]) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask.get(i).copied().unwrap_or(false) {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[test]
fn escaped_key_in_a_json_body_is_found() {
    let rules = rules();
    let body = format!(
        r#"{{"choices":[{{"message":{{"content":"the key {}"}}}}]}}"#,
        escaped(KEY, &[false, false, false, false, true])
    );
    assert!(
        !scanner().contains(body.as_bytes()),
        "the raw bytes hide the key"
    );
    assert_eq!(
        check_json(&rules, body.as_bytes()),
        Err(Rejection::SecretEgress)
    );
    // In an error body, and in an object key.
    let err = format!(
        r#"{{"error":{{"message":"{}"}}}}"#,
        escaped(KEY, &[true; 40])
    );
    assert!(check_json(&rules, err.as_bytes()).is_err());
    let key = format!(r#"{{"{}":1}}"#, escaped(KEY, &[false, true]));
    assert!(check_json(&rules, key.as_bytes()).is_err());
    // Split over two content blocks a client joins.
    let (a, b) = KEY.split_at(9);
    let blocks =
        json!({"type":"message","content":[{"type":"text","text":a},{"type":"text","text":b}]});
    assert!(check_json(&rules, blocks.to_string().as_bytes()).is_err());
    // Tool arguments are JSON text the client parses again.
    let args = json!({"choices":[{"message":{"tool_calls":[{"function":{
        "arguments": format!("{{\"k\":\"{}\"}}", escaped(KEY, &[false, false, true]))}}]}}]});
    assert!(check_json(&rules, args.to_string().as_bytes()).is_err());
    assert_eq!(
        check_json(
            &rules,
            br#"{"choices":[{"message":{"content":"sk-acc- nothing"}}]}"#
        )
        .map(|p| p.choices),
        Ok(Kind::Array)
    );
}

#[test]
fn bodies_a_strict_parser_refuses_are_refused() {
    let rules = rules();
    let hidden = escaped(KEY, &[false, false, false, false, true]);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for body in [
        // A lone surrogate, then the key: a lenient client parser reads both.
        format!(r#"{{"choices":[{{"message":{{"content":"\ud800"}}}}],"x":"{hidden}"}}"#)
            .into_bytes(),
        // A byte that is not UTF-8 inside a string.
        [
            &br#"{"a":""#[..],
            &[0xff],
            br#"","x":"#,
            format!("\"{hidden}\"}}").as_bytes(),
        ]
        .concat(),
        // Nesting past serde_json's limit before the key.
        format!(r#"{{"d":{deep},"x":"{hidden}"}}"#).into_bytes(),
    ] {
        assert_eq!(check_json(&rules, &body), Err(Rejection::InvalidJson));
    }
}

#[test]
fn a_key_split_across_choices_is_found_both_ways() {
    let rules = rules();
    let (a, b) = KEY.split_at(10);
    // A client that reads `choices[0]` of every chunk joins these whatever the index.
    for (first, second) in [
        (
            json!({"choices":[{"index":0,"delta":{"content":a}}]}),
            json!({"choices":[{"index":1,"delta":{"content":b}}]}),
        ),
        (
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":a}}),
            json!({"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":b}}),
        ),
        (
            json!({"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":a}),
            json!({"type":"response.output_text.delta","output_index":1,"content_index":0,"delta":b}),
        ),
    ] {
        let mut st = StreamText::default();
        assert_eq!(st.check(&rules, b"", Some((b"", &first))), Ok(()));
        assert_eq!(
            st.check(&rules, b"", Some((b"", &second))),
            Err(Rejection::SecretEgress)
        );
    }
}

#[test]
fn long_keys_and_many_fields_stay_bounded() {
    let rules = rules();
    // A 1 MiB key costs one hash per use, not a copy per field.
    let long = "k".repeat(1 << 20);
    let fields: Vec<String> = (0..100).map(|i| format!(r#""a{i}":"x""#)).collect();
    let body = format!(r#"{{"{long}":{{{}}}}}"#, fields.join(","));
    assert!(check_json(&rules, body.as_bytes()).is_ok());
    // More text fields than channels: refused, not merged (a merge would lose joins).
    let fields: Vec<String> = (0..=MAX_CHANNELS)
        .map(|i| format!(r#""a{i}":"x""#))
        .collect();
    let body = format!("{{{}}}", fields.join(","));
    assert_eq!(
        check_json(&rules, body.as_bytes()),
        Err(Rejection::TooLarge)
    );
    // A stream with many parallel tool calls stays within the bound.
    let mut st = StreamText::default();
    for i in 0..100u64 {
        let ev = json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":i,"id":format!("call_{i}"),"type":"function","function":{"name":"f","arguments":"{}"}}]}}]});
        assert_eq!(st.check(&rules, b"", Some((b"", &ev))), Ok(()));
    }
    assert!(st.channels() <= MAX_CHANNELS, "{}", st.channels());
}

#[test]
fn a_key_split_across_tool_call_names_is_found() {
    // openai-python's stream helper joins `function.name` across chunks like any string.
    let rules = rules();
    let (a, b) = KEY.split_at(8);
    let mut st = StreamText::default();
    let ev = |n: &str| json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":n}}]}}]});
    assert_eq!(st.check(&rules, b"", Some((b"", &ev(a)))), Ok(()));
    assert_eq!(
        st.check(&rules, b"", Some((b"", &ev(b)))),
        Err(Rejection::SecretEgress)
    );
}

#[test]
fn anchored_block_patterns_see_keys_and_identifiers_on_their_own() {
    let s = SecretScanner::new(&[]);
    let set = RegexSet::new(["^forbidden$"]).unwrap();
    let rules = Rules {
        secrets: &s,
        patterns: Some(&set),
    };
    assert_eq!(
        check_json(&rules, br#"{"id":"forbidden","x":"y"}"#),
        Err(Rejection::BlockedPattern)
    );
}

#[test]
fn unescaper_undoes_escapes_cut_anywhere() {
    let src = r#"a\u0063\n\"b\\\/\x\u00zz\ud83d!"#;
    let whole = {
        let mut out = String::new();
        let mut u = Unescaper::default();
        u.push(src, &mut out);
        u.finish(&mut out);
        out
    };
    assert_eq!(whole, "ac\n\"b\\/\\x\\u00zz\u{FFFD}!");
    for cut in 0..=src.len() {
        let mut out = String::new();
        let mut u = Unescaper::default();
        u.push(&src[..cut], &mut out);
        u.push(&src[cut..], &mut out);
        u.finish(&mut out);
        assert_eq!(out, whole, "cut at {cut}");
    }
}

/// Events a client would join per field, with the key cut in pieces in one field.
fn events_for(field: usize, pieces: &[String]) -> Vec<Value> {
    let noise = json!({"choices":[{"index":0,"delta":{"content":"noise "}}]});
    let mut out = Vec::new();
    for p in pieces {
        let ev = match field {
            0 => json!({"choices":[{"index":0,"delta":{"content":p}}]}),
            1 => {
                json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":p}}]}}]})
            }
            2 => json!({"choices":[{"index":0,"delta":{"refusal":p}}]}),
            3 => json!({"choices":[{"index":0,"delta":{"reasoning_content":p}}]}),
            4 => json!({"choices":[{"index":1,"delta":{"content":p}}]}),
            5 => {
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":p}})
            }
            6 => {
                json!({"type":"content_block_delta","index":2,"delta":{"type":"thinking_delta","thinking":p}})
            }
            7 => json!({"candidates":[{"content":{"parts":[{"executableCode":{"code":p}}]}}]}),
            8 => json!({"candidates":[{"content":{"parts":[{"text":p}]},"index":0}]}),
            _ => {
                json!({"type":"response.function_call_arguments.delta","output_index":3,"delta":p})
            }
        };
        out.push(ev);
        // Another channel speaks between the pieces (only for fields it cannot join).
        if field != 0 {
            out.push(noise.clone());
        }
    }
    out
}

proptest! {
    /// A key is found in any text field, cut at any points, with any characters escaped
    /// once in the event's JSON or twice (inside JSON text such as tool arguments).
    #[test]
    fn key_found_in_any_field_at_any_split_and_escape(
        field in 0usize..10,
        cuts in proptest::collection::vec(0usize..200, 1..3),
        mask in proptest::collection::vec(any::<bool>(), 40),
        twice in any::<bool>(),
    ) {
        let rules = rules();
        // The text the client concatenates: the key, or (twice) the key's JSON escapes.
        let text = if twice { escaped(KEY, &mask) } else { KEY.to_string() };
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain([text.len()]) {
            pieces.push(text[at..p].to_string());
            at = p;
        }
        let mut st = StreamText::default();
        let mut found = false;
        let mut offset = 0;
        for piece in &pieces {
            // On the wire: once, the masked characters of the key are escaped in the
            // event's JSON source; twice, the piece (already escapes) is JSON-encoded.
            let source = if twice {
                let q = serde_json::to_string(piece).unwrap();
                q[1..q.len() - 1].to_string()
            } else {
                let m: Vec<bool> = mask.iter().skip(offset).copied().collect();
                escaped(piece, &m)
            };
            offset += piece.chars().count();
            for ev in events_for(field, &["@@P@@".to_string()]) {
                let wire = ev.to_string().replace("@@P@@", &source);
                let parsed: Value = serde_json::from_str(&wire).unwrap();
                let framed = format!("data: {wire}\n\n");
                if st.check(&rules, framed.as_bytes(), Some((wire.as_bytes(), &parsed))).is_err() {
                    found = true;
                }
            }
        }
        prop_assert!(found, "field {field}, pieces {pieces:?}");
    }

    /// The same key anywhere in a whole JSON body, escaped any way, is found.
    #[test]
    fn key_found_in_a_body_escaped_any_way(
        mask in proptest::collection::vec(any::<bool>(), 40),
        field in 0usize..10,
    ) {
        let rules = rules();
        let evs = events_for(field, &[KEY.to_string()]);
        let body = evs[0].to_string().replace(KEY, &escaped(KEY, &mask));
        prop_assert_eq!(check_json(&rules, body.as_bytes()), Err(Rejection::SecretEgress));
    }

    /// Streams that never name the key pass, and memory stays bounded.
    #[test]
    fn clean_streams_pass_with_bounded_channels(
        texts in proptest::collection::vec("[a-z\\\\ ]{0,30}", 1..40),
        field in 0usize..10,
    ) {
        let rules = rules();
        let mut st = StreamText::default();
        for ev in events_for(field, &texts) {
            // As the SSE framer hands an event over: framed bytes, and the data's JSON.
            let wire = ev.to_string();
            let framed = format!("data: {wire}\n\n");
            prop_assert!(st.check(&rules, framed.as_bytes(), Some((wire.as_bytes(), &ev))).is_ok());
        }
        prop_assert!(st.channels() <= 4);
    }
}

#[test]
fn a_stream_with_too_many_channels_is_stopped() {
    let rules = rules();
    let mut st = StreamText::default();
    let mut refused = false;
    for i in 0..=MAX_CHANNELS as u64 {
        let ev = json!({"choices":[{"index": i, "delta": {"content": "x"}}]});
        if st.check(&rules, b"", Some((b"", &ev))).is_err() {
            refused = true;
        }
    }
    assert!(refused);
    assert!(st.channels() <= MAX_CHANNELS);
}

#[test]
fn block_patterns_split_over_events_in_a_tool_call_are_found() {
    let s = SecretScanner::new(&[]);
    let set = RegexSet::new(["forbidden phrase"]).unwrap();
    let rules = Rules {
        secrets: &s,
        patterns: Some(&set),
    };
    let mut st = StreamText::default();
    let evs = events_for(1, &["forbid".into(), "den phrase".into()]);
    let verdicts: Vec<_> = evs
        .iter()
        .map(|e| st.check(&rules, b"", Some((b"", e))))
        .collect();
    assert!(verdicts.contains(&Err(Rejection::BlockedPattern)));
}

/// A Responses stream citing many sources: the events that repeat the answer at its end
/// (`response.content_part.done`, `response.output_item.done`, `response.completed`)
/// carry every citation, whose `start_index`/`end_index` (character offsets) were taken
/// for positions: each citation's `url` and `title` became text fields of their own, and
/// a web-search answer with some dozens of citations was stopped as too large.
#[test]
fn a_stream_with_many_citations_keeps_within_the_channels() {
    let rules = rules();
    let mut st = StreamText::default();
    let annotations: Vec<Value> = (0..100u64)
        .map(|i| {
            json!({"type": "url_citation", "start_index": i * 17, "end_index": i * 17 + 9,
            "url": format!("https://example.com/{i}"), "title": format!("Source {i}")})
        })
        .collect();
    let part = json!({"type": "output_text", "text": "cited", "annotations": annotations});
    let events = [
        json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": part}),
        json!({"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "message", "content": [part]}}),
        json!({"type": "response.completed",
            "response": {"output": [{"type": "message", "content": [part]}]}}),
    ];
    for ev in events {
        let text = ev.to_string();
        assert_eq!(
            st.check(&rules, text.as_bytes(), Some((text.as_bytes(), &ev))),
            Ok(()),
            "{}",
            ev["type"]
        );
    }
}

/// Gemini's JSON-array stream: a key cut across two chunks is found (a client joins their
/// text), and each chunk is read for its own probe.
#[test]
fn a_key_split_across_a_json_arrays_items_is_found() {
    let rules = rules();
    let (a, b) = KEY.split_at(KEY.len() / 2);
    let item = |t: &str| json!({"candidates": [{"content": {"parts": [{"text": t}]}}]});
    let body = json!([item(a), item(b)]).to_string();
    assert_eq!(
        check_json_items(&rules, body.as_bytes()).err(),
        Some(Rejection::SecretEgress)
    );
    let clean = json!([item("hello"), item(" world")]).to_string();
    assert_eq!(
        check_json_items(&rules, clean.as_bytes()).map(|p| p.len()),
        Ok(2)
    );
    // Two candidates (the first without an `index`, as Gemini sends index 0): a client
    // joining candidates[0] across the chunks reads the key, which one path for every
    // candidate (first's half, the second's text, the rest) would not show.
    let two = |first: &str, second: &str| {
        json!({"candidates": [
            {"content": {"parts": [{"text": first}]}},
            {"index": 1, "content": {"parts": [{"text": second}]}}
        ]})
    };
    let body = json!([two(a, "foo"), item(b)]).to_string();
    assert_eq!(
        check_json_items(&rules, body.as_bytes()).err(),
        Some(Rejection::SecretEgress)
    );
}

/// An event echoing a request's tools (a Responses stream's `response.created`) holds a
/// text field per parameter description: one channel each, not two (an implied index on
/// every array item opened a second), so 300 of them stay within the bound.
#[test]
fn tools_echoed_in_an_event_take_one_channel_a_field() {
    let rules = rules();
    let properties: serde_json::Map<String, Value> = (0..300)
        .map(|i| {
            let p = json!({"type": "string", "description": format!("parameter {i}")});
            (format!("p{i}"), p)
        })
        .collect();
    let event = json!({"type": "response.created", "response": {"tools": [
        {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": properties}}
    ]}});
    let bytes = serde_json::to_vec(&event).unwrap();
    let mut st = StreamText::default();
    assert_eq!(st.check(&rules, &bytes, Some((&bytes, &event))), Ok(()));
    assert!(st.channels() < 400, "{} channels", st.channels());
}

/// A stream whose first choice leaves out its index 0 (as proto3 JSON does) beside a
/// second choice: the key cut over the first choice's deltas is found, though the text
/// of every choice joined reads `… x …` between its halves.
#[test]
fn a_key_split_over_a_choice_without_its_index_is_found() {
    let rules = rules();
    let (a, b) = KEY.split_at(KEY.len() / 2);
    let events = [
        json!({"choices": [{"delta": {"content": a}}, {"index": 1, "delta": {"content": "x"}}]}),
        json!({"choices": [{"delta": {"content": b}}]}),
    ];
    let mut st = StreamText::default();
    let found = events.iter().find_map(|e| {
        let bytes = serde_json::to_vec(e).unwrap();
        st.check(&rules, &bytes, Some((&bytes, e))).err()
    });
    assert_eq!(found, Some(Rejection::SecretEgress));
}
