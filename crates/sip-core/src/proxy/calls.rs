//! What happened to each call, for its call detail record (SPEC R18): the branches rung and
//! how each ended, who answered, when, and who released.
//!
//! The proxy sees the whole call: the forked INVITE, every branch's outcome, and (through
//! Record-Route) the BYE. A call that is never answered ends with the caller's final
//! response; an answered one with the first BYE through the proxy. Either way one
//! [`super::Event::CallEnded`] carries the record out; the driver stamps wall-clock times,
//! adds the billing entity and stores it. Times are `Instant`s: the core has no clock.
//!
//! Records are permanent writes that anyone can cause, so they are bounded (R30): every
//! text field is cut to [`MAX_RECORD_FIELD`] bytes, and the records of unanswered calls
//! from callers who did not authenticate are rate-limited per source address
//! ([`UNVERIFIED_RECORDS_PER_MINUTE`], burst [`UNVERIFIED_RECORDS_BURST`]); the ones shed are
//! counted (`cdrs_shed`). Answered calls and our subscribers' calls are always recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::{Event, Output, Proxy};
use crate::message::{HeaderName, Request};

/// Longest text field of a record (bytes, cut at a character boundary).
pub const MAX_RECORD_FIELD: usize = 256;
/// Records per minute of unanswered calls from one unauthenticated source, sustained.
pub const UNVERIFIED_RECORDS_PER_MINUTE: u32 = 60;
/// … and in a burst.
pub const UNVERIFIED_RECORDS_BURST: u32 = 20;
/// Sources whose record rate is remembered.
const MAX_RATED_SOURCES: usize = 4096;

/// Most calls tracked at once. Past this the oldest answered call is closed as `lost` (its
/// BYE never came through us), so a flood of calls cannot grow memory without bound.
pub const MAX_TRACKED_CALLS: usize = 100_000;

/// How one branch of a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchOutcome {
    /// This branch answered and was connected.
    Answered,
    /// Cancelled because another branch answered (R12).
    CancelledElsewhere,
    /// The caller cancelled, or the call ended otherwise before this branch answered.
    Cancelled,
    /// 486 / 600: busy.
    Busy,
    /// 480 / 408 / no final response before the ring timeout.
    NoAnswer,
    /// 603 (or 403 from the device): declined.
    Declined,
    /// The phone's trust proof failed (R14): never connected.
    FailedTrust,
    /// A delayed branch that was never sent.
    NotRung,
    /// Any other failure.
    Failed,
}

impl BranchOutcome {
    /// Stable text for CDRs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::CancelledElsewhere => "cancelled-elsewhere",
            Self::Cancelled => "cancelled",
            Self::Busy => "busy",
            Self::NoAnswer => "no-answer",
            Self::Declined => "declined",
            Self::FailedTrust => "failed-trust",
            Self::NotRung => "not-rung",
            Self::Failed => "failed",
        }
    }

    fn from_status(status: u16) -> Self {
        match status {
            486 | 600 => Self::Busy,
            480 | 408 => Self::NoAnswer,
            487 => Self::Cancelled,
            603 | 403 => Self::Declined,
            _ => Self::Failed,
        }
    }
}

/// How a branch reached its device (R18, R19: PSTN legs are billed to the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegType {
    /// SIP to a registered contact.
    Voip,
    /// Through the IP->PSTN gateway to the phone's number.
    Pstn,
}

impl LegType {
    /// Stable text for CDRs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voip => "voip",
            Self::Pstn => "pstn",
        }
    }
}

/// One branch of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRecord {
    /// The contact rung (the branch's Request-URI).
    pub contact: String,
    /// The enrolled phone behind it, if it is one.
    pub device: Option<String>,
    /// VoIP or PSTN.
    pub leg: LegType,
    /// When its INVITE left (`None`: a delayed branch never sent).
    pub rang_at: Option<Instant>,
    /// How it ended (`None` while pending).
    pub outcome: Option<BranchOutcome>,
    /// Its final SIP status, if it sent one.
    pub status: Option<u16>,
}

/// Which side ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The caller (CANCEL, or BYE from the caller's side).
    Caller,
    /// The called side (BYE from the answering device, or every branch refused).
    Callee,
    /// The proxy (ring timeout, lost call).
    Proxy,
}

impl Released {
    /// Stable text for CDRs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
            Self::Proxy => "proxy",
        }
    }
}

/// Everything the proxy saw of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Call-ID.
    pub call_id: String,
    /// The caller's From URI.
    pub caller: String,
    /// The called subscriber (user part of the address of record).
    pub called: String,
    /// When the INVITE arrived.
    pub setup_at: Instant,
    /// When the winning 2xx arrived.
    pub answer_at: Option<Instant>,
    /// When the call ended (BYE seen, or final response sent).
    pub end_at: Instant,
    /// Every branch, in fork order.
    pub branches: Vec<BranchRecord>,
    /// Index of the answering branch.
    pub answered_by: Option<usize>,
    /// The final status the caller got (200 when answered).
    pub final_status: u16,
    /// Who ended it.
    pub released_by: Released,
    /// Why: `BYE`, the SIP status text, `ring timeout`, `lost`.
    pub release_cause: String,
}

pub(super) struct Tracked {
    fork: u64,
    caller_tag: String,
    record: CallRecord,
    /// Where the INVITE came from, when the caller did not authenticate (its records are
    /// rate-limited); `None` for our subscribers.
    unverified_source: Option<IpAddr>,
}

#[derive(Default)]
pub(super) struct Calls {
    by_id: HashMap<String, Tracked>,
    /// Per source address: (tokens, when last refilled) for unverified callers' records.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Calls {
    /// Takes one record token for `source` at `now`; `false` when it has none left.
    fn take_token(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_RATED_SOURCES {
            // Forget the fullest bucket (it is where a new one would start anyway).
            let forget = self
                .buckets
                .iter()
                .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
                .map(|(ip, _)| *ip);
            if let Some(ip) = forget {
                self.buckets.remove(&ip);
            }
        }
        let (tokens, at) = self
            .buckets
            .entry(source)
            .or_insert((f64::from(UNVERIFIED_RECORDS_BURST), now));
        let rate = f64::from(UNVERIFIED_RECORDS_PER_MINUTE) / 60.0;
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate)
            .min(f64::from(UNVERIFIED_RECORDS_BURST));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `s` cut to [`MAX_RECORD_FIELD`] bytes.
fn cap(s: &mut String) {
    if s.len() > MAX_RECORD_FIELD {
        let mut end = MAX_RECORD_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The address a request came from, as the top Via records it (`received`, else sent-by).
fn source_of(req: &Request) -> Option<IpAddr> {
    let via = req.top_via()?;
    let host = via.param("received").flatten().unwrap_or(&via.host);
    host.trim_matches(['[', ']']).parse().ok()
}

impl Proxy {
    /// A forked out-of-dialog INVITE: start its record.
    pub(super) fn call_started(&mut self, fork: u64, now: Instant) {
        let Some(f) = self.forks.get(&fork) else {
            return;
        };
        let req = &f.request;
        let record = CallRecord {
            call_id: req.call_id().to_owned(),
            caller: req.from().map(|n| n.uri.to_string()).unwrap_or_default(),
            called: req.uri.user_unescaped().unwrap_or_default(),
            setup_at: now,
            answer_at: None,
            end_at: now,
            branches: f
                .branch_views()
                .map(|(contact, device, pstn)| BranchRecord {
                    contact,
                    device,
                    leg: if pstn { LegType::Pstn } else { LegType::Voip },
                    rang_at: None,
                    outcome: None,
                    status: None,
                })
                .collect(),
            answered_by: None,
            final_status: 0,
            released_by: Released::Proxy,
            release_cause: String::new(),
        };
        let caller_tag = req
            .from()
            .and_then(|n| n.tag().map(str::to_owned))
            .unwrap_or_default();
        // Authenticated subscribers' requests carry the identity we asserted (R25).
        let unverified_source = (!req.headers.contains(&HeaderName::PAssertedIdentity))
            .then(|| source_of(req))
            .flatten();
        if self.calls.by_id.len() >= MAX_TRACKED_CALLS {
            self.shed_oldest_call(now);
        }
        self.calls.by_id.insert(
            record.call_id.clone(),
            Tracked {
                fork,
                caller_tag,
                record,
                unverified_source,
            },
        );
    }

    fn tracked(&mut self, fork: u64) -> Option<&mut Tracked> {
        let call_id = self.forks.get(&fork)?.request.call_id().to_owned();
        self.calls
            .by_id
            .get_mut(&call_id)
            .filter(|t| t.fork == fork)
    }

    /// Branch `i`'s INVITE left.
    pub(super) fn call_branch_sent(&mut self, fork: u64, i: usize, now: Instant) {
        if let Some(b) = self
            .tracked(fork)
            .and_then(|t| t.record.branches.get_mut(i))
        {
            b.rang_at.get_or_insert(now);
        }
    }

    /// Branch `i` ended with `status`; `outcome` overrides the one its status gives (a
    /// refused proof, voicemail).
    pub(super) fn call_branch_final(
        &mut self,
        fork: u64,
        i: usize,
        status: u16,
        outcome: Option<BranchOutcome>,
    ) {
        if let Some(b) = self
            .tracked(fork)
            .and_then(|t| t.record.branches.get_mut(i))
            && b.outcome.is_none()
        {
            b.status = Some(status);
            b.outcome = Some(outcome.unwrap_or_else(|| BranchOutcome::from_status(status)));
        }
    }

    /// Branch `i` won: every other pending branch is cancelled elsewhere.
    pub(super) fn call_answered(&mut self, fork: u64, i: usize, status: u16, now: Instant) {
        let Some(t) = self.tracked(fork) else { return };
        let r = &mut t.record;
        r.answer_at = Some(now);
        r.answered_by = Some(i);
        r.final_status = status;
        for (j, b) in r.branches.iter_mut().enumerate() {
            if j == i {
                b.outcome = Some(BranchOutcome::Answered);
                b.status = Some(status);
            } else if b.outcome.is_none() {
                b.outcome = Some(if b.rang_at.is_some() {
                    BranchOutcome::CancelledElsewhere
                } else {
                    BranchOutcome::NotRung
                });
            }
        }
    }

    /// The call ended unanswered with `status` to the caller.
    pub(super) fn call_failed(&mut self, fork: u64, status: u16, cause: &str, now: Instant) {
        let caller_cancelled = self.forks.get(&fork).is_some_and(|f| f.caller_cancelled);
        let Some(call_id) = self.tracked(fork).map(|t| t.record.call_id.clone()) else {
            return;
        };
        let Some(mut t) = self.calls.by_id.remove(&call_id) else {
            return;
        };
        let r = &mut t.record;
        r.final_status = status;
        r.end_at = now;
        r.released_by = if caller_cancelled {
            Released::Caller
        } else if status == 480 && cause == "ring timeout" {
            Released::Proxy
        } else {
            Released::Callee
        };
        r.release_cause = if caller_cancelled {
            "CANCEL".into()
        } else {
            cause.to_owned()
        };
        for b in &mut r.branches {
            if b.outcome.is_none() {
                b.outcome = Some(match (b.rang_at, caller_cancelled) {
                    (None, _) => BranchOutcome::NotRung,
                    (Some(_), true) => BranchOutcome::Cancelled,
                    (Some(_), false) => BranchOutcome::NoAnswer,
                });
            }
        }
        if let Some(source) = t.unverified_source
            && !self.calls.take_token(source, now)
        {
            self.stats.cdrs_shed += 1;
            self.stats.call_ended(&t.record);
            return;
        }
        self.emit_call(t.record);
    }

    /// A BYE of an answered call passes through: the call ends now.
    pub(super) fn call_bye(&mut self, req: &Request, now: Instant) {
        let call_id = req.call_id();
        let answered = self
            .calls
            .by_id
            .get(call_id)
            .is_some_and(|t| t.record.answer_at.is_some());
        if !answered {
            return;
        }
        let Some(mut t) = self.calls.by_id.remove(call_id) else {
            return;
        };
        let from_tag = req
            .from()
            .and_then(|n| n.tag().map(str::to_owned))
            .unwrap_or_default();
        t.record.end_at = now;
        t.record.released_by = if from_tag == t.caller_tag {
            Released::Caller
        } else {
            Released::Callee
        };
        t.record.release_cause = req
            .headers
            .get(&HeaderName::Reason)
            .map_or_else(|| "BYE".to_owned(), |r| format!("BYE ({r})"));
        self.emit_call(t.record);
    }

    /// A call to a subscriber with no device to ring (none registered, all off or locked
    /// out): it still gets its record (one CDR per call), with no branches.
    pub(super) fn call_unreachable(&mut self, req: &Request, now: Instant) {
        if req.method != crate::message::Method::Invite {
            return;
        }
        if !req.headers.contains(&HeaderName::PAssertedIdentity)
            && let Some(source) = source_of(req)
            && !self.calls.take_token(source, now)
        {
            self.stats.cdrs_shed += 1;
            return;
        }
        self.emit_call(CallRecord {
            call_id: req.call_id().to_owned(),
            caller: req.from().map(|n| n.uri.to_string()).unwrap_or_default(),
            called: req.uri.user_unescaped().unwrap_or_default(),
            setup_at: now,
            answer_at: None,
            end_at: now,
            branches: Vec::new(),
            answered_by: None,
            final_status: 480,
            released_by: Released::Proxy,
            release_cause: "no reachable device".into(),
        });
    }

    fn shed_oldest_call(&mut self, now: Instant) {
        let oldest = self
            .calls
            .by_id
            .iter()
            .filter(|(_, t)| t.record.answer_at.is_some())
            .min_by_key(|(_, t)| t.record.setup_at)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest
            && let Some(mut t) = self.calls.by_id.remove(&k)
        {
            t.record.end_at = now;
            t.record.release_cause = "lost".into();
            self.emit_call(t.record);
        }
    }

    fn emit_call(&mut self, mut record: CallRecord) {
        self.stats.call_ended(&record);
        for f in [
            &mut record.call_id,
            &mut record.caller,
            &mut record.called,
            &mut record.release_cause,
        ] {
            cap(f);
        }
        for b in &mut record.branches {
            cap(&mut b.contact);
            if let Some(d) = &mut b.device {
                cap(d);
            }
        }
        self.out
            .push_back(Output::Event(Box::new(Event::CallEnded(Box::new(record)))));
    }

    /// Calls being tracked (ringing or answered), for metrics and leak tests.
    pub fn active_calls(&self) -> usize {
        self.calls.by_id.len()
    }
}
