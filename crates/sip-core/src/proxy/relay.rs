//! No relay, no loops (R30, SECURITY threat 14).
//!
//! An in-dialog request (To tag) is forwarded to wherever its Request-URI or Route says, so
//! a proxy that forwards every such request is an open relay: anyone can make it send any
//! request to any address, from an address other servers (the gateway) trust. We forward
//! in-dialog requests only along a route we record-routed ourselves:
//!
//! - our Record-Route URI carries `;rr=TAG`, where TAG is the first 8 bytes (hex) of
//!   `HMAC-SHA-256(route key, Call-ID)`; a dialog's in-dialog requests carry it back in
//!   their top Route (RFC 3261 §16.12, loose routing §16.4);
//! - an in-dialog request whose top Route is not ours with the right tag for its Call-ID is
//!   refused with one stateless `403` (no transaction, no retransmission) and reaches
//!   nobody; an ACK is dropped.
//!
//! The key is the driver's (persisted in the data directory, so dialogs outlive a
//! restart). A participant of a dialog knows its tag and can still address that dialog's
//! requests freely; what it cannot do is mint tags for other Call-IDs.
//!
//! Loops (§16.3 step 4): a request whose Via already holds our own address has been here
//! and is answered `482`; and our own addresses and unspecified addresses (`0.0.0.0`) are
//! never a next hop, so a Request-URI naming the server cannot make it talk to itself.

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Proxy;
use crate::message::{HeaderName, NameAddr, Request};

/// The Record-Route URI parameter that carries the dialog tag.
pub(crate) const RR_PARAM: &str = "rr";

/// Computes and checks the tags of our Record-Route entries.
#[derive(Clone)]
pub(crate) struct RouteTags {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for RouteTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteTags")
    }
}

impl RouteTags {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        // Padded to the block size: HMAC keyed with `key` (RFC 2104 §2), infallibly.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new(&block.into()),
        }
    }

    /// The tag of the dialog(s) of `call_id`.
    pub(crate) fn tag(&self, call_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"trustring record-route v1\0");
        mac.update(call_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// Whether `tag` is the tag of `call_id` (constant time).
    pub(crate) fn check(&self, call_id: &str, tag: &str) -> bool {
        bool::from(self.tag(call_id).as_bytes().ct_eq(tag.as_bytes()))
    }
}

impl Proxy {
    /// Whether in-dialog request `req` follows a route we record-routed: one of the Route
    /// entries naming us at its top carries the right tag for its Call-ID.
    pub(crate) fn follows_our_route(&self, req: &Request) -> bool {
        for value in req.headers.get_all(&HeaderName::Route) {
            let Ok(route) = NameAddr::parse(value) else {
                return false;
            };
            if !self.is_our_uri(&route.uri) {
                return false;
            }
            if route
                .uri
                .param(RR_PARAM)
                .flatten()
                .is_some_and(|t| self.route_tags.check(req.call_id(), t))
            {
                return true;
            }
        }
        false
    }

    /// Whether `req` has been through this server already (a Via below the top one names
    /// our address): a loop.
    pub(crate) fn is_looping(&self, req: &Request) -> bool {
        req.headers.get_all(&HeaderName::Via).skip(1).any(|v| {
            crate::message::Via::parse(v).is_ok_and(|via| {
                let port = via.port.or_else(|| {
                    super::Transport::from_token(&via.transport).map(super::Transport::default_port)
                });
                via.host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| self.is_our_address(ip, port))
            })
        })
    }

    /// Whether `addr` is this server (its UDP/TCP or its TLS address) or no address at all:
    /// never a next hop.
    pub(crate) fn is_self_or_unspecified(&self, addr: SocketAddr) -> bool {
        let is = |me: SocketAddr| {
            addr == me
                || (addr.port() == me.port()
                    && (addr.ip().is_loopback() || me.ip().is_unspecified()))
        };
        addr.ip().is_unspecified()
            || addr.port() == 0
            || is(self.cfg.advertised)
            || self.cfg.advertised_tls.is_some_and(is)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_per_call_and_per_key() {
        let a = RouteTags::new(&[1; 32]);
        let b = RouteTags::new(&[2; 32]);
        let t = a.tag("call-1");
        assert_eq!(t.len(), 16);
        assert!(a.check("call-1", &t));
        assert!(!a.check("call-2", &t));
        assert!(!b.check("call-1", &t));
        assert!(!a.check("call-1", ""));
        assert!(!a.check("call-1", &t[..15]));
    }
}
