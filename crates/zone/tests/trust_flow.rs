//! End to end, through the public API only: enrolment (EULA pool key encrypted at rest,
//! sealed delivery as JSON), then call-bound challenges and proofs over the header forms.

use std::time::{Duration, Instant};

use trustring_zone::authority::{AuthorityConfig, TrustAuthority, TrustFailure};
use trustring_zone::master::MasterKeyRing;
use trustring_zone::seal::{self, SealedPackage, ServerSigningKey};
use trustring_zone::software::{KdfParams, SoftwareZone};
use trustring_zone::{
    CallBinding, Challenge, LicenseKey, SecurityLevel, ServerPublicKey, TrustedZone, ZonePublicKey,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHEAP: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

#[test]
fn enrol_then_prove_calls() -> TestResult {
    let server_dir = tempfile::tempdir()?;
    let phone_dir = tempfile::tempdir()?;

    // Server: keys made on first start.
    let ring = MasterKeyRing::load_or_create(&server_dir.path().join("master.key"))?;
    let signer = ServerSigningKey::load_or_create(&server_dir.path().join("server.key"))?;

    // Phone: the zone makes its key pair and sends the public half (text form).
    let mut zone = SoftwareZone::init_with_params(&phone_dir.path().join("zone"), "1234", CHEAP)?;
    let zone_key_text = zone.public_key()?.to_string();

    // Server: the EULA was accepted; a key is drawn and stored encrypted.
    let device_id = "d-7k3q";
    let identifier = "+15557654321";
    let record = ring.encrypt(&LicenseKey::generate(), device_id)?;
    let key = ring.decrypt(&record, device_id)?;
    let zone_key: ZonePublicKey = zone_key_text.parse()?;
    let package = seal::seal_for_zone(&zone_key, device_id, identifier, &key, &signer)?;
    let json = serde_json::to_string(&package)?;
    let server_key_text = signer.public().to_string();
    assert!(!json.contains(identifier));

    // Phone: installs what came back.
    let package: SealedPackage = serde_json::from_str(&json)?;
    let server_key: ServerPublicKey = server_key_text.parse()?;
    zone.install(&package, &server_key)?;
    let status = zone.status()?;
    assert_eq!(status.security_level, SecurityLevel::Software);
    assert_eq!(status.device_id.as_deref(), Some(device_id));
    assert!(status.enrolled);
    assert!(!serde_json::to_string(&status)?.contains(identifier));

    // Calls.
    let mut authority = TrustAuthority::new(AuthorityConfig::default());
    authority.set_device(device_id, ring.decrypt(&record, device_id)?)?;
    let t0 = Instant::now();
    let unix_ms = 1_764_567_890_000;
    for n in 0..3u64 {
        let call_id = format!("call-{n}@example.com");
        let binding = CallBinding {
            call_id: &call_id,
            branch: "z9hG4bK.mobile",
        };
        let now = t0 + Duration::from_secs(n);
        let header = authority
            .issue(now, unix_ms + n, device_id, &binding)?
            .to_header();
        let challenge = Challenge::from_header(&header)?;
        let proof = zone.prove(&challenge, &binding)?.to_header();
        authority.verify_header(now, device_id, &binding, Some(&proof))?;
        assert_eq!(
            authority.verify_header(now, device_id, &binding, Some(&proof)),
            Err(TrustFailure::Replayed)
        );
    }

    // Revocation: the server stops trusting at once; the phone learns and stops proving.
    authority.revoke(device_id);
    let binding = CallBinding {
        call_id: "after@example.com",
        branch: "z9hG4bK.m",
    };
    assert_eq!(
        authority
            .issue(
                t0 + Duration::from_secs(10),
                unix_ms + 10,
                device_id,
                &binding
            )
            .err(),
        Some(TrustFailure::Revoked)
    );
    zone.mark_revoked("left the company")?;
    let forged = Challenge::new_signed(&key, device_id, unix_ms + 20, [0; 16], &binding);
    assert!(zone.prove(&forged, &binding).is_err());
    Ok(())
}

#[test]
fn ecdh_reference_opener_matches_the_sealer() -> TestResult {
    use p256::elliptic_curve::Generate as _;
    let signer = ServerSigningKey::generate();
    let secret = p256::SecretKey::generate_from_rng(&mut rand::rng());
    let zone_key = ZonePublicKey::p256_from_sec1(&secret.public_key().to_sec1_bytes())?;
    let key = LicenseKey::generate();
    let package = seal::seal_for_zone(&zone_key, "d-p11", "+15550000001", &key, &signer)?;
    package.verify(&signer.public())?;
    let (got, identifier) = seal::open_ecdh_aeskw(&package, &secret)?;
    assert_eq!(got.expose(), key.expose());
    assert_eq!(identifier.as_str(), "+15550000001");
    Ok(())
}
