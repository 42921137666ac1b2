//! OpenTelemetry traces (SPEC §8.7): one server span per request and one client span per
//! upstream attempt, exported over OTLP/HTTP (protobuf) from keygate's bounded span queue
//! ([`Queue`]) by a thread of its own — never on the request path. The spans are built when
//! the request ends, from what it recorded (ids made up front, so the `traceparent` sent
//! upstream names the attempt's span); attributes are the GenAI and HTTP ones listed, never
//! a secret, a prompt or an answer.
//!
//! Spans are the OpenTelemetry protocol's own `Span` messages, written once on the request
//! path straight from what the request recorded ([`super::span`]). The SDK's span pipeline (`opentelemetry_sdk`
//! spans, converted again to these messages by `opentelemetry-otlp`'s exporter) cost
//! keygate 16-42 % more CPU per request at `sample_ratio: 1.0` in `make bench` and by hand,
//! nearly all of it memory allocation and copying for the two conversions (perf: glibc's
//! malloc and free, memmove, the exporter's attribute transform). Here each span is built
//! and encoded once, on the thread that ends the request (its memory freed there too), and
//! only bytes cross to the export thread.

use super::span::{SpanOut, Value};
use crate::config::Upstream;
use crate::telemetry::metrics::METRICS;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use super::otlp::OtlpSettings;

/// Encoded spans waiting for export, at most (more are dropped and counted): about 9,000
/// spans, 0.1 s of 45,000 requests a second with one upstream attempt each.
const QUEUE_BYTES: usize = 2 << 20;
/// How often the export thread sends what is queued (one export each time).
const EXPORT_EVERY: Duration = Duration::from_millis(100);
/// One export's bound.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Field numbers of the OTLP messages wrapped around the queued spans: `spans` of
/// `ScopeSpans`, `scope_spans` of `ResourceSpans`, `resource_spans` of the export request;
/// and the `scope` and `resource` fields (the tests decode what this builds).
const SCOPE_SPANS_SPANS: u32 = 2;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const REQUEST_RESOURCE_SPANS: u32 = 1;
const SCOPE_SPANS_SCOPE: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;

thread_local! {
    /// Where a span is encoded before it is queued (outside the queue's lock).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The bounded span queue: each span encoded on the thread that built it — as the `spans`
/// field of a `ScopeSpans`, so the queue is that field's bytes — and appended under a short
/// lock (no channel, no wake-up of another thread per span, and the span's memory is freed
/// by the thread that allocated it). The export thread takes the whole queue every
/// [`EXPORT_EVERY`] by swapping in its spare buffer; neither side grows a vector.
struct Queue {
    bytes: Mutex<Vec<u8>>,
}

impl Queue {
    fn push(&self, span: &SpanOut<'_>) {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            span.encode(&mut scratch);
            let prefix = key_len(SCOPE_SPANS_SPANS) + encoded_len_varint(scratch.len() as u64);
            let mut q = self.bytes.lock();
            if q.len() + prefix + scratch.len() > QUEUE_BYTES {
                drop(q);
                METRICS.otlp_dropped.inc();
                return;
            }
            encode_key(SCOPE_SPANS_SPANS, WireType::LengthDelimited, &mut *q);
            encode_varint(scratch.len() as u64, &mut *q);
            q.extend_from_slice(&scratch);
        });
    }
}

/// Where and how spans are sent.
struct Export {
    /// One agent for every export, so the collector connection is kept between them.
    agent: ureq::Agent,
    url: String,
    headers: Vec<super::otlp::OtlpHeader>,
    /// `service.name` and the instrumentation scope, the same for every export.
    resource: Resource,
    scope: InstrumentationScope,
}

impl Export {
    /// The `ExportTraceServiceRequest` carrying `spans` (a `ScopeSpans`'s encoded `spans`
    /// fields): the queued bytes wrapped in the scope and the resource, each level a
    /// length-delimited field as prost encodes an embedded message.
    fn body(&self, spans: &[u8]) -> Vec<u8> {
        let mut scope_spans = Vec::with_capacity(spans.len() + 64);
        prost::encoding::message::encode(SCOPE_SPANS_SCOPE, &self.scope, &mut scope_spans);
        scope_spans.extend_from_slice(spans);
        let mut resource_spans = Vec::with_capacity(scope_spans.len() + 64);
        prost::encoding::message::encode(
            RESOURCE_SPANS_RESOURCE,
            &self.resource,
            &mut resource_spans,
        );
        prost::encoding::bytes::encode(
            RESOURCE_SPANS_SCOPE_SPANS,
            &scope_spans,
            &mut resource_spans,
        );
        let mut body = Vec::with_capacity(resource_spans.len() + 16);
        prost::encoding::bytes::encode(REQUEST_RESOURCE_SPANS, &resource_spans, &mut body);
        body
    }

    /// POST one batch; counted ok or failed (a failed batch's spans are dropped: a
    /// collector that is down costs nothing else).
    fn send(&self, spans: &[u8]) {
        let body = self.body(spans);
        let mut req = self
            .agent
            .post(&self.url)
            .timeout(EXPORT_TIMEOUT)
            .set("content-type", "application/x-protobuf");
        for h in &self.headers {
            req = req.set(&h.name, secrecy::ExposeSecret::expose_secret(&h.value));
        }
        let result = match req.send_bytes(&body) {
            Ok(resp) => {
                // Drain a bounded answer, so the connection can be kept.
                let _ = std::io::copy(&mut resp.into_reader().take(1 << 20), &mut std::io::sink());
                "ok"
            }
            Err(e) => {
                log::debug!("traces: export failed: {}", e.kind());
                "failed"
            }
        };
        METRICS.otlp_exports.with_label_values(&[result]).inc();
    }
}

/// The exporter's HTTP client. No redirects: ureq would follow one to any host with the
/// headers (the collector's API key) that are not `authorization` or `cookie`.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

/// The tracer, when `telemetry.otlp` is set.
pub struct Tracing {
    queue: Arc<Queue>,
    pub settings: OtlpSettings,
}

impl Tracing {
    pub fn start(settings: &OtlpSettings) -> Result<Tracing, String> {
        let export = Export {
            agent: agent(),
            url: format!("{}/v1/traces", settings.endpoint.trim_end_matches('/')),
            headers: settings.headers.clone(),
            resource: Resource {
                attributes: vec![kv("service.name", string("keygate"))],
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: "keygate".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..InstrumentationScope::default()
            },
        };
        let queue = Arc::new(Queue {
            bytes: Mutex::new(Vec::with_capacity(QUEUE_BYTES)),
        });
        // The thread ends with the tracer (it holds the queue only weakly).
        let q = Arc::downgrade(&queue);
        std::thread::Builder::new()
            .name("keygate-otlp".into())
            .spawn(move || {
                let mut batch: Vec<u8> = Vec::with_capacity(QUEUE_BYTES);
                loop {
                    std::thread::sleep(EXPORT_EVERY);
                    let Some(q) = q.upgrade() else {
                        return;
                    };
                    std::mem::swap(&mut *q.bytes.lock(), &mut batch);
                    drop(q);
                    if !batch.is_empty() {
                        export.send(&batch);
                        batch.clear();
                    }
                }
            })
            .map_err(|e| format!("telemetry.otlp: cannot start the export thread: {e}"))?;
        Ok(Tracing {
            queue,
            settings: settings.clone(),
        })
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn string(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A request's trace ids, made when first needed.
#[derive(Debug, Clone, Copy)]
pub struct TraceIds {
    pub trace: TraceId,
    /// The server span's id.
    pub span: SpanId,
    /// The client's span, when its `traceparent` was continued.
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    u128::from_be_bytes(b)
}

/// A new span id.
pub fn new_span_id() -> SpanId {
    SpanId::from((random_u128() as u64).max(1))
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): trace id, parent id, sampled.
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut it = v.trim().split('-');
    let (ver, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if ver == "ff" || !hex(ver, 2) || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if ver == "00" && it.next().is_some() {
        return None;
    }
    let t = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let s = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((t, s, sampled))
}

impl TraceIds {
    /// Continue the client's `traceparent` (only for an authenticated client), else start
    /// a trace; sampled by `ratio` on the trace id (so every node decides alike).
    pub fn new(client: Option<&str>, ratio: f64) -> TraceIds {
        let (trace, parent) = match client.and_then(parse_traceparent) {
            Some((t, s, _)) => (t, Some(s)),
            None => (TraceId::from(random_u128().max(1)), None),
        };
        let bits = u64::from_be_bytes(trace.to_bytes()[8..].try_into().unwrap_or([0; 8]));
        let sampled = ratio >= 1.0 || (bits >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - ratio;
        TraceIds {
            trace,
            span: new_span_id(),
            parent,
            sampled,
        }
    }

    /// The `traceparent` to send upstream for the attempt with span `span`.
    pub fn traceparent(&self, span: SpanId) -> String {
        format!("00-{}-{}-{:02x}", self.trace, span, u8::from(self.sampled))
    }
}

/// One upstream attempt, for its client span.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    pub span: SpanId,
    pub upstream: Arc<Upstream>,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub status: Option<u16>,
}

/// The server span's name and attributes.
pub struct ServerSpan<'a> {
    /// The name is `method target`.
    pub method: &'a str,
    pub target: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub status: u16,
    pub site: Option<&'a str>,
    pub route: Option<&'a str>,
    pub system: Option<&'a str>,
    pub model: Option<&'a str>,
    pub tokens: Option<(u64, u64)>,
}

impl Tracing {
    /// Hand a finished request's spans to the span queue (no I/O here).
    pub fn record(&self, ids: &TraceIds, server: &ServerSpan<'_>, attempts: &[AttemptSpan]) {
        if !ids.sampled {
            return;
        }
        let trace_id = ids.trace.to_bytes();
        let server_id = ids.span.to_bytes();
        // W3C trace flags: sampled.
        let flags = 1;
        let system = server.system.map(|s| ("gen_ai.system", Value::Str(s)));
        for a in attempts {
            let attributes = [
                Some(("keygate.upstream", Value::Str(&a.upstream.name))),
                a.status
                    .map(|s| ("http.response.status_code", Value::Int(i64::from(s)))),
                system,
            ];
            self.queue.push(&SpanOut {
                trace_id,
                span_id: a.span.to_bytes(),
                parent: Some(server_id),
                flags,
                name: &["upstream ", &a.upstream.name],
                kind: SpanKind::Client as i32,
                start_ns: nanos(a.start),
                end_ns: nanos(a.end.unwrap_or(server.end)),
                attributes: &attributes,
                // OpenTelemetry's HTTP conventions: a client span's 4xx is an error too.
                error: a
                    .status
                    .is_none_or(|s| s >= 400)
                    .then_some("upstream attempt failed"),
            });
        }
        let tokens = |n: fn((u64, u64)) -> u64| server.tokens.map(|t| Value::Int(n(t) as i64));
        let attributes = [
            Some((
                "http.response.status_code",
                Value::Int(i64::from(server.status)),
            )),
            server.site.map(|v| ("keygate.site", Value::Str(v))),
            server.route.map(|v| ("keygate.route", Value::Str(v))),
            system,
            server
                .model
                .map(|v| ("gen_ai.request.model", Value::Str(v))),
            tokens(|t| t.0).map(|v| ("gen_ai.usage.input_tokens", v)),
            tokens(|t| t.1).map(|v| ("gen_ai.usage.output_tokens", v)),
        ];
        let error = (server.status >= 500).then(|| format!("HTTP {}", server.status));
        self.queue.push(&SpanOut {
            trace_id,
            span_id: server_id,
            parent: ids.parent.map(|p| p.to_bytes()),
            flags,
            name: &[server.method, " ", server.target],
            kind: SpanKind::Server as i32,
            start_ns: nanos(server.start),
            end_ns: nanos(server.end),
            attributes: &attributes,
            error: error.as_deref(),
        });
        METRICS.otlp_spans.inc_by(1 + attempts.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the queue holds, wrapped by [`Export::body`], is a whole export request: the
    /// collector's decoder finds every span, the resource and the scope.
    #[test]
    fn queued_spans_wrap_into_an_export_request() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::Span;
        use prost::Message;
        let queue = Queue {
            bytes: Mutex::new(Vec::new()),
        };
        let names: Vec<String> = (1u8..=3).map(|i| format!("span {i}")).collect();
        let mut expected = Vec::new();
        for (i, name) in (1u8..=3).zip(&names) {
            let attributes = [
                Some(("keygate.site", Value::Str("alpha"))),
                Some(("n", Value::Int(i.into()))),
            ];
            queue.push(&SpanOut {
                trace_id: [i; 16],
                span_id: [i; 8],
                parent: None,
                flags: 0,
                name: &[name],
                kind: SpanKind::Server as i32,
                start_ns: 0,
                end_ns: 0,
                attributes: &attributes,
                error: None,
            });
            expected.push(Span {
                trace_id: vec![i; 16],
                span_id: vec![i; 8],
                name: name.clone(),
                kind: SpanKind::Server as i32,
                attributes: vec![
                    kv("keygate.site", string("alpha")),
                    kv("n", any_value::Value::IntValue(i.into())),
                ],
                ..Span::default()
            });
        }
        let export = Export {
            agent: agent(),
            url: String::new(),
            headers: vec![],
            resource: Resource {
                attributes: vec![kv("service.name", string("keygate"))],
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: "keygate".into(),
                ..InstrumentationScope::default()
            },
        };
        let body = export.body(&queue.bytes.lock());
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        assert_eq!(rs.resource, Some(export.resource.clone()));
        assert_eq!(rs.scope_spans.len(), 1);
        assert_eq!(rs.scope_spans[0].scope, Some(export.scope.clone()));
        assert_eq!(rs.scope_spans[0].spans, expected);
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        let queue = Queue {
            bytes: Mutex::new(vec![0; QUEUE_BYTES - 4]),
        };
        let before = METRICS.otlp_dropped.get();
        queue.push(&SpanOut {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent: None,
            flags: 1,
            name: &["too much"],
            kind: SpanKind::Server as i32,
            start_ns: 0,
            end_ns: 0,
            attributes: &[],
            error: None,
        });
        assert_eq!(queue.bytes.lock().len(), QUEUE_BYTES - 4);
        assert!(METRICS.otlp_dropped.get() > before);
    }

    #[test]
    fn traceparent_is_parsed_strictly_and_written_back() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(v).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let ids = TraceIds::new(Some(v), 1.0);
        assert_eq!(ids.trace, t);
        assert_eq!(ids.parent, Some(s));
        let out = ids.traceparent(ids.span);
        assert_eq!(parse_traceparent(&out).unwrap().0, t);
    }

    #[test]
    fn sampling_follows_the_ratio() {
        let n = 20_000;
        let kept = (0..n).filter(|_| TraceIds::new(None, 0.25).sampled).count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        assert!((0..100).all(|_| TraceIds::new(None, 1.0).sampled));
        assert!((0..100).all(|_| !TraceIds::new(None, 0.0).sampled));
    }
}
