//! Schema migrations: versioned SQL files embedded at build time, tracked by
//! `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// One schema step. Versions start at 1 and increase by one.
pub(super) struct Migration {
    /// The `user_version` the database has once this step is applied.
    pub(super) version: u32,
    /// File name, for error messages.
    pub(super) name: &'static str,
    /// The SQL (several statements, no `BEGIN`/`COMMIT`).
    pub(super) sql: &'static str,
}

/// Every migration of the SQLite schema, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_provisioning.sql",
        sql: include_str!("../../migrations/sqlite/0002_provisioning.sql"),
    },
    Migration {
        version: 3,
        name: "0003_cdrs.sql",
        sql: include_str!("../../migrations/sqlite/0003_cdrs.sql"),
    },
    Migration {
        version: 4,
        name: "0004_device_number.sql",
        sql: include_str!("../../migrations/sqlite/0004_device_number.sql"),
    },
    Migration {
        version: 5,
        name: "0005_enrolment_key.sql",
        sql: include_str!("../../migrations/sqlite/0005_enrolment_key.sql"),
    },
    Migration {
        version: 6,
        name: "0006_cdr_signatures.sql",
        sql: include_str!("../../migrations/sqlite/0006_cdr_signatures.sql"),
    },
];

/// Brings the schema up to the last of `migrations` and returns the resulting version.
///
/// Everything runs in one `BEGIN IMMEDIATE` transaction: the write lock is taken before the
/// version is read, so two processes opening the same file cannot both apply a step, and a
/// failing step leaves the database as it was. A database newer than this build is refused.
pub(super) fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, StoreError> {
    let err =
        |what: &str, e: rusqlite::Error| StoreError::Database(format!("migrate: {what}: {e}"));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| err("begin", e))?;
    let current: u32 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| err("read user_version", e))?;
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Database(format!(
            "migrate: database schema version {current} is newer than this build supports \
             ({latest})"
        )));
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(|e| err(m.name, e))?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(|e| err(m.name, e))?;
    }
    tx.commit().map_err(|e| err("commit", e))?;
    Ok(current.max(latest))
}

/// The schema version recorded in the database.
pub(super) fn version(conn: &Connection) -> Result<u32, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| StoreError::Database(format!("schema_version: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const ONE: Migration = Migration {
        version: 1,
        name: "one",
        sql: "CREATE TABLE a (x INTEGER NOT NULL);",
    };
    const TWO: Migration = Migration {
        version: 2,
        name: "two",
        sql: "CREATE TABLE b (y INTEGER NOT NULL); INSERT INTO a (x) VALUES (2);",
    };
    const BAD: Migration = Migration {
        version: 2,
        name: "bad",
        sql: "CREATE TABLE b (y INTEGER); THIS IS NOT SQL;",
    };

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn applies_only_newer_steps() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, &[ONE]).unwrap(), 1);
        // ONE has no IF NOT EXISTS: running it again would fail.
        assert_eq!(migrate(&mut conn, &[ONE]).unwrap(), 1);
        assert_eq!(migrate(&mut conn, &[ONE, TWO]).unwrap(), 2);
        assert_eq!(migrate(&mut conn, &[ONE, TWO]).unwrap(), 2);
        assert_eq!(count(&conn, "SELECT count(*) FROM a"), 1);
        assert_eq!(version(&conn).unwrap(), 2);
    }

    #[test]
    fn failed_step_rolls_back_everything() {
        let mut conn = Connection::open_in_memory().unwrap();
        let err = migrate(&mut conn, &[ONE, BAD]).unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        assert_eq!(version(&conn).unwrap(), 0);
        let tables = "SELECT count(*) FROM sqlite_master WHERE type = 'table'";
        assert_eq!(count(&conn, tables), 0);
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &[ONE, TWO]).unwrap();
        let err = migrate(&mut conn, &[ONE]).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
