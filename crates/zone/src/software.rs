//! The software zone: a file-sealed store, the default backend. **Not a hardware trusted
//! zone** — [`SecurityLevel::Software`] says so to the server.
//!
//! The zone directory (mode 0700) holds one file, [`ZONE_FILE`] (mode 0600), rewritten
//! atomically (temporary file, `fsync`, `rename`, `fsync` of the directory) on every state
//! change. It is JSON with a clear header and one sealed blob:
//!
//! ```text
//! {"format":"trustring-software-zone","version":1,
//!  "kdf":{"alg":"argon2id","m_kib":19456,"t":2,"p":1,"salt":"B64URL(16)"},
//!  "nonce":"B64URL(24)","sealed":"B64URL"}
//! ```
//!
//! `sealed = XChaCha20-Poly1305(K, nonce, state, aad)` with `K = Argon2id(passphrase, salt,
//! m_kib, t, p)` (32 bytes, version 0x13), a fresh random nonce per write, and
//! `aad = "trustring/v1/software-zone" ‖ version ‖ m_kib ‖ t ‖ p (u32 BE each) ‖ lp(salt)` so
//! the header cannot be altered (e.g. to weaker KDF parameters) without the file failing to
//! open. A wrong passphrase fails the AEAD tag: [`ZoneError::WrongPin`].
//!
//! The sealed state (binary, version 2) holds: the X25519 secret key, the license key and the
//! hidden identifier once enrolled, the last accepted challenge counter, the device id, the
//! pinned server key, the service switch, the revocation reason and the normal world's
//! credentials ([`DeviceSecrets`]: SIP password, device token). Version 1 (without the
//! credentials) still opens and is rewritten as version 2 on the next change. In memory the
//! secrets live in zeroize-on-drop buffers.
//!
//! One process should open a zone at a time (there is no cross-process lock).

use std::path::{Path, PathBuf};

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use zeroize::Zeroizing;

use crate::proof::{CallBinding, Challenge, LicenseKey, Proof};
use crate::seal::{self, SealedPackage, ServerPublicKey};
use crate::util::{b64, put_lp32, unb64, unb64_array};
use crate::{DeviceSecrets, SecurityLevel, TrustedZone, ZoneError, ZonePublicKey, ZoneStatus};

/// File name of the sealed zone state inside the zone directory.
pub const ZONE_FILE: &str = "zone.sealed";
const FORMAT: &str = "trustring-software-zone";
const FILE_VERSION: u8 = 1;
/// Version of the sealed state written now; version 1 (no device secrets) still opens.
const STATE_VERSION: u8 = 2;
const AAD_LABEL: &[u8] = b"trustring/v1/software-zone";
const MAX_FILE_LEN: u64 = 64 * 1024;
/// Longest revocation reason kept (characters).
pub const MAX_REASON_CHARS: usize = 200;

/// Argon2id cost parameters for the passphrase key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB (default 19456 = 19 MiB, the OWASP recommendation).
    pub m_kib: u32,
    /// Passes (default 2).
    pub t: u32,
    /// Lanes (default 1).
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Whether the parameters are within what this crate accepts from a file (1 GiB, 64
    /// passes, 16 lanes at most), so a tampered header cannot make `open` hang.
    fn reasonable(&self) -> bool {
        (1..=16).contains(&self.p)
            && (1..=64).contains(&self.t)
            && self.m_kib >= 8 * self.p
            && self.m_kib <= 1024 * 1024
    }

    fn derive(&self, passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, ZoneError> {
        if !self.reasonable() {
            return Err(ZoneError::Backend("unreasonable KDF parameters".into()));
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| ZoneError::Backend(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut_slice())
            .map_err(|e| ZoneError::Backend(format!("argon2: {e}")))?;
        Ok(out)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    version: u8,
    kdf: KdfHeader,
    nonce: String,
    sealed: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfHeader {
    alg: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

fn header_aad(params: &KdfParams, salt: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(AAD_LABEL.len() + 1 + 12 + 4 + salt.len());
    v.extend_from_slice(AAD_LABEL);
    v.push(FILE_VERSION);
    v.extend_from_slice(&params.m_kib.to_be_bytes());
    v.extend_from_slice(&params.t.to_be_bytes());
    v.extend_from_slice(&params.p.to_be_bytes());
    put_lp32(&mut v, salt);
    v
}

struct Enrolment {
    key: LicenseKey,
    identifier: Zeroizing<String>,
}

struct State {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    enrolment: Option<Enrolment>,
    last_counter: u64,
    device_id: Option<String>,
    server_key: Option<[u8; 32]>,
    service_on: bool,
    revoked: Option<String>,
    secrets: Option<DeviceSecrets>,
}

fn put_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_lp32(out, b);
        }
    }
}

impl State {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        out.push(STATE_VERSION);
        out.extend_from_slice(self.secret.as_slice());
        out.extend_from_slice(&self.last_counter.to_be_bytes());
        out.push(u8::from(self.service_on));
        match &self.enrolment {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                out.extend_from_slice(e.key.expose());
                put_lp32(&mut out, e.identifier.as_bytes());
            }
        }
        put_opt(&mut out, self.device_id.as_deref().map(str::as_bytes));
        put_opt(&mut out, self.server_key.as_ref().map(<[u8; 32]>::as_slice));
        put_opt(&mut out, self.revoked.as_deref().map(str::as_bytes));
        let secrets = self.secrets.as_ref().map(DeviceSecrets::encode);
        put_opt(&mut out, secrets.as_ref().map(|s| s.as_slice()));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if !(1..=STATE_VERSION).contains(&version) {
            return None;
        }
        let secret = Zeroizing::new(r.array::<32>()?);
        let last_counter = u64::from_be_bytes(r.array::<8>()?);
        let service_on = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let enrolment = match r.u8()? {
            0 => None,
            1 => {
                let key = LicenseKey::from_bytes(r.array::<32>()?);
                let identifier = Zeroizing::new(String::from_utf8(r.lp()?.to_vec()).ok()?);
                Some(Enrolment { key, identifier })
            }
            _ => return None,
        };
        let device_id = r.opt_string()?;
        let server_key = match r.opt()? {
            None => None,
            Some(b) => Some(<[u8; 32]>::try_from(b).ok()?),
        };
        let revoked = r.opt_string()?;
        let secrets = if version >= 2 {
            match r.opt()? {
                None => None,
                Some(b) => Some(DeviceSecrets::decode(b)?),
            }
        } else {
            None
        };
        if !r.0.is_empty() {
            return None;
        }
        let public = seal::x25519_public(&secret).ok()?;
        Some(Self {
            secret,
            public,
            enrolment,
            last_counter,
            device_id,
            server_key,
            service_on,
            revoked,
            secrets,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = self.0.split_at_checked(n)?;
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn lp(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.array::<4>()?);
        self.take(usize::try_from(n).ok()?)
    }
    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.lp()?)),
            _ => None,
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt()? {
            None => Some(None),
            Some(b) => Some(Some(String::from_utf8(b.to_vec()).ok()?)),
        }
    }
}

/// The file-sealed software zone (see the module docs).
pub struct SoftwareZone {
    path: PathBuf,
    params: KdfParams,
    salt: [u8; 16],
    file_key: Zeroizing<[u8; 32]>,
    state: State,
}

impl std::fmt::Debug for SoftwareZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareZone")
            .field("path", &self.path)
            .field("device_id", &self.state.device_id)
            .field("enrolled", &self.state.enrolment.is_some())
            .finish_non_exhaustive()
    }
}

fn backend(what: &str, e: &std::io::Error) -> ZoneError {
    ZoneError::Backend(format!("{what}: {e}"))
}

impl SoftwareZone {
    /// Creates a new zone in `dir` (created with mode 0700 if missing; an existing directory
    /// is set to 0700) with a fresh X25519 key pair, sealed under `passphrase`, with the
    /// default Argon2id cost. Fails if the directory already holds a zone.
    pub fn init(dir: &Path, passphrase: &str) -> Result<Self, ZoneError> {
        Self::init_with_params(dir, passphrase, KdfParams::default())
    }

    /// [`SoftwareZone::init`] with explicit Argon2id costs (tests use cheap ones).
    pub fn init_with_params(
        dir: &Path,
        passphrase: &str,
        params: KdfParams,
    ) -> Result<Self, ZoneError> {
        if !params.reasonable() {
            return Err(ZoneError::Backend("unreasonable KDF parameters".into()));
        }
        let path = dir.join(ZONE_FILE);
        if path.exists() {
            return Err(ZoneError::Backend(format!(
                "{} already holds a zone",
                dir.display()
            )));
        }
        crate::util::ensure_private_dir(dir).map_err(|e| backend("zone directory", &e))?;
        let mut salt = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut salt);
        let file_key = params.derive(passphrase, &salt)?;
        let (secret, public) = seal::x25519_generate();
        let zone = Self {
            path,
            params,
            salt,
            file_key,
            state: State {
                secret,
                public,
                enrolment: None,
                last_counter: 0,
                device_id: None,
                server_key: None,
                service_on: true,
                revoked: None,
                secrets: None,
            },
        };
        let bytes = zone.seal_file()?;
        crate::util::create_private(&zone.path, &bytes).map_err(|e| backend("zone file", &e))?;
        Ok(zone)
    }

    /// Opens the zone in `dir`. A wrong passphrase (or an altered file) is
    /// [`ZoneError::WrongPin`].
    pub fn open(dir: &Path, passphrase: &str) -> Result<Self, ZoneError> {
        let path = dir.join(ZONE_FILE);
        let bytes =
            crate::util::read_secret(&path, MAX_FILE_LEN).map_err(|e| backend("zone file", &e))?;
        let env: Envelope = serde_json::from_slice(&bytes)
            .map_err(|_| ZoneError::Backend("zone file is not a software zone".into()))?;
        if env.format != FORMAT || env.version != FILE_VERSION || env.kdf.alg != "argon2id" {
            return Err(ZoneError::Backend("unsupported zone file format".into()));
        }
        let params = KdfParams {
            m_kib: env.kdf.m_kib,
            t: env.kdf.t,
            p: env.kdf.p,
        };
        let bad = || ZoneError::Backend("zone file is corrupt".into());
        let salt = unb64_array::<16>(&env.kdf.salt).ok_or_else(bad)?;
        let nonce = unb64_array::<24>(&env.nonce).ok_or_else(bad)?;
        let sealed = unb64(&env.sealed).ok_or_else(bad)?;
        let file_key = params.derive(passphrase, &salt)?;
        let cipher = XChaCha20Poly1305::new((&*file_key).into());
        let aad = header_aad(&params, &salt);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    (&nonce).into(),
                    Payload {
                        msg: &sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| ZoneError::WrongPin)?,
        );
        let state = State::decode(&plain).ok_or_else(bad)?;
        Ok(Self {
            path,
            params,
            salt,
            file_key,
            state,
        })
    }

    /// Path of the zone file.
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    /// Re-seals the zone under a new passphrase (new salt, same cost).
    pub fn change_passphrase(&mut self, new_passphrase: &str) -> Result<(), ZoneError> {
        let mut salt = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut salt);
        let key = self.params.derive(new_passphrase, &salt)?;
        let old_salt = std::mem::replace(&mut self.salt, salt);
        let old_key = std::mem::replace(&mut self.file_key, key);
        if let Err(e) = self.persist() {
            self.salt = old_salt;
            self.file_key = old_key;
            return Err(e);
        }
        Ok(())
    }

    fn seal_file(&self) -> Result<Vec<u8>, ZoneError> {
        let mut nonce = [0u8; 24];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
        let cipher = XChaCha20Poly1305::new((&*self.file_key).into());
        let aad = header_aad(&self.params, &self.salt);
        let plain = self.state.encode();
        let sealed = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| ZoneError::Backend("sealing the zone state failed".into()))?;
        let env = Envelope {
            format: FORMAT.into(),
            version: FILE_VERSION,
            kdf: KdfHeader {
                alg: "argon2id".into(),
                m_kib: self.params.m_kib,
                t: self.params.t,
                p: self.params.p,
                salt: b64(&self.salt),
            },
            nonce: b64(&nonce),
            sealed: b64(&sealed),
        };
        let mut out = serde_json::to_vec(&env)
            .map_err(|e| ZoneError::Backend(format!("zone file encoding: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    fn persist(&self) -> Result<(), ZoneError> {
        let bytes = self.seal_file()?;
        crate::util::write_private_atomic(&self.path, &bytes).map_err(|e| backend("zone file", &e))
    }

    /// Runs `change` on the state and persists it; if persisting fails, `undo` restores the
    /// state so memory never runs ahead of the file.
    fn commit<T>(
        &mut self,
        change: impl FnOnce(&mut State) -> T,
        undo: impl FnOnce(&mut State, T),
    ) -> Result<(), ZoneError> {
        let saved = change(&mut self.state);
        if let Err(e) = self.persist() {
            undo(&mut self.state, saved);
            return Err(e);
        }
        Ok(())
    }
}

impl TrustedZone for SoftwareZone {
    fn public_key(&self) -> Result<ZonePublicKey, ZoneError> {
        Ok(ZonePublicKey::X25519(self.state.public))
    }

    fn status(&self) -> Result<ZoneStatus, ZoneError> {
        Ok(ZoneStatus {
            security_level: SecurityLevel::Software,
            device_id: self.state.device_id.clone(),
            enrolled: self.state.enrolment.is_some(),
            service_on: self.state.service_on,
            revoked: self.state.revoked.clone(),
        })
    }

    fn install(
        &mut self,
        package: &SealedPackage,
        server_key: &ServerPublicKey,
    ) -> Result<(), ZoneError> {
        if let Some(reason) = &self.state.revoked {
            return Err(ZoneError::Revoked(reason.clone()));
        }
        if let Some(pinned) = &self.state.server_key
            && pinned != &server_key.0
        {
            return Err(ZoneError::BadPackage(
                "server key differs from the one pinned at enrolment".into(),
            ));
        }
        package
            .verify(server_key)
            .map_err(|e| ZoneError::BadPackage(e.to_string()))?;
        if let Some(dev) = &self.state.device_id
            && *dev != package.device_id
        {
            return Err(ZoneError::BadPackage(
                "package is for another device".into(),
            ));
        }
        let (key, identifier) = seal::open_hpke(
            package,
            &self.state.secret,
            &ZonePublicKey::X25519(self.state.public),
        )
        .map_err(|e| ZoneError::BadPackage(e.to_string()))?;
        let device_id = package.device_id.clone();
        let server = server_key.0;
        self.commit(
            move |s| {
                (
                    s.enrolment.replace(Enrolment { key, identifier }),
                    s.device_id.replace(device_id),
                    s.server_key.replace(server),
                )
            },
            |s, (e, d, k)| {
                s.enrolment = e;
                s.device_id = d;
                s.server_key = k;
            },
        )
    }

    fn prove(
        &mut self,
        challenge: &Challenge,
        binding: &CallBinding<'_>,
    ) -> Result<Proof, ZoneError> {
        if let Some(reason) = &self.state.revoked {
            return Err(ZoneError::Revoked(reason.clone()));
        }
        let enrolment = self
            .state
            .enrolment
            .as_ref()
            .ok_or(ZoneError::NotEnrolled)?;
        // A challenge for another device id cannot carry our server MAC.
        if self.state.device_id.as_deref() != Some(challenge.device_id.as_str())
            || !challenge.server_mac_ok(&enrolment.key, binding)
        {
            return Err(ZoneError::BadServerMac);
        }
        let last = self.state.last_counter;
        if challenge.counter <= last {
            return Err(ZoneError::StaleCounter {
                got: challenge.counter,
                last,
            });
        }
        let proof = challenge.prove_with(&enrolment.key, binding);
        let counter = challenge.counter;
        // The counter is durable before the proof leaves the zone.
        self.commit(
            |s| std::mem::replace(&mut s.last_counter, counter),
            |s, old| s.last_counter = old,
        )?;
        Ok(proof)
    }

    fn set_service(&mut self, on: bool) -> Result<(), ZoneError> {
        self.commit(
            |s| std::mem::replace(&mut s.service_on, on),
            |s, old| s.service_on = old,
        )
    }

    fn mark_revoked(&mut self, reason: &str) -> Result<(), ZoneError> {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON_CHARS)
            .collect();
        let reason = if reason.is_empty() {
            "revoked".to_owned()
        } else {
            reason
        };
        // The license key and the identifier are erased: a revoked zone keeps nothing worth
        // stealing.
        self.commit(
            |s| (s.revoked.replace(reason), s.enrolment.take()),
            |s, (r, e)| {
                s.revoked = r;
                s.enrolment = e;
            },
        )
    }

    fn store_secrets(&mut self, secrets: Option<&DeviceSecrets>) -> Result<(), ZoneError> {
        let new = secrets.cloned();
        self.commit(
            move |s| std::mem::replace(&mut s.secrets, new),
            |s, old| s.secrets = old,
        )
    }

    fn secrets(&self) -> Result<Option<DeviceSecrets>, ZoneError> {
        Ok(self.state.secrets.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{ServerSigningKey, seal_for_zone};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const CHEAP: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    const PASS: &str = "correct horse battery staple";
    const IDENT: &str = "+15550001111";
    const SIP_PASSWORD: &str = "0123456789abcdef0123456789abcdef";
    const DEVICE_TOKEN: &str = "feedfacecafebeef-device-token";

    fn binding() -> CallBinding<'static> {
        CallBinding {
            call_id: "call-1@example.com",
            branch: "z9hG4bK-1",
        }
    }

    fn enrolled(
        dir: &Path,
    ) -> Result<(SoftwareZone, LicenseKey, ServerSigningKey), Box<dyn std::error::Error>> {
        let mut zone = SoftwareZone::init_with_params(dir, PASS, CHEAP)?;
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let pkg = seal_for_zone(&zone.public_key()?, "dev-a", IDENT, &key, &signer)?;
        zone.install(&pkg, &signer.public())?;
        Ok((zone, key, signer))
    }

    fn challenge(key: &LicenseKey, counter: u64) -> Challenge {
        Challenge::new_signed(key, "dev-a", counter, [counter as u8; 16], &binding())
    }

    #[test]
    fn init_open_and_wrong_passphrase() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("zone");
        let zone = SoftwareZone::init_with_params(&dir, PASS, CHEAP)?;
        let pk = zone.public_key()?;
        let st = zone.status()?;
        assert_eq!(st.security_level, SecurityLevel::Software);
        assert!(!st.enrolled && st.service_on && st.revoked.is_none() && st.device_id.is_none());
        drop(zone);
        assert!(matches!(
            SoftwareZone::open(&dir, "wrong"),
            Err(ZoneError::WrongPin)
        ));
        assert_eq!(SoftwareZone::open(&dir, PASS)?.public_key()?, pk);
        assert!(
            SoftwareZone::init_with_params(&dir, PASS, CHEAP).is_err(),
            "no overwrite"
        );
        Ok(())
    }

    #[test]
    fn default_kdf_works() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let zone = SoftwareZone::init(tmp.path(), PASS)?;
        let pk = zone.public_key()?;
        assert_eq!(SoftwareZone::open(tmp.path(), PASS)?.public_key()?, pk);
        let text = std::fs::read_to_string(zone.file_path())?;
        assert!(text.contains("\"m_kib\":19456"));
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn file_and_directory_modes() -> TestResult {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("z");
        let (mut zone, key, _) = enrolled(&dir)?;
        zone.prove(&challenge(&key, 10), &binding())?;
        let mode = |p: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(zone.file_path())?, 0o600);
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            1,
            "no temporary file left"
        );
        Ok(())
    }

    #[test]
    fn secrets_are_not_in_the_clear() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, key, _) = enrolled(tmp.path())?;
        zone.store_secrets(Some(&DeviceSecrets::new(SIP_PASSWORD, DEVICE_TOKEN)))?;
        let bytes = std::fs::read(zone.file_path())?;
        for secret in [SIP_PASSWORD, DEVICE_TOKEN] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
            assert!(!String::from_utf8_lossy(&bytes).contains(&b64(secret.as_bytes())));
        }
        let text = String::from_utf8_lossy(&bytes);
        let hay = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!hay(key.expose()));
        assert!(!hay(IDENT.as_bytes()));
        assert!(!hay(&IDENT.as_bytes()[1..]));
        assert!(!text.contains(&b64(key.expose())));
        assert!(!text.contains(&b64(IDENT.as_bytes())));
        assert!(!hay(zone.state.secret.as_slice()));
        assert!(!format!("{zone:?}").contains(IDENT));
        Ok(())
    }

    #[test]
    fn proof_verifies_and_counter_is_enforced() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, key, _) = enrolled(tmp.path())?;
        let st = zone.status()?;
        assert!(st.enrolled);
        assert_eq!(st.device_id.as_deref(), Some("dev-a"));

        let c = challenge(&key, 100);
        let p = zone.prove(&c, &binding())?;
        assert_eq!(p, c.prove_with(&key, &binding()));
        assert_eq!(p.counter, 100);
        // Replay of the same challenge, and an older counter.
        assert!(matches!(
            zone.prove(&c, &binding()),
            Err(ZoneError::StaleCounter {
                got: 100,
                last: 100
            })
        ));
        assert!(matches!(
            zone.prove(&challenge(&key, 99), &binding()),
            Err(ZoneError::StaleCounter { .. })
        ));
        zone.prove(&challenge(&key, 101), &binding())?;
        Ok(())
    }

    #[test]
    fn bad_server_mac_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, key, _) = enrolled(tmp.path())?;
        let mut c = challenge(&key, 5);
        c.server_mac[0] ^= 1;
        assert!(matches!(
            zone.prove(&c, &binding()),
            Err(ZoneError::BadServerMac)
        ));
        // A challenge made with another key.
        let c = challenge(&LicenseKey::generate(), 6);
        assert!(matches!(
            zone.prove(&c, &binding()),
            Err(ZoneError::BadServerMac)
        ));
        // Right key, but MAC'd for another call: the zone is no proof oracle.
        let c = challenge(&key, 7);
        let other = CallBinding {
            call_id: "other",
            branch: "z9hG4bK-1",
        };
        assert!(matches!(
            zone.prove(&c, &other),
            Err(ZoneError::BadServerMac)
        ));
        // Another device id.
        let c = Challenge::new_signed(&key, "dev-b", 8, [0; 16], &binding());
        assert!(matches!(
            zone.prove(&c, &binding()),
            Err(ZoneError::BadServerMac)
        ));
        // None of these moved the counter.
        zone.prove(&challenge(&key, 5), &binding())?;
        Ok(())
    }

    #[test]
    fn not_enrolled_and_revoked() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("a");
        let mut fresh = SoftwareZone::init_with_params(&dir, PASS, CHEAP)?;
        let key = LicenseKey::generate();
        assert!(matches!(
            fresh.prove(&challenge(&key, 1), &binding()),
            Err(ZoneError::NotEnrolled)
        ));

        let dir = tmp.path().join("b");
        let (mut zone, key, signer) = enrolled(&dir)?;
        zone.mark_revoked("left the company\n")?;
        let st = zone.status()?;
        assert_eq!(st.revoked.as_deref(), Some("left the company"));
        assert!(!st.enrolled, "key material erased");
        assert!(matches!(
            zone.prove(&challenge(&key, 1), &binding()),
            Err(ZoneError::Revoked(_))
        ));
        let pkg = seal_for_zone(&zone.public_key()?, "dev-a", IDENT, &key, &signer)?;
        assert!(matches!(
            zone.install(&pkg, &signer.public()),
            Err(ZoneError::Revoked(_))
        ));
        drop(zone);
        let mut zone = SoftwareZone::open(&dir, PASS)?;
        assert!(matches!(
            zone.prove(&challenge(&key, 2), &binding()),
            Err(ZoneError::Revoked(_))
        ));
        Ok(())
    }

    #[test]
    fn install_checks() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let mut zone = SoftwareZone::init_with_params(tmp.path(), PASS, CHEAP)?;
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let pk = zone.public_key()?;
        let pkg = seal_for_zone(&pk, "dev-a", IDENT, &key, &signer)?;
        // Wrong server key.
        assert!(matches!(
            zone.install(&pkg, &ServerSigningKey::generate().public()),
            Err(ZoneError::BadPackage(_))
        ));
        // Sealed for another zone.
        let (_, other) = seal::x25519_generate();
        let foreign = seal_for_zone(&ZonePublicKey::X25519(other), "dev-a", IDENT, &key, &signer)?;
        assert!(matches!(
            zone.install(&foreign, &signer.public()),
            Err(ZoneError::BadPackage(_))
        ));
        assert!(!zone.status()?.enrolled);
        zone.install(&pkg, &signer.public())?;
        // A package for device B is refused once the zone belongs to device A.
        let for_b = seal_for_zone(&pk, "dev-b", IDENT, &key, &signer)?;
        assert!(matches!(
            zone.install(&for_b, &signer.public()),
            Err(ZoneError::BadPackage(_))
        ));
        // The server key is pinned: a package from another server is refused even if valid.
        let rogue = ServerSigningKey::generate();
        let rogue_pkg = seal_for_zone(&pk, "dev-a", IDENT, &key, &rogue)?;
        assert!(matches!(
            zone.install(&rogue_pkg, &rogue.public()),
            Err(ZoneError::BadPackage(_))
        ));
        // Re-delivery from our server for the same device is fine (key rotation).
        let key2 = LicenseKey::generate();
        zone.install(
            &seal_for_zone(&pk, "dev-a", IDENT, &key2, &signer)?,
            &signer.public(),
        )?;
        zone.prove(&challenge(&key2, 1), &binding())?;
        Ok(())
    }

    #[test]
    fn state_survives_reopen() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, key, _) = enrolled(tmp.path())?;
        zone.prove(&challenge(&key, 1_000), &binding())?;
        zone.set_service(false)?;
        let pk = zone.public_key()?;
        drop(zone);
        let mut zone = SoftwareZone::open(tmp.path(), PASS)?;
        assert_eq!(zone.public_key()?, pk);
        let st = zone.status()?;
        assert!(st.enrolled && !st.service_on);
        assert_eq!(st.device_id.as_deref(), Some("dev-a"));
        // The counter persisted: a replay after restart is refused.
        assert!(matches!(
            zone.prove(&challenge(&key, 1_000), &binding()),
            Err(ZoneError::StaleCounter { .. })
        ));
        zone.prove(&challenge(&key, 1_001), &binding())?;
        zone.change_passphrase("new pass")?;
        drop(zone);
        assert!(matches!(
            SoftwareZone::open(tmp.path(), PASS),
            Err(ZoneError::WrongPin)
        ));
        let zone = SoftwareZone::open(tmp.path(), "new pass")?;
        assert_eq!(zone.state.last_counter, 1_001);
        Ok(())
    }

    #[test]
    fn device_secrets_are_kept_sealed_and_survive_reopen() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, _key, _) = enrolled(tmp.path())?;
        assert!(zone.secrets()?.is_none());
        zone.store_secrets(Some(&DeviceSecrets::new(SIP_PASSWORD, DEVICE_TOKEN)))?;
        drop(zone);
        let mut zone = SoftwareZone::open(tmp.path(), PASS)?;
        let got = zone.secrets()?.ok_or("secrets kept")?;
        assert_eq!(got.sip_password.as_str(), SIP_PASSWORD);
        assert_eq!(got.token.as_str(), DEVICE_TOKEN);
        // Revocation keeps them (the token still reads the server's verdict); `None` erases.
        zone.mark_revoked("lost")?;
        assert!(zone.secrets()?.is_some());
        zone.store_secrets(None)?;
        drop(zone);
        assert!(SoftwareZone::open(tmp.path(), PASS)?.secrets()?.is_none());
        Ok(())
    }

    /// A zone file written before the device secrets existed (state version 1) still opens.
    #[test]
    fn version_1_state_still_opens() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (zone, _key, _) = enrolled(tmp.path())?;
        let v2 = zone.state.encode();
        // Version 1 is version 2 without the trailing secrets option (here: absent, 1 byte).
        let mut v1 = v2[..v2.len() - 1].to_vec();
        v1[0] = 1;
        let state = State::decode(&v1).ok_or("version 1 decodes")?;
        assert!(state.secrets.is_none() && state.enrolment.is_some());
        assert!(State::decode(&v2).is_some());
        let mut v3 = v2.to_vec();
        v3[0] = 3;
        assert!(State::decode(&v3).is_none());
        Ok(())
    }

    #[test]
    fn tampered_header_does_not_open() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let zone = SoftwareZone::init_with_params(tmp.path(), PASS, CHEAP)?;
        let text = std::fs::read_to_string(zone.file_path())?;
        // Changing a KDF parameter changes the key and the AAD: the file no longer opens.
        std::fs::write(zone.file_path(), text.replace("\"t\":1", "\"t\":2"))?;
        assert!(matches!(
            SoftwareZone::open(tmp.path(), PASS),
            Err(ZoneError::WrongPin)
        ));
        std::fs::write(
            zone.file_path(),
            text.replace("\"m_kib\":64", "\"m_kib\":4000000000"),
        )?;
        assert!(matches!(
            SoftwareZone::open(tmp.path(), PASS),
            Err(ZoneError::Backend(_))
        ));
        std::fs::write(zone.file_path(), "not json")?;
        assert!(matches!(
            SoftwareZone::open(tmp.path(), PASS),
            Err(ZoneError::Backend(_))
        ));
        Ok(())
    }

    #[test]
    fn counter_is_durable_before_the_proof_leaves() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("z");
        let (mut zone, key, _) = enrolled(&dir)?;
        // A directory where the temporary file should go makes the write fail (even as root).
        let blocker = dir.join(format!("{ZONE_FILE}.tmp"));
        std::fs::create_dir(&blocker)?;
        let r = zone.prove(&challenge(&key, 50), &binding());
        std::fs::remove_dir(&blocker)?;
        assert!(
            matches!(r, Err(ZoneError::Backend(_))),
            "no proof without a durable counter"
        );
        assert_eq!(
            zone.state.last_counter, 0,
            "memory did not run ahead of the file"
        );
        zone.prove(&challenge(&key, 50), &binding())?;
        Ok(())
    }
}
