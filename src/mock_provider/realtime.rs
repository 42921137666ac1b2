//! The mock's Realtime WebSocket (`GET /v1/realtime?model=M`, OpenAI's event shapes):
//! `session.created` on open; `session.update` → `session.updated`; `response.create` →
//! `response.created` (naming the output limit it runs under), a
//! `response.output_text.delta`, then `response.done` with usage (10 in, 20 out). Test
//! hooks: `mock.vad` runs a response as server turn detection would (no
//! `response.create`); `mock.unfinished` begins a response and never ends it; `mock.echo_key` answers
//! with the credential it received in a delta; `mock.big` sends one message of `bytes` bytes; the hostile ones of
//! [`hostile`] hide it over messages, in a close frame or behind a lone surrogate.

use super::util::{received_credential, Body, MockState};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, Message};
use tokio_tungstenite::WebSocketStream;

/// Is this the Realtime handshake?
pub(super) fn is_handshake(req: &Request<Incoming>) -> bool {
    req.uri().path().ends_with("/realtime")
        && req
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accept the handshake (recorded like any request) and run the session.
pub(super) fn accept(state: Arc<MockState>, mut req: Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
        .collect();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    state.record(json!({"method": "GET", "path": path, "headers": headers, "body_len": 0}));
    let credential = received_credential(req.headers());
    let model = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "model"))
        .map_or_else(String::new, |(_, v)| v.into_owned());
    let accept_key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let offered = crate::realtime::subprotocols(req.headers());
    let realtime_offered = offered.iter().any(|p| p == "realtime");
    // The beta interface, asked for by header or (browsers) subprotocol.
    let beta = req
        .headers()
        .get("openai-beta")
        .is_some_and(|v| v.as_bytes() == b"realtime=v1")
        || offered.iter().any(|p| p == "openai-beta.realtime-v1");
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            session(ws, &model, &credential, beta).await;
        }
    });
    let mut b = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept_key);
    if realtime_offered {
        b = b.header("sec-websocket-protocol", "realtime");
    }
    b.body(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap_or_else(|_| Response::new(Empty::new().map_err(|never| match never {}).boxed()))
}

async fn session<S>(mut ws: WebSocketStream<S>, model: &str, credential: &str, beta: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let send = |v: Value| Message::Text(v.to_string().into());
    let created = json!({"type": "session.created", "event_id": "evt_1",
        "session": {"id": "sess_mock", "object": "realtime.session", "model": model, "type": "realtime"}});
    if ws.send(send(created)).await.is_err() {
        return;
    }
    // The session's output limit, as a `session.update` set it; each response reports
    // the limit it ran under (its own, else the session's) in `response.created`.
    let mut session_limit = json!("inf");
    // `mock.unfinished` with `"cancel_reports": true`: a `response.cancel` then ends the
    // response with a `response.done` reporting 10 tokens in, 2,000 out.
    let mut cancel_reports = false;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else {
            if let Message::Close(_) = msg {
                let _ = ws.close(None).await;
                return;
            }
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if let Some(raw) = hostile(kind, credential) {
            for m in raw {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            continue;
        }
        let out: Vec<Value> = match kind {
            // Each interface knows its own name of the limit only (as OpenAI's: the other
            // is an unknown parameter).
            "session.update" => {
                let (name, other) = match beta {
                    true => ("max_response_output_tokens", "max_output_tokens"),
                    false => ("max_output_tokens", "max_response_output_tokens"),
                };
                let session = v.get("session");
                if session.and_then(|s| s.get(other)).is_some() {
                    vec![
                        json!({"type": "error", "error": {"type": "invalid_request_error",
                        "message": format!("Unknown parameter: 'session.{other}'."),
                        "event_id": v.get("event_id")}}),
                    ]
                } else {
                    if let Some(l) = session.and_then(|s| s.get(name)) {
                        session_limit = l.clone();
                    }
                    vec![json!({"type": "session.updated", "session": session})]
                }
            }
            "response.create" => vec![
                json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress",
                    "max_output_tokens": v.pointer("/response/max_output_tokens").unwrap_or(&session_limit)}}),
                json!({"type": "response.output_text.delta", "response_id": "resp_1", "delta": "Hello from the mock."}),
                json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                    "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20}}}),
            ],
            // A response the provider starts by itself (server turn detection), under
            // the session's limit.
            "mock.vad" => vec![
                json!({"type": "response.created", "response": {"id": "resp_3", "status": "in_progress",
                    "max_output_tokens": session_limit}}),
                json!({"type": "response.done", "response": {"id": "resp_3", "status": "completed",
                    "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20}}}),
            ],
            "response.cancel" if cancel_reports => vec![
                json!({"type": "response.done", "response": {"id": "resp_2", "status": "cancelled",
                    "usage": {"total_tokens": 2010, "input_tokens": 10, "output_tokens": 2000}}}),
            ],
            // A response begun and never finished (no `response.done`).
            "mock.unfinished" => {
                cancel_reports = v.get("cancel_reports") == Some(&Value::Bool(true));
                vec![
                    json!({"type": "response.created", "response": {"id": "resp_2", "status": "in_progress"}}),
                    json!({"type": "response.output_text.delta", "response_id": "resp_2", "delta": "Half an ans"}),
                    json!({"type": "response.output_audio.delta", "response_id": "resp_2", "delta": "UklG".repeat(10_000)}),
                ]
            }
            "mock.echo_key" => vec![
                json!({"type": "response.output_text.delta", "delta": format!("key {credential}")}),
            ],
            "mock.big" => {
                let n = v.get("bytes").and_then(Value::as_u64).unwrap_or(0) as usize;
                vec![json!({"type": "response.output_text.delta", "delta": "x".repeat(n)})]
            }
            _ => vec![],
        };
        for e in out {
            if ws.send(send(e)).await.is_err() {
                return;
            }
        }
    }
}

/// Messages that hand the client the credential in a way no single message shows:
/// `mock.split_key` (two `response.output_text.delta`s, a half each), `mock.split_key_binary`
/// (two binary messages), `mock.close_key` (a close frame whose reason is the credential),
/// `mock.lone_surrogate_key` (a delta that is not strict JSON, a lone `\ud800`, and then the
/// credential with its 5th character escaped).
fn hostile(kind: &str, credential: &str) -> Option<Vec<Message>> {
    let half = credential.len() / 2;
    let (a, b) = (&credential[..half], &credential[half..]);
    let delta = |d: &str| {
        Message::Text(
            json!({"type": "response.output_text.delta", "response_id": "resp_1",
                "output_index": 0, "content_index": 0, "delta": d})
            .to_string()
            .into(),
        )
    };
    Some(match kind {
        "mock.split_key" => vec![delta(&format!("key {a}")), delta(&format!("{b} end"))],
        "mock.split_key_binary" => vec![
            Message::Binary(Bytes::from(format!("\x00audio {a}").into_bytes())),
            Message::Binary(Bytes::from(format!("{b}\x00").into_bytes())),
        ],
        "mock.close_key" => {
            let reason: String = credential.chars().take(123).collect();
            vec![Message::Close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code:
                        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: reason.into(),
                },
            ))]
        }
        "mock.lone_surrogate_key" => {
            let mut escaped = String::new();
            for (i, c) in credential.chars().enumerate() {
                match i {
                    4 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
                    _ => escaped.push(c),
                }
            }
            vec![Message::Text(
                format!(r#"{{"type":"response.output_text.delta","delta":"\ud800 {escaped}"}}"#)
                    .into(),
            )]
        }
        _ => return None,
    })
}
