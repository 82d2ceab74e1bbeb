//! The phone's trusted zone (SPEC R6–R8, R14) and the server's side of it.
//!
//! The normal world may ask a zone for three things only: its public key, its status, and a
//! proof `HMAC-SHA256(license key, challenge ‖ call binding)` (R8). The license key and the
//! hidden identifier go in sealed ([`SealedPackage`]) and never come out.
//!
//! The exchange is mutual, like IMS AKA (RFC 3310): a [`Challenge`] carries a counter and a
//! server MAC made with the same license key under another label, so a rogue sender cannot
//! use the zone as a proof oracle, and the zone refuses a counter it has seen.
//!
//! Backends behind [`TrustedZone`]:
//! - `software` (default): keys sealed in a file (AEAD under an Argon2-derived key, 0600),
//!   honestly labelled [`SecurityLevel::Software`];
//! - `pkcs11`: keys live in a PKCS#11 token as sensitive, non-extractable objects and the HMAC
//!   is computed inside it (SoftHSM2 in tests).
//!
//! Server side: [`seal`] makes the package for a zone's public key, [`master`] keeps license
//! keys encrypted at rest, [`authority`] issues challenges and verifies proofs.

pub mod authority;
pub mod master;
pub mod pkcs11;
pub mod proof;
pub mod seal;
pub mod software;
mod util;
pub mod wire;

pub use proof::{CallBinding, Challenge, LicenseKey, Proof};
pub use seal::{SealedBody, SealedPackage, ServerPublicKey, ServerSigningKey};
pub use util::write_private_atomic;
pub use wire::WireError;

/// How well a zone protects its keys. Recorded by the server per device; an operator can
/// require [`SecurityLevel::Pkcs11`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityLevel {
    /// Keys sealed in a file by software: not a hardware trusted zone.
    Software,
    /// Keys inside a PKCS#11 token (HSM, secure element, TPM via tpm2-pkcs11, SoftHSM2).
    Pkcs11,
}

/// A zone's public key, as sent when enrolling (R6).
///
/// Text form (JSON and CLI): `x25519:BASE64URL` (software zones, HPKE) or
/// `p256:BASE64URL` of the SEC1 uncompressed point (PKCS#11 zones, ECDH + AES key wrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZonePublicKey {
    /// X25519 public key (32 bytes): sealed to with HPKE (RFC 9180).
    X25519([u8; 32]),
    /// P-256 public key, SEC1 uncompressed (65 bytes): sealed to with ECDH + AES-KW.
    P256(Vec<u8>),
}

/// What a zone reports about itself (R8). Never contains a secret or the identifier.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ZoneStatus {
    /// Backend protection level.
    pub security_level: SecurityLevel,
    /// The device id given by the server at enrolment (public; not the hidden identifier).
    pub device_id: Option<String>,
    /// A sealed package has been installed.
    pub enrolled: bool,
    /// The user's single-number switch (R10), as last set on the device.
    pub service_on: bool,
    /// Revocation reason, once the device learnt it was revoked (R9).
    pub revoked: Option<String>,
}

/// The credentials enrolment gives the phone's normal world: its SIP digest password and its
/// bearer token for the server's `/api/v1/device*` endpoints.
///
/// They are not zone secrets in the R8 sense (the device agent must use them: the password
/// for SIP digest, the token in HTTP), but they are kept **sealed in the zone** at rest, like
/// the license key, never in a plaintext file ([`TrustedZone::store_secrets`]); the agent
/// reads them back through the zone ([`TrustedZone::secrets`]) when it needs them.
/// `Debug` prints neither; memory is zeroed on drop.
#[derive(Clone)]
pub struct DeviceSecrets {
    /// The phone's SIP digest password.
    pub sip_password: zeroize::Zeroizing<String>,
    /// The phone's API bearer token.
    pub token: zeroize::Zeroizing<String>,
}

impl DeviceSecrets {
    /// Both credentials.
    pub fn new(sip_password: &str, token: &str) -> Self {
        Self {
            sip_password: zeroize::Zeroizing::new(sip_password.to_owned()),
            token: zeroize::Zeroizing::new(token.to_owned()),
        }
    }

    /// Canonical bytes: version `1` ‖ lp32(password) ‖ lp32(token).
    pub(crate) fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(
            9 + self.sip_password.len() + self.token.len(),
        ));
        out.push(1);
        util::put_lp32(&mut out, self.sip_password.as_bytes());
        util::put_lp32(&mut out, self.token.as_bytes());
        out
    }

    /// The inverse of [`DeviceSecrets::encode`]; `None` if malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != 1 {
            return None;
        }
        let mut field = || -> Option<zeroize::Zeroizing<String>> {
            let (len, tail) = rest.split_at_checked(4)?;
            let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
            let (value, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(zeroize::Zeroizing::new(
                String::from_utf8(value.to_vec()).ok()?,
            ))
        };
        let sip_password = field()?;
        let token = field()?;
        rest.is_empty().then_some(Self {
            sip_password,
            token,
        })
    }
}

impl std::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecrets")
            .field("sip_password", &"<redacted>")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Zone errors. None carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// The zone has no sealed package yet.
    #[error("zone is not enrolled")]
    NotEnrolled,
    /// The zone was revoked; it makes no proofs.
    #[error("zone is revoked: {0}")]
    Revoked(String),
    /// The challenge's server MAC is wrong: not from our server, or altered.
    #[error("challenge not authenticated by the server")]
    BadServerMac,
    /// The challenge's counter is not above the last accepted one (replay).
    #[error("stale challenge counter {got} (last accepted {last})")]
    StaleCounter {
        /// Counter in the challenge.
        got: u64,
        /// Highest counter accepted so far.
        last: u64,
    },
    /// The sealed package does not open for this zone or its signature is wrong.
    #[error("sealed package rejected: {0}")]
    BadPackage(String),
    /// Wrong passphrase / PIN.
    #[error("zone locked: wrong passphrase or PIN")]
    WrongPin,
    /// Backend failure (file, token).
    #[error("zone backend: {0}")]
    Backend(String),
}

/// The trusted zone as the normal world sees it (R8). Implementations keep the license key
/// and the identifier inside and expose nothing else.
pub trait TrustedZone {
    /// The zone's public key (generated by `init`, the private half never leaves the zone).
    fn public_key(&self) -> Result<ZonePublicKey, ZoneError>;
    /// The zone's status.
    fn status(&self) -> Result<ZoneStatus, ZoneError>;
    /// Opens `package` inside the zone and keeps its contents sealed (R7). Checks the server's
    /// signature against `server_key` first.
    fn install(
        &mut self,
        package: &SealedPackage,
        server_key: &ServerPublicKey,
    ) -> Result<(), ZoneError>;
    /// Checks the challenge's server MAC and counter, records the counter, and returns
    /// `HMAC(license key, challenge ‖ binding)` (R14). Refuses when revoked.
    fn prove(
        &mut self,
        challenge: &Challenge,
        binding: &CallBinding<'_>,
    ) -> Result<Proof, ZoneError>;
    /// Records the user's on/off switch (R10).
    fn set_service(&mut self, on: bool) -> Result<(), ZoneError>;
    /// Records that the server revoked this device (R9); proofs are refused from then on.
    fn mark_revoked(&mut self, reason: &str) -> Result<(), ZoneError>;
    /// Keeps the normal world's credentials sealed in the zone (software: inside the sealed
    /// file; PKCS#11: a private token object), replacing any kept before; `None` erases them.
    fn store_secrets(&mut self, secrets: Option<&DeviceSecrets>) -> Result<(), ZoneError>;
    /// The credentials kept by [`TrustedZone::store_secrets`], if any.
    fn secrets(&self) -> Result<Option<DeviceSecrets>, ZoneError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_secrets_round_trip_and_redact() {
        let s = DeviceSecrets::new("pässword", "tok-123");
        let bytes = s.encode();
        let back = DeviceSecrets::decode(&bytes).unwrap_or_else(|| panic!("decodes"));
        assert_eq!(back.sip_password.as_str(), "pässword");
        assert_eq!(back.token.as_str(), "tok-123");
        assert!(DeviceSecrets::decode(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(DeviceSecrets::decode(&longer).is_none());
        assert!(DeviceSecrets::decode(&[2]).is_none());
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("pässword") && !shown.contains("tok-123"),
            "{shown}"
        );
    }
}
