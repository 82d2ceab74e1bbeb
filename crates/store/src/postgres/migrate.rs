//! Schema migrations for PostgreSQL: the same versions as SQLite's (`migrations/postgres/`
//! holds the twin of each `migrations/sqlite/` file, same number and name), tracked in the
//! table `trustring_schema` (one row per applied version) instead of `PRAGMA user_version`.

use deadpool_postgres::{GenericClient, Object};

use super::db;
use crate::StoreError;

/// One schema step. Versions start at 1 and increase by one.
pub(super) struct Migration {
    /// The version the database has once this step is applied.
    pub(super) version: u32,
    /// File name, for error messages.
    pub(super) name: &'static str,
    /// The SQL (several statements, no `BEGIN`/`COMMIT`).
    pub(super) sql: &'static str,
}

/// Every migration of the PostgreSQL schema, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_provisioning.sql",
        sql: include_str!("../../migrations/postgres/0002_provisioning.sql"),
    },
    Migration {
        version: 3,
        name: "0003_cdrs.sql",
        sql: include_str!("../../migrations/postgres/0003_cdrs.sql"),
    },
    Migration {
        version: 4,
        name: "0004_device_number.sql",
        sql: include_str!("../../migrations/postgres/0004_device_number.sql"),
    },
    Migration {
        version: 5,
        name: "0005_enrolment_key.sql",
        sql: include_str!("../../migrations/postgres/0005_enrolment_key.sql"),
    },
    Migration {
        version: 6,
        name: "0006_cdr_signatures.sql",
        sql: include_str!("../../migrations/postgres/0006_cdr_signatures.sql"),
    },
];

/// The advisory lock that serialises migrations (several nodes starting at once).
const MIGRATE_LOCK: i64 = 0x7472_7573_7472_0001;

/// Brings the schema up to the last of `migrations` and returns the resulting version.
///
/// One transaction (PostgreSQL's DDL is transactional): the advisory lock is taken before
/// the version is read, so two nodes cannot both apply a step, and a failing step leaves the
/// database as it was. A database newer than this build is refused.
pub(super) async fn migrate(
    client: &mut Object,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let tx = client.transaction().await.map_err(db("migrate: begin"))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATE_LOCK}); \
         CREATE TABLE IF NOT EXISTS trustring_schema (\
             version    INTEGER PRIMARY KEY, \
             name       TEXT NOT NULL, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(db("migrate: lock"))?;
    let current = current(&tx).await?;
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Database(format!(
            "migrate: database schema version {current} is newer than this build supports \
             ({latest})"
        )));
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        let fail = |e: tokio_postgres::Error| {
            StoreError::Database(format!("migrate: {}: {}", m.name, super::describe(&e)))
        };
        tx.batch_execute(m.sql).await.map_err(fail)?;
        let version = i32::try_from(m.version)
            .map_err(|_| StoreError::Database(format!("migrate: {}: version", m.name)))?;
        tx.execute(
            "INSERT INTO trustring_schema (version, name) VALUES ($1, $2)",
            &[&version, &m.name],
        )
        .await
        .map_err(fail)?;
    }
    tx.commit().await.map_err(db("migrate: commit"))?;
    Ok(current.max(latest))
}

async fn current(c: &impl GenericClient) -> Result<u32, StoreError> {
    let v: i32 = c
        .query_one(
            "SELECT coalesce(max(version), 0) FROM trustring_schema",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("schema version"))?;
    u32::try_from(v).map_err(|_| StoreError::Database(format!("schema version {v}")))
}

/// The schema version recorded in the database (0 before the first migration).
pub(super) async fn version(client: &Object) -> Result<u32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('trustring_schema') IS NOT NULL", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("schema version"))?;
    if exists { current(client).await } else { Ok(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_versions_and_names_as_sqlite() {
        let sqlite = crate::sqlite::migration_names();
        let here: Vec<(u32, &str)> = MIGRATIONS.iter().map(|m| (m.version, m.name)).collect();
        assert_eq!(here, sqlite);
    }
}
