//! What keygate tells operators: the audit log (SPEC §6).

pub mod audit;
