//! SQLite-only checks: the file on disk, crash durability, schema versions.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::Connection;
use trustring_store::{
    Enrolment, Eula, NewDevice, PoolCounts, Registration, RoutingProfile, SqliteStore, Store,
    StoreError, Subscriber,
};

/// Set in the child process of [`committed_writes_survive_abort`]: the database path.
const CHILD_ENV: &str = "TRUSTRING_STORE_TEST_ABORT_CHILD";

fn alice() -> Subscriber {
    Subscriber {
        user: "alice".to_owned(),
        enterprise: "acme".to_owned(),
        ha1_md5: "m".to_owned(),
        ha1_sha256: "s".to_owned(),
        profile: RoutingProfile::default(),
        created_at: 1,
    }
}

fn alice_reg() -> Registration {
    Registration {
        user: "alice".to_owned(),
        contact: "sip:alice@192.0.2.1".to_owned(),
        transport: "UDP".to_owned(),
        source: "192.0.2.1:5060".to_owned(),
        local: "198.51.100.1:5060".to_owned(),
        call_id: "c".to_owned(),
        cseq: 1,
        expires_at_ms: i64::MAX,
        q: 1000,
        device_id: None,
    }
}

fn v1() -> Eula {
    Eula {
        version: "v1".to_owned(),
        text: "t".to_owned(),
        published_at_ms: 1,
    }
}

fn code(hash: &str) -> Enrolment {
    Enrolment {
        code_hash: hash.to_owned(),
        user: "alice".to_owned(),
        created_at_ms: 1,
        expires_at_ms: i64::MAX,
        used_at_ms: None,
        device_id: None,
    }
}

fn phone(id: &str) -> NewDevice {
    NewDevice {
        id: id.to_owned(),
        security_level: "software".to_owned(),
        zone_public_key: "pk".to_owned(),
        eula_version: "v1".to_owned(),
        eula_accepted_at_ms: 1,
        license_key_enc: "k".to_owned(),
        sip_ha1_md5: "m".to_owned(),
        sip_ha1_sha256: "s".to_owned(),
        token_hash: format!("t-{id}"),
    }
}

/// Alice with a published EULA, `n` identifiers and an enrolled phone `phone-1`.
fn provision_alice(store: &SqliteStore, n: usize) {
    store.create_subscriber(&alice()).unwrap();
    store.publish_eula(&v1()).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("+1555{i:07}")).collect();
    assert_eq!(store.add_identifiers(&ids).unwrap(), n);
    store.create_enrolment(&code("c1")).unwrap();
    store.enrol("c1", 2, &phone("phone-1")).unwrap();
}

#[test]
fn open_creates_a_private_wal_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/trustring.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 4);
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    }
}

/// Set in the child process of [`open_bare_file_name`], which runs in a scratch directory.
const BARE_CHILD_ENV: &str = "TRUSTRING_STORE_TEST_BARE_CHILD";

#[test]
fn open_bare_file_name() {
    // `Path::parent` of a bare file name is "", which must not be "created".
    if std::env::var_os(BARE_CHILD_ENV).is_some() {
        SqliteStore::open(Path::new("bare.db")).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "open_bare_file_name", "--quiet"])
        .env(BARE_CHILD_ENV, "1")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.path().join("bare.db").is_file());
}

#[test]
fn reopen_keeps_schema_version_and_refuses_newer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring.db");
    drop(SqliteStore::open(&path).unwrap());
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 4);
    drop(store);

    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn open_rejects_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

/// A committed write survives the process dying without any cleanup (no drop, no
/// checkpoint): the child writes, then aborts; the parent reopens the file.
#[test]
fn committed_writes_survive_abort() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        store.create_subscriber(&alice()).unwrap();
        store.put_registration(&alice_reg()).unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring-data/trustring.db");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "committed_writes_survive_abort", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die, not exit cleanly");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.subscribers().unwrap(), vec![alice()]);
    assert_eq!(store.registrations(None, 0).unwrap(), vec![alice_reg()]);
}

/// Set in the child process of [`committed_enrolment_survives_abort`]: the database path.
const ENROL_CHILD_ENV: &str = "TRUSTRING_STORE_TEST_ENROL_ABORT_CHILD";

/// A committed enrolment and revocation survive the process dying without cleanup.
#[test]
fn committed_enrolment_survives_abort() {
    if let Ok(path) = std::env::var(ENROL_CHILD_ENV) {
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        provision_alice(&store, 3);
        store.create_enrolment(&code("c2")).unwrap();
        store.enrol("c2", 3, &phone("phone-2")).unwrap();
        store.revoke_device("phone-2", "left", 4).unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring-data/trustring.db");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "committed_enrolment_survives_abort",
            "--nocapture",
        ])
        .env(ENROL_CHILD_ENV, &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die, not exit cleanly");
    let store = SqliteStore::open(&path).unwrap();
    let devices = store.devices(Some("alice")).unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["phone-1", "phone-2"]);
    assert_eq!(devices[1].revoked.as_ref().unwrap().reason, "left");
    assert_eq!(
        store.pool_counts().unwrap(),
        PoolCounts {
            free: 1,
            assigned: 1,
            quarantined: 1
        }
    );
}

/// A version-1 database (subscribers and registrations only) is upgraded in place: the data
/// stays, old bindings have no device, and provisioning works.
#[test]
fn upgrade_from_version_1_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO subscribers (username, enterprise, ha1_md5, ha1_sha256, \
             ring_timeout_secs, ring_delays, created_at) \
             VALUES ('alice', 'acme', 'm', 's', 30, '[]', 1)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO registrations (username, contact, transport, source, local, call_id, \
             cseq, expires_at_ms, q) VALUES ('alice', 'sip:alice@192.0.2.1', 'UDP', \
             '192.0.2.1:5060', '198.51.100.1:5060', 'c', 1, 9223372036854775807, 1000)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 4);
    assert_eq!(store.subscribers().unwrap(), vec![alice()]);
    assert_eq!(store.registrations(None, 0).unwrap(), vec![alice_reg()]);
    provision_alice_existing(&store);
    assert_eq!(store.devices(None).unwrap().len(), 1);
}

fn provision_alice_existing(store: &SqliteStore) {
    store.publish_eula(&v1()).unwrap();
    store.add_identifiers(&["+15550000001".to_owned()]).unwrap();
    store.create_enrolment(&code("c1")).unwrap();
    store.enrol("c1", 2, &phone("phone-1")).unwrap();
}

/// Two stores on one file ("two nodes") see each other's writes at once: a revocation on
/// one is in force on the other.
#[test]
fn two_nodes_share_provisioning_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    provision_alice(&a, 2);
    let phone_reg = Registration {
        device_id: Some("phone-1".to_owned()),
        ..alice_reg()
    };
    b.put_registration(&phone_reg).unwrap();
    assert_eq!(a.registrations(None, 0).unwrap(), vec![phone_reg.clone()]);
    assert!(b.device("phone-1").unwrap().unwrap().revoked.is_none());

    a.revoke_device("phone-1", "non-payment", 10).unwrap();
    assert!(b.device("phone-1").unwrap().unwrap().revoked.is_some());
    assert_eq!(b.registrations(None, 0).unwrap(), vec![]);
    let err = b.put_registration(&phone_reg).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = b.revoke_device("phone-1", "again", 11).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

#[path = "battery/cdrs.rs"]
#[allow(dead_code, unreachable_pub)]
mod cdr_fixture;

/// R18 / threat 9: records cannot be changed through the schema, and a change made behind its
/// back (triggers dropped, row edited or deleted) is named by `verify_cdrs`.
#[test]
fn cdr_tampering_is_refused_or_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    for (i, call) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        store
            .append_cdr(&cdr_fixture::cdr(call, 1_000 * i as i64, &["acme"]))
            .unwrap();
    }
    let raw = Connection::open(&path).unwrap();
    let err = raw
        .execute(
            "UPDATE cdrs SET body = replace(body, '60000', '1') WHERE id = 2",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = raw
        .execute("DELETE FROM cdrs WHERE id = 2", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(store.verify_cdrs().unwrap().first_bad, None);

    // Someone with the file drops the guard and edits record 2's duration.
    raw.execute_batch("DROP TRIGGER cdrs_no_update; DROP TRIGGER cdrs_no_delete;")
        .unwrap();
    raw.execute(
        "UPDATE cdrs SET body = replace(body, '\"duration_ms\":60000', '\"duration_ms\":1') WHERE id = 2",
        [],
    )
    .unwrap();
    let r = store.verify_cdrs().unwrap();
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(2), "{r:?}");
    assert!(r.first_bad.unwrap().1.contains("changed"));

    // In a fresh chain, deleting record 2 breaks the link of record 3.
    let fresh = dir.path().join("u.db");
    let s2 = SqliteStore::open(&fresh).unwrap();
    for (i, call) in ["c1", "c2", "c3"].iter().enumerate() {
        s2.append_cdr(&cdr_fixture::cdr(call, i as i64, &["acme"]))
            .unwrap();
    }
    let raw2 = Connection::open(&fresh).unwrap();
    raw2.execute_batch("DROP TRIGGER cdrs_no_delete;").unwrap();
    raw2.execute_batch("DELETE FROM cdr_entities WHERE cdr_id = 2; DELETE FROM cdrs WHERE id = 2;")
        .unwrap();
    let r = s2.verify_cdrs().unwrap();
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(3), "{r:?}");
    assert!(r.first_bad.unwrap().1.contains("link"));
}
