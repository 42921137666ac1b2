//! What one attempt sends to its upstream (the route's own, or a fallback): the path,
//! made from the admitted request's path for that upstream, and the body, with the model
//! renamed where the upstream's `model_map` says so.

use super::ctx::Ctx;
use crate::config::Upstream;
use crate::error::GatewayError;
use crate::request::body::body_format;
use crate::upstream::headers::strip_key_param;
use crate::upstream::kind::UpstreamKind;
use crate::upstream::model_map;
use bytes::Bytes;

/// The upstream path: the route's `prefix` stripped, `up`'s base path prepended, the
/// query kept (without Gemini's `key` parameter).
pub(super) fn upstream_path(
    prefix: &str,
    up: &Upstream,
    path: &str,
    query: Option<&str>,
) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let rest = rest.trim_start_matches('/');
    // Sized once, without the formatting machinery (this runs on every request).
    let mut out =
        String::with_capacity(up.base_path.len() + 1 + rest.len() + 1 + query.map_or(0, str::len));
    out.push_str(&up.base_path);
    out.push('/');
    out.push_str(rest);
    if let Some(q) = query {
        let q = if up.kind == UpstreamKind::Gemini {
            strip_key_param(q)
        } else {
            q.to_string()
        };
        if !q.is_empty() {
            out.push('?');
            out.push_str(&q);
        }
    }
    out
}

/// Whether `up` reads the model from the path (Gemini's own API) rather than the body.
fn model_in_path(up: &Upstream, upstream_path: &str) -> bool {
    let p = upstream_path.split('?').next().unwrap_or(upstream_path);
    body_format(up.kind, p.trim_end_matches('/')) == UpstreamKind::Gemini
}

/// This attempt's path at `up`.
pub(super) fn path(ctx: &Ctx, up: &Upstream) -> String {
    let prefix = ctx.route().map_or("", |r| r.prefix.as_str());
    let (path, query) = &ctx.target;
    let p = upstream_path(prefix, up, path, query.as_deref());
    if !up.model_map.is_empty() && model_in_path(up, &p) {
        if let Some(mapped) = model_map::gemini_path_for(&p, &up.model_map) {
            return mapped;
        }
    }
    p
}

/// `body` for `up` when its `model_map` renames the request's model in the body
/// (`None`: sent as it is).
pub(super) fn mapped_body(
    ctx: &Ctx,
    up: &Upstream,
    body: &[u8],
) -> Option<Result<Bytes, GatewayError>> {
    let to = up.provider_model(ctx.model.as_deref())?;
    if model_in_path(up, &ctx.upstream_path) {
        return None;
    }
    Some(model_map::body_with_model(body, to))
}

/// Before an attempt at `up`: a held-back body starts over; a pre-read one is renamed
/// for `up` when it needs to be.
pub(super) fn body(ctx: &mut Ctx, up: &Upstream) -> Result<(), GatewayError> {
    let mapped = match ctx.body.verified() {
        Some(b) => mapped_body(ctx, up, b).transpose()?,
        None => None,
    };
    ctx.body.begin_attempt(mapped);
    Ok(())
}

/// The model the answer names instead of the provider's: the client's, when this
/// attempt's upstream renamed it.
pub(super) fn client_model(ctx: &Ctx) -> Option<&str> {
    let up = ctx.upstream()?;
    up.provider_model(ctx.model.as_deref())
        .and(ctx.model.as_deref())
}
