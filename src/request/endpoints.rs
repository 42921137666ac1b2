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
    let path = path.split('?').next().unwrap_or(path);
    STATELESS
        .iter()
        .any(|(m, tail)| *m == method && ends_with(path, tail))
}

/// Whether `path`'s last segments match `tail` and none before them is a stored
/// collection (read from the end, without allocating: this runs on every request).
fn ends_with(path: &str, tail: &[&str]) -> bool {
    let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
    tail.iter()
        .rev()
        .all(|t| segments.next().is_some_and(|s| matches(s, t)))
        && !segments.any(stored)
}

/// A stored collection's name, in any case (a provider's router may ignore case).
fn stored(segment: &str) -> bool {
    STORED.iter().any(|c| c.eq_ignore_ascii_case(segment))
}

/// The endpoints that mint a Realtime client secret (an `ek_` key that works at the
/// provider): `client_secrets`, and the older `sessions` and `transcription_sessions`.
pub fn realtime_mint(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    ["client_secrets", "sessions", "transcription_sessions"]
        .into_iter()
        .find(|e| ends_with(path, &["realtime", e]))
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
        use super::realtime_mint;
        assert_eq!(
            realtime_mint("/v1/realtime/client_secrets/"),
            Some("client_secrets")
        );
        assert_eq!(realtime_mint("/v1/realtime/sessions?x=1"), Some("sessions"));
        assert_eq!(
            realtime_mint("/v1/realtime/transcription_sessions"),
            Some("transcription_sessions")
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
