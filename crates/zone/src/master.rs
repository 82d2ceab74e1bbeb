//! The server's master key: license keys encrypted at rest (R4).
//!
//! A license key is stored only as a *record* made by [`MasterKey::encrypt`]:
//!
//! ```text
//! lk1:<key id>:<base64url(nonce (24) ‖ ciphertext (32) ‖ tag (16))>
//! ```
//!
//! XChaCha20-Poly1305 under the 32-byte master key, a fresh random 192-bit nonce per record,
//! and `aad = "trustring/v1/license-key" ‖ lp(key id) ‖ lp(device_id)` (`lp` = u32 BE length
//! ‖ bytes), so a record copied onto another device's row does not decrypt.
//!
//! Master key text form: `v1:<key id>:<base64url(32 bytes)>`. The key id is the first 8 bytes
//! of `SHA-256("trustring/v1/master-key-id" ‖ key)` in lower-case hex (16 characters): it names
//! the key in records without revealing it, and a typo in the key is caught because the id no
//! longer matches.
//!
//! Where the key comes from: the environment variable [`MASTER_KEY_ENV`]
//! (`TRUSTRING_MASTER_KEY`, one key or several separated by `,` or newlines, newest first),
//! else the file `master.key` in the data directory, created with mode 0600 on first start by
//! [`MasterKeyRing::load_or_create`]. The file holds one key per line, newest first; `#`
//! comments and blank lines are ignored.
//!
//! Rotation: [`MasterKeyRing::rotate_file`] puts a new key on the first line and keeps the
//! old ones below it, so old records still decrypt; [`MasterKeyRing::reencrypt`] rewrites a
//! record under the current key (a no-op for records already under it); once no record uses
//! an old key, [`MasterKeyRing::retire`] drops it.

use std::path::Path;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::proof::LicenseKey;
use crate::util::{b64, put_lp32, unb64};

/// Environment variable that can carry the master key (ring) instead of the file.
pub const MASTER_KEY_ENV: &str = "TRUSTRING_MASTER_KEY";
/// Default file name of the master key in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Prefix of an encrypted license-key record.
pub const RECORD_PREFIX: &str = "lk1";

const KEY_PREFIX: &str = "v1";
const KID_LABEL: &[u8] = b"trustring/v1/master-key-id";
const AAD_LABEL: &[u8] = b"trustring/v1/license-key";
const NONCE_LEN: usize = 24;
const RECORD_BODY_LEN: usize = NONCE_LEN + 32 + 16;
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Master key errors. None carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MasterKeyError {
    /// A key's text form is wrong.
    #[error("bad master key text: {0}")]
    Format(&'static str),
    /// The key id written next to a key is not the key's id (typo or corruption).
    #[error("master key id does not match the key")]
    KeyIdMismatch,
    /// A file or variable holds no key.
    #[error("no master key found")]
    Empty,
    /// A record's text form is wrong.
    #[error("bad license key record")]
    BadRecord,
    /// A record was made under a key this ring does not hold.
    #[error("license key record uses unknown master key {0}")]
    UnknownKeyId(String),
    /// The record does not decrypt: altered, or for another device.
    #[error("license key record does not decrypt for this device")]
    Decrypt,
    /// The current key cannot be retired.
    #[error("the current master key cannot be retired")]
    RetireCurrent,
    /// The key file can be read by group or others.
    #[error("{0} must not be accessible by group or others (chmod 600)")]
    InsecurePermissions(String),
    /// File system error.
    #[error("master key file: {0}")]
    Io(String),
}

fn io_err(e: &std::io::Error) -> MasterKeyError {
    MasterKeyError::Io(e.kind().to_string())
}

/// One 32-byte master key and its id. Zeroed on drop; `Debug` shows only the id.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(KID_LABEL);
    h.update(key);
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn aad(kid: &str, device_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(AAD_LABEL.len() + 8 + kid.len() + device_id.len());
    v.extend_from_slice(AAD_LABEL);
    put_lp32(&mut v, kid.as_bytes());
    put_lp32(&mut v, device_id.as_bytes());
    v
}

/// The key id a record was made under (its second field).
pub fn record_key_id(record: &str) -> Result<&str, MasterKeyError> {
    let mut parts = record.trim().split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(RECORD_PREFIX), Some(kid), Some(_), None) if is_kid(kid) => Ok(kid),
        _ => Err(MasterKeyError::BadRecord),
    }
}

fn is_kid(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl MasterKey {
    /// A new random key (operating system CSPRNG).
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rand::rng(), k.as_mut_slice());
        Self::from_zeroizing(k)
    }

    /// The key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_zeroizing(Zeroizing::new(bytes))
    }

    fn from_zeroizing(key: Zeroizing<[u8; 32]>) -> Self {
        Self {
            id: key_id(&key),
            key,
        }
    }

    /// The key id (16 lower-case hex characters; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Text form `v1:<key id>:<base64url>` (zeroed when dropped).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{KEY_PREFIX}:{}:{}",
            self.id,
            b64(self.key.as_slice())
        ))
    }

    /// Parses the text form; the key id must match the key. Surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, MasterKeyError> {
        let mut parts = text.trim().split(':');
        let (Some(KEY_PREFIX), Some(kid), Some(b), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MasterKeyError::Format("expected v1:<key id>:<base64url>"));
        };
        let raw = Zeroizing::new(unb64(b).ok_or(MasterKeyError::Format("key is not base64url"))?);
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return Err(MasterKeyError::Format("key is not 32 bytes"));
        }
        key.copy_from_slice(&raw);
        let k = Self::from_zeroizing(key);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            k.id.as_bytes(),
            kid.as_bytes(),
        )) {
            return Err(MasterKeyError::KeyIdMismatch);
        }
        Ok(k)
    }

    /// The key from the value of `TRUSTRING_MASTER_KEY` (text form; if the value holds a ring,
    /// its first, current key).
    pub fn from_env_value(value: &str) -> Result<Self, MasterKeyError> {
        MasterKeyRing::from_env_value(value).map(MasterKeyRing::into_current)
    }

    /// Loads the current key from `path` (its first key line), or creates the file (0600, the
    /// directory 0700) with a new key on first start. Use [`MasterKeyRing::load_or_create`]
    /// to keep older keys for records made before a rotation.
    pub fn load_or_create(path: &Path) -> Result<Self, MasterKeyError> {
        MasterKeyRing::load_or_create(path).map(MasterKeyRing::into_current)
    }

    /// Encrypts a license key for storage in `device_id`'s row.
    pub fn encrypt(&self, key: &LicenseKey, device_id: &str) -> Result<String, MasterKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let aad = aad(&self.id, device_id);
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: key.expose(),
                    aad: &aad,
                },
            )
            .map_err(|_| MasterKeyError::Decrypt)?;
        let mut body = Vec::with_capacity(RECORD_BODY_LEN);
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ct);
        Ok(format!("{RECORD_PREFIX}:{}:{}", self.id, b64(&body)))
    }

    /// Decrypts a record made by [`MasterKey::encrypt`] for `device_id`.
    pub fn decrypt(&self, record: &str, device_id: &str) -> Result<LicenseKey, MasterKeyError> {
        let kid = record_key_id(record)?;
        if kid != self.id {
            return Err(MasterKeyError::UnknownKeyId(kid.to_owned()));
        }
        let body = record
            .trim()
            .rsplit(':')
            .next()
            .and_then(unb64)
            .ok_or(MasterKeyError::BadRecord)?;
        if body.len() != RECORD_BODY_LEN {
            return Err(MasterKeyError::BadRecord);
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| MasterKeyError::BadRecord)?;
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let aad = aad(&self.id, device_id);
        let pt = Zeroizing::new(
            cipher
                .decrypt((&nonce).into(), Payload { msg: ct, aad: &aad })
                .map_err(|_| MasterKeyError::Decrypt)?,
        );
        let k: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| MasterKeyError::Decrypt)?;
        Ok(LicenseKey::from_bytes(k))
    }
}

/// The current master key plus older ones, newest first, so records made before a rotation
/// still decrypt.
#[derive(Debug)]
pub struct MasterKeyRing {
    current: MasterKey,
    older: Vec<MasterKey>,
}

impl MasterKeyRing {
    /// A ring holding only `current`.
    pub fn new(current: MasterKey) -> Self {
        Self {
            current,
            older: Vec::new(),
        }
    }

    /// The key new records are made under.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    fn into_current(self) -> MasterKey {
        self.current
    }

    fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.current).chain(self.older.iter())
    }

    /// All key ids, newest first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys().map(MasterKey::id).collect()
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&MasterKey> {
        self.keys().find(|k| k.id == kid)
    }

    /// Parses key lines (newest first; `#` comments and blank lines ignored; duplicate ids
    /// collapse to the first).
    pub fn from_text(text: &str) -> Result<Self, MasterKeyError> {
        Self::from_parts(text.lines())
    }

    fn from_parts<'a>(parts: impl Iterator<Item = &'a str>) -> Result<Self, MasterKeyError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for part in parts {
            let part = part.trim();
            if part.is_empty() || part.starts_with('#') {
                continue;
            }
            let k = MasterKey::from_text(part)?;
            if keys.iter().all(|old| old.id != k.id) {
                keys.push(k);
            }
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or(MasterKeyError::Empty)?;
        Ok(Self {
            current,
            older: keys.collect(),
        })
    }

    /// The file form: one key per line, newest first (zeroed when dropped).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::from(
            "# trustring master keys, newest first. Keep secret (mode 0600).\n",
        ));
        for k in self.keys() {
            out.push_str(&k.to_text());
            out.push('\n');
        }
        out
    }

    /// The ring from the value of `TRUSTRING_MASTER_KEY`: keys separated by `,` or newlines,
    /// newest first.
    pub fn from_env_value(value: &str) -> Result<Self, MasterKeyError> {
        Self::from_parts(value.split([',', '\n']))
    }

    /// Loads the ring from `path`. Refuses a file that group or others can access.
    pub fn load(path: &Path) -> Result<Self, MasterKeyError> {
        let bytes = crate::util::read_secret(path, MAX_FILE_LEN).map_err(|e| io_err(&e))?;
        if crate::util::is_group_or_world_accessible(path).map_err(|e| io_err(&e))? {
            return Err(MasterKeyError::InsecurePermissions(
                path.display().to_string(),
            ));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| MasterKeyError::Format("not UTF-8"))?;
        Self::from_text(text)
    }

    /// Loads the ring from `path`, or on first start creates the file (0600; its directory
    /// 0700) holding one new key.
    pub fn load_or_create(path: &Path) -> Result<Self, MasterKeyError> {
        match Self::load(path) {
            Err(MasterKeyError::Io(_)) if !path.exists() => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::util::ensure_private_dir(parent).map_err(|e| io_err(&e))?;
                }
                let ring = Self::new(MasterKey::generate());
                match crate::util::create_private(path, ring.to_text().as_bytes()) {
                    Ok(()) => Ok(ring),
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
                    Err(e) => Err(io_err(&e)),
                }
            }
            other => other,
        }
    }

    /// Makes a new current key in memory; the old ones stay for decryption. Returns the new
    /// key's id.
    pub fn rotate(&mut self) -> &str {
        let old = std::mem::replace(&mut self.current, MasterKey::generate());
        self.older.insert(0, old);
        self.current.id()
    }

    /// Rotates the ring stored at `path`: loads it, adds a new current key on the first line,
    /// and rewrites the file atomically (0600). Returns the new ring.
    pub fn rotate_file(path: &Path) -> Result<Self, MasterKeyError> {
        let mut ring = Self::load(path)?;
        ring.rotate();
        ring.save(path)?;
        Ok(ring)
    }

    /// Writes the ring to `path` atomically (0600).
    pub fn save(&self, path: &Path) -> Result<(), MasterKeyError> {
        crate::util::write_private_atomic(path, self.to_text().as_bytes()).map_err(|e| io_err(&e))
    }

    /// Drops an old key (once no record uses it). The current key cannot be retired.
    pub fn retire(&mut self, kid: &str) -> Result<(), MasterKeyError> {
        if self.current.id == kid {
            return Err(MasterKeyError::RetireCurrent);
        }
        let before = self.older.len();
        self.older.retain(|k| k.id != kid);
        if self.older.len() == before {
            return Err(MasterKeyError::UnknownKeyId(kid.to_owned()));
        }
        Ok(())
    }

    /// Encrypts under the current key.
    pub fn encrypt(&self, key: &LicenseKey, device_id: &str) -> Result<String, MasterKeyError> {
        self.current().encrypt(key, device_id)
    }

    /// Decrypts a record made under any key of the ring.
    pub fn decrypt(&self, record: &str, device_id: &str) -> Result<LicenseKey, MasterKeyError> {
        let kid = record_key_id(record)?;
        self.get(kid)
            .ok_or_else(|| MasterKeyError::UnknownKeyId(kid.to_owned()))?
            .decrypt(record, device_id)
    }

    /// Whether a record was made under an older key than the current one.
    pub fn needs_reencrypt(&self, record: &str) -> Result<bool, MasterKeyError> {
        Ok(record_key_id(record)? != self.current().id)
    }

    /// The record re-encrypted under the current key (the same record if it already is).
    pub fn reencrypt(&self, record: &str, device_id: &str) -> Result<String, MasterKeyError> {
        if !self.needs_reencrypt(record)? {
            // Still check it decrypts, so a bad record is never reported as fine.
            self.decrypt(record, device_id)?;
            return Ok(record.trim().to_owned());
        }
        let key = self.decrypt(record, device_id)?;
        self.encrypt(&key, device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn round_trip_and_device_binding() -> TestResult {
        let mk = MasterKey::generate();
        let lk = LicenseKey::generate();
        let rec = mk.encrypt(&lk, "dev-a")?;
        assert!(rec.starts_with(&format!("lk1:{}:", mk.id())));
        assert!(!rec.contains(&b64(lk.expose())));
        assert_eq!(mk.decrypt(&rec, "dev-a")?.expose(), lk.expose());
        assert_eq!(
            mk.decrypt(&rec, "dev-b").err(),
            Some(MasterKeyError::Decrypt)
        );
        // Two encryptions differ (fresh nonce).
        assert_ne!(rec, mk.encrypt(&lk, "dev-a")?);
        // Tampering.
        let mut body = unb64(rec.rsplit(':').next().ok_or("rec")?).ok_or("b64")?;
        body[30] ^= 1;
        let bad = format!("lk1:{}:{}", mk.id(), b64(&body));
        assert_eq!(
            mk.decrypt(&bad, "dev-a").err(),
            Some(MasterKeyError::Decrypt)
        );
        for junk in [
            "",
            "lk1",
            "lk1:zz:AAAA",
            "lk2:0123456789abcdef:AAAA",
            "lk1:0123456789abcdef:AAAA:x",
        ] {
            assert!(mk.decrypt(junk, "dev-a").is_err(), "{junk}");
        }
        let other = MasterKey::generate();
        assert!(matches!(
            other.decrypt(&rec, "dev-a"),
            Err(MasterKeyError::UnknownKeyId(_))
        ));
        Ok(())
    }

    #[test]
    fn text_form_and_env() -> TestResult {
        let mk = MasterKey::generate();
        let text = mk.to_text();
        assert!(text.starts_with("v1:"));
        assert_eq!(text.split(':').nth(1), Some(mk.id()));
        let back = MasterKey::from_env_value(&format!("  {}\n", text.as_str()))?;
        assert_eq!(back.id(), mk.id());
        assert!(!format!("{mk:?}").contains(text.rsplit(':').next().ok_or("t")?));
        // Wrong id.
        let forged = format!(
            "v1:0000000000000000:{}",
            text.rsplit(':').next().ok_or("t")?
        );
        assert_eq!(
            MasterKey::from_text(&forged).err(),
            Some(MasterKeyError::KeyIdMismatch)
        );
        assert!(MasterKey::from_text("v1:abc").is_err());
        assert!(MasterKey::from_text(&format!("v1:{}:AAAA", mk.id())).is_err());
        assert_eq!(
            MasterKey::from_env_value(" , ").err(),
            Some(MasterKeyError::Empty)
        );
        // A ring in the variable: newest first.
        let old = MasterKey::generate();
        let ring = MasterKeyRing::from_env_value(&format!(
            "{},{}",
            text.as_str(),
            old.to_text().as_str()
        ))?;
        assert_eq!(ring.key_ids(), vec![mk.id(), old.id()]);
        Ok(())
    }

    #[test]
    fn file_is_created_private_and_reloaded() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("data").join(MASTER_KEY_FILE);
        let a = MasterKey::load_or_create(&path)?;
        let b = MasterKey::load_or_create(&path)?;
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(path.parent().ok_or("p")?)?
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
            assert!(matches!(
                MasterKey::load_or_create(&path),
                Err(MasterKeyError::InsecurePermissions(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn rotation_keeps_old_records_readable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(MASTER_KEY_FILE);
        let ring = MasterKeyRing::load_or_create(&path)?;
        let old_id = ring.current().id().to_owned();
        let lk = LicenseKey::generate();
        let old_rec = ring.encrypt(&lk, "dev-a")?;

        let ring = MasterKeyRing::rotate_file(&path)?;
        assert_ne!(ring.current().id(), old_id);
        assert_eq!(ring.key_ids().len(), 2);
        // The file has the new key first.
        let reloaded = MasterKeyRing::load(&path)?;
        assert_eq!(reloaded.key_ids(), ring.key_ids());
        assert_eq!(MasterKey::load_or_create(&path)?.id(), ring.current().id());

        assert_eq!(ring.decrypt(&old_rec, "dev-a")?.expose(), lk.expose());
        assert!(ring.needs_reencrypt(&old_rec)?);
        let new_rec = ring.reencrypt(&old_rec, "dev-a")?;
        assert!(!ring.needs_reencrypt(&new_rec)?);
        assert_eq!(record_key_id(&new_rec)?, ring.current().id());
        assert_eq!(ring.reencrypt(&new_rec, "dev-a")?, new_rec);
        assert!(ring.reencrypt(&old_rec, "dev-b").is_err());

        let mut ring = ring;
        let current = ring.current().id().to_owned();
        assert_eq!(
            ring.retire(&current).err(),
            Some(MasterKeyError::RetireCurrent)
        );
        ring.retire(&old_id)?;
        assert!(matches!(
            ring.decrypt(&old_rec, "dev-a"),
            Err(MasterKeyError::UnknownKeyId(_))
        ));
        assert_eq!(ring.decrypt(&new_rec, "dev-a")?.expose(), lk.expose());
        Ok(())
    }
}
