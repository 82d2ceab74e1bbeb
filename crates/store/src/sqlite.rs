//! SQLite implementation of [`Store`](crate::Store): one connection behind a mutex, WAL journal,
//! `synchronous=FULL` (a committed write survives `kill -9` and power loss), foreign keys on.
//! Methods that read before they write run in `BEGIN IMMEDIATE` transactions, so they stay
//! correct when several connections (several stores, several processes) share the file.

mod cdrs;
mod migrate;
mod provisioning;
mod queries;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use crate::signing::{CdrPublicKey, CdrSigner, SignedHead};
use crate::{ChainReport, StoreError};

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite-backed [`Store`](crate::Store) (the embedded default).
///
/// Every method is a single SQL statement or a single `BEGIN IMMEDIATE` transaction, hence
/// atomic. Calls are serialized on one connection; run them from tokio's blocking pool
/// (`spawn_blocking`). Several stores may open the same file (a write waits up to 5 s for
/// another connection's write lock).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Signs every appended CDR and writes the signed head ([`SqliteStore::with_cdr_signing`]).
    signer: Option<CdrSigner>,
}

impl SqliteStore {
    /// Opens the database file at `path`, creating it and its parent directories if needed
    /// (new directories get mode 0700 and a new file 0600 on Unix: it holds digest HA1s), and
    /// applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let ctx = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Database(format!("open {}: {what}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir_builder()
                .create(dir)
                .map_err(|e| ctx("create directory", &e))?;
        }
        private_file_options()
            .open(path)
            .map_err(|e| ctx("create file", &e))?;
        let conn = Connection::open(path).map_err(|e| ctx("connect", &e))?;
        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| ctx("journal_mode", &e))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(ctx("journal_mode", &format!("got {journal}, want wal")));
        }
        Self::setup(conn)
    }

    /// Opens a fresh in-memory database (for tests; nothing is persisted).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| StoreError::Database(format!("open in-memory: {e}")))?;
        Self::setup(conn)
    }

    /// The schema version of the database (the number of applied migrations).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrate::version(&self.conn())
    }

    /// Signs every CDR appended from now on with the key in `dir/cdr-signing-key` (made, mode
    /// 0600, if there is none) and keeps the signed head `dir/cdr-head` (`docs/cdr.md`).
    ///
    /// Refuses (so that the evidence is not overwritten by the next record) when the head
    /// present does not match this database: not signed by this key (the key was replaced),
    /// naming a record the database does not hold (truncated) or one with another hash
    /// (rewritten); or when the head is missing while the database holds signed records.
    /// The operator runs `trustring cdr verify` and, to go on anyway, moves the head aside.
    /// Without a head yet (first start) it writes one for the current newest record, which
    /// anchors the records written before signing began.
    pub fn with_cdr_signing(self, dir: &Path) -> Result<Self, StoreError> {
        cdrs::may_create_key(&self.conn(), dir)?;
        let signer = CdrSigner::load_or_create(dir)?;
        self.with_cdr_signer(signer)
    }

    /// [`SqliteStore::with_cdr_signing`] with a given signer.
    pub fn with_cdr_signer(mut self, signer: CdrSigner) -> Result<Self, StoreError> {
        cdrs::adopt_signer(&mut self.conn(), &signer)?;
        self.signer = Some(signer);
        Ok(self)
    }

    /// The public half of the CDR signing key, if records are signed.
    pub fn cdr_public_key(&self) -> Option<CdrPublicKey> {
        self.signer.as_ref().map(CdrSigner::public_key)
    }

    /// [`Store::verify_cdrs`](crate::Store::verify_cdrs), and with `key` every signature and
    /// every head of `heads` (each named by where it came from): a record whose signature is
    /// not `key`'s, an unsigned record after a signed one or past the newest signed head, a
    /// head not signed by `key`, a head naming a record the chain does not hold (the chain
    /// was truncated) or one with another hash (rewritten). Without `key`, heads are still
    /// compared with the chain (but could be forged).
    pub fn verify_cdrs_with(
        &self,
        key: Option<&CdrPublicKey>,
        heads: &[(String, SignedHead)],
    ) -> Result<ChainReport, StoreError> {
        cdrs::verify(&self.conn(), key, heads)
    }

    /// Per-connection settings, then migrations.
    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        let ctx =
            |what: &str, e: rusqlite::Error| StoreError::Database(format!("open: {what}: {e}"));
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| ctx("busy_timeout", e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| ctx("synchronous", e))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| ctx("foreign_keys", e))?;
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .map_err(|e| ctx("foreign_keys", e))?;
        if !fk {
            return Err(StoreError::Database(
                "open: foreign keys unsupported".into(),
            ));
        }
        migrate::migrate(&mut conn, migrate::MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
            signer: None,
        })
    }

    /// The connection. A panic in another thread cannot leave it mid-transaction (rusqlite
    /// resets statements and rolls transactions back on drop, unwinding included), so a
    /// poisoned lock is recovered.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every SQLite migration's version and file name (the PostgreSQL ones must match).
#[cfg(all(test, feature = "postgres"))]
pub(crate) fn migration_names() -> Vec<(u32, &'static str)> {
    migrate::MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name))
        .collect()
}

#[cfg(unix)]
fn private_dir_builder() -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    b
}

#[cfg(not(unix))]
fn private_dir_builder() -> std::fs::DirBuilder {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    b
}

/// Creates the file if missing (never truncates).
fn private_file_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn connection_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let conn = store.conn();
        let get = |name| -> i64 { conn.pragma_query_value(None, name, |r| r.get(0)).unwrap() };
        assert_eq!(get("synchronous"), 2, "FULL");
        assert_eq!(get("foreign_keys"), 1);
        assert_eq!(get("busy_timeout"), 5000);
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let store = SqliteStore::open_in_memory().unwrap();
        let poison = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = store.conn();
                panic!("poison the lock");
            })
            .join()
        });
        assert!(poison.is_err());
        assert!(store.conn.is_poisoned());
        assert_eq!(store.subscribers().unwrap(), vec![]);
    }
}
