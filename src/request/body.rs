//! JSON request bodies: parse strictly (no duplicate keys, bounded depth), check the
//! route's model allow-list, and cap the output-token field of the upstream's kind.

use crate::config::Route;
use crate::error::GatewayError;
use crate::upstream::kind::UpstreamKind;
use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

pub(crate) mod scan;

/// A JSON value whose objects had no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom("duplicate key in JSON object"));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parse JSON refusing duplicate keys at any depth (serde_json bounds nesting at 128).
pub fn parse_strict(body: &[u8]) -> Result<Value, String> {
    let Strict(v) = crate::json::read_whole(body, std::marker::PhantomData::<Strict>)
        .map_err(|e| e.to_string())?;
    Ok(v)
}

/// What validation decided about a body.
#[derive(Debug, Default)]
pub struct BodyOutcome {
    /// The model the request names (body `model`, or the Gemini path).
    pub model: Option<String>,
    /// A rewritten body to send instead of the original.
    pub rewritten: Option<Bytes>,
    /// `"stream": true` (or a Gemini streaming method).
    pub stream: bool,
    /// What the PII policy found or replaced (`None`: no policy, or nothing found).
    pub pii: Option<crate::pii::Outcome>,
    /// Work the provider runs after this request's answer (batches, fine-tuning jobs,
    /// `"background": true`): its usage never comes back through keygate.
    pub deferred: bool,
    /// The request could name a model (a JSON body, a form, a Realtime mint): one that
    /// names none gets the provider's default model.
    pub names_model: bool,
    /// keygate asked for the stream's usage chunk (`stream_options.include_usage`) where
    /// the client had not: the chunk (`"choices": []`) is read, not passed on.
    pub usage_asked_for_client: bool,
}

fn is_json_content_type(ct: &str) -> bool {
    let mime = ct.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime
                .get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && mime.to_ascii_lowercase().ends_with("+json"))
}

/// The Gemini model in `/v1beta/models/<model>:<method>`: one segment after the one
/// `models` segment. `Err` for a path naming more (`…/models/a/models/b:generateContent`),
/// where keygate would check one model and a proxy routing on the last segment serve
/// another.
fn gemini_model(path: &str) -> Result<Option<&str>, GatewayError> {
    let Some((_, after)) = path.split_once("/models/") else {
        return Ok(None);
    };
    if after.contains("/models/") {
        return Err(GatewayError::bad_request(
            "A Gemini path names one model, once.",
        ));
    }
    // One segment: `…/models/veo-3/operations/op-1` polls an operation of `veo-3`.
    let model = after.split([':', '/']).next().unwrap_or(after);
    Ok((!model.is_empty()).then_some(model))
}

/// Validate a request body for `route` under the PII policy `pii` (the site's may replace
/// the route's); `upstream_path` is the path sent upstream. Personal data is looked for
/// last, after the model and size checks; in `block` mode findings are returned in
/// [`BodyOutcome::pii`] for the caller to refuse.
pub fn check_with(
    route: &Route,
    pii: Option<&crate::pii::PiiPolicy>,
    method: &str,
    upstream_path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<BodyOutcome, GatewayError> {
    check_inner(route, pii, method, upstream_path, content_type, body, false)
}

/// [`check_with`]; `force_tree` builds the JSON tree even for bodies the scan leaves
/// untouched (tests compare both ways).
fn check_inner(
    route: &Route,
    pii: Option<&crate::pii::PiiPolicy>,
    method: &str,
    upstream_path: &str,
    content_type: Option<&str>,
    body: &[u8],
    force_tree: bool,
) -> Result<BodyOutcome, GatewayError> {
    let mut out = BodyOutcome::default();
    // The endpoint the provider serves: a trailing slash does not make another one.
    let path_only = upstream_path
        .split('?')
        .next()
        .unwrap_or(upstream_path)
        .trim_end_matches('/');
    // Bodies are read in the format of the endpoint, which is not always the upstream's
    // own (Gemini and Anthropic also serve OpenAI's chat completions).
    let kind = body_format(route.upstream.kind, path_only);
    out.deferred = method == "POST" && is_deferred(path_only);
    // An embedding batch generates no output: the cap is no reason to refuse it
    // (google-genai sends every `embed_content` as `:batchEmbedContents`).
    let embeds = path_only.ends_with(":batchEmbedContents");
    if is_batch(path_only) && ((route.max_tokens.is_some() && !embeds) || pii.is_some()) {
        return Err(GatewayError::bad_request(
            "Batch endpoints are not available on routes with max_tokens or pii: their requests cannot be checked here.",
        ));
    }
    if pii.is_some() && is_realtime_mint(path_only) {
        return Err(no_realtime_with_pii());
    }
    if let Some(boundary) = crate::request::upload::boundary(path_only, content_type) {
        if pii.is_some() {
            return Err(no_uploads_with_pii());
        }
        out.model = crate::request::upload::read_whole(&boundary, body, body.len() + 1)?;
        out.names_model = true;
        check_model(route, out.model.as_deref(), true)?;
        return Ok(out);
    }
    if path_only.ends_with("/realtime/client_secrets") && !body.is_empty() {
        // The model of a Realtime session is named inside it (the checks below go on).
        let v: Value = parse_strict(body).map_err(invalid_json)?;
        out.model = v
            .pointer("/session/model")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if kind == UpstreamKind::Gemini {
        out.model = gemini_model(path_only)?.map(str::to_string);
        out.stream = path_only.ends_with(":streamGenerateContent");
    }
    let mut top = None;
    if !body.is_empty() {
        if !content_type.is_some_and(is_json_content_type) {
            return Err(GatewayError::bad_request(
                "Request bodies must be application/json.",
            ));
        }
        let t = scan::top(body)
            .map_err(invalid_json)?
            .ok_or_else(|| GatewayError::bad_request("The request body must be a JSON object."))?;
        if path_only.ends_with("/realtime/client_secrets")
            && !matches!(t.model, scan::Model::Absent)
        {
            // The session's model is the one checked; a top-level one could be read instead.
            return Err(GatewayError::bad_request(
                "A client secret's model is named in \"session\".\"model\" only.",
            ));
        }
        if kind != UpstreamKind::Gemini {
            match &t.model {
                scan::Model::Str(m) => out.model = Some(m.as_str().to_string()),
                scan::Model::Other => {
                    return Err(GatewayError::bad_request(
                        "The body's \"model\" must be a string.",
                    ))
                }
                scan::Model::Absent => {}
            }
            out.stream = t.stream;
        }
        out.deferred |= t.background;
        top = Some(t);
    } else if method == "POST" && route.max_tokens.is_some() && needs_output_cap(kind, path_only) {
        return Err(GatewayError::bad_request(
            "This endpoint needs a JSON body.",
        ));
    }

    // A Realtime mint with no body still gets a session: of the provider's default model.
    out.names_model = out.model.is_some()
        || top.is_some()
        || crate::request::endpoints::realtime_mint(path_only).is_some();
    check_model(route, out.model.as_deref(), out.names_model)?;

    let Some(top) = top else { return Ok(out) };
    let cap = route
        .max_tokens
        .filter(|_| needs_output_cap(kind, path_only));
    // Only Chat Completions (and legacy Completions) take `stream_options`; a Responses
    // stream always ends with its usage (`response.completed`) and has no such option.
    let stream_usage =
        out.stream && kind == UpstreamKind::OpenAi && path_only.ends_with("/completions");
    let untouched = !force_tree
        && pii.is_none()
        && cap.is_none_or(|c| {
            kind != UpstreamKind::Gemini
                && !top.choices
                && top.caps_within(cap_fields(kind, path_only), c)
        })
        && (!stream_usage || top.stream_usage);
    if untouched {
        return Ok(out);
    }
    // The body is rewritten (or may be): build the tree.
    let Value::Object(mut obj) = parse_strict(body).map_err(invalid_json)? else {
        return Err(GatewayError::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    let mut changed = false;
    if let Some(cap) = cap {
        if kind == UpstreamKind::Gemini {
            refuse_gemini_aliases(&obj)?;
        }
        // Each choice may use the output limit: the route's cap holds for all of them.
        let n = choices(kind, &obj)?;
        let per_choice = cap / n;
        if per_choice == 0 {
            return Err(GatewayError::bad_request(format!(
                "{n} choices would exceed this route's output cap of {cap} tokens."
            )));
        }
        changed |= cap_output_tokens(kind, path_only, &mut obj, per_choice)?;
    }
    if stream_usage {
        let added = request_stream_usage(&mut obj)?;
        out.usage_asked_for_client = added;
        changed |= added;
    }
    if let Some(policy) = pii {
        out.pii = crate::pii::apply(policy, kind, &mut obj, body);
        changed |= matches!(out.pii, Some(crate::pii::Outcome::Replaced(_)));
    }
    if changed {
        let bytes = serde_json::to_vec(&Value::Object(obj)).map_err(|e| {
            GatewayError::bad_request("The request body cannot be re-encoded.")
                .detail(e.to_string())
        })?;
        out.rewritten = Some(Bytes::from(bytes));
    }
    Ok(out)
}

/// Uploads carry audio and images keygate cannot look into for personal data.
/// The Realtime endpoints that mint a secret the browser then uses at the provider
/// directly (no keygate in between).
fn is_realtime_mint(path: &str) -> bool {
    ["client_secrets", "sessions", "transcription_sessions"]
        .iter()
        .any(|e| path.ends_with(&format!("/realtime/{e}")))
        // WebRTC and SIP calls (`/realtime/calls`, `…/calls/{id}/accept`): their audio
        // goes to the provider directly.
        || path.contains("/realtime/calls")
}

/// Realtime on a route (or site) with `pii`: a session's text and audio pass no check,
/// and a minted secret is used at the provider without keygate.
pub fn no_realtime_with_pii() -> GatewayError {
    GatewayError::bad_request(
        "Realtime sessions are not available on routes with pii: their content cannot be checked here.",
    )
}

pub fn no_uploads_with_pii() -> GatewayError {
    GatewayError::bad_request(
        "Uploads are not available on routes with pii: their content cannot be checked here.",
    )
}

/// `routes[].models`: the model named must be listed; a request that could name one
/// (`names_model`: a JSON body or a form) but does not is refused too.
pub fn check_model(
    route: &Route,
    model: Option<&str>,
    names_model: bool,
) -> Result<(), GatewayError> {
    let Some(models) = &route.models else {
        return Ok(());
    };
    if !names_model || model.is_some_and(|m| models.contains(m)) {
        return Ok(());
    }
    Err(GatewayError::forbidden(match model {
        Some(m) => format!(
            "Model \"{}\" is not allowed on this route.",
            m.chars().take(100).collect::<String>()
        ),
        None => "The request names no model; this route allows only listed models.".into(),
    }))
}

fn invalid_json(detail: String) -> GatewayError {
    GatewayError::bad_request("The request body is not valid JSON (duplicate keys are refused).")
        .detail(detail)
}

/// The output-token fields `kind` clamps, as indexes into [`scan::CAP_FIELDS`].
fn cap_fields(kind: UpstreamKind, path: &str) -> &'static [usize] {
    match kind {
        // `max_tokens_to_sample`: the legacy Text Completions API (`/v1/complete`) only;
        // on Messages it is no output limit, and must not stand in for `max_tokens`.
        UpstreamKind::Anthropic if path.ends_with("/complete") => &[3],
        UpstreamKind::Anthropic => &[0],
        _ => &[0, 1, 2],
    }
}

/// Ask OpenAI to end a stream with a usage chunk (`stream_options.include_usage`), so
/// streamed requests are charged what they cost. Returns whether the body changed.
fn request_stream_usage(obj: &mut Map<String, Value>) -> Result<bool, GatewayError> {
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(opts) = opts else {
        return Err(GatewayError::bad_request(
            "\"stream_options\" must be an object.",
        ));
    };
    if opts.get("include_usage") == Some(&Value::Bool(true)) {
        return Ok(false);
    }
    opts.insert("include_usage".into(), Value::Bool(true));
    Ok(true)
}

/// Gemini's JSON parser also takes a field's proto name (`generation_config`,
/// `candidate_count`, `max_output_tokens`): keygate reads the JSON names only, so a body
/// giving the proto names would pass the route's output cap (eight candidates of the
/// whole cap each), or name a field twice with the provider choosing which wins.
fn refuse_gemini_aliases(obj: &Map<String, Value>) -> Result<(), GatewayError> {
    let config = obj.get("generationConfig").and_then(Value::as_object);
    let alias = [("generation_config", "generationConfig")]
        .into_iter()
        .find(|(a, _)| obj.contains_key(*a))
        .or_else(|| {
            [
                ("candidate_count", "candidateCount"),
                ("max_output_tokens", "maxOutputTokens"),
            ]
            .into_iter()
            .find(|(a, _)| config.is_some_and(|c| c.contains_key(*a)))
        });
    match alias {
        Some((a, name)) => Err(GatewayError::bad_request(format!(
            "\"{a}\" is not taken on this route; use \"{name}\"."
        ))),
        None => Ok(()),
    }
}

/// How many outputs one request asks for: OpenAI `n` and `best_of` (legacy completions
/// generate `best_of` and bill them all), Gemini `generationConfig.candidateCount`.
fn choices(kind: UpstreamKind, obj: &Map<String, Value>) -> Result<u64, GatewayError> {
    let (holder, fields): (Option<&Map<String, Value>>, &[&str]) = match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => (Some(obj), &["n", "best_of"]),
        UpstreamKind::Gemini => (
            obj.get("generationConfig").and_then(Value::as_object),
            &["candidateCount"],
        ),
        UpstreamKind::Anthropic => (None, &[]),
    };
    let mut n = 1;
    for field in fields {
        match holder.and_then(|h| h.get(*field)) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let k = v.as_u64().filter(|k| *k >= 1).ok_or_else(|| {
                    GatewayError::bad_request(format!("\"{field}\" must be a positive integer."))
                })?;
                n = n.max(k);
            }
        }
    }
    Ok(n)
}

/// The format of a body sent to `path` of an upstream of `kind`: OpenAI's for its
/// endpoints on any provider (as `openai-compatible`: keygate adds no OpenAI-only
/// member), else the upstream's own.
pub fn body_format(kind: UpstreamKind, path: &str) -> UpstreamKind {
    let openai = [
        "/chat/completions",
        "/completions",
        "/responses",
        "/embeddings",
    ]
    .iter()
    .any(|e| path.ends_with(e));
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => kind,
        _ if openai => UpstreamKind::OpenAiCompatible,
        _ => kind,
    }
}

/// Endpoints that carry many requests in one body (not checked request by request).
/// Endpoints whose work the provider bills later, outside the request: batches and
/// fine-tuning jobs.
fn is_deferred(path: &str) -> bool {
    // `/batches` covers Anthropic's `/messages/batches` ([`is_batch`]) too.
    path.ends_with("/batches")
        || path.contains("/fine_tuning/jobs")
        || path.ends_with(":batchGenerateContent")
}

fn is_batch(path: &str) -> bool {
    path.ends_with("/messages/batches")
        || path.ends_with(":batchGenerateContent")
        || path.ends_with(":batchEmbedContents")
        || path.ends_with(":asyncBatchEmbedContent")
}

/// Endpoints that generate output and so take an output-token limit.
fn needs_output_cap(kind: UpstreamKind, path: &str) -> bool {
    match kind {
        UpstreamKind::Gemini => {
            path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent")
        }
        UpstreamKind::Anthropic => path.ends_with("/messages") || path.ends_with("/complete"),
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => {
            path.ends_with("/chat/completions")
                || path.ends_with("/completions")
                || path.ends_with("/responses")
        }
    }
}

fn clamp_field(
    obj: &mut Map<String, Value>,
    field: &str,
    cap: u64,
) -> Result<Option<bool>, GatewayError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v.as_u64().ok_or_else(|| {
                GatewayError::bad_request(format!("\"{field}\" must be a non-negative integer."))
            })?;
            if n > cap {
                obj.insert(field.to_string(), Value::from(cap));
                Ok(Some(true))
            } else {
                Ok(Some(false))
            }
        }
    }
}

/// Clamp the output-token fields to `cap`, inserting one when the request has none.
/// Returns whether the body changed.
fn cap_output_tokens(
    kind: UpstreamKind,
    path: &str,
    obj: &mut Map<String, Value>,
    cap: u64,
) -> Result<bool, GatewayError> {
    if kind == UpstreamKind::Gemini {
        let gc = obj
            .entry("generationConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(gc) = gc else {
            return Err(GatewayError::bad_request(
                "\"generationConfig\" must be an object.",
            ));
        };
        return Ok(match clamp_field(gc, "maxOutputTokens", cap)? {
            Some(changed) => changed,
            None => {
                gc.insert("maxOutputTokens".into(), Value::from(cap));
                true
            }
        });
    }
    let mut changed = false;
    let mut present = false;
    for &i in cap_fields(kind, path) {
        if let Some(c) = clamp_field(obj, scan::CAP_FIELDS[i], cap)? {
            present = true;
            changed |= c;
        }
    }
    if !present {
        let field = if path.ends_with("/responses") {
            "max_output_tokens"
        } else if kind == UpstreamKind::OpenAi && path.ends_with("/chat/completions") {
            "max_completion_tokens"
        } else if kind == UpstreamKind::Anthropic && path.ends_with("/complete") {
            "max_tokens_to_sample"
        } else {
            "max_tokens"
        };
        obj.insert(field.into(), Value::from(cap));
        changed = true;
    }
    if changed && kind == UpstreamKind::Anthropic {
        fit_thinking_budget(obj, cap)?;
    }
    Ok(changed)
}

/// Anthropic requires extended thinking's `budget_tokens` below `max_tokens` (and at
/// least 1,024): a `max_tokens` lowered to the cap under a larger budget made a request
/// the provider refused, naming a `max_tokens` the client never sent. The budget is
/// lowered with it; under a cap too small for any budget, keygate refuses in its words.
fn fit_thinking_budget(obj: &mut Map<String, Value>, cap: u64) -> Result<(), GatewayError> {
    const MIN_BUDGET: u64 = 1024;
    let Some(thinking) = obj.get_mut("thinking").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(budget) = thinking.get("budget_tokens").and_then(Value::as_u64) else {
        return Ok(());
    };
    if budget < cap {
        return Ok(());
    }
    if cap <= MIN_BUDGET {
        return Err(GatewayError::bad_request(format!(
            "Extended thinking needs an output limit above {MIN_BUDGET} tokens; this route's cap is {cap}."
        )));
    }
    thinking.insert("budget_tokens".into(), Value::from(cap - 1));
    Ok(())
}

#[cfg(test)]
mod tests;
