//! Text forms of the trust exchange as carried in SIP headers (documented in
//! `docs/trust.md`):
//!
//! ```text
//! Trust-Challenge: v=1;dev=d-7k3q;ctr=1764567890123;nonce=BASE64URL;mac=BASE64URL
//! Trust-Proof: v=1;ctr=1764567890123;proof=BASE64URL
//! ```
//!
//! The proxy adds `Trust-Challenge` to the mobile branch's INVITE only; the phone answers with
//! `Trust-Proof` on its 18x and/or 2xx; the proxy strips `Trust-Proof` before relaying.
//!
//! Rules for both headers (values only, without the header name):
//! - parameters are `name=value` separated by `;`, in any order, whitespace around `;` and `=`
//!   (and at both ends) is ignored;
//! - every parameter is required exactly once; an unknown, duplicate or empty parameter is an
//!   error, and so is any version other than `v=1`;
//! - `ctr` is a canonical decimal `u64` (no sign, no leading zero);
//! - binary values are base64url without padding, with their exact lengths (nonce 16 bytes,
//!   MACs 32 bytes);
//! - `dev` is a device id as [`is_valid_device_id`] defines it;
//! - a header value longer than [`MAX_HEADER_LEN`] is refused before parsing.
//!
//! Key text forms: [`ZonePublicKey`] is `x25519:B64URL` (32 bytes) or `p256:B64URL` (SEC1
//! uncompressed point, 65 bytes, checked to be on the curve); [`ServerPublicKey`] is
//! `ed25519:B64URL` (32 bytes, checked to be a valid point). Both serialize to JSON as
//! these strings.

use std::fmt;
use std::str::FromStr;

use crate::ZonePublicKey;
use crate::proof::{Challenge, Proof};
use crate::seal::ServerPublicKey;
use crate::util::{b64, unb64, unb64_array};

/// Name of the header the proxy puts on the mobile branch's INVITE.
pub const CHALLENGE_HEADER: &str = "Trust-Challenge";
/// Name of the header the zone's answer comes back in (18x/2xx).
pub const PROOF_HEADER: &str = "Trust-Proof";
/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Longest header value accepted (bytes).
pub const MAX_HEADER_LEN: usize = 512;
/// Longest device id accepted (bytes).
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a header value or key text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("header value too long")]
    TooLong,
    /// `v` is not `1`.
    #[error("unsupported version {0:?}")]
    Version(String),
    /// A required parameter is absent.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// A parameter appears twice.
    #[error("duplicate parameter {0}")]
    Duplicate(String),
    /// A parameter this version does not define.
    #[error("unknown parameter {0:?}")]
    Unknown(String),
    /// An element is not `name=value`, or a value is empty.
    #[error("malformed parameter {0:?}")]
    Syntax(String),
    /// `ctr` is not a canonical decimal u64.
    #[error("bad counter")]
    Counter,
    /// `dev` is not a valid device id.
    #[error("bad device id")]
    DeviceId,
    /// A binary value is not strict base64url or has the wrong length.
    #[error("bad value for {0}")]
    Value(&'static str),
    /// A key's text form is wrong (prefix, encoding, length, or not a valid point).
    #[error("bad key: {0}")]
    Key(&'static str),
}

/// Whether `id` is acceptable as a public device id: 1 to [`MAX_DEVICE_ID_LEN`] bytes of
/// ASCII letters, digits, `-`, `_` and `.` (so it is a SIP token and needs no quoting).
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits a header value into its parameters, enforcing the common rules.
fn parse_params<'a, const N: usize>(
    value: &'a str,
    names: [&'static str; N],
) -> Result<[&'a str; N], WireError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(WireError::TooLong);
    }
    let mut found: [Option<&'a str>; N] = [None; N];
    for element in value.split(';') {
        let element = element.trim();
        let Some((name, val)) = element.split_once('=') else {
            return Err(WireError::Syntax(element.to_owned()));
        };
        let (name, val) = (name.trim(), val.trim());
        if name.is_empty() || val.is_empty() {
            return Err(WireError::Syntax(element.to_owned()));
        }
        let Some(i) = names.iter().position(|n| *n == name) else {
            return Err(WireError::Unknown(name.to_owned()));
        };
        let slot = found
            .get_mut(i)
            .ok_or(WireError::Unknown(name.to_owned()))?;
        if slot.is_some() {
            return Err(WireError::Duplicate(name.to_owned()));
        }
        *slot = Some(val);
    }
    let mut out = [""; N];
    for (i, name) in names.iter().enumerate() {
        let v = found
            .get(i)
            .copied()
            .flatten()
            .ok_or(WireError::Missing(name))?;
        if let Some(o) = out.get_mut(i) {
            *o = v;
        }
    }
    Ok(out)
}

fn parse_version(v: &str) -> Result<(), WireError> {
    if v == "1" {
        Ok(())
    } else {
        Err(WireError::Version(v.chars().take(16).collect()))
    }
}

fn parse_counter(v: &str) -> Result<u64, WireError> {
    let canonical =
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (v == "0" || !v.starts_with('0'));
    if !canonical {
        return Err(WireError::Counter);
    }
    v.parse().map_err(|_| WireError::Counter)
}

impl Challenge {
    /// The `Trust-Challenge` header value: `v=1;dev=ID;ctr=N;nonce=B64URL;mac=B64URL`.
    pub fn to_header(&self) -> String {
        format!(
            "v={VERSION};dev={};ctr={};nonce={};mac={}",
            self.device_id,
            self.counter,
            b64(&self.nonce),
            b64(&self.server_mac)
        )
    }

    /// Parses a `Trust-Challenge` header value (see the module docs for the rules).
    pub fn from_header(value: &str) -> Result<Self, WireError> {
        let [v, dev, ctr, nonce, mac] =
            parse_params(value.trim(), ["v", "dev", "ctr", "nonce", "mac"])?;
        parse_version(v)?;
        if !is_valid_device_id(dev) {
            return Err(WireError::DeviceId);
        }
        Ok(Self {
            device_id: dev.to_owned(),
            counter: parse_counter(ctr)?,
            nonce: unb64_array(nonce).ok_or(WireError::Value("nonce"))?,
            server_mac: unb64_array(mac).ok_or(WireError::Value("mac"))?,
        })
    }
}

impl Proof {
    /// The `Trust-Proof` header value: `v=1;ctr=N;proof=B64URL`.
    pub fn to_header(&self) -> String {
        format!("v={VERSION};ctr={};proof={}", self.counter, b64(&self.mac))
    }

    /// Parses a `Trust-Proof` header value (see the module docs for the rules).
    pub fn from_header(value: &str) -> Result<Self, WireError> {
        let [v, ctr, proof] = parse_params(value.trim(), ["v", "ctr", "proof"])?;
        parse_version(v)?;
        Ok(Self {
            counter: parse_counter(ctr)?,
            mac: unb64_array(proof).ok_or(WireError::Value("proof"))?,
        })
    }
}

/// Text prefix of X25519 zone keys.
const X25519_PREFIX: &str = "x25519:";
/// Text prefix of P-256 zone keys.
const P256_PREFIX: &str = "p256:";
/// Text prefix of the server's Ed25519 key.
const ED25519_PREFIX: &str = "ed25519:";

impl ZonePublicKey {
    /// A P-256 zone key from a SEC1 point (compressed or uncompressed), checked to be on the
    /// curve and stored uncompressed (65 bytes).
    pub fn p256_from_sec1(point: &[u8]) -> Result<Self, WireError> {
        let pk = p256::PublicKey::from_sec1_bytes(point)
            .map_err(|_| WireError::Key("not a P-256 point"))?;
        let bytes = pk.to_sec1_bytes();
        // `to_sec1_bytes` gives the uncompressed form (0x04 ‖ X ‖ Y).
        if bytes.len() != 65 || bytes.first() != Some(&4) {
            return Err(WireError::Key("not an uncompressed P-256 point"));
        }
        Ok(Self::P256(bytes.into_vec()))
    }

    /// The raw public key bytes (32 for X25519, 65 for P-256).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::X25519(b) => b,
            Self::P256(b) => b,
        }
    }

    /// The sealing scheme this key is sealed to (`hpke-x25519` or `ecdh-p256-aes256kw`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::X25519(_) => crate::seal::SCHEME_HPKE,
            Self::P256(_) => crate::seal::SCHEME_ECDH,
        }
    }
}

impl fmt::Display for ZonePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X25519(b) => write!(f, "{X25519_PREFIX}{}", b64(b)),
            Self::P256(b) => write!(f, "{P256_PREFIX}{}", b64(b)),
        }
    }
}

impl FromStr for ZonePublicKey {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix(X25519_PREFIX) {
            let b = unb64_array::<32>(rest).ok_or(WireError::Key("x25519 key is not 32 bytes"))?;
            Ok(Self::X25519(b))
        } else if let Some(rest) = s.strip_prefix(P256_PREFIX) {
            let b = unb64(rest).ok_or(WireError::Key("p256 key is not base64url"))?;
            if b.len() != 65 {
                return Err(WireError::Key(
                    "p256 key is not a 65-byte uncompressed point",
                ));
            }
            Self::p256_from_sec1(&b)
        } else {
            Err(WireError::Key("unknown key type"))
        }
    }
}

impl serde::Serialize for ZonePublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ZonePublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ServerPublicKey {
    /// The key from its 32 bytes, checked to be a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, WireError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| WireError::Key("not an Ed25519 point"))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for ServerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ED25519_PREFIX}{}", b64(&self.0))
    }
}

impl FromStr for ServerPublicKey {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(ED25519_PREFIX)
            .ok_or(WireError::Key("not an ed25519 key"))?;
        let b = unb64_array::<32>(rest).ok_or(WireError::Key("ed25519 key is not 32 bytes"))?;
        Self::from_bytes(b)
    }
}

impl serde::Serialize for ServerPublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ServerPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn challenge() -> Challenge {
        Challenge {
            device_id: "d-7k3q".into(),
            counter: 1_764_567_890_123,
            nonce: [0xab; 16],
            server_mac: [0x5c; 32],
        }
    }

    #[test]
    fn challenge_round_trip_and_shape() -> Result<(), WireError> {
        let c = challenge();
        let h = c.to_header();
        assert!(h.starts_with("v=1;dev=d-7k3q;ctr=1764567890123;nonce="));
        assert!(!h.contains('='.to_string().repeat(2).as_str()));
        assert_eq!(Challenge::from_header(&h)?, c);
        Ok(())
    }

    #[test]
    fn proof_round_trip() -> Result<(), WireError> {
        let p = Proof {
            counter: 0,
            mac: [9; 32],
        };
        assert_eq!(Proof::from_header(&p.to_header())?, p);
        Ok(())
    }

    #[test]
    fn whitespace_and_order_are_tolerated() -> Result<(), WireError> {
        let c = challenge();
        let n = b64(&c.nonce);
        let m = b64(&c.server_mac);
        let h = format!(" mac = {m} ; nonce={n};ctr =1764567890123 ;\tdev= d-7k3q; v=1 ");
        assert_eq!(Challenge::from_header(&h)?, c);
        let p = format!("proof={m} ; v = 1;ctr=5");
        assert_eq!(Proof::from_header(&p)?.counter, 5);
        Ok(())
    }

    #[test]
    fn strictness() {
        let c = challenge();
        let good = c.to_header();
        let n = b64(&c.nonce);
        let m = b64(&c.server_mac);
        let cases: Vec<(String, WireError)> = vec![
            (good.replace("v=1", "v=2"), WireError::Version("2".into())),
            (good.replace("v=1;", ""), WireError::Missing("v")),
            (format!("{good};ctr=7"), WireError::Duplicate("ctr".into())),
            (format!("{good};x=1"), WireError::Unknown("x".into())),
            (format!("{good};"), WireError::Syntax(String::new())),
            (
                good.replace("dev=d-7k3q", "dev="),
                WireError::Syntax("dev=".into()),
            ),
            (good.replace("dev=d-7k3q", "dev=a,b"), WireError::DeviceId),
            (
                good.replace("ctr=1764567890123", "ctr=01"),
                WireError::Counter,
            ),
            (
                good.replace("ctr=1764567890123", "ctr=+1"),
                WireError::Counter,
            ),
            (
                good.replace("ctr=1764567890123", "ctr=18446744073709551616"),
                WireError::Counter,
            ),
            (good.replace(&n, &b64(&[1; 15])), WireError::Value("nonce")),
            (good.replace(&m, &format!("{m}==")), WireError::Value("mac")),
            (good.replace(&m, &b64(&[1; 33])), WireError::Value("mac")),
            ("x".repeat(MAX_HEADER_LEN + 1), WireError::TooLong),
            (String::new(), WireError::Syntax(String::new())),
        ];
        for (h, want) in cases {
            assert_eq!(Challenge::from_header(&h), Err(want), "{h}");
        }
        assert_eq!(
            Proof::from_header("v=1;ctr=1"),
            Err(WireError::Missing("proof"))
        );
        assert_eq!(
            Proof::from_header(&format!("v=1;ctr=1;proof={}", b64(&[0; 31]))),
            Err(WireError::Value("proof"))
        );
        assert_eq!(
            Proof::from_header(&format!("v=1;ctr=1;proof={m};dev=x")),
            Err(WireError::Unknown("dev".into()))
        );
    }

    #[test]
    fn counter_edges() -> Result<(), WireError> {
        let mut c = challenge();
        for ctr in [0, 1, u64::MAX] {
            c.counter = ctr;
            assert_eq!(Challenge::from_header(&c.to_header())?.counter, ctr);
        }
        Ok(())
    }

    #[test]
    fn device_ids() {
        assert!(is_valid_device_id("d-7k3q"));
        assert!(is_valid_device_id("A.b_c-9"));
        for bad in [
            "",
            "a b",
            "a;b",
            "a=b",
            "é",
            &"x".repeat(MAX_DEVICE_ID_LEN + 1),
        ] {
            assert!(!is_valid_device_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn zone_key_text_forms() -> Result<(), WireError> {
        let x = ZonePublicKey::X25519([3; 32]);
        let t = x.to_string();
        assert!(t.starts_with("x25519:"));
        assert_eq!(t.parse::<ZonePublicKey>()?, x);

        let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let sec1 = sk.public_key().to_sec1_bytes();
        let p = ZonePublicKey::p256_from_sec1(&sec1)?;
        let t = p.to_string();
        assert!(t.starts_with("p256:"));
        assert_eq!(t.parse::<ZonePublicKey>()?, p);
        assert_eq!(p.as_bytes().len(), 65);

        // A point not on the curve.
        let mut off = sec1.to_vec();
        if let Some(last) = off.last_mut() {
            *last ^= 1;
        }
        assert!(
            format!("p256:{}", b64(&off))
                .parse::<ZonePublicKey>()
                .is_err()
        );
        assert!("p256:AAAA".parse::<ZonePublicKey>().is_err());
        assert!("x25519:AAAA".parse::<ZonePublicKey>().is_err());
        assert!("rsa:AAAA".parse::<ZonePublicKey>().is_err());

        let json = serde_json::to_string(&x).map_err(|_| WireError::Key("json"))?;
        assert_eq!(json, format!("\"{}\"", x));
        let back: ZonePublicKey =
            serde_json::from_str(&json).map_err(|_| WireError::Key("json"))?;
        assert_eq!(back, x);
        Ok(())
    }

    #[test]
    fn server_key_text_form() -> Result<(), WireError> {
        let k = crate::seal::ServerSigningKey::generate().public();
        let t = k.to_string();
        assert!(t.starts_with("ed25519:"));
        assert_eq!(t.parse::<ServerPublicKey>()?, k);
        assert!("ed25519:AAAA".parse::<ServerPublicKey>().is_err());
        assert!(
            t.replacen("ed25519", "ed448", 1)
                .parse::<ServerPublicKey>()
                .is_err()
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn challenge_round_trips(
            dev in "[A-Za-z0-9._-]{1,64}",
            counter in any::<u64>(),
            nonce in any::<[u8; 16]>(),
            mac in any::<[u8; 32]>(),
        ) {
            let c = Challenge { device_id: dev, counter, nonce, server_mac: mac };
            prop_assert_eq!(Challenge::from_header(&c.to_header()), Ok(c));
        }

        #[test]
        fn proof_round_trips(counter in any::<u64>(), mac in any::<[u8; 32]>()) {
            let p = Proof { counter, mac };
            prop_assert_eq!(Proof::from_header(&p.to_header()), Ok(p));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,600}") {
            let _ = Challenge::from_header(&s);
            let _ = Proof::from_header(&s);
            let _ = s.parse::<ZonePublicKey>();
            let _ = s.parse::<ServerPublicKey>();
        }
    }
}
