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

    /// The name `upstreams.<name>.kind` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::OpenAiCompatible => "openai-compatible",
            UpstreamKind::Anthropic => "anthropic",
            UpstreamKind::Gemini => "gemini",
        }
    }

    /// Whether an upstream of kind `other` serves the same API, so a request made for
    /// one can be sent to the other (a fallback): `openai` and `openai-compatible`
    /// speak one API; Anthropic and Gemini only their own.
    pub fn same_api(self, other: UpstreamKind) -> bool {
        use UpstreamKind::*;
        let family = |k| match k {
            OpenAi | OpenAiCompatible => 0,
            Anthropic => 1,
            Gemini => 2,
        };
        family(self) == family(other)
    }
}

/// The kind names `upstreams.<name>.kind` accepts, for error messages.
pub const KIND_NAMES: &str = "openai, openai-compatible, anthropic, gemini";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_api_family_may_stand_in_for_another() {
        use UpstreamKind::*;
        assert!(OpenAi.same_api(OpenAiCompatible) && OpenAiCompatible.same_api(OpenAi));
        assert!(Anthropic.same_api(Anthropic) && Gemini.same_api(Gemini));
        assert!(!OpenAi.same_api(Anthropic) && !Gemini.same_api(OpenAiCompatible));
        for k in [OpenAi, OpenAiCompatible, Anthropic, Gemini] {
            assert_eq!(UpstreamKind::parse(k.as_str()), Some(k));
        }
    }
}
