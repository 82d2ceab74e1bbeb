//! The proxy's view of trust before connect (R14): a phone's branch carries a challenge
//! bound to the call, and its answer counts only with a valid proof.
//!
//! The keys and the checks live behind [`TrustGate`], outside this crate (the trust
//! authority in `trustring-zone`), so the SIP core never holds key material.

use std::time::Instant;

/// Header the proxy adds to a phone branch's INVITE.
pub const TRUST_CHALLENGE: &str = "Trust-Challenge";
/// Header a phone puts on its 18x/2xx; removed before a response goes upstream.
pub const TRUST_PROOF: &str = "Trust-Proof";

/// Why a phone's branch was not rung or not connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRefusal {
    /// Stable kind for security events and metrics (`missing-proof`, `wrong-proof`,
    /// `replayed-proof`, `expired-proof`, `locked-out`, `unknown-device`, ...).
    pub kind: String,
    /// Human detail; never key material.
    pub detail: String,
}

/// Issues call-bound challenges and checks proofs for phones' branches.
pub trait TrustGate: Send {
    /// The `Trust-Challenge` header value for `device`'s branch `branch` of call `call_id`,
    /// or why the device must not be rung now (e.g. locked out after bad proofs).
    fn challenge(
        &mut self,
        now: Instant,
        device: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, TrustRefusal>;

    /// Checks the `Trust-Proof` header value (`None`: the response had none) that came on
    /// that branch. A proof is good once: the challenge is consumed.
    fn verify(
        &mut self,
        now: Instant,
        device: &str,
        call_id: &str,
        branch: &str,
        proof: Option<&str>,
    ) -> Result<(), TrustRefusal>;

    /// The branch ended without a proof being checked: forget its challenge.
    fn forget(&mut self, device: &str, call_id: &str, branch: &str);
}
