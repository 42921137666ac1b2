//! The official OpenAI Python SDK (PyPI `openai`, with `websockets`; installed by
//! `make venv` into target/venv) through keygate, only `base_url` and `api_key` changed:
//! speech returns the audio, a transcription the transcript of the uploaded file, and
//! a Realtime session runs to `response.done` (issue #22).

mod common;
use common::*;

#[test]
fn the_openai_python_sdk_speaks_transcribes_and_holds_a_realtime_session() {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let sdk_present = std::process::Command::new(python)
        .args(["-c", "import openai, websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        sdk_present,
        "the OpenAI SDK is missing from target/venv: run `make venv`"
    );
    let gw = Gateway::start();
    let wav = gw.dir.path().join("hello.wav");
    let mut audio = b"RIFF\x24\x08\x00\x00WAVEfmt ".to_vec();
    audio.extend((0..300_000u32).map(|i| (i % 253) as u8));
    std::fs::write(&wav, &audio).unwrap();
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/openai_voice.py"
        ))
        .arg(&wav)
        .env("KEYGATE_BASE_URL", gw.url("/openai/v1"))
        .env("KEYGATE_API_KEY", &gw.secrets.bearer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let seen: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(seen["speech_bytes"], 4106, "{seen}");
    assert_eq!(seen["speech_head"], "ID3");
    let transcript = seen["transcript"].as_str().unwrap();
    assert!(
        transcript.contains(seen["wav_sha256"].as_str().unwrap()),
        "{seen}"
    );
    assert!(transcript.contains("whisper-1"), "{seen}");
    assert_eq!(seen["realtime_first"], "session.created");
    assert_eq!(seen["realtime_usage"], 30);
    let lines = gw.audit_lines_at_least(3);
    let statuses: Vec<_> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 200, 101], "{lines:?}");
    assert!(lines.iter().all(|l| l["auth"] == "bearer"), "{lines:?}");
}
