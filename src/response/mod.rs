//! What comes back from providers: SSE framing, token usage extraction, the checks
//! (egress, shape, size) and the watch that applies them to a response ([`watch`]).

pub mod egress;
pub mod model_name;
pub mod probe;
pub mod sse;
pub mod usage;
pub mod validate;
pub mod watch;
