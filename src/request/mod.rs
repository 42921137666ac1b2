//! Checks on what the client sent, before anything reaches an upstream:
//! framing and path hygiene, and JSON body validation per route.

pub mod body;
pub mod hygiene;
