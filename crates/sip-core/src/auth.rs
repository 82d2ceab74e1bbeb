//! SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): SHA-256 offered first,
//! MD5 for older clients.

use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256 (RFC 8760), offered first.
    Sha256,
    /// MD5, for older clients.
    Md5,
}

impl Algorithm {
    /// The token used in the `algorithm=` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Md5 => "MD5",
        }
    }

    /// Hex digest of `data` with this algorithm.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Self::Sha256 => hex::encode(Sha256::digest(data)),
            Self::Md5 => hex::encode(Md5::digest(data)),
        }
    }
}

/// HA1 = H(user:realm:password): what the store keeps instead of the password.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hex(format!("{user}:{realm}:{password}").as_bytes())
}
