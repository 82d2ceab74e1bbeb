//! Call detail records as SQL (R18): an append-only table whose rows are hash-chained.
//!
//! The hash covers a canonical body (the record's JSON without `id` and the hashes, fields in
//! declaration order) and the previous row's hash, so changing, deleting or inserting a row
//! breaks the chain at that row. The last hash is read and the new row written in one
//! `BEGIN IMMEDIATE` transaction, so two writers (or two nodes) cannot fork the chain.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::provisioning::immediate;
use super::queries::db;
use crate::{Cdr, CdrLeg, ChainReport, StoreError};

/// `prev_hash` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is hashed and stored: the record minus its id and hashes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    call_id: String,
    caller: String,
    called: String,
    setup_ms: i64,
    answer_ms: Option<i64>,
    end_ms: i64,
    duration_ms: i64,
    final_status: u16,
    released_by: String,
    release_cause: String,
    answered_by: Option<usize>,
    legs: Vec<CdrLeg>,
}

impl Body {
    fn of(c: &Cdr) -> Self {
        Self {
            call_id: c.call_id.clone(),
            caller: c.caller.clone(),
            called: c.called.clone(),
            setup_ms: c.setup_ms,
            answer_ms: c.answer_ms,
            end_ms: c.end_ms,
            duration_ms: c.duration_ms,
            final_status: c.final_status,
            released_by: c.released_by.clone(),
            release_cause: c.release_cause.clone(),
            answered_by: c.answered_by,
            legs: c.legs.clone(),
        }
    }

    fn into_cdr(self, id: i64, prev_hash: String, hash: String) -> Cdr {
        Cdr {
            id,
            call_id: self.call_id,
            caller: self.caller,
            called: self.called,
            setup_ms: self.setup_ms,
            answer_ms: self.answer_ms,
            end_ms: self.end_ms,
            duration_ms: self.duration_ms,
            final_status: self.final_status,
            released_by: self.released_by,
            release_cause: self.release_cause,
            answered_by: self.answered_by,
            legs: self.legs,
            prev_hash,
            hash,
        }
    }
}

/// `SHA-256("trustring/v1/cdr" ‖ prev ‖ body)`, lower-case hex.
pub(crate) fn chain_hash(prev: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"trustring/v1/cdr");
    h.update(prev.as_bytes());
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

pub(super) fn append(conn: &mut Connection, cdr: &Cdr) -> Result<Cdr, StoreError> {
    let body = serde_json::to_string(&Body::of(cdr))
        .map_err(|e| StoreError::Database(format!("append_cdr: encode: {e}")))?;
    let tx = immediate(conn, "append_cdr")?;
    let prev: String = tx
        .query_row("SELECT hash FROM cdrs ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db("append_cdr"))?
        .unwrap_or_else(|| GENESIS.to_owned());
    let hash = chain_hash(&prev, &body);
    let id: i64 = tx
        .query_row(
            "INSERT INTO cdrs (call_id, setup_ms, end_ms, body, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            params![cdr.call_id, cdr.setup_ms, cdr.end_ms, body, prev, hash],
            |r| r.get(0),
        )
        .map_err(db("append_cdr"))?;
    let mut entities: Vec<&str> = cdr.legs.iter().map(|l| l.billing_entity.as_str()).collect();
    entities.sort_unstable();
    entities.dedup();
    for e in entities {
        tx.execute(
            "INSERT INTO cdr_entities (cdr_id, entity) VALUES (?1, ?2)",
            params![id, e],
        )
        .map_err(db("append_cdr"))?;
    }
    tx.commit().map_err(db("append_cdr"))?;
    let mut stored = cdr.clone();
    stored.id = id;
    stored.prev_hash = prev;
    stored.hash = hash;
    Ok(stored)
}

fn decode(id: i64, body: &str, prev: String, hash: String) -> Result<Cdr, StoreError> {
    serde_json::from_str::<Body>(body)
        .map(|b| b.into_cdr(id, prev, hash))
        .map_err(|e| StoreError::Database(format!("cdr {id}: unreadable body: {e}")))
}

pub(super) fn query(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    entity: Option<&str>,
) -> Result<Vec<Cdr>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, body, prev_hash, hash FROM cdrs c WHERE setup_ms >= ?1 AND setup_ms < ?2 \
             AND (?3 IS NULL OR EXISTS (SELECT 1 FROM cdr_entities e \
                                        WHERE e.cdr_id = c.id AND e.entity = ?3)) \
             ORDER BY id",
        )
        .map_err(db("cdrs"))?;
    let rows = stmt
        .query_map(params![from_ms, to_ms, entity], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .map_err(db("cdrs"))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body, prev, hash) = row.map_err(db("cdrs"))?;
        out.push(decode(id, &body, prev, hash)?);
    }
    Ok(out)
}

pub(super) fn verify(conn: &Connection) -> Result<ChainReport, StoreError> {
    let mut stmt = conn
        .prepare("SELECT id, body, prev_hash, hash FROM cdrs ORDER BY id")
        .map_err(db("verify_cdrs"))?;
    let mut rows = stmt.query([]).map_err(db("verify_cdrs"))?;
    let mut expected_prev = GENESIS.to_owned();
    let mut records = 0u64;
    while let Some(r) = rows.next().map_err(db("verify_cdrs"))? {
        let id: i64 = r.get(0).map_err(db("verify_cdrs"))?;
        let body: String = r.get(1).map_err(db("verify_cdrs"))?;
        let prev: String = r.get(2).map_err(db("verify_cdrs"))?;
        let hash: String = r.get(3).map_err(db("verify_cdrs"))?;
        records += 1;
        let bad = if prev != expected_prev {
            Some("previous-hash link broken (a record before it was removed or changed)")
        } else if chain_hash(&prev, &body) != hash {
            Some("content does not match its hash (the record was changed)")
        } else {
            None
        };
        if let Some(why) = bad {
            return Ok(ChainReport {
                records,
                first_bad: Some((id, why.to_owned())),
            });
        }
        expected_prev = hash;
    }
    Ok(ChainReport {
        records,
        first_bad: None,
    })
}
