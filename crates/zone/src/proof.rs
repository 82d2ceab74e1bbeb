//! The call-bound challenge and proof (R14): the patent's EULA INVITE / EULA OK, made mutual
//! like IMS AKA.
//!
//! Both MACs use the license key `K` with distinct labels, so one can never stand in for the
//! other:
//! - server MAC `= HMAC-SHA256(K, "trustring/v1/server" ‖ msg)`, checked by the zone;
//! - proof `= HMAC-SHA256(K, "trustring/v1/proof" ‖ msg)`, returned by the zone;
//!
//! where `msg = counter (u64 BE) ‖ nonce (16) ‖ len(device_id) ‖ device_id ‖ len(call_id) ‖
//! call_id ‖ len(branch) ‖ branch`, each `len` a u16 BE. The binding (Call-ID + the Via branch
//! of the forked INVITE) makes a proof useless for any other call or branch.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Label of the server MAC.
pub const SERVER_LABEL: &[u8] = b"trustring/v1/server";
/// Label of the zone's proof.
pub const PROOF_LABEL: &[u8] = b"trustring/v1/proof";

/// A license key: 256 random bits (R4). Zeroed on drop (`zeroize`); `Debug` never prints it.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct LicenseKey(pub(crate) [u8; 32]);

impl LicenseKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// A fresh key: 256 bits from the operating system's CSPRNG (R4).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut k);
        let key = Self(k);
        zeroize::Zeroize::zeroize(&mut k);
        key
    }
    /// The raw key: only for sealing, encryption at rest and in-process HMAC.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
    /// A copy of the key (the copy is zeroed on drop too). Kept explicit rather than `Clone`
    /// so every copy of a secret is visible in the code.
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }
}

impl std::fmt::Debug for LicenseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LicenseKey(..)")
    }
}

/// What a proof is bound to: one branch of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBinding<'a> {
    /// Call-ID of the forked INVITE.
    pub call_id: &'a str,
    /// Via branch the proxy put on the mobile branch's INVITE.
    pub branch: &'a str,
}

/// A challenge sent on the mobile branch's INVITE (header `Trust-Challenge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Device the challenge is for (public device id).
    pub device_id: String,
    /// Strictly increasing per device; the zone refuses one it has seen.
    pub counter: u64,
    /// Fresh random nonce.
    pub nonce: [u8; 16],
    /// Server MAC over the challenge and the binding.
    pub server_mac: [u8; 32],
}

/// A zone's answer (header `Trust-Proof` on the branch's 18x/2xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Counter of the challenge answered.
    pub counter: u64,
    /// `HMAC(K, PROOF_LABEL ‖ msg)`.
    pub mac: [u8; 32],
}

/// The MAC input after the label (see the module docs).
pub fn message(
    device_id: &str,
    counter: u64,
    nonce: &[u8; 16],
    binding: &CallBinding<'_>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        8 + 16 + 6 + device_id.len() + binding.call_id.len() + binding.branch.len(),
    );
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(nonce);
    for part in [device_id, binding.call_id, binding.branch] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
    }
    m
}

/// `HMAC-SHA256(key, label ‖ msg)` in software (the server, and the software zone).
pub fn mac(key: &[u8; 32], label: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    h.update(label);
    h.update(msg);
    h.finalize().into_bytes().into()
}

/// The bytes a zone feeds to `HMAC(K, ·)` to make its proof: `PROOF_LABEL ‖ msg`.
///
/// A token-backed zone (PKCS#11) signs exactly these bytes with `CKM_SHA256_HMAC`.
pub fn proof_input(challenge: &Challenge, binding: &CallBinding<'_>) -> Vec<u8> {
    let msg = message(
        &challenge.device_id,
        challenge.counter,
        &challenge.nonce,
        binding,
    );
    let mut v = Vec::with_capacity(PROOF_LABEL.len() + msg.len());
    v.extend_from_slice(PROOF_LABEL);
    v.extend_from_slice(&msg);
    v
}

/// The bytes under the server MAC of a challenge: `SERVER_LABEL ‖ msg`.
pub fn server_mac_input(challenge: &Challenge, binding: &CallBinding<'_>) -> Vec<u8> {
    let msg = message(
        &challenge.device_id,
        challenge.counter,
        &challenge.nonce,
        binding,
    );
    let mut v = Vec::with_capacity(SERVER_LABEL.len() + msg.len());
    v.extend_from_slice(SERVER_LABEL);
    v.extend_from_slice(&msg);
    v
}

impl Challenge {
    /// Makes a challenge and its server MAC with the device's license key (server side).
    pub fn new_signed(
        key: &LicenseKey,
        device_id: &str,
        counter: u64,
        nonce: [u8; 16],
        binding: &CallBinding<'_>,
    ) -> Self {
        let msg = message(device_id, counter, &nonce, binding);
        Self {
            device_id: device_id.to_owned(),
            counter,
            nonce,
            server_mac: mac(key.expose(), SERVER_LABEL, &msg),
        }
    }

    /// Whether the server MAC is right for `key` and `binding` (constant-time compare).
    pub fn server_mac_ok(&self, key: &LicenseKey, binding: &CallBinding<'_>) -> bool {
        let msg = message(&self.device_id, self.counter, &self.nonce, binding);
        mac_eq(&mac(key.expose(), SERVER_LABEL, &msg), &self.server_mac)
    }

    /// The proof for this challenge made in software with `key` (the software zone, tests).
    pub fn prove_with(&self, key: &LicenseKey, binding: &CallBinding<'_>) -> Proof {
        let msg = message(&self.device_id, self.counter, &self.nonce, binding);
        Proof {
            counter: self.counter,
            mac: mac(key.expose(), PROOF_LABEL, &msg),
        }
    }
}

/// Constant-time equality of two MACs.
pub fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_server_mac_from_proof() {
        let k = [7u8; 32];
        let b = CallBinding {
            call_id: "c1",
            branch: "z9hG4bK1",
        };
        let m = message("d-1", 5, &[1; 16], &b);
        assert_ne!(mac(&k, SERVER_LABEL, &m), mac(&k, PROOF_LABEL, &m));
    }

    #[test]
    fn binding_changes_the_message() {
        let b1 = CallBinding {
            call_id: "c1",
            branch: "z9hG4bKa",
        };
        let b2 = CallBinding {
            call_id: "c1",
            branch: "z9hG4bKb",
        };
        let b3 = CallBinding {
            call_id: "c1z",
            branch: "9hG4bKa",
        };
        let m1 = message("d", 1, &[0; 16], &b1);
        assert_ne!(m1, message("d", 1, &[0; 16], &b2));
        assert_ne!(
            m1,
            message("d", 1, &[0; 16], &b3),
            "length prefixes keep fields apart"
        );
        assert_ne!(m1, message("d", 2, &[0; 16], &b1));
    }

    #[test]
    fn hmac_matches_rfc4231_case_2_shape() {
        // RFC 4231 test case 2 ("Jefe"), key padded is not 32 bytes; check through the
        // generic HMAC with label = data prefix split.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // HMAC with a zero-padded 32-byte key equals HMAC with the 4-byte key (RFC 2104
        // pads keys shorter than the block with zeros).
        let got = mac(&key, b"what do ya want ", b"for nothing?");
        assert_eq!(
            hex(&got),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
