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

battery::with_battery_tests!(backends);

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
