//! Token usage as providers report it, in JSON bodies and stream events: every kind of
//! token they bill (SPEC §8.3).
//!
//! Shapes: OpenAI `usage.{prompt,completion}_tokens` with `prompt_tokens_details.
//! cached_tokens` and `completion_tokens_details.reasoning_tokens` (also in the final
//! stream chunk when `stream_options.include_usage` is set); OpenAI Responses and
//! Realtime `usage.{input,output}_tokens` with `input_token(s)_details.cached_tokens` and
//! `output_token(s)_details.reasoning_tokens`; Anthropic `usage.{input,output}_tokens`
//! with `cache_read_input_tokens` and `cache_creation_input_tokens`, in bodies and in
//! `message_start.message.usage` / `message_delta.usage` (cumulative); Gemini
//! `usageMetadata.{promptTokenCount, candidatesTokenCount, cachedContentTokenCount,
//! thoughtsTokenCount}`. The conventions differ: OpenAI's and Gemini's input counts
//! include the cached tokens, Anthropic's exclude cache reads and writes; OpenAI's output
//! includes reasoning, Gemini's candidates exclude thoughts. [`Report`] keeps each count
//! by where it came from and [`Report::usage`] makes them one [`Usage`]. Reports are merged
//! by maximum, so cumulative counts and repeated reports never double-charge.

use serde_json::Value;

/// Tokens one request cost, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token: uncached, cache reads and cache writes.
    pub input: u64,
    /// Every output token, reasoning included.
    pub output: u64,
    /// Of `input`, the tokens read from the provider's cache.
    pub cached: u64,
    /// Of `input`, the tokens written to the provider's cache (Anthropic).
    pub cache_write: u64,
    /// Of `output`, reasoning ("thinking") tokens.
    pub reasoning: u64,
    /// True when no provider report was seen and the numbers are byte-length estimates.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// Estimate from byte counts (about four bytes a token) when the provider said nothing.
    pub fn estimate(request_bytes: usize, response_bytes: usize) -> Usage {
        Usage {
            input: request_bytes.div_ceil(4) as u64,
            output: response_bytes.div_ceil(4) as u64,
            estimated: true,
            ..Usage::default()
        }
    }

    /// Another report of the same answer (stream events, repeated members): each count
    /// is the larger of the two.
    fn merge(&mut self, next: Usage) {
        self.input = self.input.max(next.input);
        self.output = self.output.max(next.output);
        self.cached = self.cached.max(next.cached);
        self.cache_write = self.cache_write.max(next.cache_write);
        self.reasoning = self.reasoning.max(next.reasoning);
    }

    /// `self` plus `other` (separate answers, e.g. a Realtime session's responses).
    pub fn add(&mut self, other: Usage) {
        // Counts come from the provider: saturating, never wrapping (or, in a debug
        // build, panicking the worker) on absurd ones.
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cached = self.cached.saturating_add(other.cached);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
        self.estimated |= other.estimated;
    }
}

/// Where one count of a usage object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Input,
    Output,
    /// Cache reads counted inside `Input` (OpenAI details, Gemini).
    CachedWithin,
    /// Cache reads on top of `Input` (Anthropic).
    CacheReadBeside,
    /// Cache writes on top of `Input` (Anthropic).
    CacheWriteBeside,
    /// Reasoning counted inside `Output` (OpenAI details).
    ReasoningWithin,
    /// Reasoning on top of `Output` (Gemini thoughts).
    ReasoningBeside,
}

/// A count member of a usage object.
pub fn field_of(key: &str) -> Option<Field> {
    Some(match key {
        "prompt_tokens" | "input_tokens" | "promptTokenCount" => Field::Input,
        "completion_tokens" | "output_tokens" | "candidatesTokenCount" => Field::Output,
        "cachedContentTokenCount" => Field::CachedWithin,
        "cache_read_input_tokens" => Field::CacheReadBeside,
        "cache_creation_input_tokens" => Field::CacheWriteBeside,
        "thoughtsTokenCount" => Field::ReasoningBeside,
        _ => return None,
    })
}

/// A details member of a usage object, and the one count keygate reads in it.
pub fn details_of(key: &str) -> Option<(&'static str, Field)> {
    match key {
        "prompt_tokens_details" | "input_tokens_details" | "input_token_details" => {
            Some(("cached_tokens", Field::CachedWithin))
        }
        "completion_tokens_details" | "output_tokens_details" | "output_token_details" => {
            Some(("reasoning_tokens", Field::ReasoningWithin))
        }
        _ => None,
    }
}

/// The counts of one usage object, by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report([Option<u64>; 7]);

impl Report {
    pub fn set(&mut self, f: Field, n: u64) {
        self.0[f as usize] = Some(n);
    }

    fn get(&self, f: Field) -> u64 {
        self.0[f as usize].unwrap_or(0)
    }

    /// Whether it reports tokens at all (input or output).
    pub fn is_report(&self) -> bool {
        self.0[Field::Input as usize].is_some() || self.0[Field::Output as usize].is_some()
    }

    /// Keep what `other` says too (two objects describing one answer).
    pub fn merge(&mut self, other: Report) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = match (*a, b) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
        }
    }

    /// The counts in one convention: input with every cache token, output with reasoning.
    pub fn usage(&self) -> Option<Usage> {
        if !self.is_report() {
            return None;
        }
        let read_beside = self.get(Field::CacheReadBeside);
        let write = self.get(Field::CacheWriteBeside);
        let thoughts = self.get(Field::ReasoningBeside);
        Some(Usage {
            input: self
                .get(Field::Input)
                .saturating_add(read_beside)
                .saturating_add(write),
            output: self.get(Field::Output).saturating_add(thoughts),
            cached: self.get(Field::CachedWithin).max(read_beside),
            cache_write: write,
            reasoning: self.get(Field::ReasoningWithin).max(thoughts),
            estimated: false,
        })
    }
}

fn report_of(u: &Value) -> Report {
    let mut r = Report::default();
    let Some(obj) = u.as_object() else {
        return r;
    };
    for (k, v) in obj {
        if let (Some(f), Some(n)) = (field_of(k), v.as_u64()) {
            r.set(f, n);
        } else if let Some((inner, f)) = details_of(k) {
            if let Some(n) = v.get(inner).and_then(Value::as_u64) {
                r.set(f, n);
            }
        }
    }
    r
}

/// Find a usage report in one JSON object (a body or one stream event).
pub fn find(v: &Value) -> Option<Usage> {
    let mut found: Option<Usage> = None;
    for u in [
        v.get("usage"),
        v.get("message").and_then(|m| m.get("usage")),
        v.get("response").and_then(|r| r.get("usage")),
        v.get("usageMetadata"),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(next) = report_of(u).usage() {
            merge(&mut found, next);
        }
    }
    found
}

/// Merge a later report into an earlier one.
pub fn merge(acc: &mut Option<Usage>, next: Usage) {
    acc.get_or_insert_with(Usage::default).merge(next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_anthropic_gemini_shapes() {
        let o = json!({"usage": {"prompt_tokens": 12, "completion_tokens": 9}});
        assert_eq!(
            find(&o),
            Some(Usage {
                input: 12,
                output: 9,
                ..Usage::default()
            })
        );
        let a = json!({"type": "message", "usage": {"input_tokens": 5, "output_tokens": 7}});
        assert_eq!(find(&a).unwrap().total(), 12);
        let g = json!({"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}});
        assert_eq!(find(&g).unwrap().total(), 7);
        assert_eq!(find(&json!({"choices": []})), None);
        assert_eq!(find(&json!({"usage": null})), None);
    }

    #[test]
    fn anthropic_stream_is_merged_not_summed() {
        let mut acc = None;
        for ev in [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 5}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 9}}),
        ] {
            if let Some(u) = find(&ev) {
                merge(&mut acc, u);
            }
        }
        assert_eq!(
            acc.unwrap(),
            Usage {
                input: 12,
                output: 9,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn every_billed_kind_is_counted_in_one_convention() {
        // OpenAI chat: cached inside prompt, reasoning inside completion.
        let o = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 80}, "completion_tokens_details": {"reasoning_tokens": 30}}});
        let u = find(&o).unwrap();
        assert_eq!(
            (u.input, u.cached, u.output, u.reasoning, u.cache_write),
            (100, 80, 50, 30, 0)
        );
        // Anthropic: cache reads and writes beside input.
        let a = json!({"usage": {"input_tokens": 5, "output_tokens": 7,
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}});
        let u = find(&a).unwrap();
        assert_eq!(
            (u.input, u.cached, u.cache_write, u.output),
            (125, 100, 20, 7)
        );
        // Gemini: cached inside prompt, thoughts beside candidates.
        let g = json!({"usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 4,
            "cachedContentTokenCount": 10, "thoughtsTokenCount": 12}});
        let u = find(&g).unwrap();
        assert_eq!((u.input, u.cached, u.output, u.reasoning), (30, 10, 16, 12));
        // Realtime's `response.done` names its details in the singular.
        let r = json!({"type": "response.done", "response": {"usage": {"input_tokens": 40, "output_tokens": 9,
            "input_token_details": {"cached_tokens": 32}, "output_token_details": {"text_tokens": 9}}}});
        let u = find(&r).unwrap();
        assert_eq!((u.input, u.cached, u.output), (40, 32, 9));
    }

    #[test]
    fn an_anthropic_stream_with_cache_tokens_is_merged() {
        let mut acc = None;
        for ev in [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1,
                "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 50}}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 9}}),
        ] {
            if let Some(u) = find(&ev) {
                merge(&mut acc, u);
            }
        }
        let u = acc.unwrap();
        assert_eq!(
            (u.input, u.cached, u.cache_write, u.output),
            (1062, 1000, 50, 9)
        );
    }

    /// A provider's absurd counts saturate: they wrapped to 0 in a release build and
    /// panicked the worker in a debug one.
    #[test]
    fn absurd_counts_saturate() {
        let v = json!({"type": "message", "content": [], "usage": {"input_tokens": u64::MAX,
            "cache_read_input_tokens": 1, "output_tokens": 1}});
        let u = find(&v).unwrap();
        assert_eq!(u.input, u64::MAX);
        let mut total = u;
        total.add(u);
        assert_eq!(total.input, u64::MAX);
    }

    proptest::proptest! {
        /// Any counts in each provider's documented shape: the tree finder and the probe
        /// (the hot path's reader) agree, and every billed token is in the total.
        #[test]
        fn documented_shapes_count_every_billed_token(
            input in 0u64..1_000_000, output in 0u64..1_000_000,
            cached in 0u64..1_000_000, extra in 0u64..1_000_000, shape in 0usize..4,
        ) {
            let cached_in = cached.min(input);
            let reasoning_in = extra.min(output);
            let (v, want) = match shape {
                0 => (json!({"choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output,
                    "prompt_tokens_details": {"cached_tokens": cached_in},
                    "completion_tokens_details": {"reasoning_tokens": reasoning_in}}}),
                    (input, output, cached_in, reasoning_in)),
                1 => (json!({"type": "message", "content": [], "usage": {"input_tokens": input, "output_tokens": output,
                    "cache_read_input_tokens": cached, "cache_creation_input_tokens": extra}}),
                    (input + cached + extra, output, cached, 0)),
                2 => (json!({"candidates": [], "usageMetadata": {"promptTokenCount": input, "candidatesTokenCount": output,
                    "cachedContentTokenCount": cached_in, "thoughtsTokenCount": extra}}),
                    (input, output + extra, cached_in, extra)),
                _ => (json!({"object": "response", "output": [], "usage": {"input_tokens": input, "output_tokens": output,
                    "input_tokens_details": {"cached_tokens": cached_in},
                    "output_tokens_details": {"reasoning_tokens": reasoning_in}}}),
                    (input, output, cached_in, reasoning_in)),
            };
            let u = find(&v).unwrap();
            proptest::prop_assert_eq!((u.input, u.output, u.cached, u.reasoning), want);
            let probe = crate::response::egress::probe(v.to_string().as_bytes()).unwrap();
            proptest::prop_assert_eq!(probe.usage(), Some(u));
        }
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(
            Usage::estimate(10, 3),
            Usage {
                input: 3,
                output: 1,
                estimated: true,
                ..Usage::default()
            }
        );
    }
}
