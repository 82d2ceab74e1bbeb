//! Public-key pinning: the fingerprint of a server key, and a rustls verifier that accepts
//! that key and no other.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::TlsError;

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo, written `sha256:` + 64 lowercase
/// hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    /// `sha256:HEX` (hex in either case, `:` between byte pairs allowed, as OpenSSL prints).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TlsError::BadFingerprint(s.to_owned());
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map(|_| &s[7..])
            .ok_or_else(bad)?;
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

/// The fingerprint of `cert`'s public key.
pub fn spki_fingerprint(cert: &CertificateDer<'_>) -> Result<Fingerprint, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let spki = parsed.tbs_certificate.subject_pki.raw;
    Ok(Fingerprint(Sha256::digest(spki).into()))
}

/// A server certificate verifier that accepts only the key with this fingerprint.
///
/// Names, issuer and validity dates are not checked: the pin is the trust anchor (see the
/// crate notes). The handshake signature is checked against the certificate's key as usual,
/// so only the holder of the pinned private key can complete a handshake.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    /// A verifier pinned to `pin`.
    pub fn new(pin: Fingerprint) -> Self {
        Self {
            pin,
            algorithms: crate::provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = spki_fingerprint(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if bool::from(got.0.ct_eq(&self.pin.0)) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = %self.pin, presented = %got, "server key does not match the pinned fingerprint");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration (TLS 1.2 and 1.3) that trusts only the server key `pin`.
pub fn pinned_client_config(pin: Fingerprint) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(pin)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text() {
        let fp = Fingerprint([0xab; 32]);
        let text = fp.to_string();
        assert_eq!(text, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<Fingerprint>().ok(), Some(fp));
        let colons = format!("SHA256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(colons.parse::<Fingerprint>().ok(), Some(fp));
        assert!("sha1:abcd".parse::<Fingerprint>().is_err());
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
        assert!("".parse::<Fingerprint>().is_err());
    }
}
