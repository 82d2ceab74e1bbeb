//! The server's trust authority wired into the SIP core (R14), and the keys provisioning
//! needs (R4, R7): the master key ring that keeps license keys encrypted at rest and the
//! key that signs sealed packages.
//!
//! The authority is shared: the proxy task asks it for challenges and proof checks through
//! [`Gate`], and device changes (enrolment, on/off, revocation) update it from the admin
//! API's side. A `std` mutex is enough: each call is a few microseconds of HMAC.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context;
use sip_core::proxy::{DeviceEntry, TrustGate, TrustRefusal};
use store::Device;
use zone::authority::{AuthorityConfig, TrustAuthority, TrustFailure};
use zone::master::MasterKeyRing;
use zone::{CallBinding, ServerSigningKey};

/// The shared authority.
pub(crate) type Authority = Arc<Mutex<TrustAuthority>>;

pub(crate) fn new_authority() -> Authority {
    Arc::new(Mutex::new(TrustAuthority::new(AuthorityConfig::default())))
}

/// The master key ring: `TRUSTRING_MASTER_KEY` if set, else `DATA/master.key`, created
/// (mode 0600) on first start. See docs/trust.md for rotation.
pub(crate) fn master_keys(data: &Path) -> anyhow::Result<MasterKeyRing> {
    match std::env::var("TRUSTRING_MASTER_KEY") {
        Ok(v) if !v.trim().is_empty() => MasterKeyRing::from_env_value(v.trim())
            .context("TRUSTRING_MASTER_KEY is not a valid key"),
        _ => {
            let path = data.join(zone::master::MASTER_KEY_FILE);
            MasterKeyRing::load_or_create(&path)
                .with_context(|| format!("loading master key {}", path.display()))
        }
    }
}

/// The package-signing key in `DATA/server-signing-key` (created on first start, 0600).
pub(crate) fn signing_key(data: &Path) -> anyhow::Result<ServerSigningKey> {
    let path = data.join("server-signing-key");
    ServerSigningKey::load_or_create(&path)
        .with_context(|| format!("loading package-signing key {}", path.display()))
}

/// What the SIP core needs of a stored device, `None` if it must not ring (revoked).
pub(crate) fn device_entry(d: &Device) -> Option<DeviceEntry> {
    d.revoked.is_none().then(|| DeviceEntry {
        id: d.id.clone(),
        user: d.user.clone(),
        ha1_md5: d.sip_ha1_md5.clone(),
        ha1_sha256: d.sip_ha1_sha256.clone(),
        service_on: d.service_on,
        number: d.number.clone(),
    })
}

/// Loads (or drops, if revoked) a device's license key into the authority.
pub(crate) fn load_device(authority: &Authority, keys: &MasterKeyRing, d: &Device) {
    let mut a = authority.lock().unwrap_or_else(PoisonError::into_inner);
    if d.revoked.is_some() {
        a.revoke(&d.id);
        return;
    }
    match keys.decrypt(&d.license_key_enc, &d.id) {
        Ok(key) => {
            if let Err(e) = a.set_device(&d.id, key) {
                tracing::error!(device = %d.id, error = %e, "device id unusable for trust checks");
            }
        }
        Err(e) => {
            tracing::error!(device = %d.id, error = %e, "cannot decrypt the device's license key: wrong master key?");
        }
    }
}

/// The proxy's [`TrustGate`] over the shared authority.
pub(crate) struct Gate(pub(crate) Authority);

fn refusal(f: &TrustFailure) -> TrustRefusal {
    TrustRefusal {
        kind: f.code().to_owned(),
        detail: f.to_string(),
    }
}

fn unix_ms() -> u64 {
    u64::try_from(crate::serve::unix_ms()).unwrap_or(0)
}

impl TrustGate for Gate {
    fn challenge(
        &mut self,
        now: Instant,
        device: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, TrustRefusal> {
        let binding = CallBinding { call_id, branch };
        let mut a = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        a.issue(now, unix_ms(), device, &binding)
            .map(|c| c.to_header())
            .map_err(|f| refusal(&f))
    }

    fn verify(
        &mut self,
        now: Instant,
        device: &str,
        call_id: &str,
        branch: &str,
        proof: Option<&str>,
    ) -> Result<(), TrustRefusal> {
        let binding = CallBinding { call_id, branch };
        let mut a = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        a.verify_header(now, device, &binding, proof)
            .map_err(|f| refusal(&f))
    }

    fn forget(&mut self, _device: &str, call_id: &str, branch: &str) {
        let binding = CallBinding { call_id, branch };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(&binding);
    }
}

/// `trustring master-key rotate`: adds a new current key to `DATA/master.key` and
/// re-encrypts every stored license key under it (run it with the server stopped; with
/// `TRUSTRING_MASTER_KEY`, put the new key first yourself and run `reencrypt`).
pub(crate) fn rotate(data: &Path, db: Option<&str>, rotate_file: bool) -> anyhow::Result<()> {
    let ring = if rotate_file {
        let path = data.join(zone::master::MASTER_KEY_FILE);
        MasterKeyRing::rotate_file(&path).with_context(|| format!("rotating {}", path.display()))?
    } else {
        master_keys(data)?
    };
    let db = db.map_or_else(
        || data.join("trustring.db").to_string_lossy().into_owned(),
        str::to_owned,
    );
    let store =
        store::open(&db).with_context(|| format!("opening store {}", store::redact_url(&db)))?;
    let mut n = 0;
    for d in store.devices(None).context("listing devices")? {
        let stale = ring
            .needs_reencrypt(&d.license_key_enc)
            .with_context(|| format!("the key record of device {} is unreadable", d.id))?;
        if !stale {
            continue;
        }
        let enc = ring
            .reencrypt(&d.license_key_enc, &d.id)
            .with_context(|| format!("re-encrypting the key of device {}", d.id))?;
        store
            .set_license_key_enc(&d.id, &enc)
            .with_context(|| format!("storing device {}", d.id))?;
        n += 1;
    }
    println!(
        "current master key {}; {n} license key record(s) re-encrypted",
        ring.current().id()
    );
    Ok(())
}
