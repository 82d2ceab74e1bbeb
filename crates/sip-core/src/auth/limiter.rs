//! A Sans-IO limiter of authentication failures (SPEC R26, SECURITY threats 4, 11 and 17),
//! keyed by source address and by username, in bounded memory.
//!
//! Only the guilty should feel it:
//! - callers record only failures that prove a guess was made: a wrong digest on a nonce we
//!   issued to that very address (nonces are bound to the client's address, so a spoofed
//!   source never holds one); junk, foreign or stale nonces are not failures;
//! - a block lasts `window` after the failure that caused it and doubles with each further
//!   failure while blocked (exponential back-off, capped at a day);
//! - an address a user has logged in from before (the last few, for a day) is never blocked
//!   for that user: a flood against alice from elsewhere, or against bob from alice's
//!   network, does not lock alice out where she already logs in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The longest window accepted; longer ones are shortened to this (one day).
const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// Settings of an [`AuthFailureLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Failures within `window` that block the key. Default 10.
    pub max_failures: u32,
    /// The counting window, and how long a block lasts after the last failure. Default 60 s;
    /// at most one day.
    pub window: Duration,
    /// Most keys remembered per table (addresses, usernames). Default 4096 each, so a few
    /// hundred kB in all.
    pub max_entries: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
            max_entries: 4096,
        }
    }
}

/// Counts authentication failures per source address and per username; a key with
/// `max_failures` failures within `window` is blocked until `window` has passed since its
/// last failure (failures recorded while blocked extend the block).
///
/// Use: before verifying, drop or refuse (403) requests when [`is_blocked`](Self::is_blocked);
/// after a failed verification call
/// [`record_failure`](Self::record_failure). Record failures for unknown usernames exactly
/// like for known ones, or blocking itself tells them apart (SECURITY threat 4). Blocking by
/// username lets anyone lock a user out for `window`; callers that mind can consult only
/// the address.
///
/// Memory is bounded: each table holds at most `max_entries` keys. When full, expired keys go
/// first, then the unblocked key whose window started earliest, and only then the blocked
/// key whose block ends first. IPv6 addresses count per /64 (one subscriber's prefix), and
/// IPv4-mapped IPv6 addresses as IPv4. Usernames are kept as their SHA-256, so long names
/// cost no more memory.
#[derive(Debug, Clone)]
pub struct AuthFailureLimiter {
    config: LimiterConfig,
    ips: Table<IpAddr>,
    users: Table<[u8; 32]>,
    /// Per user, the addresses it last logged in from and when.
    known: BTreeMap<[u8; 32], Vec<(IpAddr, Instant)>>,
}

/// Addresses remembered per user as known good.
const KNOWN_PER_USER: usize = 4;

impl Default for AuthFailureLimiter {
    /// A limiter with [`LimiterConfig::default`].
    fn default() -> Self {
        Self::new(LimiterConfig::default())
    }
}

impl AuthFailureLimiter {
    /// A limiter with these settings.
    pub fn new(mut config: LimiterConfig) -> Self {
        config.window = config.window.min(MAX_WINDOW);
        Self {
            config,
            ips: Table::default(),
            users: Table::default(),
            known: BTreeMap::new(),
        }
    }

    /// Records a successful authentication of `username` from `ip`: that address is known
    /// good for the user from now on (for a day), and the user's failure count restarts.
    pub fn record_success(&mut self, now: Instant, ip: IpAddr, username: &str) {
        let key = user_key(username);
        let ip = normalize(ip);
        if !self.known.contains_key(&key) && self.known.len() >= self.config.max_entries.max(1) {
            // Forget the user whose latest login is oldest.
            let oldest = self
                .known
                .iter()
                .min_by_key(|(_, v)| v.iter().map(|(_, t)| *t).max())
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.known.remove(&k);
            }
        }
        let list = self.known.entry(key).or_default();
        list.retain(|(a, t)| *a != ip && now.saturating_duration_since(*t) < MAX_WINDOW);
        list.push((ip, now));
        if list.len() > KNOWN_PER_USER {
            list.remove(0);
        }
        self.users.forget(&key);
    }

    /// Whether `username` has logged in from `ip` within the last day.
    pub fn is_known(&self, now: Instant, ip: IpAddr, username: &str) -> bool {
        let ip = normalize(ip);
        self.known.get(&user_key(username)).is_some_and(|l| {
            l.iter()
                .any(|(a, t)| *a == ip && now.saturating_duration_since(*t) < MAX_WINDOW)
        })
    }

    /// Records one failed authentication from `ip` for `username` (the credentials' or the
    /// To user; an empty `username` is counted for the address only).
    pub fn record_failure(&mut self, now: Instant, ip: IpAddr, username: &str) {
        self.ips.record(&self.config, now, normalize(ip));
        if !username.is_empty() {
            self.users.record(&self.config, now, user_key(username));
        }
    }

    /// Whether a request from `ip` for `username` should be refused without verifying it:
    /// the address or the username is blocked, unless the user has logged in from that
    /// address before (an empty `username` checks the address only).
    pub fn is_blocked(&self, now: Instant, ip: IpAddr, username: &str) -> bool {
        if !username.is_empty() && self.is_known(now, ip, username) {
            return false;
        }
        self.is_ip_blocked(now, ip) || (!username.is_empty() && self.is_user_blocked(now, username))
    }

    /// Whether requests from `ip` should be refused without verifying them.
    pub fn is_ip_blocked(&self, now: Instant, ip: IpAddr) -> bool {
        self.ips.is_blocked(now, &normalize(ip))
    }

    /// Whether credentials for `username` should be refused without verifying them.
    pub fn is_user_blocked(&self, now: Instant, username: &str) -> bool {
        self.users.is_blocked(now, &user_key(username))
    }

    /// Keys remembered now, addresses plus usernames (each at most `max_entries`).
    pub fn tracked(&self) -> usize {
        self.ips.entries.len() + self.users.entries.len()
    }
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::from(s)
            }
        },
    }
}

fn user_key(username: &str) -> [u8; 32] {
    Sha256::digest(username.as_bytes()).into()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// This entry's key in `Table::open` (unblocked) or `Table::blocked`.
    slot: (Instant, u64),
}

impl Entry {
    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }
}

/// One table of counters, with two eviction orders: unblocked keys by window start, blocked
/// keys by block end. Ordered maps throughout: deterministic, and no hash flooding.
#[derive(Debug, Clone)]
struct Table<K> {
    entries: BTreeMap<K, Entry>,
    open: BTreeMap<(Instant, u64), K>,
    blocked: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            open: BTreeMap::new(),
            blocked: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord + Clone> Table<K> {
    fn is_blocked(&self, now: Instant, key: &K) -> bool {
        self.entries.get(key).is_some_and(|e| e.is_blocked(now))
    }

    fn record(&mut self, config: &LimiterConfig, now: Instant, key: K) {
        let window = config.window;
        let until = now.checked_add(window).unwrap_or(now);
        let mut entry = match self.entries.get(&key).copied() {
            Some(old) => {
                self.unindex(&old);
                let mut e = old;
                if e.is_blocked(now) {
                    // Exponential back-off: each failure while blocked doubles the block.
                    e.failures = e.failures.saturating_add(1);
                    let doublings = e.failures.saturating_sub(config.max_failures).min(16);
                    let block = window
                        .checked_mul(1 << doublings)
                        .unwrap_or(MAX_WINDOW)
                        .min(MAX_WINDOW);
                    e.blocked_until = Some(now.checked_add(block).unwrap_or(now));
                } else if e.blocked_until.is_some()
                    || now.saturating_duration_since(e.window_start) >= window
                {
                    e.window_start = now;
                    e.failures = 1;
                    e.blocked_until = None;
                } else {
                    e.failures = e.failures.saturating_add(1);
                }
                e
            }
            None => {
                self.purge(now, window);
                while self.entries.len() >= config.max_entries.max(1) && self.evict_one() {}
                Entry {
                    window_start: now,
                    failures: 1,
                    blocked_until: None,
                    slot: (now, 0),
                }
            }
        };
        if entry.blocked_until.is_none() && entry.failures >= config.max_failures {
            entry.blocked_until = Some(until);
        }
        self.seq = self.seq.wrapping_add(1);
        match entry.blocked_until {
            Some(until) => {
                entry.slot = (until, self.seq);
                self.blocked.insert(entry.slot, key.clone());
            }
            None => {
                entry.slot = (entry.window_start, self.seq);
                self.open.insert(entry.slot, key.clone());
            }
        }
        self.entries.insert(key, entry);
    }

    /// Forgets `key`'s counters.
    fn forget(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key) {
            self.unindex(&e);
        }
    }

    fn unindex(&mut self, entry: &Entry) {
        if entry.blocked_until.is_some() {
            self.blocked.remove(&entry.slot);
        } else {
            self.open.remove(&entry.slot);
        }
    }

    /// Drops keys whose window or block is over, oldest first.
    fn purge(&mut self, now: Instant, window: Duration) {
        while let Some(entry) = self.open.first_entry() {
            if now.saturating_duration_since(entry.key().0) < window {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
        while let Some(entry) = self.blocked.first_entry() {
            if now < entry.key().0 {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }

    /// Evicts the oldest unblocked key, else the blocked one ending first; false if empty.
    fn evict_one(&mut self) -> bool {
        let popped = match self.open.pop_first() {
            Some(p) => Some(p),
            None => self.blocked.pop_first(),
        };
        match popped {
            Some((_, key)) => {
                self.entries.remove(&key);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        assert_eq!(normalize(a), normalize(b));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(normalize(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let other: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1).into();
        assert_ne!(normalize(a), normalize(other));
    }

    #[test]
    fn blocks_double_and_known_addresses_pass() {
        let t0 = Instant::now();
        let config = LimiterConfig {
            max_failures: 3,
            window: Duration::from_secs(10),
            max_entries: 16,
        };
        let mut l = AuthFailureLimiter::new(config);
        let alice_home = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let attacker = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        l.record_success(t0, alice_home, "alice");
        for _ in 0..3 {
            l.record_failure(t0, attacker, "alice");
        }
        assert!(l.is_blocked(t0, attacker, "alice"));
        assert!(l.is_blocked(t0, attacker, "bob"), "the address is blocked");
        assert!(
            !l.is_blocked(t0, alice_home, "alice"),
            "alice at home is not"
        );
        // Each further failure while blocked doubles the block: 20 s, then 40 s.
        l.record_failure(t0, attacker, "x");
        assert!(l.is_ip_blocked(t0 + Duration::from_secs(19), attacker));
        assert!(!l.is_ip_blocked(t0 + Duration::from_secs(21), attacker));
        l.record_failure(t0, attacker, "x");
        assert!(l.is_ip_blocked(t0 + Duration::from_secs(39), attacker));
        // A success restarts the user's count.
        l.record_success(t0, alice_home, "alice");
        assert!(!l.is_user_blocked(t0, "alice"));
    }

    #[test]
    fn indexes_stay_consistent() {
        let t0 = Instant::now();
        let config = LimiterConfig {
            max_failures: 3,
            window: Duration::from_secs(10),
            max_entries: 5,
        };
        let mut l = AuthFailureLimiter::new(config);
        for i in 0..200u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 150);
            let ip = IpAddr::V4(Ipv4Addr::from(i % 9));
            l.record_failure(now, ip, &format!("u{}", i % 7));
            for t in [&l.ips.entries.len(), &l.users.entries.len()] {
                assert!(*t <= 5);
            }
            assert_eq!(l.ips.entries.len(), l.ips.open.len() + l.ips.blocked.len());
            assert_eq!(
                l.users.entries.len(),
                l.users.open.len() + l.users.blocked.len()
            );
        }
    }
}
