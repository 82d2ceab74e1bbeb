//! Trusted provisioning as SQL: the number identity pool, EULA versions, enrolment codes,
//! devices and security events. The [`Store`](crate::Store) methods in `queries.rs` call these
//! functions with the locked connection.
//!
//! A method that reads before it writes runs in one `BEGIN IMMEDIATE` transaction: the write
//! lock is taken first, so no other connection can change what was read before the commit
//! (exactly-once identifier assignment across several stores on one file). Dropping a
//! [`Transaction`] rolls it back, so every early return leaves the database untouched.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::queries::{db, is_foreign_key_violation};
use crate::{
    Device, EnrolError, Enrolled, Enrolment, Eula, NewDevice, PoolCounts, Revocation,
    SecurityEvent, StoreError,
};

/// The revocation reason [`subscriber_deleted`] records.
const SUBSCRIBER_DELETED: &str = "subscriber-deleted";

/// `SELECT <every device column> FROM devices <rest>`, in [`device_from_row`] order.
macro_rules! select_devices {
    ($rest:literal) => {
        concat!(
            "SELECT id, username, identifier, security_level, zone_public_key, eula_version, \
             eula_accepted_at_ms, license_key_enc, sip_ha1_md5, sip_ha1_sha256, token_hash, \
             service_on, revoked_reason, revoked_at_ms, created_at_ms, number FROM devices ",
            $rest
        )
    };
}

/// `SELECT <every EULA column> FROM eulas <rest>`, in [`eula_from_row`] order.
macro_rules! select_eulas {
    ($rest:literal) => {
        concat!("SELECT version, text, published_at_ms FROM eulas ", $rest)
    };
}

/// Starts a `BEGIN IMMEDIATE` transaction (waits up to the busy timeout for the write lock).
pub(super) fn immediate<'c>(
    conn: &'c mut Connection,
    op: &'static str,
) -> Result<Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db(op))
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    let reason: Option<String> = row.get(12)?;
    let at_ms: Option<i64> = row.get(13)?;
    Ok(Device {
        id: row.get(0)?,
        user: row.get(1)?,
        identifier: row.get(2)?,
        security_level: row.get(3)?,
        zone_public_key: row.get(4)?,
        eula_version: row.get(5)?,
        eula_accepted_at_ms: row.get(6)?,
        license_key_enc: row.get(7)?,
        sip_ha1_md5: row.get(8)?,
        sip_ha1_sha256: row.get(9)?,
        token_hash: row.get(10)?,
        service_on: row.get(11)?,
        // The schema keeps both columns set or both NULL.
        revoked: reason
            .zip(at_ms)
            .map(|(reason, at_ms)| Revocation { reason, at_ms }),
        created_at_ms: row.get(14)?,
        number: row.get(15)?,
    })
}

fn eula_from_row(row: &Row<'_>) -> rusqlite::Result<Eula> {
    Ok(Eula {
        version: row.get(0)?,
        text: row.get(1)?,
        published_at_ms: row.get(2)?,
    })
}

fn enrolment_from_row(row: &Row<'_>) -> rusqlite::Result<Enrolment> {
    Ok(Enrolment {
        code_hash: row.get(0)?,
        user: row.get(1)?,
        created_at_ms: row.get(2)?,
        expires_at_ms: row.get(3)?,
        used_at_ms: row.get(4)?,
        device_id: row.get(5)?,
        zone_public_key: row.get(6)?,
        presented_at_ms: row.get(7)?,
    })
}

fn security_event_from_row(row: &Row<'_>) -> rusqlite::Result<SecurityEvent> {
    Ok(SecurityEvent {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        kind: row.get(2)?,
        user: row.get(3)?,
        device_id: row.get(4)?,
        call_id: row.get(5)?,
        detail: row.get(6)?,
    })
}

fn device_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<Device>> {
    conn.prepare_cached(select_devices!("WHERE id = ?1"))?
        .query_row([id], device_from_row)
        .optional()
}

fn current_eula_in(conn: &Connection) -> rusqlite::Result<Option<Eula>> {
    conn.prepare_cached(select_eulas!(
        "ORDER BY published_at_ms DESC, seq DESC LIMIT 1"
    ))?
    .query_row([], eula_from_row)
    .optional()
}

// ---- number identity pool ----------------------------------------------------------------

pub(super) fn add_identifiers(conn: &mut Connection, ids: &[String]) -> Result<usize, StoreError> {
    const OP: &str = "add_identifiers";
    let tx = immediate(conn, OP)?;
    let mut added = 0;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO identifiers (identifier, state) VALUES (?1, 'free') \
                 ON CONFLICT (identifier) DO NOTHING",
            )
            .map_err(db(OP))?;
        for id in ids {
            added += stmt.execute([id]).map_err(db(OP))?;
        }
    }
    tx.commit().map_err(db(OP))?;
    Ok(added)
}

pub(super) fn pool_counts(conn: &Connection) -> Result<PoolCounts, StoreError> {
    const OP: &str = "pool_counts";
    let mut stmt = conn
        .prepare_cached("SELECT state, count(*) FROM identifiers GROUP BY state")
        .map_err(db(OP))?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(db(OP))?;
    let mut counts = PoolCounts::default();
    for row in rows {
        let (state, n) = row.map_err(db(OP))?;
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

pub(super) fn release_quarantined(
    conn: &Connection,
    older_than_ms: i64,
) -> Result<usize, StoreError> {
    const OP: &str = "release_quarantined";
    conn.prepare_cached(
        "UPDATE identifiers SET state = 'free', device_id = NULL, changed_at_ms = NULL \
         WHERE state = 'quarantined' AND changed_at_ms < ?1",
    )
    .and_then(|mut stmt| stmt.execute([older_than_ms]))
    .map_err(db(OP))
}

// ---- EULA versions -----------------------------------------------------------------------

pub(super) fn publish_eula(conn: &mut Connection, eula: &Eula) -> Result<(), StoreError> {
    const OP: &str = "publish_eula";
    let tx = immediate(conn, OP)?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM eulas WHERE version = ?1")
        .and_then(|mut stmt| stmt.exists([&eula.version]))
        .map_err(db(OP))?;
    if exists {
        return Err(StoreError::Conflict(format!(
            "EULA version {}",
            eula.version
        )));
    }
    tx.prepare_cached(
        "INSERT INTO eulas (version, text, published_at_ms, seq) \
         SELECT ?1, ?2, ?3, coalesce(max(seq), 0) + 1 FROM eulas",
    )
    .and_then(|mut stmt| stmt.execute(params![eula.version, eula.text, eula.published_at_ms]))
    .map_err(db(OP))?;
    tx.commit().map_err(db(OP))
}

pub(super) fn current_eula(conn: &Connection) -> Result<Option<Eula>, StoreError> {
    current_eula_in(conn).map_err(db("current_eula"))
}

pub(super) fn eulas(conn: &Connection) -> Result<Vec<Eula>, StoreError> {
    conn.prepare_cached(select_eulas!("ORDER BY published_at_ms, seq"))
        .and_then(|mut stmt| stmt.query_map([], eula_from_row)?.collect())
        .map_err(db("eulas"))
}

// ---- enrolment codes ---------------------------------------------------------------------

pub(super) fn create_enrolment(conn: &mut Connection, e: &Enrolment) -> Result<(), StoreError> {
    const OP: &str = "create_enrolment";
    let tx = immediate(conn, OP)?;
    let subscriber = tx
        .prepare_cached("SELECT 1 FROM subscribers WHERE username = ?1")
        .and_then(|mut stmt| stmt.exists([&e.user]))
        .map_err(db(OP))?;
    if !subscriber {
        return Err(StoreError::NotFound(format!("subscriber {}", e.user)));
    }
    let inserted = tx
        .prepare_cached(
            "INSERT INTO enrolments (code_hash, username, created_at_ms, expires_at_ms, \
             used_at_ms, device_id, zone_public_key, presented_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (code_hash) DO NOTHING",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                e.code_hash,
                e.user,
                e.created_at_ms,
                e.expires_at_ms,
                e.used_at_ms,
                e.device_id,
                e.zone_public_key,
                e.presented_at_ms,
            ])
        });
    match inserted {
        Ok(0) => return Err(StoreError::Conflict("enrolment code".into())),
        Ok(_) => {}
        // The subscriber exists (checked above): the device does not.
        Err(err) if is_foreign_key_violation(&err) => {
            return Err(StoreError::NotFound(format!(
                "device {}",
                e.device_id.as_deref().unwrap_or_default()
            )));
        }
        Err(err) => return Err(db(OP)(err)),
    }
    tx.commit().map_err(db(OP))
}

pub(super) fn enrolments(conn: &Connection, user: &str) -> Result<Vec<Enrolment>, StoreError> {
    conn.prepare_cached(
        "SELECT code_hash, username, created_at_ms, expires_at_ms, used_at_ms, device_id, \
         zone_public_key, presented_at_ms \
         FROM enrolments WHERE username = ?1 ORDER BY created_at_ms, code_hash",
    )
    .and_then(|mut stmt| stmt.query_map([user], enrolment_from_row)?.collect())
    .map_err(db("enrolments"))
}

/// Checks the code `code_hash` inside `tx` for a presentation with `zone_public_key` at
/// `now_ms` (exists, unused, unexpired, not bound to another key) and binds it to that key if
/// it is not bound yet. Returns the code's subscriber.
fn check_and_bind_code(
    tx: &Transaction<'_>,
    op: &'static str,
    code_hash: &str,
    zone_public_key: &str,
    now_ms: i64,
) -> Result<String, EnrolError> {
    /// What a presentation checks of a code.
    struct Code {
        user: String,
        expires_at_ms: i64,
        used_at_ms: Option<i64>,
        used_by: Option<String>,
        bound: Option<String>,
    }
    let code: Option<Code> = tx
        .prepare_cached(
            "SELECT username, expires_at_ms, used_at_ms, device_id, zone_public_key \
             FROM enrolments WHERE code_hash = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row([code_hash], |r| {
                Ok(Code {
                    user: r.get(0)?,
                    expires_at_ms: r.get(1)?,
                    used_at_ms: r.get(2)?,
                    used_by: r.get(3)?,
                    bound: r.get(4)?,
                })
            })
            .optional()
        })
        .map_err(db(op))?;
    let Some(Code {
        user,
        expires_at_ms,
        used_at_ms,
        used_by,
        bound,
    }) = code
    else {
        return Err(EnrolError::CodeUnknown);
    };
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
            // Under the write lock: no other presentation can bind it in between.
            let bound = tx
                .prepare_cached(
                    "UPDATE enrolments SET zone_public_key = ?2, presented_at_ms = ?3 \
                     WHERE code_hash = ?1 AND zone_public_key IS NULL",
                )
                .and_then(|mut stmt| stmt.execute(params![code_hash, zone_public_key, now_ms]))
                .map_err(db(op))?;
            if bound != 1 {
                return Err(EnrolError::CodeBound);
            }
            Ok(user)
        }
    }
}

/// The code's first presentation binds it; see
/// [`Store::present_code`](crate::Store::present_code).
pub(super) fn present_code(
    conn: &mut Connection,
    code_hash: &str,
    zone_public_key: &str,
    now_ms: i64,
) -> Result<(), EnrolError> {
    const OP: &str = "present_code";
    let tx = immediate(conn, OP)?;
    check_and_bind_code(&tx, OP, code_hash, zone_public_key, now_ms)?;
    tx.commit().map_err(db(OP))?;
    Ok(())
}

// ---- devices -----------------------------------------------------------------------------

/// The atomic enrolment; see [`Store::enrol`](crate::Store::enrol).
pub(super) fn enrol(
    conn: &mut Connection,
    code_hash: &str,
    now_ms: i64,
    new: &NewDevice,
) -> Result<Enrolled, EnrolError> {
    const OP: &str = "enrol";
    let tx = immediate(conn, OP)?;

    // The code, bound to this zone key (in this transaction if it was not yet).
    let user = check_and_bind_code(&tx, OP, code_hash, &new.zone_public_key, now_ms)?;

    // The EULA.
    let current = current_eula_in(&tx).map_err(db(OP))?.map(|e| e.version);
    if current.as_deref() != Some(new.eula_version.as_str()) {
        return Err(EnrolError::EulaNotCurrent {
            accepted: new.eula_version.clone(),
            current,
        });
    }

    // No clash with an existing device.
    let id_taken = tx
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")
        .and_then(|mut stmt| stmt.exists([&new.id]))
        .map_err(db(OP))?;
    if id_taken {
        return Err(StoreError::Conflict(format!("device {}", new.id)).into());
    }
    let token_taken = tx
        .prepare_cached("SELECT 1 FROM devices WHERE token_hash = ?1")
        .and_then(|mut stmt| stmt.exists([&new.token_hash]))
        .map_err(db(OP))?;
    if token_taken {
        return Err(StoreError::Conflict("device token hash".into()).into());
    }

    // The identifier: the lowest free one, marked assigned under the write lock.
    let identifier: Option<String> = tx
        .prepare_cached(
            "SELECT identifier FROM identifiers WHERE state = 'free' \
             ORDER BY identifier LIMIT 1",
        )
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)).optional())
        .map_err(db(OP))?;
    let Some(identifier) = identifier else {
        return Err(EnrolError::PoolExhausted);
    };
    let assigned = tx
        .prepare_cached(
            "UPDATE identifiers SET state = 'assigned', device_id = ?2, changed_at_ms = ?3 \
             WHERE identifier = ?1 AND state = 'free'",
        )
        .and_then(|mut stmt| stmt.execute(params![identifier, new.id, now_ms]))
        .map_err(db(OP))?;
    if assigned != 1 {
        // Unreachable under the write lock; never hand out an identifier twice regardless.
        return Err(StoreError::Database(format!("{OP}: identifier taken concurrently")).into());
    }

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
    tx.prepare_cached(
        "INSERT INTO devices (id, username, identifier, security_level, zone_public_key, \
         eula_version, eula_accepted_at_ms, license_key_enc, sip_ha1_md5, sip_ha1_sha256, \
         token_hash, service_on, created_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            device.id,
            device.user,
            device.identifier,
            device.security_level,
            device.zone_public_key,
            device.eula_version,
            device.eula_accepted_at_ms,
            device.license_key_enc,
            device.sip_ha1_md5,
            device.sip_ha1_sha256,
            device.token_hash,
            device.service_on,
            device.created_at_ms,
        ])
    })
    .map_err(db(OP))?;
    let used = tx
        .prepare_cached(
            "UPDATE enrolments SET used_at_ms = ?2, device_id = ?3 \
             WHERE code_hash = ?1 AND used_at_ms IS NULL",
        )
        .and_then(|mut stmt| stmt.execute(params![code_hash, now_ms, device.id]))
        .map_err(db(OP))?;
    if used != 1 {
        return Err(EnrolError::CodeUsed);
    }
    tx.commit().map_err(db(OP))?;
    Ok(Enrolled { device, identifier })
}

pub(super) fn device(conn: &Connection, id: &str) -> Result<Option<Device>, StoreError> {
    device_by_id(conn, id).map_err(db("device"))
}

pub(super) fn devices(conn: &Connection, user: Option<&str>) -> Result<Vec<Device>, StoreError> {
    let rows = match user {
        Some(user) => conn
            .prepare_cached(select_devices!(
                "WHERE username = ?1 ORDER BY created_at_ms, id"
            ))
            .and_then(|mut stmt| stmt.query_map([user], device_from_row)?.collect()),
        None => conn
            .prepare_cached(select_devices!("ORDER BY created_at_ms, id"))
            .and_then(|mut stmt| stmt.query_map([], device_from_row)?.collect()),
    };
    rows.map_err(db("devices"))
}

pub(super) fn set_service(conn: &Connection, id: &str, on: bool) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached("UPDATE devices SET service_on = ?2 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, on]))
        .map_err(db("set_service"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {id}")));
    }
    Ok(())
}

pub(super) fn set_number(
    conn: &Connection,
    id: &str,
    number: Option<&str>,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached("UPDATE devices SET number = ?2 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, number]))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(format!("number {}", number.unwrap_or_default()))
            }
            e => db("set_number")(e),
        })?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {id}")));
    }
    Ok(())
}

pub(super) fn set_license_key_enc(
    conn: &Connection,
    id: &str,
    enc: &str,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached("UPDATE devices SET license_key_enc = ?2 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, enc]))
        .map_err(db("set_license_key_enc"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {id}")));
    }
    Ok(())
}

pub(super) fn revoke_device(
    conn: &mut Connection,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<Device, StoreError> {
    const OP: &str = "revoke_device";
    let tx = immediate(conn, OP)?;
    let revoked_at: Option<Option<i64>> = tx
        .prepare_cached("SELECT revoked_at_ms FROM devices WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id], |r| r.get(0)).optional())
        .map_err(db(OP))?;
    match revoked_at {
        None => return Err(StoreError::NotFound(format!("device {id}"))),
        Some(Some(_)) => return Err(StoreError::Conflict(format!("revocation of device {id}"))),
        Some(None) => {}
    }
    tx.prepare_cached(
        "UPDATE identifiers SET state = 'quarantined', changed_at_ms = ?2 \
         WHERE device_id = ?1 AND state = 'assigned'",
    )
    .and_then(|mut stmt| stmt.execute(params![id, now_ms]))
    .map_err(db(OP))?;
    tx.prepare_cached(
        "UPDATE devices SET revoked_reason = ?2, revoked_at_ms = ?3 \
         WHERE id = ?1 AND revoked_at_ms IS NULL",
    )
    .and_then(|mut stmt| stmt.execute(params![id, reason, now_ms]))
    .map_err(db(OP))?;
    tx.prepare_cached("DELETE FROM registrations WHERE device_id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(db(OP))?;
    let device = device_by_id(&tx, id)
        .map_err(db(OP))?
        .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
    tx.commit().map_err(db(OP))?;
    Ok(device)
}

/// Inside `delete_subscriber`'s transaction: revokes every live device of `user` (reason
/// `subscriber-deleted`) and quarantines their identifiers, at `now_ms`.
pub(super) fn subscriber_deleted(
    tx: &Transaction<'_>,
    user: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE identifiers SET state = 'quarantined', changed_at_ms = ?2 \
         WHERE state = 'assigned' AND device_id IN \
         (SELECT id FROM devices WHERE username = ?1 AND revoked_at_ms IS NULL)",
    )?
    .execute(params![user, now_ms])?;
    tx.prepare_cached(
        "DELETE FROM registrations WHERE device_id IN \
         (SELECT id FROM devices WHERE username = ?1 AND revoked_at_ms IS NULL)",
    )?
    .execute([user])?;
    tx.prepare_cached(
        "UPDATE devices SET revoked_reason = ?2, revoked_at_ms = ?3 \
         WHERE username = ?1 AND revoked_at_ms IS NULL",
    )?
    .execute(params![user, SUBSCRIBER_DELETED, now_ms])?;
    Ok(())
}

pub(super) fn device_by_token_hash(
    conn: &Connection,
    hash: &str,
) -> Result<Option<Device>, StoreError> {
    conn.prepare_cached(select_devices!("WHERE token_hash = ?1"))
        .and_then(|mut stmt| stmt.query_row([hash], device_from_row).optional())
        .map_err(db("device_by_token_hash"))
}

// ---- security events ---------------------------------------------------------------------

pub(super) fn add_security_event(conn: &Connection, ev: &SecurityEvent) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO security_events (at_ms, kind, username, device_id, call_id, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
    )
    .and_then(|mut stmt| {
        stmt.query_row(
            params![
                ev.at_ms,
                ev.kind,
                ev.user,
                ev.device_id,
                ev.call_id,
                ev.detail
            ],
            |r| r.get(0),
        )
    })
    .map_err(db("add_security_event"))
}

pub(super) fn security_events(
    conn: &Connection,
    since_id: i64,
    limit: u32,
) -> Result<Vec<SecurityEvent>, StoreError> {
    conn.prepare_cached(
        "SELECT id, at_ms, kind, username, device_id, call_id, detail FROM security_events \
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![since_id, limit], security_event_from_row)?
            .collect()
    })
    .map_err(db("security_events"))
}

pub(super) fn security_events_newest(
    conn: &Connection,
    before_id: i64,
    limit: u32,
) -> Result<Vec<SecurityEvent>, StoreError> {
    conn.prepare_cached(
        "SELECT id, at_ms, kind, username, device_id, call_id, detail FROM security_events \
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![before_id, limit], security_event_from_row)?
            .collect()
    })
    .map_err(db("security_events_newest"))
}
