//! Trusted provisioning for PostgreSQL: the number identity pool, EULA versions, enrolment
//! codes, devices and security events.
//!
//! Lock order (so that concurrent transactions wait instead of deadlocking): subscriber row,
//! then enrolment code or device rows, then identifier rows. A dropped transaction rolls
//! back, so every early return leaves the database untouched.

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use super::queries::{col, exec, map_rows, opt, rows};
use super::{PostgresStore, db, foreign_key_violation, is_unique_violation};
use crate::{
    Device, EnrolError, Enrolled, Enrolment, Eula, NewDevice, PoolCounts, Revocation,
    SecurityEvent, StoreError,
};

/// The revocation reason [`subscriber_deleted`] records.
const SUBSCRIBER_DELETED: &str = "subscriber-deleted";

/// Every device column, in [`device_from_row`] order.
const DEVICE_COLUMNS: &str = "id, username, identifier, security_level, zone_public_key, \
     eula_version, eula_accepted_at_ms, license_key_enc, sip_ha1_md5, sip_ha1_sha256, \
     token_hash, service_on, revoked_reason, revoked_at_ms, created_at_ms, number";

/// The current EULA: the latest publication time, ties to the last published.
const CURRENT_EULA: &str = "SELECT version, text, published_at_ms FROM eulas \
     ORDER BY published_at_ms DESC, seq DESC LIMIT 1";

fn device_from_row(op: &'static str, row: &Row) -> Result<Device, StoreError> {
    let reason: Option<String> = col(op, row, 12)?;
    let at_ms: Option<i64> = col(op, row, 13)?;
    Ok(Device {
        id: col(op, row, 0)?,
        user: col(op, row, 1)?,
        identifier: col(op, row, 2)?,
        security_level: col(op, row, 3)?,
        zone_public_key: col(op, row, 4)?,
        eula_version: col(op, row, 5)?,
        eula_accepted_at_ms: col(op, row, 6)?,
        license_key_enc: col(op, row, 7)?,
        sip_ha1_md5: col(op, row, 8)?,
        sip_ha1_sha256: col(op, row, 9)?,
        token_hash: col(op, row, 10)?,
        service_on: col(op, row, 11)?,
        // The schema keeps both columns set or both NULL.
        revoked: reason
            .zip(at_ms)
            .map(|(reason, at_ms)| Revocation { reason, at_ms }),
        created_at_ms: col(op, row, 14)?,
        number: col(op, row, 15)?,
    })
}

fn eula_from_row(op: &'static str, row: &Row) -> Result<Eula, StoreError> {
    Ok(Eula {
        version: col(op, row, 0)?,
        text: col(op, row, 1)?,
        published_at_ms: col(op, row, 2)?,
    })
}

fn enrolment_from_row(op: &'static str, row: &Row) -> Result<Enrolment, StoreError> {
    Ok(Enrolment {
        code_hash: col(op, row, 0)?,
        user: col(op, row, 1)?,
        created_at_ms: col(op, row, 2)?,
        expires_at_ms: col(op, row, 3)?,
        used_at_ms: col(op, row, 4)?,
        device_id: col(op, row, 5)?,
        zone_public_key: col(op, row, 6)?,
        presented_at_ms: col(op, row, 7)?,
    })
}

fn security_event_from_row(op: &'static str, row: &Row) -> Result<SecurityEvent, StoreError> {
    Ok(SecurityEvent {
        id: col(op, row, 0)?,
        at_ms: col(op, row, 1)?,
        kind: col(op, row, 2)?,
        user: col(op, row, 3)?,
        device_id: col(op, row, 4)?,
        call_id: col(op, row, 5)?,
        detail: col(op, row, 6)?,
    })
}

// ---- number identity pool ----------------------------------------------------------------

pub(super) async fn pool_counts(s: &PostgresStore) -> Result<PoolCounts, StoreError> {
    const OP: &str = "pool_counts";
    let c = s.client(OP).await?;
    let found = rows(
        &c,
        "SELECT state, count(*) FROM identifiers GROUP BY state",
        &[],
    )
    .await
    .map_err(db(OP))?;
    let mut counts = PoolCounts::default();
    for row in &found {
        let state: String = col(OP, row, 0)?;
        let n: i64 = col(OP, row, 1)?;
        // A count is never negative.
        let n = n.unsigned_abs();
        match state.as_str() {
            "free" => counts.free = n,
            "assigned" => counts.assigned = n,
            "quarantined" => counts.quarantined = n,
            other => {
                return Err(StoreError::Database(format!(
                    "{OP}: unknown identifier state {other:?}"
                )));
            }
        }
    }
    Ok(counts)
}

// ---- EULA versions -----------------------------------------------------------------------

pub(super) async fn current_eula(s: &PostgresStore) -> Result<Option<Eula>, StoreError> {
    const OP: &str = "current_eula";
    let c = s.client(OP).await?;
    let row = opt(&c, CURRENT_EULA, &[]).await.map_err(db(OP))?;
    row.map(|r| eula_from_row(OP, &r)).transpose()
}

pub(super) async fn eulas(s: &PostgresStore) -> Result<Vec<Eula>, StoreError> {
    const OP: &str = "eulas";
    let c = s.client(OP).await?;
    let found = rows(
        &c,
        "SELECT version, text, published_at_ms FROM eulas ORDER BY published_at_ms, seq",
        &[],
    )
    .await
    .map_err(db(OP))?;
    map_rows(OP, &found, eula_from_row)
}

// ---- enrolment codes ---------------------------------------------------------------------

pub(super) async fn create_enrolment(s: &PostgresStore, e: &Enrolment) -> Result<(), StoreError> {
    const OP: &str = "create_enrolment";
    let c = s.client(OP).await?;
    let inserted = exec(
        &c,
        "INSERT INTO enrolments (code_hash, username, created_at_ms, expires_at_ms, \
         used_at_ms, device_id, zone_public_key, presented_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (code_hash) DO NOTHING",
        &[
            &e.code_hash,
            &e.user,
            &e.created_at_ms,
            &e.expires_at_ms,
            &e.used_at_ms,
            &e.device_id,
            &e.zone_public_key,
            &e.presented_at_ms,
        ],
    )
    .await;
    match inserted {
        Ok(0) => Err(StoreError::Conflict("enrolment code".into())),
        Ok(_) => Ok(()),
        Err(err) => match foreign_key_violation(&err) {
            Some(c) if c.contains("device") => Err(StoreError::NotFound(format!(
                "device {}",
                e.device_id.as_deref().unwrap_or_default()
            ))),
            Some(_) => Err(StoreError::NotFound(format!("subscriber {}", e.user))),
            None => Err(db(OP)(err)),
        },
    }
}

pub(super) async fn enrolments(
    s: &PostgresStore,
    user: &str,
) -> Result<Vec<Enrolment>, StoreError> {
    const OP: &str = "enrolments";
    let c = s.client(OP).await?;
    let found = rows(
        &c,
        "SELECT code_hash, username, created_at_ms, expires_at_ms, used_at_ms, device_id, \
         zone_public_key, presented_at_ms \
         FROM enrolments WHERE username = $1 ORDER BY created_at_ms, code_hash",
        &[&user],
    )
    .await
    .map_err(db(OP))?;
    map_rows(OP, &found, enrolment_from_row)
}

/// Checks the code `code_hash` inside `tx` for a presentation with `zone_public_key` at
/// `now_ms` (exists, unused, unexpired, not bound to another key) and binds it to that key if
/// it is not bound yet. The code's row is locked (`FOR UPDATE`), so a concurrent presentation
/// waits and then sees the binding. Returns the code's subscriber.
async fn check_and_bind_code(
    tx: &Transaction<'_>,
    op: &'static str,
    code_hash: &str,
    zone_public_key: &str,
    now_ms: i64,
) -> Result<String, EnrolError> {
    let row = opt(
        tx,
        "SELECT username, expires_at_ms, used_at_ms, device_id, zone_public_key \
         FROM enrolments WHERE code_hash = $1 FOR UPDATE",
        &[&code_hash],
    )
    .await
    .map_err(db(op))?;
    let Some(row) = row else {
        return Err(EnrolError::CodeUnknown);
    };
    let user: String = col(op, &row, 0)?;
    let expires_at_ms: i64 = col(op, &row, 1)?;
    let used_at_ms: Option<i64> = col(op, &row, 2)?;
    let used_by: Option<String> = col(op, &row, 3)?;
    let bound: Option<String> = col(op, &row, 4)?;
    if used_at_ms.is_some() || used_by.is_some() {
        return Err(EnrolError::CodeUsed);
    }
    if now_ms >= expires_at_ms {
        return Err(EnrolError::CodeExpired);
    }
    match bound {
        Some(key) if key != zone_public_key => Err(EnrolError::CodeBound),
        Some(_) => Ok(user),
        None => {
            let bound = exec(
                tx,
                "UPDATE enrolments SET zone_public_key = $2, presented_at_ms = $3 \
                 WHERE code_hash = $1 AND zone_public_key IS NULL",
                &[&code_hash, &zone_public_key, &now_ms],
            )
            .await
            .map_err(db(op))?;
            if bound != 1 {
                return Err(EnrolError::CodeBound);
            }
            Ok(user)
        }
    }
}

/// See [`Store::present_code`](crate::Store::present_code).
pub(super) async fn present_code(
    s: &PostgresStore,
    code_hash: &str,
    zone_public_key: &str,
    now_ms: i64,
) -> Result<(), EnrolError> {
    const OP: &str = "present_code";
    let mut c = s.client(OP).await?;
    let tx = c.transaction().await.map_err(db(OP))?;
    check_and_bind_code(&tx, OP, code_hash, zone_public_key, now_ms).await?;
    tx.commit().await.map_err(db(OP))?;
    Ok(())
}

// ---- devices -----------------------------------------------------------------------------

/// Claims the lowest free identifier that no concurrent transaction holds, for `device_id`.
///
/// When every free identifier is held by concurrent enrolments (which may yet roll back), it
/// looks again after a short pause rather than waiting on their row locks (a waiter holding
/// one row while waiting for another is how concurrent claims deadlock): `None` once no
/// identifier is free (or, at worst, after the lock timeout of polling). It holds no
/// identifier while it polls, so nobody waits on it.
async fn claim_identifier(
    tx: &Transaction<'_>,
    device_id: &str,
    now_ms: i64,
) -> Result<Option<String>, tokio_postgres::Error> {
    const CLAIM: &str = "WITH next AS (SELECT identifier FROM identifiers WHERE state = 'free' \
         ORDER BY identifier LIMIT 1 FOR UPDATE SKIP LOCKED) \
         UPDATE identifiers i SET state = 'assigned', device_id = $1, changed_at_ms = $2 \
         FROM next WHERE i.identifier = next.identifier RETURNING i.identifier";
    const ANY_FREE: &str = "SELECT 1 FROM identifiers WHERE state = 'free' LIMIT 1";
    let deadline = tokio::time::Instant::now() + super::TIMEOUT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if let Some(row) = opt(tx, CLAIM, &[&device_id, &now_ms]).await? {
            return row.try_get(0).map(Some);
        }
        if opt(tx, ANY_FREE, &[]).await?.is_none() || tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// The atomic enrolment; see [`Store::enrol`](crate::Store::enrol).
pub(super) async fn enrol(
    s: &PostgresStore,
    code_hash: &str,
    now_ms: i64,
    new: &NewDevice,
) -> Result<Enrolled, EnrolError> {
    const OP: &str = "enrol";
    let mut c = s.client(OP).await?;
    let tx = c.transaction().await.map_err(db(OP))?;

    // The subscriber first (lock order; a concurrent deletion waits or has happened).
    let owner = opt(
        &tx,
        "SELECT s.username FROM enrolments e JOIN subscribers s ON s.username = e.username \
         WHERE e.code_hash = $1 FOR KEY SHARE OF s",
        &[&code_hash],
    )
    .await
    .map_err(db(OP))?;
    if owner.is_none() {
        return Err(EnrolError::CodeUnknown);
    }

    // The code, bound to this zone key (in this transaction if it was not yet).
    let user = check_and_bind_code(&tx, OP, code_hash, &new.zone_public_key, now_ms).await?;

    // The EULA.
    let current = opt(&tx, CURRENT_EULA, &[]).await.map_err(db(OP))?;
    let current = match current {
        Some(r) => Some(col::<String>(OP, &r, 0)?),
        None => None,
    };
    if current.as_deref() != Some(new.eula_version.as_str()) {
        return Err(EnrolError::EulaNotCurrent {
            accepted: new.eula_version.clone(),
            current,
        });
    }

    // No clash with an existing device (a concurrent one is caught by the unique indexes).
    let clash = opt(
        &tx,
        "SELECT id = $1 FROM devices WHERE id = $1 OR token_hash = $2 LIMIT 1",
        &[&new.id, &new.token_hash],
    )
    .await
    .map_err(db(OP))?;
    if let Some(row) = clash {
        let same_id: bool = col(OP, &row, 0)?;
        return Err(StoreError::Conflict(if same_id {
            format!("device {}", new.id)
        } else {
            "device token hash".into()
        })
        .into());
    }

    // The identifier.
    let Some(identifier) = claim_identifier(&tx, &new.id, now_ms)
        .await
        .map_err(db(OP))?
    else {
        return Err(EnrolError::PoolExhausted);
    };

    // The device, and the code used by it.
    let device = Device {
        id: new.id.clone(),
        user,
        identifier: identifier.clone(),
        security_level: new.security_level.clone(),
        zone_public_key: new.zone_public_key.clone(),
        eula_version: new.eula_version.clone(),
        eula_accepted_at_ms: new.eula_accepted_at_ms,
        license_key_enc: new.license_key_enc.clone(),
        sip_ha1_md5: new.sip_ha1_md5.clone(),
        sip_ha1_sha256: new.sip_ha1_sha256.clone(),
        token_hash: new.token_hash.clone(),
        service_on: true,
        revoked: None,
        created_at_ms: now_ms,
        number: None,
    };
    let inserted = exec(
        &tx,
        "INSERT INTO devices (id, username, identifier, security_level, zone_public_key, \
         eula_version, eula_accepted_at_ms, license_key_enc, sip_ha1_md5, sip_ha1_sha256, \
         token_hash, service_on, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &device.id,
            &device.user,
            &device.identifier,
            &device.security_level,
            &device.zone_public_key,
            &device.eula_version,
            &device.eula_accepted_at_ms,
            &device.license_key_enc,
            &device.sip_ha1_md5,
            &device.sip_ha1_sha256,
            &device.token_hash,
            &device.service_on,
            &device.created_at_ms,
        ],
    )
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(
                StoreError::Conflict(format!("device {} (id or token hash)", new.id)).into(),
            );
        }
        Err(e) => return Err(db(OP)(e).into()),
    }
    let used = exec(
        &tx,
        "UPDATE enrolments SET used_at_ms = $2, device_id = $3 \
         WHERE code_hash = $1 AND used_at_ms IS NULL",
        &[&code_hash, &now_ms, &device.id],
    )
    .await
    .map_err(db(OP))?;
    if used != 1 {
        return Err(EnrolError::CodeUsed);
    }
    tx.commit().await.map_err(db(OP))?;
    Ok(Enrolled { device, identifier })
}

/// The device whose `column` (`id` or `token_hash`, both unique) is `value`.
pub(super) async fn device_where(
    s: &PostgresStore,
    op: &'static str,
    column: &'static str,
    value: &str,
) -> Result<Option<Device>, StoreError> {
    let c = s.client(op).await?;
    device_in(&c, op, column, value).await
}

async fn device_in(
    c: &impl GenericClient,
    op: &'static str,
    column: &'static str,
    value: &str,
) -> Result<Option<Device>, StoreError> {
    let row = opt(
        c,
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE {column} = $1"),
        &[&value],
    )
    .await
    .map_err(db(op))?;
    row.map(|r| device_from_row(op, &r)).transpose()
}

pub(super) async fn devices(
    s: &PostgresStore,
    user: Option<&str>,
) -> Result<Vec<Device>, StoreError> {
    const OP: &str = "devices";
    let c = s.client(OP).await?;
    let found = match user {
        Some(user) => {
            rows(
                &c,
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE username = $1 \
                     ORDER BY created_at_ms, id"
                ),
                &[&user],
            )
            .await
        }
        None => {
            rows(
                &c,
                &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at_ms, id"),
                &[],
            )
            .await
        }
    }
    .map_err(db(OP))?;
    map_rows(OP, &found, device_from_row)
}

pub(super) async fn set_number(
    s: &PostgresStore,
    id: &str,
    number: Option<&str>,
) -> Result<(), StoreError> {
    const OP: &str = "set_number";
    let c = s.client(OP).await?;
    let n = exec(
        &c,
        "UPDATE devices SET number = $2 WHERE id = $1",
        &[&id, &number],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("number {}", number.unwrap_or_default()))
        } else {
            db(OP)(e)
        }
    })?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {id}")));
    }
    Ok(())
}

/// The device's row is locked first: a concurrent revocation waits, then sees it revoked.
pub(super) async fn revoke_device(
    s: &PostgresStore,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<Device, StoreError> {
    const OP: &str = "revoke_device";
    let mut c = s.client(OP).await?;
    let tx = c.transaction().await.map_err(db(OP))?;
    let row = opt(
        &tx,
        "SELECT revoked_at_ms FROM devices WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await
    .map_err(db(OP))?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!("device {id}")));
    };
    if col::<Option<i64>>(OP, &row, 0)?.is_some() {
        return Err(StoreError::Conflict(format!("revocation of device {id}")));
    }
    exec(
        &tx,
        "UPDATE identifiers SET state = 'quarantined', changed_at_ms = $2 \
         WHERE device_id = $1 AND state = 'assigned'",
        &[&id, &now_ms],
    )
    .await
    .map_err(db(OP))?;
    exec(
        &tx,
        "UPDATE devices SET revoked_reason = $2, revoked_at_ms = $3 \
         WHERE id = $1 AND revoked_at_ms IS NULL",
        &[&id, &reason, &now_ms],
    )
    .await
    .map_err(db(OP))?;
    exec(
        &tx,
        "DELETE FROM registrations WHERE device_id = $1",
        &[&id],
    )
    .await
    .map_err(db(OP))?;
    let device = device_in(&tx, OP, "id", id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
    tx.commit().await.map_err(db(OP))?;
    Ok(device)
}

/// Inside `delete_subscriber`'s transaction (subscriber locked): locks and revokes every
/// live device of `user` (reason `subscriber-deleted`) and quarantines their identifiers, at
/// `now_ms`.
pub(super) async fn subscriber_deleted(
    tx: &Transaction<'_>,
    user: &str,
    now_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let live = rows(
        tx,
        "SELECT id FROM devices WHERE username = $1 AND revoked_at_ms IS NULL \
         ORDER BY id FOR UPDATE",
        &[&user],
    )
    .await?;
    let ids = live
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    exec(
        tx,
        "UPDATE identifiers SET state = 'quarantined', changed_at_ms = $2 \
         WHERE state = 'assigned' AND device_id = ANY($1)",
        &[&ids, &now_ms],
    )
    .await?;
    exec(
        tx,
        "DELETE FROM registrations WHERE device_id = ANY($1)",
        &[&ids],
    )
    .await?;
    exec(
        tx,
        "UPDATE devices SET revoked_reason = $2, revoked_at_ms = $3 WHERE id = ANY($1)",
        &[&ids, &SUBSCRIBER_DELETED, &now_ms],
    )
    .await?;
    Ok(())
}

// ---- security events ---------------------------------------------------------------------

/// Serialises security-event inserts: ids are then committed in increasing order, so a
/// reader paging by `since_id` never misses an event committed late with a smaller id.
const EVENTS_LOCK: i64 = 0x7472_7573_7472_0003;

pub(super) async fn add_security_event(
    s: &PostgresStore,
    ev: &SecurityEvent,
) -> Result<i64, StoreError> {
    const OP: &str = "add_security_event";
    let mut c = s.client(OP).await?;
    let tx = c.transaction().await.map_err(db(OP))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
        .await
        .map_err(db(OP))?;
    let row = opt(
        &tx,
        "INSERT INTO security_events (at_ms, kind, username, device_id, call_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        &[
            &ev.at_ms,
            &ev.kind,
            &ev.user,
            &ev.device_id,
            &ev.call_id,
            &ev.detail,
        ],
    )
    .await
    .map_err(db(OP))?
    .ok_or_else(|| StoreError::Database(format!("{OP}: no id returned")))?;
    let id = col(OP, &row, 0)?;
    tx.commit().await.map_err(db(OP))?;
    Ok(id)
}

/// Security events by `sql` (`$1` the id bound, `$2` the limit).
pub(super) async fn security_events(
    s: &PostgresStore,
    op: &'static str,
    sql: &str,
    id: i64,
    limit: u32,
) -> Result<Vec<SecurityEvent>, StoreError> {
    let c = s.client(op).await?;
    let found = rows(&c, sql, &[&id, &i64::from(limit)])
        .await
        .map_err(db(op))?;
    map_rows(op, &found, security_event_from_row)
}
