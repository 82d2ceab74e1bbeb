//! Toll-fraud protection (SECURITY threat 3): which INVITEs the gateway connects to the PSTN.
//!
//! A PSTN call costs money and rings a real phone, so the trunk side takes an INVITE only
//! when all of these hold, and refuses it with 403 (and a log line) otherwise:
//! 1. it comes from an allowed address (the server's; `--allow`);
//! 2. it carries a `Trust-Challenge` (only the server's phone legs do), whose counter (Unix
//!    ms) is within [`MAX_SKEW_MS`] of our clock, and which was not seen before;
//! 3. its `Trunk-Auth` MAC, keyed with the secret shared with the server, covers this Call-ID,
//!    this top Via branch, this called number and that challenge
//!    ([`sip_core::proxy::verify_trunk_auth`]).
//!
//! (2) and (3) together make a captured INVITE useless: it cannot be moved to another number
//! or call, and it cannot be replayed once used or after a minute.
//!
//! Then the per-subscriber caps ([`Caps`]), which bound what even a compromised server (or a
//! flood of calls to one user) can spend: PSTN legs per number per minute, and answered PSTN
//! minutes per number per UTC day (refused with 403, `Reason: Q.850;cause=29`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use sip_core::proxy::verify_trunk_auth;

/// How far a challenge's counter may be from our clock.
pub const MAX_SKEW_MS: i64 = 60_000;
/// Challenges remembered against replay (older ones are outside the time window anyway).
const REPLAY_MEMORY: usize = 65_536;

/// Why an INVITE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source address is not allowed.
    #[error("source {0} is not an allowed trunk peer")]
    Source(IpAddr),
    /// No `Trust-Challenge`: not a phone leg made by the server.
    #[error("no trust challenge")]
    NoChallenge,
    /// The challenge has no readable counter.
    #[error("unreadable trust challenge")]
    BadChallenge,
    /// The challenge's counter is too far from now.
    #[error("stale trust challenge ({0} ms off)")]
    Stale(i64),
    /// The challenge was used before.
    #[error("replayed trust challenge")]
    Replayed,
    /// No `Trunk-Auth`, or it does not verify.
    #[error("bad or missing Trunk-Auth")]
    BadMac,
    /// The number had its cap of PSTN legs in the last minute.
    #[error("rate cap: {0} PSTN legs in the last minute")]
    RateCap(u32),
    /// The number used its answered PSTN minutes of the day.
    #[error("spend cap: {0} PSTN minutes used today")]
    SpendCap(u64),
}

/// Per-number limits on PSTN legs (SECURITY threat 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most PSTN legs one number may take in any 60 s.
    pub calls_per_minute: u32,
    /// Most answered PSTN minutes one number may use per UTC day (`None`: no cap).
    pub minutes_per_day: Option<u64>,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            calls_per_minute: 20,
            minutes_per_day: None,
        }
    }
}

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

impl Refusal {
    /// A short fixed word for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Source(_) => "source",
            Self::NoChallenge => "no-challenge",
            Self::BadChallenge => "bad-challenge",
            Self::Stale(_) => "stale-challenge",
            Self::Replayed => "replayed-challenge",
            Self::BadMac => "bad-mac",
            Self::RateCap(_) => "rate-cap",
            Self::SpendCap(_) => "spend-cap",
        }
    }
}

/// The fields of an INVITE the checks read.
#[derive(Debug, Clone, Copy)]
pub struct TrunkInvite<'a> {
    /// Source address of the datagram.
    pub source: IpAddr,
    /// Call-ID.
    pub call_id: &'a str,
    /// Top Via branch.
    pub branch: &'a str,
    /// The called number (Request-URI user part).
    pub number: &'a str,
    /// `Trust-Challenge` value.
    pub challenge: Option<&'a str>,
    /// `Trunk-Auth` value.
    pub trunk_auth: Option<&'a str>,
}

/// The trunk's admission checks, with their replay memory.
pub struct Admission {
    allow: Vec<IpAddr>,
    secret: Vec<u8>,
    seen: HashSet<String>,
    order: VecDeque<String>,
    caps: Caps,
    /// Admission times (Unix ms) of each number's legs in the last minute.
    recent: HashMap<String, VecDeque<i64>>,
    /// Answered ms of each number on the UTC day given.
    spent: HashMap<String, (i64, i64)>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// The `ctr` parameter of a challenge value (`v=1;dev=..;ctr=1764567890123;...`).
fn counter(challenge: &str) -> Option<i64> {
    challenge
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim() == "ctr")
        .and_then(|(_, v)| v.trim().parse().ok())
}

impl Admission {
    /// Checks for a gateway that takes calls from `allow` with trunk secret `secret`.
    pub fn new(allow: Vec<IpAddr>, secret: Vec<u8>, caps: Caps) -> Self {
        Self {
            allow,
            secret,
            seen: HashSet::new(),
            order: VecDeque::new(),
            caps,
            recent: HashMap::new(),
            spent: HashMap::new(),
        }
    }

    /// Counts `billable_ms` of answered PSTN time against `number` on the day of `at_ms`
    /// (records written, or read back from the store at start).
    pub fn charge(&mut self, number: &str, at_ms: i64, billable_ms: i64) {
        let day = at_ms.div_euclid(DAY_MS);
        let e = self.spent.entry(number.to_owned()).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 = e.1.saturating_add(billable_ms.max(0));
    }

    fn check_caps(&mut self, number: &str, now_ms: i64, live_ms: i64) -> Result<(), Refusal> {
        if let Some(max) = self.caps.minutes_per_day {
            let today = now_ms.div_euclid(DAY_MS);
            let used = self
                .spent
                .get(number)
                .filter(|(day, _)| *day == today)
                .map_or(0, |(_, ms)| *ms)
                .saturating_add(live_ms.max(0));
            let limit = i64::try_from(max)
                .unwrap_or(i64::MAX)
                .saturating_mul(MINUTE_MS);
            if used >= limit {
                return Err(Refusal::SpendCap(max));
            }
        }
        let q = self.recent.entry(number.to_owned()).or_default();
        while q.front().is_some_and(|&t| now_ms - t >= MINUTE_MS) {
            q.pop_front();
        }
        if q.len() >= self.caps.calls_per_minute as usize {
            return Err(Refusal::RateCap(self.caps.calls_per_minute));
        }
        q.push_back(now_ms);
        Ok(())
    }

    /// Admits or refuses an INVITE at wall-clock time `now_ms` (Unix ms); `live_ms` is the
    /// answered time of the number's calls still up (counted against the daily cap). An
    /// admitted challenge is remembered: the same one is refused next time.
    pub fn admit(
        &mut self,
        inv: &TrunkInvite<'_>,
        now_ms: i64,
        live_ms: i64,
    ) -> Result<(), Refusal> {
        if !self.allow.contains(&inv.source) {
            return Err(Refusal::Source(inv.source));
        }
        let challenge = inv.challenge.ok_or(Refusal::NoChallenge)?;
        let ctr = counter(challenge).ok_or(Refusal::BadChallenge)?;
        let off = now_ms.saturating_sub(ctr);
        if off.abs() > MAX_SKEW_MS {
            return Err(Refusal::Stale(off));
        }
        let mac = inv.trunk_auth.ok_or(Refusal::BadMac)?;
        if !verify_trunk_auth(
            &self.secret,
            mac,
            inv.call_id,
            inv.branch,
            inv.number,
            challenge,
        ) {
            return Err(Refusal::BadMac);
        }
        if self.seen.contains(challenge) {
            return Err(Refusal::Replayed);
        }
        self.check_caps(inv.number, now_ms, live_ms)?;
        self.seen.insert(challenge.to_owned());
        self.order.push_back(challenge.to_owned());
        if self.order.len() > REPLAY_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::proxy::trunk_auth;

    const SECRET: &[u8] = b"a shared trunk secret";
    const NOW: i64 = 1_764_567_890_123;

    fn invite<'a>(challenge: &'a str, mac: &'a str) -> TrunkInvite<'a> {
        TrunkInvite {
            source: IpAddr::from([127, 0, 0, 1]),
            call_id: "c1",
            branch: "z9hG4bKb1",
            number: "+15550001",
            challenge: Some(challenge),
            trunk_auth: Some(mac),
        }
    }

    #[test]
    fn admits_the_servers_leg_once() {
        let ch = format!("v=1;dev=d-1;ctr={NOW};nonce=x;mac=y");
        let mac = trunk_auth(SECRET, "c1", "z9hG4bKb1", "+15550001", &ch);
        let mut a = Admission::new(
            vec![IpAddr::from([127, 0, 0, 1])],
            SECRET.to_vec(),
            Caps::default(),
        );
        assert_eq!(a.admit(&invite(&ch, &mac), NOW + 10, 0), Ok(()));
        assert_eq!(
            a.admit(&invite(&ch, &mac), NOW + 20, 0),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn refuses_everything_else() {
        let ch = format!("v=1;dev=d-1;ctr={NOW};nonce=x;mac=y");
        let mac = trunk_auth(SECRET, "c1", "z9hG4bKb1", "+15550001", &ch);
        let mut a = Admission::new(
            vec![IpAddr::from([127, 0, 0, 1])],
            SECRET.to_vec(),
            Caps::default(),
        );
        let mut other = invite(&ch, &mac);
        other.source = IpAddr::from([127, 0, 0, 2]);
        assert!(matches!(a.admit(&other, NOW, 0), Err(Refusal::Source(_))));
        let mut other = invite(&ch, &mac);
        other.challenge = None;
        assert_eq!(a.admit(&other, NOW, 0), Err(Refusal::NoChallenge));
        let mut other = invite(&ch, &mac);
        other.trunk_auth = None;
        assert_eq!(a.admit(&other, NOW, 0), Err(Refusal::BadMac));
        let mut other = invite(&ch, &mac);
        other.number = "+19990000";
        assert_eq!(
            a.admit(&other, NOW, 0),
            Err(Refusal::BadMac),
            "moved to another number"
        );
        assert_eq!(
            a.admit(&invite("v=1;ctr=x", &mac), NOW, 0),
            Err(Refusal::BadChallenge)
        );
        assert!(matches!(
            a.admit(&invite(&ch, &mac), NOW + MAX_SKEW_MS + 1, 0),
            Err(Refusal::Stale(_))
        ));
        // None of the refusals burned the challenge.
        assert_eq!(a.admit(&invite(&ch, &mac), NOW, 0), Ok(()));
    }

    #[test]
    fn caps_per_number() {
        let caps = Caps {
            calls_per_minute: 2,
            minutes_per_day: Some(1),
        };
        let mut a = Admission::new(vec![IpAddr::from([127, 0, 0, 1])], SECRET.to_vec(), caps);
        let leg = |a: &mut Admission, n: i64, number: &str, at: i64| {
            let ch = format!("v=1;dev=d-1;ctr={};nonce={n};mac=y", at);
            let mac = trunk_auth(SECRET, "c1", "z9hG4bKb1", number, &ch);
            let mut inv = invite(&ch, &mac);
            inv.number = number;
            a.admit(&inv, at, 0)
        };
        assert_eq!(leg(&mut a, 1, "+15550001", NOW), Ok(()));
        assert_eq!(leg(&mut a, 2, "+15550001", NOW + 1), Ok(()));
        assert_eq!(
            leg(&mut a, 3, "+15550001", NOW + 2),
            Err(Refusal::RateCap(2))
        );
        assert_eq!(leg(&mut a, 4, "+15550002", NOW + 3), Ok(()), "per number");
        assert_eq!(
            leg(&mut a, 5, "+15550001", NOW + 60_001),
            Ok(()),
            "a minute later"
        );
        // Calls still up count too.
        let ch = format!("v=1;dev=d-1;ctr={};nonce=live;mac=y", NOW + 61_000);
        let mac = trunk_auth(SECRET, "c1", "z9hG4bKb1", "+15550003", &ch);
        let mut inv = invite(&ch, &mac);
        inv.number = "+15550003";
        assert_eq!(
            a.admit(&inv, NOW + 61_000, 60_000),
            Err(Refusal::SpendCap(1))
        );
        a.charge("+15550001", NOW, 59_000);
        assert_eq!(leg(&mut a, 6, "+15550001", NOW + 120_000), Ok(()));
        a.charge("+15550001", NOW, 1_000);
        assert_eq!(
            leg(&mut a, 7, "+15550001", NOW + 180_000),
            Err(Refusal::SpendCap(1))
        );
        // The next UTC day the minutes start again.
        assert_eq!(
            leg(&mut a, 7, "+15550001", NOW + DAY_MS),
            Ok(()),
            "a new day"
        );
    }
}
