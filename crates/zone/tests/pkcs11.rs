//! The PKCS#11 zone against SoftHSM2 (SPEC R6–R8, R14; SECURITY.md §2 and threat 6). Every
//! test body runs in a child process with its own SoftHSM2 tokens (`common::softhsm`).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use trustring_zone::pkcs11::{
    IDENTIFIER_LABEL, LICENSE_KEY_LABEL, Pkcs11Zone, ZONE_KEY_LABEL, module_context,
};
use trustring_zone::proof::{self, PROOF_LABEL};
use trustring_zone::seal::{SealError, seal_for_zone};
use trustring_zone::{
    CallBinding, Challenge, LicenseKey, SealedBody, SealedPackage, SecurityLevel, ServerPublicKey,
    ServerSigningKey, TrustedZone, ZoneError, ZonePublicKey,
};

use common::softhsm::{Env, PIN, TOKEN_A, TOKEN_B, TestResult, module};

// ---------------------------------------------------------------------------------------
// Server side helpers.

const IDENTIFIER: &str = "+15551230001";

/// The server side: its signing key and the license key it delivers.
struct Server {
    signer: ServerSigningKey,
    license: LicenseKey,
}

impl Server {
    fn new() -> Self {
        Self {
            signer: ServerSigningKey::generate(),
            license: LicenseKey::generate(),
        }
    }

    /// The same server (signing key) delivering a new license key.
    fn rotate(&self) -> Self {
        Self {
            signer: ServerSigningKey::from_bytes(&self.signer.to_bytes()),
            license: LicenseKey::generate(),
        }
    }

    fn public(&self) -> ServerPublicKey {
        self.signer.public()
    }

    /// The real server sealing (`seal::seal_for_zone`).
    fn seal(&self, zone: &ZonePublicKey, device_id: &str) -> Result<SealedPackage, SealError> {
        seal_for_zone(zone, device_id, IDENTIFIER, &self.license, &self.signer)
    }

    fn challenge(&self, device_id: &str, counter: u64, binding: &CallBinding<'_>) -> Challenge {
        challenge_with(&self.license, device_id, counter, binding)
    }
}

fn challenge_with(
    key: &LicenseKey,
    device_id: &str,
    counter: u64,
    binding: &CallBinding<'_>,
) -> Challenge {
    use rand::RngExt as _;
    Challenge::new_signed(key, device_id, counter, rand::rng().random(), binding)
}

fn binding() -> CallBinding<'static> {
    CallBinding {
        call_id: "a84b4c76e66710@pc33.example.com",
        branch: "z9hG4bK776asdhds",
    }
}

/// A fresh zone on `token`, enrolled as `device_id` by `server`.
fn enrolled(
    env: &Env,
    token: &str,
    server: &Server,
    device_id: &str,
) -> Result<Pkcs11Zone, Box<dyn std::error::Error>> {
    let mut zone = Pkcs11Zone::init(&module(), token, PIN, &env.state_dir(token))?;
    let package = server.seal(&zone.public_key()?, device_id)?;
    zone.install(&package, &server.public())?;
    Ok(zone)
}

/// A session on the token, for inspecting objects directly (the zone's login is shared).
fn inspect(token: &str) -> Result<Session, Box<dyn std::error::Error>> {
    let ctx = module_context(&module())?;
    for slot in ctx.get_slots_with_token()? {
        if ctx.get_token_info(slot)?.label() == token {
            return Ok(ctx.open_ro_session(slot)?);
        }
    }
    Err(format!("token {token} not found").into())
}

fn bools(
    session: &Session,
    object: ObjectHandle,
    types: &[AttributeType],
) -> Result<Vec<(AttributeType, bool)>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for attr in session.get_attributes(object, types)? {
        let pair = match attr {
            Attribute::Sensitive(b) => (AttributeType::Sensitive, b),
            Attribute::Extractable(b) => (AttributeType::Extractable, b),
            Attribute::AlwaysSensitive(b) => (AttributeType::AlwaysSensitive, b),
            Attribute::NeverExtractable(b) => (AttributeType::NeverExtractable, b),
            Attribute::Token(b) => (AttributeType::Token, b),
            Attribute::Private(b) => (AttributeType::Private, b),
            Attribute::Sign(b) => (AttributeType::Sign, b),
            Attribute::Verify(b) => (AttributeType::Verify, b),
            Attribute::Encrypt(b) => (AttributeType::Encrypt, b),
            Attribute::Decrypt(b) => (AttributeType::Decrypt, b),
            Attribute::Wrap(b) => (AttributeType::Wrap, b),
            Attribute::Unwrap(b) => (AttributeType::Unwrap, b),
            Attribute::Derive(b) => (AttributeType::Derive, b),
            other => return Err(format!("unexpected attribute {other:?}").into()),
        };
        out.push(pair);
    }
    Ok(out)
}

/// The one object of `class` labelled `label` on the token.
fn the_object(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<ObjectHandle, Box<dyn std::error::Error>> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    match found.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!("{} {label} objects", found.len()).into()),
    }
}

/// Asserts that `object`'s value is sensitive, the boolean attributes `on` are true and
/// `off` false.
fn assert_locked_down(
    session: &Session,
    object: ObjectHandle,
    on: &[AttributeType],
    off: &[AttributeType],
) -> TestResult {
    assert!(
        value_is_sensitive(session, object)?,
        "CKA_VALUE is sensitive"
    );
    let expected: Vec<(AttributeType, bool)> = (on.iter().map(|t| (*t, true)))
        .chain(off.iter().map(|t| (*t, false)))
        .collect();
    let types: Vec<AttributeType> = expected.iter().map(|(t, _)| *t).collect();
    assert_eq!(bools(session, object, &types)?, expected);
    Ok(())
}

/// `get_attribute_info(CKA_VALUE)` says Sensitive (cryptoki's `get_attributes` would just
/// return nothing).
fn value_is_sensitive(
    session: &Session,
    object: ObjectHandle,
) -> Result<bool, Box<dyn std::error::Error>> {
    let info = session.get_attribute_info(object, &[AttributeType::Value])?;
    Ok(matches!(info.as_slice(), [AttributeInfo::Sensitive]))
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, std::io::Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Tests.

token_test!(
    /// R6–R8, R14: init, seal, install, prove; the proof is the software HMAC with the same
    /// key and verifies on the server side; everything survives a reopen.
    enrolment_round_trip,
    &[TOKEN_A],
    |env| {
        let server = Server::new();
        let state_dir = env.state_dir(TOKEN_A);
        let mut zone = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &state_dir)?;
        let status = zone.status()?;
        assert_eq!(status.security_level, SecurityLevel::Pkcs11);
        assert!(!status.enrolled);
        assert!(status.service_on);
        assert_eq!(status.device_id, None);
        assert_eq!(status.revoked, None);
        let public = zone.public_key()?;
        let ZonePublicKey::P256(point) = &public else {
            return Err("a PKCS#11 zone has a P-256 key".into());
        };
        assert_eq!(point.len(), 65);
        assert_eq!(point.first(), Some(&0x04));
        p256::PublicKey::from_sec1_bytes(point)?;

        let b = binding();
        let challenge = server.challenge("dev-1", 1, &b);
        assert!(matches!(zone.prove(&challenge, &b), Err(ZoneError::NotEnrolled)));

        let package = server.seal(&public, "dev-1")?;
        zone.install(&package, &server.public())?;
        let status = zone.status()?;
        assert!(status.enrolled);
        assert_eq!(status.device_id.as_deref(), Some("dev-1"));

        for counter in [1, 2, 10] {
            let challenge = server.challenge("dev-1", counter, &b);
            let got = zone.prove(&challenge, &b)?;
            assert_eq!(got.counter, counter);
            let msg = proof::message("dev-1", counter, &challenge.nonce, &b);
            let expected = proof::mac(server.license.expose(), PROOF_LABEL, &msg);
            assert!(proof::mac_eq(&got.mac, &expected), "proof = software HMAC");
            assert!(!proof::mac_eq(&got.mac, &challenge.server_mac));
            assert_eq!(got, challenge.prove_with(&server.license, &b), "server-side check");
        }

        drop(zone);
        assert!(matches!(
            Pkcs11Zone::init(&module(), TOKEN_A, PIN, &state_dir),
            Err(ZoneError::Backend(_))
        ), "init refuses to overwrite a zone");
        let mut zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &state_dir)?;
        assert_eq!(zone.public_key()?, public, "same key after reopen");
        assert!(zone.status()?.enrolled);
        let challenge = server.challenge("dev-1", 11, &b);
        let got = zone.prove(&challenge, &b)?;
        let msg = proof::message("dev-1", 11, &challenge.nonce, &b);
        assert_eq!(got.mac, proof::mac(server.license.expose(), PROOF_LABEL, &msg));

        zone.set_service(false)?;
        assert!(!zone.status()?.service_on);
        drop(zone);
        let zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &state_dir)?;
        assert!(!zone.status()?.service_on, "service switch persisted");
        Ok(())
    }
);

token_test!(
    /// Threat 6: the license key and identifier are sensitive, non-extractable, sign/verify
    /// only; `wrap_key` on the license key fails; no KEK is left; neither secret is in the
    /// state file or, in clear, in the token directory.
    installed_secrets_cannot_leave_the_token,
    &[TOKEN_A],
    |env| {
        use AttributeType::{
            AlwaysSensitive, Decrypt, Derive, Encrypt, Extractable, NeverExtractable, Private,
            Sensitive, Sign, Token, Unwrap, Verify, Wrap,
        };
        let server = Server::new();
        let zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        let session = inspect(TOKEN_A)?;

        let license = the_object(&session, ObjectClass::SECRET_KEY, LICENSE_KEY_LABEL)?;
        assert!(session.get_attributes(license, &[AttributeType::Value])?.is_empty());
        assert_locked_down(
            &session,
            license,
            &[Token, Private, Sensitive, Sign, Verify],
            &[Extractable, Encrypt, Decrypt, Wrap, Unwrap, Derive],
        )?;
        let key_type = session.get_attributes(license, &[AttributeType::KeyType])?;
        assert_eq!(key_type, vec![Attribute::KeyType(KeyType::GENERIC_SECRET)]);

        // Try to wrap it out under a key we control.
        let wrapping = session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
            ],
        )?;
        let err = session
            .wrap_key(&Mechanism::AesKeyWrap, wrapping, license)
            .err()
            .ok_or("wrap_key exported the license key")?;
        assert!(
            matches!(rv(&err), Some(RvError::KeyUnextractable | RvError::KeyNotWrappable)),
            "wrap_key failed, but with {err}"
        );
        // Nor can it encrypt (no use as a decryption oracle either).
        assert!(session.encrypt(&Mechanism::AesEcb, license, &[0; 16]).is_err());

        // The identifier object allows nothing.
        let identifier = the_object(&session, ObjectClass::SECRET_KEY, IDENTIFIER_LABEL)?;
        assert_locked_down(
            &session,
            identifier,
            &[Sensitive],
            &[Extractable, Sign, Verify, Encrypt, Decrypt, Wrap, Unwrap, Derive],
        )?;

        // The zone's private key was born in the token and never left it.
        let private = the_object(&session, ObjectClass::PRIVATE_KEY, ZONE_KEY_LABEL)?;
        assert_locked_down(
            &session,
            private,
            &[Token, Sensitive, AlwaysSensitive, NeverExtractable, Derive],
            &[Extractable, Sign, Decrypt, Unwrap],
        )?;
        let err = session
            .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, private)
            .err()
            .ok_or("wrap_key exported the zone private key")?;
        assert!(matches!(
            rv(&err),
            Some(RvError::KeyUnextractable | RvError::KeyNotWrappable)
        ));

        // The ECDH-derived KEK was a session object and is gone.
        let aes = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ])?;
        assert_eq!(aes, vec![wrapping], "only the test's own AES key remains");

        // No secret in clear on disk: state file (0600) or token files.
        let state_file = env.state_dir(TOKEN_A).join("pkcs11-zone.json");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&state_file)?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "state file mode");
        }
        let license = server.license.expose();
        let hex_key: String = license.iter().map(|b| format!("{b:02x}")).collect();
        for (path, bytes) in files_under(&env.dir)? {
            for secret in [&license[..], IDENTIFIER.as_bytes(), hex_key.as_bytes()] {
                assert!(
                    !contains(&bytes, secret),
                    "{} holds a secret in clear",
                    path.display()
                );
            }
        }
        drop(zone);
        Ok(())
    }
);

token_test!(
    /// A wrong PIN is `WrongPin` (CKR_PIN_INCORRECT), for init and for open.
    wrong_pin_is_refused,
    &[TOKEN_A],
    |env| {
        let dir = env.state_dir(TOKEN_A);
        assert!(matches!(
            Pkcs11Zone::init(&module(), TOKEN_A, "9999", &dir),
            Err(ZoneError::WrongPin)
        ));
        assert!(!dir.join("pkcs11-zone.json").exists(), "nothing written");
        let zone = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &dir)?;
        let public = zone.public_key()?;
        drop(zone);
        assert!(matches!(
            Pkcs11Zone::open(&module(), TOKEN_A, "0000", &dir),
            Err(ZoneError::WrongPin)
        ));
        let zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &dir)?;
        assert_eq!(zone.public_key()?, public);
        // Unknown token and wrong token for this state are clear backend errors.
        drop(zone);
        assert!(matches!(
            Pkcs11Zone::open(&module(), "no-such-token", PIN, &dir),
            Err(ZoneError::Backend(_))
        ));
        assert!(matches!(
            Pkcs11Zone::init(&module(), "no-such-token", PIN, &env.state_dir("x")),
            Err(ZoneError::Backend(_))
        ));
        Ok(())
    }
);

token_test!(
    /// A challenge not MACed by our server (flipped bit, other key, other call, other device)
    /// gets `BadServerMac` and burns no counter: the zone is no proof oracle.
    bad_server_mac_is_refused,
    &[TOKEN_A],
    |env| {
        let server = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        let b = binding();

        let mut flipped = server.challenge("dev-1", 7, &b);
        if let Some(byte) = flipped.server_mac.first_mut() {
            *byte ^= 1;
        }
        let other_key = challenge_with(&LicenseKey::generate(), "dev-1", 7, &b);
        let other_call = server.challenge(
            "dev-1",
            7,
            &CallBinding {
                call_id: "other-call",
                branch: b.branch,
            },
        );
        let mut other_device = server.challenge("dev-2", 7, &b);
        let mut proof_as_mac = server.challenge("dev-1", 7, &b);
        let msg = proof::message("dev-1", 7, &proof_as_mac.nonce, &b);
        proof_as_mac.server_mac = proof::mac(server.license.expose(), PROOF_LABEL, &msg);
        for bad in [&flipped, &other_key, &other_call, &proof_as_mac] {
            assert!(
                matches!(zone.prove(bad, &b), Err(ZoneError::BadServerMac)),
                "{bad:?}"
            );
        }
        // A challenge for another device, even correctly MACed for it.
        assert!(matches!(zone.prove(&other_device, &b), Err(ZoneError::BadServerMac)));
        other_device.device_id = "dev-1".into();
        assert!(matches!(zone.prove(&other_device, &b), Err(ZoneError::BadServerMac)));

        let good = server.challenge("dev-1", 7, &b);
        assert_eq!(zone.prove(&good, &b)?.counter, 7, "counter 7 was not burnt");
        Ok(())
    }
);

token_test!(
    /// R14: a replayed or older counter is refused, also after the zone is reopened.
    replayed_counter_is_refused_also_after_reopen,
    &[TOKEN_A],
    |env| {
        let server = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        let b = binding();
        let challenge = server.challenge("dev-1", 5, &b);
        zone.prove(&challenge, &b)?;
        assert!(matches!(
            zone.prove(&challenge, &b),
            Err(ZoneError::StaleCounter { got: 5, last: 5 })
        ));
        assert!(matches!(
            zone.prove(&server.challenge("dev-1", 3, &b), &b),
            Err(ZoneError::StaleCounter { got: 3, last: 5 })
        ));

        drop(zone);
        let mut zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A))?;
        assert!(matches!(
            zone.prove(&challenge, &b),
            Err(ZoneError::StaleCounter { got: 5, last: 5 })
        ));
        assert!(matches!(
            zone.prove(&server.challenge("dev-1", 5, &b), &b),
            Err(ZoneError::StaleCounter { got: 5, last: 5 })
        ));
        zone.prove(&server.challenge("dev-1", 6, &b), &b)?;
        Ok(())
    }
);

token_test!(
    /// R9: once revoked, no proof, no install, and the secrets are gone from the token, for
    /// good (also after reopen).
    revoked_zone_refuses,
    &[TOKEN_A],
    |env| {
        let server = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        let b = binding();
        zone.prove(&server.challenge("dev-1", 1, &b), &b)?;
        zone.mark_revoked("left the company")?;
        assert!(matches!(
            zone.prove(&server.challenge("dev-1", 2, &b), &b),
            Err(ZoneError::Revoked(reason)) if reason == "left the company"
        ));
        assert_eq!(zone.status()?.revoked.as_deref(), Some("left the company"));
        assert!(!zone.status()?.enrolled, "nothing installed any more");

        let session = inspect(TOKEN_A)?;
        for label in [LICENSE_KEY_LABEL, IDENTIFIER_LABEL] {
            let left = session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])?;
            assert!(left.is_empty(), "{label} destroyed on revocation");
        }
        drop(session);

        let package = server.seal(&zone.public_key()?, "dev-1")?;
        assert!(matches!(
            zone.install(&package, &server.public()),
            Err(ZoneError::Revoked(_))
        ));
        drop(zone);
        let mut zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A))?;
        assert_eq!(zone.status()?.revoked.as_deref(), Some("left the company"));
        assert!(matches!(
            zone.prove(&server.challenge("dev-1", 3, &b), &b),
            Err(ZoneError::Revoked(_))
        ));
        Ok(())
    }
);

token_test!(
    /// R7: a package sealed to another zone, or altered, does not install.
    package_for_another_zone_fails,
    &[TOKEN_A, TOKEN_B],
    |env| {
        let server = Server::new();
        let mut zone_a = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A))?;
        let zone_b = Pkcs11Zone::init(&module(), TOKEN_B, PIN, &env.state_dir(TOKEN_B))?;
        assert_ne!(zone_a.public_key()?, zone_b.public_key()?);

        let for_b = server.seal(&zone_b.public_key()?, "dev-b")?;
        let got = zone_a.install(&for_b, &server.public());
        assert!(matches!(got, Err(ZoneError::BadPackage(_))), "{got:?}");
        let status = zone_a.status()?;
        assert!(!status.enrolled);
        assert_eq!(status.device_id, None);
        // Nothing half-installed is left in token A.
        let session = inspect(TOKEN_A)?;
        let secrets = session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?;
        assert!(secrets.is_empty(), "no secret objects after a failed install");
        drop(session);

        // Garbage in the body.
        let mut garbage = server.seal(&zone_a.public_key()?, "dev-a")?;
        if let SealedBody::EcdhAesKw { ephemeral, .. } = &mut garbage.body {
            *ephemeral = "not base64!".into();
        }
        assert!(matches!(
            zone_a.install(&garbage, &server.public()),
            Err(ZoneError::BadPackage(_))
        ));
        let mut off_curve = server.seal(&zone_a.public_key()?, "dev-a")?;
        if let SealedBody::EcdhAesKw { ephemeral, .. } = &mut off_curve.body {
            use base64::Engine as _;
            let mut p = vec![4u8];
            p.extend([1u8; 64]);
            *ephemeral = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p);
        }
        assert!(matches!(
            zone_a.install(&off_curve, &server.public()),
            Err(ZoneError::BadPackage(_))
        ));

        // The right package still installs and works.
        let for_a = server.seal(&zone_a.public_key()?, "dev-a")?;
        zone_a.install(&for_a, &server.public())?;
        let b = binding();
        zone_a.prove(&server.challenge("dev-a", 1, &b), &b)?;
        Ok(())
    }
);

token_test!(
    /// Re-delivery from the pinned server to the same device replaces the old key objects and
    /// keeps the counter; another server or another device id is refused; a second zone on an
    /// open token in the same process is refused (PKCS#11 login state is per process).
    reinstall_replaces_material,
    &[TOKEN_A],
    |env| {
        let first = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &first, "dev-1")?;
        let b = binding();
        zone.prove(&first.challenge("dev-1", 4, &b), &b)?;
        assert!(matches!(
            Pkcs11Zone::open(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A)),
            Err(ZoneError::Backend(_))
        ));

        // A valid package from another server: refused, the first server key is pinned.
        let rogue = Server::new();
        let got = zone.install(&rogue.seal(&zone.public_key()?, "dev-1")?, &rogue.public());
        assert!(matches!(got, Err(ZoneError::BadPackage(_))), "{got:?}");
        // Our server, but for another device id.
        let got = zone.install(&first.seal(&zone.public_key()?, "dev-2")?, &first.public());
        assert!(matches!(got, Err(ZoneError::BadPackage(_))), "{got:?}");
        zone.prove(&first.challenge("dev-1", 5, &b), &b)?;

        let second = first.rotate();
        let package = second.seal(&zone.public_key()?, "dev-1")?;
        zone.install(&package, &second.public())?;
        assert_eq!(zone.status()?.device_id.as_deref(), Some("dev-1"));
        assert!(matches!(
            zone.prove(&first.challenge("dev-1", 6, &b), &b),
            Err(ZoneError::BadServerMac)
        ));
        // Same device id: the counter carries on.
        assert!(matches!(
            zone.prove(&second.challenge("dev-1", 5, &b), &b),
            Err(ZoneError::StaleCounter { got: 5, last: 5 })
        ));
        zone.prove(&second.challenge("dev-1", 6, &b), &b)?;

        let session = inspect(TOKEN_A)?;
        let secrets = session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?;
        assert_eq!(secrets.len(), 2, "one license key and one identifier");
        Ok(())
    }
);

token_test!(
    /// The zone installs only what our server signed, for a P-256 zone.
    package_must_be_signed_by_our_server,
    &[TOKEN_A],
    |env| {
        let server = Server::new();
        let mut zone = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A))?;
        let public = zone.public_key()?;
        let good = server.seal(&public, "dev-1")?;

        let rogue = Server::new();
        let mut bad = vec![rogue.seal(&public, "dev-1")?];
        let mut other_device = good.clone();
        other_device.device_id = "dev-2".into();
        bad.push(other_device);
        let mut other_signature = good.clone();
        other_signature.signature = server.seal(&public, "dev-1")?.signature;
        bad.push(other_signature);
        let mut no_signature = good.clone();
        no_signature.signature.clear();
        bad.push(no_signature);
        let mut version = good.clone();
        version.version = 2;
        bad.push(version);
        // A correctly signed HPKE package is for software zones only.
        bad.push(seal_for_zone(
            &ZonePublicKey::X25519([9; 32]),
            "dev-1",
            IDENTIFIER,
            &server.license,
            &server.signer,
        )?);
        for package in &bad {
            let got = zone.install(package, &server.public());
            assert!(matches!(got, Err(ZoneError::BadPackage(_))), "{got:?}");
        }
        assert!(!zone.status()?.enrolled);
        let session = inspect(TOKEN_A)?;
        let secrets = session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?;
        assert!(secrets.is_empty(), "nothing installed");
        drop(session);

        zone.install(&good, &server.public())?;
        let b = binding();
        let challenge = server.challenge("dev-1", 1, &b);
        assert_eq!(zone.prove(&challenge, &b)?, challenge.prove_with(&server.license, &b));
        Ok(())
    }
);

token_test!(
    /// Two zones (state directories) on one token keep their own objects: opening, re-installing
    /// or revoking one never touches the other's secrets.
    zones_sharing_a_token_stay_apart,
    &[TOKEN_A],
    |env| {
        let (one, two) = (Server::new(), Server::new());
        let b = binding();
        let dir_one = env.state_dir("one");
        let dir_two = env.state_dir("two");
        let mut zone = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &dir_one)?;
        zone.install(&one.seal(&zone.public_key()?, "dev-1")?, &one.public())?;
        drop(zone);
        let mut zone = Pkcs11Zone::init(&module(), TOKEN_A, PIN, &dir_two)?;
        zone.install(&two.seal(&zone.public_key()?, "dev-2")?, &two.public())?;
        zone.prove(&two.challenge("dev-2", 1, &b), &b)?;
        drop(zone);

        let mut zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &dir_one)?;
        zone.prove(&one.challenge("dev-1", 1, &b), &b)?;
        zone.mark_revoked("non-payment")?;
        drop(zone);

        let mut zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &dir_two)?;
        zone.prove(&two.challenge("dev-2", 2, &b), &b)?;
        let session = inspect(TOKEN_A)?;
        let secrets = session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?;
        assert_eq!(secrets.len(), 2, "zone two's key and identifier remain");
        Ok(())
    }
);

token_test!(
    /// R14 end to end: the server's `TrustAuthority` issues the `Trust-Challenge` (EULA
    /// INVITE), the token answers with `Trust-Proof` (EULA OK), the authority accepts it once;
    /// a replayed or moved proof and a replayed challenge are refused.
    authority_accepts_token_proofs,
    &[TOKEN_A],
    |env| {
        use std::time::Instant;
        use trustring_zone::Proof;
        use trustring_zone::authority::{AuthorityConfig, TrustAuthority, TrustFailure};

        let server = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        let mut authority = TrustAuthority::new(AuthorityConfig::default());
        authority.set_device("dev-1", server.license.duplicate())?;
        let now = Instant::now();
        let b = binding();

        let challenge = authority.issue(now, 1_700_000_000_000, "dev-1", &b)?;
        let received = Challenge::from_header(&challenge.to_header())?;
        let proof = zone.prove(&received, &b)?;
        let header = proof.to_header();
        assert_eq!(Proof::from_header(&header)?, proof);
        authority.verify_header(now, "dev-1", &b, Some(&header))?;
        assert!(matches!(
            authority.verify_header(now, "dev-1", &b, Some(&header)),
            Err(TrustFailure::Replayed)
        ));
        assert!(matches!(
            zone.prove(&received, &b),
            Err(ZoneError::StaleCounter { .. })
        ));

        // A proof for one branch does not answer another branch's challenge.
        let other = CallBinding {
            call_id: b.call_id,
            branch: "z9hG4bKother",
        };
        let next = authority.issue(now, 1_700_000_000_001, "dev-1", &b)?;
        authority.issue(now, 1_700_000_000_001, "dev-1", &other)?;
        let proof = zone.prove(&next, &b)?;
        assert!(matches!(
            authority.verify(now, "dev-1", &other, &proof),
            Err(TrustFailure::WrongProof)
        ));
        authority.verify(now, "dev-1", &b, &proof)?;
        Ok(())
    }
);

token_test!(
    /// Issue #11 item 6: the device's SIP password and API token are a private token object,
    /// read back after a reopen, replaced or erased cleanly, never in clear on disk.
    device_secrets_are_private_token_objects,
    &[TOKEN_A],
    |env| {
        use trustring_zone::DeviceSecrets;
        use trustring_zone::pkcs11::DEVICE_SECRETS_LABEL;

        const PASSWORD: &str = "7b1e0c9a4d2f8e3b6a5c1d0e9f8a7b6c";
        const TOKEN: &str = "device-token-5f3c2a1b0e9d8c7b6a594837";
        let server = Server::new();
        let mut zone = enrolled(env, TOKEN_A, &server, "dev-1")?;
        assert!(zone.secrets()?.is_none());
        zone.store_secrets(Some(&DeviceSecrets::new("old", "old")))?;
        zone.store_secrets(Some(&DeviceSecrets::new(PASSWORD, TOKEN)))?;
        drop(zone);

        let zone = Pkcs11Zone::open(&module(), TOKEN_A, PIN, &env.state_dir(TOKEN_A))?;
        let got = zone.secrets()?.ok_or("secrets kept")?;
        assert_eq!(got.sip_password.as_str(), PASSWORD);
        assert_eq!(got.token.as_str(), TOKEN);
        let data = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(DEVICE_SECRETS_LABEL.as_bytes().to_vec()),
        ];
        {
            let session = inspect(TOKEN_A)?;
            let objects = session.find_objects(&data)?;
            assert_eq!(objects.len(), 1, "the replaced object is gone");
            let attrs = session.get_attributes(
                objects[0],
                &[AttributeType::Private, AttributeType::Token],
            )?;
            assert!(
                attrs
                    .iter()
                    .all(|a| matches!(a, Attribute::Private(true) | Attribute::Token(true))),
                "{attrs:?}"
            );
        }
        for (path, bytes) in files_under(&env.dir)? {
            for secret in [PASSWORD, TOKEN] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{} holds a device secret in clear",
                    path.display()
                );
            }
        }
        let mut zone = zone;
        zone.store_secrets(None)?;
        assert!(zone.secrets()?.is_none());
        assert!(inspect(TOKEN_A)?.find_objects(&data)?.is_empty());
        Ok(())
    }
);
