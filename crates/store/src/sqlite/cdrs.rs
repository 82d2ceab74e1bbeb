//! Call detail records as SQL (R18): an append-only table whose rows are hash-chained and
//! signed (`docs/cdr.md`).
//!
//! A record's `body` is its canonical JSON (the record without `id`, hashes and signature,
//! fields in declaration order); `call_id`, `setup_ms`, `end_ms` and the `cdr_entities` rows
//! index it for queries. The hash of a version 2 record covers the previous hash and every one
//! of those: id, call_id, setup_ms, end_ms, the entity rows and the body ([`cdr_hash`]);
//! version 1 records (written before) hash the previous hash and the body only, and
//! [`verify`] checks their columns and rows against the body. With a [`CdrSigner`] each new
//! record is signed and the signed head rewritten after the commit.
//!
//! The last id and hash are read and the new row written in one `BEGIN IMMEDIATE`
//! transaction, so two writers (or two nodes) cannot fork the chain.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::provisioning::immediate;
use super::queries::db;
use crate::signing::{CdrPublicKey, CdrSigner, HEAD_FILE, KEY_FILE, SignedHead};
use crate::{Cdr, CdrLeg, ChainReport, StoreError};

/// `prev_hash` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash format of records written now.
const VERSION: i64 = 2;

/// What is hashed and stored: the record minus its id, hashes and signature.
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

    fn into_cdr(self, id: i64, prev_hash: String, hash: String, sig: Option<String>) -> Cdr {
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
            sig,
        }
    }
}

/// The billing entities of `legs`, sorted, each once (what `cdr_entities` holds).
fn entities_of(legs: &[CdrLeg]) -> Vec<String> {
    let mut e: Vec<String> = legs.iter().map(|l| l.billing_entity.clone()).collect();
    e.sort_unstable();
    e.dedup();
    e
}

/// Version 1: `SHA-256("trustring/v1/cdr" ‖ prev ‖ body)`, lower-case hex.
fn chain_hash_v1(prev: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"trustring/v1/cdr");
    h.update(prev.as_bytes());
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The hash of a version 2 record, lower-case hex: SHA-256 of `"trustring/v2/cdr\0"`, then
/// `prev_hash`, `id`, `call_id`, `setup_ms`, `end_ms`, the number of billing entities, each
/// entity (sorted, as stored in `cdr_entities`) and the body, where an integer is 8 bytes
/// big-endian and a string is its length (8 bytes big-endian) followed by its UTF-8 bytes.
/// Public for verifiers outside the store (`docs/cdr.md`).
pub fn cdr_hash(
    prev_hash: &str,
    id: i64,
    call_id: &str,
    setup_ms: i64,
    end_ms: i64,
    entities: &[&str],
    body: &str,
) -> String {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    h.update(b"trustring/v2/cdr\0");
    field(&mut h, prev_hash.as_bytes());
    h.update(id.to_be_bytes());
    field(&mut h, call_id.as_bytes());
    h.update(setup_ms.to_be_bytes());
    h.update(end_ms.to_be_bytes());
    h.update((entities.len() as u64).to_be_bytes());
    for e in entities {
        field(&mut h, e.as_bytes());
    }
    field(&mut h, body.as_bytes());
    hex::encode(h.finalize())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn last(conn: &Connection, op: &'static str) -> Result<Option<(i64, String)>, StoreError> {
    conn.query_row(
        "SELECT id, hash FROM cdrs ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db(op))
}

fn any_signed(conn: &Connection, op: &'static str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM cdrs WHERE sig IS NOT NULL)",
        [],
        |r| r.get(0),
    )
    .map_err(db(op))
}

/// Before a store starts signing with `signer`: checks the head left by the last run against
/// the database (see `SqliteStore::with_cdr_signing`), or writes the first head.
pub(super) fn adopt_signer(conn: &mut Connection, signer: &CdrSigner) -> Result<(), StoreError> {
    const OP: &str = "CDR signing";
    let refuse = |why: String| {
        StoreError::Database(format!(
            "CDR signing: {why}. Run `trustring cdr verify`; to go on anyway (a new chain of \
             evidence from here), move {} aside",
            signer.head_path().display()
        ))
    };
    let tail = last(conn, OP)?;
    match SignedHead::read(signer.head_path())? {
        Some(head) => {
            if signer.created {
                return Err(refuse(format!(
                    "the signing key was missing (a new one was made) but {} exists: restore \
                     the key that signed it",
                    signer.head_path().display()
                )));
            }
            if !signer.public_key().verifies_head(&head) {
                return Err(refuse(format!(
                    "{} is not signed by this signing key (was the key replaced?)",
                    signer.head_path().display()
                )));
            }
            let at: Option<String> = if head.id == 0 {
                Some(GENESIS.to_owned())
            } else {
                conn.query_row("SELECT hash FROM cdrs WHERE id = ?1", [head.id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db(OP))?
            };
            match at {
                None => Err(refuse(format!(
                    "the signed head names CDR {} but the database ends at {}: records were \
                     removed",
                    head.id,
                    tail.map_or(0, |t| t.0)
                ))),
                Some(h) if h != head.hash => Err(refuse(format!(
                    "CDR {}'s hash differs from the signed head: the records were rewritten",
                    head.id
                ))),
                Some(_) => Ok(()),
            }
        }
        None => {
            if any_signed(conn, OP)? {
                return Err(refuse(format!(
                    "{} is missing although the database holds signed records",
                    signer.head_path().display()
                )));
            }
            // First start with signing: anchor whatever is there (records written before).
            let (id, hash) = tail.unwrap_or_else(|| (0, GENESIS.to_owned()));
            signer.write_head(&signer.head(id, &hash, now_ms()))
        }
    }
}

/// Whether a signing key may be made in `dir`: not if the database holds signed records or a
/// head exists (the key was lost; a new one would hide that).
pub(super) fn may_create_key(conn: &Connection, dir: &std::path::Path) -> Result<(), StoreError> {
    let (key, head) = (dir.join(KEY_FILE), dir.join(HEAD_FILE));
    if key.exists() {
        return Ok(());
    }
    if head.exists() || any_signed(conn, "CDR signing")? {
        return Err(StoreError::Database(format!(
            "CDR signing: {} is missing but the records are signed (or {} exists): restore the \
             key; making a new one would break the evidence",
            key.display(),
            head.display()
        )));
    }
    Ok(())
}

pub(super) fn append(
    conn: &mut Connection,
    cdr: &Cdr,
    signer: Option<&CdrSigner>,
) -> Result<Cdr, StoreError> {
    let body = serde_json::to_string(&Body::of(cdr))
        .map_err(|e| StoreError::Database(format!("append_cdr: encode: {e}")))?;
    let entities = entities_of(&cdr.legs);
    let tx = immediate(conn, "append_cdr")?;
    let (last_id, prev) = last(&tx, "append_cdr")?.unwrap_or_else(|| (0, GENESIS.to_owned()));
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
    tx.commit().map_err(db("append_cdr"))?;
    if let Some(s) = signer {
        // After the commit: a head never names a record that is not durable. If this fails
        // the head lags behind, which verification accepts (the records after it are signed).
        if let Err(e) = s.write_head(&s.head(id, &hash, now_ms())) {
            tracing::error!(cdr = id, error = %e, "CDR head not written");
        }
    }
    let mut stored = cdr.clone();
    stored.id = id;
    stored.prev_hash = prev;
    stored.hash = hash;
    stored.sig = sig;
    Ok(stored)
}

fn decode(
    id: i64,
    body: &str,
    prev: String,
    hash: String,
    sig: Option<String>,
) -> Result<Cdr, StoreError> {
    serde_json::from_str::<Body>(body)
        .map(|b| b.into_cdr(id, prev, hash, sig))
        .map_err(|e| StoreError::Database(format!("cdr {id}: unreadable body: {e}")))
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

/// One stored row of `cdrs`.
struct Row {
    id: i64,
    call_id: String,
    setup_ms: i64,
    end_ms: i64,
    body: String,
    prev: String,
    hash: String,
    version: i64,
    sig: Option<String>,
}

/// `a` minus `b` (both sorted), joined for a message.
fn minus(a: &[String], b: &[String]) -> String {
    let d: Vec<&str> = a
        .iter()
        .filter(|x| b.binary_search(x).is_err())
        .map(String::as_str)
        .collect();
    if d.is_empty() {
        "none".to_owned()
    } else {
        d.join(", ")
    }
}

/// What is wrong with one record's content, if anything: its columns and entity rows against
/// its body, then its hash.
fn content_problem(r: &Row, stored_entities: &[String]) -> Option<String> {
    if r.version != 1 && r.version != VERSION {
        return Some(format!(
            "unknown record version {} (the record was changed)",
            r.version
        ));
    }
    let body = match serde_json::from_str::<Body>(&r.body) {
        Ok(b) => b,
        Err(e) => return Some(format!("unreadable body (the record was changed): {e}")),
    };
    if r.call_id != body.call_id {
        return Some(format!(
            "its call_id column `{}` differs from the record's `{}` (the record was changed)",
            r.call_id.chars().take(80).collect::<String>(),
            body.call_id.chars().take(80).collect::<String>()
        ));
    }
    if r.setup_ms != body.setup_ms {
        return Some(format!(
            "its setup_ms column {} differs from the record's {} (the record was changed)",
            r.setup_ms, body.setup_ms
        ));
    }
    if r.end_ms != body.end_ms {
        return Some(format!(
            "its end_ms column {} differs from the record's {} (the record was changed)",
            r.end_ms, body.end_ms
        ));
    }
    let expected = entities_of(&body.legs);
    if stored_entities != expected.as_slice() {
        return Some(format!(
            "its billing-entity rows (cdr_entities) differ from its legs: missing {}, extra {} \
             (rows were deleted or added)",
            minus(&expected, stored_entities),
            minus(stored_entities, &expected)
        ));
    }
    let hash = if r.version == 1 {
        chain_hash_v1(&r.prev, &r.body)
    } else {
        let refs: Vec<&str> = stored_entities.iter().map(String::as_str).collect();
        cdr_hash(
            &r.prev, r.id, &r.call_id, r.setup_ms, r.end_ms, &refs, &r.body,
        )
    };
    (hash != r.hash).then(|| "content does not match its hash (the record was changed)".into())
}

pub(super) fn verify(
    conn: &Connection,
    key: Option<&CdrPublicKey>,
    heads: &[(String, SignedHead)],
) -> Result<ChainReport, StoreError> {
    const OP: &str = "verify_cdrs";
    let mut report = ChainReport {
        signatures_checked: key.is_some(),
        ..ChainReport::default()
    };
    // Heads first: only those signed by `key` vouch for unsigned records before them.
    let mut head_problem: Option<(i64, String)> = None;
    let mut anchor = 0i64;
    let mut wanted: HashMap<i64, Option<String>> = HashMap::new();
    for (label, h) in heads {
        if let Some(k) = key {
            if !k.verifies_head(h) {
                head_problem.get_or_insert((
                    h.id,
                    format!("the head {label} is not signed by this key (forged or another key's)"),
                ));
                continue;
            }
            anchor = anchor.max(h.id);
        }
        wanted.insert(h.id, None);
    }

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
    let mut expected_prev = GENESIS.to_owned();
    let mut first_signed: Option<i64> = None;
    while let Some(row) = rows.next().map_err(db(OP))? {
        let r = Row {
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
        report.records += 1;
        let stored_entities = entities_stmt
            .query_map([r.id], |x| x.get::<_, String>(0))
            .map_err(db(OP))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db(OP))?;
        let problem = if r.prev != expected_prev {
            Some("previous-hash link broken (a record before it was removed or changed)".into())
        } else if let Some(p) = content_problem(&r, &stored_entities) {
            Some(p)
        } else {
            match (key, &r.sig, first_signed) {
                (Some(k), Some(sig), _) if !k.verifies_record(r.id, &r.hash, sig) => Some(
                    "its signature does not match (the record was rewritten, or signed with \
                     another key)"
                        .into(),
                ),
                (Some(_), None, Some(first)) => Some(format!(
                    "not signed, after signed record {first} (the chain was rewritten)"
                )),
                (Some(_), None, None) if r.id > anchor => Some(
                    "not signed, and newer than every signed head (records were added or \
                     rewritten without the key)"
                        .into(),
                ),
                _ => None,
            }
        };
        if let Some(why) = problem {
            report.first_bad = Some((r.id, why));
            return Ok(report);
        }
        match &r.sig {
            Some(_) => {
                first_signed.get_or_insert(r.id);
                if key.is_some() {
                    report.signed += 1;
                }
            }
            None if first_signed.is_none() => {
                let first = report.unsigned.map_or(r.id, |u| u.0);
                report.unsigned = Some((first, r.id));
            }
            None => {}
        }
        if let Some(slot) = wanted.get_mut(&r.id) {
            *slot = Some(r.hash.clone());
        }
        expected_prev = r.hash.clone();
        report.last = Some((r.id, r.hash));
    }
    drop(rows);

    // Entity rows of records that are gone (the newest records deleted, say).
    let orphan: Option<i64> = conn
        .query_row(
            "SELECT min(cdr_id) FROM cdr_entities WHERE cdr_id NOT IN (SELECT id FROM cdrs)",
            [],
            |r| r.get(0),
        )
        .map_err(db(OP))?;
    if let Some(id) = orphan {
        report.first_bad = Some((
            id,
            "missing, though billing-entity rows name it (the record was removed)".into(),
        ));
        return Ok(report);
    }
    if let Some(p) = head_problem {
        report.first_bad = Some(p);
        return Ok(report);
    }
    let last_id = report.last.as_ref().map_or(0, |l| l.0);
    for (label, h) in heads {
        let at = if h.id == 0 {
            Some(GENESIS.to_owned())
        } else {
            wanted.get(&h.id).cloned().flatten()
        };
        let problem = match at {
            Some(hash) if hash == h.hash => None,
            Some(_) => Some((
                h.id,
                format!(
                    "its hash differs from the signed head {label}: the chain was rewritten up \
                     to here"
                ),
            )),
            None if h.id > last_id => Some((
                last_id + 1,
                format!(
                    "missing: the signed head {label} names record {} (signed at {} ms), the \
                     chain ends at record {last_id}: records {}..{} were removed",
                    h.id,
                    h.at_ms,
                    last_id + 1,
                    h.id
                ),
            )),
            None => Some((
                h.id,
                format!("missing, though the signed head {label} names it"),
            )),
        };
        if let Some(p) = problem {
            report.first_bad = Some(p);
            return Ok(report);
        }
        report.heads.push((label.clone(), h.id));
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
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
