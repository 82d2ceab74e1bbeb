//! The server side of R14: issues call-bound challenges and verifies the zone's proofs.
//!
//! A pure state machine: no IO and no clock reads. Every call takes `now` (a monotonic
//! [`Instant`]) and, when issuing, `unix_ms` (wall-clock milliseconds); randomness comes from
//! a caller-supplied CSPRNG, so tests are deterministic.
//!
//! Rules:
//! - **Counter**: per device, `counter = max(last issued + 1, unix_ms)`. It rises across
//!   server restarts without being stored (the clock moves on), and the zone refuses any
//!   counter it has seen.
//! - **Pending challenge**: one per call binding (Call-ID + Via branch of the mobile branch),
//!   valid for [`AuthorityConfig::challenge_ttl`] (60 s) and consumed by the first verify,
//!   right or wrong. A second verify of the same proof is [`TrustFailure::Replayed`]; a proof
//!   moved to another Call-ID or branch is [`TrustFailure::WrongProof`] (its MAC covers the
//!   binding, and the other binding's challenge has another counter and nonce).
//! - **Lockout**: [`AuthorityConfig::max_failures`] (5) bad proofs (wrong, replayed, or
//!   malformed) within [`AuthorityConfig::failure_window`] lock the device out for
//!   [`AuthorityConfig::lockout`] (5 min): no challenges are issued and every proof is
//!   refused with [`TrustFailure::LockedOut`]. Expired and missing proofs do not count.
//! - **Bounded memory**: at most [`AuthorityConfig::max_pending`] pending challenges (the
//!   oldest is dropped when full) and as many remembered outcomes (for `Replayed`/`Expired`);
//!   expired entries go lazily and in [`TrustAuthority::handle_timeout`].
//!
//! The proxy verifies the first `Trust-Proof` of a branch only and remembers the outcome
//! for that branch; it calls [`TrustAuthority::forget`] when a branch ends without a proof.
//!
//! **Attach challenges** (R29): a line attaching at the gateway with a phone's number proves
//! the phone's zone key the same way, with a challenge from [`TrustAuthority::issue_attach`]
//! bound to (`attach-` + random, [`ATTACH_BRANCH`]); no call's binding has that branch (a
//! proxy's branch starts with `z9hG4bK`), so the two kinds never stand in for each other.
//! They draw on the device's one counter, but are kept apart from call challenges and are
//! checked by [`TrustAuthority::verify_attach`], whose failures **never** count toward the
//! lockout: anyone can attempt an attach, and a squatter must not lock the phone out. A
//! call lockout does not stop an attach either (attaching places no call).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::proof::{self, CallBinding, Challenge, LicenseKey, PROOF_LABEL, Proof};
use crate::wire::{WireError, is_valid_device_id};

/// Longest Call-ID or branch accepted in a binding (bytes).
pub const MAX_BINDING_PART: usize = 1024;

/// The branch of every attach challenge's binding. Never a proxy's branch (those start with
/// the RFC 3261 magic cookie `z9hG4bK`), so no call binding equals an attach binding.
pub const ATTACH_BRANCH: &str = "trustring-attach";

/// Most attach challenges pending at once; the oldest is dropped when full.
pub const MAX_ATTACH_PENDING: usize = 1024;

/// A challenge for a line attaching with a phone's number ([`TrustAuthority::issue_attach`]).
/// The zone proves it with the binding (`call_ref`, [`ATTACH_BRANCH`]).
#[derive(Debug, Clone)]
pub struct AttachChallenge {
    /// The challenge (its `to_header()` is what the line's zone is given).
    pub challenge: Challenge,
    /// The binding's call reference: `attach-` and 32 hex digits, fresh for each challenge.
    pub call_ref: String,
}

/// Tunables of the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// How long a challenge can be answered after it was issued (default 60 s).
    pub challenge_ttl: Duration,
    /// Bad proofs within `failure_window` that lock a device out (default 5).
    pub max_failures: u32,
    /// Window over which bad proofs are counted (default 5 min).
    pub failure_window: Duration,
    /// How long a lockout lasts (default 5 min).
    pub lockout: Duration,
    /// Most pending challenges held at once (default 10 000).
    pub max_pending: usize,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            challenge_ttl: Duration::from_secs(60),
            max_failures: 5,
            failure_window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            max_pending: 10_000,
        }
    }
}

/// Why a mobile branch was not trusted. Each is a security event (R14).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFailure {
    /// The branch's answer carried no `Trust-Proof`.
    #[error("no trust proof")]
    Missing,
    /// The `Trust-Proof` (or a binding) did not parse.
    #[error("malformed trust proof: {0}")]
    Malformed(#[from] WireError),
    /// The device has no license key here.
    #[error("unknown device")]
    UnknownDevice,
    /// The device was revoked (R9).
    #[error("device revoked")]
    Revoked,
    /// The proof is not the right MAC for the pending challenge (or there is none for this
    /// binding).
    #[error("wrong trust proof")]
    WrongProof,
    /// The challenge was already answered.
    #[error("replayed trust proof")]
    Replayed,
    /// The challenge's time ran out before the proof came.
    #[error("trust challenge expired")]
    Expired,
    /// Too many bad proofs: the device is locked out until `until`.
    #[error("device locked out after repeated bad proofs")]
    LockedOut {
        /// When the lockout ends.
        until: Instant,
    },
}

impl TrustFailure {
    /// A short stable code for security events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing-proof",
            Self::Malformed(_) => "malformed-proof",
            Self::UnknownDevice => "unknown-device",
            Self::Revoked => "revoked-device",
            Self::WrongProof => "wrong-proof",
            Self::Replayed => "replayed-proof",
            Self::Expired => "expired-proof",
            Self::LockedOut { .. } => "locked-out",
        }
    }

    /// Whether this failure counts toward the lockout.
    fn counts(&self) -> bool {
        matches!(self, Self::WrongProof | Self::Replayed | Self::Malformed(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingKey {
    call_id: String,
    branch: String,
}

impl BindingKey {
    fn new(b: &CallBinding<'_>) -> Self {
        Self {
            call_id: b.call_id.to_owned(),
            branch: b.branch.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Pending {
    device_id: String,
    counter: u64,
    nonce: [u8; 16],
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Consumed,
    Expired,
}

#[derive(Debug)]
struct Spent {
    device_id: String,
    counter: u64,
    outcome: Outcome,
    forget_at: Instant,
}

struct Device {
    key: LicenseKey,
    last_counter: u64,
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

impl Device {
    /// The device's next challenge for `binding`: its counter rises above every earlier
    /// one and is at least the wall clock (`unix_ms`), so it keeps rising across restarts.
    fn next_challenge(
        &mut self,
        device_id: &str,
        unix_ms: u64,
        nonce: [u8; 16],
        binding: &CallBinding<'_>,
    ) -> (Challenge, u64) {
        let counter = self.last_counter.saturating_add(1).max(unix_ms);
        self.last_counter = counter;
        let challenge = Challenge::new_signed(&self.key, device_id, counter, nonce, binding);
        (challenge, counter)
    }
}

impl Pending {
    /// Whether `proof` answers this challenge for `binding` under the device's `key`: the
    /// MAC compared in constant time, the (public) counter in the clear.
    fn answered_by(&self, key: &LicenseKey, binding: &CallBinding<'_>, proof: &Proof) -> bool {
        let msg = proof::message(&self.device_id, self.counter, &self.nonce, binding);
        let expected = proof::mac(key.expose(), PROOF_LABEL, &msg);
        proof::mac_eq(&expected, &proof.mac) && proof.counter == self.counter
    }
}

/// The server's trust state for all devices (see the module docs).
pub struct TrustAuthority<R = rand::rngs::StdRng> {
    config: AuthorityConfig,
    rng: R,
    devices: HashMap<String, Device>,
    revoked: HashSet<String>,
    pending: HashMap<BindingKey, Pending>,
    pending_order: VecDeque<(Instant, BindingKey, u64)>,
    spent: HashMap<BindingKey, Spent>,
    spent_order: VecDeque<(Instant, BindingKey, u64)>,
    /// Attach challenges by call reference (apart from calls': no lockout, no replay memory).
    attach: HashMap<String, Pending>,
    attach_order: VecDeque<(Instant, String)>,
}

impl<R> std::fmt::Debug for TrustAuthority<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAuthority")
            .field("config", &self.config)
            .field("devices", &self.devices.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl TrustAuthority<rand::rngs::StdRng> {
    /// An authority with a CSPRNG seeded from the operating system.
    pub fn new(config: AuthorityConfig) -> Self {
        Self::with_rng(config, rand::make_rng())
    }
}

fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

fn check_binding(b: &CallBinding<'_>) -> Result<(), TrustFailure> {
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_BINDING_PART;
    if ok(b.call_id) && ok(b.branch) {
        Ok(())
    } else {
        Err(TrustFailure::Malformed(WireError::Syntax(
            "call binding".into(),
        )))
    }
}

impl<R: rand::CryptoRng> TrustAuthority<R> {
    /// An authority drawing nonces from `rng` (tests pass a seeded one).
    pub fn with_rng(config: AuthorityConfig, rng: R) -> Self {
        Self {
            config,
            rng,
            devices: HashMap::new(),
            revoked: HashSet::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            spent: HashMap::new(),
            spent_order: VecDeque::new(),
            attach: HashMap::new(),
            attach_order: VecDeque::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// Installs (or replaces) a device's license key. Un-revokes the device id; keeps its
    /// counter so it keeps rising; drops challenges issued under an older key.
    pub fn set_device(&mut self, device_id: &str, key: LicenseKey) -> Result<(), WireError> {
        if !is_valid_device_id(device_id) {
            return Err(WireError::DeviceId);
        }
        self.revoked.remove(device_id);
        self.drop_pending_of(device_id);
        match self.devices.get_mut(device_id) {
            Some(d) => d.key = key,
            None => {
                self.devices.insert(
                    device_id.to_owned(),
                    Device {
                        key,
                        last_counter: 0,
                        failures: VecDeque::new(),
                        locked_until: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// Forgets a device entirely (its key is dropped and zeroized). Later calls for it are
    /// [`TrustFailure::UnknownDevice`].
    pub fn remove_device(&mut self, device_id: &str) {
        self.devices.remove(device_id);
        self.revoked.remove(device_id);
        self.drop_pending_of(device_id);
    }

    /// Revokes a device (R9): its key is dropped at once and later calls for it are
    /// [`TrustFailure::Revoked`] until [`TrustAuthority::set_device`] or
    /// [`TrustAuthority::remove_device`].
    pub fn revoke(&mut self, device_id: &str) {
        self.devices.remove(device_id);
        self.drop_pending_of(device_id);
        if is_valid_device_id(device_id) {
            self.revoked.insert(device_id.to_owned());
        }
    }

    /// Whether a license key is held for the device.
    pub fn has_device(&self, device_id: &str) -> bool {
        self.devices.contains_key(device_id)
    }

    /// Number of devices with a key.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Number of challenges waiting for a proof.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// When the device's lockout ends, if it is locked out at `now`.
    pub fn locked_until(&self, now: Instant, device_id: &str) -> Option<Instant> {
        self.devices
            .get(device_id)
            .and_then(|d| d.locked_until)
            .filter(|&until| until > now)
    }

    fn drop_pending_of(&mut self, device_id: &str) {
        self.pending.retain(|_, p| p.device_id != device_id);
        self.attach.retain(|_, p| p.device_id != device_id);
    }

    /// Issues the challenge a line attaching at the gateway with `device_id`'s number must
    /// have the device's zone prove (R29). Refused for an unknown or revoked device; a call
    /// lockout does not stop it (see the module docs).
    pub fn issue_attach(
        &mut self,
        now: Instant,
        unix_ms: u64,
        device_id: &str,
    ) -> Result<AttachChallenge, TrustFailure> {
        self.expire_attach(now);
        if self.revoked.contains(device_id) {
            return Err(TrustFailure::Revoked);
        }
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        let mut reference = [0u8; 16];
        self.rng.fill_bytes(&mut reference);
        let call_ref: String = std::iter::once("attach-".to_owned())
            .chain(reference.iter().map(|b| format!("{b:02x}")))
            .collect();
        let d = self
            .devices
            .get_mut(device_id)
            .ok_or(TrustFailure::UnknownDevice)?;
        let binding = CallBinding {
            call_id: &call_ref,
            branch: ATTACH_BRANCH,
        };
        let (challenge, counter) = d.next_challenge(device_id, unix_ms, nonce, &binding);
        while self.attach.len() >= MAX_ATTACH_PENDING {
            let Some((_, oldest)) = self.attach_order.pop_front() else {
                break;
            };
            self.attach.remove(&oldest);
        }
        // Verified (or expired-on-verify) challenges leave their order entry behind until
        // its deadline; keep the queue bounded too.
        while self.attach_order.len() >= 2 * MAX_ATTACH_PENDING {
            if let Some((_, k)) = self.attach_order.pop_front() {
                self.attach.remove(&k);
            }
        }
        let deadline = add(now, self.config.challenge_ttl);
        self.attach_order.push_back((deadline, call_ref.clone()));
        self.attach.insert(
            call_ref.clone(),
            Pending {
                device_id: device_id.to_owned(),
                counter,
                nonce,
                deadline,
            },
        );
        Ok(AttachChallenge {
            challenge,
            call_ref,
        })
    }

    /// Verifies a zone's `Trust-Proof` value for the attach challenge `call_ref` issued to
    /// `device_id`, in constant time, and consumes the challenge (right or wrong).
    ///
    /// No failure here counts toward the device's lockout, and none is remembered: a line
    /// squatting a phone's number fails as often as it likes without touching the phone.
    pub fn verify_attach(
        &mut self,
        now: Instant,
        device_id: &str,
        call_ref: &str,
        proof: &str,
    ) -> Result<(), TrustFailure> {
        let pending = self.attach.remove(call_ref);
        self.expire_attach(now);
        let proof = Proof::from_header(proof)?;
        if self.revoked.contains(device_id) {
            return Err(TrustFailure::Revoked);
        }
        let p = pending.ok_or(TrustFailure::WrongProof)?;
        if p.device_id != device_id {
            return Err(TrustFailure::WrongProof);
        }
        if p.deadline <= now {
            return Err(TrustFailure::Expired);
        }
        let d = self
            .devices
            .get(device_id)
            .ok_or(TrustFailure::UnknownDevice)?;
        let binding = CallBinding {
            call_id: call_ref,
            branch: ATTACH_BRANCH,
        };
        if p.answered_by(&d.key, &binding, &proof) {
            Ok(())
        } else {
            Err(TrustFailure::WrongProof)
        }
    }

    /// Number of attach challenges waiting for a proof.
    pub fn attach_pending_count(&self) -> usize {
        self.attach.len()
    }

    /// Drops expired attach challenges (each call reference is fresh, so every pending one
    /// has exactly one entry in the order queue).
    fn expire_attach(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.attach_order.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, k)) = self.attach_order.pop_front() {
                self.attach.remove(&k);
            }
        }
    }

    fn device_ready(&mut self, now: Instant, device_id: &str) -> Result<&mut Device, TrustFailure> {
        if self.revoked.contains(device_id) {
            return Err(TrustFailure::Revoked);
        }
        let d = self
            .devices
            .get_mut(device_id)
            .ok_or(TrustFailure::UnknownDevice)?;
        match d.locked_until {
            Some(until) if until > now => Err(TrustFailure::LockedOut { until }),
            Some(_) => {
                d.locked_until = None;
                Ok(d)
            }
            None => Ok(d),
        }
    }

    /// Issues the challenge for the mobile branch `binding` of a call to `device_id`
    /// (EULA INVITE). Replaces an earlier challenge for the same binding.
    pub fn issue(
        &mut self,
        now: Instant,
        unix_ms: u64,
        device_id: &str,
        binding: &CallBinding<'_>,
    ) -> Result<Challenge, TrustFailure> {
        check_binding(binding)?;
        self.expire(now);
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        let d = self.device_ready(now, device_id)?;
        let (challenge, counter) = d.next_challenge(device_id, unix_ms, nonce, binding);

        let key = BindingKey::new(binding);
        self.spent.remove(&key);
        while self.pending.len() >= self.config.max_pending.max(1) {
            if !self.evict_oldest_pending() {
                break;
            }
        }
        let deadline = add(now, self.config.challenge_ttl);
        self.pending_order
            .push_back((deadline, key.clone(), counter));
        self.pending.insert(
            key,
            Pending {
                device_id: device_id.to_owned(),
                counter,
                nonce,
                deadline,
            },
        );
        Ok(challenge)
    }

    /// Verifies the zone's proof for the pending challenge of `binding` (EULA OK), in
    /// constant time, and consumes the challenge.
    pub fn verify(
        &mut self,
        now: Instant,
        device_id: &str,
        binding: &CallBinding<'_>,
        proof: &Proof,
    ) -> Result<(), TrustFailure> {
        check_binding(binding)?;
        self.expire(now);
        self.device_ready(now, device_id)?;
        let key = BindingKey::new(binding);
        let result = match self.pending.remove(&key) {
            Some(p) => self.check_pending(now, device_id, binding, proof, key, p),
            None => match self.spent.get(&key) {
                Some(s) if s.device_id == device_id && s.counter == proof.counter => {
                    Err(match s.outcome {
                        Outcome::Consumed => TrustFailure::Replayed,
                        Outcome::Expired => TrustFailure::Expired,
                    })
                }
                _ => Err(TrustFailure::WrongProof),
            },
        };
        if let Err(f) = &result
            && f.counts()
        {
            self.record_failure(now, device_id);
        }
        result
    }

    fn check_pending(
        &mut self,
        now: Instant,
        device_id: &str,
        binding: &CallBinding<'_>,
        proof: &Proof,
        key: BindingKey,
        p: Pending,
    ) -> Result<(), TrustFailure> {
        if p.deadline <= now {
            self.remember(now, key, &p, Outcome::Expired);
            return Err(TrustFailure::Expired);
        }
        let answered = match self.devices.get(device_id) {
            Some(d) if p.device_id == device_id => p.answered_by(&d.key, binding, proof),
            _ => false,
        };
        self.remember(now, key, &p, Outcome::Consumed);
        if answered {
            Ok(())
        } else {
            Err(TrustFailure::WrongProof)
        }
    }

    /// Parses and verifies the `Trust-Proof` header value of a branch's answer: `None` is
    /// [`TrustFailure::Missing`] (and drops the challenge), an unparsable value is
    /// [`TrustFailure::Malformed`] (and counts toward the lockout).
    pub fn verify_header(
        &mut self,
        now: Instant,
        device_id: &str,
        binding: &CallBinding<'_>,
        header: Option<&str>,
    ) -> Result<(), TrustFailure> {
        let Some(value) = header else {
            self.forget(binding);
            return Err(TrustFailure::Missing);
        };
        match Proof::from_header(value) {
            Ok(p) => self.verify(now, device_id, binding, &p),
            Err(e) => {
                check_binding(binding)?;
                self.device_ready(now, device_id)?;
                self.forget(binding);
                self.record_failure(now, device_id);
                Err(TrustFailure::Malformed(e))
            }
        }
    }

    /// Drops the pending challenge of a branch that ended without a proof.
    pub fn forget(&mut self, binding: &CallBinding<'_>) {
        self.pending.remove(&BindingKey::new(binding));
    }

    /// Drops expired challenges and outcomes, and ended lockouts. Call it from a timer, or
    /// rely on the lazy expiry done by `issue`/`verify`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.expire_attach(now);
        let window = self.config.failure_window;
        for d in self.devices.values_mut() {
            if d.locked_until.is_some_and(|u| u <= now) {
                d.locked_until = None;
            }
            while d.failures.front().is_some_and(|&t| add(t, window) <= now) {
                d.failures.pop_front();
            }
        }
    }

    /// The next instant at which [`TrustAuthority::handle_timeout`] has work (a challenge or a
    /// remembered outcome expiring).
    pub fn next_timeout(&self) -> Option<Instant> {
        let a = self.pending_order.front().map(|e| e.0);
        let b = self.spent_order.front().map(|e| e.0);
        let c = self.attach_order.front().map(|e| e.0);
        [a, b, c].into_iter().flatten().min()
    }

    fn remember(&mut self, now: Instant, key: BindingKey, p: &Pending, outcome: Outcome) {
        while self.spent.len() >= self.config.max_pending.max(1) {
            let Some((_, k, c)) = self.spent_order.pop_front() else {
                break;
            };
            if self.spent.get(&k).is_some_and(|s| s.counter == c) {
                self.spent.remove(&k);
            }
        }
        let forget_at = add(now, self.config.challenge_ttl);
        self.spent_order
            .push_back((forget_at, key.clone(), p.counter));
        self.spent.insert(
            key,
            Spent {
                device_id: p.device_id.clone(),
                counter: p.counter,
                outcome,
                forget_at,
            },
        );
    }

    fn evict_oldest_pending(&mut self) -> bool {
        while let Some((_, k, c)) = self.pending_order.pop_front() {
            if self.pending.get(&k).is_some_and(|p| p.counter == c) {
                self.pending.remove(&k);
                return true;
            }
        }
        false
    }

    fn expire(&mut self, now: Instant) {
        while let Some((deadline, _, _)) = self.pending_order.front() {
            if *deadline > now {
                break;
            }
            let Some((_, k, c)) = self.pending_order.pop_front() else {
                break;
            };
            if self.pending.get(&k).is_some_and(|p| p.counter == c)
                && let Some(p) = self.pending.remove(&k)
            {
                self.remember(now, k, &p, Outcome::Expired);
            }
        }
        while let Some((at, _, _)) = self.spent_order.front() {
            if *at > now {
                break;
            }
            let Some((_, k, c)) = self.spent_order.pop_front() else {
                break;
            };
            if self
                .spent
                .get(&k)
                .is_some_and(|s| s.counter == c && s.forget_at <= now)
            {
                self.spent.remove(&k);
            }
        }
        // The queues also hold stale entries (answered, forgotten or replaced challenges)
        // until their deadline. Keep them bounded too: past twice the cap, the oldest entry
        // goes, and with it its challenge or outcome if still live, so every live entry keeps
        // its place in a queue.
        let cap = self.config.max_pending.max(1).saturating_mul(2);
        while self.pending_order.len() > cap {
            if let Some((_, k, c)) = self.pending_order.pop_front()
                && self.pending.get(&k).is_some_and(|p| p.counter == c)
            {
                self.pending.remove(&k);
            }
        }
        while self.spent_order.len() > cap {
            if let Some((_, k, c)) = self.spent_order.pop_front()
                && self.spent.get(&k).is_some_and(|s| s.counter == c)
            {
                self.spent.remove(&k);
            }
        }
    }

    fn record_failure(&mut self, now: Instant, device_id: &str) {
        let (max, window, lockout) = (
            self.config.max_failures.max(1) as usize,
            self.config.failure_window,
            self.config.lockout,
        );
        let Some(d) = self.devices.get_mut(device_id) else {
            return;
        };
        while d.failures.front().is_some_and(|&t| add(t, window) <= now) {
            d.failures.pop_front();
        }
        d.failures.push_back(now);
        if d.failures.len() >= max {
            d.failures.clear();
            d.locked_until = Some(add(now, lockout));
            self.drop_pending_of(device_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustedZone as _;
    use crate::seal::{ServerSigningKey, seal_for_zone};
    use crate::software::{KdfParams, SoftwareZone};
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    const DEV: &str = "dev-a";
    const T0_MS: u64 = 1_764_567_890_123;

    fn b<'a>(call_id: &'a str, branch: &'a str) -> CallBinding<'a> {
        CallBinding { call_id, branch }
    }

    fn authority() -> (TrustAuthority<StdRng>, LicenseKey) {
        let mut a = TrustAuthority::with_rng(AuthorityConfig::default(), StdRng::seed_from_u64(7));
        let key = LicenseKey::from_bytes([0x42; 32]);
        assert!(a.set_device(DEV, key.duplicate()).is_ok());
        (a, key)
    }

    /// A software zone enrolled as `DEV` (in `tmp`) and an authority that knows its key.
    fn enrolled_zone(
        tmp: &std::path::Path,
    ) -> Result<(SoftwareZone, TrustAuthority), Box<dyn std::error::Error>> {
        let mut zone = SoftwareZone::init_with_params(
            tmp,
            "pin",
            KdfParams {
                m_kib: 64,
                t: 1,
                p: 1,
            },
        )?;
        let signer = ServerSigningKey::generate();
        let key = LicenseKey::generate();
        let pkg = seal_for_zone(&zone.public_key()?, DEV, "+15551230000", &key, &signer)?;
        zone.install(&pkg, &signer.public())?;
        let mut auth = TrustAuthority::new(AuthorityConfig::default());
        auth.set_device(DEV, key)?;
        Ok((zone, auth))
    }

    #[test]
    fn full_round_trip_with_the_software_zone() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, mut auth) = enrolled_zone(tmp.path())?;
        let now = Instant::now();
        for (i, call) in ["c1@h", "c2@h", "c3@h"].into_iter().enumerate() {
            let binding = b(call, "z9hG4bK-m1");
            let ch = auth.issue(now, T0_MS + i as u64, DEV, &binding)?;
            // Over the wire and back.
            let ch = Challenge::from_header(&ch.to_header())?;
            let proof = zone.prove(&ch, &binding)?;
            let header = proof.to_header();
            auth.verify_header(now, DEV, &binding, Some(&header))?;
            // The same proof again is a replay, at the server and at the zone.
            assert_eq!(
                auth.verify_header(now, DEV, &binding, Some(&header)),
                Err(TrustFailure::Replayed)
            );
            assert!(zone.prove(&ch, &binding).is_err());
        }
        Ok(())
    }

    #[test]
    fn wrong_proof() {
        let (mut a, key) = authority();
        let now = Instant::now();
        let binding = b("c", "br");
        let Ok(ch) = a.issue(now, T0_MS, DEV, &binding) else {
            panic!("issue");
        };
        let mut p = ch.prove_with(&key, &binding);
        p.mac[31] ^= 0x80;
        assert_eq!(
            a.verify(now, DEV, &binding, &p),
            Err(TrustFailure::WrongProof)
        );
        // Consumed even though wrong: the right proof no longer helps.
        let good = ch.prove_with(&key, &binding);
        assert_eq!(
            a.verify(now, DEV, &binding, &good),
            Err(TrustFailure::Replayed)
        );
        // A proof with the wrong counter, or made with another key.
        let Ok(ch) = a.issue(now, T0_MS, DEV, &binding) else {
            panic!("issue");
        };
        let mut p = ch.prove_with(&key, &binding);
        p.counter += 1;
        assert_eq!(
            a.verify(now, DEV, &binding, &p),
            Err(TrustFailure::WrongProof)
        );
        let Ok(ch) = a.issue(now, T0_MS, DEV, &binding) else {
            panic!("issue");
        };
        let p = ch.prove_with(&LicenseKey::from_bytes([1; 32]), &binding);
        assert_eq!(
            a.verify(now, DEV, &binding, &p),
            Err(TrustFailure::WrongProof)
        );
    }

    #[test]
    fn proof_moved_to_another_call_or_branch_fails() -> TestResult {
        let (mut a, key) = authority();
        let now = Instant::now();
        let b1 = b("call-1", "z9hG4bK-1");
        let ch1 = a.issue(now, T0_MS, DEV, &b1)?;
        let p1 = ch1.prove_with(&key, &b1);
        // No challenge at all on the other binding.
        assert_eq!(
            a.verify(now, DEV, &b("call-2", "z9hG4bK-1"), &p1),
            Err(TrustFailure::WrongProof)
        );
        // Another branch of the same call with its own challenge.
        let b2 = b("call-1", "z9hG4bK-2");
        let _ch2 = a.issue(now, T0_MS, DEV, &b2)?;
        assert_eq!(a.verify(now, DEV, &b2, &p1), Err(TrustFailure::WrongProof));
        // The original binding still verifies.
        a.verify(now, DEV, &b1, &p1)?;
        Ok(())
    }

    #[test]
    fn expired() -> TestResult {
        let (mut a, key) = authority();
        let t0 = Instant::now();
        let binding = b("c", "br");
        let ch = a.issue(t0, T0_MS, DEV, &binding)?;
        let p = ch.prove_with(&key, &binding);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(
            a.verify(late, DEV, &binding, &p),
            Err(TrustFailure::Expired)
        );
        assert_eq!(
            a.verify(late, DEV, &binding, &p),
            Err(TrustFailure::Expired)
        );
        // Just in time works.
        let ch = a.issue(t0, T0_MS, DEV, &binding)?;
        let p = ch.prove_with(&key, &binding);
        a.verify(t0 + Duration::from_millis(59_999), DEV, &binding, &p)?;
        // Expired via the timer.
        let ch = a.issue(t0, T0_MS, DEV, &binding)?;
        assert_eq!(a.next_timeout(), Some(t0 + Duration::from_secs(60)));
        a.handle_timeout(t0 + Duration::from_secs(61));
        assert_eq!(a.pending_count(), 0);
        let p = ch.prove_with(&key, &binding);
        assert_eq!(
            a.verify(t0 + Duration::from_secs(61), DEV, &binding, &p),
            Err(TrustFailure::Expired)
        );
        // Expired proofs do not lock the device out.
        assert_eq!(a.locked_until(t0 + Duration::from_secs(61), DEV), None);
        Ok(())
    }

    #[test]
    fn missing_and_malformed() -> TestResult {
        let (mut a, key) = authority();
        let now = Instant::now();
        let binding = b("c", "br");
        let ch = a.issue(now, T0_MS, DEV, &binding)?;
        assert_eq!(
            a.verify_header(now, DEV, &binding, None),
            Err(TrustFailure::Missing)
        );
        assert_eq!(a.pending_count(), 0, "a missing proof drops the challenge");
        let p = ch.prove_with(&key, &binding);
        assert_eq!(
            a.verify(now, DEV, &binding, &p),
            Err(TrustFailure::WrongProof)
        );

        a.issue(now, T0_MS, DEV, &binding)?;
        let r = a.verify_header(now, DEV, &binding, Some("v=1;ctr=1"));
        assert_eq!(r, Err(TrustFailure::Malformed(WireError::Missing("proof"))));
        assert_eq!(a.pending_count(), 0);
        assert!(matches!(
            a.issue(now, T0_MS, DEV, &b("", "br")),
            Err(TrustFailure::Malformed(_))
        ));
        let long = "x".repeat(MAX_BINDING_PART + 1);
        assert!(matches!(
            a.issue(now, T0_MS, DEV, &b("c", &long)),
            Err(TrustFailure::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn unknown_and_revoked_devices() -> TestResult {
        let (mut a, key) = authority();
        let now = Instant::now();
        let binding = b("c", "br");
        assert_eq!(
            a.issue(now, T0_MS, "nobody", &binding).err(),
            Some(TrustFailure::UnknownDevice)
        );
        let p = Proof {
            counter: 1,
            mac: [0; 32],
        };
        assert_eq!(
            a.verify(now, "nobody", &binding, &p),
            Err(TrustFailure::UnknownDevice)
        );

        let ch = a.issue(now, T0_MS, DEV, &binding)?;
        a.revoke(DEV);
        assert!(!a.has_device(DEV));
        let p = ch.prove_with(&key, &binding);
        assert_eq!(a.verify(now, DEV, &binding, &p), Err(TrustFailure::Revoked));
        assert_eq!(
            a.issue(now, T0_MS, DEV, &binding).err(),
            Some(TrustFailure::Revoked)
        );
        // Re-enrolment lifts it.
        a.set_device(DEV, key.duplicate())?;
        let ch = a.issue(now, T0_MS, DEV, &binding)?;
        a.verify(now, DEV, &binding, &ch.prove_with(&key, &binding))?;
        a.remove_device(DEV);
        assert_eq!(
            a.issue(now, T0_MS, DEV, &binding).err(),
            Some(TrustFailure::UnknownDevice)
        );
        assert_eq!(a.set_device("bad id", key), Err(WireError::DeviceId));
        Ok(())
    }

    #[test]
    fn attach_round_trip_with_the_software_zone() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut zone, mut auth) = enrolled_zone(tmp.path())?;
        let now = Instant::now();
        let a = auth.issue_attach(now, T0_MS, DEV)?;
        assert!(a.call_ref.starts_with("attach-") && a.call_ref.len() == 39);
        let binding = b(&a.call_ref, ATTACH_BRANCH);
        let ch = Challenge::from_header(&a.challenge.to_header())?;
        let proof = zone.prove(&ch, &binding)?.to_header();
        auth.verify_attach(now, DEV, &a.call_ref, &proof)?;
        assert_eq!(auth.attach_pending_count(), 0);
        // Consumed: the same proof again is refused.
        assert_eq!(
            auth.verify_attach(now, DEV, &a.call_ref, &proof),
            Err(TrustFailure::WrongProof)
        );
        // The device's one counter goes on rising: a call challenge after it is proved.
        let call = b("c1@h", "z9hG4bK-1");
        let ch = auth.issue(now, T0_MS, DEV, &call)?;
        let proof = zone.prove(&ch, &call)?.to_header();
        auth.verify_header(now, DEV, &call, Some(&proof))?;
        Ok(())
    }

    #[test]
    fn attach_failures_never_lock_the_device_out() -> TestResult {
        let (mut a, key) = authority();
        let t0 = Instant::now();
        for i in 0..20u64 {
            let at = a.issue_attach(t0, T0_MS + i, DEV)?;
            let wrong = format!("v=1;ctr={};proof={}", at.challenge.counter, "A".repeat(43));
            assert_eq!(
                a.verify_attach(t0, DEV, &at.call_ref, &wrong),
                Err(TrustFailure::WrongProof)
            );
            assert!(matches!(
                a.verify_attach(t0, DEV, &at.call_ref, "junk"),
                Err(TrustFailure::Malformed(_))
            ));
        }
        assert_eq!(a.locked_until(t0, DEV), None);
        // Calls still work.
        let call = b("c", "z9hG4bK-2");
        let ch = a.issue(t0, T0_MS, DEV, &call)?;
        a.verify(t0, DEV, &call, &ch.prove_with(&key, &call))?;
        // And a call lockout does not stop an attach.
        for _ in 0..5 {
            let ch = a.issue(t0, T0_MS, DEV, &call)?;
            let mut p = ch.prove_with(&key, &call);
            p.mac[0] ^= 1;
            assert!(a.verify(t0, DEV, &call, &p).is_err());
        }
        assert!(a.locked_until(t0, DEV).is_some());
        let at = a.issue_attach(t0, T0_MS, DEV)?;
        let binding = b(&at.call_ref, ATTACH_BRANCH);
        let good = at.challenge.prove_with(&key, &binding).to_header();
        a.verify_attach(t0, DEV, &at.call_ref, &good)?;
        Ok(())
    }

    #[test]
    fn attach_and_call_proofs_do_not_stand_in_for_each_other() -> TestResult {
        let (mut a, key) = authority();
        let t0 = Instant::now();
        let at = a.issue_attach(t0, T0_MS, DEV)?;
        let attach_binding = b(&at.call_ref, ATTACH_BRANCH);
        let attach_proof = at.challenge.prove_with(&key, &attach_binding);
        // An attach proof offered as a call proof for its binding: no call challenge there.
        assert_eq!(
            a.verify(t0, DEV, &attach_binding, &attach_proof),
            Err(TrustFailure::WrongProof)
        );
        // A call proof offered for an attach.
        let call = b("c", "z9hG4bK-3");
        let ch = a.issue(t0, T0_MS, DEV, &call)?;
        let call_proof = ch.prove_with(&key, &call).to_header();
        assert_eq!(
            a.verify_attach(t0, DEV, &at.call_ref, &call_proof),
            Err(TrustFailure::WrongProof)
        );
        // Another device's attach challenge.
        a.set_device("dev-b", LicenseKey::from_bytes([7; 32]))?;
        let other = a.issue_attach(t0, T0_MS, "dev-b")?;
        let proof = other
            .challenge
            .prove_with(&key, &b(&other.call_ref, ATTACH_BRANCH))
            .to_header();
        assert_eq!(
            a.verify_attach(t0, DEV, &other.call_ref, &proof),
            Err(TrustFailure::WrongProof)
        );
        Ok(())
    }

    #[test]
    fn attach_revoked_expired_unknown_and_bounded() -> TestResult {
        let (mut a, key) = authority();
        let t0 = Instant::now();
        assert!(matches!(
            a.issue_attach(t0, T0_MS, "nobody"),
            Err(TrustFailure::UnknownDevice)
        ));
        let at = a.issue_attach(t0, T0_MS, DEV)?;
        let proof = at
            .challenge
            .prove_with(&key, &b(&at.call_ref, ATTACH_BRANCH))
            .to_header();
        let late = t0 + Duration::from_secs(61);
        assert_eq!(
            a.verify_attach(late, DEV, &at.call_ref, &proof),
            Err(TrustFailure::Expired)
        );
        // Revocation takes effect at once, on pending attach challenges too.
        let at = a.issue_attach(t0, T0_MS, DEV)?;
        let proof = at
            .challenge
            .prove_with(&key, &b(&at.call_ref, ATTACH_BRANCH))
            .to_header();
        a.revoke(DEV);
        assert_eq!(
            a.verify_attach(t0, DEV, &at.call_ref, &proof),
            Err(TrustFailure::Revoked)
        );
        assert!(matches!(
            a.issue_attach(t0, T0_MS, DEV),
            Err(TrustFailure::Revoked)
        ));
        a.set_device(DEV, key)?;
        for _ in 0..(MAX_ATTACH_PENDING + 50) {
            a.issue_attach(t0, T0_MS, DEV)?;
        }
        assert_eq!(a.attach_pending_count(), MAX_ATTACH_PENDING);
        assert!(a.attach_order.len() <= 2 * MAX_ATTACH_PENDING);
        a.handle_timeout(late);
        assert_eq!(a.attach_pending_count(), 0);
        Ok(())
    }

    #[test]
    fn lockout_after_repeated_bad_proofs() -> TestResult {
        let (mut a, key) = authority();
        let t0 = Instant::now();
        let bad = |ch: &Challenge| Proof {
            counter: ch.counter,
            mac: [0; 32],
        };
        for i in 0..5 {
            let binding = b("c", "br");
            let ch = a.issue(t0 + Duration::from_secs(i), T0_MS, DEV, &binding)?;
            assert_eq!(
                a.verify(t0 + Duration::from_secs(i), DEV, &binding, &bad(&ch)),
                Err(TrustFailure::WrongProof)
            );
        }
        let t = t0 + Duration::from_secs(10);
        let until = t0 + Duration::from_secs(4) + Duration::from_secs(300);
        assert_eq!(a.locked_until(t, DEV), Some(until));
        assert_eq!(
            a.issue(t, T0_MS, DEV, &b("c", "br")).err(),
            Some(TrustFailure::LockedOut { until })
        );
        let p = Proof {
            counter: 1,
            mac: [0; 32],
        };
        assert_eq!(
            a.verify(t, DEV, &b("c", "br"), &p),
            Err(TrustFailure::LockedOut { until })
        );
        // After the lockout, the device works again.
        let ch = a.issue(until, T0_MS, DEV, &b("c", "br"))?;
        a.verify(
            until,
            DEV,
            &b("c", "br"),
            &ch.prove_with(&key, &b("c", "br")),
        )?;
        Ok(())
    }

    #[test]
    fn failures_outside_the_window_do_not_lock() -> TestResult {
        let (mut a, _key) = authority();
        let t0 = Instant::now();
        for i in 0..10u64 {
            // One bad proof every 80 s: never 5 within 300 s.
            let t = t0 + Duration::from_secs(80 * i);
            let binding = b("c", "br");
            let ch = a.issue(t, T0_MS, DEV, &binding)?;
            let p = Proof {
                counter: ch.counter,
                mac: [0; 32],
            };
            assert_eq!(
                a.verify(t, DEV, &binding, &p),
                Err(TrustFailure::WrongProof)
            );
            a.handle_timeout(t);
        }
        assert_eq!(a.locked_until(t0 + Duration::from_secs(800), DEV), None);
        Ok(())
    }

    #[test]
    fn counters_rise_across_restarts() -> TestResult {
        let (mut a, key) = authority();
        let now = Instant::now();
        let c1 = a.issue(now, T0_MS, DEV, &b("c1", "b"))?.counter;
        // Same millisecond, or a clock step backwards: still strictly rising.
        let c2 = a.issue(now, T0_MS, DEV, &b("c2", "b"))?.counter;
        let c3 = a.issue(now, T0_MS - 5_000, DEV, &b("c3", "b"))?.counter;
        assert_eq!((c1, c2, c3), (T0_MS, T0_MS + 1, T0_MS + 2));
        // A restarted server (fresh state) issues from the clock, above what the zone saw.
        let mut restarted =
            TrustAuthority::with_rng(AuthorityConfig::default(), StdRng::seed_from_u64(9));
        restarted.set_device(DEV, key)?;
        let c4 = restarted
            .issue(now, T0_MS + 10, DEV, &b("c4", "b"))?
            .counter;
        assert!(c4 > c3);
        Ok(())
    }

    #[test]
    fn forget_drops_the_challenge() -> TestResult {
        let (mut a, key) = authority();
        let now = Instant::now();
        let binding = b("c", "br");
        let ch = a.issue(now, T0_MS, DEV, &binding)?;
        assert_eq!(a.pending_count(), 1);
        a.forget(&binding);
        assert_eq!(a.pending_count(), 0);
        assert_eq!(
            a.verify(now, DEV, &binding, &ch.prove_with(&key, &binding)),
            Err(TrustFailure::WrongProof)
        );
        Ok(())
    }

    #[test]
    fn memory_is_bounded() -> TestResult {
        let config = AuthorityConfig {
            max_pending: 3,
            ..AuthorityConfig::default()
        };
        let mut a = TrustAuthority::with_rng(config, StdRng::seed_from_u64(1));
        let key = LicenseKey::from_bytes([5; 32]);
        a.set_device(DEV, key.duplicate())?;
        let now = Instant::now();
        let calls: Vec<String> = (0..50).map(|i| format!("call-{i}")).collect();
        let mut challenges = Vec::new();
        for c in &calls {
            challenges.push(a.issue(now, T0_MS, DEV, &b(c, "br"))?);
            assert!(a.pending_count() <= 3);
            assert!(a.pending_order.len() <= 7 && a.spent_order.len() <= 7);
        }
        // The oldest were dropped; the newest still verify.
        let (first, last) = (&calls[0], &calls[49]);
        let p = challenges[0].prove_with(&key, &b(first, "br"));
        assert_eq!(
            a.verify(now, DEV, &b(first, "br"), &p),
            Err(TrustFailure::WrongProof)
        );
        let p = challenges[49].prove_with(&key, &b(last, "br"));
        a.verify(now, DEV, &b(last, "br"), &p)?;
        // Many answered challenges keep the outcome memory bounded too.
        for (i, c) in calls.iter().enumerate() {
            let ch = a.issue(
                now + Duration::from_millis(i as u64),
                T0_MS,
                DEV,
                &b(c, "x"),
            )?;
            a.verify(now, DEV, &b(c, "x"), &ch.prove_with(&key, &b(c, "x")))?;
            assert!(a.spent.len() <= 3 && a.spent_order.len() <= 7);
        }
        Ok(())
    }

    #[test]
    fn deterministic_with_a_seeded_rng() -> TestResult {
        let (mut a1, _) = authority();
        let (mut a2, _) = authority();
        let now = Instant::now();
        let c1 = a1.issue(now, T0_MS, DEV, &b("c", "br"))?;
        let c2 = a2.issue(now, T0_MS, DEV, &b("c", "br"))?;
        assert_eq!(c1, c2);
        Ok(())
    }

    #[test]
    fn authority_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<TrustAuthority>();
        assert_send::<SoftwareZone>();
    }

    #[test]
    fn codes_are_stable_and_distinct() {
        let all = [
            TrustFailure::Missing,
            TrustFailure::Malformed(WireError::TooLong),
            TrustFailure::UnknownDevice,
            TrustFailure::Revoked,
            TrustFailure::WrongProof,
            TrustFailure::Replayed,
            TrustFailure::Expired,
            TrustFailure::LockedOut {
                until: Instant::now(),
            },
        ];
        let codes: Vec<&str> = all.iter().map(TrustFailure::code).collect();
        assert_eq!(
            codes,
            [
                "missing-proof",
                "malformed-proof",
                "unknown-device",
                "revoked-device",
                "wrong-proof",
                "replayed-proof",
                "expired-proof",
                "locked-out"
            ]
        );
    }
}
