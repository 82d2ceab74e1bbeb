//! The PKCS#11 zone's small, non-secret state file.
//!
//! It names the token objects and keeps the anti-replay counter, the service switch and the
//! revocation reason. Nothing in it is secret: the keys stay in the token. Writes are atomic
//! (0600 temporary file, fsync, rename, fsync of the directory) so a crash never leaves a
//! counter lower than one already used for a proof.

use std::fs;
use std::path::Path;

use crate::ZoneError;

/// File name of the state file inside the zone's state directory.
pub(super) const STATE_FILE: &str = "pkcs11-zone.json";

/// Current state file format.
const FORMAT: u8 = 1;

/// What the zone remembers between runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct State {
    /// Format version, 1.
    pub(super) format: u8,
    /// Label of the token holding the keys.
    pub(super) token_label: String,
    /// `CKA_ID` (hex) of the zone's P-256 key pair.
    pub(super) key_id: String,
    /// `CKA_ID` (hex) of the installed license key and identifier objects, while present.
    pub(super) material_id: Option<String>,
    /// Public device id from the first installed package; later packages must match it.
    pub(super) device_id: Option<String>,
    /// The server's Ed25519 key (hex), pinned by the first install.
    pub(super) server_key: Option<String>,
    /// Highest challenge counter accepted so far.
    pub(super) last_counter: u64,
    /// The user's single-number switch.
    pub(super) service_on: bool,
    /// Revocation reason, once revoked.
    pub(super) revoked: Option<String>,
    /// `CKA_APPLICATION` of the private data object holding the device secrets (SIP password,
    /// device token), while present. Absent from files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) secrets_id: Option<String>,
}

impl State {
    /// A fresh state for a newly generated zone key.
    pub(super) fn new(token_label: &str, key_id: String) -> Self {
        Self {
            format: FORMAT,
            token_label: token_label.to_owned(),
            key_id,
            material_id: None,
            device_id: None,
            server_key: None,
            last_counter: 0,
            service_on: true,
            revoked: None,
            secrets_id: None,
        }
    }

    /// Reads the state file.
    pub(super) fn load(path: &Path) -> Result<Self, ZoneError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ZoneError::Backend(format!(
                    "no PKCS#11 zone state at {}: run init first",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(ZoneError::Backend(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| {
            ZoneError::Backend(format!("corrupt zone state {}: {e}", path.display()))
        })?;
        if state.format != FORMAT {
            return Err(ZoneError::Backend(format!(
                "zone state {} has unknown format {}",
                path.display(),
                state.format
            )));
        }
        Ok(state)
    }

    /// Writes the state file atomically and durably, mode 0600.
    pub(super) fn save(&self, path: &Path) -> Result<(), ZoneError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ZoneError::Backend(format!("encoding zone state: {e}")))?;
        crate::util::write_private_atomic(path, &json)
            .map_err(|e| ZoneError::Backend(format!("writing {}: {e}", path.display())))
    }
}

/// Creates the state directory if missing and makes it private (0700).
pub(super) fn create_dir(dir: &Path) -> Result<(), ZoneError> {
    crate::util::ensure_private_dir(dir)
        .map_err(|e| ZoneError::Backend(format!("creating {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mode() -> Result<(), ZoneError> {
        let dir = tempfile::tempdir().map_err(|e| ZoneError::Backend(e.to_string()))?;
        let path = dir.path().join(STATE_FILE);
        let mut s = State::new("tok", "00ff".into());
        s.save(&path)?;
        s.last_counter = 42;
        s.revoked = Some("left".into());
        s.save(&path)?;
        assert_eq!(State::load(&path)?, s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path)
                .map_err(|e| ZoneError::Backend(e.to_string()))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join(format!("{STATE_FILE}.tmp")).exists());
        Ok(())
    }

    #[test]
    fn missing_and_corrupt_files_are_errors() -> Result<(), std::io::Error> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(STATE_FILE);
        assert!(matches!(State::load(&path), Err(ZoneError::Backend(_))));
        fs::write(&path, b"{not json")?;
        assert!(matches!(State::load(&path), Err(ZoneError::Backend(_))));
        Ok(())
    }
}
