//! The provider endpoints a route serves unless it opts in to every endpoint
//! (`routes[].stored_objects: true`): the stateless ones, that generate, count or list models.
//!
//! Every site on a route reaches the provider under the same account (the upstream's
//! credentials). What that account stores (files, batches, vector stores, assistants and
//! threads, conversations, stored responses and completions, fine-tunes, Gemini's cached
//! contents, tuned models and operations, Anthropic's message batches) is readable and
//! deletable by whoever holds the key: through keygate, by every site on the route. So the
//! default is an allow-list of what needs no stored object, by method and by the path's
//! last segments, and no path may pass through a collection of stored objects.

/// The endpoints served by default: method, then the path's last segments (`*`: any one
/// segment; a last segment `*:action` is Gemini's `models/<model>:action`).
const STATELESS: &[(&str, &[&str])] = &[
    // OpenAI, and the OpenAI-compatible APIs of the others.
    ("POST", &["chat", "completions"]),
    ("POST", &["completions"]),
    ("POST", &["embeddings"]),
    ("POST", &["responses"]),
    ("POST", &["responses", "input_tokens"]),
    ("POST", &["moderations"]),
    ("POST", &["audio", "speech"]),
    ("POST", &["audio", "transcriptions"]),
    ("POST", &["audio", "translations"]),
    ("POST", &["images", "generations"]),
    ("POST", &["images", "edits"]),
    ("POST", &["images", "variations"]),
    ("POST", &["realtime", "client_secrets"]),
    ("POST", &["realtime", "sessions"]),
    ("POST", &["realtime", "transcription_sessions"]),
    ("GET", &["realtime"]),
    // Anthropic.
    ("POST", &["messages"]),
    ("POST", &["messages", "count_tokens"]),
    ("POST", &["complete"]),
    // Gemini.
    ("POST", &["models", "*:generateContent"]),
    ("POST", &["models", "*:streamGenerateContent"]),
    ("POST", &["models", "*:countTokens"]),
    ("POST", &["models", "*:embedContent"]),
    ("POST", &["models", "*:batchEmbedContents"]),
    // Everyone: the model list and one model.
    ("GET", &["models"]),
    ("GET", &["models", "*"]),
];

/// Collections of stored objects (OpenAI, Anthropic, Gemini): no default endpoint lies
/// under one (`…/threads/<id>/messages` is not Anthropic's `…/messages`).
const STORED: &[&str] = &[
    "files",
    "uploads",
    "batches",
    "vector_stores",
    "assistants",
    "threads",
    "fine_tuning",
    "fine-tunes",
    "conversations",
    "containers",
    "evals",
    "organization",
    "projects",
    "cachedContents",
    "corpora",
    "tunedModels",
    "operations",
    "fileSearchStores",
    "generatedFiles",
];

/// Whether `method` on `path` (the provider's path; a query and empty segments, a
/// trailing slash among them, are ignored) is one of the endpoints every route serves.
pub fn stateless(method: &str, path: &str) -> bool {
    Segments::of(path).serves(method)
}

/// The longest tail a pattern has.
const TAIL_MAX: usize = 2;

/// A path read once from its end (this runs on every request): its last segments, how
/// many it has, and how far from the end the furthest stored collection lies.
struct Segments<'a> {
    last: [&'a str; TAIL_MAX],
    count: usize,
    /// Index from the end (0: the last segment) of the furthest stored collection.
    furthest_stored: Option<usize>,
}

impl<'a> Segments<'a> {
    fn of(path: &'a str) -> Segments<'a> {
        let path = path.split('?').next().unwrap_or(path);
        let mut out = Segments {
            last: [""; TAIL_MAX],
            count: 0,
            furthest_stored: None,
        };
        for (i, s) in path.rsplit('/').filter(|s| !s.is_empty()).enumerate() {
            if let Some(slot) = out.last.get_mut(i) {
                *slot = s;
            }
            if stored(s) {
                out.furthest_stored = Some(i);
            }
            out.count = i + 1;
        }
        out
    }

    fn serves(&self, method: &str) -> bool {
        STATELESS
            .iter()
            .any(|(m, tail)| *m == method && self.ends_with(tail))
    }

    /// The last segments match `tail`, and no segment before them is a stored collection.
    fn ends_with(&self, tail: &[&str]) -> bool {
        let k = tail.len();
        k <= self.count
            && tail
                .iter()
                .rev()
                .zip(self.last.iter())
                .all(|(t, s)| matches(s, t))
            && self.furthest_stored.is_none_or(|i| i < k)
    }
}

/// An endpoint that mints a Realtime client secret (an `ek_` key that works at the
/// provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mint {
    /// `…/realtime/client_secrets`: the lifetime is `expires_after`.
    ClientSecrets,
    /// The older `…/realtime/sessions` and `…/realtime/transcription_sessions`: the
    /// lifetime is in `client_secret`.
    Sessions,
}

/// Which mint `path` is, if any.
pub fn realtime_mint(path: &str) -> Option<Mint> {
    let segments = Segments::of(path);
    [
        ("client_secrets", Mint::ClientSecrets),
        ("sessions", Mint::Sessions),
        ("transcription_sessions", Mint::Sessions),
    ]
    .into_iter()
    .find_map(|(e, mint)| segments.ends_with(&["realtime", e]).then_some(mint))
}

/// A stored collection's name, in any case (a provider's router may ignore case).
fn stored(segment: &str) -> bool {
    STORED.iter().any(|c| c.eq_ignore_ascii_case(segment))
}

fn matches(segment: &str, pattern: &str) -> bool {
    match pattern.strip_prefix('*') {
        None => segment == pattern,
        Some("") => !stored(segment),
        Some(action) => segment
            .strip_suffix(action)
            .is_some_and(|model| !model.is_empty() && !model.contains(':')),
    }
}

#[cfg(test)]
mod tests {
    use super::stateless;

    #[test]
    fn every_pattern_fits_what_a_path_keeps() {
        assert!(super::STATELESS
            .iter()
            .all(|(_, tail)| (1..=super::TAIL_MAX).contains(&tail.len())));
    }

    #[test]
    fn generation_endpoints_are_served() {
        for (m, p) in [
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/chat/completions/"),
            ("POST", "/api/openai/v1/chat/completions?x=1"),
            ("POST", "/v1beta/openai/chat/completions"),
            ("POST", "/v1/responses"),
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/audio/transcriptions"),
            ("POST", "/v1/images/generations"),
            ("POST", "/v1/realtime/client_secrets"),
            ("GET", "/v1/realtime"),
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1beta/models/gemini-2.0-flash:generateContent"),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            ),
            (
                "POST",
                "/v1beta/models/text-embedding-004:batchEmbedContents",
            ),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/gpt-4o"),
            ("GET", "/v1beta/models/gemini-2.0-flash"),
        ] {
            assert!(stateless(m, p), "{m} {p}");
        }
    }

    #[test]
    fn realtime_mints_are_known() {
        use super::{realtime_mint, Mint};
        assert_eq!(
            realtime_mint("/v1/realtime/client_secrets/"),
            Some(Mint::ClientSecrets)
        );
        assert_eq!(
            realtime_mint("/v1/realtime/sessions?x=1"),
            Some(Mint::Sessions)
        );
        assert_eq!(
            realtime_mint("/v1/realtime/transcription_sessions"),
            Some(Mint::Sessions)
        );
        assert_eq!(realtime_mint("/v1/realtime"), None);
        assert_eq!(realtime_mint("/v1/chat/completions"), None);
    }

    #[test]
    fn stored_objects_are_not() {
        for (m, p) in [
            // Lists and reads of what another site stored under the shared key.
            ("GET", "/v1/files"),
            ("GET", "/v1/files/file-abc/content"),
            ("GET", "/v1/batches"),
            ("GET", "/v1/vector_stores"),
            ("POST", "/v1/vector_stores/vs_1/search"),
            ("GET", "/v1/responses/resp_1"),
            ("GET", "/v1/responses/resp_1/input_items"),
            ("GET", "/v1/chat/completions"),
            ("GET", "/v1/chat/completions/chatcmpl-1/messages"),
            ("GET", "/v1/conversations/conv_1/items"),
            ("GET", "/v1beta/batches/b1"),
            ("GET", "/v1beta/cachedContents"),
            ("GET", "/v1/messages/batches/msgbatch_1/results"),
            // Writes and deletions.
            ("POST", "/v1/files"),
            ("DELETE", "/v1/files/file-abc"),
            ("DELETE", "/v1/responses/resp_1"),
            ("POST", "/v1/responses/resp_1/cancel"),
            ("DELETE", "/v1/models/ft:gpt-4o:acme"),
            ("POST", "/v1/batches"),
            ("POST", "/v1/messages/batches"),
            ("POST", "/v1/fine_tuning/jobs"),
            ("POST", "/v1/threads/thread_1/messages"),
            ("POST", "/v1/assistants"),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:batchGenerateContent",
            ),
            ("POST", "/v1beta/tunedModels/mine:generateContent"),
            ("POST", "/v1beta/models/x:predictLongRunning"),
            ("GET", "/v1beta/operations/op1"),
            // A stateless name under a stored collection, and names that only end alike.
            ("POST", "/v1/files/x/chat/completions"),
            ("GET", "/v1/models/files"),
            ("POST", "/v1/Threads/thread_1/messages"),
            ("POST", "/v1/chat/completionsx"),
            ("POST", "/v1beta/models/:generateContent"),
            ("POST", "/v1beta/models/a:b:generateContent"),
            ("POST", "/v1beta/models"),
            ("PUT", "/v1/chat/completions"),
            ("POST", "/"),
        ] {
            assert!(!stateless(m, p), "{m} {p}");
        }
    }
}
