//! TLS for every trustring hop (R27, R28): the server's key and certificate, the rustls
//! configurations every listener and client uses, and public-key pinning.
//!
//! - [`ServerIdentity::load_or_create`]: the certificate and key the operator gives
//!   (`--tls-cert/--tls-key`), or a self-signed pair made on first start under `DATA/tls/`
//!   (key file mode 0600) and reused after. Its [`Fingerprint`] (SHA-256 of the certificate's
//!   SubjectPublicKeyInfo) is what enrolment URIs carry and phones pin.
//! - [`server_config`]: TLS 1.2 and 1.3 only (rustls offers nothing older), the ring provider.
//! - [`pinned_client_config`]: a client that accepts exactly one server key, whatever the
//!   certificate around it says (names, issuer, dates): the trust anchor is the fingerprint
//!   the operator handed over out of band, as an eSIM activation code carries its server's
//!   address. Handshake signatures are still verified against that key.
//!
//! Why pin the key and not the certificate: the operator may renew the certificate with the
//! same key without re-enrolling every phone; a new key is a new identity.

mod identity;
mod pin;

pub use identity::{CERT_FILE, KEY_FILE, ServerIdentity};
pub use pin::{Fingerprint, PinnedVerifier, pinned_client_config, spki_fingerprint};

use std::sync::Arc;

pub use rustls;
pub use rustls_pki_types as pki_types;

/// What can go wrong making or loading TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a key or certificate file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file held no certificate or no private key, or could not be decoded.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A certificate is not parsable X.509.
    #[error("certificate is not valid X.509: {0}")]
    Certificate(String),
    /// Making the self-signed certificate failed.
    #[error("could not make a certificate: {0}")]
    Generate(String),
    /// rustls refused the key or configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint string is not `sha256:` and 64 hex digits.
    #[error("bad fingerprint {0:?}: expected sha256: and 64 hex digits")]
    BadFingerprint(String),
}

/// The crypto provider every configuration here is built on: ring, which builds with the
/// C compiler alone (aws-lc-rs needs more of a toolchain); rustls marks it deprecated because
/// it lacks the post-quantum hybrid key exchange.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration for `identity`: TLS 1.2 and 1.3, no client certificates.
pub fn server_config(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake in memory; the client's error, if any.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<(), rustls::Error> {
        let name = pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            if let Err(e) = s.process_new_packets() {
                // Let the client see the server's alert.
                let mut out = Vec::new();
                let _ = s.write_tls(&mut out);
                let _ = c.read_tls(&mut &out[..]);
                c.process_new_packets()?;
                return Err(e);
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    #[test]
    fn pinned_client_accepts_its_key_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let names = vec!["localhost".to_owned()];
        let ours = ServerIdentity::load_or_create(&dir.path().join("a"), None, None, &names)
            .unwrap_or_else(|e| panic!("{e}"));
        let mitm = ServerIdentity::load_or_create(&dir.path().join("b"), None, None, &names)
            .unwrap_or_else(|e| panic!("{e}"));
        let client = pinned_client_config(ours.fingerprint).unwrap_or_else(|e| panic!("{e}"));
        let server = server_config(&ours).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(handshake(server, client.clone()), Ok(()));
        // A man in the middle with its own (equally self-signed, same names) certificate.
        let fake = server_config(&mitm).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            handshake(fake, client),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            ))
        );
    }
}
