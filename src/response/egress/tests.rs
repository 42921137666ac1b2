use super::*;
use proptest::prelude::*;
use serde_json::json;

const KEY: &str = "sk-acc-0123456789abcdefXYZ";

fn scanner() -> SecretScanner {
    SecretScanner::new(&[KEY.to_string()])
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
    let s = scanner();
    let rules = Rules {
        secrets: &s,
        patterns: None,
    };
    let body = format!(
        r#"{{"choices":[{{"message":{{"content":"the key {}"}}}}]}}"#,
        escaped(KEY, &[false, false, false, false, true])
    );
    assert!(!s.contains(body.as_bytes()), "the raw bytes hide the key");
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
        ),
        Ok(())
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
        let s = scanner();
        let rules = Rules { secrets: &s, patterns: None };
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
                if st.check(&rules, wire.as_bytes(), Some(&parsed)).is_err() {
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
        let s = scanner();
        let rules = Rules { secrets: &s, patterns: None };
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
        let s = scanner();
        let rules = Rules { secrets: &s, patterns: None };
        let mut st = StreamText::default();
        for ev in events_for(field, &texts) {
            let wire = ev.to_string();
            prop_assert!(st.check(&rules, wire.as_bytes(), Some(&ev)).is_ok());
        }
        prop_assert!(st.channels() <= 4);
    }
}

#[test]
fn a_stream_with_too_many_channels_is_stopped() {
    let s = scanner();
    let rules = Rules {
        secrets: &s,
        patterns: None,
    };
    let mut st = StreamText::default();
    let mut refused = false;
    for i in 0..=MAX_CHANNELS as u64 {
        let ev = json!({"choices":[{"index": i, "delta": {"content": "x"}}]});
        if st.check(&rules, b"", Some(&ev)).is_err() {
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
    let verdicts: Vec<_> = evs.iter().map(|e| st.check(&rules, b"", Some(e))).collect();
    assert!(verdicts.contains(&Err(Rejection::BlockedPattern)));
}
