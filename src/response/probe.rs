//! What keygate reads in a provider JSON body besides its secrets: which top-level
//! members are arrays (the endpoint's shape), `type`/`object`, and the usage numbers.
//! It is read during the one strict walk over the body that the egress check makes
//! ([`crate::response::egress::check_json`]): the walk tells a [`Reader`] the role of
//! each value it enters, and the reader keeps the few things it wants. No JSON tree is
//! built and the body is parsed once. Every part is tolerant: an unexpected type for a
//! member makes that member "other", never an error; a later duplicate member wins, as
//! in a client's parser.

use super::usage::{self, Field, Report, Usage};

/// What a member is, as far as the shape check cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Absent,
    Array,
    Other,
}

/// A string member (`type`, `object`), or nothing if it is not a string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text(pub Option<String>);

/// The members of a provider body keygate looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Probe {
    pub choices: Kind,
    pub data: Kind,
    pub output: Kind,
    pub content: Kind,
    pub candidates: Kind,
    /// Gemini's `promptFeedback`.
    pub prompt_feedback: Kind,
    pub type_: Text,
    pub object: Text,
    /// The usage reported (merged across the places providers put it).
    usage: Option<Usage>,
}

impl Probe {
    /// The usage reported, if any (merged across the places providers put it:
    /// `usage`, `message.usage`, `response.usage`, `usageMetadata`).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// What the value the walk enters next is to the probe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Nothing keygate reads.
    #[default]
    None,
    /// The body itself (it must be an object).
    Body,
    /// A top-level member whose kind is part of the shape.
    Shape(ShapeMember),
    /// `type` (`false`) or `object` (`true`) at the top level.
    Label(bool),
    /// An object holding a usage object under `usage` (`message`, `response`).
    Holder,
    /// A usage object.
    Usage,
    /// A details object of a usage object: the member read in it, and where it goes.
    Details(&'static str, Field),
    /// A count.
    Count(Field),
}

/// The top-level members whose kind the shape check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeMember {
    Choices,
    Data,
    Output,
    Content,
    Candidates,
    PromptFeedback,
}

impl Role {
    /// The role of the member `key` of an object read in this role.
    pub fn member(self, key: &str) -> Role {
        match self {
            Role::Body => match key {
                "choices" => Role::Shape(ShapeMember::Choices),
                "data" => Role::Shape(ShapeMember::Data),
                "output" => Role::Shape(ShapeMember::Output),
                "content" => Role::Shape(ShapeMember::Content),
                "candidates" => Role::Shape(ShapeMember::Candidates),
                "promptFeedback" => Role::Shape(ShapeMember::PromptFeedback),
                "type" => Role::Label(false),
                "object" => Role::Label(true),
                "usage" | "usageMetadata" => Role::Usage,
                "message" | "response" => Role::Holder,
                _ => Role::None,
            },
            Role::Holder if key == "usage" => Role::Usage,
            Role::Usage => match (usage::field_of(key), usage::details_of(key)) {
                (Some(f), _) => Role::Count(f),
                (None, Some((inner, f))) => Role::Details(inner, f),
                (None, None) => Role::None,
            },
            Role::Details(inner, f) if key == inner => Role::Count(f),
            _ => Role::None,
        }
    }
}

/// A value as the probe sees it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'v> {
    Str(&'v str),
    /// A non-negative integer.
    Count(u64),
    Array,
    Object,
    /// Anything else (`null`, booleans, negative or fractional numbers).
    Other,
}

/// Collects a [`Probe`] from the walk's events.
#[derive(Debug, Default)]
pub struct Reader {
    probe: Probe,
    /// The usage object being read.
    report: Report,
    /// The body was an object.
    object: bool,
}

impl Reader {
    /// A value in `role` is entered (for an array or object, before its items).
    pub fn enter(&mut self, role: Role, v: Value) {
        let p = &mut self.probe;
        match (role, v) {
            (Role::Body, Value::Object) => self.object = true,
            (Role::Shape(m), v) => {
                let kind = match v {
                    Value::Array => Kind::Array,
                    _ => Kind::Other,
                };
                *match m {
                    ShapeMember::Choices => &mut p.choices,
                    ShapeMember::Data => &mut p.data,
                    ShapeMember::Output => &mut p.output,
                    ShapeMember::Content => &mut p.content,
                    ShapeMember::Candidates => &mut p.candidates,
                    ShapeMember::PromptFeedback => &mut p.prompt_feedback,
                } = kind;
            }
            (Role::Label(object), v) => {
                let text = match v {
                    Value::Str(s) => Text(Some(s.to_string())),
                    _ => Text(None),
                };
                *if object { &mut p.object } else { &mut p.type_ } = text;
            }
            (Role::Usage, Value::Object) => self.report = Report::default(),
            (Role::Count(f), Value::Count(n)) => self.report.set(f, n),
            _ => {}
        }
    }

    /// An object read in `role` has ended.
    pub fn leave_object(&mut self, role: Role) {
        if role == Role::Usage {
            if let Some(u) = std::mem::take(&mut self.report).usage() {
                usage::merge(&mut self.probe.usage, u);
            }
        }
    }

    /// What was read; `None` when the body was not a JSON object.
    pub fn finish(self) -> Option<Probe> {
        self.object.then_some(self.probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::egress::probe as parse;
    use serde_json::json;

    #[test]
    fn probe_agrees_with_the_tree_based_usage_finder() {
        for v in [
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}}),
            json!({"type": "message", "content": [], "usage": {"input_tokens": 5, "output_tokens": 7}}),
            json!({"candidates": [], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}),
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"data": [1, 2], "usage": null, "message": "a string", "object": 7}),
            json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 80, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 30}}}),
            json!({"type": "message", "content": [], "usage": {"input_tokens": 5, "output_tokens": 7,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}),
            json!({"candidates": [], "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 4,
                "cachedContentTokenCount": 10, "thoughtsTokenCount": 12}}),
            json!({"object": "response", "output": [], "usage": {"input_tokens": 9, "output_tokens": 3,
                "input_tokens_details": {"cached_tokens": 4}, "output_tokens_details": {"reasoning_tokens": 2}}}),
            json!({"usage": {"prompt_tokens_details": {"cached_tokens": "x"}, "prompt_tokens": 1}}),
        ] {
            let p = parse(v.to_string().as_bytes()).unwrap();
            assert_eq!(p.usage(), super::super::usage::find(&v), "{v}");
        }
    }

    #[test]
    fn shapes_and_types() {
        let p = parse(br#"{"choices":[{"x":1}],"type":"message","object":{"a":1}}"#).unwrap();
        assert_eq!((p.choices, p.data), (Kind::Array, Kind::Absent));
        assert_eq!(p.type_.0.as_deref(), Some("message"));
        assert_eq!(p.object.0, None);
        assert!(parse(b"[1,2]").is_none());
        assert!(parse(br#"{"a":"#).is_none());
        assert!(parse(b"  {}").is_some());
        // A member name is read decoded, as a client's parser reads it.
        let p = parse(br#"{"\u0063hoices":[],"us\u0061ge":{"prompt_tokens":3}}"#).unwrap();
        assert_eq!(p.choices, Kind::Array);
        assert_eq!(p.usage().map(|u| u.input), Some(3));
        // A later duplicate wins for the shape; usage reports merge by maximum.
        let p = parse(br#"{"choices":[],"choices":{},"usage":{"prompt_tokens":3},"usage":{"prompt_tokens":2}}"#)
            .unwrap();
        assert_eq!(p.choices, Kind::Other);
        assert_eq!(p.usage().map(|u| u.input), Some(3));
    }

    /// The probe as a JSON tree says it: the reference the walk is held to.
    fn from_tree(v: &serde_json::Value) -> Option<Probe> {
        let o = v.as_object()?;
        let kind = |k: &str| match o.get(k) {
            None => Kind::Absent,
            Some(x) if x.is_array() => Kind::Array,
            Some(_) => Kind::Other,
        };
        let text = |k: &str| Text(o.get(k).and_then(|x| x.as_str()).map(str::to_string));
        Some(Probe {
            choices: kind("choices"),
            data: kind("data"),
            output: kind("output"),
            content: kind("content"),
            candidates: kind("candidates"),
            prompt_feedback: kind("promptFeedback"),
            type_: text("type"),
            object: text("object"),
            usage: super::super::usage::find(v),
        })
    }

    /// JSON values whose members are often the ones the probe reads.
    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value as V;
        let key = prop_oneof![
            Just("choices"),
            Just("data"),
            Just("output"),
            Just("content"),
            Just("candidates"),
            Just("promptFeedback"),
            Just("type"),
            Just("object"),
            Just("usage"),
            Just("usageMetadata"),
            Just("message"),
            Just("response"),
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("input_tokens"),
            Just("output_tokens"),
            Just("promptTokenCount"),
            Just("thoughtsTokenCount"),
            Just("cache_read_input_tokens"),
            Just("prompt_tokens_details"),
            Just("completion_tokens_details"),
            Just("cached_tokens"),
            Just("reasoning_tokens"),
            Just("id"),
            Just("x\\u0063"),
        ]
        .prop_map(str::to_string);
        let leaf = prop_oneof![
            Just(V::Null),
            any::<bool>().prop_map(V::Bool),
            (0u64..1000).prop_map(V::from),
            (-5i64..0).prop_map(V::from),
            Just(V::from(1.5)),
            prop_oneof![Just("message"), Just("response"), Just("text")]
                .prop_map(|s| V::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(V::Array),
                proptest::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|m| V::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the body, the walk reads what the tree says: shape members, labels
        /// and usage (a tree's keys are unique; with duplicates the walk keeps the last,
        /// like a client, and merges every usage report by maximum).
        #[test]
        fn the_walk_reads_what_the_tree_says(v in value()) {
            let text = v.to_string();
            proptest::prop_assert_eq!(parse(text.as_bytes()), from_tree(&v), "{}", text);
        }
    }
}
