//! Per-request state, created in `new_ctx` and dropped after `logging`.

use crate::auth::AuthedClient;
use crate::config::{Route, Runtime, Site, Upstream};
use crate::error::GatewayError;
use crate::limits::Admission;
pub use crate::request::plan::BodyPlan;
use crate::response::usage::Usage;
pub use crate::response::watch::ResponseWatch;
use crate::state::Live;
use crate::telemetry::metrics::RouteSeries;
use crate::upstream::circuit::Permit;
use crate::upstream::failover::Attempts;
use crate::upstream::live::UpstreamLive;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything one request carries through the hooks.
pub struct Ctx {
    /// The one config snapshot this request runs on, start to end.
    pub rt: Arc<Runtime>,
    /// The live state of that config's generation (circuits, cool-downs, series).
    pub live: Arc<Live>,
    pub request_id: String,
    pub started: Instant,
    pub tls: bool,
    pub client_ip: Option<IpAddr>,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    pub client: Option<AuthedClient>,
    /// The request's path and query, as admitted (each attempt's upstream path is made
    /// from them).
    pub target: (String, Option<String>),
    /// Path and query sent upstream (this attempt's).
    pub upstream_path: String,
    /// Which upstream of the route's chain this attempt goes to, and the ones given up.
    pub attempts: Attempts,
    /// A hook gave this attempt up and chose the next: Pingora is to try again.
    pub retrying: bool,
    /// A Realtime session ran in `request_filter`: the response is written.
    pub realtime_done: bool,
    pub body: BodyPlan,
    /// Bytes of request body forwarded (for usage estimates).
    pub request_bytes: usize,
    pub model: Option<String>,
    /// The tier's `models:` entry the request's model was admitted under (charged too).
    pub model_limit: Option<crate::limits::tier::ModelLimit>,
    /// Limits passed: holds the concurrency slot and the `RateLimit` header.
    pub admission: Option<Admission>,
    /// The refusal to render in `fail_to_proxy`, when a hook failed on purpose.
    pub error: Option<GatewayError>,
    /// Status sent to the client (for the audit log).
    pub status: u16,
    pub upstream_started: Option<Instant>,
    /// When the first chunk of the client's body reached the body filter.
    pub body_started: Option<Instant>,
    /// When the upstream's response header arrived (its time to first byte, in the audit log).
    pub upstream_answered: Option<Instant>,
    pub credential_id: Option<String>,
    pub response: ResponseWatch,
    pub response_bytes: usize,
    pub usage: Option<Usage>,
    /// What the answer cost in USD, when its model has a price.
    pub cost_usd: Option<f64>,
    /// The site's token budget has been charged for this request.
    pub charged: bool,
    /// The provider refused keygate's credential (its 401): an answer, but nothing the
    /// provider produced or bills, so nothing is charged for it.
    pub credential_refused: bool,
    /// The answering provider's id of the request ([`super::respond::provider_request_id`]).
    pub upstream_request_id: Option<String>,
    /// keygate asked for the stream's usage chunk for itself: not passed on.
    pub hide_usage_chunk: bool,
    /// Attempts whose request the provider had and never answered in time (the answer's
    /// header timed out), and the last such attempt's number (counted once each).
    pub unanswered: (u32, usize),
    /// The attempt's answer reached its end (the body filter's `end_of_stream`); an answer
    /// cut before may hold only a first usage report.
    pub answer_complete: bool,
    /// The answer's first body byte arrived (time to first token observed).
    pub first_token_seen: bool,
    /// Trace ids (with `telemetry.otlp`), made at the first upstream attempt or the end.
    pub trace: Option<crate::telemetry::trace::TraceIds>,
    /// One per upstream attempt, for its client span.
    pub attempt_spans: Vec<crate::telemetry::trace::AttemptSpan>,
    /// The status the upstream answered with.
    pub upstream_status: Option<u16>,
    /// The upstream failed (connect, timeout, TLS, pin): counts against its circuit.
    pub upstream_failed: bool,
    /// The circuit breaker's permit for this request.
    pub circuit: Option<Permit>,
    /// The browser origin allowed for this request (CORS response headers).
    pub cors_origin: Option<String>,
    /// This request's placeholders (pseudonymize mode, something replaced); zeroized
    /// when the ctx is dropped after `logging`.
    pub pii: Option<crate::pii::Pseudonyms>,
    /// Personal data found per kind (audit log and metrics; never values).
    pub pii_counts: Option<crate::pii::Counts>,
}

impl Ctx {
    pub fn new(rt: Arc<Runtime>, live: Arc<Live>) -> Self {
        Ctx {
            rt,
            live,
            request_id: String::new(),
            started: Instant::now(),
            tls: false,
            client_ip: None,
            route: None,
            client: None,
            target: (String::new(), None),
            upstream_path: String::new(),
            attempts: Attempts::default(),
            retrying: false,
            realtime_done: false,
            body: BodyPlan::Undecided,
            request_bytes: 0,
            model: None,
            model_limit: None,
            admission: None,
            error: None,
            status: 0,
            upstream_started: None,
            body_started: None,
            upstream_answered: None,
            credential_id: None,
            response: ResponseWatch::None,
            response_bytes: 0,
            answer_complete: false,
            usage: None,
            cost_usd: None,
            charged: false,
            credential_refused: false,
            upstream_request_id: None,
            hide_usage_chunk: false,
            unanswered: (0, 0),
            first_token_seen: false,
            trace: None,
            attempt_spans: Vec::new(),
            upstream_status: None,
            upstream_failed: false,
            circuit: None,
            cors_origin: None,
            pii: None,
            pii_counts: None,
        }
    }

    /// The matched route (set by `request_filter`).
    pub fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.rt.routes.get(i))
    }

    /// The upstream of this attempt: the route's own, or a fallback.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.route().and_then(|r| r.chain(self.attempts.pos))
    }

    /// The live state of this attempt's upstream.
    pub fn upstream_live(&self) -> Option<&UpstreamLive> {
        self.upstream().and_then(|u| self.live.upstream_for(u))
    }

    /// When the whole answer must have arrived, all attempts together: the route's
    /// upstream's `total_timeout_ms` from the request's arrival.
    pub fn deadline(&self) -> Option<Instant> {
        self.route()
            .map(|r| self.started + r.upstream.total_timeout)
    }

    /// The attempt's upstream answered with `status` (its client span keeps it, whatever
    /// the next attempt sees).
    pub fn set_upstream_status(&mut self, status: u16) {
        self.upstream_status = Some(status);
        self.note_attempt_status(status);
    }

    /// The attempt's status for its client span only (an answer that fails over is not
    /// the request's).
    pub fn note_attempt_status(&mut self, status: u16) {
        if let Some(span) = self.attempt_spans.last_mut() {
            span.status = Some(status);
        }
    }

    /// Forget what the attempt given up saw, before the next one.
    pub fn begin_attempt(&mut self) {
        self.error = None;
        self.upstream_status = None;
        self.upstream_answered = None;
        self.upstream_failed = false;
        self.credential_id = None;
        self.response = ResponseWatch::None;
        self.response_bytes = 0;
        self.answer_complete = false;
        self.usage = None;
        self.upstream_request_id = None;
    }

    /// The matched route's metric series.
    pub fn route_series(&self) -> Option<&RouteSeries> {
        self.route.and_then(|i| self.live.routes.get(i))
    }

    /// The authenticated client's site.
    pub fn site(&self) -> Option<&Site> {
        self.client.as_ref().and_then(|c| self.rt.sites.get(c.site))
    }
}
