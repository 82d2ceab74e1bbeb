//! The [`Store`] methods as SQL: one statement each (atomic on its own) or one
//! `BEGIN IMMEDIATE` transaction; the provisioning methods live in `provisioning.rs`. The SQL
//! is portable (`ON CONFLICT ... DO UPDATE`, no `INSERT OR REPLACE`) for a PostgreSQL twin.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, provisioning};
use crate::{
    Cdr, ChainReport, Device, EnrolError, Enrolled, Enrolment, Eula, NewDevice, PoolCounts,
    Registration, RegistrationChange, RingDelay, RoutingProfile, SecurityEvent, Store, StoreError,
    Subscriber,
};

/// `SELECT <every subscriber column> FROM subscribers <rest>`, in [`subscriber_from_row`] order.
macro_rules! select_subscribers {
    ($rest:literal) => {
        concat!(
            "SELECT username, enterprise, ha1_md5, ha1_sha256, ring_timeout_secs, ring_delays, \
             created_at FROM subscribers ",
            $rest
        )
    };
}

/// `SELECT <every registration column> FROM registrations <rest>`, in
/// [`registration_from_row`] order.
macro_rules! select_registrations {
    ($rest:literal) => {
        concat!(
            "SELECT username, contact, transport, source, local, call_id, cseq, expires_at_ms, q, \
             device_id FROM registrations ",
            $rest
        )
    };
}

/// Wraps a rusqlite error with the operation that failed.
pub(super) fn db(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Database(format!("{op}: {e}"))
}

/// Whether `e` is a foreign-key constraint failure.
pub(super) fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

fn ring_delays_json(profile: &RoutingProfile) -> Result<String, StoreError> {
    serde_json::to_string(&profile.ring_delays)
        .map_err(|e| StoreError::Database(format!("encode ring_delays: {e}")))
}

fn subscriber_from_row(row: &Row<'_>) -> rusqlite::Result<Subscriber> {
    let json: String = row.get(5)?;
    let ring_delays: Vec<RingDelay> = serde_json::from_str(&json)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(5, Type::Text, Box::new(e)))?;
    Ok(Subscriber {
        user: row.get(0)?,
        enterprise: row.get(1)?,
        ha1_md5: row.get(2)?,
        ha1_sha256: row.get(3)?,
        profile: RoutingProfile {
            ring_timeout_secs: row.get(4)?,
            ring_delays,
        },
        created_at: row.get(6)?,
    })
}

fn registration_from_row(row: &Row<'_>) -> rusqlite::Result<Registration> {
    Ok(Registration {
        user: row.get(0)?,
        contact: row.get(1)?,
        transport: row.get(2)?,
        source: row.get(3)?,
        local: row.get(4)?,
        call_id: row.get(5)?,
        cseq: row.get(6)?,
        expires_at_ms: row.get(7)?,
        q: row.get(8)?,
        device_id: row.get(9)?,
    })
}

/// The wall clock, Unix milliseconds (for `delete_subscriber`, which takes no time).
fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store for SqliteStore {
    fn create_subscriber(&self, sub: &Subscriber) -> Result<(), StoreError> {
        let delays = ring_delays_json(&sub.profile)?;
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO subscribers (username, enterprise, ha1_md5, ha1_sha256, \
                 ring_timeout_secs, ring_delays, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (username) DO NOTHING",
            )
            .map_err(db("create_subscriber"))?;
        let n = stmt
            .execute(params![
                sub.user,
                sub.enterprise,
                sub.ha1_md5,
                sub.ha1_sha256,
                sub.profile.ring_timeout_secs,
                delays,
                sub.created_at,
            ])
            .map_err(db("create_subscriber"))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("subscriber {}", sub.user)));
        }
        Ok(())
    }

    fn subscriber(&self, user: &str) -> Result<Option<Subscriber>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(select_subscribers!("WHERE username = ?1"))
            .map_err(db("subscriber"))?;
        stmt.query_row([user], subscriber_from_row)
            .optional()
            .map_err(db("subscriber"))
    }

    fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(select_subscribers!("ORDER BY username"))
            .map_err(db("subscribers"))?;
        let rows = stmt
            .query_map([], subscriber_from_row)
            .map_err(db("subscribers"))?;
        rows.collect::<Result<_, _>>().map_err(db("subscribers"))
    }

    fn set_profile(&self, user: &str, profile: &RoutingProfile) -> Result<(), StoreError> {
        let delays = ring_delays_json(profile)?;
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "UPDATE subscribers SET ring_timeout_secs = ?2, ring_delays = ?3 \
                 WHERE username = ?1",
            )
            .map_err(db("set_profile"))?;
        let n = stmt
            .execute(params![user, profile.ring_timeout_secs, delays])
            .map_err(db("set_profile"))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("subscriber {user}")));
        }
        Ok(())
    }

    /// Revocation time is the wall clock. Registrations and enrolment codes go by cascade.
    fn delete_subscriber(&self, user: &str) -> Result<bool, StoreError> {
        const OP: &str = "delete_subscriber";
        let now_ms = unix_ms_now();
        let mut conn = self.conn();
        let tx = provisioning::immediate(&mut conn, OP)?;
        provisioning::subscriber_deleted(&tx, user, now_ms).map_err(db(OP))?;
        let n = tx
            .prepare_cached("DELETE FROM subscribers WHERE username = ?1")
            .and_then(|mut stmt| stmt.execute([user]))
            .map_err(db(OP))?;
        tx.commit().map_err(db(OP))?;
        Ok(n > 0)
    }

    /// A registration with a `device_id` is checked against the device in the same
    /// transaction, so a binding never outlives the device's revocation.
    fn put_registration(&self, reg: &Registration) -> Result<(), StoreError> {
        const OP: &str = "put_registration";
        let mut conn = self.conn();
        let tx = provisioning::immediate(&mut conn, OP)?;
        put_registration_in(&tx, reg)?;
        tx.commit().map_err(db(OP))
    }

    fn delete_registration(&self, user: &str, contact: &str) -> Result<bool, StoreError> {
        delete_registration_in(&self.conn(), user, contact)
    }

    /// One transaction for all of them (one sync): the server's store writer hands over the
    /// registration changes that queued up while it was busy.
    fn apply_registrations(
        &self,
        changes: &[RegistrationChange],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        const OP: &str = "apply_registrations";
        let mut conn = self.conn();
        let tx = provisioning::immediate(&mut conn, OP)?;
        let results = changes
            .iter()
            .map(|c| match c {
                RegistrationChange::Put(reg) => put_registration_in(&tx, reg),
                RegistrationChange::Delete { user, contact } => {
                    delete_registration_in(&tx, user, contact).map(|_| ())
                }
            })
            .collect();
        tx.commit().map_err(db(OP))?;
        Ok(results)
    }

    fn delete_registrations(&self, user: &str) -> Result<usize, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("DELETE FROM registrations WHERE username = ?1")
            .map_err(db("delete_registrations"))?;
        stmt.execute([user]).map_err(db("delete_registrations"))
    }

    /// Live means `expires_at_ms > now_ms`.
    fn registrations(
        &self,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError> {
        let conn = self.conn();
        // Two statements rather than `?1 IS NULL OR ...`, so the per-user lookup (every
        // INVITE) uses the primary key.
        let rows = match user {
            Some(user) => conn
                .prepare_cached(select_registrations!(
                    "WHERE username = ?1 AND expires_at_ms > ?2 ORDER BY username, q DESC, contact"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![user, now_ms], registration_from_row)?
                        .collect()
                }),
            None => conn
                .prepare_cached(select_registrations!(
                    "WHERE expires_at_ms > ?1 ORDER BY username, q DESC, contact"
                ))
                .and_then(|mut stmt| stmt.query_map([now_ms], registration_from_row)?.collect()),
        };
        rows.map_err(db("registrations"))
    }

    /// Deletes exactly what [`Store::registrations`] no longer lists: `expires_at_ms <= now_ms`.
    fn purge_expired(&self, now_ms: i64) -> Result<usize, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("DELETE FROM registrations WHERE expires_at_ms <= ?1")
            .map_err(db("purge_expired"))?;
        stmt.execute([now_ms]).map_err(db("purge_expired"))
    }

    fn add_identifiers(&self, ids: &[String]) -> Result<usize, StoreError> {
        provisioning::add_identifiers(&mut self.conn(), ids)
    }

    fn pool_counts(&self) -> Result<PoolCounts, StoreError> {
        provisioning::pool_counts(&self.conn())
    }

    fn release_quarantined(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        provisioning::release_quarantined(&self.conn(), older_than_ms)
    }

    fn publish_eula(&self, eula: &Eula) -> Result<(), StoreError> {
        provisioning::publish_eula(&mut self.conn(), eula)
    }

    fn current_eula(&self) -> Result<Option<Eula>, StoreError> {
        provisioning::current_eula(&self.conn())
    }

    fn eulas(&self) -> Result<Vec<Eula>, StoreError> {
        provisioning::eulas(&self.conn())
    }

    fn create_enrolment(&self, enrolment: &Enrolment) -> Result<(), StoreError> {
        provisioning::create_enrolment(&mut self.conn(), enrolment)
    }

    fn enrolments(&self, user: &str) -> Result<Vec<Enrolment>, StoreError> {
        provisioning::enrolments(&self.conn(), user)
    }

    fn present_code(
        &self,
        code_hash: &str,
        zone_public_key: &str,
        now_ms: i64,
    ) -> Result<(), EnrolError> {
        provisioning::present_code(&mut self.conn(), code_hash, zone_public_key, now_ms)
    }

    fn enrol(&self, code_hash: &str, now_ms: i64, new: &NewDevice) -> Result<Enrolled, EnrolError> {
        provisioning::enrol(&mut self.conn(), code_hash, now_ms, new)
    }

    fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        provisioning::device(&self.conn(), id)
    }

    fn devices(&self, user: Option<&str>) -> Result<Vec<Device>, StoreError> {
        provisioning::devices(&self.conn(), user)
    }

    fn set_license_key_enc(&self, id: &str, enc: &str) -> Result<(), StoreError> {
        provisioning::set_license_key_enc(&self.conn(), id, enc)
    }

    fn set_service(&self, id: &str, on: bool) -> Result<(), StoreError> {
        provisioning::set_service(&self.conn(), id, on)
    }

    fn set_number(&self, id: &str, number: Option<&str>) -> Result<(), StoreError> {
        provisioning::set_number(&self.conn(), id, number)
    }

    fn revoke_device(&self, id: &str, reason: &str, now_ms: i64) -> Result<Device, StoreError> {
        provisioning::revoke_device(&mut self.conn(), id, reason, now_ms)
    }

    fn device_by_token_hash(&self, hash: &str) -> Result<Option<Device>, StoreError> {
        provisioning::device_by_token_hash(&self.conn(), hash)
    }

    fn append_cdr(&self, cdr: &Cdr) -> Result<Cdr, StoreError> {
        super::cdrs::append(&mut self.conn(), cdr, self.signer.as_ref())
    }

    fn append_cdrs(&self, cdrs: &[Cdr]) -> Result<Vec<Cdr>, StoreError> {
        super::cdrs::append_all(&mut self.conn(), cdrs, self.signer.as_ref())
    }

    fn cdrs(&self, from_ms: i64, to_ms: i64, entity: Option<&str>) -> Result<Vec<Cdr>, StoreError> {
        super::cdrs::query(&self.conn(), from_ms, to_ms, entity, super::cdrs::Page::ALL)
    }

    fn cdrs_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        entity: Option<&str>,
        after: Option<i64>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<Cdr>, StoreError> {
        let page = super::cdrs::Page {
            after,
            limit: Some(limit),
            newest_first,
        };
        super::cdrs::query(&self.conn(), from_ms, to_ms, entity, page)
    }

    fn verify_cdrs(&self) -> Result<ChainReport, StoreError> {
        super::cdrs::verify(&self.conn(), None, &[])
    }

    fn add_security_event(&self, event: &SecurityEvent) -> Result<i64, StoreError> {
        provisioning::add_security_event(&self.conn(), event)
    }

    fn security_events(&self, since_id: i64, limit: u32) -> Result<Vec<SecurityEvent>, StoreError> {
        provisioning::security_events(&self.conn(), since_id, limit)
    }

    fn security_events_newest(
        &self,
        before_id: i64,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        provisioning::security_events_newest(&self.conn(), before_id, limit)
    }
}

/// Upserts `reg` inside `tx`, checking its device (see `put_registration`).
fn put_registration_in(
    tx: &rusqlite::Transaction<'_>,
    reg: &Registration,
) -> Result<(), StoreError> {
    const OP: &str = "put_registration";
    if let Some(device_id) = &reg.device_id {
        let device: Option<(String, Option<i64>)> = tx
            .prepare_cached("SELECT username, revoked_at_ms FROM devices WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([device_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db(OP))?;
        match device {
            Some((owner, None)) if owner == reg.user => {}
            Some((owner, Some(_))) if owner == reg.user => {
                return Err(StoreError::Conflict(format!(
                    "revocation of device {device_id}"
                )));
            }
            _ => {
                return Err(StoreError::NotFound(format!(
                    "device {device_id} of subscriber {}",
                    reg.user
                )));
            }
        }
    }
    let result = tx
        .prepare_cached(
            "INSERT INTO registrations (username, contact, transport, source, local, \
             call_id, cseq, expires_at_ms, q, device_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (username, contact) DO UPDATE SET transport = excluded.transport, \
             source = excluded.source, local = excluded.local, call_id = excluded.call_id, \
             cseq = excluded.cseq, expires_at_ms = excluded.expires_at_ms, q = excluded.q, \
             device_id = excluded.device_id",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                reg.user,
                reg.contact,
                reg.transport,
                reg.source,
                reg.local,
                reg.call_id,
                reg.cseq,
                reg.expires_at_ms,
                reg.q,
                reg.device_id,
            ])
        });
    match result {
        Ok(_) => Ok(()),
        // The device was checked above: the subscriber is missing.
        Err(e) if is_foreign_key_violation(&e) => {
            Err(StoreError::NotFound(format!("subscriber {}", reg.user)))
        }
        Err(e) => Err(db(OP)(e)),
    }
}

/// Deletes one binding; whether it existed.
fn delete_registration_in(
    conn: &rusqlite::Connection,
    user: &str,
    contact: &str,
) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare_cached("DELETE FROM registrations WHERE username = ?1 AND contact = ?2")
        .map_err(db("delete_registration"))?;
    let n = stmt
        .execute([user, contact])
        .map_err(db("delete_registration"))?;
    Ok(n > 0)
}
