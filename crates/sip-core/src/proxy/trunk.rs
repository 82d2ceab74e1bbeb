//! The SIP trunk to the IP->PSTN gateway (SPEC R15, R16; toll fraud, SECURITY threat 3).
//!
//! A phone with a number and no live SIP binding is rung through the gateway: its branch is
//! `INVITE sip:+NUMBER@GATEWAY;user=phone` with the trust challenge (R14) and a
//! `Trunk-Auth` header. The gateway connects PSTN calls, which cost money, so it must only
//! take INVITEs that the server made: `Trunk-Auth` is an HMAC-SHA256, under a secret shared by
//! the server and the gateway, over the call's Call-ID, the branch's top Via branch, the
//! called number and the challenge. It is bound to one branch (so it cannot be moved to
//! another call or number) and to a challenge that expires within a minute (the gateway
//! checks the challenge's counter, a Unix-ms time, and refuses a challenge twice). A MAC
//! header rather than a digest challenge from the gateway keeps the phone's branch free of an
//! extra round trip, so it leaves with the desktop's (R11).
//!
//! ```text
//! Trunk-Auth: v=1;mac=HEX(HMAC-SHA256(secret, "trustring/v1/trunk" 0 call-id 0 branch 0 number 0 challenge))
//! ```

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header carrying the trunk MAC on a branch to the gateway.
pub const TRUNK_AUTH: &str = "Trunk-Auth";

/// Where the gateway is and the secret it shares with the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Trunk {
    /// The gateway's SIP address (over [`super::ProxyConfig::trunk_transport`]).
    pub addr: SocketAddr,
    /// The shared secret (at least 16 bytes).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Trunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunk")
            .field("addr", &self.addr)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn mac(secret: &[u8], call_id: &str, branch: &str, number: &str, challenge: &str) -> [u8; 32] {
    let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this arm is unreachable but must not panic.
        return [0; 32];
    };
    for part in ["trustring/v1/trunk", call_id, branch, number, challenge] {
        m.update(part.as_bytes());
        m.update(&[0]);
    }
    m.finalize().into_bytes().into()
}

/// The `Trunk-Auth` value for a branch.
pub fn trunk_auth(
    secret: &[u8],
    call_id: &str,
    branch: &str,
    number: &str,
    challenge: &str,
) -> String {
    format!(
        "v=1;mac={}",
        hex::encode(mac(secret, call_id, branch, number, challenge))
    )
}

/// Whether `value` is the right `Trunk-Auth` for these fields (constant-time compare).
pub fn verify_trunk_auth(
    secret: &[u8],
    value: &str,
    call_id: &str,
    branch: &str,
    number: &str,
    challenge: &str,
) -> bool {
    let mut mac_hex = None;
    for p in value.split(';').map(str::trim) {
        match p.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("v", "1")) => {}
            Some(("mac", v)) if mac_hex.is_none() => mac_hex = Some(v),
            _ => return false,
        }
    }
    let Some(Ok(given)) = mac_hex.map(hex::decode) else {
        return false;
    };
    let want = mac(secret, call_id, branch, number, challenge);
    given.len() == want.len() && bool::from(given.ct_eq(&want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_binds_every_field() {
        let s = b"0123456789abcdef0123456789abcdef";
        let v = trunk_auth(s, "c1", "z9hG4bK1", "+15550001", "v=1;ctr=1");
        assert!(verify_trunk_auth(
            s,
            &v,
            "c1",
            "z9hG4bK1",
            "+15550001",
            "v=1;ctr=1"
        ));
        assert!(verify_trunk_auth(
            s,
            &v.replace(';', " ; "),
            "c1",
            "z9hG4bK1",
            "+15550001",
            "v=1;ctr=1"
        ));
        assert!(!verify_trunk_auth(
            s,
            &v,
            "c2",
            "z9hG4bK1",
            "+15550001",
            "v=1;ctr=1"
        ));
        assert!(!verify_trunk_auth(
            s,
            &v,
            "c1",
            "z9hG4bK2",
            "+15550001",
            "v=1;ctr=1"
        ));
        assert!(!verify_trunk_auth(
            s,
            &v,
            "c1",
            "z9hG4bK1",
            "+15550002",
            "v=1;ctr=1"
        ));
        assert!(!verify_trunk_auth(
            s,
            &v,
            "c1",
            "z9hG4bK1",
            "+15550001",
            "v=1;ctr=2"
        ));
        assert!(!verify_trunk_auth(
            b"another secret!!",
            &v,
            "c1",
            "z9hG4bK1",
            "+15550001",
            "v=1;ctr=1"
        ));
        // Field boundaries are unambiguous.
        assert!(!verify_trunk_auth(
            s,
            &v,
            "c1z",
            "9hG4bK1",
            "+15550001",
            "v=1;ctr=1"
        ));
        for bad in [
            "",
            "v=1",
            "mac=00",
            "v=2;mac=00",
            "v=1;mac=zz",
            "v=1;mac=00;mac=00",
        ] {
            assert!(
                !verify_trunk_auth(s, bad, "c1", "z9hG4bK1", "+15550001", "v=1;ctr=1"),
                "{bad}"
            );
        }
    }
}
