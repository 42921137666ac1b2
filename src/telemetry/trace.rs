//! OpenTelemetry traces (SPEC §8.7): one server span per request and one client span per
//! upstream attempt, exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK's exporter
//! from keygate's bounded span queue ([`Queue`]) on its own thread — never on the request
//! path. The spans are built when the
//! request ends, from what it recorded (ids made up front, so the `traceparent` sent
//! upstream names the attempt's span); attributes are the GenAI and HTTP ones listed, never
//! a secret, a prompt or an answer.

use crate::telemetry::metrics::METRICS;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use parking_lot::Mutex;
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use super::otlp::OtlpSettings;

/// Spans waiting for export, at most (more are dropped and counted).
const QUEUE: usize = 8192;
/// How often the export thread sends what is queued, and the most spans per export.
const EXPORT_EVERY: Duration = Duration::from_millis(100);
const EXPORT_BATCH: usize = 1024;
/// One export's bound.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter's HTTP client: one blocking call per batch (the SDK's batch thread runs
/// it), through the same small client `keygate admin` uses.
#[derive(Debug)]
struct Client;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req =
            ureq::request(parts.method.as_str(), &parts.uri.to_string()).timeout(EXPORT_TIMEOUT);
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                req = req.set(name.as_str(), v);
            }
        }
        let failed = METRICS.otlp_exports.with_label_values(&["failed"]);
        let resp = match req.send_bytes(&body) {
            Ok(r) => r,
            Err(e) => {
                // The batch's spans are dropped (the SDK does not retry).
                failed.inc();
                return Err(Box::new(std::io::Error::other(e.to_string())));
            }
        };
        let status = resp.status();
        match status {
            200..=299 => METRICS.otlp_exports.with_label_values(&["ok"]).inc(),
            _ => failed.inc(),
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader().take(1 << 20), &mut out)?;
        http::Response::builder()
            .status(status)
            .body(bytes::Bytes::from(out))
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)
    }
}

/// The span processor: a finished span is pushed on a bounded queue under a short lock —
/// no channel, no wake-up of another thread per span (the SDK's batch processor wakes its
/// thread on each span, a futex and a context switch per span) — and a thread of its own
/// exports what is queued every [`EXPORT_EVERY`] with the SDK's OTLP exporter.
#[derive(Debug)]
struct Queue {
    spans: Arc<Mutex<Vec<SpanData>>>,
    exporter: Arc<Mutex<Option<opentelemetry_otlp::SpanExporter>>>,
}

impl Queue {
    fn start(exporter: opentelemetry_otlp::SpanExporter) -> Queue {
        let q = Queue {
            spans: Arc::new(Mutex::new(Vec::with_capacity(QUEUE))),
            exporter: Arc::new(Mutex::new(Some(exporter))),
        };
        let (spans, exporter) = (q.spans.clone(), q.exporter.clone());
        let spawned = std::thread::Builder::new()
            .name("keygate-otlp".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                loop {
                    std::thread::sleep(EXPORT_EVERY);
                    let batch = std::mem::take(&mut *spans.lock());
                    let Some(exp) = exporter.lock().take() else {
                        return;
                    };
                    let mut it = batch.into_iter().peekable();
                    while it.peek().is_some() {
                        let chunk: Vec<SpanData> = it.by_ref().take(EXPORT_BATCH).collect();
                        let _ = rt.block_on(exp.export(chunk));
                    }
                    *exporter.lock() = Some(exp);
                }
            });
        if let Err(e) = spawned {
            log::error!("traces: cannot start the export thread: {e}");
        }
        q
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut q = self.spans.lock();
        if q.len() >= QUEUE {
            drop(q);
            METRICS.otlp_dropped.inc();
            return;
        }
        q.push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(e) = self.exporter.lock().as_mut() {
            e.set_resource(resource);
        }
    }
}

/// The tracer, when `telemetry.otlp` is set.
pub struct Tracing {
    /// Held, not read: dropping the provider shuts the pipeline down.
    _provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    pub settings: OtlpSettings,
}

impl Tracing {
    pub fn start(settings: &OtlpSettings) -> Result<Tracing, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(settings.headers.iter().cloned().collect())
            .build()
            .map_err(|e| format!("telemetry.otlp: {e}"))?;
        let processor = Queue::start(exporter);
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("keygate")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("keygate");
        Ok(Tracing {
            _provider: provider,
            tracer,
            settings: settings.clone(),
        })
    }
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
    pub upstream: String,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub status: Option<u16>,
}

/// The server span's name and attributes.
pub struct ServerSpan<'a> {
    pub name: String,
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
        let remote = |span: SpanId| {
            Context::new().with_remote_span_context(SpanContext::new(
                ids.trace,
                span,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        };
        let parent = match ids.parent {
            Some(p) => remote(p),
            None => Context::new(),
        };
        let mut attrs = vec![KeyValue::new(
            "http.response.status_code",
            i64::from(server.status),
        )];
        let mut add = |k: &'static str, v: Option<&str>| {
            if let Some(v) = v {
                attrs.push(KeyValue::new(k, v.to_string()));
            }
        };
        add("keygate.site", server.site);
        add("keygate.route", server.route);
        add("gen_ai.system", server.system);
        add("gen_ai.request.model", server.model);
        if let Some((i, o)) = server.tokens {
            attrs.push(KeyValue::new("gen_ai.usage.input_tokens", i as i64));
            attrs.push(KeyValue::new("gen_ai.usage.output_tokens", o as i64));
        }
        let mut b = self
            .tracer
            .span_builder(server.name.clone())
            .with_kind(SpanKind::Server)
            .with_start_time(server.start)
            .with_attributes(attrs);
        b.trace_id = Some(ids.trace);
        b.span_id = Some(ids.span);
        let mut span = b.start_with_context(&self.tracer, &parent);
        if server.status >= 500 {
            span.set_status(Status::error(format!("HTTP {}", server.status)));
        }
        let server_cx = remote(ids.span);
        for a in attempts {
            let mut attrs = vec![KeyValue::new("keygate.upstream", a.upstream.clone())];
            if let Some(s) = a.status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(s) = server.system {
                attrs.push(KeyValue::new("gen_ai.system", s.to_string()));
            }
            let mut b = self
                .tracer
                .span_builder(format!("upstream {}", a.upstream))
                .with_kind(SpanKind::Client)
                .with_start_time(a.start)
                .with_attributes(attrs);
            b.span_id = Some(a.span);
            let mut c = b.start_with_context(&self.tracer, &server_cx);
            if a.status.is_none_or(|s| s >= 500) {
                c.set_status(Status::error("upstream attempt failed"));
            }
            c.end_with_timestamp(a.end.unwrap_or(server.end));
        }
        span.end_with_timestamp(server.end);
        METRICS.otlp_spans.inc_by(1 + attempts.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
