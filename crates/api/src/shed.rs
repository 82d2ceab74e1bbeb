//! The per-source limit on security events written for unauthenticated requests (R30): a
//! refused `POST /api/v1/enrol` costs its sender nothing, but each one used to add a row to
//! the security-event table for good. Now each source address (an IPv6 /64, see
//! [`crate::serve`]) has a token bucket ([`EventRate`]: a burst, then one event per
//! interval), and all sources together have another; an event over either is not written,
//! only counted (`trustring_security_events_shed_total` in `GET /metrics`), and the answer to
//! the request is the same either way. The table of sources is bounded
//! ([`EventRate::max_sources`]): sources whose bucket is full again are forgotten first; when
//! it is full of active ones, a new source's events are shed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::serve::source_key;

/// How many security events unauthenticated requests may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRate {
    /// Events one source may write at once, after a quiet period.
    pub burst: u32,
    /// Then one more per this interval, per source.
    pub interval: Duration,
    /// Events all sources together may write at once.
    pub global_burst: u32,
    /// Then one more per this interval, all sources together.
    pub global_interval: Duration,
    /// Sources tracked at once, at most.
    pub max_sources: usize,
}

impl Default for EventRate {
    /// 20 per source, then one per 30 s (120 an hour); 500 in all, then one per second.
    fn default() -> Self {
        Self {
            burst: 20,
            interval: Duration::from_secs(30),
            global_burst: 500,
            global_interval: Duration::from_secs(1),
            max_sources: 4096,
        }
    }
}

/// A token bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills by the time since `at`, up to `burst`.
    fn refill(&mut self, burst: u32, interval: Duration, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / interval.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + earned).min(f64::from(burst));
        self.at = now;
    }

    fn is_full(&self, burst: u32, interval: Duration, now: Instant) -> bool {
        let mut b = *self;
        b.refill(burst, interval, now);
        b.tokens >= f64::from(burst)
    }
}

/// Per-source and global token buckets for security events (see the module docs).
#[derive(Debug)]
pub(crate) struct EventLimiter {
    rate: EventRate,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl EventLimiter {
    pub(crate) fn new(rate: EventRate) -> Self {
        let now = Instant::now();
        Self {
            rate,
            state: Mutex::new(State {
                global: Bucket::full(rate.global_burst, now),
                sources: HashMap::new(),
            }),
        }
    }

    /// Whether an event from `source` may be written now (and if so, it is charged). `None`
    /// (no peer address known, e.g. a router driven in-process) counts as one source.
    pub(crate) fn allow(&self, source: Option<IpAddr>) -> bool {
        self.allow_at(source, Instant::now())
    }

    fn allow_at(&self, source: Option<IpAddr>, now: Instant) -> bool {
        let r = self.rate;
        let key = source.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), source_key);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.sources.contains_key(&key) && state.sources.len() >= r.max_sources {
            // Forget the sources that are back to a full bucket: they are as new.
            state
                .sources
                .retain(|_, b| !b.is_full(r.burst, r.interval, now));
            if state.sources.len() >= r.max_sources {
                return false;
            }
        }
        let State { global, sources } = &mut *state;
        let bucket = sources
            .entry(key)
            .or_insert_with(|| Bucket::full(r.burst, now));
        bucket.refill(r.burst, r.interval, now);
        global.refill(r.global_burst, r.global_interval, now);
        if bucket.tokens < 1.0 || global.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        global.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    fn rate() -> EventRate {
        EventRate {
            burst: 3,
            interval: Duration::from_secs(10),
            global_burst: 5,
            global_interval: Duration::from_secs(1),
            max_sources: 3,
        }
    }

    #[test]
    fn a_source_gets_its_burst_then_one_per_interval() {
        let l = EventLimiter::new(rate());
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| l.allow_at(ip(1), t0)).count();
        assert_eq!(allowed, 3);
        assert!(!l.allow_at(ip(1), t0 + Duration::from_secs(9)));
        assert!(l.allow_at(ip(1), t0 + Duration::from_secs(11)));
        assert!(!l.allow_at(ip(1), t0 + Duration::from_secs(12)));
        // Another source has its own bucket.
        assert!(l.allow_at(ip(2), t0 + Duration::from_secs(12)));
    }

    #[test]
    fn all_sources_share_the_global_bucket() {
        let l = EventLimiter::new(rate());
        let t0 = Instant::now();
        let allowed = (1..=3)
            .flat_map(|s| (0..3).map(move |_| s))
            .filter(|&s| l.allow_at(ip(s), t0))
            .count();
        assert_eq!(allowed, 5, "global burst");
        assert!(l.allow_at(ip(3), t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let l = EventLimiter::new(EventRate {
            global_burst: 100,
            ..rate()
        });
        let t0 = Instant::now();
        for s in 1..=3 {
            assert!(l.allow_at(ip(s), t0));
        }
        // Full of active sources: a new one is shed, a known one is not.
        assert!(!l.allow_at(ip(4), t0));
        assert!(l.allow_at(ip(1), t0));
        // Once their buckets are full again they are forgotten, and a new one gets in.
        let later = t0 + Duration::from_secs(60);
        assert!(l.allow_at(ip(4), later));
        let state = l.state.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(state.sources.len(), 1);
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let l = EventLimiter::new(rate());
        let t0 = Instant::now();
        let allowed = (1..=6u16)
            .filter(|&i| {
                let a = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, i);
                l.allow_at(Some(IpAddr::V6(a)), t0)
            })
            .count();
        assert_eq!(allowed, 3);
    }
}
