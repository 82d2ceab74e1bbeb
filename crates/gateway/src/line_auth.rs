//! Who may attach a line with a number (SPEC R29, SECURITY threat 13).
//!
//! The gateway believes nothing a line says about itself. A line attaching with a number
//! that belongs to an enrolled phone must have that phone's trusted zone prove its key: the
//! exchange asks a [`LineAuthority`] (the server's trust authority, reached over an
//! authenticated channel: `trustring gateway` implements it over HTTP with requests MACed
//! under the trunk secret) for a fresh attach challenge, sends it to the line (ATC), and has
//! the authority check the line's answer (ATP). Only then is the line attached (ATA); any
//! failure is ATR and the connection is closed. A number that no phone holds attaches only
//! if the operator listed it as a plain PSTN line (`--plain-line`).
//!
//! The authority is asked again before a line dials out and every 30 s for every attached
//! line ([`LineAuthority::holder`]), and
//! an INVITE whose trust challenge names another device than the line's is not offered to
//! it: a revocation or a number change takes effect at once.
//!
//! The methods block (HTTP); the exchange calls them off its task, a few at a time.

/// What the authority answered for a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachLookup {
    /// The number is an enrolled phone's: its zone must prove this challenge.
    Phone {
        /// The phone's device id.
        device_id: String,
        /// The challenge (`Trust-Challenge` form).
        challenge: String,
        /// The binding's call reference.
        call_ref: String,
        /// The binding's branch (the attach branch).
        branch: String,
    },
    /// No enrolled phone has the number.
    Unassigned,
}

/// Why the authority gave no answer, or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority refused (a proof that does not verify, a revoked phone, a number that
    /// moved); `code` is its short reason (`wrong-proof`, `number_moved`, …).
    #[error("refused by the server's trust authority ({code})")]
    Refused {
        /// The short reason.
        code: String,
    },
    /// The authority could not be reached or answered nonsense: fail closed.
    #[error("the server's trust authority is unavailable: {0}")]
    Unavailable(String),
}

/// The server's side of line authentication, as the gateway reaches it.
pub trait LineAuthority: Send + Sync + 'static {
    /// A fresh attach challenge for the phone holding `number`, or that none holds it.
    fn challenge(&self, number: &str) -> Result<AttachLookup, AuthorityError>;

    /// Checks the line's `proof` of the challenge `call_ref` issued to `device_id` for
    /// `number` (and that the device still holds the number). Failures never count toward
    /// the phone's lockout.
    fn verify(
        &self,
        number: &str,
        device_id: &str,
        call_ref: &str,
        proof: &str,
    ) -> Result<(), AuthorityError>;

    /// The device holding `number` now (`None`: no phone's).
    fn holder(&self, number: &str) -> Result<Option<String>, AuthorityError>;
}
