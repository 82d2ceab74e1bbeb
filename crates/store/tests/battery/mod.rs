//! The store battery: backend-independent checks of the [`Store`] contract.
//!
//! Every `battery_*` function takes a fresh, empty store (or a way to open one). A backend's
//! test file includes this module with `#[path = "battery/mod.rs"] mod battery;` and runs
//! each function against its own store (see `tests/battery.rs` for SQLite).

mod registrations;
mod subscribers;

pub(crate) use registrations::*;
pub(crate) use subscribers::*;
use trustring_store::{Registration, RoutingProfile, Subscriber};

pub(crate) fn sub(user: &str) -> Subscriber {
    Subscriber {
        user: user.to_owned(),
        enterprise: "acme".to_owned(),
        ha1_md5: format!("md5-{user}"),
        ha1_sha256: format!("sha256-{user}"),
        profile: RoutingProfile::default(),
        created_at: 1_700_000_000,
    }
}

pub(crate) fn reg(user: &str, contact: &str, q: u16, expires_at_ms: i64) -> Registration {
    Registration {
        user: user.to_owned(),
        contact: contact.to_owned(),
        transport: "UDP".to_owned(),
        source: "192.0.2.1:5060".to_owned(),
        local: "198.51.100.1:5060".to_owned(),
        call_id: format!("call-{contact}"),
        cseq: 1,
        expires_at_ms,
        q,
    }
}

pub(crate) const NOW: i64 = 1_700_000_000_000;
pub(crate) const LATER: i64 = NOW + 3_600_000;
