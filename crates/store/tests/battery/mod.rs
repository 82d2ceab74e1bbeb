//! The store battery: backend-independent checks of the [`Store`] contract.
//!
//! Every `battery_*` function takes a fresh, empty store (or a way to open one). A backend's
//! test file includes this module with `#[path = "battery/mod.rs"] mod battery;` and runs
//! each function against its own store (see `tests/battery.rs` for SQLite).

mod cdrs;
mod devices;
mod enrolment;
mod eulas;
mod events;
mod pool;
mod registrations;
mod subscribers;

pub(crate) use cdrs::*;
pub(crate) use devices::*;
pub(crate) use enrolment::*;
pub(crate) use eulas::*;
pub(crate) use events::*;
pub(crate) use pool::*;
pub(crate) use registrations::*;
pub(crate) use subscribers::*;
use trustring_store::{
    Enrolled, Enrolment, Eula, NewDevice, Registration, RoutingProfile, Store, Subscriber,
};

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
        device_id: None,
    }
}

pub(crate) const NOW: i64 = 1_700_000_000_000;
pub(crate) const LATER: i64 = NOW + 3_600_000;

/// A EULA version.
pub(crate) fn eula(version: &str, published_at_ms: i64) -> Eula {
    Eula {
        version: version.to_owned(),
        text: format!("The agreement, version {version}."),
        published_at_ms,
    }
}

/// An unused enrolment code for `user`, issued at [`NOW`], valid until [`LATER`].
pub(crate) fn code(hash: &str, user: &str) -> Enrolment {
    Enrolment {
        code_hash: hash.to_owned(),
        user: user.to_owned(),
        created_at_ms: NOW,
        expires_at_ms: LATER,
        used_at_ms: None,
        device_id: None,
        zone_public_key: None,
        presented_at_ms: None,
    }
}

/// A device to enrol, accepting EULA `eula_version`; its token hash is `token-<id>`.
pub(crate) fn new_device(id: &str, eula_version: &str) -> NewDevice {
    NewDevice {
        id: id.to_owned(),
        security_level: "software".to_owned(),
        zone_public_key: format!("pk-{id}"),
        eula_version: eula_version.to_owned(),
        eula_accepted_at_ms: NOW - 1_000,
        license_key_enc: format!("SECRET-LICENSE-{id}"),
        sip_ha1_md5: format!("SECRET-HA1-MD5-{id}"),
        sip_ha1_sha256: format!("SECRET-HA1-SHA256-{id}"),
        token_hash: format!("token-{id}"),
    }
}

/// `n` identifiers starting at `first`: `+15550000100`, ... (fixed width, so bytewise order is
/// numeric order).
pub(crate) fn identifiers(first: u32, n: u32) -> Vec<String> {
    (first..first + n).map(|i| format!("+1555{i:07}")).collect()
}

/// Subscribers `users`, EULA `v1` published and current, `pool` identifiers from 100.
pub(crate) fn provision(store: &dyn Store, users: &[&str], pool: u32) {
    for user in users {
        store.create_subscriber(&sub(user)).unwrap();
    }
    store.publish_eula(&eula("v1", NOW - 10_000)).unwrap();
    assert_eq!(
        store.add_identifiers(&identifiers(100, pool)).unwrap(),
        pool as usize
    );
}

/// Issues a code `code-<device>` for `user` and enrols device `device` with it at [`NOW`].
pub(crate) fn enrol(store: &dyn Store, user: &str, device: &str) -> Enrolled {
    let hash = format!("code-{device}");
    store.create_enrolment(&code(&hash, user)).unwrap();
    store.enrol(&hash, NOW, &new_device(device, "v1")).unwrap()
}

/// Calls the macro `$backends` with the name of every battery test: each backend's runner
/// (`tests/battery.rs`, `tests/postgres.rs`) gets the one list, so no test is run on one
/// backend and forgotten on the other.
macro_rules! with_battery_tests {
    ($backends:ident) => {
        $backends!(
            battery_subscribers_crud,
            battery_subscriber_conflict,
            battery_profile_round_trip,
            battery_registration_put_replace,
            battery_registration_order,
            battery_registration_changes_batch,
            battery_expiry_and_purge,
            battery_delete_registrations,
            battery_delete_subscriber_cascades,
            battery_concurrent,
            battery_pool_add_and_count,
            battery_pool_quarantine_release,
            battery_eula_publish_and_current,
            battery_eula_text_round_trip,
            battery_enrolment_codes,
            battery_enrol_success,
            battery_enrol_refusals,
            battery_enrol_without_eula,
            battery_code_bound_to_first_key,
            battery_device_service,
            battery_device_number,
            battery_device_registrations,
            battery_revoke_device,
            battery_delete_subscriber_revokes_devices,
            battery_device_debug_redacts,
            battery_security_events,
            battery_cdrs_append_query_verify,
            battery_cdrs_append_batch,
        );
    };
}
pub(crate) use with_battery_tests;
