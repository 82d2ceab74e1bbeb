//! The [`Store`] methods for PostgreSQL: subscribers and registrations here, provisioning in
//! `provisioning.rs`, CDRs in `cdrs.rs`. Statements are prepared once per connection
//! (`prepare_cached`); a method that reads before it writes is one transaction that locks
//! what it read (see the module docs of `postgres.rs` for the lock order).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PostgresStore, cdrs, db, foreign_key_violation, narrow, provisioning};
use crate::{
    Cdr, ChainReport, Device, EnrolError, Enrolled, Enrolment, Eula, NewDevice, PoolCounts,
    Registration, RingDelay, RoutingProfile, SecurityEvent, Store, StoreError, Subscriber,
};

/// Runs one statement; returns the rows it changed.
pub(super) async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, params).await
}

/// Runs one query; returns its rows.
pub(super) async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let stmt = c.prepare_cached(sql).await?;
    c.query(&stmt, params).await
}

/// Runs one query; returns its only row, if any.
pub(super) async fn opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_opt(&stmt, params).await
}

/// Every row through `f`.
pub(super) fn map_rows<T>(
    op: &'static str,
    rows: &[Row],
    f: fn(&'static str, &Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|r| f(op, r)).collect()
}

/// Column `i` of `row`.
pub(super) fn col<'r, T: tokio_postgres::types::FromSql<'r>>(
    op: &'static str,
    row: &'r Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(db(op))
}

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

fn ring_delays_json(profile: &RoutingProfile) -> Result<String, StoreError> {
    serde_json::to_string(&profile.ring_delays)
        .map_err(|e| StoreError::Database(format!("encode ring_delays: {e}")))
}

fn subscriber_from_row(op: &'static str, row: &Row) -> Result<Subscriber, StoreError> {
    let json: String = col(op, row, 5)?;
    let ring_delays: Vec<RingDelay> = serde_json::from_str(&json)
        .map_err(|e| StoreError::Database(format!("{op}: ring_delays: {e}")))?;
    Ok(Subscriber {
        user: col(op, row, 0)?,
        enterprise: col(op, row, 1)?,
        ha1_md5: col(op, row, 2)?,
        ha1_sha256: col(op, row, 3)?,
        profile: RoutingProfile {
            ring_timeout_secs: narrow(op, "ring_timeout_secs", col(op, row, 4)?)?,
            ring_delays,
        },
        created_at: col(op, row, 6)?,
    })
}

fn registration_from_row(op: &'static str, row: &Row) -> Result<Registration, StoreError> {
    let q: i32 = col(op, row, 8)?;
    Ok(Registration {
        user: col(op, row, 0)?,
        contact: col(op, row, 1)?,
        transport: col(op, row, 2)?,
        source: col(op, row, 3)?,
        local: col(op, row, 4)?,
        call_id: col(op, row, 5)?,
        cseq: narrow(op, "cseq", col(op, row, 6)?)?,
        expires_at_ms: col(op, row, 7)?,
        q: narrow(op, "q", i64::from(q))?,
        device_id: col(op, row, 9)?,
    })
}

/// Rows affected, as the trait counts them.
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl PostgresStore {
    async fn create_subscriber_async(&self, sub: &Subscriber) -> Result<(), StoreError> {
        const OP: &str = "create_subscriber";
        let delays = ring_delays_json(&sub.profile)?;
        let c = self.client(OP).await?;
        let n = exec(
            &c,
            "INSERT INTO subscribers (username, enterprise, ha1_md5, ha1_sha256, \
             ring_timeout_secs, ring_delays, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (username) DO NOTHING",
            &[
                &sub.user,
                &sub.enterprise,
                &sub.ha1_md5,
                &sub.ha1_sha256,
                &i64::from(sub.profile.ring_timeout_secs),
                &delays,
                &sub.created_at,
            ],
        )
        .await
        .map_err(db(OP))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("subscriber {}", sub.user)));
        }
        Ok(())
    }

    async fn set_profile_async(
        &self,
        user: &str,
        profile: &RoutingProfile,
    ) -> Result<(), StoreError> {
        const OP: &str = "set_profile";
        let delays = ring_delays_json(profile)?;
        let c = self.client(OP).await?;
        let n = exec(
            &c,
            "UPDATE subscribers SET ring_timeout_secs = $2, ring_delays = $3 WHERE username = $1",
            &[&user, &i64::from(profile.ring_timeout_secs), &delays],
        )
        .await
        .map_err(db(OP))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("subscriber {user}")));
        }
        Ok(())
    }

    /// The subscriber's row is locked first (lock order); registrations and enrolment codes
    /// go by cascade.
    async fn delete_subscriber_async(&self, user: &str) -> Result<bool, StoreError> {
        const OP: &str = "delete_subscriber";
        let now_ms = crate::chain::now_ms();
        let mut c = self.client(OP).await?;
        let tx = c.transaction().await.map_err(db(OP))?;
        let found = opt(
            &tx,
            "SELECT 1 FROM subscribers WHERE username = $1 FOR UPDATE",
            &[&user],
        )
        .await
        .map_err(db(OP))?;
        if found.is_none() {
            return Ok(false);
        }
        provisioning::subscriber_deleted(&tx, user, now_ms)
            .await
            .map_err(db(OP))?;
        exec(&tx, "DELETE FROM subscribers WHERE username = $1", &[&user])
            .await
            .map_err(db(OP))?;
        tx.commit().await.map_err(db(OP))?;
        Ok(true)
    }

    /// The subscriber (key share), then the device (share) are locked before the upsert, so
    /// a binding never outlives the device's revocation nor the subscriber.
    async fn put_registration_async(&self, reg: &Registration) -> Result<(), StoreError> {
        const OP: &str = "put_registration";
        let mut c = self.client(OP).await?;
        let tx = c.transaction().await.map_err(db(OP))?;
        let subscriber = opt(
            &tx,
            "SELECT 1 FROM subscribers WHERE username = $1 FOR KEY SHARE",
            &[&reg.user],
        )
        .await
        .map_err(db(OP))?;
        if subscriber.is_none() {
            return Err(StoreError::NotFound(format!("subscriber {}", reg.user)));
        }
        if let Some(device_id) = &reg.device_id {
            let device = opt(
                &tx,
                "SELECT username, revoked_at_ms FROM devices WHERE id = $1 FOR SHARE",
                &[device_id],
            )
            .await
            .map_err(db(OP))?;
            let device: Option<(String, Option<i64>)> = match device {
                Some(r) => Some((col(OP, &r, 0)?, col(OP, &r, 1)?)),
                None => None,
            };
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
        let result = exec(
            &tx,
            "INSERT INTO registrations (username, contact, transport, source, local, \
             call_id, cseq, expires_at_ms, q, device_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (username, contact) DO UPDATE SET transport = excluded.transport, \
             source = excluded.source, local = excluded.local, call_id = excluded.call_id, \
             cseq = excluded.cseq, expires_at_ms = excluded.expires_at_ms, q = excluded.q, \
             device_id = excluded.device_id",
            &[
                &reg.user,
                &reg.contact,
                &reg.transport,
                &reg.source,
                &reg.local,
                &reg.call_id,
                &i64::from(reg.cseq),
                &reg.expires_at_ms,
                &i32::from(reg.q),
                &reg.device_id,
            ],
        )
        .await;
        match result {
            Ok(_) => tx.commit().await.map_err(db(OP)),
            // Both were locked above; kept for safety.
            Err(e) if foreign_key_violation(&e).is_some() => {
                Err(StoreError::NotFound(format!("subscriber {}", reg.user)))
            }
            Err(e) => Err(db(OP)(e)),
        }
    }

    async fn registrations_async(
        &self,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError> {
        const OP: &str = "registrations";
        let c = self.client(OP).await?;
        let found = match user {
            Some(user) => {
                rows(
                    &c,
                    select_registrations!(
                        "WHERE username = $1 AND expires_at_ms > $2 \
                         ORDER BY username, q DESC, contact"
                    ),
                    &[&user, &now_ms],
                )
                .await
            }
            None => {
                rows(
                    &c,
                    select_registrations!(
                        "WHERE expires_at_ms > $1 ORDER BY username, q DESC, contact"
                    ),
                    &[&now_ms],
                )
                .await
            }
        }
        .map_err(db(OP))?;
        map_rows(OP, &found, registration_from_row)
    }

    /// One statement on a pooled connection; returns the rows it changed.
    async fn exec_one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.client(op).await?;
        exec(&c, sql, params).await.map_err(db(op))
    }

    async fn subscribers_where(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Subscriber>, StoreError> {
        let c = self.client(op).await?;
        let found = rows(&c, sql, params).await.map_err(db(op))?;
        map_rows(op, &found, subscriber_from_row)
    }
}

impl Store for PostgresStore {
    fn create_subscriber(&self, sub: &Subscriber) -> Result<(), StoreError> {
        self.block(self.create_subscriber_async(sub))
    }

    fn subscriber(&self, user: &str) -> Result<Option<Subscriber>, StoreError> {
        let found = self.block(self.subscribers_where(
            "subscriber",
            select_subscribers!("WHERE username = $1"),
            &[&user],
        ))?;
        Ok(found.into_iter().next())
    }

    fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        self.block(self.subscribers_where(
            "subscribers",
            select_subscribers!("ORDER BY username"),
            &[],
        ))
    }

    fn set_profile(&self, user: &str, profile: &RoutingProfile) -> Result<(), StoreError> {
        self.block(self.set_profile_async(user, profile))
    }

    fn delete_subscriber(&self, user: &str) -> Result<bool, StoreError> {
        self.block(self.delete_subscriber_async(user))
    }

    fn put_registration(&self, reg: &Registration) -> Result<(), StoreError> {
        self.block(self.put_registration_async(reg))
    }

    fn delete_registration(&self, user: &str, contact: &str) -> Result<bool, StoreError> {
        let n = self.block(self.exec_one(
            "delete_registration",
            "DELETE FROM registrations WHERE username = $1 AND contact = $2",
            &[&user, &contact],
        ))?;
        Ok(n > 0)
    }

    fn delete_registrations(&self, user: &str) -> Result<usize, StoreError> {
        self.block(self.exec_one(
            "delete_registrations",
            "DELETE FROM registrations WHERE username = $1",
            &[&user],
        ))
        .map(count)
    }

    fn registrations(
        &self,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError> {
        self.block(self.registrations_async(user, now_ms))
    }

    fn purge_expired(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.block(self.exec_one(
            "purge_expired",
            "DELETE FROM registrations WHERE expires_at_ms <= $1",
            &[&now_ms],
        ))
        .map(count)
    }

    fn add_identifiers(&self, ids: &[String]) -> Result<usize, StoreError> {
        self.block(self.exec_one(
            "add_identifiers",
            "INSERT INTO identifiers (identifier, state) SELECT unnest($1::text[]), 'free' \
             ON CONFLICT (identifier) DO NOTHING",
            &[&ids],
        ))
        .map(count)
    }

    fn pool_counts(&self) -> Result<PoolCounts, StoreError> {
        self.block(provisioning::pool_counts(self))
    }

    fn release_quarantined(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.block(self.exec_one(
            "release_quarantined",
            "UPDATE identifiers SET state = 'free', device_id = NULL, changed_at_ms = NULL \
             WHERE state = 'quarantined' AND changed_at_ms < $1",
            &[&older_than_ms],
        ))
        .map(count)
    }

    /// One statement: `seq` is an identity column, so there is nothing to read first.
    fn publish_eula(&self, eula: &Eula) -> Result<(), StoreError> {
        let n = self.block(self.exec_one(
            "publish_eula",
            "INSERT INTO eulas (version, text, published_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO NOTHING",
            &[&eula.version, &eula.text, &eula.published_at_ms],
        ))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "EULA version {}",
                eula.version
            )));
        }
        Ok(())
    }

    fn current_eula(&self) -> Result<Option<Eula>, StoreError> {
        self.block(provisioning::current_eula(self))
    }

    fn eulas(&self) -> Result<Vec<Eula>, StoreError> {
        self.block(provisioning::eulas(self))
    }

    fn create_enrolment(&self, enrolment: &Enrolment) -> Result<(), StoreError> {
        self.block(provisioning::create_enrolment(self, enrolment))
    }

    fn enrolments(&self, user: &str) -> Result<Vec<Enrolment>, StoreError> {
        self.block(provisioning::enrolments(self, user))
    }

    fn present_code(
        &self,
        code_hash: &str,
        zone_public_key: &str,
        now_ms: i64,
    ) -> Result<(), EnrolError> {
        self.block(provisioning::present_code(
            self,
            code_hash,
            zone_public_key,
            now_ms,
        ))
    }

    fn enrol(&self, code_hash: &str, now_ms: i64, new: &NewDevice) -> Result<Enrolled, EnrolError> {
        self.block(provisioning::enrol(self, code_hash, now_ms, new))
    }

    fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        self.block(provisioning::device_where(self, "device", "id", id))
    }

    fn devices(&self, user: Option<&str>) -> Result<Vec<Device>, StoreError> {
        self.block(provisioning::devices(self, user))
    }

    fn set_service(&self, id: &str, on: bool) -> Result<(), StoreError> {
        let n = self.block(self.exec_one(
            "set_service",
            "UPDATE devices SET service_on = $2 WHERE id = $1",
            &[&id, &on],
        ))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        Ok(())
    }

    fn set_license_key_enc(&self, id: &str, license_key_enc: &str) -> Result<(), StoreError> {
        let n = self.block(self.exec_one(
            "set_license_key_enc",
            "UPDATE devices SET license_key_enc = $2 WHERE id = $1",
            &[&id, &license_key_enc],
        ))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        Ok(())
    }

    fn set_number(&self, id: &str, number: Option<&str>) -> Result<(), StoreError> {
        self.block(provisioning::set_number(self, id, number))
    }

    fn revoke_device(&self, id: &str, reason: &str, now_ms: i64) -> Result<Device, StoreError> {
        self.block(provisioning::revoke_device(self, id, reason, now_ms))
    }

    fn device_by_token_hash(&self, hash: &str) -> Result<Option<Device>, StoreError> {
        self.block(provisioning::device_where(
            self,
            "device_by_token_hash",
            "token_hash",
            hash,
        ))
    }

    fn add_security_event(&self, event: &SecurityEvent) -> Result<i64, StoreError> {
        self.block(provisioning::add_security_event(self, event))
    }

    fn security_events(&self, since_id: i64, limit: u32) -> Result<Vec<SecurityEvent>, StoreError> {
        self.block(provisioning::security_events(
            self,
            "security_events",
            "SELECT id, at_ms, kind, username, device_id, call_id, detail FROM security_events \
             WHERE id > $1 ORDER BY id LIMIT $2",
            since_id,
            limit,
        ))
    }

    fn security_events_newest(
        &self,
        before_id: i64,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        self.block(provisioning::security_events(
            self,
            "security_events_newest",
            "SELECT id, at_ms, kind, username, device_id, call_id, detail FROM security_events \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id,
            limit,
        ))
    }

    fn append_cdr(&self, cdr: &Cdr) -> Result<Cdr, StoreError> {
        let stored = self.block(cdrs::append(self, cdr))?;
        self.write_head(stored.id, &stored.hash);
        Ok(stored)
    }

    fn cdrs(&self, from_ms: i64, to_ms: i64, entity: Option<&str>) -> Result<Vec<Cdr>, StoreError> {
        self.block(cdrs::query(self, from_ms, to_ms, entity, cdrs::Page::ALL))
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
        let page = cdrs::Page {
            after,
            limit: Some(limit),
            newest_first,
        };
        self.block(cdrs::query(self, from_ms, to_ms, entity, page))
    }

    fn verify_cdrs(&self) -> Result<ChainReport, StoreError> {
        self.block(cdrs::verify(self, None, &[]))
    }
}
