//! Runs the store battery (`tests/battery/`) against SQLite: a fresh file-backed store in a
//! temporary directory, and a fresh in-memory store.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

#[path = "battery/mod.rs"]
mod battery;

use std::path::Path;

use trustring_store::SqliteStore;

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
);

#[test]
fn sqlite_file_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    battery::battery_durable_across_reopen(&|| Box::new(sqlite_file(dir.path())));
}
