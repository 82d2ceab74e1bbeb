//! What the proxy is given before a test: its configuration and directory entries.

use std::time::{Duration, Instant};

use sip_core::auth::{Algorithm, ha1};
use sip_core::message::Uri;
use sip_core::proxy::{
    Binding, DEVICE_USER_PREFIX, DeviceEntry, ProxyConfig, Reach, SubscriberEntry, Target,
    Transport,
};

use super::{PROXY, REALM, addr};

/// The proxy's configuration: domain [`REALM`] at [`PROXY`].
pub fn config() -> ProxyConfig {
    ProxyConfig::new(REALM, addr(PROXY), [7; 32])
}

/// The HA1 pair of `user`/`pw`, or empty (no password) for `None`.
fn ha1s(user: &str, pw: Option<&str>) -> (String, String) {
    pw.map_or_else(Default::default, |pw| {
        (
            ha1(Algorithm::Md5, user, REALM, pw),
            ha1(Algorithm::Sha256, user, REALM, pw),
        )
    })
}

/// Subscriber `user` with password `pw` (none: no digest can succeed), ringing 30 s, no
/// ring delays.
pub fn subscriber(user: &str, pw: Option<&str>) -> SubscriberEntry {
    let (ha1_md5, ha1_sha256) = ha1s(user, pw);
    SubscriberEntry {
        user: user.into(),
        ha1_md5,
        ha1_sha256,
        ring_timeout: Duration::from_secs(30),
        ring_delays: Vec::new(),
    }
}

/// Phone `id` of subscriber `user`, with device password `pw` (digest user `~id`), its
/// service on and no number.
pub fn device(id: &str, user: &str, pw: Option<&str>) -> DeviceEntry {
    let (ha1_md5, ha1_sha256) = ha1s(&format!("{DEVICE_USER_PREFIX}{id}"), pw);
    DeviceEntry {
        id: id.into(),
        user: user.into(),
        ha1_md5,
        ha1_sha256,
        service_on: true,
        number: None,
    }
}

/// A direct UDP binding `sip:user@at` (of phone `device`, if any), registered from `at`
/// until `expires_at`.
pub fn binding(user: &str, at: &str, device: Option<&str>, expires_at: Instant) -> Binding {
    let uri = format!("sip:{user}@{at}");
    let target = Target {
        transport: Transport::Udp,
        addr: addr(at),
        conn: None,
    };
    Binding {
        contact: uri.clone(),
        uri: Uri::parse(&uri).expect("a contact URI"),
        target,
        source: target,
        call_id: format!("reg-{at}"),
        cseq: 1,
        expires_at,
        q: 1000,
        device: device.map(str::to_owned),
        reach: Reach::Direct,
    }
}
