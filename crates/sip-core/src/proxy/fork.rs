//! The response context of a forked request (RFC 3261 §16.7): parallel branches, first 2xx
//! wins, CANCEL with `Reason` to the others (RFC 3326, R12), best-response choice (R13),
//! ring timeout, delayed branches, 199 for ended early dialogs (RFC 6228), and the ACK+BYE
//! of a late 2xx from a losing branch, so the caller only ever sees one answer.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::request::decrement_max_forwards;
use super::trust::{TRUST_CHALLENGE, TRUST_PROOF, TrustRefusal};
use super::{BranchOutcome, ClientKind, Event, Output, Proxy, Target, TimerRef};
use crate::message::{CSeq, HeaderName, Headers, Method, NameAddr, Request, Response, Uri};

/// Reason sent on the CANCEL of the losing branches (R12).
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";
/// Reason on the CANCEL or BYE of a phone branch whose trust proof failed (R14).
const TRUST_FAILED: &str = "SIP;cause=403;text=\"Trust proof failed\"";
/// Reason on the BYE of a PSTN leg answered without any proof: the carrier's voicemail (or
/// any answering service) picked up instead of the phone, which counts as no answer.
const VOICEMAIL: &str = "SIP;cause=480;text=\"Answered without trust proof (voicemail)\"";

pub(super) struct Branch {
    request: Request,
    target: Target,
    /// Delayed branch not sent yet: when it is due.
    send_at: Option<Instant>,
    client: Option<u64>,
    provisional: bool,
    final_status: Option<u16>,
    early_tags: Vec<String>,
    /// CANCEL waiting for a provisional response (§9.1), with its Reason.
    cancel_pending: Option<Option<String>>,
    cancelled: bool,
    late_tags: Vec<String>,
    /// The phone behind this branch, if it is one: its answer needs a proof (R14).
    device: Option<String>,
    /// The phone's proof was checked and good.
    trusted: bool,
    /// The phone's proof failed: the branch is being dropped and its final response does
    /// not compete for the caller's answer.
    trust_failed: bool,
    /// Through the gateway to the phone's number (R15).
    pstn: bool,
    /// A PSTN leg answered without any proof: voicemail, counted as no answer (R14).
    voicemail: bool,
}

/// Outcome of the trust check on a response from a branch.
enum Trust {
    /// Not a phone branch, or nothing to check: handle as usual.
    Pass,
    /// A phone's provisional response before its proof: pass on without early media.
    Unproven,
    /// The proof failed: drop the branch.
    Failed,
}

pub(super) struct Fork {
    server: u64,
    pub(super) request: Request,
    branches: Vec<Branch>,
    finished: bool,
    winner_tag: Option<String>,
    best: Option<Response>,
    supports_199: bool,
    ring_deadline: Option<Instant>,
    gc_at: Option<Instant>,
    /// The caller sent CANCEL (for the call record's release side).
    pub(super) caller_cancelled: bool,
}

/// What a fork does: its branches, whether it rings with a timeout (out-of-dialog INVITE)
/// and whether we stay on the dialog's path (Record-Route).
pub(super) struct ForkPlan {
    pub(super) targets: Vec<BranchTarget>,
    pub(super) ring_timeout: Option<Duration>,
    pub(super) record_route: bool,
}

/// One destination of a fork.
pub(super) struct BranchTarget {
    /// New Request-URI (`None`: keep it, for in-dialog requests).
    pub(super) uri: Option<Uri>,
    pub(super) target: Target,
    pub(super) delay: Duration,
    /// The phone behind this target (its INVITE carries a trust challenge).
    pub(super) device: Option<String>,
    /// Through the gateway (its INVITE also carries `Trunk-Auth`).
    pub(super) pstn: bool,
}

impl Fork {
    fn next_deadline(&self) -> Option<Instant> {
        let delayed = self.branches.iter().filter_map(|b| b.send_at).min();
        let ring = if self.finished {
            None
        } else {
            self.ring_deadline
        };
        [delayed, ring, self.gc_at].into_iter().flatten().min()
    }

    /// (contact, device, PSTN?) of each branch, for the call record.
    pub(super) fn branch_views(&self) -> impl Iterator<Item = (String, Option<String>, bool)> + '_ {
        self.branches
            .iter()
            .map(|b| (b.request.uri.to_string(), b.device.clone(), b.pstn))
    }

    fn all_final(&self) -> bool {
        self.branches.iter().all(|b| b.final_status.is_some())
    }

    /// The ACK for a non-2xx final response on branch `i` (§17.1.1.3).
    pub(super) fn non2xx_ack(&self, i: usize, resp: &Response) -> Option<Request> {
        let b = self.branches.get(i)?;
        let mut h = Headers(Vec::with_capacity(8));
        h.push(HeaderName::Via, b.request.headers.get(&HeaderName::Via)?);
        h.push(HeaderName::MaxForwards, "70");
        for name in [HeaderName::From, HeaderName::CallId] {
            h.push(name.clone(), b.request.headers.get(&name)?);
        }
        h.push(HeaderName::To, resp.headers.get(&HeaderName::To)?);
        h.push(HeaderName::CSeq, format!("{} ACK", b.request.cseq().seq));
        for r in b.request.headers.get_all(&HeaderName::Route) {
            h.push(HeaderName::Route, r);
        }
        Some(Request {
            method: Method::Ack,
            uri: b.request.uri.clone(),
            headers: h,
            body: Bytes::new(),
        })
    }
}

/// §16.7 step 6: 6xx beats everything, else the lowest class; 503 is sent on as 500.
fn better(new: &Response, cur: &Response) -> bool {
    let rank = |r: &Response| if r.status >= 600 { 0 } else { r.status / 100 };
    rank(new) < rank(cur)
}

impl Proxy {
    /// Starts a fork for request `req` of server transaction `server`.
    pub(super) fn start_fork(
        &mut self,
        server: u64,
        inbound: Target,
        req: Request,
        plan: ForkPlan,
        now: Instant,
    ) {
        let ForkPlan {
            targets,
            ring_timeout,
            record_route,
        } = plan;
        if req.method == Method::Bye {
            self.call_bye(&req, now);
        }
        let id = self.alloc_id();
        let mut branches = Vec::with_capacity(targets.len());
        for t in targets {
            let mut r = req.clone();
            if let Some(uri) = t.uri {
                r.uri = uri;
            }
            decrement_max_forwards(&mut r);
            if record_route {
                let call_id = r.call_id().to_owned();
                let sips = req.uri.scheme.eq_ignore_ascii_case("sips");
                for rr in self.record_route(inbound.transport, t.target.transport, &call_id, sips) {
                    r.headers.push_front(HeaderName::RecordRoute, rr);
                }
            }
            let branch = self.ids.branch();
            r.headers
                .push_front(HeaderName::Via, self.via(t.target.transport, &branch));
            if let Some(device) = &t.device
                && r.method == Method::Invite
            {
                // R14: the phone's INVITE carries a fresh challenge bound to this call and
                // branch; a phone that cannot be challenged is not rung.
                let call_id = r.call_id().to_owned();
                let challenge = match self.trust.as_mut() {
                    Some(gate) => gate.challenge(now, device, &call_id, &branch),
                    None => Err(TrustRefusal {
                        kind: "no-trust-gate".into(),
                        detail: "no trust authority configured".into(),
                    }),
                };
                match challenge {
                    Ok(value) => {
                        if t.pstn
                            && let Some(trunk) = &self.cfg.trunk
                        {
                            let number = r.uri.user.clone().unwrap_or_default();
                            let mac = super::trunk_auth(
                                &trunk.secret,
                                &call_id,
                                &branch,
                                &number,
                                &value,
                            );
                            r.headers.push(trust_header(super::TRUNK_AUTH), mac);
                        }
                        r.headers.push(trust_header(TRUST_CHALLENGE), value);
                    }
                    Err(refusal) => {
                        let user = req.uri.user_unescaped().unwrap_or_default();
                        self.security_event(refusal, user, device, &call_id);
                        continue;
                    }
                }
            }
            branches.push(Branch {
                request: r,
                target: t.target,
                send_at: (!t.delay.is_zero()).then(|| now + t.delay),
                client: None,
                provisional: false,
                final_status: None,
                early_tags: Vec::new(),
                cancel_pending: None,
                cancelled: false,
                late_tags: Vec::new(),
                device: t.device,
                trusted: false,
                trust_failed: false,
                pstn: t.pstn,
                voicemail: false,
            });
        }
        if branches.is_empty() {
            self.reply(server, &req, 480, now);
            if record_route {
                self.call_unreachable(&req, now);
            }
            return;
        }
        let supports_199 = req.headers.has_token(&HeaderName::Supported, "199");
        let fork = Fork {
            server,
            request: req,
            branches,
            finished: false,
            winner_tag: None,
            best: None,
            supports_199,
            ring_deadline: ring_timeout.map(|d| now + d),
            gc_at: None,
            caller_cancelled: false,
        };
        self.forks.insert(id, fork);
        if let Some(s) = self.servers.get_mut(&server) {
            s.fork = Some(id);
        }
        if record_route
            && let Some(f) = self.forks.get(&id)
            && f.request.method == Method::Invite
        {
            self.call_started(id, now);
        }
        // Every undelayed branch leaves in this one loop (R11).
        let n = self.forks.get(&id).map_or(0, |f| f.branches.len());
        for i in 0..n {
            if self
                .forks
                .get(&id)
                .is_some_and(|f| f.branches[i].send_at.is_none())
            {
                self.send_branch(id, i, now);
            }
        }
        self.arm_fork(id);
    }

    fn arm_fork(&mut self, id: u64) {
        let next = self.forks.get(&id).and_then(Fork::next_deadline);
        self.arm(next, TimerRef::Fork(id));
    }

    fn send_branch(&mut self, id: u64, i: usize, now: Instant) {
        let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) else {
            return;
        };
        b.send_at = None;
        let (req, target) = (b.request.clone(), b.target);
        let client = self.send_request(
            &req,
            target,
            ClientKind::Branch {
                fork: id,
                branch: i,
            },
            now,
        );
        if let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) {
            b.client = Some(client);
        }
        // `send_request` queued the INVITE last: tag it with its fork, so the driver can
        // measure how far apart the branches really leave (R11).
        if req.method == Method::Invite
            && let Some(Output::Transmit(t)) = self.out.back_mut()
        {
            t.fork = Some(id);
        }
        self.call_branch_sent(id, i, now);
    }

    pub(super) fn fork_timeout(&mut self, id: u64, now: Instant) {
        let Some(f) = self.forks.get(&id) else { return };
        if f.gc_at.is_some_and(|g| g <= now) {
            if let Some(f) = self.forks.remove(&id)
                && let Some(gate) = self.trust.as_mut()
            {
                let call_id = f.request.call_id();
                for b in f.branches.iter().filter(|b| !b.trusted) {
                    if let (Some(d), Some(branch)) = (&b.device, b.request.top_via()) {
                        gate.forget(d, call_id, branch.branch().unwrap_or_default());
                    }
                }
            }
            return;
        }
        if !f.finished {
            let due: Vec<usize> = (0..f.branches.len())
                .filter(|&i| f.branches[i].send_at.is_some_and(|t| t <= now))
                .collect();
            for i in due {
                self.send_branch(id, i, now);
            }
        }
        let ring_due = self
            .forks
            .get(&id)
            .is_some_and(|f| !f.finished && f.ring_deadline.is_some_and(|d| d <= now));
        if ring_due {
            // Nobody answered in time (R13): 480 to the caller, CANCEL the rest.
            self.finish(id, 480, now);
            self.cancel_all(id, None, now);
        }
        self.arm_fork(id);
    }

    /// Sends the final response `status` (made here) upstream and closes the context.
    fn finish(&mut self, id: u64, status: u16, now: Instant) {
        let Some(f) = self.forks.get_mut(&id) else {
            return;
        };
        f.finished = true;
        let (server, req) = (f.server, f.request.clone());
        self.reply(server, &req, status, now);
        self.call_failed(id, status, "ring timeout", now);
    }

    /// Caller's CANCEL (§16.10): cancel every pending branch.
    pub(super) fn cancel_fork(&mut self, id: u64, reason: Option<&str>, now: Instant) {
        if let Some(f) = self.forks.get_mut(&id) {
            f.caller_cancelled = true;
        }
        self.cancel_all(id, reason.map(str::to_owned), now);
        self.check_complete(id, now);
    }

    fn cancel_all(&mut self, id: u64, reason: Option<String>, now: Instant) {
        let n = self.forks.get(&id).map_or(0, |f| f.branches.len());
        for i in 0..n {
            self.cancel_branch(id, i, reason.clone(), now);
        }
    }

    fn cancel_branch(&mut self, id: u64, i: usize, reason: Option<String>, now: Instant) {
        let abandon_at = now + self.cfg.timers.timeout();
        let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) else {
            return;
        };
        if b.final_status.is_some() || b.cancelled {
            return;
        }
        if b.send_at.is_some() {
            // A delayed branch that never went out.
            b.send_at = None;
            b.final_status = Some(487);
            return;
        }
        b.cancelled = true;
        let client = b.client;
        if b.provisional {
            self.send_cancel(id, i, reason, now);
        } else {
            // §9.1: no CANCEL before a provisional response; send it when one comes.
            b.cancel_pending = Some(reason);
        }
        if let Some(e) = client.and_then(|c| self.clients.get_mut(&c)) {
            e.tx.expire_at(abandon_at);
            let next = e.tx.next_deadline();
            self.arm(next, TimerRef::Client(client.unwrap_or_default()));
        }
    }

    fn send_cancel(&mut self, id: u64, i: usize, reason: Option<String>, now: Instant) {
        let Some(b) = self.forks.get(&id).and_then(|f| f.branches.get(i)) else {
            return;
        };
        let r = &b.request;
        let mut h = Headers(Vec::with_capacity(9));
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
        ] {
            if let Some(v) = r.headers.get(&name) {
                h.push(name, v);
            }
        }
        h.push(HeaderName::CSeq, format!("{} CANCEL", r.cseq().seq));
        h.push(HeaderName::MaxForwards, "70");
        for route in r.headers.get_all(&HeaderName::Route) {
            h.push(HeaderName::Route, route);
        }
        if let Some(reason) = reason {
            h.push(HeaderName::Reason, reason);
        }
        let cancel = Request {
            method: Method::Cancel,
            uri: r.uri.clone(),
            headers: h,
            body: Bytes::new(),
        };
        let target = b.target;
        self.send_request(&cancel, target, ClientKind::Own, now);
    }

    /// A branch's client transaction timed out (Timer B, or abandoned after CANCEL).
    pub(super) fn branch_timed_out(&mut self, id: u64, i: usize, now: Instant) {
        let Some(f) = self.forks.get_mut(&id) else {
            return;
        };
        let Some(b) = f.branches.get_mut(i) else {
            return;
        };
        if b.final_status.is_none() {
            b.final_status = Some(408);
            self.call_branch_final(id, i, 408, None);
            let Some(f) = self.forks.get_mut(&id) else {
                return;
            };
            if !f.finished && f.best.is_none() {
                let mut r = Response::to_request(&f.request, 408, "Request Timeout", None);
                r.headers.push(HeaderName::Server, "trustring");
                f.best = Some(r);
            }
        }
        self.check_complete(id, now);
    }

    /// A response (our Via removed) on branch `i` of fork `id`.
    pub(super) fn branch_response(&mut self, id: u64, i: usize, mut resp: Response, now: Instant) {
        match self.check_trust(id, i, &mut resp, now) {
            Trust::Pass => {}
            Trust::Unproven => {
                resp.body = Bytes::new();
                resp.headers.remove_all(&HeaderName::ContentType);
            }
            Trust::Failed => {
                if resp.status < 200 {
                    if let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) {
                        b.provisional = true;
                    }
                    self.cancel_branch(id, i, Some(TRUST_FAILED.to_owned()), now);
                } else if resp.status < 300 {
                    let mut voicemail = false;
                    if let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) {
                        b.final_status = Some(resp.status);
                        voicemail = b.voicemail;
                    }
                    let (outcome, reason) = if voicemail {
                        (BranchOutcome::NoAnswer, VOICEMAIL)
                    } else {
                        (BranchOutcome::FailedTrust, TRUST_FAILED)
                    };
                    self.call_branch_final(id, i, resp.status, Some(outcome));
                    self.end_late_answer(id, i, &resp, reason, now);
                    self.check_complete(id, now);
                }
                return;
            }
        }
        let Some(f) = self.forks.get_mut(&id) else {
            return;
        };
        let Some(b) = f.branches.get_mut(i) else {
            return;
        };
        let tag = resp.to().and_then(|t| t.tag().map(str::to_owned));
        match resp.status {
            100 => {}
            101..=199 => {
                b.provisional = true;
                if let Some(reason) = b.cancel_pending.take() {
                    self.send_cancel(id, i, reason, now);
                }
                let Some(f) = self.forks.get_mut(&id) else {
                    return;
                };
                if f.finished {
                    return;
                }
                if let Some(tag) = tag {
                    let b = &mut f.branches[i];
                    if !b.early_tags.contains(&tag) {
                        b.early_tags.push(tag);
                    }
                }
                let server = f.server;
                self.respond(server, &resp, now);
            }
            200..=299 => {
                if f.winner_tag.is_none() && !f.finished {
                    b.final_status = Some(resp.status);
                    f.winner_tag = Some(tag.unwrap_or_default());
                    f.finished = true;
                    let server = f.server;
                    // RFC 6228: the other branches' early dialogs end now; say so before
                    // the final response (no 199 may follow it).
                    if f.supports_199 {
                        let ended: Vec<String> = f
                            .branches
                            .iter_mut()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .flat_map(|(_, b)| std::mem::take(&mut b.early_tags))
                            .collect();
                        let req = f.request.clone();
                        self.send_199(server, &req, ended, now);
                    }
                    self.respond(server, &resp, now);
                    self.call_answered(id, i, resp.status, now);
                    let n = self.forks.get(&id).map_or(0, |f| f.branches.len());
                    for j in (0..n).filter(|&j| j != i) {
                        self.cancel_branch(id, j, Some(COMPLETED_ELSEWHERE.to_owned()), now);
                    }
                } else if f.winner_tag.is_some()
                    && f.winner_tag == tag
                    && b.final_status.is_some_and(|s| s < 300)
                {
                    // The winner retransmits its 2xx until the caller's ACK: pass it on.
                    let server = f.server;
                    self.respond(server, &resp, now);
                } else {
                    b.final_status.get_or_insert(resp.status);
                    self.end_late_answer(id, i, &resp, COMPLETED_ELSEWHERE, now);
                }
            }
            _ => {
                b.final_status = Some(resp.status);
                let early = std::mem::take(&mut b.early_tags);
                let finished = f.finished;
                let outcome = if b.voicemail {
                    Some(BranchOutcome::NoAnswer)
                } else {
                    b.trust_failed.then_some(BranchOutcome::FailedTrust)
                };
                self.call_branch_final(id, i, resp.status, outcome);
                if finished {
                    return;
                }
                let Some(f) = self.forks.get_mut(&id) else {
                    return;
                };
                let mut resp = resp;
                if resp.status == 503 {
                    resp.status = 500;
                    resp.reason = "Server Internal Error".into();
                }
                let six = resp.status >= 600;
                let trust_failed = f.branches[i].trust_failed;
                if !trust_failed && f.best.as_ref().is_none_or(|cur| better(&resp, cur)) {
                    f.best = Some(resp);
                }
                let others_pending = f.branches.iter().any(|b| b.final_status.is_none());
                if f.supports_199 && others_pending {
                    let (server, req) = (f.server, f.request.clone());
                    self.send_199(server, &req, early, now);
                }
                if six {
                    // §16.7 step 5: a 6xx ends the search.
                    self.cancel_all(id, None, now);
                }
                self.check_complete(id, now);
            }
        }
    }

    /// 199 Early Dialog Terminated upstream, one per ended early dialog (RFC 6228).
    fn send_199(&mut self, server: u64, req: &Request, tags: Vec<String>, now: Instant) {
        for t in tags {
            let mut r = Response::to_request(req, 199, "Early Dialog Terminated", Some(&t));
            r.headers.push(HeaderName::Server, "trustring");
            self.respond(server, &r, now);
        }
    }

    /// When every branch has a final response, sends the best one upstream.
    fn check_complete(&mut self, id: u64, now: Instant) {
        let Some(f) = self.forks.get_mut(&id) else {
            return;
        };
        if f.finished || !f.all_final() {
            return;
        }
        f.finished = true;
        let server = f.server;
        match f.best.take() {
            Some(best) => {
                let cause = format!("{} {}", best.status, best.reason);
                self.respond(server, &best, now);
                self.call_failed(id, best.status, &cause, now);
            }
            None => {
                let req = f.request.clone();
                self.reply(server, &req, 480, now);
                self.call_failed(id, 480, "480 Temporarily Unavailable", now);
            }
        }
    }

    /// R14 on a response from branch `i`: removes any `Trust-Proof` (it never goes
    /// upstream) and checks it when it decides whether the phone may be connected.
    fn check_trust(&mut self, id: u64, i: usize, resp: &mut Response, now: Instant) -> Trust {
        let Some(f) = self.forks.get_mut(&id) else {
            return Trust::Pass;
        };
        let open = f.winner_tag.is_none() && !f.finished;
        let Some(b) = f.branches.get_mut(i) else {
            return Trust::Pass;
        };
        let Some(device) = b.device.clone() else {
            return Trust::Pass;
        };
        let name = trust_header(TRUST_PROOF);
        let proof = resp.headers.get(&name).map(str::to_owned);
        resp.headers.remove_all(&name);
        if b.trust_failed {
            // Already dropped: nothing more from this phone reaches the caller; a final
            // non-2xx just closes the branch.
            return if resp.status >= 300 || resp.status == 100 {
                Trust::Pass
            } else {
                Trust::Failed
            };
        }
        if b.trusted || !open || resp.status == 100 {
            return if b.trusted || resp.status >= 200 {
                Trust::Pass
            } else {
                Trust::Unproven
            };
        }
        let call_id = b.request.call_id().to_owned();
        let branch = b
            .request
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        if b.pstn && proof.is_none() && (200..300).contains(&resp.status) {
            // The carrier's voicemail (or any answering service) took the PSTN leg: it has
            // no zone, so it sends no proof. Not an attack: no security event, but it must
            // not take the call from the other devices (R14).
            b.trust_failed = true;
            b.voicemail = true;
            tracing::info!(
                device,
                "PSTN leg answered without proof (voicemail): no answer"
            );
            if let Some(gate) = self.trust.as_mut() {
                gate.forget(&device, &call_id, &branch);
            }
            return Trust::Failed;
        }
        let must_check = proof.is_some() || (200..300).contains(&resp.status);
        if !must_check {
            if resp.status >= 300
                && let Some(gate) = self.trust.as_mut()
            {
                gate.forget(&device, &call_id, &branch);
            }
            return if resp.status < 200 {
                Trust::Unproven
            } else {
                Trust::Pass
            };
        }
        let verdict = match self.trust.as_mut() {
            Some(gate) => gate.verify(now, &device, &call_id, &branch, proof.as_deref()),
            None => Err(TrustRefusal {
                kind: "no-trust-gate".into(),
                detail: "no trust authority configured".into(),
            }),
        };
        let Some(f) = self.forks.get_mut(&id) else {
            return Trust::Pass;
        };
        let user = f.request.uri.user_unescaped().unwrap_or_default();
        let b = &mut f.branches[i];
        match verdict {
            Ok(()) => {
                b.trusted = true;
                Trust::Pass
            }
            Err(refusal) => {
                b.trust_failed = true;
                tracing::info!(
                    device,
                    kind = refusal.kind,
                    "phone branch dropped: trust proof failed"
                );
                self.security_event(refusal, user, &device, &call_id);
                Trust::Failed
            }
        }
    }

    fn security_event(&mut self, refusal: TrustRefusal, user: String, device: &str, call_id: &str) {
        self.stats.trust_failure(&refusal.kind);
        self.out.push_back(Output::Event(Box::new(Event::Security {
            kind: refusal.kind,
            user,
            device: device.to_owned(),
            call_id: call_id.to_owned(),
            detail: refusal.detail,
        })));
    }

    /// A 2xx from a branch that lost: ACK it and hang it up with BYE (R12), so the caller
    /// sees exactly one answer.
    fn end_late_answer(&mut self, id: u64, i: usize, resp: &Response, reason: &str, now: Instant) {
        let Some(b) = self.forks.get(&id).and_then(|f| f.branches.get(i)) else {
            return;
        };
        let Some(contact) = resp
            .headers
            .get(&HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
        else {
            return;
        };
        let routes: Vec<String> = resp
            .headers
            .get_all(&HeaderName::RecordRoute)
            .filter(|r| NameAddr::parse(r).is_ok_and(|n| !self.is_our_uri(&n.uri)))
            .map(str::to_owned)
            .collect();
        let (branch_req, target) = (b.request.clone(), b.target);
        let tag = resp
            .to()
            .and_then(|t| t.tag().map(str::to_owned))
            .unwrap_or_default();
        let first_time = !b.late_tags.contains(&tag);
        let seq = branch_req.cseq().seq;
        let build = |proxy: &mut Self, method: Method, cseq: u32| {
            let mut h = Headers(Vec::with_capacity(9));
            let branch = proxy.ids.branch();
            h.push(HeaderName::Via, proxy.via(target.transport, &branch));
            h.push(HeaderName::MaxForwards, "70");
            if let Some(from) = branch_req.headers.get(&HeaderName::From) {
                h.push(HeaderName::From, from);
            }
            if let Some(to) = resp.headers.get(&HeaderName::To) {
                h.push(HeaderName::To, to);
            }
            h.push(HeaderName::CallId, branch_req.call_id());
            h.push(
                HeaderName::CSeq,
                format!(
                    "{cseq} {}",
                    CSeq {
                        seq: cseq,
                        method: method.clone()
                    }
                    .method
                ),
            );
            for r in routes.iter().rev() {
                h.push(HeaderName::Route, r.as_str());
            }
            Request {
                method,
                uri: contact.uri.clone(),
                headers: h,
                body: Bytes::new(),
            }
        };
        let ack = build(self, Method::Ack, seq);
        self.transmit(target, Bytes::from(ack.to_bytes()));
        if first_time {
            if let Some(b) = self.forks.get_mut(&id).and_then(|f| f.branches.get_mut(i)) {
                b.late_tags.push(tag);
            }
            let mut bye = build(self, Method::Bye, seq.saturating_add(1));
            bye.headers.push(HeaderName::Reason, reason);
            self.send_request(&bye, target, ClientKind::Own, now);
        }
    }

    /// The server transaction ended: keep the context a while for late responses, then drop.
    pub(super) fn fork_server_gone(&mut self, id: u64, now: Instant) {
        let linger = self.cfg.timers.timeout();
        if let Some(f) = self.forks.get_mut(&id) {
            f.gc_at = Some(now + linger);
        }
        self.arm_fork(id);
    }
}

fn trust_header(name: &str) -> HeaderName {
    HeaderName::Other(name.to_owned())
}
