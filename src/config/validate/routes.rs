//! `routes:` → [`Route`]s, longest prefix first.

use super::pii::validate as validate_pii;
use super::shared::Errors;
use crate::config::raw::{RawConfig, RawRoute};
use crate::config::runtime::{Route, Upstream};
use std::collections::HashSet;
use std::sync::Arc;

/// Every route, sorted by prefix length (longest first) for longest-prefix matching.
pub(super) fn validate(
    raw: &RawConfig,
    upstreams: &[Arc<Upstream>],
    errs: &mut Errors,
) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut prefixes = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !prefixes.insert(r.prefix.clone()) {
            errs.push(
                format!("{p}.prefix"),
                format!("duplicate prefix \"{}\"", r.prefix),
            );
        }
        if let Some(route) = route(raw, r, &p, upstreams, errs) {
            routes.push(route);
        }
    }
    if raw.routes.is_empty() {
        errs.push("routes", "at least one route is required");
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

/// One route at YAML path `p`; `None` when its upstream is missing or invalid.
fn route(
    raw: &RawConfig,
    r: &RawRoute,
    p: &str,
    upstreams: &[Arc<Upstream>],
    errs: &mut Errors,
) -> Option<Route> {
    if !r.prefix.starts_with('/') {
        errs.push(
            format!("{p}.prefix"),
            format!("must start with \"/\", got \"{}\"", r.prefix),
        );
    } else if crate::request::hygiene::check_path(&r.prefix).is_err() {
        errs.push(
            format!("{p}.prefix"),
            "must be a plain path without dot-segments, encoded characters or empty segments",
        );
    }
    let upstream = upstreams.iter().find(|u| u.name == r.upstream).cloned();
    if upstream.is_none() && !raw.upstreams.contains_key(&r.upstream) {
        errs.push(
            format!("{p}.upstream"),
            format!("unknown upstream \"{}\"", r.upstream),
        );
    }
    if let Some(models) = &r.models {
        if models.is_empty() {
            errs.push(
                format!("{p}.models"),
                "empty list would refuse every model; omit it to allow all",
            );
        }
        for (j, m) in models.iter().enumerate() {
            if m.trim().is_empty() {
                errs.push(format!("{p}.models[{j}]"), "empty model name");
            }
        }
    }
    if r.max_tokens == Some(0) {
        errs.push(format!("{p}.max_tokens"), "must be at least 1");
    }
    for (j, b) in r.betas.iter().enumerate() {
        if b.is_empty() || b.contains(',') || b.bytes().any(|c| !c.is_ascii_graphic()) {
            errs.push(
                format!("{p}.betas[{j}]"),
                "must be one beta value (visible ASCII, no comma)",
            );
        }
    }
    let pii = r
        .pii
        .as_ref()
        .and_then(|x| validate_pii(x, &format!("{p}.pii"), errs));
    let block_patterns = block_patterns(r.block_patterns.as_deref(), p, errs);
    let fallbacks = fallbacks(raw, r, p, upstream.as_deref(), upstreams, errs);
    let realtime = realtime(r, p, errs);
    Some(Route {
        prefix: r.prefix.clone(),
        upstream: upstream?,
        models: r.models.as_ref().map(|m| m.iter().cloned().collect()),
        max_tokens: r.max_tokens,
        block_patterns,
        pii,
        betas: r.betas.clone(),
        fallbacks,
        realtime,
        stored_objects: r.stored_objects,
    })
}

/// `routes[].realtime`: a session's longest life and largest frame.
fn realtime(r: &RawRoute, p: &str, errs: &mut Errors) -> crate::realtime::Limits {
    let mut limits = crate::realtime::Limits::default();
    let Some(raw) = &r.realtime else {
        return limits;
    };
    if let Some(s) = raw.max_session_s {
        if s == 0 || s > 86_400 {
            errs.push(
                format!("{p}.realtime.max_session_s"),
                "must be between 1 and 86400",
            );
        }
        limits.max_session = std::time::Duration::from_secs(s);
    }
    if let Some(b) = raw.max_frame_bytes {
        if !(1024..=64 * 1024 * 1024).contains(&b) {
            errs.push(
                format!("{p}.realtime.max_frame_bytes"),
                "must be between 1024 and 67108864",
            );
        }
        limits.max_frame_bytes = b as usize;
    }
    limits
}

/// `routes[].fallbacks`: known upstreams, each once, not the route's own, speaking the
/// API of the route's upstream (a request is checked once, for that API).
fn fallbacks(
    raw: &RawConfig,
    r: &RawRoute,
    p: &str,
    primary: Option<&Upstream>,
    upstreams: &[Arc<Upstream>],
    errs: &mut Errors,
) -> Vec<Arc<Upstream>> {
    let mut out: Vec<Arc<Upstream>> = Vec::new();
    for (j, name) in r.fallbacks.iter().enumerate() {
        let at = format!("{p}.fallbacks[{j}]");
        if *name == r.upstream {
            errs.push(at, format!("\"{name}\" is the route's own upstream"));
            continue;
        }
        if r.fallbacks[..j].contains(name) {
            errs.push(at, format!("\"{name}\" is listed twice"));
            continue;
        }
        let Some(up) = upstreams.iter().find(|u| u.name == *name) else {
            if !raw.upstreams.contains_key(name) {
                errs.push(at, format!("unknown upstream \"{name}\""));
            }
            continue;
        };
        if let Some(primary) = primary.filter(|pr| !pr.kind.same_api(up.kind)) {
            errs.push(
                at,
                format!(
                    "upstream \"{name}\" is {}, but the route's upstream \"{}\" is {}: a fallback must speak the same API (openai and openai-compatible, anthropic, gemini)",
                    up.kind.as_str(),
                    primary.name,
                    primary.kind.as_str()
                ),
            );
            continue;
        }
        out.push(up.clone());
    }
    out
}

/// `routes[].block_patterns` as one set; `None` when absent or empty.
fn block_patterns(
    pats: Option<&[String]>,
    p: &str,
    errs: &mut Errors,
) -> Option<regex::bytes::RegexSet> {
    let pats = pats?;
    for (j, pat) in pats.iter().enumerate() {
        if let Err(e) = regex::bytes::Regex::new(pat) {
            errs.push(
                format!("{p}.block_patterns[{j}]"),
                format!("not a regex: {e}"),
            );
        }
    }
    regex::bytes::RegexSet::new(pats)
        .ok()
        .filter(|s| !s.is_empty())
}
