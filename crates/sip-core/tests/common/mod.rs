//! The harness shared by the sip-core integration tests: the simulated-time driver of the
//! Sans-IO [`Proxy`](sip_core::proxy::Proxy) ([`sim`]), the directory entries it is given
//! ([`setup`]), the messages the tests play ([`msg`]) and digest answers ([`digest`]).
//! Nothing here touches a socket or a clock (STYLE habit 3).
// Each test binary compiles this module and uses a part of it: the rest is dead there.
#![allow(dead_code, unreachable_pub)]

pub mod digest;
pub mod msg;
pub mod setup;
pub mod sim;

use std::net::SocketAddr;

/// The proxy's UDP (and default) address.
pub const PROXY: &str = "127.0.0.1:5060";
/// A caller from another domain.
pub const CALLER: &str = "127.0.0.1:6000";
/// The domain the proxy serves, also the digest realm.
pub const REALM: &str = "localhost";

/// `s` as a socket address.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}
