//! Checks on what the client sent, before anything reaches an upstream:
//! framing and path hygiene, how the body is read and held back ([`plan`]), and JSON
//! body validation per route; the endpoints a route serves ([`endpoints`]); multipart uploads read as they pass ([`upload`]).

pub mod body;
pub mod disposition;
pub mod endpoints;
pub mod hygiene;
pub mod plan;
pub mod upload;
