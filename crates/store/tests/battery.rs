//! Runs the store battery (`tests/battery/`) against SQLite: a fresh file-backed store in a
//! temporary directory, and a fresh in-memory store.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

#[path = "battery/mod.rs"]
mod battery;

use std::path::Path;
use std::sync::Arc;

use trustring_store::{SqliteStore, Store};

fn sqlite_file(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("trustring-data").join("trustring.db")).unwrap()
}

/// Runs each battery function against a fresh file-backed and a fresh in-memory store.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(#[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                super::battery::$name(&super::sqlite_file(dir.path()));
            })*
        }
        mod sqlite_memory {
            $(#[test]
            fn $name() {
                super::battery::$name(&trustring_store::SqliteStore::open_in_memory().unwrap());
            })*
        }
    };
}

backends!(
    battery_subscribers_crud,
    battery_subscriber_conflict,
    battery_profile_round_trip,
    battery_registration_put_replace,
    battery_registration_order,
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
);

#[test]
fn sqlite_file_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    battery::battery_durable_across_reopen(&|| Box::new(sqlite_file(dir.path())));
}

#[test]
fn sqlite_file_provisioning_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    battery::battery_provisioning_durable_across_reopen(&|| Box::new(sqlite_file(dir.path())));
}

#[test]
fn sqlite_file_concurrent_enrol() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    battery::battery_concurrent_enrol(&[store]);
}

#[test]
fn sqlite_memory_concurrent_enrol() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    battery::battery_concurrent_enrol(&[store]);
}

#[test]
fn sqlite_file_concurrent_first_presentation_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    let b: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    battery::battery_concurrent_first_presentation(&[a, b]);
}

/// Two "nodes": two stores (two connections) on one file; `BEGIN IMMEDIATE` and the busy
/// timeout serialize their enrolments.
#[test]
fn sqlite_file_concurrent_enrol_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    let b: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    battery::battery_concurrent_enrol(&[a, b]);
}

/// Two "nodes" appending CDRs at once: `BEGIN IMMEDIATE` keeps one chain.
#[test]
fn sqlite_file_concurrent_cdr_appends_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    let b: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    battery::battery_concurrent_cdr_appends(&[a, b]);
}

/// Two "nodes" writing security events while a reader pages through them.
#[test]
fn sqlite_file_concurrent_security_events_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    let b: Arc<dyn Store> = Arc::new(sqlite_file(dir.path()));
    battery::battery_concurrent_security_events(&[a, b]);
}
