//! What comes back from providers: SSE framing and token usage extraction.

pub mod egress;
pub mod probe;
pub mod sse;
pub mod usage;
pub mod validate;
