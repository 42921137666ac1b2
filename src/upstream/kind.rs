//! The kinds of provider API keygate speaks to.

/// The kinds of provider API; they decide how the credential is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    OpenAi,
    OpenAiCompatible,
    Anthropic,
    Gemini,
}

impl UpstreamKind {
    /// The kind named in `upstreams.<name>.kind`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => UpstreamKind::OpenAi,
            "openai-compatible" => UpstreamKind::OpenAiCompatible,
            "anthropic" => UpstreamKind::Anthropic,
            "gemini" => UpstreamKind::Gemini,
            _ => return None,
        })
    }
}

/// The kind names `upstreams.<name>.kind` accepts, for error messages.
pub const KIND_NAMES: &str = "openai, openai-compatible, anthropic, gemini";
