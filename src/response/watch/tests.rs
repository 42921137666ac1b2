use super::*;
use crate::response::validate::SecretScanner;

const SECRET: &str = "sk-test-secret-0123456789";

fn rules(scanner: &SecretScanner) -> WatchRules<'_> {
    WatchRules {
        egress: Rules {
            secrets: scanner,
            patterns: None,
        },
        max_bytes: 1 << 20,
        deadline: None,
        request_id: "req-1",
        pii: None,
        client_model: None,
        hide_usage_chunk: false,
    }
}

fn start_any(resp: &mut Parts, rules: &WatchRules) -> Result<ResponseWatch, Refused> {
    start(resp, rules, Endpoint::Other)
}

fn parts(ct: &str) -> Parts {
    let mut p = http::Response::new(()).into_parts().0;
    p.headers.insert("content-type", ct.parse().unwrap());
    p
}

#[test]
fn a_json_answer_with_a_secret_is_refused_at_its_end() {
    let scanner = SecretScanner::new(&[SECRET.to_string()]);
    let rules = rules(&scanner);
    let mut watch = start_any(&mut parts("application/json"), &rules).unwrap();
    let mut usage = None;
    let mut body = Some(Bytes::from(format!(r#"{{"a":"{}"#, &SECRET[..10])));
    let seen = watch.chunk(&mut body, false, 20, &rules, 200, &mut usage);
    assert!(seen.is_ok() && body.is_none(), "held back until the end");
    let mut body = Some(Bytes::from(format!(r#"{}"}}"#, &SECRET[10..])));
    let end = watch.chunk(&mut body, true, 40, &rules, 200, &mut usage);
    assert_eq!(end.unwrap_err(), Refused::Rejected(Rejection::SecretEgress));
}

#[test]
fn a_bad_event_ends_the_stream_with_an_error_event_and_names_why() {
    let scanner = SecretScanner::new(&[SECRET.to_string()]);
    let rules = rules(&scanner);
    let mut watch = start_any(&mut parts("text/event-stream"), &rules).unwrap();
    let mut usage = None;
    let good = "data: {\"choices\":[]}\n\n";
    let bad = format!("data: {{\"x\":\"{SECRET}\"}}\n\n");
    let mut body = Some(Bytes::from(format!("{good}{bad}")));
    let seen = watch
        .chunk(&mut body, false, 100, &rules, 200, &mut usage)
        .unwrap();
    assert_eq!(seen.stopped_by, Some(Rejection::SecretEgress));
    let out = String::from_utf8(body.unwrap().to_vec()).unwrap();
    assert!(out.starts_with(good), "{out}");
    assert!(
        out.contains("event: error") && !out.contains(SECRET),
        "{out}"
    );
    // Afterwards nothing more is forwarded.
    let mut more = Some(Bytes::from_static(b"data: {}\n\n"));
    let seen = watch.chunk(&mut more, false, 200, &rules, 200, &mut usage);
    assert!(seen.unwrap().stopped_by.is_none() && more.is_none());
}

#[test]
fn speech_audio_passes_as_it_comes_within_its_bound() {
    let scanner = SecretScanner::new(&[SECRET.to_string()]);
    let mut rules = rules(&scanner);
    rules.max_bytes = 10;
    let mut watch = start(&mut parts("audio/mpeg"), &rules, Endpoint::AudioSpeech).unwrap();
    let mut usage = None;
    let mut body = Some(Bytes::from_static(b"ID3\x00\x01"));
    watch
        .chunk(&mut body, false, 5, &rules, 200, &mut usage)
        .unwrap();
    assert_eq!(body.as_deref(), Some(&b"ID3\x00\x01"[..]), "not held back");
    let mut more = Some(Bytes::from_static(b"\xff\xfb\x90\x00\x00\x00"));
    let over = watch.chunk(&mut more, true, 11, &rules, 200, &mut usage);
    assert_eq!(over.unwrap_err(), Refused::Rejected(Rejection::TooLarge));
    // Audio only where speech is answered, and not as an error body.
    assert!(start_any(&mut parts("audio/mpeg"), &rules).is_err());
    let mut failed = parts("audio/mpeg");
    failed.status = http::StatusCode::BAD_REQUEST;
    assert!(start(&mut failed, &rules, Endpoint::AudioSpeech).is_err());
    // Headers are scanned whatever the body.
    let mut leak = parts("audio/wav");
    leak.headers.insert("x-echo", SECRET.parse().unwrap());
    assert!(start(&mut leak, &rules, Endpoint::AudioSpeech).is_err());
}

#[test]
fn the_header_is_judged_before_the_body() {
    let scanner = SecretScanner::new(&[SECRET.to_string()]);
    let rules = rules(&scanner);
    let mut leak = parts("application/json");
    leak.headers.insert("x-echo", SECRET.parse().unwrap());
    assert_eq!(
        start_any(&mut leak, &rules).unwrap_err(),
        Refused::Rejected(Rejection::SecretEgress)
    );
    assert_eq!(
        start_any(&mut parts("text/html"), &rules).unwrap_err(),
        Refused::Rejected(Rejection::ContentType)
    );
    let mut big = parts("application/json");
    big.headers
        .insert("content-length", "2000000".parse().unwrap());
    assert_eq!(
        start_any(&mut big, &rules).unwrap_err(),
        Refused::Rejected(Rejection::TooLarge)
    );
}
