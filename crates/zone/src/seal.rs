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
//!
//! # Byte-level details
//!
//! Identifier: UTF-8, 1 to [`MAX_IDENTIFIER_LEN`] (255) bytes, no control characters.
//!
//! `hpke-x25519`:
//! - suite: KEM `0x0020` DHKEM(X25519, HKDF-SHA256), KDF `0x0001` HKDF-SHA256, AEAD `0x0003`
//!   ChaCha20-Poly1305, mode base (`0x00`), no PSK;
//! - `info = "trustring/v1/enrol" (18 bytes) ‖ device_id (UTF-8, no length) ‖
//!   SHA-256(zone public key, 32 raw bytes)` — the hash is fixed length, so the split is
//!   unambiguous; `aad` is empty; one message is sealed (sequence number 0);
//! - plaintext `= license key (32) ‖ identifier (UTF-8)`;
//! - `enc` = the 32-byte ephemeral X25519 public key; `ciphertext` = AEAD output (plaintext
//!   length + 16-byte tag).
//!
//! `ecdh-p256-aes256kw`:
//! - the server draws an ephemeral P-256 key `e`; `ephemeral` = SEC1 uncompressed `e·G`
//!   (65 bytes, `0x04 ‖ X ‖ Y`);
//! - `KEK` = the 32-byte big-endian X coordinate of `e·Z` (Z the zone key), used directly as
//!   an AES-256 key (PKCS#11 `CKM_ECDH1_DERIVE` with `CKD_NULL`, no shared data);
//! - `wrapped_key = AES-KW(KEK, license key)` (RFC 3394, default IV `A6A6A6A6A6A6A6A6`,
//!   40 bytes);
//! - `wrapped_identifier = AES-KW(KEK, pad(identifier))` where `pad(id) = len(id) (1 byte) ‖
//!   id ‖ 0x00…` up to the next multiple of 8, and at least 16 bytes (AES-KW needs two
//!   blocks); the opener checks the length byte and that every padding byte is zero.
//!
//! Signature: Ed25519 (RFC 8032, pure) over the canonical bytes [`SealedPackage::signed_bytes`]:
//!
//! ```text
//! "trustring/v1/package"            20 ASCII bytes (domain separation)
//! version                           1 byte (1)
//! lp(device_id)                     lp(x) = length as u32 big-endian ‖ x
//! lp(scheme)                        "hpke-x25519" or "ecdh-p256-aes256kw"
//! hpke-x25519:        lp(enc) ‖ lp(ciphertext)
//! ecdh-p256-aes256kw: lp(ephemeral) ‖ lp(wrapped_key) ‖ lp(wrapped_identifier)
//! ```
//!
//! where the binary fields are the raw bytes (the base64url text decoded strictly, so each
//! package has one text form). `signature` is base64url of the 64-byte signature.

use hpke::{Deserializable as _, Kem as _, Serializable as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::ZonePublicKey;
use crate::proof::LicenseKey;
use crate::util::{b64, put_lp32, unb64, unb64_array};

/// Scheme name of HPKE sealing (software zones).
pub const SCHEME_HPKE: &str = "hpke-x25519";
/// Scheme name of ECDH P-256 + AES key wrap sealing (PKCS#11 zones).
pub const SCHEME_ECDH: &str = "ecdh-p256-aes256kw";
/// The package format version this crate makes and accepts.
pub const PACKAGE_VERSION: u8 = 1;
/// Prefix of the HPKE `info`.
pub const HPKE_INFO_LABEL: &[u8] = b"trustring/v1/enrol";
/// Domain-separation prefix of the signed bytes.
pub const SIGNATURE_LABEL: &[u8] = b"trustring/v1/package";
/// Longest identifier that can be sealed (bytes of UTF-8).
pub const MAX_IDENTIFIER_LEN: usize = 255;
/// Length of a wrapped license key (AES-KW of 32 bytes).
pub const WRAPPED_KEY_LEN: usize = 40;

type HpkeKem = hpke::kem::X25519HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// Sealing and opening errors. None carries key material or the identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The identifier is empty, too long or contains control characters.
    #[error("identifier cannot be sealed (1..=255 bytes of printable UTF-8)")]
    BadIdentifier,
    /// The device id is not a valid device id.
    #[error("bad device id")]
    BadDeviceId,
    /// A key is unusable (wrong type for the scheme, invalid point, or mismatched pair).
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// A field of the package is not strict base64url or has the wrong length.
    #[error("malformed package field {0}")]
    Malformed(&'static str),
    /// Unsupported package version.
    #[error("unsupported package version {0}")]
    Version(u8),
    /// The package was sealed with the other scheme.
    #[error("package uses scheme {0}, not the one asked for")]
    WrongScheme(&'static str),
    /// The signature does not verify under the server key.
    #[error("package signature is not valid")]
    BadSignature,
    /// The package does not open with this key (wrong zone, wrong device id, or altered).
    #[error("package does not open for this zone")]
    Open,
    /// A cryptographic primitive failed while sealing.
    #[error("sealing failed: {0}")]
    Crypto(&'static str),
    /// Reading or writing the key file failed.
    #[error("key file: {0}")]
    Io(String),
}

/// The server's signature key (Ed25519), kept in the data directory.
///
/// File/text form (what [`ServerSigningKey::to_text`] writes): `ed25519-secret:B64URL` of the
/// 32-byte seed, in a 0600 file.
pub struct ServerSigningKey {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSigningKey")
            .field("public", &self.public().to_string())
            .finish_non_exhaustive()
    }
}

const SIGNING_KEY_PREFIX: &str = "ed25519-secret:";

impl ServerSigningKey {
    /// A new random key (operating system CSPRNG).
    pub fn generate() -> Self {
        Self {
            key: ed25519_dalek::SigningKey::generate(&mut rand::rng()),
        }
    }

    /// The key from its 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed (zeroed when dropped), to store in a 0600 file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public half, given to devices and pinned there.
    pub fn public(&self) -> ServerPublicKey {
        ServerPublicKey(self.key.verifying_key().to_bytes())
    }

    /// Text form `ed25519-secret:B64URL` (zeroed when dropped).
    pub fn to_text(&self) -> Zeroizing<String> {
        let seed = self.to_bytes();
        Zeroizing::new(format!("{SIGNING_KEY_PREFIX}{}", b64(seed.as_slice())))
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        let rest = text
            .trim()
            .strip_prefix(SIGNING_KEY_PREFIX)
            .ok_or(SealError::BadKey("not an ed25519-secret key"))?;
        let seed = Zeroizing::new(
            unb64_array::<32>(rest).ok_or(SealError::BadKey("ed25519 seed is not 32 bytes"))?,
        );
        Ok(Self::from_bytes(&seed))
    }

    /// Loads the key from `path`, or makes one and writes it there (0600, directory created
    /// 0700) on first start. Refuses a file that group or others can access.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, SealError> {
        let io = |e: std::io::Error| SealError::Io(e.kind().to_string());
        match crate::util::read_secret(path, 256) {
            Ok(bytes) => {
                if crate::util::is_group_or_world_accessible(path).map_err(io)? {
                    return Err(SealError::Io(format!(
                        "{} must not be accessible by group or others (chmod 600)",
                        path.display()
                    )));
                }
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| SealError::BadKey("not UTF-8"))?;
                Self::from_text(text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::util::ensure_private_dir(parent).map_err(io)?;
                }
                let key = Self::generate();
                let mut text = key.to_text();
                text.push('\n');
                crate::util::create_private(path, text.as_bytes()).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(&self.key, msg).to_bytes()
    }
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

/// A package's body with its fields decoded (strictly) to raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedBody {
    /// `hpke-x25519`.
    Hpke {
        /// The ephemeral X25519 public key (`enc`).
        enc: [u8; 32],
        /// AEAD ciphertext and tag.
        ciphertext: Vec<u8>,
    },
    /// `ecdh-p256-aes256kw`.
    EcdhAesKw {
        /// Server's ephemeral P-256 public key, SEC1 uncompressed (65 bytes, on the curve).
        ephemeral: Vec<u8>,
        /// AES-KW of the license key (40 bytes).
        wrapped_key: [u8; WRAPPED_KEY_LEN],
        /// AES-KW of the padded identifier (24 to 264 bytes, a multiple of 8).
        wrapped_identifier: Vec<u8>,
    },
}

impl SealedBody {
    /// The scheme name (`hpke-x25519` or `ecdh-p256-aes256kw`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Hpke { .. } => SCHEME_HPKE,
            Self::EcdhAesKw { .. } => SCHEME_ECDH,
        }
    }

    /// Decodes the base64url fields and checks their lengths.
    pub fn decode(&self) -> Result<DecodedBody, SealError> {
        match self {
            Self::Hpke { enc, ciphertext } => {
                let enc = unb64_array::<32>(enc).ok_or(SealError::Malformed("enc"))?;
                let ciphertext = unb64(ciphertext).ok_or(SealError::Malformed("ciphertext"))?;
                // key (32) + at least one identifier byte + tag (16)
                if ciphertext.len() < 32 + 1 + 16 || ciphertext.len() > 32 + MAX_IDENTIFIER_LEN + 16
                {
                    return Err(SealError::Malformed("ciphertext"));
                }
                Ok(DecodedBody::Hpke { enc, ciphertext })
            }
            Self::EcdhAesKw {
                ephemeral,
                wrapped_key,
                wrapped_identifier,
            } => {
                let ephemeral = unb64(ephemeral).ok_or(SealError::Malformed("ephemeral"))?;
                if ephemeral.len() != 65
                    || ephemeral.first() != Some(&4)
                    || p256::PublicKey::from_sec1_bytes(&ephemeral).is_err()
                {
                    return Err(SealError::Malformed("ephemeral"));
                }
                let wrapped_key = unb64_array::<WRAPPED_KEY_LEN>(wrapped_key)
                    .ok_or(SealError::Malformed("wrapped_key"))?;
                let wrapped_identifier =
                    unb64(wrapped_identifier).ok_or(SealError::Malformed("wrapped_identifier"))?;
                let max = padded_identifier_len(MAX_IDENTIFIER_LEN) + 8;
                if wrapped_identifier.len() < 24
                    || wrapped_identifier.len() > max
                    || wrapped_identifier.len() % 8 != 0
                {
                    return Err(SealError::Malformed("wrapped_identifier"));
                }
                Ok(DecodedBody::EcdhAesKw {
                    ephemeral,
                    wrapped_key,
                    wrapped_identifier,
                })
            }
        }
    }
}

impl SealedPackage {
    /// The canonical bytes the server signs (see the module docs). Fails if a field is not
    /// strict base64url of the right length, or the version is not 1.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SealError> {
        if self.version != PACKAGE_VERSION {
            return Err(SealError::Version(self.version));
        }
        if !crate::wire::is_valid_device_id(&self.device_id) {
            return Err(SealError::BadDeviceId);
        }
        let body = self.body.decode()?;
        Ok(canonical_bytes(self.version, &self.device_id, &body))
    }

    /// Checks the server's signature.
    pub fn verify(&self, server_key: &ServerPublicKey) -> Result<(), SealError> {
        let msg = self.signed_bytes()?;
        let sig = unb64_array::<64>(&self.signature).ok_or(SealError::Malformed("signature"))?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&server_key.0)
            .map_err(|_| SealError::BadKey("server key is not an Ed25519 point"))?;
        vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| SealError::BadSignature)
    }

    /// The scheme name of the body.
    pub fn scheme(&self) -> &'static str {
        self.body.scheme()
    }
}

fn canonical_bytes(version: u8, device_id: &str, body: &DecodedBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(SIGNATURE_LABEL);
    out.push(version);
    put_lp32(&mut out, device_id.as_bytes());
    match body {
        DecodedBody::Hpke { enc, ciphertext } => {
            put_lp32(&mut out, SCHEME_HPKE.as_bytes());
            put_lp32(&mut out, enc);
            put_lp32(&mut out, ciphertext);
        }
        DecodedBody::EcdhAesKw {
            ephemeral,
            wrapped_key,
            wrapped_identifier,
        } => {
            put_lp32(&mut out, SCHEME_ECDH.as_bytes());
            put_lp32(&mut out, ephemeral);
            put_lp32(&mut out, wrapped_key);
            put_lp32(&mut out, wrapped_identifier);
        }
    }
    out
}

fn check_identifier(identifier: &str) -> Result<(), SealError> {
    if identifier.is_empty()
        || identifier.len() > MAX_IDENTIFIER_LEN
        || identifier.chars().any(char::is_control)
    {
        return Err(SealError::BadIdentifier);
    }
    Ok(())
}

/// The HPKE `info` for a device and a zone key (see the module docs).
pub fn hpke_info(device_id: &str, zone_public: &[u8; 32]) -> Vec<u8> {
    let mut info = Vec::with_capacity(HPKE_INFO_LABEL.len() + device_id.len() + 32);
    info.extend_from_slice(HPKE_INFO_LABEL);
    info.extend_from_slice(device_id.as_bytes());
    info.extend_from_slice(&Sha256::digest(zone_public));
    info
}

fn padded_identifier_len(len: usize) -> usize {
    (1 + len).div_ceil(8).max(2) * 8
}

/// `len (1) ‖ UTF-8 ‖ zeros` to a multiple of 8, at least 16 bytes: what AES-KW wraps.
pub fn pad_identifier(identifier: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    check_identifier(identifier)?;
    let len = u8::try_from(identifier.len()).map_err(|_| SealError::BadIdentifier)?;
    let mut out = Zeroizing::new(vec![0u8; padded_identifier_len(identifier.len())]);
    if let Some(first) = out.first_mut() {
        *first = len;
    }
    if let Some(dst) = out.get_mut(1..1 + identifier.len()) {
        dst.copy_from_slice(identifier.as_bytes());
    }
    Ok(out)
}

/// Reverses [`pad_identifier`], checking the length byte and that the padding is all zero.
pub fn unpad_identifier(padded: &[u8]) -> Result<Zeroizing<String>, SealError> {
    let (&len, rest) = padded.split_first().ok_or(SealError::Open)?;
    let len = usize::from(len);
    if padded.len() != padded_identifier_len(len) {
        return Err(SealError::Open);
    }
    let (id, padding) = rest.split_at_checked(len).ok_or(SealError::Open)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(SealError::Open);
    }
    let id = Zeroizing::new(
        std::str::from_utf8(id)
            .map_err(|_| SealError::Open)?
            .to_owned(),
    );
    check_identifier(&id).map_err(|_| SealError::Open)?;
    Ok(id)
}

/// Seals `key` and `identifier` for one zone and signs the package (R7).
///
/// The scheme follows the zone key: X25519 → `hpke-x25519`, P-256 → `ecdh-p256-aes256kw`.
pub fn seal_for_zone(
    zone: &ZonePublicKey,
    device_id: &str,
    identifier: &str,
    key: &LicenseKey,
    signer: &ServerSigningKey,
) -> Result<SealedPackage, SealError> {
    seal_with_rng(zone, device_id, identifier, key, signer, &mut rand::rng())
}

/// [`seal_for_zone`] with a caller-supplied CSPRNG (deterministic tests).
pub fn seal_with_rng<R: rand::CryptoRng + ?Sized>(
    zone: &ZonePublicKey,
    device_id: &str,
    identifier: &str,
    key: &LicenseKey,
    signer: &ServerSigningKey,
    rng: &mut R,
) -> Result<SealedPackage, SealError> {
    if !crate::wire::is_valid_device_id(device_id) {
        return Err(SealError::BadDeviceId);
    }
    check_identifier(identifier)?;
    let body = match zone {
        ZonePublicKey::X25519(pk) => seal_hpke(pk, device_id, identifier, key, rng)?,
        ZonePublicKey::P256(point) => seal_ecdh(point, identifier, key, rng)?,
    };
    let signature = b64(&signer.sign(&canonical_bytes(PACKAGE_VERSION, device_id, &body)));
    let body = match body {
        DecodedBody::Hpke { enc, ciphertext } => SealedBody::Hpke {
            enc: b64(&enc),
            ciphertext: b64(&ciphertext),
        },
        DecodedBody::EcdhAesKw {
            ephemeral,
            wrapped_key,
            wrapped_identifier,
        } => SealedBody::EcdhAesKw {
            ephemeral: b64(&ephemeral),
            wrapped_key: b64(&wrapped_key),
            wrapped_identifier: b64(&wrapped_identifier),
        },
    };
    Ok(SealedPackage {
        version: PACKAGE_VERSION,
        device_id: device_id.to_owned(),
        body,
        signature,
    })
}

fn seal_hpke<R: rand::CryptoRng + ?Sized>(
    zone_public: &[u8; 32],
    device_id: &str,
    identifier: &str,
    key: &LicenseKey,
    rng: &mut R,
) -> Result<DecodedBody, SealError> {
    let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(zone_public)
        .map_err(|_| SealError::BadKey("x25519 zone key"))?;
    let info = hpke_info(device_id, zone_public);
    let mut plaintext = Zeroizing::new(Vec::with_capacity(32 + identifier.len()));
    plaintext.extend_from_slice(key.expose());
    plaintext.extend_from_slice(identifier.as_bytes());
    let mut rng = RngRef(rng);
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeS::Base,
        &pk,
        &info,
        &plaintext,
        &[],
        &mut rng,
    )
    .map_err(|_| SealError::BadKey("x25519 zone key (low-order point?)"))?;
    let enc: [u8; 32] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Crypto("hpke enc length"))?;
    Ok(DecodedBody::Hpke { enc, ciphertext })
}

fn seal_ecdh<R: rand::CryptoRng + ?Sized>(
    zone_point: &[u8],
    identifier: &str,
    key: &LicenseKey,
    rng: &mut R,
) -> Result<DecodedBody, SealError> {
    let zone = p256::PublicKey::from_sec1_bytes(zone_point)
        .map_err(|_| SealError::BadKey("p256 zone key is not a valid point"))?;
    let eph =
        <p256::ecdh::EphemeralSecret as p256::elliptic_curve::Generate>::generate_from_rng(rng);
    let ephemeral = eph.public_key().to_sec1_bytes().into_vec();
    let shared = eph.diffie_hellman(&zone);
    let kek = kw_for(shared.raw_secret_bytes().as_slice())?;
    let mut wrapped_key = [0u8; WRAPPED_KEY_LEN];
    kek.wrap_key(key.expose(), &mut wrapped_key)
        .map_err(|_| SealError::Crypto("aes-kw"))?;
    let padded = pad_identifier(identifier)?;
    let mut wrapped_identifier = vec![0u8; padded.len() + 8];
    kek.wrap_key(&padded, &mut wrapped_identifier)
        .map_err(|_| SealError::Crypto("aes-kw"))?;
    Ok(DecodedBody::EcdhAesKw {
        ephemeral,
        wrapped_key,
        wrapped_identifier,
    })
}

fn kw_for(kek: &[u8]) -> Result<aes_kw::KwAes256, SealError> {
    <aes_kw::KwAes256 as aes_kw::KeyInit>::new_from_slice(kek)
        .map_err(|_| SealError::Crypto("kek length"))
}

/// A new X25519 zone key pair for `hpke-x25519`: (secret, public). The secret is zeroed on
/// drop.
pub fn x25519_generate() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let mut secret = Zeroizing::new([0u8; 32]);
    loop {
        rand::Rng::fill_bytes(&mut rand::rng(), secret.as_mut_slice());
        if let Ok(public) = x25519_public(&secret) {
            return (secret, public);
        }
    }
}

/// The X25519 public key of a secret (RFC 7748 clamping applies).
pub fn x25519_public(secret: &[u8; 32]) -> Result<[u8; 32], SealError> {
    let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| SealError::BadKey("x25519 secret"))?;
    HpkeKem::sk_to_pk(&sk)
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| SealError::BadKey("x25519 public key length"))
}

/// Opens an `hpke-x25519` package with the zone's X25519 secret (the software zone).
///
/// Does not check the signature: call [`SealedPackage::verify`] first. `zone_public` must be
/// the public half of `zone_secret`; the `info` binds the package's device id and the key.
pub fn open_hpke(
    package: &SealedPackage,
    zone_secret: &[u8; 32],
    zone_public: &ZonePublicKey,
) -> Result<(LicenseKey, Zeroizing<String>), SealError> {
    if package.version != PACKAGE_VERSION {
        return Err(SealError::Version(package.version));
    }
    let ZonePublicKey::X25519(public) = zone_public else {
        return Err(SealError::BadKey("hpke needs an x25519 zone key"));
    };
    let DecodedBody::Hpke { enc, ciphertext } = package.body.decode()? else {
        return Err(SealError::WrongScheme(package.scheme()));
    };
    let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(zone_secret)
        .map_err(|_| SealError::BadKey("x25519 secret"))?;
    if HpkeKem::sk_to_pk(&sk).to_bytes().as_slice() != public.as_slice() {
        return Err(SealError::BadKey(
            "zone public key does not match the secret",
        ));
    }
    let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&enc)
        .map_err(|_| SealError::Malformed("enc"))?;
    let info = hpke_info(&package.device_id, public);
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            &info,
            &ciphertext,
            &[],
        )
        .map_err(|_| SealError::Open)?,
    );
    let (k, id) = plaintext.split_at_checked(32).ok_or(SealError::Open)?;
    let key = LicenseKey::from_bytes(k.try_into().map_err(|_| SealError::Open)?);
    let id = Zeroizing::new(
        std::str::from_utf8(id)
            .map_err(|_| SealError::Open)?
            .to_owned(),
    );
    check_identifier(&id).map_err(|_| SealError::Open)?;
    Ok((key, id))
}

/// Opens an `ecdh-p256-aes256kw` package in software with the zone's P-256 secret.
///
/// This is the reference for what a PKCS#11 token does inside (ECDH with `CKD_NULL`, then
/// `C_UnwrapKey` with `CKM_AES_KEY_WRAP`). Does not check the signature: call
/// [`SealedPackage::verify`] first.
pub fn open_ecdh_aeskw(
    package: &SealedPackage,
    zone_secret: &p256::SecretKey,
) -> Result<(LicenseKey, Zeroizing<String>), SealError> {
    if package.version != PACKAGE_VERSION {
        return Err(SealError::Version(package.version));
    }
    let DecodedBody::EcdhAesKw {
        ephemeral,
        wrapped_key,
        wrapped_identifier,
    } = package.body.decode()?
    else {
        return Err(SealError::WrongScheme(package.scheme()));
    };
    let eph = p256::PublicKey::from_sec1_bytes(&ephemeral)
        .map_err(|_| SealError::Malformed("ephemeral"))?;
    let shared = p256::ecdh::diffie_hellman(zone_secret.to_nonzero_scalar(), eph.as_affine());
    let kek = kw_for(shared.raw_secret_bytes().as_slice())?;
    let mut k = Zeroizing::new([0u8; 32]);
    kek.unwrap_key(&wrapped_key, k.as_mut_slice())
        .map_err(|_| SealError::Open)?;
    let mut padded = Zeroizing::new(vec![0u8; wrapped_identifier.len().saturating_sub(8)]);
    kek.unwrap_key(&wrapped_identifier, &mut padded)
        .map_err(|_| SealError::Open)?;
    let id = unpad_identifier(&padded)?;
    Ok((LicenseKey::from_bytes(*k), id))
}

/// Adapts `&mut R` (possibly unsized) to the sized RNG the `hpke` API wants.
struct RngRef<'a, R: ?Sized>(&'a mut R);

impl<R: rand::CryptoRng + ?Sized> rand::TryRng for RngRef<'_, R> {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl<R: rand::CryptoRng + ?Sized> rand::TryCryptoRng for RngRef<'_, R> {}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect()
    }

    fn x25519_zone() -> ([u8; 32], ZonePublicKey) {
        let (sk, pk) = HpkeKem::gen_keypair_with_rng(&mut RngRef(&mut rand::rng()));
        let mut s = [0u8; 32];
        s.copy_from_slice(&sk.to_bytes());
        let mut p = [0u8; 32];
        p.copy_from_slice(&pk.to_bytes());
        (s, ZonePublicKey::X25519(p))
    }

    fn p256_zone() -> Result<(p256::SecretKey, ZonePublicKey), WireErr> {
        let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let pk = ZonePublicKey::p256_from_sec1(&sk.public_key().to_sec1_bytes())?;
        Ok((sk, pk))
    }
    type WireErr = crate::wire::WireError;

    const ID: &str = "+15551234567";

    #[test]
    fn hpke_round_trip() -> TestResult {
        let signer = ServerSigningKey::generate();
        let (sk, pk) = x25519_zone();
        let key = LicenseKey::generate();
        let pkg = seal_for_zone(&pk, "dev-a", ID, &key, &signer)?;
        assert_eq!(pkg.scheme(), SCHEME_HPKE);
        pkg.verify(&signer.public())?;
        let (k, id) = open_hpke(&pkg, &sk, &pk)?;
        assert_eq!(k.expose(), key.expose());
        assert_eq!(id.as_str(), ID);
        // JSON round trip keeps it valid.
        let json = serde_json::to_string(&pkg)?;
        assert!(json.contains("\"scheme\":\"hpke-x25519\""));
        assert!(!json.contains(ID));
        let back: SealedPackage = serde_json::from_str(&json)?;
        back.verify(&signer.public())?;
        assert_eq!(open_hpke(&back, &sk, &pk)?.1.as_str(), ID);
        Ok(())
    }

    #[test]
    fn ecdh_round_trip() -> TestResult {
        let signer = ServerSigningKey::generate();
        let (sk, pk) = p256_zone()?;
        let key = LicenseKey::generate();
        for id in ["1", ID, "sip-id-0123456", &"é".repeat(127)] {
            let pkg = seal_for_zone(&pk, "dev-b", id, &key, &signer)?;
            assert_eq!(pkg.scheme(), SCHEME_ECDH);
            pkg.verify(&signer.public())?;
            let DecodedBody::EcdhAesKw { wrapped_key, .. } = pkg.body.decode()? else {
                return Err("wrong scheme".into());
            };
            assert_eq!(wrapped_key.len(), 40);
            let (k, got) = open_ecdh_aeskw(&pkg, &sk)?;
            assert_eq!(k.expose(), key.expose());
            assert_eq!(got.as_str(), id);
        }
        Ok(())
    }

    #[test]
    fn wrong_zone_key_fails() -> TestResult {
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let (_, pk) = x25519_zone();
        let (other_sk, other_pk) = x25519_zone();
        let pkg = seal_for_zone(&pk, "dev-a", ID, &key, &signer)?;
        assert_eq!(
            open_hpke(&pkg, &other_sk, &other_pk).err(),
            Some(SealError::Open)
        );
        // The secret must match the public key given.
        assert!(matches!(
            open_hpke(&pkg, &other_sk, &pk),
            Err(SealError::BadKey(_))
        ));

        let (_, ppk) = p256_zone()?;
        let (other, _) = p256_zone()?;
        let pkg = seal_for_zone(&ppk, "dev-a", ID, &key, &signer)?;
        assert_eq!(open_ecdh_aeskw(&pkg, &other).err(), Some(SealError::Open));
        // Schemes do not mix.
        assert!(matches!(
            open_hpke(&pkg, &other_sk, &other_pk),
            Err(SealError::WrongScheme(_))
        ));
        Ok(())
    }

    #[test]
    fn tampering_breaks_the_signature() -> TestResult {
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let (_, pk) = x25519_zone();
        let (_, ppk) = p256_zone()?;
        for zone in [pk, ppk] {
            let pkg = seal_for_zone(&zone, "dev-a", ID, &key, &signer)?;
            pkg.verify(&signer.public())?;
            // Another server's key.
            assert_eq!(
                pkg.verify(&ServerSigningKey::generate().public()),
                Err(SealError::BadSignature)
            );
            // Flip one bit in each binary field in turn.
            let mut variants = Vec::new();
            match &pkg.body {
                SealedBody::Hpke { enc, ciphertext } => {
                    let mut e = unb64(enc).ok_or("b64")?;
                    e[0] ^= 1;
                    let mut p = pkg.clone();
                    p.body = SealedBody::Hpke {
                        enc: b64(&e),
                        ciphertext: ciphertext.clone(),
                    };
                    variants.push(p);
                    let mut c = unb64(ciphertext).ok_or("b64")?;
                    c[5] ^= 1;
                    let mut p = pkg.clone();
                    p.body = SealedBody::Hpke {
                        enc: enc.clone(),
                        ciphertext: b64(&c),
                    };
                    variants.push(p);
                }
                SealedBody::EcdhAesKw {
                    ephemeral,
                    wrapped_key,
                    wrapped_identifier,
                } => {
                    let mut w = unb64(wrapped_key).ok_or("b64")?;
                    w[3] ^= 1;
                    let mut p = pkg.clone();
                    p.body = SealedBody::EcdhAesKw {
                        ephemeral: ephemeral.clone(),
                        wrapped_key: b64(&w),
                        wrapped_identifier: wrapped_identifier.clone(),
                    };
                    variants.push(p);
                    // Swap the two wrapped blobs' roles is caught too (length differs or sig).
                    let mut p = pkg.clone();
                    p.body = SealedBody::EcdhAesKw {
                        ephemeral: ephemeral.clone(),
                        wrapped_key: wrapped_key.clone(),
                        wrapped_identifier: wrapped_key.clone(),
                    };
                    variants.push(p);
                }
            }
            let mut p = pkg.clone();
            p.device_id = "dev-b".into();
            variants.push(p);
            let mut p = pkg.clone();
            p.version = 2;
            variants.push(p);
            let mut p = pkg.clone();
            p.signature = "AAAA".into();
            variants.push(p);
            for v in variants {
                assert!(v.verify(&signer.public()).is_err(), "{v:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn package_for_device_a_does_not_open_as_device_b() -> TestResult {
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let (sk, pk) = x25519_zone();
        let mut pkg = seal_for_zone(&pk, "dev-a", ID, &key, &signer)?;
        pkg.device_id = "dev-b".into();
        // The signature no longer holds, and the HPKE info differs so it cannot open either.
        assert_eq!(pkg.verify(&signer.public()), Err(SealError::BadSignature));
        assert_eq!(open_hpke(&pkg, &sk, &pk).err(), Some(SealError::Open));
        Ok(())
    }

    #[test]
    fn bad_inputs_are_refused() -> TestResult {
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let (_, pk) = x25519_zone();
        for id in ["", "a\nb", &"x".repeat(256)] {
            assert_eq!(
                seal_for_zone(&pk, "dev-a", id, &key, &signer).err(),
                Some(SealError::BadIdentifier)
            );
        }
        assert_eq!(
            seal_for_zone(&pk, "bad dev", ID, &key, &signer).err(),
            Some(SealError::BadDeviceId)
        );
        // An all-zero (low order) X25519 key cannot be sealed to.
        assert!(seal_for_zone(&ZonePublicKey::X25519([0; 32]), "d", ID, &key, &signer).is_err());
        assert!(seal_for_zone(&ZonePublicKey::P256(vec![4; 65]), "d", ID, &key, &signer).is_err());
        Ok(())
    }

    #[test]
    fn identifier_padding() -> TestResult {
        assert_eq!(
            pad_identifier("a")?.as_slice(),
            &[1, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(pad_identifier(&"x".repeat(15))?.len(), 16);
        assert_eq!(pad_identifier(&"x".repeat(16))?.len(), 24);
        assert_eq!(pad_identifier(&"x".repeat(255))?.len(), 256);
        for id in ["a", ID, &"x".repeat(255)] {
            assert_eq!(unpad_identifier(&pad_identifier(id)?)?.as_str(), id);
        }
        let mut p = pad_identifier("abc")?.to_vec();
        p[10] = 1;
        assert_eq!(unpad_identifier(&p).err(), Some(SealError::Open));
        let mut p = pad_identifier("abc")?.to_vec();
        p[0] = 20;
        assert_eq!(unpad_identifier(&p).err(), Some(SealError::Open));
        assert_eq!(unpad_identifier(&[]).err(), Some(SealError::Open));
        Ok(())
    }

    #[test]
    fn signing_key_text_and_file() -> TestResult {
        let k = ServerSigningKey::generate();
        let back = ServerSigningKey::from_text(&k.to_text())?;
        assert_eq!(back.public(), k.public());
        assert_eq!(
            ServerSigningKey::from_bytes(&k.to_bytes()).public(),
            k.public()
        );
        assert!(!format!("{k:?}").contains(&b64(k.to_bytes().as_slice())));

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keys/server.key");
        let a = ServerSigningKey::load_or_create(&path)?;
        let b = ServerSigningKey::load_or_create(&path)?;
        assert_eq!(a.public(), b.public());
        assert!(!crate::util::is_group_or_world_accessible(&path)?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            assert!(matches!(
                ServerSigningKey::load_or_create(&path),
                Err(SealError::Io(_))
            ));
        }
        Ok(())
    }

    /// A fixed byte stream posing as a CSPRNG, for known-answer tests only.
    struct FixedRng(Vec<u8>);

    impl rand::TryRng for FixedRng {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            let mut b = [0u8; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            let mut b = [0u8; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            for d in dst.iter_mut() {
                *d = if self.0.is_empty() {
                    0
                } else {
                    self.0.remove(0)
                };
            }
            Ok(())
        }
    }
    impl rand::TryCryptoRng for FixedRng {}

    /// RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
    /// base mode, first encryption — exactly the suite `hpke-x25519` uses.
    #[test]
    fn hpke_rfc9180_a21_known_answer() -> TestResult {
        let info = hex("4f6465206f6e2061204772656369616e2055726e");
        let ikm_e = hex("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b");
        let pk_rm = hex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let sk_rm = hex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let enc_want = hex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let pt = hex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = hex("436f756e742d30");
        let ct_want = hex(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
        );
        let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&pk_rm)?;
        let (enc, ct) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeS::Base,
            &pk,
            &info,
            &pt,
            &aad,
            &mut FixedRng(ikm_e),
        )?;
        assert_eq!(enc.to_bytes().as_slice(), enc_want.as_slice());
        assert_eq!(ct, ct_want);
        let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(&sk_rm)?;
        assert_eq!(
            HpkeKem::sk_to_pk(&sk).to_bytes().as_slice(),
            pk_rm.as_slice()
        );
        let opened = hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            &info,
            &ct,
            &aad,
        )?;
        assert_eq!(opened, pt);
        Ok(())
    }

    /// RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
    #[test]
    fn aes_kw_rfc3394_known_answer() -> TestResult {
        let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let data = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let want =
            hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
        let kw = kw_for(&kek)?;
        let mut out = [0u8; 40];
        kw.wrap_key(&data, &mut out).map_err(|_| "wrap")?;
        assert_eq!(out.as_slice(), want.as_slice());
        Ok(())
    }

    #[test]
    fn sealing_is_deterministic_given_the_rng() -> TestResult {
        use rand::SeedableRng as _;
        let signer = ServerSigningKey::from_bytes(&[7; 32]);
        let key = LicenseKey::from_bytes([9; 32]);
        let (_, pk) = x25519_zone();
        let a = seal_with_rng(
            &pk,
            "d",
            ID,
            &key,
            &signer,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )?;
        let b = seal_with_rng(
            &pk,
            "d",
            ID,
            &key,
            &signer,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )?;
        let c = seal_with_rng(
            &pk,
            "d",
            ID,
            &key,
            &signer,
            &mut rand::rngs::StdRng::seed_from_u64(2),
        )?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        Ok(())
    }
}
