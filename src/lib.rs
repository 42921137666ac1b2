//! keygate: an edge gateway, built on Pingora, that keeps AI provider API keys off
//! the machines of the sites and apps that use them.
//!
//! The request's path is the architecture; each stage is a module:
//! [`gateway`] (the Pingora hooks) → [`request`] (hygiene, body checks) →
//! [`auth`] (signatures, nonces, bearer and legacy keys) → [`upstream`] (peer,
//! credential) → response. [`config`] turns YAML into the validated [`config::Runtime`]
//! every request runs on; [`reload`] swaps it on SIGHUP. [`fleet`] shares nonces and
//! limits between nodes through Redis when `fleet.redis` is set.

pub mod alloc;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub mod error;
pub mod fleet;
pub mod fuzzing;
pub mod gateway;
pub mod json;
pub mod limits;
pub mod mock_provider;
pub mod pii;
pub mod realtime;
pub mod register;
pub mod reload;
pub mod request;
pub mod response;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
