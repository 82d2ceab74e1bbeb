//! Call detail records as SQL (R18): an append-only table whose rows are hash-chained and
//! signed (`docs/cdr.md`). The chain itself (body, hash, checks) is in [`crate::chain`].
//!
//! With a [`CdrSigner`] each new record is signed and the signed head rewritten after the
//! commit. The last id and hash are read and the new row written in one `BEGIN IMMEDIATE`
//! transaction, so two writers (or two nodes) cannot fork the chain.

use rusqlite::{Connection, OptionalExtension, params};

use super::provisioning::immediate;
use super::queries::db;
#[cfg(test)]
use crate::chain::chain_hash_v1;
use crate::chain::{
    Body, ChainState, GENESIS, StoredCdr, VERSION, Verifier, cdr_hash, decode, entities_of, now_ms,
};
use crate::signing::{CdrPublicKey, CdrSigner, SignedHead};
use crate::{Cdr, ChainReport, StoreError};

fn last(conn: &Connection, op: &'static str) -> Result<Option<(i64, String)>, StoreError> {
    conn.query_row(
        "SELECT id, hash FROM cdrs ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db(op))
}

/// The chain as [`crate::chain`] asks about it when a signer is adopted.
struct State<'c>(&'c Connection);

impl ChainState for State<'_> {
    fn last(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        last(self.0, "CDR signing")
    }

    fn hash_at(&mut self, id: i64) -> Result<Option<String>, StoreError> {
        self.0
            .query_row("SELECT hash FROM cdrs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(db("CDR signing"))
    }

    fn any_signed(&mut self) -> Result<bool, StoreError> {
        self.0
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM cdrs WHERE sig IS NOT NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(db("CDR signing"))
    }
}

/// Before a store starts signing with `signer`: checks the head left by the last run against
/// the database (see `SqliteStore::with_cdr_signing`), or writes the first head.
pub(super) fn adopt_signer(conn: &mut Connection, signer: &CdrSigner) -> Result<(), StoreError> {
    crate::chain::adopt_signer(&mut State(conn), signer)
}

/// Whether a signing key may be made in `dir`: not if the database holds signed records or a
/// head exists (the key was lost; a new one would hide that).
pub(super) fn may_create_key(conn: &Connection, dir: &std::path::Path) -> Result<(), StoreError> {
    crate::chain::may_create_key(&mut State(conn), dir)
}

pub(super) fn append(
    conn: &mut Connection,
    cdr: &Cdr,
    signer: Option<&CdrSigner>,
) -> Result<Cdr, StoreError> {
    let mut stored = append_all(conn, std::slice::from_ref(cdr), signer)?;
    stored
        .pop()
        .ok_or_else(|| StoreError::Database("append_cdr: nothing stored".into()))
}

/// Appends `cdrs` in order in one transaction (one commit, one fsync, one signed head for
/// all of them: the store writer's group commit under load), each chained to the one before.
pub(super) fn append_all(
    conn: &mut Connection,
    cdrs: &[Cdr],
    signer: Option<&CdrSigner>,
) -> Result<Vec<Cdr>, StoreError> {
    if cdrs.is_empty() {
        return Ok(Vec::new());
    }
    let tx = immediate(conn, "append_cdr")?;
    let (mut last_id, mut prev) =
        last(&tx, "append_cdr")?.unwrap_or_else(|| (0, GENESIS.to_owned()));
    let mut out = Vec::with_capacity(cdrs.len());
    for cdr in cdrs {
        let body = serde_json::to_string(&Body::of(cdr))
            .map_err(|e| StoreError::Database(format!("append_cdr: encode: {e}")))?;
        let entities = entities_of(&cdr.legs);
        let id = last_id
            .checked_add(1)
            .ok_or_else(|| StoreError::Database("append_cdr: ids exhausted".into()))?;
        let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
        let hash = cdr_hash(
            &prev,
            id,
            &cdr.call_id,
            cdr.setup_ms,
            cdr.end_ms,
            &refs,
            &body,
        );
        let sig = signer.map(|s| s.sign_record(id, &hash));
        tx.execute(
            "INSERT INTO cdrs (id, call_id, setup_ms, end_ms, body, prev_hash, hash, version, sig) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                cdr.call_id,
                cdr.setup_ms,
                cdr.end_ms,
                body,
                prev,
                hash,
                VERSION,
                sig
            ],
        )
        .map_err(db("append_cdr"))?;
        for e in &entities {
            tx.execute(
                "INSERT INTO cdr_entities (cdr_id, entity) VALUES (?1, ?2)",
                params![id, e],
            )
            .map_err(db("append_cdr"))?;
        }
        let mut stored = cdr.clone();
        stored.id = id;
        stored.prev_hash = std::mem::replace(&mut prev, hash.clone());
        stored.hash = hash;
        stored.sig = sig;
        last_id = id;
        out.push(stored);
    }
    tx.commit().map_err(db("append_cdr"))?;
    if let Some(s) = signer {
        // After the commit: a head never names a record that is not durable. If this fails
        // the head lags behind, which verification accepts (the records after it are signed).
        if let Err(e) = s.write_head(&s.head(last_id, &prev, now_ms())) {
            tracing::error!(cdr = last_id, error = %e, "CDR head not written");
        }
    }
    Ok(out)
}

/// Which records of a period [`query`] returns.
pub(super) struct Page {
    /// The cursor: ids above it (below it with `newest_first`); `None`: from the start.
    pub(super) after: Option<i64>,
    /// At most this many (`None`: all).
    pub(super) limit: Option<u32>,
    /// Decreasing ids.
    pub(super) newest_first: bool,
}

impl Page {
    /// Every record, oldest first.
    pub(super) const ALL: Self = Self {
        after: None,
        limit: None,
        newest_first: false,
    };
}

/// Records of `[from_ms, to_ms)` naming `entity` (if given), the `page` of them.
pub(super) fn query(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    entity: Option<&str>,
    page: Page,
) -> Result<Vec<Cdr>, StoreError> {
    const WHERE: &str = "SELECT id, body, prev_hash, hash, sig FROM cdrs c \
         WHERE setup_ms >= ?1 AND setup_ms < ?2 \
         AND (?3 IS NULL OR EXISTS (SELECT 1 FROM cdr_entities e \
                                    WHERE e.cdr_id = c.id AND e.entity = ?3)) ";
    let (sql, after) = if page.newest_first {
        (
            format!("{WHERE} AND id < ?4 ORDER BY id DESC LIMIT ?5"),
            page.after.unwrap_or(i64::MAX),
        )
    } else {
        (
            format!("{WHERE} AND id > ?4 ORDER BY id LIMIT ?5"),
            page.after.unwrap_or(i64::MIN),
        )
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(db("cdrs"))?;
    let limit = page.limit.map_or(-1, i64::from);
    let rows = stmt
        .query_map(params![from_ms, to_ms, entity, after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })
        .map_err(db("cdrs"))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body, prev, hash, sig) = row.map_err(db("cdrs"))?;
        out.push(decode(id, &body, prev, hash, sig)?);
    }
    Ok(out)
}

pub(super) fn verify(
    conn: &Connection,
    key: Option<&CdrPublicKey>,
    heads: &[(String, SignedHead)],
) -> Result<ChainReport, StoreError> {
    const OP: &str = "verify_cdrs";
    let mut verifier = Verifier::new(key, heads);
    let mut stmt = conn
        .prepare(
            "SELECT id, call_id, setup_ms, end_ms, body, prev_hash, hash, version, sig \
             FROM cdrs ORDER BY id",
        )
        .map_err(db(OP))?;
    let mut entities_stmt = conn
        .prepare("SELECT entity FROM cdr_entities WHERE cdr_id = ?1 ORDER BY entity")
        .map_err(db(OP))?;
    let mut rows = stmt.query([]).map_err(db(OP))?;
    while let Some(row) = rows.next().map_err(db(OP))? {
        let r = StoredCdr {
            id: row.get(0).map_err(db(OP))?,
            call_id: row.get(1).map_err(db(OP))?,
            setup_ms: row.get(2).map_err(db(OP))?,
            end_ms: row.get(3).map_err(db(OP))?,
            body: row.get(4).map_err(db(OP))?,
            prev: row.get(5).map_err(db(OP))?,
            hash: row.get(6).map_err(db(OP))?,
            version: row.get(7).map_err(db(OP))?,
            sig: row.get(8).map_err(db(OP))?,
        };
        let stored_entities = entities_stmt
            .query_map([r.id], |x| x.get::<_, String>(0))
            .map_err(db(OP))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db(OP))?;
        if !verifier.record(r, &stored_entities) {
            break;
        }
    }
    drop(rows);
    verifier.finish(|| {
        conn.query_row(
            "SELECT min(cdr_id) FROM cdr_entities WHERE cdr_id NOT IN (SELECT id FROM cdrs)",
            [],
            |r| r.get(0),
        )
        .map_err(db(OP))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::CdrLeg;
    use crate::signing::HEAD_FILE;
    use crate::sqlite::migrate::{MIGRATIONS, migrate};

    fn leg(entity: &str) -> CdrLeg {
        CdrLeg {
            contact: "sip:a@192.0.2.1".into(),
            device: None,
            leg_type: "voip".into(),
            rang_at_ms: Some(1),
            outcome: "answered".into(),
            status: Some(200),
            billing_entity: entity.into(),
            billable_ms: 1_000,
        }
    }

    fn cdr(call_id: &str, setup_ms: i64) -> Cdr {
        Cdr {
            id: 0,
            call_id: call_id.into(),
            caller: "sip:bob@example.net".into(),
            called: "sip:alice@localhost".into(),
            setup_ms,
            answer_ms: Some(setup_ms + 1),
            end_ms: setup_ms + 1_001,
            duration_ms: 1_000,
            final_status: 200,
            released_by: "caller".into(),
            release_cause: "BYE".into(),
            answered_by: Some(0),
            legs: vec![leg("acme"), leg("alice")],
            prev_hash: String::new(),
            hash: String::new(),
            sig: None,
        }
    }

    /// A database at schema 5 holding `n` version 1 records, as the code before signing
    /// wrote them; then migrated to the current schema.
    fn legacy(n: i64) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        migrate(&mut conn, &MIGRATIONS[..5]).unwrap();
        let mut prev = GENESIS.to_owned();
        for i in 1..=n {
            let c = cdr(&format!("old-{i}"), i * 1_000);
            let body = serde_json::to_string(&Body::of(&c)).unwrap();
            let hash = chain_hash_v1(&prev, &body);
            conn.execute(
                "INSERT INTO cdrs (call_id, setup_ms, end_ms, body, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c.call_id, c.setup_ms, c.end_ms, body, prev, hash],
            )
            .unwrap();
            for e in ["acme", "alice"] {
                conn.execute(
                    "INSERT INTO cdr_entities (cdr_id, entity) VALUES (?1, ?2)",
                    params![i, e],
                )
                .unwrap();
            }
            prev = hash;
        }
        migrate(&mut conn, MIGRATIONS).unwrap();
        conn
    }

    #[test]
    fn legacy_records_still_verify_and_are_anchored_by_the_first_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = legacy(3);
        let r = verify(&conn, None, &[]).unwrap();
        assert_eq!(r.first_bad, None, "{r:?}");
        assert_eq!((r.records, r.unsigned), (3, Some((1, 3))));

        let signer = CdrSigner::from_seed([1; 32], dir.path().join(HEAD_FILE));
        adopt_signer(&mut conn, &signer).unwrap();
        let head = SignedHead::read(signer.head_path()).unwrap().unwrap();
        assert_eq!(head.id, 3);
        append(&mut conn, &cdr("new-4", 4_000), Some(&signer)).unwrap();
        let key = signer.public_key();
        let heads = [(
            "head".to_owned(),
            SignedHead::read(signer.head_path()).unwrap().unwrap(),
        )];
        let r = verify(&conn, Some(&key), &heads).unwrap();
        assert_eq!(r.first_bad, None, "{r:?}");
        assert_eq!((r.records, r.signed, r.unsigned), (4, 1, Some((1, 3))));
        assert_eq!(r.heads, vec![("head".to_owned(), 4)]);

        // A legacy record's entity row deleted: named, though version 1 did not hash it.
        conn.execute_batch("DROP TRIGGER cdr_entities_no_delete;")
            .unwrap();
        conn.execute(
            "DELETE FROM cdr_entities WHERE cdr_id = 2 AND entity = 'alice'",
            [],
        )
        .unwrap();
        let r = verify(&conn, Some(&key), &heads).unwrap();
        let (id, why) = r.first_bad.unwrap();
        assert_eq!(id, 2);
        assert!(why.contains("missing alice"), "{why}");
    }

    #[test]
    fn a_rechained_legacy_prefix_is_caught_by_the_first_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = legacy(2);
        let signer = CdrSigner::from_seed([1; 32], dir.path().join(HEAD_FILE));
        adopt_signer(&mut conn, &signer).unwrap();
        let head = SignedHead::read(signer.head_path()).unwrap().unwrap();
        // Record 2 edited and re-hashed in the version 1 format (no key needed for that).
        conn.execute_batch("DROP TRIGGER cdrs_no_update;").unwrap();
        let (prev, body): (String, String) = conn
            .query_row("SELECT prev_hash, body FROM cdrs WHERE id = 2", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let body = body.replace("\"final_status\":200", "\"final_status\":486");
        conn.execute(
            "UPDATE cdrs SET body = ?1, hash = ?2 WHERE id = 2",
            params![body, chain_hash_v1(&prev, &body)],
        )
        .unwrap();
        let key = signer.public_key();
        // The chain alone (no head) cannot tell.
        assert_eq!(verify(&conn, None, &[]).unwrap().first_bad, None);
        let r = verify(&conn, Some(&key), &[("head".into(), head)]).unwrap();
        let (id, why) = r.first_bad.unwrap();
        assert_eq!(id, 2);
        assert!(why.contains("rewritten"), "{why}");
        // And the store refuses to sign on over it.
        let again = CdrSigner::from_seed([1; 32], dir.path().join(HEAD_FILE));
        let e = adopt_signer(&mut conn, &again).unwrap_err().to_string();
        assert!(e.contains("rewritten") && e.contains("move"), "{e}");
    }

    #[test]
    fn the_hash_covers_every_column_and_entity() {
        let base = cdr_hash(GENESIS, 1, "c", 2, 3, &["acme", "alice"], "{}");
        for other in [
            cdr_hash("1", 1, "c", 2, 3, &["acme", "alice"], "{}"),
            cdr_hash(GENESIS, 2, "c", 2, 3, &["acme", "alice"], "{}"),
            cdr_hash(GENESIS, 1, "d", 2, 3, &["acme", "alice"], "{}"),
            cdr_hash(GENESIS, 1, "c", 1, 3, &["acme", "alice"], "{}"),
            cdr_hash(GENESIS, 1, "c", 2, 4, &["acme", "alice"], "{}"),
            cdr_hash(GENESIS, 1, "c", 2, 3, &["acme"], "{}"),
            cdr_hash(GENESIS, 1, "c", 2, 3, &["acmealice"], "{}"),
            cdr_hash(GENESIS, 1, "c", 2, 3, &["acme", "alice"], "{ }"),
        ] {
            assert_ne!(base, other);
        }
    }
}
