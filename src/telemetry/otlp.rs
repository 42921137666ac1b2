//! `telemetry.otlp` as validated (a leaf: the config builds it, [`super::trace`] uses it).

/// `telemetry.otlp`.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub sample_ratio: f64,
    /// Sent with every export (e.g. an API key): values are not logged.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        write!(
            f,
            "OtlpSettings({}, ratio {}, headers {names:?} [VALUES REDACTED])",
            self.endpoint, self.sample_ratio
        )
    }
}
