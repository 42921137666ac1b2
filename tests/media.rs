//! Voice and media through keygate (issue #22, SPEC §8.1): speech as binary audio,
//! multipart uploads, Realtime client secrets; against the real binary and the mock.

mod common;
use common::*;
use serde_json::Value;

const SPEECH: &str = "/openai/v1/audio/speech";

/// Bearer-authenticated request (as the SDKs send them).
async fn bearer(gw: &Gateway, path: &str, body: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {}", gw.secrets.bearer))
        .header("content-type", "application/json");
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    rb.body(body.to_string()).send().await.unwrap()
}

#[tokio::test]
async fn speech_answers_with_the_audio_bytes_as_they_come() {
    let gw = Gateway::start();
    let body = r#"{"model":"gpt-4o-mini-tts","voice":"alloy","input":"Hello there.","response_format":"wav"}"#;
    let r = bearer(&gw, SPEECH, body, &[("x-mock-audio-bytes", "200000")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    let audio = r.bytes().await.unwrap();
    assert_eq!(audio.len(), 200_010);
    assert!(audio.starts_with(b"ID3"));
    let line = gw.audit_lines_at_least(1)[0].clone();
    assert_eq!(line["status"], 200);
    assert_eq!(line["tokens_estimated"], true, "{line}");
    assert_eq!(line["tokens_out"], 0, "audio bytes are not tokens: {line}");
    // Streamed as SSE when asked: events checked like any stream, usage read from them.
    let body = r#"{"model":"gpt-4o-mini-tts","voice":"alloy","input":"Hello there.","stream_format":"sse"}"#;
    let r = bearer(&gw, SPEECH, body, &[]).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("speech.audio.delta") && text.contains("speech.audio.done"),
        "{text}"
    );
    let line = gw.audit_lines_at_least(2)[1].clone();
    assert_eq!(line["tokens_estimated"], false, "{line}");
    assert_eq!(line["tokens_in"], 3, "{line}");
}

#[tokio::test]
async fn speech_audio_is_bounded_by_max_response_bytes() {
    let gw = Gateway::start_with(Options {
        upstream_extra: "    max_response_bytes: 50000\n".into(),
        ..Options::default()
    });
    let body = r#"{"model":"gpt-4o-mini-tts","voice":"alloy","input":"Hi."}"#;
    let r = bearer(&gw, SPEECH, body, &[("x-mock-audio-bytes", "300000")]).await;
    let got = r.bytes().await;
    assert!(
        got.as_ref().map_or(true, |b| b.len() < 300_000),
        "the client never gets more than the bound as a complete answer"
    );
    assert!(
        gw.metric(r#"keygate_response_rejected_total{reason="too_large",upstream="openai"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    // Audio where no audio is expected is still refused.
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw
        .post_signed(
            "/openai/v1/chat/completions",
            chat,
            &[("x-mock-mode", "html")],
        )
        .await;
    r.assert_error(502, "upstream_error");
}

#[tokio::test]
async fn realtime_client_secrets_pass_and_count_against_the_sites_limits() {
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 2 }".into(),
        ..Options::default()
    });
    let body = r#"{"session":{"type":"realtime","model":"gpt-realtime"}}"#;
    for _ in 0..2 {
        let r = bearer(&gw, "/openai/v1/realtime/client_secrets", body, &[]).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["value"].as_str().unwrap().starts_with("ek_"), "{v}");
    }
    let r = bearer(
        &gw,
        "/openai/v1/realtime/sessions",
        r#"{"model":"gpt-realtime"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status(), 429, "the third mint is over the tier");
}

const TRANSCRIBE: &str = "/openai/v1/audio/transcriptions";

/// A multipart form: `fields` then one file.
fn form(fields: &[(&str, &str)], file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "keygate-test-boundary-7f3a";
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"hello.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(file);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}

/// The mock's transcript names the bytes it received: length and SHA-256.
fn wav(n: usize) -> Vec<u8> {
    let mut v = b"RIFF\x00\x00\x00\x00WAVEfmt ".to_vec();
    v.extend((0..n).map(|i| (i * 7 % 251) as u8));
    v
}

async fn upload(
    gw: &Gateway,
    path: &str,
    ct: &str,
    body: Vec<u8>,
    signed: bool,
) -> reqwest::Response {
    let mut rb = client().post(gw.url(path)).header("content-type", ct);
    if signed {
        for (k, v) in gw.sign("alpha.k1", &gw.secrets.alpha, "POST", path, &body) {
            rb = rb.header(k, v);
        }
    } else {
        rb = rb.header("authorization", format!("Bearer {}", gw.secrets.bearer));
    }
    rb.body(body).send().await.unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn transcription_uploads_small_and_large_reach_the_provider_whole() {
    let gw = Gateway::start();
    for (n, signed) in [(2_000, true), (3_000_000, true), (5_000_000, false)] {
        let audio = wav(n);
        let (ct, body) = form(&[("model", "whisper-1")], &audio);
        let r = upload(&gw, TRANSCRIBE, &ct, body.clone(), signed).await;
        if r.status() != 200 {
            let st = r.status();
            let t = r.text().await.unwrap_or_default();
            panic!(
                "{n} bytes: {st} {t}\n{}",
                gw.logs()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("rror"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let v: Value = r.json().await.unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains(&sha256_hex(&audio)), "{n}: {text}");
        assert!(text.contains("whisper-1"), "{text}");
        let sent = gw.mock.last();
        assert_eq!(sent["body_len"].as_u64(), Some(body.len() as u64));
        assert_eq!(
            sent["body_sha256"].as_str(),
            Some(sha256_hex(&body).as_str())
        );
    }
    let lines = gw.audit_lines_at_least(3);
    assert!(
        lines
            .iter()
            .all(|l| l["model"] == "whisper-1" && l["status"] == 200),
        "{lines:?}"
    );
    // Usage came from the answer, not from the audio's size.
    assert_eq!(lines[1]["tokens_estimated"], false);
    // A transcript asked for as plain text passes as text.
    let (ct, body) = form(
        &[("model", "whisper-1"), ("response_format", "text")],
        &wav(100),
    );
    let r = upload(&gw, TRANSCRIBE, &ct, body, false).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("Transcript of hello.wav"));
}

#[tokio::test]
async fn uploads_are_refused_before_the_provider_has_them_whole() {
    let gw = Gateway::start_with(Options {
        server_extra: "  max_upload_bytes: 1000000\n".into(),
        ..Options::default()
    });
    // Over max_upload_bytes: 413 before the provider sees anything.
    let (ct, body) = form(&[("model", "whisper-1")], &wav(1_200_000));
    let r = upload(&gw, TRANSCRIBE, &ct, body, false).await;
    assert_eq!(r.status(), 413);
    // A model outside the route's list: 403, small or streamed, field before or after the file.
    for n in [500, 600_000] {
        let (ct, body) = form(&[("model", "whisper-9-secret")], &wav(n));
        let r = upload(&gw, TRANSCRIBE, &ct, body, false).await;
        assert_eq!(r.status(), 403, "{n}");
    }
    // Malformed multipart: 400.
    let bad = b"--keygate-test-boundary-7f3a\r\nno header end".to_vec();
    let r = upload(
        &gw,
        TRANSCRIBE,
        "multipart/form-data; boundary=keygate-test-boundary-7f3a",
        bad,
        false,
    )
    .await;
    assert_eq!(r.status(), 400);
    let (ct, mut body) = form(&[("model", "whisper-1")], &wav(400_000));
    body.truncate(body.len() - 10);
    let r = upload(&gw, TRANSCRIBE, &ct, body, false).await;
    assert_eq!(r.status(), 400, "a form that never ends");
    // A signed upload whose bytes were changed after signing: 401, never complete upstream.
    let (ct, body) = form(&[("model", "whisper-1")], &wav(300_000));
    let mut rb = client()
        .post(gw.url(TRANSCRIBE))
        .header("content-type", &ct);
    for (k, v) in gw.sign("alpha.k1", &gw.secrets.alpha, "POST", TRANSCRIBE, &body) {
        rb = rb.header(k, v);
    }
    let mut tampered = body.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    let r = rb.body(tampered).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Multipart where JSON is expected stays refused.
    let (ct, body) = form(&[("model", "gpt-4o")], b"x");
    let r = upload(&gw, "/openai/v1/chat/completions", &ct, body, false).await;
    assert_eq!(r.status(), 400);
    // The provider never received a single one of these requests whole.
    assert_eq!(gw.mock.count(), 0, "{}", gw.mock.requests());
}

/// A transcription answer in any mode but a successful transcript is checked as JSON:
/// a provider error as `text/plain` echoing the key with one JSON escape passed the raw
/// scan (clients read error bodies as JSON whatever their type, and decode it). A text
/// transcript is scanned with its escapes decoded too. Coded answers (a content coding,
/// a transfer coding beside chunked, a charset other than UTF-8), which keygate would scan
/// in their coded form, are refused.
#[tokio::test]
async fn transcription_text_and_coded_answers_cannot_carry_the_key() {
    let gw = Gateway::start();
    let (ct, body) = form(&[("model", "whisper-1")], &wav(100));
    let send = |mode: &'static str, coding: &'static str| {
        let (gw, ct, body) = (&gw, ct.clone(), body.clone());
        async move {
            let mut rb = client()
                .post(gw.url(TRANSCRIBE))
                .header("content-type", ct)
                .header("x-mock-mode", mode)
                .header("x-mock-coding", coding);
            for (k, v) in gw.sign("alpha.k1", &gw.secrets.alpha, "POST", TRANSCRIBE, &body) {
                rb = rb.header(k, v);
            }
            let r = rb.body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let key = gw.secrets.provider.clone();
    for mode in ["escaped_key_error_text", "escaped_key_text"] {
        let (status, text) = send(mode, "").await;
        assert_eq!(status, 502, "{mode}: {text}");
        assert!(!text.contains(&key[4..]), "{mode}: {text}");
    }
    let series = |reason: &str| {
        gw.metric(&format!(
            "keygate_response_rejected_total{{reason=\"{reason}\",upstream=\"openai\"}}"
        ))
        .unwrap_or(0.0)
    };
    // The error as text is no JSON answer (refused for its type); the transcript for
    // the key it decodes to.
    eventually("both counted", || {
        (series("content_type") == 1.0 && series("secret_egress") == 1.0).then_some(())
    });
    for coding in ["gzip", "br", "te:gzip", "charset:utf-16"] {
        let (status, text) = send("coded", coding).await;
        assert_eq!(status, 502, "{coding}: {text}");
    }
    eventually("the coded answers counted", || {
        (series("content_type") == 5.0).then_some(())
    });
    // And keygate asks for no coding.
    assert_eq!(gw.mock.last()["headers"]["accept-encoding"], "identity");
}
