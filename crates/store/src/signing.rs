//! Signed call detail records (R18, `docs/cdr.md`): the Ed25519 key that signs every record and
//! the signed head, both kept outside the database.
//!
//! * `DATA/cdr-signing-key`: the 32-byte secret seed, hex, mode 0600, made on first start.
//!   Its public half (`trustring cdr public-key`) is what a verifier keeps elsewhere.
//! * `DATA/cdr-head`: the newest record's id and hash, with the time and a signature over the
//!   three, rewritten (atomically, fsynced) after every append. A verifier holding the public
//!   key and a head learns that the chain reached that record: a database that ends earlier
//!   was truncated, one whose record there has another hash was rewritten.
//!
//! What is signed (every integer big-endian, every string preceded by its length as a u64):
//! a record: `"trustring/v2/cdr-sig\0" ‖ id (i64) ‖ hash`; a head: `"trustring/v2/cdr-head\0" ‖
//! id (i64) ‖ hash ‖ at_ms (i64)`. The two prefixes keep a record's signature from being passed
//! off as a head (or the reverse).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::StoreError;

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "cdr-signing-key";
/// File name of the signed head in the data directory.
pub const HEAD_FILE: &str = "cdr-head";

const RECORD_DOMAIN: &[u8] = b"trustring/v2/cdr-sig\0";
const HEAD_DOMAIN: &[u8] = b"trustring/v2/cdr-head\0";

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What a record's signature covers.
pub(crate) fn record_message(id: i64, hash: &str) -> Vec<u8> {
    let mut m = RECORD_DOMAIN.to_vec();
    m.extend_from_slice(&id.to_be_bytes());
    field(&mut m, hash.as_bytes());
    m
}

fn head_message(id: i64, hash: &str, at_ms: i64) -> Vec<u8> {
    let mut m = HEAD_DOMAIN.to_vec();
    m.extend_from_slice(&id.to_be_bytes());
    field(&mut m, hash.as_bytes());
    m.extend_from_slice(&at_ms.to_be_bytes());
    m
}

fn err(what: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("CDR signing: {what}"))
}

/// The public half of a CDR signing key: 32 bytes, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CdrPublicKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for CdrPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CdrPublicKey({self})")
    }
}

impl std::fmt::Display for CdrPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl std::str::FromStr for CdrPublicKey {
    type Err = StoreError;

    /// 64 hex digits (surrounding white space ignored).
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bytes: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("a public key is 64 hex digits"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| err("not an Ed25519 public key"))
    }
}

impl CdrPublicKey {
    /// Whether `sig_hex` is this key's signature of record `id` with hash `hash`.
    pub fn verifies_record(&self, id: i64, hash: &str, sig_hex: &str) -> bool {
        self.verifies(&record_message(id, hash), sig_hex)
    }

    /// Whether `head` carries this key's signature.
    pub fn verifies_head(&self, head: &SignedHead) -> bool {
        self.verifies(&head_message(head.id, &head.hash, head.at_ms), &head.sig)
    }

    fn verifies(&self, message: &[u8], sig_hex: &str) -> bool {
        let Some(bytes) = hex::decode(sig_hex)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

/// A signed statement "the chain reached record `id`, whose hash is `hash`" (`DATA/cdr-head`,
/// JSON). `id` 0 with 64 zeros as hash is the empty chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedHead {
    /// The newest record's id.
    pub id: i64,
    /// Its hash, hex.
    pub hash: String,
    /// When the head was signed, Unix ms.
    pub at_ms: i64,
    /// The signer's public key, hex (informative only: a verifier trusts its own copy).
    pub public_key: String,
    /// Ed25519 signature, hex (see the module docs for what it covers).
    pub sig: String,
}

impl SignedHead {
    /// Reads a head file (`Ok(None)` if there is none).
    pub fn read(path: &Path) -> Result<Option<Self>, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| err(format!("{}: unreadable: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(format!("{}: {e}", path.display()))),
        }
    }
}

/// The key that signs CDRs and the place its heads go (`DATA/cdr-signing-key`, `DATA/cdr-head`).
pub struct CdrSigner {
    key: ed25519_dalek::SigningKey,
    head: PathBuf,
    /// The key file was made now (first start).
    pub(crate) created: bool,
}

impl std::fmt::Debug for CdrSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrSigner")
            .field("public", &self.public_key())
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl CdrSigner {
    /// Loads `dir/cdr-signing-key` (`Ok(None)` if there is none). A key file that others may
    /// read is refused, as is one that is not 64 hex digits.
    pub fn load(dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = dir.join(KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(format!("{}: {e}", path.display()))),
        };
        check_private(&path)?;
        let seed = Zeroizing::new(
            hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| err(format!("{}: expected 64 hex digits", path.display())))?,
        );
        Ok(Some(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            head: dir.join(HEAD_FILE),
            created: false,
        }))
    }

    /// [`CdrSigner::load`], or makes the key (mode 0600) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, StoreError> {
        if let Some(s) = Self::load(dir)? {
            return Ok(s);
        }
        let path = dir.join(KEY_FILE);
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rand::rng(), seed.as_mut_slice());
        let text = Zeroizing::new(format!("{}\n", hex::encode(seed.as_slice())));
        let mut f =
            new_private_file(&path).map_err(|e| err(format!("{}: create: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err(format!("{}: write: {e}", path.display())))?;
        sync_dir(dir);
        Ok(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            head: dir.join(HEAD_FILE),
            created: true,
        })
    }

    /// A signer from a seed (tests), whose heads go to `head`.
    pub fn from_seed(seed: [u8; 32], head: PathBuf) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            head,
            created: false,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> CdrPublicKey {
        CdrPublicKey(self.key.verifying_key())
    }

    /// Where the signed head is written.
    pub fn head_path(&self) -> &Path {
        &self.head
    }

    /// Signature (hex) of record `id` with hash `hash`.
    pub fn sign_record(&self, id: i64, hash: &str) -> String {
        hex::encode(self.key.sign(&record_message(id, hash)).to_bytes())
    }

    /// A head for record `id` with hash `hash`, signed now.
    pub(crate) fn head(&self, id: i64, hash: &str, at_ms: i64) -> SignedHead {
        SignedHead {
            id,
            hash: hash.to_owned(),
            at_ms,
            public_key: self.public_key().to_string(),
            sig: hex::encode(self.key.sign(&head_message(id, hash, at_ms)).to_bytes()),
        }
    }

    /// Replaces the head file (a temporary file fsynced, renamed over it, the directory
    /// fsynced): a crash leaves the old head or the new one, never half of one.
    pub(crate) fn write_head(&self, head: &SignedHead) -> Result<(), StoreError> {
        let tmp = self.head.with_extension("tmp");
        let body = serde_json::to_string(head).map_err(err)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.head)
        };
        write().map_err(|e| err(format!("{}: {e}", self.head.display())))?;
        if let Some(dir) = self.head.parent() {
            sync_dir(dir);
        }
        Ok(())
    }
}

/// Fsyncs a directory so a new or renamed entry in it survives a power loss (best effort).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "{} may be read by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = CdrSigner::load_or_create(dir.path()).unwrap();
        assert!(a.created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = CdrSigner::load_or_create(dir.path()).unwrap();
        assert!(!b.created);
        assert_eq!(a.public_key(), b.public_key());
        let text = a.public_key().to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<CdrPublicKey>().unwrap(), a.public_key());
        assert!("abc".parse::<CdrPublicKey>().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        CdrSigner::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CdrSigner::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn signatures_bind_id_hash_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let s = CdrSigner::from_seed([7; 32], dir.path().join(HEAD_FILE));
        let k = s.public_key();
        let sig = s.sign_record(3, "ab");
        assert!(k.verifies_record(3, "ab", &sig));
        assert!(!k.verifies_record(4, "ab", &sig));
        assert!(!k.verifies_record(3, "ac", &sig));
        assert!(!k.verifies_record(3, "ab", "00"));
        let other = CdrSigner::from_seed([8; 32], dir.path().join(HEAD_FILE)).public_key();
        assert!(!other.verifies_record(3, "ab", &sig));

        let head = s.head(3, "ab", 1_000);
        assert!(k.verifies_head(&head));
        assert!(!other.verifies_head(&head));
        // A record signature is no head signature, and a changed head no longer verifies.
        assert!(!k.verifies_head(&SignedHead {
            sig: sig.clone(),
            ..head.clone()
        }));
        assert!(!k.verifies_head(&SignedHead {
            id: 2,
            ..head.clone()
        }));
        assert!(!k.verifies_record(3, "ab", &head.sig));

        s.write_head(&head).unwrap();
        assert_eq!(SignedHead::read(s.head_path()).unwrap(), Some(head));
        assert_eq!(SignedHead::read(&dir.path().join("none")).unwrap(), None);
    }
}
