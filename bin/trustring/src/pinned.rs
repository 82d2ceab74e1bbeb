//! HTTPS to the server with its key pinned (R27, R28): the client of `trustring device` (the
//! enrolment endpoint and the phone's own routes) and of `trustring admin` over HTTPS.
//!
//! ureq speaks HTTP; the TLS under it is ours: a connector that wraps each TCP connection in
//! rustls with [`tls::pinned_client_config`], which accepts the one server key whose
//! SHA-256 fingerprint it was given and nothing else (names, issuer and dates do not matter:
//! the pin is the trust anchor). Plain `http://` is refused before anything is sent.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tls::Fingerprint;
use tls::pki_types::ServerName;
use tls::rustls::{ClientConfig, ClientConnection, StreamOwned};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, TcpConnector, Transport,
    TransportAdapter,
};

/// Why a TLS connection to the server was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsRefusal {
    /// The server presented another key than the pinned one.
    KeyMismatch(Fingerprint),
    /// The other end does not speak TLS (plain HTTP, or another protocol).
    NotTls,
    /// Any other handshake failure.
    Handshake(String),
}

impl fmt::Display for TlsRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyMismatch(pin) => write!(
                f,
                "the server's TLS key is not the pinned one ({pin}): refusing it (a man in the \
                 middle, or not the server the enrolment URI names)"
            ),
            Self::NotTls => write!(
                f,
                "the server does not speak TLS (plain HTTP?): refusing it, enrolment and the \
                 phone's API need HTTPS"
            ),
            Self::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for TlsRefusal {}

/// The refusal inside a ureq error from [`agent`], if it was one.
pub(crate) fn refusal(err: &ureq::Error) -> Option<&TlsRefusal> {
    match err {
        ureq::Error::Io(e) => e.get_ref()?.downcast_ref::<TlsRefusal>(),
        _ => None,
    }
}

/// An HTTP agent that speaks only HTTPS, to the server whose key has fingerprint `pin`.
pub(crate) fn agent(pin: Fingerprint) -> anyhow::Result<ureq::Agent> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build();
    let tls = PinnedTls {
        config: tls::pinned_client_config(pin)?,
        pin,
    };
    Ok(ureq::Agent::with_parts(
        config,
        ().chain(TcpConnector::default()).chain(tls),
        DefaultResolver::default(),
    ))
}

/// `https://…` with the scheme checked: `http://` is refused with a clear error.
pub(crate) fn https_base(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") {
        anyhow::bail!(
            "{url}: plain http:// is refused: the server is reached over HTTPS only, with its \
             key pinned (give https://HOST:PORT and its fingerprint, or the enrolment URI)"
        );
    }
    if !lower.starts_with("https://") {
        anyhow::bail!("{url}: expected https://HOST:PORT");
    }
    Ok(url.to_owned())
}

/// Wraps the TCP transport in rustls with the pinned configuration.
struct PinnedTls {
    config: Arc<ClientConfig>,
    pin: Fingerprint,
}

impl fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTls").field("pin", &self.pin).finish()
    }
}

impl<In: Transport> Connector<In> for PinnedTls {
    type Out = PinnedTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() {
            return Err(ureq::Error::TlsRequired);
        }
        // The name is only sent as SNI (an IP address is not); the pin decides.
        let host = details
            .uri
            .host()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ureq::Error::BadUri(format!("bad host {host:?}")))?;
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| io::Error::other(TlsRefusal::Handshake(e.to_string())))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)
            .map_err(|e| io::Error::other(self.classify(&e)))?;
        Ok(Some(PinnedTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned { conn, sock },
        }))
    }
}

impl PinnedTls {
    fn classify(&self, e: &io::Error) -> TlsRefusal {
        use tls::rustls::Error as R;
        match e.get_ref().and_then(|i| i.downcast_ref::<R>()) {
            Some(R::InvalidCertificate(_)) => TlsRefusal::KeyMismatch(self.pin),
            Some(R::InvalidMessage(_)) => TlsRefusal::NotTls,
            Some(other) => TlsRefusal::Handshake(other.to_string()),
            None if e.kind() == io::ErrorKind::UnexpectedEof => TlsRefusal::NotTls,
            None => TlsRefusal::Handshake(e.to_string()),
        }
    }
}

/// A TLS connection under ureq's HTTP.
struct PinnedTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for PinnedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTransport").finish_non_exhaustive()
    }
}

impl Transport for PinnedTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_bases() {
        assert_eq!(
            https_base("https://127.0.0.1:8443/").ok().as_deref(),
            Some("https://127.0.0.1:8443")
        );
        let err = https_base("http://127.0.0.1:8080")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("plain http:// is refused"), "{err}");
        assert!(https_base("127.0.0.1:8443").is_err());
    }
}
