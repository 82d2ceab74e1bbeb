//! A small in-memory [`Store`] for the tests, with a switch that makes every call fail like a
//! broken database.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use store::{
    Device, EnrolError, Enrolled, Enrolment, Eula, NewDevice, PoolCounts, Registration,
    RoutingProfile, SecurityEvent, Store, StoreError, Subscriber,
};

#[derive(Default)]
pub(crate) struct MemStore {
    subscribers: Mutex<BTreeMap<String, Subscriber>>,
    registrations: Mutex<Vec<Registration>>,
    broken: AtomicBool,
}

impl MemStore {
    /// From now on every call fails with a database error carrying a secret-looking detail.
    pub(crate) fn break_it(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Database(
                "disk I/O error at /var/lib/secret.db".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscriber>> {
        self.subscribers.lock().expect("subscribers lock")
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Vec<Registration>> {
        self.registrations.lock().expect("registrations lock")
    }
}

impl Store for MemStore {
    fn create_subscriber(&self, sub: &Subscriber) -> Result<(), StoreError> {
        self.check()?;
        let mut subs = self.subs();
        if subs.contains_key(&sub.user) {
            return Err(StoreError::Conflict(format!("subscriber {}", sub.user)));
        }
        subs.insert(sub.user.clone(), sub.clone());
        Ok(())
    }

    fn subscriber(&self, user: &str) -> Result<Option<Subscriber>, StoreError> {
        self.check()?;
        Ok(self.subs().get(user).cloned())
    }

    fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        self.check()?;
        Ok(self.subs().values().cloned().collect())
    }

    fn set_profile(&self, user: &str, profile: &RoutingProfile) -> Result<(), StoreError> {
        self.check()?;
        match self.subs().get_mut(user) {
            Some(sub) => {
                sub.profile = profile.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("subscriber {user}"))),
        }
    }

    fn delete_subscriber(&self, user: &str) -> Result<bool, StoreError> {
        self.check()?;
        let existed = self.subs().remove(user).is_some();
        self.regs().retain(|r| r.user != user);
        Ok(existed)
    }

    fn put_registration(&self, reg: &Registration) -> Result<(), StoreError> {
        self.check()?;
        let mut regs = self.regs();
        regs.retain(|r| !(r.user == reg.user && r.contact == reg.contact));
        regs.push(reg.clone());
        Ok(())
    }

    fn delete_registration(&self, user: &str, contact: &str) -> Result<bool, StoreError> {
        self.check()?;
        let mut regs = self.regs();
        let before = regs.len();
        regs.retain(|r| !(r.user == user && r.contact == contact));
        Ok(regs.len() != before)
    }

    fn delete_registrations(&self, user: &str) -> Result<usize, StoreError> {
        self.check()?;
        let mut regs = self.regs();
        let before = regs.len();
        regs.retain(|r| r.user != user);
        Ok(before - regs.len())
    }

    fn registrations(
        &self,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError> {
        self.check()?;
        let mut live: Vec<Registration> = self
            .regs()
            .iter()
            .filter(|r| user.is_none_or(|u| r.user == u) && r.expires_at_ms > now_ms)
            .cloned()
            .collect();
        live.sort_by(|a, b| {
            (&a.user, std::cmp::Reverse(a.q), &a.contact).cmp(&(
                &b.user,
                std::cmp::Reverse(b.q),
                &b.contact,
            ))
        });
        Ok(live)
    }

    fn purge_expired(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.check()?;
        let mut regs = self.regs();
        let before = regs.len();
        regs.retain(|r| r.expires_at_ms > now_ms);
        Ok(before - regs.len())
    }

    // Provisioning is not modelled here (the API tests do not use it yet): every call fails
    // like a broken database.

    fn add_identifiers(&self, _ids: &[String]) -> Result<usize, StoreError> {
        Err(unsupported())
    }

    fn pool_counts(&self) -> Result<PoolCounts, StoreError> {
        Err(unsupported())
    }

    fn release_quarantined(&self, _older_than_ms: i64) -> Result<usize, StoreError> {
        Err(unsupported())
    }

    fn publish_eula(&self, _eula: &Eula) -> Result<(), StoreError> {
        Err(unsupported())
    }

    fn current_eula(&self) -> Result<Option<Eula>, StoreError> {
        Err(unsupported())
    }

    fn eulas(&self) -> Result<Vec<Eula>, StoreError> {
        Err(unsupported())
    }

    fn create_enrolment(&self, _enrolment: &Enrolment) -> Result<(), StoreError> {
        Err(unsupported())
    }

    fn enrolments(&self, _user: &str) -> Result<Vec<Enrolment>, StoreError> {
        Err(unsupported())
    }

    fn present_code(
        &self,
        _code_hash: &str,
        _zone_public_key: &str,
        _now_ms: i64,
    ) -> Result<(), EnrolError> {
        Err(unsupported().into())
    }

    fn enrol(
        &self,
        _code_hash: &str,
        _now_ms: i64,
        _new: &NewDevice,
    ) -> Result<Enrolled, EnrolError> {
        Err(unsupported().into())
    }

    fn device(&self, _id: &str) -> Result<Option<Device>, StoreError> {
        Err(unsupported())
    }

    fn devices(&self, _user: Option<&str>) -> Result<Vec<Device>, StoreError> {
        Err(unsupported())
    }

    fn set_service(&self, _id: &str, _on: bool) -> Result<(), StoreError> {
        Err(unsupported())
    }

    fn set_license_key_enc(&self, _id: &str, _enc: &str) -> Result<(), StoreError> {
        Err(unsupported())
    }

    fn set_number(&self, _id: &str, _number: Option<&str>) -> Result<(), StoreError> {
        Err(unsupported())
    }

    fn append_cdr(&self, _cdr: &store::Cdr) -> Result<store::Cdr, StoreError> {
        Err(unsupported())
    }

    fn cdrs(
        &self,
        _from_ms: i64,
        _to_ms: i64,
        _entity: Option<&str>,
    ) -> Result<Vec<store::Cdr>, StoreError> {
        Err(unsupported())
    }

    fn verify_cdrs(&self) -> Result<store::ChainReport, StoreError> {
        Err(unsupported())
    }

    fn revoke_device(&self, _id: &str, _reason: &str, _now_ms: i64) -> Result<Device, StoreError> {
        Err(unsupported())
    }

    fn device_by_token_hash(&self, _hash: &str) -> Result<Option<Device>, StoreError> {
        Err(unsupported())
    }

    fn add_security_event(&self, _event: &SecurityEvent) -> Result<i64, StoreError> {
        Err(unsupported())
    }

    fn security_events(
        &self,
        _since_id: i64,
        _limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        Err(unsupported())
    }

    fn security_events_newest(
        &self,
        _before_id: i64,
        _limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Database("MemStore: provisioning is not modelled".into())
}
