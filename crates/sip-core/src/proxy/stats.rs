//! What the proxy counts for metrics: plain counters bumped on the paths that matter to an
//! operator (unparsable messages, failed authentications, refused trust proofs, calls ended
//! by outcome), and gauges read on demand (live registrations, calls, transactions, forks).
//!
//! The core only counts; the driver copies a [`ProxyStats`] snapshot out when it is asked
//! (`sip-net` serves it as Prometheus text). Counting costs an integer increment on paths
//! that already build a SIP response; nothing here allocates per message, except the first
//! time a trust-failure kind is seen.

use std::collections::BTreeMap;

use super::{CallRecord, Released};

/// How a call ended, for the calls counter (one per call, when its record is handed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallOutcome {
    /// A device answered (the call may since have ended normally, or been closed as lost).
    Answered,
    /// Every device was busy (486 / 600).
    Busy,
    /// Nobody answered: ring timeout, 480 or 408.
    NoAnswer,
    /// Declined (603, or 403 from the devices).
    Declined,
    /// The caller cancelled before anyone answered.
    Cancelled,
    /// Nothing to ring: no live registration, every device off or locked out.
    Unreachable,
    /// Any other final failure.
    Failed,
}

impl CallOutcome {
    /// Every outcome, in a stable order (metrics list all of them, zeros included).
    pub const ALL: [Self; 7] = [
        Self::Answered,
        Self::Busy,
        Self::NoAnswer,
        Self::Declined,
        Self::Cancelled,
        Self::Unreachable,
        Self::Failed,
    ];

    /// Stable text (the `outcome` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no-answer",
            Self::Declined => "declined",
            Self::Cancelled => "cancelled",
            Self::Unreachable => "unreachable",
            Self::Failed => "failed",
        }
    }

    /// The outcome of a finished call.
    pub fn of(record: &CallRecord) -> Self {
        if record.answered_by.is_some() || record.answer_at.is_some() {
            return Self::Answered;
        }
        if record.released_by == Released::Caller {
            return Self::Cancelled;
        }
        if record.branches.is_empty() {
            return Self::Unreachable;
        }
        match record.final_status {
            486 | 600 => Self::Busy,
            480 | 408 => Self::NoAnswer,
            603 | 403 => Self::Declined,
            _ => Self::Failed,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Most distinct trust-failure kinds counted apart; further kinds are counted as `other`
/// (the kinds come from the trust gate, a handful of fixed codes: this only bounds memory).
pub const MAX_TRUST_KINDS: usize = 32;

/// A snapshot of the proxy's counters and gauges ([`super::Proxy::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Received messages that did not parse (answered 400 when possible, else dropped).
    pub parse_errors: u64,
    /// Digest authentications that failed (REGISTER or caller): wrong credentials, or valid
    /// credentials of someone else than the To / From user. Stale nonces do not count.
    pub auth_failures: u64,
    /// Refused trust proofs and unchallengeable phones (R14), by kind (`wrong-proof`,
    /// `missing-proof`, `locked-out`, ...).
    pub trust_failures: BTreeMap<String, u64>,
    /// Calls ended, indexed by [`CallOutcome`] (see [`Self::calls_ended`]).
    pub calls: [u64; CallOutcome::ALL.len()],
    /// Live registrations (bindings not expired), every subscriber together.
    pub registrations: usize,
    /// Calls being tracked: ringing, or answered and not yet hung up.
    pub active_calls: usize,
    /// Live server transactions.
    pub server_transactions: usize,
    /// Live client transactions.
    pub client_transactions: usize,
    /// Live response contexts (forks), lingering ones included.
    pub forks: usize,
    /// Records of unanswered calls from unauthenticated callers not written because their
    /// source exceeded its rate (R30: unauthenticated permanent writes are bounded).
    pub cdrs_shed: u64,
}

impl ProxyStats {
    /// Calls that ended with `outcome`.
    pub fn calls_ended(&self, outcome: CallOutcome) -> u64 {
        self.calls[outcome.index()]
    }
}

/// The counters the proxy bumps (the gauges are computed when a snapshot is taken).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) parse_errors: u64,
    pub(super) auth_failures: u64,
    pub(super) trust_failures: BTreeMap<String, u64>,
    pub(super) calls: [u64; CallOutcome::ALL.len()],
    pub(super) cdrs_shed: u64,
}

impl Counters {
    pub(super) fn call_ended(&mut self, record: &CallRecord) {
        self.calls[CallOutcome::of(record).index()] += 1;
    }

    pub(super) fn trust_failure(&mut self, kind: &str) {
        if let Some(n) = self.trust_failures.get_mut(kind) {
            *n += 1;
            return;
        }
        let kind = if self.trust_failures.len() < MAX_TRUST_KINDS {
            kind
        } else {
            "other"
        };
        *self.trust_failures.entry(kind.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::proxy::{BranchRecord, Released};

    fn record(status: u16, answered: bool, released: Released, branches: usize) -> CallRecord {
        let now = Instant::now();
        CallRecord {
            call_id: "c".into(),
            caller: String::new(),
            called: "alice".into(),
            setup_at: now,
            answer_at: answered.then_some(now),
            end_at: now,
            branches: (0..branches)
                .map(|_| BranchRecord {
                    contact: String::new(),
                    device: None,
                    leg: crate::proxy::LegType::Voip,
                    rang_at: Some(now),
                    outcome: None,
                    status: None,
                })
                .collect(),
            answered_by: answered.then_some(0),
            final_status: status,
            released_by: released,
            release_cause: String::new(),
        }
    }

    #[test]
    fn outcomes_of_call_records() {
        let cases = [
            (
                record(200, true, Released::Caller, 2),
                CallOutcome::Answered,
            ),
            (
                record(200, true, Released::Callee, 1),
                CallOutcome::Answered,
            ),
            (record(486, false, Released::Callee, 2), CallOutcome::Busy),
            (record(600, false, Released::Callee, 2), CallOutcome::Busy),
            (
                record(480, false, Released::Proxy, 2),
                CallOutcome::NoAnswer,
            ),
            (
                record(408, false, Released::Callee, 1),
                CallOutcome::NoAnswer,
            ),
            (
                record(603, false, Released::Callee, 1),
                CallOutcome::Declined,
            ),
            (
                record(487, false, Released::Caller, 2),
                CallOutcome::Cancelled,
            ),
            (
                record(480, false, Released::Proxy, 0),
                CallOutcome::Unreachable,
            ),
            (record(500, false, Released::Callee, 1), CallOutcome::Failed),
        ];
        for (r, want) in cases {
            assert_eq!(CallOutcome::of(&r), want, "{r:?}");
        }
        let names: Vec<&str> = CallOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "answered",
                "busy",
                "no-answer",
                "declined",
                "cancelled",
                "unreachable",
                "failed"
            ]
        );
        for (i, o) in CallOutcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn trust_kinds_are_bounded() {
        let mut c = Counters::default();
        for i in 0..MAX_TRUST_KINDS + 5 {
            c.trust_failure(&format!("kind-{i}"));
        }
        c.trust_failure("kind-0");
        assert_eq!(c.trust_failures.len(), MAX_TRUST_KINDS + 1);
        assert_eq!(c.trust_failures.get("other"), Some(&5));
        assert_eq!(c.trust_failures.get("kind-0"), Some(&2));
    }
}
