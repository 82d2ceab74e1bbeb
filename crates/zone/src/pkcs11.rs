//! PKCS#11 zone backend (R6–R8, R14): the keys live in a token and never leave it.
//!
//! - `init` generates a P-256 key pair **in the token** (private half: token object,
//!   sensitive, non-extractable, derive only) and writes a small non-secret state file.
//! - `install` checks the server's Ed25519 signature (the first install pins the server key
//!   and the device id; later packages must match both), derives an AES-256 key-encryption
//!   key inside the token with `CKM_ECDH1_DERIVE` (`CKD_NULL`, the package's ephemeral point)
//!   and unwraps (`CKM_AES_KEY_WRAP`, RFC 3394) the license key and the padded identifier
//!   straight into sensitive, non-extractable generic-secret token objects. The KEK is a
//!   session object and is destroyed right after. See [`crate::seal`] for the scheme.
//! - `prove` verifies the challenge's server MAC inside the token (`C_Verify`,
//!   `CKM_SHA256_HMAC` over `SERVER_LABEL ‖ msg`), refuses a counter it has seen, makes the
//!   counter durable, then computes the proof inside the token (`C_Sign`, `CKM_SHA256_HMAC`
//!   over `PROOF_LABEL ‖ msg`).
//! - `mark_revoked` records the reason and destroys the license key and identifier objects.
//! - `store_secrets` keeps the normal world's credentials (SIP password, device token) in a
//!   private token data object ([`DEVICE_SECRETS_LABEL`]): readable only after logging in
//!   with the user PIN, and kept encrypted at rest by the token (SoftHSM2 encrypts private
//!   objects under its PIN-derived token key). They are the one thing that comes back out,
//!   because the device agent must use them.
//!
//! Only the public key, the status and proofs come out. The license key object allows
//! `CKA_SIGN`/`CKA_VERIFY` and nothing else: `CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_WRAP`,
//! `CKA_UNWRAP` and `CKA_DERIVE` are set false explicitly (SoftHSM turns some on otherwise).
//! The identifier object allows nothing at all; it is never read back.
//!
//! Token objects are found by label ([`ZONE_KEY_LABEL`], [`LICENSE_KEY_LABEL`],
//! [`IDENTIFIER_LABEL`]) and `CKA_ID`: the key pair has a random 16-byte id, the installed
//! secrets `key id ‖ 16 random bytes`, so several zones can share a token.
//!
//! The state file (`pkcs11-zone.json`, 0600) holds no secret but is not integrity protected:
//! whoever can rewrite it can lower the replay counter. That is the same party that holds the
//! user PIN; the server's own counter and nonce tracking remain the real replay defence.
//!
//! One module is loaded and `C_Initialize`d once per process and kept for the life of the
//! process (PKCS#11 login state is per process and token, so a token is opened by at most one
//! [`Pkcs11Zone`] at a time in a process). SoftHSM2 reads `SOFTHSM2_CONF` when the module is
//! first initialised.

mod state;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use self::state::{STATE_FILE, State};
use crate::proof::{self, CallBinding, Challenge, Proof};
use crate::seal::{DecodedBody, SCHEME_ECDH, SealedPackage, ServerPublicKey};
use crate::{DeviceSecrets, SecurityLevel, TrustedZone, ZoneError, ZonePublicKey, ZoneStatus};

/// Default module path of SoftHSM2 on Debian/Ubuntu.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// `CKA_LABEL` of the zone's P-256 key pair (public and private objects).
pub const ZONE_KEY_LABEL: &str = "trustring-zone-key";
/// `CKA_LABEL` of the installed license key (generic secret, sign/verify only).
pub const LICENSE_KEY_LABEL: &str = "trustring-license-key";
/// `CKA_LABEL` of the installed, padded identifier (generic secret, no usage at all).
pub const IDENTIFIER_LABEL: &str = "trustring-identifier";
/// `CKA_LABEL` of the private data object holding the device's SIP password and API token.
pub const DEVICE_SECRETS_LABEL: &str = "trustring-device-secrets";

/// DER of the named curve prime256v1 / secp256r1 (OID 1.2.840.10045.3.1.7), for `CKA_EC_PARAMS`.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Length of a SEC1 uncompressed P-256 point.
const P256_POINT_LEN: usize = 65;
/// Length of random `CKA_ID`s.
const ID_LEN: u32 = 16;

/// A trusted zone backed by a PKCS#11 token ([`SecurityLevel::Pkcs11`]).
///
/// Holds a logged-in read/write session on the token; dropping the zone closes it. `Send`,
/// not `Sync` (a PKCS#11 session is used from one thread at a time).
pub struct Pkcs11Zone {
    // Field order matters: the session closes (the last one logs the token out) before the
    // claim releases the token for another `Pkcs11Zone` in this process.
    session: Session,
    claim: Claim,
    state_path: PathBuf,
    /// `CKA_ID` of the zone key pair; ids of installed secrets start with it.
    key_id: Vec<u8>,
    state: State,
    public_key: ZonePublicKey,
    private_key: ObjectHandle,
    license_key: Option<ObjectHandle>,
}

impl std::fmt::Debug for Pkcs11Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Zone")
            .field("module", &self.claim.0.0)
            .field("token_label", &self.claim.0.1)
            .field("state_path", &self.state_path)
            .field("device_id", &self.state.device_id)
            .field("enrolled", &self.state.material_id.is_some())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Zone {
    /// Creates a new zone on the token labelled `token_label`: logs in as the user with `pin`,
    /// generates the zone's P-256 key pair inside the token and writes the state file
    /// (`pkcs11-zone.json`, mode 0600) into `state_dir` (created 0700 if missing).
    ///
    /// Fails if `state_dir` already holds a zone (use [`Pkcs11Zone::open`]), with
    /// [`ZoneError::WrongPin`] on a wrong PIN and [`ZoneError::Backend`] when the module or
    /// the token cannot be used.
    pub fn init(
        module: &Path,
        token_label: &str,
        pin: &str,
        state_dir: &Path,
    ) -> Result<Self, ZoneError> {
        let state_path = state_dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(ZoneError::Backend(format!(
                "a zone already exists in {}: open it instead",
                state_dir.display()
            )));
        }
        let logged = login(module, token_label, pin)?;
        let session = &logged.session;
        let key_id = session
            .generate_random_vec(ID_LEN)
            .map_err(|e| backend("generating a key id", &e))?;
        let label = ZONE_KEY_LABEL.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(false),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone()),
            Attribute::Id(key_id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Derive(true),
            Attribute::Sign(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Label(label),
            Attribute::Id(key_id.clone()),
        ];
        let (public_key, private_key) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| backend("generating the zone key pair", &e))?;
        let made = read_point(session, public_key).and_then(|point| {
            let state = State::new(token_label, hex(&key_id));
            state::create_dir(state_dir)?;
            state.save(&state_path)?;
            Ok((point, state))
        });
        let (public_point, state) = match made {
            Ok(v) => v,
            Err(e) => {
                // Leave no orphan key pair behind.
                let _ = session.destroy_object(private_key);
                let _ = session.destroy_object(public_key);
                return Err(e);
            }
        };
        Ok(Self {
            session: logged.session,
            claim: logged.claim,
            state_path,
            key_id,
            state,
            public_key: public_point,
            private_key,
            license_key: None,
        })
    }

    /// Opens the zone kept in `state_dir` on the token labelled `token_label`.
    ///
    /// [`ZoneError::WrongPin`] on a wrong PIN; [`ZoneError::Backend`] when there is no state,
    /// it names another token, or the token lacks the zone's objects.
    pub fn open(
        module: &Path,
        token_label: &str,
        pin: &str,
        state_dir: &Path,
    ) -> Result<Self, ZoneError> {
        let state_path = state_dir.join(STATE_FILE);
        let state = State::load(&state_path)?;
        if state.token_label != token_label {
            return Err(ZoneError::Backend(format!(
                "the zone in {} lives on token {:?}, not {token_label:?}",
                state_dir.display(),
                state.token_label
            )));
        }
        let key_id = unhex(&state.key_id)?;
        let logged = login(module, token_label, pin)?;
        let session = &logged.session;
        let private_key = find_one(
            session,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(ZONE_KEY_LABEL.as_bytes().to_vec()),
                Attribute::Id(key_id.clone()),
            ],
            "zone private key",
        )?;
        let public_key = find_one(
            session,
            &[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(ZONE_KEY_LABEL.as_bytes().to_vec()),
                Attribute::Id(key_id.clone()),
            ],
            "zone public key",
        )?;
        let public_point = read_point(session, public_key)?;
        let license_key = match &state.material_id {
            Some(id) => Some(find_one(
                session,
                &secret_template(LICENSE_KEY_LABEL, unhex(id)?),
                "license key",
            )?),
            None => None,
        };
        let zone = Self {
            session: logged.session,
            claim: logged.claim,
            state_path,
            key_id,
            state,
            public_key: public_point,
            private_key,
            license_key,
        };
        // A crash between unwrapping and saving the state can leave objects of an
        // unfinished install behind: remove them.
        zone.destroy_material_except(zone.state.material_id.as_deref());
        zone.destroy_secrets_except(zone.state.secrets_id.as_deref());
        Ok(zone)
    }

    /// Destroys this zone's device-secret data objects whose id is not `keep` (best effort).
    fn destroy_secrets_except(&self, keep: Option<&str>) {
        let session = &self.session;
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(DEVICE_SECRETS_LABEL.as_bytes().to_vec()),
        ];
        let Ok(found) = session.find_objects(&template) else {
            return;
        };
        let ours = hex(&self.key_id);
        for object in found {
            let app = session
                .get_attributes(object, &[AttributeType::Application])
                .ok()
                .and_then(|attrs| {
                    attrs.into_iter().find_map(|a| match a {
                        Attribute::Application(app) => Some(app),
                        _ => None,
                    })
                });
            let Some(app) = app else { continue };
            if app.starts_with(ours.as_bytes()) && Some(app.as_slice()) != keep.map(str::as_bytes) {
                let _ = session.destroy_object(object);
            }
        }
    }

    /// Destroys this zone's license key / identifier objects whose id is not `keep` (best
    /// effort). Objects of other zones on the same token are left alone.
    fn destroy_material_except(&self, keep: Option<&str>) {
        let session = &self.session;
        for label in [LICENSE_KEY_LABEL, IDENTIFIER_LABEL] {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            let Ok(found) = session.find_objects(&template) else {
                continue;
            };
            for object in found {
                let id = session
                    .get_attributes(object, &[AttributeType::Id])
                    .ok()
                    .and_then(|attrs| {
                        attrs.into_iter().find_map(|a| match a {
                            Attribute::Id(id) => Some(id),
                            _ => None,
                        })
                    });
                let Some(id) = id else { continue };
                if id.starts_with(&self.key_id) && Some(hex(&id).as_str()) != keep {
                    let _ = session.destroy_object(object);
                }
            }
        }
    }

    fn save(&self) -> Result<(), ZoneError> {
        self.state.save(&self.state_path)
    }

    /// Opens the package's ECDH + AES-KW body inside the token. Returns the new license key
    /// object and the material id of both new objects.
    fn unwrap_material(
        &self,
        ephemeral: &[u8],
        wrapped_key: &[u8],
        wrapped_identifier: &[u8],
    ) -> Result<(ObjectHandle, String), ZoneError> {
        let session = &self.session;
        let kek_template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Unwrap(true),
            Attribute::Wrap(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ];
        let derive = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), ephemeral));
        let kek = session
            .derive_key(&derive, self.private_key, &kek_template)
            .map_err(|e| match rv(&e) {
                Some(
                    RvError::MechanismParamInvalid
                    | RvError::DomainParamsInvalid
                    | RvError::ArgumentsBad,
                ) => ZoneError::BadPackage("ephemeral key rejected by the token".into()),
                _ => backend("ECDH in the token", &e),
            })?;
        let unwrapped = (|| {
            // `key id ‖ random`: scoped to this zone, fresh for each install.
            let mut material = self.key_id.clone();
            material.extend(
                session
                    .generate_random_vec(ID_LEN)
                    .map_err(|e| backend("generating a key id", &e))?,
            );
            let mut key_template = secret_template(LICENSE_KEY_LABEL, material.clone());
            key_template.extend(usage(true));
            let key = session
                .unwrap_key(&Mechanism::AesKeyWrap, kek, wrapped_key, &key_template)
                .map_err(|e| unwrap_error("license key", &e))?;
            let mut id_template = secret_template(IDENTIFIER_LABEL, material.clone());
            id_template.extend(usage(false));
            let identifier = session.unwrap_key(
                &Mechanism::AesKeyWrap,
                kek,
                wrapped_identifier,
                &id_template,
            );
            if let Err(e) = identifier {
                let _ = session.destroy_object(key);
                return Err(unwrap_error("identifier", &e));
            }
            Ok((key, hex(&material)))
        })();
        let destroyed = session.destroy_object(kek);
        let (key, material) = unwrapped?;
        if let Err(e) = destroyed {
            self.destroy_material_except(self.state.material_id.as_deref());
            return Err(backend("destroying the key-encryption key", &e));
        }
        // AES-KW of 40 bytes (`DecodedBody` guarantees it) opens to exactly 32.
        Ok((key, material))
    }

    /// HMAC-SHA256 of `data` with the license key, inside the token.
    fn sign(&self, key: ObjectHandle, data: &[u8]) -> Result<[u8; 32], ZoneError> {
        let mac = self
            .session
            .sign(&Mechanism::Sha256Hmac, key, data)
            .map_err(|e| backend("HMAC in the token", &e))?;
        <[u8; 32]>::try_from(mac.as_slice())
            .map_err(|_| ZoneError::Backend(format!("token HMAC is {} bytes", mac.len())))
    }
}

impl TrustedZone for Pkcs11Zone {
    fn public_key(&self) -> Result<ZonePublicKey, ZoneError> {
        Ok(self.public_key.clone())
    }

    fn status(&self) -> Result<ZoneStatus, ZoneError> {
        Ok(ZoneStatus {
            security_level: SecurityLevel::Pkcs11,
            device_id: self.state.device_id.clone(),
            enrolled: self.state.material_id.is_some(),
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
        let server_hex = hex(&server_key.0);
        if self
            .state
            .server_key
            .as_ref()
            .is_some_and(|pinned| *pinned != server_hex)
        {
            return Err(ZoneError::BadPackage(
                "server key differs from the one pinned at enrolment".into(),
            ));
        }
        package
            .verify(server_key)
            .map_err(|e| ZoneError::BadPackage(e.to_string()))?;
        if self
            .state
            .device_id
            .as_ref()
            .is_some_and(|device| *device != package.device_id)
        {
            return Err(ZoneError::BadPackage(
                "package is for another device".into(),
            ));
        }
        // Strict base64url, lengths, and the ephemeral point on P-256 (checked again by
        // the token).
        let DecodedBody::EcdhAesKw {
            ephemeral,
            wrapped_key,
            wrapped_identifier,
        } = package
            .body
            .decode()
            .map_err(|e| ZoneError::BadPackage(e.to_string()))?
        else {
            return Err(ZoneError::BadPackage(format!(
                "a PKCS#11 zone opens only {SCHEME_ECDH} packages, not {}",
                package.scheme()
            )));
        };

        let (key, material) =
            self.unwrap_material(&ephemeral, &wrapped_key, &wrapped_identifier)?;
        // Re-delivery to the same device (key rotation) keeps the counter.
        let previous = self.state.clone();
        self.state.device_id = Some(package.device_id.clone());
        self.state.material_id = Some(material);
        self.state.server_key = Some(server_hex);
        if let Err(e) = self.save() {
            self.state = previous;
            self.destroy_material_except(self.state.material_id.as_deref());
            return Err(e);
        }
        self.license_key = Some(key);
        // The previous package's objects, if any, are no longer needed.
        self.destroy_material_except(self.state.material_id.as_deref());
        Ok(())
    }

    fn prove(
        &mut self,
        challenge: &Challenge,
        binding: &CallBinding<'_>,
    ) -> Result<Proof, ZoneError> {
        if let Some(reason) = &self.state.revoked {
            return Err(ZoneError::Revoked(reason.clone()));
        }
        let (Some(key), Some(device_id)) = (self.license_key, self.state.device_id.as_deref())
        else {
            return Err(ZoneError::NotEnrolled);
        };
        if challenge.device_id != device_id {
            return Err(ZoneError::BadServerMac);
        }
        let data = proof::server_mac_input(challenge, binding);
        self.session
            .verify(&Mechanism::Sha256Hmac, key, &data, &challenge.server_mac)
            .map_err(|e| match rv(&e) {
                Some(RvError::SignatureInvalid | RvError::SignatureLenRange) => {
                    ZoneError::BadServerMac
                }
                _ => backend("verifying the server MAC in the token", &e),
            })?;
        if challenge.counter <= self.state.last_counter {
            return Err(ZoneError::StaleCounter {
                got: challenge.counter,
                last: self.state.last_counter,
            });
        }
        let last = self.state.last_counter;
        self.state.last_counter = challenge.counter;
        if let Err(e) = self.save() {
            self.state.last_counter = last;
            return Err(e);
        }
        let mac = self.sign(key, &proof::proof_input(challenge, binding))?;
        Ok(Proof {
            counter: challenge.counter,
            mac,
        })
    }

    fn set_service(&mut self, on: bool) -> Result<(), ZoneError> {
        let previous = self.state.service_on;
        self.state.service_on = on;
        self.save()
            .inspect_err(|_| self.state.service_on = previous)
    }

    fn store_secrets(&mut self, secrets: Option<&DeviceSecrets>) -> Result<(), ZoneError> {
        let session = &self.session;
        let created = match secrets {
            None => None,
            Some(secrets) => {
                let mut id = self.key_id.clone();
                id.extend(
                    session
                        .generate_random_vec(ID_LEN)
                        .map_err(|e| backend("generating an object id", &e))?,
                );
                let id = hex(&id);
                let value = secrets.encode();
                let object = session
                    .create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Modifiable(false),
                        Attribute::Label(DEVICE_SECRETS_LABEL.as_bytes().to_vec()),
                        Attribute::Application(id.as_bytes().to_vec()),
                        Attribute::Value(value.to_vec()),
                    ])
                    .map_err(|e| backend("storing the device secrets in the token", &e))?;
                Some((object, id))
            }
        };
        let previous = self.state.secrets_id.clone();
        self.state.secrets_id = created.as_ref().map(|(_, id)| id.clone());
        if let Err(e) = self.save() {
            self.state.secrets_id = previous;
            if let Some((object, _)) = created {
                let _ = self.session.destroy_object(object);
            }
            return Err(e);
        }
        // The previous object, if any, is no longer needed.
        self.destroy_secrets_except(self.state.secrets_id.as_deref());
        Ok(())
    }

    fn secrets(&self) -> Result<Option<DeviceSecrets>, ZoneError> {
        let Some(id) = &self.state.secrets_id else {
            return Ok(None);
        };
        let object = find_one(
            &self.session,
            &[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(DEVICE_SECRETS_LABEL.as_bytes().to_vec()),
                Attribute::Application(id.as_bytes().to_vec()),
            ],
            "device secrets",
        )?;
        let value = self
            .session
            .get_attributes(object, &[AttributeType::Value])
            .map_err(|e| backend("reading the device secrets", &e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(zeroize::Zeroizing::new(v)),
                _ => None,
            })
            .ok_or_else(|| ZoneError::Backend("token did not return the device secrets".into()))?;
        DeviceSecrets::decode(&value)
            .map(Some)
            .ok_or_else(|| ZoneError::Backend("device secrets in the token are corrupt".into()))
    }

    fn mark_revoked(&mut self, reason: &str) -> Result<(), ZoneError> {
        // Same rules as the software zone: printable, bounded, never empty.
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(crate::software::MAX_REASON_CHARS)
            .collect();
        let previous = self.state.clone();
        self.state.revoked = Some(if reason.is_empty() {
            "revoked".to_owned()
        } else {
            reason
        });
        // Revocation is final: the license key and the identifier are destroyed in the token.
        self.state.material_id = None;
        if let Err(e) = self.save() {
            self.state = previous;
            return Err(e);
        }
        self.license_key = None;
        self.destroy_material_except(None);
        Ok(())
    }
}

/// The process-wide context for `module`: loaded and `C_Initialize`d on first use, then kept
/// for the life of the process (never finalised, so zones and audits can share it).
///
/// For audits and tests that inspect the token directly: it gives nothing beyond what a
/// holder of the user PIN already has, and the zone's secrets are sensitive and
/// non-extractable.
pub fn module_context(module: &Path) -> Result<Pkcs11, ZoneError> {
    static CONTEXTS: OnceLock<Mutex<Vec<(PathBuf, Pkcs11)>>> = OnceLock::new();
    let key = module
        .canonicalize()
        .map_err(|e| ZoneError::Backend(format!("PKCS#11 module {}: {e}", module.display())))?;
    let mut contexts = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((_, ctx)) = contexts.iter().find(|(path, _)| *path == key) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&key).map_err(|e| {
        ZoneError::Backend(format!("loading PKCS#11 module {}: {e}", key.display()))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Someone else in this process initialised the same library: share it.
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => return Err(backend("C_Initialize", &e)),
    }
    contexts.push((key, ctx.clone()));
    Ok(ctx)
}

/// Tokens (module, label) held by a live `Pkcs11Zone` in this process.
fn claims() -> MutexGuard<'static, HashSet<(PathBuf, String)>> {
    static CLAIMS: OnceLock<Mutex<HashSet<(PathBuf, String)>>> = OnceLock::new();
    CLAIMS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// This process's hold on a token (module, label); released on drop.
struct Claim((PathBuf, String));

impl Claim {
    fn take(module: &Path, token_label: &str) -> Result<Self, ZoneError> {
        let key = (
            module
                .canonicalize()
                .unwrap_or_else(|_| module.to_path_buf()),
            token_label.to_owned(),
        );
        if !claims().insert(key.clone()) {
            return Err(ZoneError::Backend(format!(
                "token {token_label:?} is already open in this process"
            )));
        }
        Ok(Self(key))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        claims().remove(&self.0);
    }
}

/// A logged-in session and the claim on its token. Fields drop in order: session first.
struct LoggedIn {
    session: Session,
    claim: Claim,
}

/// Loads the module, finds the token by label, claims it for this process and logs in.
fn login(module: &Path, token_label: &str, pin: &str) -> Result<LoggedIn, ZoneError> {
    let ctx = module_context(module)?;
    let slot = find_slot(&ctx, token_label)?;
    let claim = Claim::take(module, token_label)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| backend("opening a session", &e))?;
    let pin = AuthPin::from(pin.to_owned());
    session
        .login(UserType::User, Some(&pin))
        .map_err(|e| match rv(&e) {
            Some(RvError::PinIncorrect | RvError::PinLenRange) => ZoneError::WrongPin,
            Some(RvError::PinLocked) => {
                ZoneError::Backend("token PIN is locked (too many wrong PINs)".into())
            }
            Some(RvError::UserAlreadyLoggedIn) => ZoneError::Backend(format!(
                "token {token_label:?} is already logged in by other code in this process"
            )),
            _ => backend("C_Login", &e),
        })?;
    Ok(LoggedIn { session, claim })
}

fn find_slot(ctx: &Pkcs11, token_label: &str) -> Result<Slot, ZoneError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| backend("listing slots", &e))?;
    let mut found = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| backend("reading token info", &e))?;
        if info.label() == token_label {
            if found.is_some() {
                return Err(ZoneError::Backend(format!(
                    "more than one token is labelled {token_label:?}"
                )));
            }
            found = Some(slot);
        }
    }
    found.ok_or_else(|| ZoneError::Backend(format!("no token labelled {token_label:?}")))
}

fn find_one(
    session: &Session,
    template: &[Attribute],
    what: &str,
) -> Result<ObjectHandle, ZoneError> {
    let found = session
        .find_objects(template)
        .map_err(|e| backend("searching the token", &e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(ZoneError::Backend(format!("{what} not found in the token"))),
        _ => Err(ZoneError::Backend(format!("{what} found more than once"))),
    }
}

/// Class, key type, persistence and protection of the unwrapped secrets.
fn secret_template(label: &str, id: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ]
}

/// Usage flags: HMAC sign/verify for the license key (`mac`), nothing for the identifier.
fn usage(mac: bool) -> [Attribute; 7] {
    [
        Attribute::Sign(mac),
        Attribute::Verify(mac),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

/// Reads `CKA_EC_POINT` (DER OCTET STRING or raw) as a SEC1 uncompressed point.
fn read_point(session: &Session, public_key: ObjectHandle) -> Result<ZonePublicKey, ZoneError> {
    let attrs = session
        .get_attributes(public_key, &[AttributeType::EcPoint])
        .map_err(|e| backend("reading the public key", &e))?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| ZoneError::Backend("token did not return CKA_EC_POINT".into()))?;
    let point = match raw.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == P256_POINT_LEN => rest.to_vec(),
        p if p.len() == P256_POINT_LEN => raw,
        _ => {
            return Err(ZoneError::Backend(format!(
                "unexpected CKA_EC_POINT of {} bytes",
                raw.len()
            )));
        }
    };
    ZonePublicKey::p256_from_sec1(&point)
        .map_err(|_| ZoneError::Backend("token public key is not a P-256 point".into()))
}

fn unwrap_error(what: &str, e: &CkError) -> ZoneError {
    match rv(e) {
        Some(
            RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            // SoftHSM 2.6 answers a failed AES-KW integrity check with CKR_GENERAL_ERROR.
            | RvError::GeneralError,
        ) => ZoneError::BadPackage(format!("{what} does not open for this zone")),
        _ => backend(&format!("unwrapping the {what} in the token"), e),
    }
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn backend(what: &str, e: &CkError) -> ZoneError {
    match rv(e) {
        Some(code) => ZoneError::Backend(format!("{what}: {code:?}")),
        None => ZoneError::Backend(format!("{what}: {e}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, ZoneError> {
    let bad = || ZoneError::Backend(format!("bad object id {text:?} in the zone state"));
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() -> Result<(), ZoneError> {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff")?, bytes);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert!(unhex("é1").is_err());
        Ok(())
    }
}
