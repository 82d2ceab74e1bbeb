//! PostgreSQL implementation of [`Store`](crate::Store), for several server nodes on one
//! database (`serve --db postgres://USER@HOST:PORT/DB`).
//!
//! Driver: `tokio-postgres` with a `deadpool-postgres` pool (at most [`POOL_SIZE`]
//! connections), driven by a small multi-thread tokio runtime that the store owns (both well
//! kept and small; sqlx would have brought a second SQLite driver next to rusqlite). The
//! [`Store`](crate::Store) trait stays synchronous (the SQLite backend and every caller use it
//! that way), so each method enters the store's runtime and blocks the calling thread on its
//! future ([`PostgresStore::block`]). That is safe from any thread: from tokio's blocking pool
//! and the writer thread (where the callers run it), and even from an async task (it then
//! blocks that worker, as a SQLite call does, but never panics the way the sync `postgres`
//! crate's nested `block_on` would). Trade-off: a caller's thread waits for the round trip;
//! an async trait would free it, at the cost of changing every caller.
//!
//! Concurrency, across connections and nodes (every method is one transaction, READ
//! COMMITTED): rows are locked in one order, subscriber, then enrolment code or device, then
//! identifier, so concurrent methods wait rather than deadlock. An enrolment claims the lowest
//! free identifier with `FOR UPDATE SKIP LOCKED` (so concurrent enrolments take different
//! ones without waiting on each other); a CDR append holds a transaction-scoped advisory lock
//! while it reads the chain head and inserts, so the hash chain never forks. Durability: every
//! connection runs with `synchronous_commit=on`.
//!
//! No TLS to the database yet: use it on loopback or a private network. The password of the
//! URL is never logged nor put in an error ([`redact_url`]).

mod cdrs;
mod migrate;
mod provisioning;
mod queries;

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::signing::{CdrPublicKey, CdrSigner, SignedHead};
use crate::{ChainReport, StoreError, redact_url};

/// Connections per store (per node). Store calls are short; more would only queue in the
/// database.
pub const POOL_SIZE: usize = 16;

/// How long a call waits for a pooled connection, a new connection or a row lock before it
/// fails (SQLite's busy timeout is 5 s; a network database gets a little more).
const TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL-backed [`Store`](crate::Store); see the module docs.
pub struct PostgresStore {
    pool: Pool,
    /// `Some` until dropped (taken to shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    /// The URL without its password, for messages.
    target: String,
    /// Signs every appended CDR and writes the signed head.
    signer: Option<CdrSigner>,
    /// The id of the newest signed head written by this store, so that concurrent appends
    /// never replace a head by an older one.
    head_id: Mutex<i64>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    /// Closes the pool and stops the runtime without waiting, so a store may be dropped from
    /// anywhere, an async task included (dropping a runtime there would panic).
    fn drop(&mut self) {
        self.pool.close();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An error and its sources, joined (tokio-postgres puts the useful part in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A driver error as text: the server's message and SQLSTATE when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => chain(e),
    }
}

/// Wraps a driver error with the operation that failed.
fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Database(format!("{op}: {}", describe(&e)))
}

/// Whether `e` violates a unique constraint.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// The foreign-key constraint `e` violates, if that is what it is.
fn foreign_key_violation(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error()
        .filter(|d| d.code() == &SqlState::FOREIGN_KEY_VIOLATION)
        .map(|d| d.constraint().unwrap_or_default())
}

/// A database integer that must fit a narrower Rust type.
fn narrow<T: TryFrom<i64>>(op: &'static str, what: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Database(format!("{op}: {what} {v} out of range")))
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, any libpq-style
    /// parameter tokio-postgres knows) and applies pending migrations.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let target = redact_url(url);
        let ctx = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Database(format!("open {target}: {what}: {e}"))
        };
        let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| ctx("URL", &e))?;
        // Durable when a method returns, whatever the server's default; a stuck lock fails
        // the call instead of hanging it.
        let options = format!(
            "{} -c synchronous_commit=on -c lock_timeout={}",
            cfg.get_options().unwrap_or_default(),
            TIMEOUT.as_millis()
        );
        cfg.options(options.trim_start());
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(TIMEOUT);
        }
        cfg.application_name("trustring");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("trustring-pg")
            .enable_all()
            .build()
            .map_err(|e| ctx("runtime", &e))?;
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _enter = rt.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(TIMEOUT))
                .create_timeout(Some(TIMEOUT))
                .recycle_timeout(Some(TIMEOUT))
                .build()
                .map_err(|e| ctx("pool", &e))?
        };
        let store = Self {
            pool,
            rt: Some(rt),
            target: target.clone(),
            signer: None,
            head_id: Mutex::new(0),
        };
        store.block(async {
            let mut client = store.client("migrate").await?;
            migrate::migrate(&mut client, migrate::MIGRATIONS).await
        })?;
        Ok(store)
    }

    /// The URL the store was opened with, password redacted.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema version of the database (the number of applied migrations).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.block(async {
            let client = self.client("schema_version").await?;
            migrate::version(&client).await
        })
    }

    /// Signs every CDR appended from now on with the key in `dir/cdr-signing-key` and keeps
    /// the signed head `dir/cdr-head`, exactly as
    /// [`SqliteStore::with_cdr_signing`](crate::SqliteStore::with_cdr_signing) does (same
    /// refusals). With several nodes, each keeps its own head of the shared chain.
    pub fn with_cdr_signing(self, dir: &Path) -> Result<Self, StoreError> {
        crate::chain::may_create_key(&mut cdrs::State(&self), dir)?;
        let signer = CdrSigner::load_or_create(dir)?;
        self.with_cdr_signer(signer)
    }

    /// [`PostgresStore::with_cdr_signing`] with a given signer.
    pub fn with_cdr_signer(mut self, signer: CdrSigner) -> Result<Self, StoreError> {
        crate::chain::adopt_signer(&mut cdrs::State(&self), &signer)?;
        self.signer = Some(signer);
        Ok(self)
    }

    /// The public half of the CDR signing key, if records are signed.
    pub fn cdr_public_key(&self) -> Option<CdrPublicKey> {
        self.signer.as_ref().map(CdrSigner::public_key)
    }

    /// See [`SqliteStore::verify_cdrs_with`](crate::SqliteStore::verify_cdrs_with).
    pub fn verify_cdrs_with(
        &self,
        key: Option<&CdrPublicKey>,
        heads: &[(String, SignedHead)],
    ) -> Result<ChainReport, StoreError> {
        self.block(cdrs::verify(self, key, heads))
    }

    /// Runs `f` to completion on the calling thread, inside the store's runtime (whose
    /// workers drive the connections). `unconstrained`: the caller may be an async task of
    /// another runtime, whose cooperative budget must not make this future yield forever.
    fn block<F: Future>(&self, f: F) -> F::Output {
        let _enter = self.rt.as_ref().map(tokio::runtime::Runtime::enter);
        futures_executor::block_on(tokio::task::unconstrained(f))
    }

    /// A pooled connection.
    async fn client(&self, op: &'static str) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::Database(format!(
                "{op}: connection to {}: {}",
                self.target,
                chain(&e)
            ))
        })
    }

    /// Writes the signed head for record `id` after its commit, unless a newer one was
    /// written meanwhile (a head never names a record that is not durable).
    fn write_head(&self, id: i64, hash: &str) {
        let Some(s) = &self.signer else { return };
        let mut newest = self.head_id.lock().unwrap_or_else(PoisonError::into_inner);
        if id <= *newest {
            return;
        }
        // If this fails the head lags behind, which verification accepts (the records after
        // it are signed).
        match s.write_head(&s.head(id, hash, crate::chain::now_ms())) {
            Ok(()) => *newest = id,
            Err(e) => tracing::error!(cdr = id, error = %e, "CDR head not written"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, want) in [
            (
                "postgres://alice:s3cret@db.example:5432/trustring",
                "postgres://alice:***@db.example:5432/trustring",
            ),
            (
                "postgresql://alice:p@ss@127.0.0.1/db?sslmode=disable",
                "postgresql://alice:***@127.0.0.1/db?sslmode=disable",
            ),
            (
                "postgres://alice@127.0.0.1:5433/db?password=s3cret&x=1",
                "postgres://alice@127.0.0.1:5433/db?password=***&x=1",
            ),
            ("postgres://127.0.0.1/db", "postgres://127.0.0.1/db"),
        ] {
            assert_eq!(redact_url(url), want);
            assert!(!redact_url(url).contains("s3cret"));
        }
    }

    #[test]
    fn bad_urls_fail_without_the_password() {
        let e = PostgresStore::open("postgres://alice:s3cret@127.0.0.1:notaport/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
