//! Token usage as providers report it, in JSON bodies and stream events.
//!
//! Shapes: OpenAI `usage.{prompt,completion}_tokens` (also the final stream chunk when
//! `stream_options.include_usage` is set), OpenAI Responses and Anthropic
//! `usage.{input,output}_tokens`, Anthropic `message_start.message.usage` and
//! `message_delta.usage` (cumulative), Gemini `usageMetadata.{promptTokenCount,
//! candidatesTokenCount}`. Reports are merged by maximum, so cumulative counts and
//! repeated reports never double-charge.

use serde_json::Value;

/// Tokens one request cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
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
        }
    }
}

fn num(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

/// Find a usage report in one JSON object (a body or one stream event).
pub fn find(v: &Value) -> Option<Usage> {
    let mut found: Option<Usage> = None;
    let mut merge = |input: Option<u64>, output: Option<u64>| {
        if input.is_some() || output.is_some() {
            let u = found.get_or_insert_with(Usage::default);
            u.input = u.input.max(input.unwrap_or(0));
            u.output = u.output.max(output.unwrap_or(0));
        }
    };
    for u in [
        v.get("usage"),
        v.get("message").and_then(|m| m.get("usage")),
        v.get("response").and_then(|r| r.get("usage")),
    ]
    .into_iter()
    .flatten()
    {
        merge(
            num(u, "prompt_tokens").or(num(u, "input_tokens")),
            num(u, "completion_tokens").or(num(u, "output_tokens")),
        );
    }
    if let Some(m) = v.get("usageMetadata") {
        merge(num(m, "promptTokenCount"), num(m, "candidatesTokenCount"));
    }
    found
}

/// Merge a later report into an earlier one.
pub fn merge(acc: &mut Option<Usage>, next: Usage) {
    let u = acc.get_or_insert_with(Usage::default);
    u.input = u.input.max(next.input);
    u.output = u.output.max(next.output);
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
                estimated: false
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
                estimated: false
            }
        );
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(
            Usage::estimate(10, 3),
            Usage {
                input: 3,
                output: 1,
                estimated: true
            }
        );
    }
}
