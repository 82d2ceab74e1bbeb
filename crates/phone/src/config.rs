//! The phone's configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sip_core::message::Uri;
use sip_core::transaction::Timers;

use crate::PhoneError;

/// Longest device id accepted in [`PhoneConfig::contact_instance`].
const MAX_DEVICE_ID_LEN: usize = 128;

/// What the phone needs to register and take calls.
#[derive(Clone)]
pub struct PhoneConfig {
    /// The registrar / proxy: REGISTERs go here, and in-dialog requests whose next hop is
    /// not an IP address (a host name) are sent here as an outbound proxy.
    pub server: SocketAddr,
    /// Where to bind the UDP socket (port 0: any free port). With an unspecified address
    /// (`0.0.0.0`, `::`) the address advertised in Via and Contact is the one the host uses
    /// to reach [`Self::server`].
    pub local: SocketAddr,
    /// The SIP domain: the registrar's Request-URI `sip:DOMAIN` and the host of the AOR.
    pub domain: String,
    /// The subscriber whose address of record `sip:AOR_USER@DOMAIN` is registered (To and
    /// From of the REGISTER), e.g. `alice`.
    pub aor_user: String,
    /// The device's digest user name, e.g. `~d-7k3q`.
    pub auth_user: String,
    /// The device's digest password. Never logged, never in `Debug`.
    pub password: String,
    /// Registration lifetime asked for, in seconds (default 300). The registrar may grant
    /// less; the phone refreshes at half of what was granted.
    pub expires: u32,
    /// Answer incoming calls automatically after this delay; `None`: only on
    /// [`crate::PhoneHandle::answer`].
    pub answer_after: Option<Duration>,
    /// The device id, sent as the `trustring-device` URI parameter of the Contact (see the
    /// crate docs). Letters, digits and `-_.!~*'()` only.
    pub contact_instance: String,
    /// RFC 3261 timers T1, T2, T4 (defaults 500 ms, 4 s, 5 s). Lower them only in tests.
    pub timers: Timers,
    /// How SIP reaches the server: UDP (the default) or TLS to [`Self::server`]'s TLS port.
    pub transport: SipTransport,
}

/// The phone's SIP transport.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum SipTransport {
    /// SIP over UDP (RFC 3261 §18): one socket, every message a datagram.
    #[default]
    Udp,
    /// SIP over TLS (RFC 3261 §26): one connection to the server, open for the phone's
    /// life. The server reaches a contact registered over TLS only over the connection its
    /// REGISTER came on, so incoming calls arrive on it too; when it closes the binding is
    /// gone and the phone stops ([`crate::PhoneEvent::Disconnected`]).
    Tls(TlsClient),
}

impl SipTransport {
    /// The Via transport token.
    pub(crate) fn token(&self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tls(_) => "TLS",
        }
    }

    /// Reliable transports have no retransmissions (RFC 3261 §17.1.1.2, §17.1.2.2).
    pub(crate) fn is_reliable(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

/// How the phone verifies the server it connects to over TLS.
#[derive(Clone)]
pub struct TlsClient {
    /// The rustls client configuration (its certificate verifier decides whom to trust).
    pub config: Arc<tls::rustls::ClientConfig>,
    /// The name sent as SNI and checked by a name-based verifier; `None`: the server's IP
    /// address (no SNI, and a verifier that checks names needs the IP in the certificate).
    pub server_name: Option<String>,
}

impl TlsClient {
    /// Trusts exactly the server key `pin` (what enrolment URIs carry, `sha256:…` of its
    /// SubjectPublicKeyInfo), as `device enroll` does for HTTPS: the operator's fingerprint
    /// is the trust anchor, not a CA, so a self-signed server certificate is fine.
    pub fn pinned(pin: tls::Fingerprint) -> Result<Self, PhoneError> {
        let config =
            tls::pinned_client_config(pin).map_err(|e| PhoneError::Config(e.to_string()))?;
        Ok(Self {
            config,
            server_name: None,
        })
    }
}

impl fmt::Debug for SipTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp => f.write_str("Udp"),
            Self::Tls(t) => f
                .debug_struct("Tls")
                .field("server_name", &t.server_name)
                .finish_non_exhaustive(),
        }
    }
}

impl PhoneConfig {
    /// A configuration with the defaults: bind any free port on all interfaces of the
    /// server's address family, `expires` 300 s, no auto-answer, RFC 3261 timers.
    pub fn new(
        server: SocketAddr,
        domain: impl Into<String>,
        aor_user: impl Into<String>,
        auth_user: impl Into<String>,
        password: impl Into<String>,
        contact_instance: impl Into<String>,
    ) -> Self {
        let any = match server.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Self {
            server,
            local: SocketAddr::new(any, 0),
            domain: domain.into(),
            aor_user: aor_user.into(),
            auth_user: auth_user.into(),
            password: password.into(),
            expires: 300,
            answer_after: None,
            contact_instance: contact_instance.into(),
            timers: Timers::default(),
            transport: SipTransport::Udp,
        }
    }

    /// Checks every field that goes into a SIP message, so that building one never fails.
    pub(crate) fn validate(&self) -> Result<(), PhoneError> {
        let bad = |what: &str| Err(PhoneError::Config(what.to_owned()));
        if Uri::parse(&format!("sip:{}", self.domain)).map_or(true, |u| {
            u.user.is_some() || !u.params.is_empty() || u.headers.is_some()
        }) {
            return bad("domain must be a host name or address, optionally with a port");
        }
        if self.aor_user.is_empty() || !self.aor_user.bytes().all(is_user_char) {
            return bad("aor_user must be a non-empty SIP user name without escapes");
        }
        if self.auth_user.is_empty() || self.auth_user.chars().any(char::is_control) {
            return bad("auth_user must be non-empty, without control characters");
        }
        if self.password.chars().any(char::is_control) {
            return bad("password must not contain control characters");
        }
        if self.contact_instance.is_empty()
            || self.contact_instance.len() > MAX_DEVICE_ID_LEN
            || !self.contact_instance.bytes().all(is_unreserved)
        {
            return bad("contact_instance must be 1 to 128 letters, digits or -_.!~*'()");
        }
        if self.expires == 0 {
            return bad("expires must be at least 1 second");
        }
        if self.timers.t1.is_zero() || self.timers.t2 < self.timers.t1 {
            return bad("timers: T1 must be positive and T2 at least T1");
        }
        if self.server.ip().is_unspecified() || self.server.port() == 0 {
            return bad("server must be a concrete address and port");
        }
        if let SipTransport::Tls(TlsClient {
            server_name: Some(name),
            ..
        }) = &self.transport
            && tls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return bad("the TLS server name must be a DNS name or an IP address");
        }
        Ok(())
    }
}

impl fmt::Debug for PhoneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoneConfig")
            .field("server", &self.server)
            .field("local", &self.local)
            .field("domain", &self.domain)
            .field("aor_user", &self.aor_user)
            .field("auth_user", &self.auth_user)
            .field("password", &"<redacted>")
            .field("expires", &self.expires)
            .field("answer_after", &self.answer_after)
            .field("contact_instance", &self.contact_instance)
            .field("timers", &self.timers)
            .field("transport", &self.transport)
            .finish()
    }
}

/// RFC 3261 `unreserved`.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c)
}

/// RFC 3261 `user` characters, escapes excluded.
fn is_user_char(c: u8) -> bool {
    is_unreserved(c) || b"&=+$,;?/".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PhoneConfig {
        PhoneConfig::new(
            "127.0.0.1:5060".parse().expect("literal"),
            "example.com",
            "alice",
            "~d-7k3q",
            "secret",
            "dev-1",
        )
    }

    #[test]
    fn defaults_validate() {
        let c = config();
        assert!(c.validate().is_ok());
        assert_eq!(c.expires, 300);
        assert!(c.local.ip().is_unspecified());
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn refuses_what_cannot_go_on_the_wire() {
        let cases: [fn(&mut PhoneConfig); 7] = [
            |c| c.domain = "a b".into(),
            |c| c.domain = "u@example.com".into(),
            |c| c.aor_user = "al ice".into(),
            |c| c.auth_user = "x\r\ny".into(),
            |c| c.contact_instance = "dev;evil=1".into(),
            |c| c.expires = 0,
            |c| c.server = "0.0.0.0:5060".parse().expect("literal"),
        ];
        for (i, edit) in cases.iter().enumerate() {
            let mut c = config();
            edit(&mut c);
            assert!(c.validate().is_err(), "case {i}");
        }
    }
}
