//! The server's TLS key and certificate: given by the operator, or made on first start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Fingerprint, TlsError, spki_fingerprint};

/// The certificate file made under the TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// The key file made under the TLS directory (mode 0600).
pub const KEY_FILE: &str = "key.pem";

/// A certificate chain, its private key and the fingerprint of its public key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The chain, end-entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate's SubjectPublicKeyInfo.
    pub fingerprint: Fingerprint,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
    /// Whether it was made just now (first start).
    pub created: bool,
}

impl ServerIdentity {
    /// The operator's `cert` and `key` (PEM) when both are given; otherwise
    /// `dir/cert.pem` + `dir/key.pem`, made on first use as a self-signed certificate for
    /// `names` (DNS names or IP addresses) and kept for later starts.
    pub fn load_or_create(
        dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        names: &[String],
    ) -> Result<Self, TlsError> {
        if let (Some(cert), Some(key)) = (cert, key) {
            return Self::load(cert, key, false);
        }
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            return Self::load(&cert_path, &key_path, false);
        }
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        write_private(&key_path, made.signing_key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, made.cert.pem()).map_err(|e| io("writing", &cert_path, e))?;
        Self::load(&cert_path, &key_path, true)
    }

    fn load(cert: &Path, key: &Path, created: bool) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e))?;
        let first = certs.first().ok_or_else(|| TlsError::Pem {
            path: cert.display().to_string(),
            detail: "no certificate in the file".into(),
        })?;
        let fingerprint = spki_fingerprint(first)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
        Ok(Self {
            certs,
            key,
            fingerprint,
            cert_path: cert.to_owned(),
            created,
        })
    }
}

/// Writes `bytes` to a new file readable by its owner only, synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| io("creating", path, e))?;
    f.write_all(bytes).map_err(|e| io("writing", path, e))?;
    f.sync_all().map_err(|e| io("syncing", path, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn pem(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let tls = dir.path().join("tls");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = ServerIdentity::load_or_create(&tls, None, None, &names)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(first.created);
        let again = ServerIdentity::load_or_create(&tls, None, None, &names)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(tls.join(KEY_FILE))
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The operator's own files win.
        let other = dir.path().join("other");
        let theirs = ServerIdentity::load_or_create(&other, None, None, &names)
            .unwrap_or_else(|e| panic!("{e}"));
        let given = ServerIdentity::load_or_create(
            &tls,
            Some(&other.join(CERT_FILE)),
            Some(&other.join(KEY_FILE)),
            &names,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(given.fingerprint, theirs.fingerprint);
        assert_ne!(given.fingerprint, first.fingerprint);
        assert!(crate::server_config(&given).is_ok());
    }

    #[test]
    fn unreadable_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let err = ServerIdentity::load_or_create(dir.path(), Some(&junk), Some(&junk), &[])
            .expect_err("junk refused");
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }
}
