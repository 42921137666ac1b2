//! The `keygate-v1` request-signing profile (RFC 9421 + RFC 9530), SPEC §1.
//!
//! This module is pure: it parses the signature headers, builds the signature base
//! and computes or checks the MAC. Key lookup, time and replay live in `auth`.

pub mod curl;

use super::sfv::{self, Bare, Member};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

type HmacSha256 = Hmac<Sha256>;

/// The `tag` value that selects keygate's signature among several.
pub const TAG: &str = "keygate-v1";
/// The only algorithm of the profile.
pub const ALG: &str = "hmac-sha256";
/// The five components every signature must cover (any order).
pub const REQUIRED_COMPONENTS: [&str; 5] =
    ["@method", "@authority", "@path", "@query", "content-digest"];

/// Why a signature was refused. Carries no input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    /// No `Signature-Input` or `Signature` header.
    Missing,
    /// The headers do not parse, or do not follow the profile; the reason is for logs.
    Malformed(&'static str),
}

impl SigError {
    pub fn reason(&self) -> &'static str {
        match self {
            SigError::Missing => "missing signature",
            SigError::Malformed(r) => r,
        }
    }
}

/// The parameters of the selected signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParams {
    pub created: i64,
    pub expires: Option<i64>,
    pub keyid: String,
    pub alg: String,
    pub nonce: String,
    pub tag: String,
}

/// The selected `keygate-v1` signature of a request.
#[derive(Debug, Clone)]
pub struct ParsedSignature {
    pub label: String,
    pub components: Vec<String>,
    pub params: SignatureParams,
    /// The inner list with parameters, exactly as received.
    pub params_raw: String,
    pub signature: Vec<u8>,
}

/// What the signature base is made of, taken from the request as received.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Normalised with [`normalize_authority`].
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Lower-case the host and drop the scheme's default port.
pub fn normalize_authority(authority: &str, tls: bool) -> String {
    let lower = authority.trim().to_ascii_lowercase();
    let default = if tls { ":443" } else { ":80" };
    match lower.strip_suffix(default) {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => lower,
    }
}

/// A nonce is 16 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_nonce(n: &str) -> bool {
    (16..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn join_values<'a>(values: impl Iterator<Item = &'a str>) -> String {
    values.collect::<Vec<_>>().join(", ")
}

/// Parse `Signature-Input` and `Signature` (each possibly several header lines) and
/// select the one member whose `tag` is `keygate-v1`.
pub fn parse(
    signature_input: &[&str],
    signature: &[&str],
    extra_allowed: &HashSet<String>,
) -> Result<ParsedSignature, SigError> {
    if signature_input.is_empty() || signature.is_empty() {
        return Err(SigError::Missing);
    }
    let input = join_values(signature_input.iter().copied());
    let sigs = join_values(signature.iter().copied());
    let inputs = sfv::parse_dictionary(&input)
        .map_err(|_| SigError::Malformed("Signature-Input does not parse"))?;

    let mut selected = None;
    for entry in &inputs {
        let Member::InnerList { params, .. } = &entry.member else {
            continue;
        };
        let is_ours = params
            .iter()
            .any(|(k, v)| k == "tag" && *v == Bare::String(TAG.into()));
        if is_ours {
            if selected.is_some() {
                return Err(SigError::Malformed("several keygate-v1 signatures"));
            }
            selected = Some(entry);
        }
    }
    let entry = selected.ok_or(SigError::Malformed("no keygate-v1 signature"))?;
    let Member::InnerList { items, params } = &entry.member else {
        return Err(SigError::Malformed("signature input is not an inner list"));
    };

    // Components: the five required ones, any order, no duplicates, no parameters;
    // extra header components only when allow-listed.
    let mut components = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for item in items {
        let Bare::String(name) = &item.value else {
            return Err(SigError::Malformed("component is not a string"));
        };
        if !item.params.is_empty() {
            return Err(SigError::Malformed("component with parameters"));
        }
        if !seen.insert(name.clone()) {
            return Err(SigError::Malformed("duplicate component"));
        }
        if !REQUIRED_COMPONENTS.contains(&name.as_str()) && !extra_allowed.contains(name) {
            return Err(SigError::Malformed("component not allowed"));
        }
        components.push(name.clone());
    }
    if REQUIRED_COMPONENTS.iter().any(|c| !seen.contains(*c)) {
        return Err(SigError::Malformed("required component missing"));
    }

    let mut created = None;
    let mut expires = None;
    let mut keyid = None;
    let mut alg = None;
    let mut nonce = None;
    let mut tag = None;
    for (k, v) in params {
        let slot_dup = match (k.as_str(), v) {
            ("created", Bare::Integer(i)) => created.replace(*i).is_some(),
            ("expires", Bare::Integer(i)) => expires.replace(*i).is_some(),
            ("keyid", Bare::String(s)) => keyid.replace(s.clone()).is_some(),
            ("alg", Bare::String(s)) => alg.replace(s.clone()).is_some(),
            ("nonce", Bare::String(s)) => nonce.replace(s.clone()).is_some(),
            ("tag", Bare::String(s)) => tag.replace(s.clone()).is_some(),
            ("created" | "expires" | "keyid" | "alg" | "nonce" | "tag", _) => {
                return Err(SigError::Malformed("parameter has the wrong type"))
            }
            _ => return Err(SigError::Malformed("unknown signature parameter")),
        };
        if slot_dup {
            return Err(SigError::Malformed("duplicate signature parameter"));
        }
    }
    let params = SignatureParams {
        created: created.ok_or(SigError::Malformed("created missing"))?,
        expires,
        keyid: keyid.ok_or(SigError::Malformed("keyid missing"))?,
        alg: alg.ok_or(SigError::Malformed("alg missing"))?,
        nonce: nonce.ok_or(SigError::Malformed("nonce missing"))?,
        tag: tag.ok_or(SigError::Malformed("tag missing"))?,
    };
    if params.alg != ALG {
        return Err(SigError::Malformed("alg is not hmac-sha256"));
    }
    if !valid_nonce(&params.nonce) {
        return Err(SigError::Malformed(
            "nonce is not 16-64 chars of [A-Za-z0-9_-]",
        ));
    }

    // The Signature member with the same label.
    let sig_dict = sfv::parse_dictionary(&sigs)
        .map_err(|_| SigError::Malformed("Signature does not parse"))?;
    let sig_entry = sig_dict
        .iter()
        .find(|e| e.key == entry.key)
        .ok_or(SigError::Malformed("no Signature for the keygate-v1 label"))?;
    let signature = match &sig_entry.member {
        Member::Item(item) => match &item.value {
            Bare::Bytes(b) if b.len() == 32 => b.clone(),
            _ => return Err(SigError::Malformed("Signature is not a 32-byte sequence")),
        },
        _ => return Err(SigError::Malformed("Signature is not a byte sequence")),
    };

    Ok(ParsedSignature {
        label: entry.key.clone(),
        components,
        params,
        params_raw: entry.raw.to_string(),
        signature,
    })
}

/// The RFC 9421 §2.5 signature base for `sig` over `req`.
pub fn signature_base(req: &RequestParts<'_>, sig: &ParsedSignature) -> Result<String, SigError> {
    build_base(req, &sig.components, &sig.params_raw)
}

fn build_base(
    req: &RequestParts<'_>,
    components: &[String],
    params_raw: &str,
) -> Result<String, SigError> {
    let mut base = String::with_capacity(256);
    for c in components {
        base.push('"');
        base.push_str(c);
        base.push_str("\": ");
        match c.as_str() {
            "@method" => base.push_str(req.method),
            "@authority" => base.push_str(req.authority),
            "@path" => base.push_str(if req.path.is_empty() { "/" } else { req.path }),
            "@query" => {
                base.push('?');
                base.push_str(req.query.unwrap_or(""));
            }
            name => {
                let mut values = req.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return Err(SigError::Malformed("signed header is missing"));
                }
                let mut parts = Vec::new();
                for v in values {
                    let v = v
                        .to_str()
                        .map_err(|_| SigError::Malformed("signed header is not visible ASCII"))?;
                    parts.push(v.trim());
                }
                base.push_str(&parts.join(", "));
            }
        }
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_raw);
    Ok(base)
}

/// HMAC-SHA256 of the signature base.
pub fn mac(secret: &[u8], base: &str) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(base.as_bytes());
    m.finalize().into_bytes().into()
}

/// Constant-time check of `signature` against the MAC of `base`.
pub fn verify_mac(secret: &[u8], base: &str, signature: &[u8]) -> bool {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(base.as_bytes());
    m.verify_slice(signature).is_ok()
}

/// `sha-256=:<base64>:` for a body.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// The SHA-256 member of a `Content-Digest` header.
pub fn parse_content_digest(value: &str) -> Result<[u8; 32], SigError> {
    let dict = sfv::parse_dictionary(value)
        .map_err(|_| SigError::Malformed("Content-Digest does not parse"))?;
    let entry = dict
        .iter()
        .find(|e| e.key == "sha-256")
        .ok_or(SigError::Malformed("Content-Digest has no sha-256"))?;
    match &entry.member {
        Member::Item(item) => match &item.value {
            Bare::Bytes(b) => b
                .as_slice()
                .try_into()
                .map_err(|_| SigError::Malformed("sha-256 digest is not 32 bytes")),
            _ => Err(SigError::Malformed("sha-256 digest is not a byte sequence")),
        },
        _ => Err(SigError::Malformed("sha-256 digest is not a byte sequence")),
    }
}

/// The three headers a client sends (what `keygate sign` prints).
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    pub content_digest: String,
    pub signature_input: String,
    pub signature: String,
}

impl SignedHeaders {
    /// The three headers as (name, value), in the order a client sends them.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("Content-Digest", &self.content_digest),
            ("Signature-Input", &self.signature_input),
            ("Signature", &self.signature),
        ]
    }
}

/// What to sign: a client-side description of one request.
pub struct SignRequest<'a> {
    pub method: &'a str,
    /// Absolute URL, `http(s)://host[:port]/path?query`.
    pub url: &'a str,
    pub body: &'a [u8],
    pub key_id: &'a str,
    pub created: i64,
    pub nonce: &'a str,
}

/// Sign a request with the profile's component and parameter order.
pub fn sign(secret: &[u8], req: &SignRequest<'_>) -> Result<SignedHeaders, String> {
    let uri: http::Uri = req
        .url
        .parse()
        .map_err(|_| format!("not a URL: {}", req.url))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL must start with http:// or https://".into()),
    };
    let authority = normalize_authority(
        uri.authority()
            .map(|a| a.as_str())
            .ok_or("URL has no host")?,
        tls,
    );
    if !valid_nonce(req.nonce) {
        return Err("nonce must be 16-64 chars of [A-Za-z0-9_-]".into());
    }
    let digest = content_digest(req.body);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-digest",
        http::HeaderValue::from_str(&digest).map_err(|e| e.to_string())?,
    );
    let components: Vec<String> = REQUIRED_COMPONENTS.iter().map(|s| s.to_string()).collect();
    let params_raw = format!(
        "(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\");created={};keyid=\"{}\";alg=\"{ALG}\";nonce=\"{}\";tag=\"{TAG}\"",
        req.created, req.key_id, req.nonce
    );
    let parts = RequestParts {
        method: req.method,
        authority: &authority,
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
    };
    let base = build_base(&parts, &components, &params_raw).map_err(|e| e.reason().to_string())?;
    let sig = mac(secret, &base);
    Ok(SignedHeaders {
        content_digest: digest,
        signature_input: format!("sig1={params_raw}"),
        signature: format!("sig1=:{}:", STANDARD.encode(sig)),
    })
}

/// A fresh random nonce (22 base64url characters, 128 bits).
pub fn random_nonce() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests;
