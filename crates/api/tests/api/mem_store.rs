//! A small in-memory [`Store`] for the tests, with a switch that makes every call fail like a
//! broken database.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use store::{Registration, RoutingProfile, Store, StoreError, Subscriber};

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
}
