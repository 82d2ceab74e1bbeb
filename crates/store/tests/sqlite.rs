//! SQLite-only checks: the file on disk, crash durability, schema versions.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::Connection;
use trustring_store::{
    CdrSigner, ChainReport, Enrolment, Eula, NewDevice, PoolCounts, Registration, RoutingProfile,
    SignedHead, SqliteStore, Store, StoreError, Subscriber, cdr_hash,
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
        zone_public_key: None,
        presented_at_ms: None,
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
    assert_eq!(store.schema_version().unwrap(), 6);
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
    assert_eq!(store.schema_version().unwrap(), 6);
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
    assert_eq!(store.schema_version().unwrap(), 6);
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
    raw2.execute_batch("DROP TRIGGER cdrs_no_delete; DROP TRIGGER cdr_entities_no_delete;")
        .unwrap();
    raw2.execute_batch("DELETE FROM cdr_entities WHERE cdr_id = 2; DELETE FROM cdrs WHERE id = 2;")
        .unwrap();
    let r = s2.verify_cdrs().unwrap();
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(3), "{r:?}");
    assert!(r.first_bad.unwrap().1.contains("link"));
}

/// A signing store in `dir` holding six records billed to acme and alice.
fn signed_six(dir: &Path) -> (SqliteStore, Connection) {
    let store = SqliteStore::open(&dir.join("trustring.db"))
        .unwrap()
        .with_cdr_signing(dir)
        .unwrap();
    for i in 1..=6 {
        let c = store
            .append_cdr(&cdr_fixture::cdr(
                &format!("c{i}"),
                1_000 * i,
                &["acme", "alice"],
            ))
            .unwrap();
        assert!(c.sig.is_some());
    }
    let raw = Connection::open(dir.join("trustring.db")).unwrap();
    (store, raw)
}

/// `cdr verify` with the public key and the head file.
fn verify_signed(store: &SqliteStore, dir: &Path) -> ChainReport {
    let key = CdrSigner::load_or_create(dir).unwrap().public_key();
    let head = SignedHead::read(&dir.join("cdr-head")).unwrap().unwrap();
    store
        .verify_cdrs_with(Some(&key), &[("cdr-head".to_owned(), head)])
        .unwrap()
}

fn bad(r: ChainReport) -> (i64, String) {
    let dbg = format!("{r:?}");
    r.first_bad.unwrap_or_else(|| panic!("not detected: {dbg}"))
}

/// What [`rechain`] does with the signatures.
enum Sigs<'a> {
    Keep,
    Drop,
    Sign(&'a CdrSigner),
}

/// Re-computes every hash from record 1 on, as someone who knows the (public) format would
/// after an edit.
fn rechain(raw: &Connection, sigs: Sigs<'_>) {
    let rows: Vec<(i64, String, i64, i64, String)> = raw
        .prepare("SELECT id, call_id, setup_ms, end_ms, body FROM cdrs ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = "0".repeat(64);
    for (id, call_id, setup_ms, end_ms, body) in rows {
        let entities: Vec<String> = raw
            .prepare("SELECT entity FROM cdr_entities WHERE cdr_id = ?1 ORDER BY entity")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
        let hash = cdr_hash(&prev, id, &call_id, setup_ms, end_ms, &refs, &body);
        raw.execute(
            "UPDATE cdrs SET prev_hash = ?1, hash = ?2 WHERE id = ?3",
            rusqlite::params![prev, hash, id],
        )
        .unwrap();
        let sig = match sigs {
            Sigs::Keep => None,
            Sigs::Drop => Some(None),
            Sigs::Sign(s) => Some(Some(s.sign_record(id, &hash))),
        };
        if let Some(sig) = sig {
            raw.execute(
                "UPDATE cdrs SET sig = ?1 WHERE id = ?2",
                rusqlite::params![sig, id],
            )
            .unwrap();
        }
        prev = hash;
    }
}

/// Threat 18 (issue 12, item 9): the entity rows, call_id and setup time are checked, and with
/// the public key a re-chained history or a dropped tail is detected.
#[test]
fn signed_cdrs_detect_deleted_entity_rows_and_edited_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raw) = signed_six(dir.path());
    let r = verify_signed(&store, dir.path());
    assert_eq!(r.first_bad, None, "{r:?}");
    assert_eq!((r.records, r.signed, r.unsigned), (6, 6, None));
    assert_eq!(r.heads, vec![("cdr-head".to_owned(), 6)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("cdr-signing-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The schema refuses it...
    let err = raw
        .execute("DELETE FROM cdr_entities WHERE entity = 'alice'", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // ...someone with the file does it anyway: alice's records vanish from her view.
    raw.execute_batch("DROP TRIGGER cdr_entities_no_delete;")
        .unwrap();
    raw.execute("DELETE FROM cdr_entities WHERE entity = 'alice'", [])
        .unwrap();
    assert!(store.cdrs(0, i64::MAX, Some("alice")).unwrap().is_empty());
    for r in [
        store.verify_cdrs().unwrap(),
        verify_signed(&store, dir.path()),
    ] {
        let (id, why) = bad(r);
        assert_eq!(id, 1);
        assert!(
            why.contains("billing-entity rows") && why.contains("missing alice"),
            "{why}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (store, raw) = signed_six(dir.path());
    raw.execute_batch("DROP TRIGGER cdrs_no_update;").unwrap();
    raw.execute("UPDATE cdrs SET call_id = 'other' WHERE id = 3", [])
        .unwrap();
    let (id, why) = bad(store.verify_cdrs().unwrap());
    assert_eq!(id, 3);
    assert!(why.contains("call_id column"), "{why}");
    raw.execute("UPDATE cdrs SET call_id = 'c3' WHERE id = 3", [])
        .unwrap();
    raw.execute("UPDATE cdrs SET setup_ms = 999999 WHERE id = 4", [])
        .unwrap();
    let r = verify_signed(&store, dir.path());
    let (id, why) = bad(r);
    assert_eq!(id, 4);
    assert!(why.contains("setup_ms column"), "{why}");
}

#[test]
fn signed_cdrs_detect_an_edited_and_rechained_history() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raw) = signed_six(dir.path());
    raw.execute_batch("DROP TRIGGER cdrs_no_update; DROP TRIGGER cdrs_no_delete;")
        .unwrap();
    raw.execute(
        "UPDATE cdrs SET body = replace(body, '\"duration_ms\":60000', '\"duration_ms\":1') \
         WHERE id = 1",
        [],
    )
    .unwrap();
    // Signatures left as they were: the chain is consistent, the signatures are not.
    rechain(&raw, Sigs::Keep);
    assert_eq!(
        store.verify_cdrs().unwrap().first_bad,
        None,
        "unkeyed: intact"
    );
    let r = verify_signed(&store, dir.path());
    let (id, why) = bad(r);
    assert_eq!(id, 1);
    assert!(why.contains("signature does not match"), "{why}");
    // Signatures removed: they all look like records from before signing began, but the
    // signed head names record 6 with its old hash.
    rechain(&raw, Sigs::Drop);
    let r = verify_signed(&store, dir.path());
    let (id, why) = bad(r);
    assert_eq!(id, 6);
    assert!(why.contains("rewritten"), "{why}");
    // Signed with another key: refused record by record.
    rechain(
        &raw,
        Sigs::Sign(&CdrSigner::from_seed([9; 32], dir.path().join("x"))),
    );
    let (id, why) = bad(verify_signed(&store, dir.path()));
    assert_eq!(id, 1);
    assert!(why.contains("signature"), "{why}");
    // And the server refuses to sign on over it.
    drop(store);
    let e = SqliteStore::open(&dir.path().join("trustring.db"))
        .unwrap()
        .with_cdr_signing(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("rewritten"), "{e}");
}

#[test]
fn signed_cdrs_detect_a_dropped_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raw) = signed_six(dir.path());
    raw.execute_batch(
        "PRAGMA foreign_keys = OFF; DROP TRIGGER cdrs_no_delete; \
         DROP TRIGGER cdr_entities_no_delete;",
    )
    .unwrap();
    raw.execute_batch("DELETE FROM cdrs WHERE id >= 5;")
        .unwrap();
    // The entity rows left behind give it away even without the key.
    let (id, why) = bad(store.verify_cdrs().unwrap());
    assert_eq!(id, 5);
    assert!(why.contains("removed"), "{why}");
    raw.execute_batch("DELETE FROM cdr_entities WHERE cdr_id >= 5;")
        .unwrap();
    assert_eq!(
        store.verify_cdrs().unwrap().first_bad,
        None,
        "unkeyed: intact"
    );
    let r = verify_signed(&store, dir.path());
    let (id, why) = bad(r);
    assert_eq!(id, 5);
    assert!(why.contains("records 5..6 were removed"), "{why}");
    drop(store);
    let e = SqliteStore::open(&dir.path().join("trustring.db"))
        .unwrap()
        .with_cdr_signing(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("removed") && e.contains("cdr verify"), "{e}");
}

#[test]
fn a_lost_key_or_head_stops_signing_rather_than_hiding_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _raw) = signed_six(dir.path());
    drop(store);
    let open = || {
        SqliteStore::open(&dir.path().join("trustring.db"))
            .unwrap()
            .with_cdr_signing(dir.path())
    };
    // Reopening is fine.
    drop(open().unwrap());
    let key = dir.path().join("cdr-signing-key");
    std::fs::rename(&key, dir.path().join("key.bak")).unwrap();
    let e = open().unwrap_err().to_string();
    assert!(e.contains("restore the key"), "{e}");
    assert!(!key.exists(), "no new key is made");
    std::fs::rename(dir.path().join("key.bak"), &key).unwrap();
    std::fs::remove_file(dir.path().join("cdr-head")).unwrap();
    let e = open().unwrap_err().to_string();
    assert!(e.contains("cdr-head is missing"), "{e}");
}
