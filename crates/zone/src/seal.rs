//! Sealed delivery of the identifier and the license key to one zone (R7).
//!
//! Two schemes, chosen by the zone's public key:
//! - `hpke-x25519`: HPKE base mode (RFC 9180), DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//!   ChaCha20-Poly1305; `info = "trustring/v1/enrol" ‖ device_id ‖ SHA-256(zone public key)`;
//!   plaintext `= license key (32) ‖ identifier (UTF-8)`. For software zones.
//! - `ecdh-p256-aes256kw`: ephemeral P-256 ECDH with the zone key, the raw shared X coordinate
//!   used as an AES-256 key-encryption key (what PKCS#11 `CKD_NULL` derives inside a token),
//!   then AES key wrap (RFC 3394) of the license key (40 bytes) and of the identifier
//!   (`len (1) ‖ UTF-8 ‖ zero padding` to a multiple of 8, at least 16). SoftHSM 2.6 has no
//!   HKDF, X9.63 KDF or X25519, so this is the shape a token can open (like PKCS#11 3.0's
//!   `CKM_ECDH_AES_KEY_WRAP`). For PKCS#11 zones.
//!
//! Either way the server signs the package (Ed25519) so the zone only installs what our
//! server made: HPKE base mode and ECDH-ES do not authenticate the sender.

/// The server's signature key (Ed25519), kept in the data directory.
#[derive(Debug)]
pub struct ServerSigningKey {
    _private: (),
}

/// The server's public key (Ed25519), given to the device at enrolment and pinned there.
/// Text form `ed25519:BASE64URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPublicKey(pub [u8; 32]);

/// The sealed package, as JSON (binary fields base64url without padding).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedPackage {
    /// Format version, 1.
    pub version: u8,
    /// Device id the package is for (bound into the HPKE `info` and the signature).
    pub device_id: String,
    /// The sealed contents.
    pub body: SealedBody,
    /// Ed25519 signature over `version ‖ device_id ‖ body` in canonical byte form.
    pub signature: String,
}

/// The sealed contents, by scheme.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "scheme")]
pub enum SealedBody {
    /// HPKE to an X25519 zone key.
    #[serde(rename = "hpke-x25519")]
    Hpke {
        /// HPKE encapsulated key.
        enc: String,
        /// HPKE ciphertext of `license key ‖ identifier`.
        ciphertext: String,
    },
    /// ECDH P-256 + AES-256 key wrap to a token's key.
    #[serde(rename = "ecdh-p256-aes256kw")]
    EcdhAesKw {
        /// Server's ephemeral P-256 public key, SEC1 uncompressed.
        ephemeral: String,
        /// AES-KW of the license key (40 bytes).
        wrapped_key: String,
        /// AES-KW of the padded identifier.
        wrapped_identifier: String,
    },
}
