//! One span, written as the OpenTelemetry protocol's `Span` message (trace.proto of
//! `opentelemetry-proto`) straight from what the request recorded, with prost's wire
//! primitives: no message struct, no owned string per attribute, no second pass to size
//! nested messages. The bytes decode to the same `Span` prost would write (the tests decode
//! them with `opentelemetry-proto`'s own types and compare; zero timestamps, which prost
//! leaves out, are written).
//!
//! Why not build the `Span` struct and let prost encode it: at `sample_ratio: 1.0` that
//! struct cost each request about thirty allocations and frees (ids, names, every
//! attribute's key and value) plus prost's sizing of each nested message, a measurable part
//! of tracing's CPU budget (SPEC §8.7, ≤ 10 % per request).

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

/// Field numbers, from opentelemetry-proto's trace.proto and common.proto.
mod field {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START: u32 = 7;
    pub const END: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
    /// `KeyValue`.
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    /// `AnyValue`'s `string_value` and `int_value`.
    pub const STRING_VALUE: u32 = 1;
    pub const INT_VALUE: u32 = 3;
    /// `Status`.
    pub const MESSAGE: u32 = 2;
    pub const CODE: u32 = 3;
}

/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// An attribute's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// An attribute, or nothing (what the request did not have).
pub type Attribute<'a> = Option<(&'a str, Value<'a>)>;

/// One span's fields, borrowed.
pub struct SpanOut<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// W3C trace flags (1: sampled).
    pub flags: u32,
    /// The name, as parts written one after the other.
    pub name: &'a [&'a str],
    /// `Span.SpanKind`.
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: &'a [Attribute<'a>],
    /// An error status with this message (the status stays unset otherwise).
    pub error: Option<&'a str>,
}

fn delimited(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn varint_len(tag: u32, v: u64) -> usize {
    key_len(tag) + encoded_len_varint(v)
}

fn varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

fn bytes(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    delimited(tag, b.len(), buf);
    buf.extend_from_slice(b);
}

fn fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// The length of an `AnyValue` holding `v`.
fn any_value_len(v: Value<'_>) -> usize {
    match v {
        Value::Str(s) => delimited_len(field::STRING_VALUE, s.len()),
        Value::Int(i) => varint_len(field::INT_VALUE, i as u64),
    }
}

/// The length of a `KeyValue`.
fn key_value_len(key: &str, v: Value<'_>) -> usize {
    delimited_len(field::KEY, key.len()) + delimited_len(field::VALUE, any_value_len(v))
}

impl SpanOut<'_> {
    /// Append the span's message (its fields, without a length prefix) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        bytes(field::TRACE_ID, &self.trace_id, buf);
        bytes(field::SPAN_ID, &self.span_id, buf);
        if let Some(p) = &self.parent {
            bytes(field::PARENT_SPAN_ID, p, buf);
        }
        if self.flags != 0 {
            encode_key(field::FLAGS, WireType::ThirtyTwoBit, buf);
            buf.extend_from_slice(&self.flags.to_le_bytes());
        }
        delimited(field::NAME, self.name.iter().map(|p| p.len()).sum(), buf);
        for part in self.name {
            buf.extend_from_slice(part.as_bytes());
        }
        if self.kind != 0 {
            varint(field::KIND, self.kind as u64, buf);
        }
        fixed64(field::START, self.start_ns, buf);
        fixed64(field::END, self.end_ns, buf);
        for &(key, value) in self.attributes.iter().flatten() {
            delimited(field::ATTRIBUTES, key_value_len(key, value), buf);
            bytes(field::KEY, key.as_bytes(), buf);
            delimited(field::VALUE, any_value_len(value), buf);
            match value {
                Value::Str(s) => bytes(field::STRING_VALUE, s.as_bytes(), buf),
                Value::Int(i) => varint(field::INT_VALUE, i as u64, buf),
            }
        }
        if let Some(message) = self.error {
            let len = if message.is_empty() {
                0
            } else {
                delimited_len(field::MESSAGE, message.len())
            } + varint_len(field::CODE, STATUS_ERROR);
            delimited(field::STATUS, len, buf);
            if !message.is_empty() {
                bytes(field::MESSAGE, message.as_bytes(), buf);
            }
            varint(field::CODE, STATUS_ERROR, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
    use prost::Message;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    /// What [`SpanOut::encode`] writes decodes, with opentelemetry-proto's own types, to
    /// the `Span` it stands for: every field, negative and large integers, no parent, an
    /// error status, a name in parts.
    #[test]
    fn encoded_spans_decode_to_the_spans_they_stand_for() {
        let attributes = [
            Some(("http.response.status_code", Value::Int(200))),
            None,
            Some(("keygate.site", Value::Str("alpha"))),
            Some(("gen_ai.usage.input_tokens", Value::Int(1 << 40))),
            Some(("negative", Value::Int(-3))),
            Some(("zero", Value::Int(0))),
            Some(("empty", Value::Str(""))),
        ];
        for (parent, error, kind) in [
            (Some([7u8; 8]), None, span::SpanKind::Server),
            (None, Some("HTTP 502"), span::SpanKind::Client),
            (Some([1u8; 8]), Some(""), span::SpanKind::Unspecified),
        ] {
            let out = SpanOut {
                trace_id: [0xab; 16],
                span_id: [3; 8],
                parent,
                flags: 1,
                name: &["POST", " ", "/openai"],
                kind: kind as i32,
                start_ns: 1_700_000_000_000_000_000,
                end_ns: 1_700_000_000_123_456_789,
                attributes: &attributes,
                error,
            };
            let mut buf = Vec::new();
            out.encode(&mut buf);
            let expected = Span {
                trace_id: vec![0xab; 16],
                span_id: vec![3; 8],
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                flags: 1,
                name: "POST /openai".into(),
                kind: kind as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_123_456_789,
                attributes: vec![
                    kv("http.response.status_code", any_value::Value::IntValue(200)),
                    kv(
                        "keygate.site",
                        any_value::Value::StringValue("alpha".into()),
                    ),
                    kv(
                        "gen_ai.usage.input_tokens",
                        any_value::Value::IntValue(1 << 40),
                    ),
                    kv("negative", any_value::Value::IntValue(-3)),
                    kv("zero", any_value::Value::IntValue(0)),
                    kv("empty", any_value::Value::StringValue(String::new())),
                ],
                status: error.map(|m| Status {
                    message: m.into(),
                    code: status::StatusCode::Error as i32,
                }),
                ..Span::default()
            };
            assert_eq!(Span::decode(buf.as_slice()).unwrap(), expected);
            assert_eq!(buf.len(), expected.encoded_len());
        }
    }
}
