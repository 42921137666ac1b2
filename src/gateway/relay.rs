//! A Realtime session's relay: the client's connection and the provider's WebSocket,
//! messages passed both ways and checked, usage charged as it comes, and the session
//! ended by either side, a limit, a spent budget, an expired token, a reload or a shutdown
//! ([`End`]). The session is opened in [`super::realtime`].

use crate::realtime::{self};
use crate::response::egress::Rules;
use crate::response::usage::Usage;
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pingora::proxy::Session;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self as ws, Message};
use tokio_tungstenite::WebSocketStream;

/// Longest wait for either side to take a message (or a close) keygate sends it.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The bytes between the client's connection and the WebSocket codec, buffered.
const PIPE_BYTES: usize = 64 * 1024;

/// How long a closing session waits to send a close frame and for the answer to it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Send `m` to the client, bounded by the write timeout (a client that stopped reading
/// fills the pipe, and a send would wait for good) and by the session's deadline
/// (`max_session_s` holds while a send waits).
async fn to_client<S>(
    ws: &mut WebSocketStream<S>,
    m: Message,
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<(), End>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        sent = tokio::time::timeout(WRITE_TIMEOUT, ws.send(m)) => match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::ClientGone),
        },
        _ = deadline => Err(End::TimeUp),
    }
}

/// How long a session that ends with a response in flight reads the provider for that
/// response's `response.done` after asking it to cancel.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Responses in flight when the session ended (the client left, or keygate ended it): the
/// provider is asked to cancel each (by id), and their `response.done`s read for a
/// moment. They report what it produced: a client that leaves between an answer's audio
/// and its `response.done` had the audio in full, which an estimate from text does not
/// count. A report without usage adds the input estimated from the client's
/// `client_bytes` of text. Nothing read here reaches the client (it is not scanned). The
/// reports read, if any (responses may still be in flight after them).
async fn settle_in_flight<S>(
    ws: &mut WebSocketStream<S>,
    seen: &mut realtime::watch::ProviderWatch,
    client_bytes: usize,
) -> Option<Usage>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ids = seen.in_flight_ids();
    ids.dedup();
    for id in ids {
        let cancel = match id {
            Some(id) => serde_json::json!({"type": "response.cancel", "response_id": id}),
            None => serde_json::json!({"type": "response.cancel"}),
        };
        let cancel = Message::Text(cancel.to_string().into());
        tokio::time::timeout(CLOSE_TIMEOUT, ws.send(cancel))
            .await
            .ok()?
            .ok()?;
    }
    let mut reported: Option<Usage> = None;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    if let Some(mut u) = seen.after_end(&t) {
                        if u.estimated {
                            u.input = u.input.max(Usage::estimate(client_bytes, 0).input);
                        }
                        reported.get_or_insert_with(Usage::default).add(u);
                        if seen.in_flight().is_none() {
                            return;
                        }
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, read).await;
    reported
}

/// How a session ended, and the close code the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    ClientClosed,
    ClientGone,
    UpstreamClosed,
    UpstreamGone,
    TooBig,
    Refused,
    TimeUp,
    Revoked,
    /// The site's token or USD budget is spent (checked after each charge).
    BudgetSpent,
    /// The browser token the session was opened with has expired.
    TokenExpired,
    /// The key the session was opened with has passed its `expires_at`.
    KeyExpired,
    ShuttingDown,
    /// A client event on a capped route that keygate cannot read ([`realtime::cap`]).
    ClientRefused,
    /// The provider refused keygate's opening `session.update` (the route's `max_tokens`).
    CapRefused,
}

impl End {
    /// The close frame for the client, when keygate ends the session.
    fn close(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::ClientClosed | End::ClientGone | End::UpstreamClosed => return None,
            End::UpstreamGone => (CloseCode::Error, "provider connection lost"),
            End::TooBig => (CloseCode::Size, "message too big"),
            End::Refused => (CloseCode::Error, "provider message refused"),
            End::TimeUp => (CloseCode::Policy, "max_session_s reached"),
            End::Revoked => (CloseCode::Policy, "revoked by a config change"),
            End::BudgetSpent => (CloseCode::Policy, "budget spent"),
            End::TokenExpired => (CloseCode::Policy, "token expired"),
            End::KeyExpired => (CloseCode::Policy, "key expired"),
            End::ShuttingDown => (CloseCode::Away, "gateway shutting down"),
            End::ClientRefused => (CloseCode::Policy, "client event not readable"),
            End::CapRefused => (CloseCode::Error, "provider refused max_tokens"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// What the relay needs of the request.
pub(super) struct Relay<'a> {
    /// The model's `prices:` key and price, when it has one.
    pub(super) price: Option<(String, crate::limits::price::Price)>,
    pub(super) route: String,
    pub(super) state: &'a crate::state::State,
    pub(super) ctx_live: std::sync::Arc<crate::state::Live>,
    pub(super) up: std::sync::Arc<crate::config::Upstream>,
    pub(super) limit_key: u64,
    /// The tier's `models:` entry the session's model was admitted under.
    pub(super) model_limit: Option<crate::limits::tier::ModelLimit>,
    pub(super) rules: Rules<'a>,
    /// The site's tier (its budgets, re-checked after each charge).
    pub(super) tier: std::sync::Arc<crate::limits::tier::Tier>,
    /// How long the session may last: `max_session_s`, or less when the browser token or
    /// the key it was opened with expires first; and how it ends then.
    pub(super) lifetime: Duration,
    pub(super) at_end_of_life: End,
    pub(super) close: std::sync::Arc<tokio::sync::Notify>,
    /// The route's `max_tokens`: keygate's opening `session.update` has set it, and the
    /// client's events are clamped to it ([`realtime::cap`]).
    pub(super) cap: Option<realtime::cap::SessionCap>,
}

impl Relay<'_> {
    /// The provider sent what the client must not get: counted, and the session ends.
    fn refused(&self, r: crate::response::validate::Rejection) -> End {
        METRICS
            .response_rejected
            .with_label_values(&[self.up.name.as_str(), r.reason()])
            .inc();
        End::Refused
    }

    /// Charge one `response.done`'s usage to the site's budgets and the upstream's
    /// series, and price it.
    fn charge(&self, u: Usage, total: &mut Option<Usage>, cost: &mut Option<f64>) {
        let mut micro_usd = 0;
        if let Some((key, p)) = &self.price {
            let c = p.cost(&u);
            crate::telemetry::metrics::count_cost(&self.route, key, c);
            *cost.get_or_insert(0.0) += c;
            micro_usd = p.micro_usd(&u);
        }
        let spend = crate::limits::Spend {
            tokens: u.total(),
            micro_usd,
        };
        let now_ms = crate::clock::now_ms();
        let limiter = self.state.limiter.load();
        limiter.charge(self.limit_key, self.model_limit.as_ref(), spend, now_ms);
        if let Some(l) = self.ctx_live.upstream_for(&self.up) {
            l.series().tokens_in.inc_by(u.input);
            l.series().tokens_out.inc_by(u.output);
        }
        total.get_or_insert_with(Usage::default).add(u);
    }

    /// Whether a budget of the site's is spent now (the session then ends).
    fn budget_spent(&self) -> bool {
        self.state.limiter.load().budget_spent(
            self.limit_key,
            &self.tier,
            self.model_limit.as_ref(),
            crate::clock::now_ms(),
        )
    }
}

/// Run the session: the client's bytes through a pipe into the WebSocket codec, messages
/// relayed both ways until one side ends or a limit is met. How it ended, and its usage.
pub(super) async fn bridge(
    session: &mut Session,
    mut upstream_ws: WebSocketStream<pingora::protocols::Stream>,
    relay: Relay<'_>,
    config: WebSocketConfig,
) -> (End, Option<Usage>, Option<f64>) {
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let mut client_ws = WebSocketStream::from_raw_socket(far, Role::Server, Some(config)).await;
    let (mut near_r, mut near_w) = tokio::io::split(near);
    let talked = tokio::sync::Notify::new();

    // The client's connection <-> the pipe. A shutdown reaches the relay through the
    // session registry (`relay.close`, `Sessions::shut_down`).
    let pump = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = session.read_request_body() => match r {
                    Ok(Some(b)) => {
                        if near_w.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
                n = near_r.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        let out = Bytes::copy_from_slice(&buf[..n]);
                        if session.write_response_body(Some(out), false).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        let _ = near_w.shutdown().await;
    };

    let talk = async {
        let mut usage = None;
        let mut cost = None;
        let mut seen = realtime::watch::ProviderWatch::default();
        let mut client_bytes = 0usize;
        let mut client_close = None;
        // The provider's answer to keygate's opening update is still to come.
        let mut opening = relay.cap.is_some_and(|c| !c.transcription);
        let deadline = tokio::time::sleep(relay.lifetime);
        tokio::pin!(deadline);
        let end = loop {
            tokio::select! {
                m = client_ws.next() => match m {
                    // Answered at once (the codec queued the reply); passed on to the
                    // provider once a response in flight is settled (below).
                    Some(Ok(Message::Close(f))) => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::flush(&mut client_ws)).await;
                        client_close = f;
                        break End::ClientClosed;
                    }
                    // On a capped route keygate reads every event for its limits; the
                    // provider might read JSON in a binary message too.
                    Some(Ok(Message::Binary(_))) if relay.cap.is_some() => break End::ClientRefused,
                    Some(Ok(mut m @ (Message::Text(_) | Message::Binary(_)))) => {
                        if let Message::Text(t) = &m {
                            let kind = realtime::cap::event_kind(t);
                            let kind = kind.as_deref();
                            // The input of an unfinished response is estimated from text:
                            // base64 audio is not tokens at a quarter of its bytes.
                            if kind != Some("input_audio_buffer.append") {
                                client_bytes += t.len();
                            }
                            if let Some(cap) = relay.cap {
                                match realtime::cap::client_event(t, kind, cap) {
                                    Ok(None) => {}
                                    Ok(Some(clamped)) => m = Message::Text(clamped.into()),
                                    Err(_) => break End::ClientRefused,
                                }
                            }
                        }
                        let sent = tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.send(m)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break End::UpstreamGone;
                        }
                    }
                    // Pings are answered by the codec on each side.
                    Some(Ok(_)) => {}
                    Some(Err(ws::Error::Capacity(_))) => break End::TooBig,
                    Some(Err(_)) | None => break End::ClientGone,
                },
                m = upstream_ws.next() => match m {
                    Some(Ok(Message::Text(t))) => match relay.cap.filter(|_| opening).and_then(|c| realtime::cap::answer_to_opening(&t, c.cap)) {
                        // The answer to keygate's own update: not the client's to read.
                        Some(Ok(())) => opening = false,
                        Some(Err(())) => break End::CapRefused,
                        None => match seen.text(&t, &relay.rules) {
                        // A response in a session keygate took for a transcription: it
                        // runs under no limit keygate set.
                        Ok(_) if relay.cap.is_some_and(|c| c.transcription) && realtime::cap::starts_response(&t) => {
                            break End::CapRefused;
                        }
                        Ok(u) => {
                            if let Some(u) = u {
                                relay.charge(u, &mut usage, &mut cost);
                            }
                            if let Err(end) = to_client(&mut client_ws, Message::Text(t), deadline.as_mut()).await {
                                break end;
                            }
                            // The answer that spent the budget is delivered; no other starts.
                            if u.is_some() && relay.budget_spent() {
                                break End::BudgetSpent;
                            }
                        }
                        Err(r) => break relay.refused(r),
                    },
                    },
                    Some(Ok(Message::Binary(b))) => {
                        if let Err(r) = seen.binary(&b, &relay.rules) {
                            break relay.refused(r);
                        }
                        if let Err(end) = to_client(&mut client_ws, Message::Binary(b), deadline.as_mut()).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let reason = f.as_ref().map_or("", |f| f.reason.as_str());
                        if let Err(r) = seen.close_reason(reason, &relay.rules) {
                            break relay.refused(r);
                        }
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, client_ws.send(Message::Close(f))).await;
                        break End::UpstreamClosed;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(ws::Error::Capacity(_))) => break End::TooBig,
                    Some(Err(_)) | None => break End::UpstreamGone,
                },
                _ = &mut deadline => break relay.at_end_of_life,
                _ = relay.close.notified() => break if relay.state.realtime.is_shutting_down() {
                    End::ShuttingDown
                } else {
                    End::Revoked
                },
            }
        };
        // A response's report in a message keygate refused: the provider produced it.
        if let Some(u) = seen.take_refused_usage() {
            relay.charge(u, &mut usage, &mut cost);
        }
        // A response the provider began and has not finished (the client left, or the
        // session was ended): the provider is asked to cancel it, and its report read.
        let provider_there = !matches!(end, End::UpstreamClosed | End::UpstreamGone);
        if seen.in_flight().is_some() && provider_there {
            let settled = settle_in_flight(&mut upstream_ws, &mut seen, client_bytes);
            if let Some(u) = settled.await {
                relay.charge(u, &mut usage, &mut cost);
            }
        }
        // Still nothing reported: its input is the whole conversation. Charged as
        // estimated from the text: the client's so far and the answer's.
        if let Some(answer) = seen.in_flight() {
            relay.charge(Usage::estimate(client_bytes, answer), &mut usage, &mut cost);
        }
        if let Some(frame) = end.close() {
            let close = client_ws.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
            // The client's answer to the close, briefly.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = client_ws.next().await {}
            })
            .await;
        }
        if provider_there {
            let close = upstream_ws.send(Message::Close(client_close));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        }
        // Either side's close handshake finished: a reply the codec queued to a close it
        // read is sent here (`SinkExt::close` flushes it; the inherent `close` would not).
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut upstream_ws)).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut client_ws)).await;
        drop(client_ws);
        talked.notify_one();
        (end, usage, cost)
    };
    // The pump flushes what the relay wrote last, briefly: to a client that stopped reading
    // it would write until the connection's write timeout.
    let pump = async {
        tokio::select! {
            () = pump => {}
            () = async {
                talked.notified().await;
                tokio::time::sleep(CLOSE_TIMEOUT).await;
            } => {}
        }
    };
    let ((), result) = tokio::join!(pump, talk);
    result
}
