//! `telemetry.otlp` as validated (a leaf: the config builds it, [`super::trace`] uses it).

/// `telemetry.otlp`.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub sample_ratio: f64,
    /// Sent with every export (e.g. an API key): values are not logged.
    pub headers: Vec<OtlpHeader>,
}

/// One `telemetry.otlp.headers` entry.
#[derive(Clone)]
pub struct OtlpHeader {
    pub name: String,
    pub value: secrecy::SecretString,
    /// Sealed (`enc:v1`), or under a credential's name ([`OtlpHeader::names_a_credential`]):
    /// redacted and scanned for like every other secret. Otherwise a plain setting (a
    /// dataset or tenant name, literal or from `env:`/`file:`).
    pub secret: bool,
}

/// For the reload's "changed, applies at restart" check only.
impl PartialEq for OtlpHeader {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        (&self.name, self.secret, self.value.expose_secret())
            == (&other.name, other.secret, other.value.expose_secret())
    }
}

impl OtlpHeader {
    /// The secret place name (AAD) of an `enc:v1` value of header `name`.
    pub fn place(name: &str) -> String {
        format!("telemetry/otlp/headers/{}", name.to_ascii_lowercase())
    }

    /// Does a header of this name carry a credential, so that a literal value is refused
    /// outside `--demo`? Collectors take their API key under many names: `authorization`,
    /// `x-api-key`, `api-key`, `dd-api-key`, `x-honeycomb-team`, `signoz-ingestion-key`, …
    pub fn names_a_credential(name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        [
            "auth",
            "key",
            "token",
            "secret",
            "password",
            "x-honeycomb-team",
        ]
        .iter()
        .any(|w| n.contains(w))
    }
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|h| h.name.as_str()).collect();
        write!(
            f,
            "OtlpSettings({}, ratio {}, headers {names:?} [VALUES REDACTED])",
            self.endpoint, self.sample_ratio
        )
    }
}
