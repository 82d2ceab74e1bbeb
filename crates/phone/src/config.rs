//! The phone's configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
