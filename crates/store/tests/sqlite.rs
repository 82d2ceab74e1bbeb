//! SQLite-only checks: the file on disk, crash durability, schema versions.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::Connection;
use trustring_store::{Registration, RoutingProfile, SqliteStore, Store, Subscriber};

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
    }
}

#[test]
fn open_creates_a_private_wal_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/trustring.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
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
    assert_eq!(store.schema_version().unwrap(), 1);
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
