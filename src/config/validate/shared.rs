//! What every section's validation shares: the load options, the error collector and
//! the id and secret-strength rules.

use crate::config::error::ConfigError;
use crate::config::secret;
use secrecy::SecretString;

/// How a config is being loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// `serve --demo`: plain-literal secrets are allowed.
    pub demo: bool,
}

/// A URL host that stays on this machine (`localhost`, `127.0.0.0/8`, `[::1]`): plain
/// text to it never crosses a network.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Collects errors while validating.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Errors {
    /// How many mistakes have been found so far (a section compares before and after).
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Refuse weak secrets outside `--demo` (the message never shows the value).
pub(super) fn strong_enough(sec: SecretString, opts: LoadOptions) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    match secret::weakness(sec.expose_secret()) {
        Some(why) if !opts.demo => Err(format!("weak secret: {why}")),
        _ => Ok(sec),
    }
}

/// Ids of sites, keys, credentials, upstreams and master keys: letters, digits, `. _ -`.
pub(super) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
