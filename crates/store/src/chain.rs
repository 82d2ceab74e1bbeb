//! The CDR hash chain, independent of the database (R18, `docs/cdr.md`): the canonical body,
//! the record hash, the check of one stored record, the walk over the chain ([`Verifier`])
//! and the signed-head checks made before a store starts signing. Each backend feeds it the
//! rows it reads, so SQLite and PostgreSQL verify exactly alike.
//!
//! A record's `body` is its canonical JSON (the record without `id`, hashes and signature,
//! fields in declaration order); `call_id`, `setup_ms`, `end_ms` and the `cdr_entities` rows
//! index it for queries. The hash of a version 2 record covers the previous hash and every one
//! of those: id, call_id, setup_ms, end_ms, the entity rows and the body ([`cdr_hash`]);
//! version 1 records (written before) hash the previous hash and the body only, and the
//! verifier checks their columns and rows against the body.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::signing::{CdrPublicKey, CdrSigner, HEAD_FILE, KEY_FILE, SignedHead};
use crate::{Cdr, CdrLeg, ChainReport, StoreError};

/// `prev_hash` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash format of records written now.
pub(crate) const VERSION: i64 = 2;

/// What is hashed and stored: the record minus its id, hashes and signature.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Body {
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
    pub(crate) fn of(c: &Cdr) -> Self {
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
pub(crate) fn entities_of(legs: &[CdrLeg]) -> Vec<String> {
    let mut e: Vec<String> = legs.iter().map(|l| l.billing_entity.clone()).collect();
    e.sort_unstable();
    e.dedup();
    e
}

/// Version 1: `SHA-256("trustring/v1/cdr" ‖ prev ‖ body)`, lower-case hex.
pub(crate) fn chain_hash_v1(prev: &str, body: &str) -> String {
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

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn decode(
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

/// One stored row of `cdrs`.
pub(crate) struct StoredCdr {
    pub(crate) id: i64,
    pub(crate) call_id: String,
    pub(crate) setup_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) body: String,
    pub(crate) prev: String,
    pub(crate) hash: String,
    pub(crate) version: i64,
    pub(crate) sig: Option<String>,
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
fn content_problem(r: &StoredCdr, stored_entities: &[String]) -> Option<String> {
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

/// What a backend knows of its chain when a signer is adopted ([`adopt_signer`]).
pub(crate) trait ChainState {
    /// The newest record: id and hash.
    fn last(&mut self) -> Result<Option<(i64, String)>, StoreError>;
    /// The hash of record `id`, if it exists.
    fn hash_at(&mut self, id: i64) -> Result<Option<String>, StoreError>;
    /// Whether any record is signed.
    fn any_signed(&mut self) -> Result<bool, StoreError>;
}

/// Before a store starts signing with `signer`: checks the head left by the last run against
/// the database (see `SqliteStore::with_cdr_signing`), or writes the first head.
pub(crate) fn adopt_signer(db: &mut dyn ChainState, signer: &CdrSigner) -> Result<(), StoreError> {
    let refuse = |why: String| {
        StoreError::Database(format!(
            "CDR signing: {why}. Run `trustring cdr verify`; to go on anyway (a new chain of \
             evidence from here), move {} aside",
            signer.head_path().display()
        ))
    };
    let tail = db.last()?;
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
                db.hash_at(head.id)?
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
            if db.any_signed()? {
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
pub(crate) fn may_create_key(db: &mut dyn ChainState, dir: &Path) -> Result<(), StoreError> {
    let (key, head) = (dir.join(KEY_FILE), dir.join(HEAD_FILE));
    if key.exists() {
        return Ok(());
    }
    if head.exists() || db.any_signed()? {
        return Err(StoreError::Database(format!(
            "CDR signing: {} is missing but the records are signed (or {} exists): restore the \
             key; making a new one would break the evidence",
            key.display(),
            head.display()
        )));
    }
    Ok(())
}

/// The walk over the chain behind `verify_cdrs`: the backend feeds every record in id order
/// ([`Verifier::record`]) until it says stop, then asks for the report ([`Verifier::finish`]).
pub(crate) struct Verifier<'a> {
    key: Option<&'a CdrPublicKey>,
    heads: &'a [(String, SignedHead)],
    report: ChainReport,
    head_problem: Option<(i64, String)>,
    anchor: i64,
    wanted: HashMap<i64, Option<String>>,
    expected_prev: String,
    first_signed: Option<i64>,
}

impl<'a> Verifier<'a> {
    /// Checks signatures with `key` (if given) and compares the chain with `heads`.
    pub(crate) fn new(key: Option<&'a CdrPublicKey>, heads: &'a [(String, SignedHead)]) -> Self {
        // Heads first: only those signed by `key` vouch for unsigned records before them.
        let mut head_problem: Option<(i64, String)> = None;
        let mut anchor = 0i64;
        let mut wanted: HashMap<i64, Option<String>> = HashMap::new();
        for (label, h) in heads {
            if let Some(k) = key {
                if !k.verifies_head(h) {
                    head_problem.get_or_insert((
                        h.id,
                        format!(
                            "the head {label} is not signed by this key (forged or another key's)"
                        ),
                    ));
                    continue;
                }
                anchor = anchor.max(h.id);
            }
            wanted.insert(h.id, None);
        }
        Self {
            key,
            heads,
            report: ChainReport {
                signatures_checked: key.is_some(),
                ..ChainReport::default()
            },
            head_problem,
            anchor,
            wanted,
            expected_prev: GENESIS.to_owned(),
            first_signed: None,
        }
    }

    /// Checks the next record (ids ascending) with its stored entity rows (sorted); `false`
    /// once a problem is found (the walk stops there).
    pub(crate) fn record(&mut self, r: StoredCdr, stored_entities: &[String]) -> bool {
        let key = self.key;
        self.report.records += 1;
        let problem = if r.prev != self.expected_prev {
            Some("previous-hash link broken (a record before it was removed or changed)".into())
        } else if let Some(p) = content_problem(&r, stored_entities) {
            Some(p)
        } else {
            match (key, &r.sig, self.first_signed) {
                (Some(k), Some(sig), _) if !k.verifies_record(r.id, &r.hash, sig) => Some(
                    "its signature does not match (the record was rewritten, or signed with \
                     another key)"
                        .into(),
                ),
                (Some(_), None, Some(first)) => Some(format!(
                    "not signed, after signed record {first} (the chain was rewritten)"
                )),
                (Some(_), None, None) if r.id > self.anchor => Some(
                    "not signed, and newer than every signed head (records were added or \
                     rewritten without the key)"
                        .into(),
                ),
                _ => None,
            }
        };
        if let Some(why) = problem {
            self.report.first_bad = Some((r.id, why));
            return false;
        }
        match &r.sig {
            Some(_) => {
                self.first_signed.get_or_insert(r.id);
                if key.is_some() {
                    self.report.signed += 1;
                }
            }
            None if self.first_signed.is_none() => {
                let first = self.report.unsigned.map_or(r.id, |u| u.0);
                self.report.unsigned = Some((first, r.id));
            }
            None => {}
        }
        if let Some(slot) = self.wanted.get_mut(&r.id) {
            *slot = Some(r.hash.clone());
        }
        self.expected_prev.clone_from(&r.hash);
        self.report.last = Some((r.id, r.hash));
        true
    }

    /// The report, given the smallest id that entity rows name but no record has (`orphan`,
    /// asked only when the walk went through).
    pub(crate) fn finish(
        mut self,
        orphan: impl FnOnce() -> Result<Option<i64>, StoreError>,
    ) -> Result<ChainReport, StoreError> {
        if self.report.first_bad.is_some() {
            return Ok(self.report);
        }
        // Entity rows of records that are gone (the newest records deleted, say).
        if let Some(id) = orphan()? {
            self.report.first_bad = Some((
                id,
                "missing, though billing-entity rows name it (the record was removed)".into(),
            ));
            return Ok(self.report);
        }
        if let Some(p) = self.head_problem {
            self.report.first_bad = Some(p);
            return Ok(self.report);
        }
        let last_id = self.report.last.as_ref().map_or(0, |l| l.0);
        for (label, h) in self.heads {
            let at = if h.id == 0 {
                Some(GENESIS.to_owned())
            } else {
                self.wanted.get(&h.id).cloned().flatten()
            };
            let problem = match at {
                Some(hash) if hash == h.hash => None,
                Some(_) => Some((
                    h.id,
                    format!(
                        "its hash differs from the signed head {label}: the chain was rewritten \
                         up to here"
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
                self.report.first_bad = Some(p);
                return Ok(self.report);
            }
            self.report.heads.push((label.clone(), h.id));
        }
        Ok(self.report)
    }
}
