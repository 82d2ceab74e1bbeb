//! Sans-IO SIP core of trustring: message parsing and serialization, the RFC 3261 §17
//! transaction state machines, digest authentication, the registrar, and the forking proxy
//! (§16).
//!
//! Nothing here performs IO or reads a clock: every entry point takes the current `Instant`
//! and bytes, and returns messages to send and timers to arm (the design of `quinn-proto` and
//! `str0m`). The tokio layer in `sip-net` drives it.

pub mod auth;
pub mod dialog;
pub mod message;
pub mod proxy;
pub mod transaction;
