//! SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): SHA-256 for clients that
//! support it, MD5 for older clients ([`DigestPolicy`] says which are offered to whom).
//!
//! Sans-IO like the rest of the crate: the [`Authenticator`] is given its 32-byte secret and
//! an epoch `Instant` at construction and `now` on every call; it never reads a clock or a
//! random source itself.
//!
//! - [`Authenticator::challenges`] makes the `WWW-Authenticate` / `Proxy-Authenticate` values
//!   for a 401/407 (stateless nonces: time, counter and an HMAC under the secret).
//! - [`Authenticator::verify`] checks an `Authorization` / `Proxy-Authorization` value:
//!   realm, nonce authenticity and age, the response digest (in constant time, with the same
//!   work for unknown users as for known ones), then `nc` replay.
//! - [`AlgorithmChoice`] picks the challenges per client under the operator's
//!   [`DigestPolicy`] (default `auto`: learned per client, see the `policy` module).
//! - [`AuthFailureLimiter`] counts failures per source address and per username
//!   (SPEC R26, SECURITY threats 4 and 11).
//! - [`response`] is the bare RFC 7616 §3.4.1 computation, [`ha1`] what the store keeps.

mod authenticator;
mod credentials;
mod limiter;
mod policy;

use md5::Md5;
use sha2::{Digest, Sha256};

pub use authenticator::{Authenticator, DigestConfig, MAX_TRACKED_NONCES, Verified};
pub use credentials::{Credentials, MAX_CREDENTIALS_LEN, MAX_PARAMS};
pub use limiter::{AuthFailureLimiter, LimiterConfig};
pub use policy::{
    AlgorithmChoice, DEFAULT_SHA256_AGENTS, DigestPolicy, MAX_LEARNED_CLIENTS, Support,
};

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

    /// The algorithm named by an `algorithm=` token (case-insensitive); an absent parameter
    /// means MD5 (RFC 7616 §3.3). `None` for anything else, the `-sess` variants included.
    pub fn from_token(token: Option<&str>) -> Option<Self> {
        match token {
            None => Some(Self::Md5),
            Some(t) if t.eq_ignore_ascii_case("MD5") => Some(Self::Md5),
            Some(t) if t.eq_ignore_ascii_case("SHA-256") => Some(Self::Sha256),
            Some(_) => None,
        }
    }

    /// This algorithm's bit in the set of algorithms a nonce was offered with.
    pub(crate) fn offer_bit(self) -> u64 {
        match self {
            Self::Sha256 => 1,
            Self::Md5 => 2,
        }
    }

    /// Length of this algorithm's hex digests (HA1, HA2, response).
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Md5 => 32,
        }
    }
}

/// HA1 = H(user:realm:password): what the store keeps instead of the password.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hex(format!("{user}:{realm}:{password}").as_bytes())
}

/// The inputs of a `qop=auth` digest response besides HA1 and the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInput<'a> {
    /// The server's nonce, as sent.
    pub nonce: &'a str,
    /// The nonce count, 8 hex digits as sent (`00000001`).
    pub nc: &'a str,
    /// The client's nonce.
    pub cnonce: &'a str,
    /// The quality of protection, `auth`.
    pub qop: &'a str,
    /// The request method (`REGISTER`).
    pub method: &'a str,
    /// The `uri` parameter of the credentials (digest-uri).
    pub uri: &'a str,
}

/// The request-digest of RFC 7616 §3.4.1 for `qop=auth`:
/// `H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" H(method ":" uri))`, lowercase hex.
///
/// `ha1_hex` is the stored HA1 (see [`ha1`]); it is used lowercased.
pub fn response(algorithm: Algorithm, ha1_hex: &str, input: &ResponseInput<'_>) -> String {
    let ha2 = algorithm.hex(format!("{}:{}", input.method, input.uri).as_bytes());
    let ha1_hex = ha1_hex.to_ascii_lowercase();
    let kd = format!(
        "{ha1_hex}:{}:{}:{}:{}:{ha2}",
        input.nonce, input.nc, input.cnonce, input.qop
    );
    algorithm.hex(kd.as_bytes())
}

/// Why credentials were refused. Every variant asks for a new challenge, except
/// [`Malformed`](Self::Malformed) which may be answered 400; the caller should record a
/// failure in its [`AuthFailureLimiter`] for [`BadResponse`](Self::BadResponse) at least.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The header value is not a parsable `Digest` credentials list (or is too large, has a
    /// duplicate parameter, lacks a required one). The text never quotes the input.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// The `realm` is not ours: answer with a fresh challenge.
    #[error("wrong realm")]
    WrongRealm,
    /// The nonce is ours and the digest is right, but the nonce has expired (or was used too
    /// often, or was forgotten under memory pressure): answer with `stale=true`
    /// (RFC 7616 §3.3), the client retries without asking its user again.
    #[error("stale nonce")]
    Stale,
    /// The nonce (or opaque) was not made by this server with this secret: forged, foreign, or
    /// from before a restart with a new secret. Answer with a fresh challenge.
    #[error("unknown nonce")]
    UnknownNonce,
    /// The digest is right but `nc` did not increase for this nonce: a replay.
    #[error("replayed nonce count")]
    Replay,
    /// Wrong password, or unknown user: the two are deliberately indistinguishable
    /// (SECURITY threat 4) and cost the same work.
    #[error("bad response")]
    BadResponse,
    /// An `algorithm` other than MD5 or SHA-256 (the `-sess` variants included).
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// Credentials computed with an algorithm the nonce's challenge did not offer (a
    /// downgrade, or a client that ignores the challenge): answer with a fresh challenge.
    #[error("algorithm not offered")]
    AlgorithmNotOffered,
    /// A `qop` other than `auth`, or none (RFC 2069 digests are not accepted).
    #[error("unsupported qop")]
    UnsupportedQop,
}

impl AuthError {
    /// Whether this failure proves a password guess on a nonce we issued to that client (a
    /// wrong digest, or a replayed one): the only failures worth counting against an address
    /// or a user. Junk, foreign, stale or mismatched nonces are not (anyone can send them,
    /// from any source address).
    pub fn is_guess(&self) -> bool {
        matches!(self, Self::BadResponse | Self::Replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1, SHA-256.
    #[test]
    fn rfc7616_sha256_vector() {
        let h = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let input = ResponseInput {
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc: "00000001",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            qop: "auth",
            method: "GET",
            uri: "/dir/index.html",
        };
        assert_eq!(
            response(Algorithm::Sha256, &h, &input),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// RFC 7616 §3.9.1, MD5. The RFC's MD5 example uses the same cnonce as its SHA-256
    /// one (`0a4f113b` is RFC 2617's, see below; with it this would be `6f8499a9…`).
    #[test]
    fn rfc7616_md5_vector() {
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let input = ResponseInput {
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc: "00000001",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            qop: "auth",
            method: "GET",
            uri: "/dir/index.html",
        };
        assert_eq!(
            response(Algorithm::Md5, &h, &input),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    /// RFC 2617 §3.5, MD5 with cnonce `0a4f113b`.
    #[test]
    fn rfc2617_md5_vector() {
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let input = ResponseInput {
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc: "00000001",
            cnonce: "0a4f113b",
            qop: "auth",
            method: "GET",
            uri: "/dir/index.html",
        };
        assert_eq!(
            response(Algorithm::Md5, &h, &input),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn uppercase_stored_ha1_is_accepted() {
        let h = ha1(Algorithm::Md5, "a", "r", "p");
        let input = ResponseInput {
            nonce: "n",
            nc: "00000001",
            cnonce: "c",
            qop: "auth",
            method: "REGISTER",
            uri: "sip:r",
        };
        assert_eq!(
            response(Algorithm::Md5, &h, &input),
            response(Algorithm::Md5, &h.to_ascii_uppercase(), &input)
        );
    }

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::from_token(None), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_token(Some("md5")), Some(Algorithm::Md5));
        assert_eq!(
            Algorithm::from_token(Some("sha-256")),
            Some(Algorithm::Sha256)
        );
        assert_eq!(Algorithm::from_token(Some("SHA-256-sess")), None);
        assert_eq!(Algorithm::from_token(Some("MD5-sess")), None);
        assert_eq!(Algorithm::from_token(Some("AKAv1-MD5")), None);
        assert_eq!(Algorithm::from_token(Some("")), None);
    }
}
