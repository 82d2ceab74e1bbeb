//! Call detail records for PostgreSQL (R18): the same append-only, hash-chained, signed
//! records as SQLite's ([`crate::chain`] computes and checks them).
//!
//! An append takes a transaction-scoped advisory lock ([`CHAIN_LOCK`]) before it reads the
//! chain head, so appenders on every connection and node are serialised and the chain never
//! forks; the lock goes with the commit. A verification reads one snapshot (REPEATABLE READ).

use deadpool_postgres::GenericClient;
use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::IsolationLevel;

use super::queries::{col, exec, opt, rows};
use super::{PostgresStore, db};
use crate::chain::{
    Body, ChainState, GENESIS, StoredCdr, VERSION, Verifier, cdr_hash, decode, entities_of,
};
use crate::signing::{CdrPublicKey, SignedHead};
use crate::{Cdr, ChainReport, StoreError};

/// The advisory lock that serialises CDR appends.
const CHAIN_LOCK: i64 = 0x7472_7573_7472_0002;

/// The chain as [`crate::chain`] asks about it when a signer is adopted (outside any other
/// call on this store: each answer blocks on its own query).
pub(super) struct State<'s>(pub(super) &'s PostgresStore);

impl State<'_> {
    async fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        f: impl FnOnce(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        const OP: &str = "CDR signing";
        let c = self.0.client(OP).await?;
        let row = opt(&c, sql, params).await.map_err(db(OP))?;
        row.as_ref().map(f).transpose()
    }
}

impl ChainState for State<'_> {
    fn last(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        let s = &*self;
        self.0.block(s.one(
            "SELECT id, hash FROM cdrs ORDER BY id DESC LIMIT 1",
            &[],
            |r| Ok((col("CDR signing", r, 0)?, col("CDR signing", r, 1)?)),
        ))
    }

    fn hash_at(&mut self, id: i64) -> Result<Option<String>, StoreError> {
        let s = &*self;
        self.0
            .block(s.one("SELECT hash FROM cdrs WHERE id = $1", &[&id], |r| {
                col("CDR signing", r, 0)
            }))
    }

    fn any_signed(&mut self) -> Result<bool, StoreError> {
        let s = &*self;
        let found = self.0.block(s.one(
            "SELECT 1 FROM cdrs WHERE sig IS NOT NULL LIMIT 1",
            &[],
            |_| Ok(()),
        ))?;
        Ok(found.is_some())
    }
}

/// Appends `cdr` (see [`Store::append_cdr`](crate::Store::append_cdr)); the caller writes
/// the signed head after this returns (committed).
pub(super) async fn append(s: &PostgresStore, cdr: &Cdr) -> Result<Cdr, StoreError> {
    const OP: &str = "append_cdr";
    let body = serde_json::to_string(&Body::of(cdr))
        .map_err(|e| StoreError::Database(format!("{OP}: encode: {e}")))?;
    let entities = entities_of(&cdr.legs);
    let mut c = s.client(OP).await?;
    let tx = c.transaction().await.map_err(db(OP))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])
        .await
        .map_err(db(OP))?;
    let (last_id, prev) = match opt(
        &tx,
        "SELECT id, hash FROM cdrs ORDER BY id DESC LIMIT 1",
        &[],
    )
    .await
    .map_err(db(OP))?
    {
        Some(r) => (col::<i64>(OP, &r, 0)?, col::<String>(OP, &r, 1)?),
        None => (0, GENESIS.to_owned()),
    };
    let id = last_id
        .checked_add(1)
        .ok_or_else(|| StoreError::Database(format!("{OP}: ids exhausted")))?;
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
    let sig = s.signer.as_ref().map(|k| k.sign_record(id, &hash));
    exec(
        &tx,
        "INSERT INTO cdrs (id, call_id, setup_ms, end_ms, body, prev_hash, hash, version, sig) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id,
            &cdr.call_id,
            &cdr.setup_ms,
            &cdr.end_ms,
            &body,
            &prev,
            &hash,
            &VERSION,
            &sig,
        ],
    )
    .await
    .map_err(db(OP))?;
    exec(
        &tx,
        "INSERT INTO cdr_entities (cdr_id, entity) SELECT $1, unnest($2::text[])",
        &[&id, &entities],
    )
    .await
    .map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    let mut stored = cdr.clone();
    stored.id = id;
    stored.prev_hash = prev;
    stored.hash = hash;
    stored.sig = sig;
    Ok(stored)
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
pub(super) async fn query(
    s: &PostgresStore,
    from_ms: i64,
    to_ms: i64,
    entity: Option<&str>,
    page: Page,
) -> Result<Vec<Cdr>, StoreError> {
    const OP: &str = "cdrs";
    const WHERE: &str = "SELECT id, body, prev_hash, hash, sig FROM cdrs c \
         WHERE setup_ms >= $1 AND setup_ms < $2 \
         AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM cdr_entities e \
                                          WHERE e.cdr_id = c.id AND e.entity = $3)) ";
    let (sql, after) = if page.newest_first {
        (
            format!("{WHERE} AND id < $4 ORDER BY id DESC LIMIT $5"),
            page.after.unwrap_or(i64::MAX),
        )
    } else {
        (
            format!("{WHERE} AND id > $4 ORDER BY id LIMIT $5"),
            page.after.unwrap_or(i64::MIN),
        )
    };
    // `LIMIT NULL` is no limit.
    let limit = page.limit.map(i64::from);
    let c = s.client(OP).await?;
    let found = rows(&c, &sql, &[&from_ms, &to_ms, &entity, &after, &limit])
        .await
        .map_err(db(OP))?;
    let mut out = Vec::with_capacity(found.len());
    for r in &found {
        let id: i64 = col(OP, r, 0)?;
        let body: String = col(OP, r, 1)?;
        out.push(decode(
            id,
            &body,
            col(OP, r, 2)?,
            col(OP, r, 3)?,
            col(OP, r, 4)?,
        )?);
    }
    Ok(out)
}

/// Walks the chain in one snapshot, streaming the records (with their entity rows) through
/// the [`Verifier`].
pub(super) async fn verify(
    s: &PostgresStore,
    key: Option<&CdrPublicKey>,
    heads: &[(String, SignedHead)],
) -> Result<ChainReport, StoreError> {
    const OP: &str = "verify_cdrs";
    let mut c = s.client(OP).await?;
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db(OP))?;
    let mut verifier = Verifier::new(key, heads);
    let stmt = tx
        .prepare_cached(
            "SELECT id, call_id, setup_ms, end_ms, body, prev_hash, hash, version, sig, \
             coalesce((SELECT array_agg(e.entity ORDER BY e.entity) FROM cdr_entities e \
                       WHERE e.cdr_id = c.id), '{}') \
             FROM cdrs c ORDER BY id",
        )
        .await
        .map_err(db(OP))?;
    let no_params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
    {
        let stream = tx
            .query_raw(&stmt, no_params.iter().copied())
            .await
            .map_err(db(OP))?;
        pin_mut!(stream);
        while let Some(row) = stream.try_next().await.map_err(db(OP))? {
            let r = StoredCdr {
                id: col(OP, &row, 0)?,
                call_id: col(OP, &row, 1)?,
                setup_ms: col(OP, &row, 2)?,
                end_ms: col(OP, &row, 3)?,
                body: col(OP, &row, 4)?,
                prev: col(OP, &row, 5)?,
                hash: col(OP, &row, 6)?,
                version: col(OP, &row, 7)?,
                sig: col(OP, &row, 8)?,
            };
            let entities: Vec<String> = col(OP, &row, 9)?;
            if !verifier.record(r, &entities) {
                break;
            }
        }
    }
    let orphan = opt(
        &tx,
        "SELECT min(cdr_id) FROM cdr_entities WHERE cdr_id NOT IN (SELECT id FROM cdrs)",
        &[],
    )
    .await
    .map_err(db(OP))?;
    let orphan: Option<i64> = match orphan {
        Some(r) => col(OP, &r, 0)?,
        None => None,
    };
    verifier.finish(|| Ok(orphan))
}
