//! What keygate tells operators: metrics (SPEC §5), the audit log (SPEC §6), and the
//! admin endpoints that serve them.

pub mod admin;
pub mod audit;
pub mod logger;
pub mod metrics;
pub mod otlp;
mod span;
pub mod trace;
