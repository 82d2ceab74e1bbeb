//! The response context of a forked request (RFC 3261 §16.7): parallel branches, first 2xx
//! wins, CANCEL with `Reason` to the others (RFC 3326, R12), best-response choice (R13),
//! ring timeout, delayed branches, 199 for ended early dialogs (RFC 6228), and the ACK+BYE
//! of a late 2xx from a losing branch, so the caller only ever sees one answer.
//!
//! A [`Fork`] owns this behaviour. It is fed its branches' responses and timeouts, the
//! caller's CANCEL and the clock, and answers with [`ForkAction`]s: send this branch, pass
//! this response upstream, CANCEL that branch, note this in the call record. The [`Proxy`]
//! carries them out (it owns the transactions, the ids and the call records) and otherwise
//! only routes, so a fork is unit-tested on its own (the tests at the end of this file).
//! Each branch is in one [`BranchState`] and has one [`TrustVerdict`].

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::trust::{TRUST_CHALLENGE, TRUST_PROOF, TrustGate, TrustRefusal};
use super::{BranchOutcome, Target};
use crate::message::{HeaderName, Headers, Method, Request, Response, Uri};

/// Reason sent on the CANCEL of the losing branches (R12).
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";
/// Reason on the CANCEL or BYE of a phone branch whose trust proof failed (R14).
const TRUST_FAILED: &str = "SIP;cause=403;text=\"Trust proof failed\"";
/// Reason on the BYE of a PSTN leg answered without any proof: the carrier's voicemail (or
/// any answering service) picked up instead of the phone, which counts as no answer.
const VOICEMAIL: &str = "SIP;cause=480;text=\"Answered without trust proof (voicemail)\"";

/// Where a branch's client side stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BranchState {
    /// A delayed branch, not sent yet.
    Waiting { send_at: Instant },
    /// Sent; no provisional response yet.
    Calling,
    /// A provisional response came, so a CANCEL may be sent (§9.1).
    Proceeding,
    /// Cancelled before any provisional response: the CANCEL, with this Reason, waits for
    /// one (§9.1).
    CancelWaiting { reason: Option<String> },
    /// CANCEL sent: waiting for the final response.
    Cancelled,
    /// A final response came (or 408 on timeout, 487 for a delayed branch never sent).
    Completed { status: u16 },
}

/// What the trust check (R14) made of a branch. Only phone branches leave `Unchecked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrustVerdict {
    /// Not checked (yet), or not a phone.
    Unchecked,
    /// The phone's proof was checked and good.
    Proven,
    /// The proof failed: the branch is being dropped and its final response does not
    /// compete for the caller's answer.
    Refused,
    /// A PSTN leg answered without any proof: voicemail, counted as no answer.
    Voicemail,
}

impl TrustVerdict {
    fn failed(self) -> bool {
        matches!(self, Self::Refused | Self::Voicemail)
    }
}

/// One branch of a fork.
pub(super) struct Branch {
    request: Request,
    target: Target,
    client: Option<u64>,
    state: BranchState,
    early_tags: Vec<String>,
    late_tags: Vec<String>,
    /// The phone behind this branch, if it is one: its answer needs a proof (R14).
    device: Option<String>,
    /// Through the gateway to the phone's number (R15).
    pstn: bool,
    trust: TrustVerdict,
}

impl Branch {
    /// A branch that sends `request` to `target`, at `send_at` if delayed.
    pub(super) fn new(
        request: Request,
        target: Target,
        send_at: Option<Instant>,
        device: Option<String>,
        pstn: bool,
    ) -> Self {
        Self {
            request,
            target,
            client: None,
            state: send_at.map_or(BranchState::Calling, |send_at| BranchState::Waiting {
                send_at,
            }),
            early_tags: Vec::new(),
            late_tags: Vec::new(),
            device,
            pstn,
            trust: TrustVerdict::Unchecked,
        }
    }

    fn is_final(&self) -> bool {
        matches!(self.state, BranchState::Completed { .. })
    }

    fn final_status(&self) -> Option<u16> {
        match self.state {
            BranchState::Completed { status } => Some(status),
            _ => None,
        }
    }

    /// A provisional response came: a CANCEL that waited for one goes now (§9.1).
    fn provisional(&mut self, i: usize, out: &mut Vec<ForkAction>) {
        match std::mem::replace(&mut self.state, BranchState::Proceeding) {
            BranchState::Calling | BranchState::Proceeding => {}
            BranchState::CancelWaiting { reason } => {
                self.state = BranchState::Cancelled;
                out.push(ForkAction::SendCancel { branch: i, reason });
            }
            other => self.state = other,
        }
    }

    /// The branch's top Via branch parameter (what its challenge is bound to).
    fn via_branch(&self) -> String {
        self.request
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// What a fork asks its proxy to do, in order.
#[derive(Debug)]
pub(super) enum ForkAction {
    /// Send branch `i`'s request now, in a new client transaction.
    SendBranch(usize),
    /// Pass this response upstream through the caller's server transaction.
    Respond(Response),
    /// Answer the caller with this status (the proxy makes the response and its tag).
    Reply(u16),
    /// CANCEL this branch (§9.1), with a `Reason`.
    SendCancel {
        branch: usize,
        reason: Option<String>,
    },
    /// Give up on this client transaction if no final response comes within Timer C's
    /// stand-in (64*T1) after a CANCEL.
    Abandon { client: u64 },
    /// ACK a 2xx that lost (or whose proof failed) and, the first time, BYE it (R12).
    EndLateAnswer {
        branch: usize,
        response: Response,
        reason: &'static str,
        bye: bool,
    },
    /// For the call record: the branch ended with `status` (`outcome` overrides the one
    /// the status gives).
    BranchFinal {
        branch: usize,
        status: u16,
        outcome: Option<BranchOutcome>,
    },
    /// For the call record: the branch won.
    Answered { branch: usize, status: u16 },
    /// For the call record: the call ended unanswered with `status` to the caller.
    Failed { status: u16, cause: String },
    /// A trust check failed on a phone's branch (R14).
    Security {
        refusal: TrustRefusal,
        user: String,
        device: String,
        call_id: String,
    },
}

/// How a response from a branch fares in the trust check.
enum Trust {
    /// Not a phone branch, or nothing to check: handle as usual.
    Pass,
    /// A phone's provisional response before its proof: pass on without early media.
    Unproven,
    /// The proof failed: drop the branch.
    Failed,
}

/// The response context of one forked request.
pub(super) struct Fork {
    /// The caller's server transaction.
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

/// §16.7 step 6: 6xx beats everything, else the lowest class; 503 is sent on as 500.
fn better(new: &Response, cur: &Response) -> bool {
    let rank = |r: &Response| if r.status >= 600 { 0 } else { r.status / 100 };
    rank(new) < rank(cur)
}

/// A response of ours (not relayed from a branch) to `req`.
fn own_response(req: &Request, status: u16, reason: &str, tag: Option<&str>) -> Response {
    let mut r = Response::to_request(req, status, reason, tag);
    r.headers.push(HeaderName::Server, "trustring");
    r
}

impl Fork {
    /// A fork of `request` (received in server transaction `server`) over `branches`.
    pub(super) fn new(
        server: u64,
        request: Request,
        branches: Vec<Branch>,
        ring_deadline: Option<Instant>,
    ) -> Self {
        let supports_199 = request.headers.has_token(&HeaderName::Supported, "199");
        Self {
            server,
            request,
            branches,
            finished: false,
            winner_tag: None,
            best: None,
            supports_199,
            ring_deadline,
            gc_at: None,
            caller_cancelled: false,
        }
    }

    /// The caller's server transaction.
    pub(super) fn server(&self) -> u64 {
        self.server
    }

    /// Every branch that is not delayed leaves now, in one go (R11).
    pub(super) fn start(&self, out: &mut Vec<ForkAction>) {
        for (i, b) in self.branches.iter().enumerate() {
            if b.state == BranchState::Calling {
                out.push(ForkAction::SendBranch(i));
            }
        }
    }

    /// When the fork wants [`Fork::on_timeout`] next.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let delayed = self
            .branches
            .iter()
            .filter_map(|b| match b.state {
                BranchState::Waiting { send_at } => Some(send_at),
                _ => None,
            })
            .min();
        let ring = if self.finished {
            None
        } else {
            self.ring_deadline
        };
        [delayed, ring, self.gc_at].into_iter().flatten().min()
    }

    /// Whether the fork has outlived its server transaction and should be dropped.
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.gc_at.is_some_and(|g| g <= now)
    }

    /// The server transaction ended: keep the context `linger` for late responses.
    pub(super) fn server_gone(&mut self, now: Instant, linger: Duration) {
        self.gc_at = Some(now + linger);
    }

    /// Branch `i`'s request and where it goes.
    pub(super) fn branch_request(&self, i: usize) -> Option<(&Request, Target)> {
        self.branches.get(i).map(|b| (&b.request, b.target))
    }

    /// Branch `i` left in client transaction `client`.
    pub(super) fn branch_sent(&mut self, i: usize, client: u64) {
        if let Some(b) = self.branches.get_mut(i) {
            b.client = Some(client);
        }
    }

    /// (contact, device, PSTN?) of each branch, for the call record.
    pub(super) fn branch_views(&self) -> impl Iterator<Item = (String, Option<String>, bool)> + '_ {
        self.branches
            .iter()
            .map(|b| (b.request.uri.to_string(), b.device.clone(), b.pstn))
    }

    /// The phone branches whose challenge was never consumed by a good proof: the trust
    /// authority may forget their challenges when the fork is dropped.
    pub(super) fn unproven_challenges(&self) -> impl Iterator<Item = (&str, String)> + '_ {
        self.branches
            .iter()
            .filter(|b| b.trust != TrustVerdict::Proven && b.request.top_via().is_some())
            .filter_map(|b| Some((b.device.as_deref()?, b.via_branch())))
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

    /// The CANCEL of branch `i` (§9.1), with its `Reason`.
    pub(super) fn cancel_request(&self, i: usize, reason: Option<&str>) -> Option<Request> {
        let r = &self.branches.get(i)?.request;
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
        Some(Request {
            method: Method::Cancel,
            uri: r.uri.clone(),
            headers: h,
            body: Bytes::new(),
        })
    }

    /// Delayed branches that are due leave; at the ring deadline nobody answered in time
    /// (R13): 480 to the caller, CANCEL the rest.
    pub(super) fn on_timeout(&mut self, now: Instant, out: &mut Vec<ForkAction>) {
        if self.finished {
            return;
        }
        for (i, b) in self.branches.iter_mut().enumerate() {
            if let BranchState::Waiting { send_at } = b.state
                && send_at <= now
            {
                b.state = BranchState::Calling;
                out.push(ForkAction::SendBranch(i));
            }
        }
        if self.ring_deadline.is_some_and(|d| d <= now) {
            self.finished = true;
            out.push(ForkAction::Reply(480));
            out.push(ForkAction::Failed {
                status: 480,
                cause: "ring timeout".into(),
            });
            self.cancel_all(None, out);
        }
    }

    /// The caller's CANCEL (§16.10): cancel every pending branch.
    pub(super) fn on_cancel(&mut self, reason: Option<&str>, out: &mut Vec<ForkAction>) {
        self.caller_cancelled = true;
        self.cancel_all(reason.map(str::to_owned), out);
        self.check_complete(out);
    }

    /// Branch `i`'s client transaction timed out (Timer B, or abandoned after CANCEL).
    pub(super) fn on_branch_timeout(&mut self, i: usize, out: &mut Vec<ForkAction>) {
        self.on_branch_failed(i, 408, "Request Timeout", out);
    }

    /// Branch `i` ended without a response of its own: `status` is what it counts as (408
    /// for a timeout; 503 when the transport could not reach its target, RFC 3261 §16.9).
    pub(super) fn on_branch_failed(
        &mut self,
        i: usize,
        status: u16,
        reason: &str,
        out: &mut Vec<ForkAction>,
    ) {
        let Some(b) = self.branches.get_mut(i) else {
            return;
        };
        if !b.is_final() {
            b.state = BranchState::Completed { status };
            out.push(ForkAction::BranchFinal {
                branch: i,
                status,
                outcome: None,
            });
            if !self.finished && self.best.is_none() {
                self.best = Some(own_response(&self.request, status, reason, None));
            }
        }
        self.check_complete(out);
    }

    fn cancel_all(&mut self, reason: Option<String>, out: &mut Vec<ForkAction>) {
        for i in 0..self.branches.len() {
            self.cancel_branch(i, reason.clone(), out);
        }
    }

    fn cancel_branch(&mut self, i: usize, reason: Option<String>, out: &mut Vec<ForkAction>) {
        let Some(b) = self.branches.get_mut(i) else {
            return;
        };
        match b.state {
            BranchState::Waiting { .. } => {
                // A delayed branch that never went out.
                b.state = BranchState::Completed { status: 487 };
                return;
            }
            BranchState::Calling => {
                b.state = BranchState::CancelWaiting { reason };
            }
            BranchState::Proceeding => {
                b.state = BranchState::Cancelled;
                out.push(ForkAction::SendCancel { branch: i, reason });
            }
            BranchState::CancelWaiting { .. }
            | BranchState::Cancelled
            | BranchState::Completed { .. } => return,
        }
        if let Some(client) = b.client {
            out.push(ForkAction::Abandon { client });
        }
    }

    /// A response (our Via removed) on branch `i`; `gate` checks phones' proofs (R14).
    pub(super) fn on_response(
        &mut self,
        i: usize,
        mut resp: Response,
        now: Instant,
        gate: Option<&mut dyn TrustGate>,
        out: &mut Vec<ForkAction>,
    ) {
        if i >= self.branches.len() {
            return;
        }
        match self.check_trust(i, &mut resp, now, gate, out) {
            Trust::Pass => {}
            Trust::Unproven => {
                resp.body = Bytes::new();
                resp.headers.remove_all(&HeaderName::ContentType);
            }
            Trust::Failed => {
                self.untrusted_response(i, resp, out);
                return;
            }
        }
        let tag = resp.to().and_then(|t| t.tag().map(str::to_owned));
        match resp.status {
            100 => {}
            101..=199 => {
                let b = &mut self.branches[i];
                b.provisional(i, out);
                if self.finished {
                    return;
                }
                if let Some(tag) = tag
                    && !b.early_tags.contains(&tag)
                {
                    b.early_tags.push(tag);
                }
                out.push(ForkAction::Respond(resp));
            }
            200..=299 => self.answer(i, resp, tag, out),
            _ => self.final_failure(i, resp, out),
        }
    }

    /// A response from a phone whose proof failed: nothing of it reaches the caller.
    fn untrusted_response(&mut self, i: usize, resp: Response, out: &mut Vec<ForkAction>) {
        let b = &mut self.branches[i];
        if resp.status < 200 {
            b.provisional(i, out);
            self.cancel_branch(i, Some(TRUST_FAILED.to_owned()), out);
        } else if resp.status < 300 {
            b.state = BranchState::Completed {
                status: resp.status,
            };
            let (outcome, reason) = if b.trust == TrustVerdict::Voicemail {
                (BranchOutcome::NoAnswer, VOICEMAIL)
            } else {
                (BranchOutcome::FailedTrust, TRUST_FAILED)
            };
            out.push(ForkAction::BranchFinal {
                branch: i,
                status: resp.status,
                outcome: Some(outcome),
            });
            self.end_late_answer(i, resp, reason, out);
            self.check_complete(out);
        }
    }

    /// A 2xx on branch `i`: the first wins (R12), the rest are ended.
    fn answer(&mut self, i: usize, resp: Response, tag: Option<String>, out: &mut Vec<ForkAction>) {
        if self.winner_tag.is_none() && !self.finished {
            self.branches[i].state = BranchState::Completed {
                status: resp.status,
            };
            self.winner_tag = Some(tag.unwrap_or_default());
            self.finished = true;
            // RFC 6228: the other branches' early dialogs end now; say so before the
            // final response (no 199 may follow it).
            if self.supports_199 {
                let ended: Vec<String> = self
                    .branches
                    .iter_mut()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, b)| std::mem::take(&mut b.early_tags))
                    .collect();
                self.early_dialogs_ended(ended, out);
            }
            let status = resp.status;
            out.push(ForkAction::Respond(resp));
            out.push(ForkAction::Answered { branch: i, status });
            for j in (0..self.branches.len()).filter(|&j| j != i) {
                self.cancel_branch(j, Some(COMPLETED_ELSEWHERE.to_owned()), out);
            }
        } else if self.winner_tag.is_some()
            && self.winner_tag == tag
            && self.branches[i].final_status().is_some_and(|s| s < 300)
        {
            // The winner retransmits its 2xx until the caller's ACK: pass it on.
            out.push(ForkAction::Respond(resp));
        } else {
            let b = &mut self.branches[i];
            if !b.is_final() {
                b.state = BranchState::Completed {
                    status: resp.status,
                };
            }
            self.end_late_answer(i, resp, COMPLETED_ELSEWHERE, out);
        }
    }

    /// A final non-2xx on branch `i`: it may be the best response (§16.7).
    fn final_failure(&mut self, i: usize, mut resp: Response, out: &mut Vec<ForkAction>) {
        let b = &mut self.branches[i];
        b.state = BranchState::Completed {
            status: resp.status,
        };
        let early = std::mem::take(&mut b.early_tags);
        let outcome = match b.trust {
            TrustVerdict::Voicemail => Some(BranchOutcome::NoAnswer),
            TrustVerdict::Refused => Some(BranchOutcome::FailedTrust),
            _ => None,
        };
        let trust_failed = b.trust.failed();
        out.push(ForkAction::BranchFinal {
            branch: i,
            status: resp.status,
            outcome,
        });
        if self.finished {
            return;
        }
        if resp.status == 503 {
            resp.status = 500;
            resp.reason = "Server Internal Error".into();
        }
        let six = resp.status >= 600;
        if !trust_failed && self.best.as_ref().is_none_or(|cur| better(&resp, cur)) {
            self.best = Some(resp);
        }
        let others_pending = self.branches.iter().any(|b| !b.is_final());
        if self.supports_199 && others_pending {
            self.early_dialogs_ended(early, out);
        }
        if six {
            // §16.7 step 5: a 6xx ends the search.
            self.cancel_all(None, out);
        }
        self.check_complete(out);
    }

    /// 199 Early Dialog Terminated upstream, one per ended early dialog (RFC 6228).
    fn early_dialogs_ended(&self, tags: Vec<String>, out: &mut Vec<ForkAction>) {
        for t in tags {
            out.push(ForkAction::Respond(own_response(
                &self.request,
                199,
                "Early Dialog Terminated",
                Some(&t),
            )));
        }
    }

    /// When every branch has a final response, the best one goes upstream.
    fn check_complete(&mut self, out: &mut Vec<ForkAction>) {
        if self.finished || !self.branches.iter().all(Branch::is_final) {
            return;
        }
        self.finished = true;
        match self.best.take() {
            Some(best) => {
                let (status, cause) = (best.status, format!("{} {}", best.status, best.reason));
                out.push(ForkAction::Respond(best));
                out.push(ForkAction::Failed { status, cause });
            }
            None => {
                out.push(ForkAction::Reply(480));
                out.push(ForkAction::Failed {
                    status: 480,
                    cause: "480 Temporarily Unavailable".into(),
                });
            }
        }
    }

    /// A 2xx that must not reach the caller: ACK it and, the first time from that dialog,
    /// hang it up with BYE (R12).
    fn end_late_answer(
        &mut self,
        i: usize,
        response: Response,
        reason: &'static str,
        out: &mut Vec<ForkAction>,
    ) {
        let b = &mut self.branches[i];
        let tag = response
            .to()
            .and_then(|t| t.tag().map(str::to_owned))
            .unwrap_or_default();
        let bye = !b.late_tags.contains(&tag);
        if bye {
            b.late_tags.push(tag);
        }
        out.push(ForkAction::EndLateAnswer {
            branch: i,
            response,
            reason,
            bye,
        });
    }

    /// R14 on a response from branch `i`: removes any `Trust-Proof` (it never goes
    /// upstream) and checks it when it decides whether the phone may be connected.
    fn check_trust(
        &mut self,
        i: usize,
        resp: &mut Response,
        now: Instant,
        gate: Option<&mut dyn TrustGate>,
        out: &mut Vec<ForkAction>,
    ) -> Trust {
        let open = self.winner_tag.is_none() && !self.finished;
        let b = &mut self.branches[i];
        let Some(device) = b.device.clone() else {
            return Trust::Pass;
        };
        let name = trust_header(TRUST_PROOF);
        let proof = resp.headers.get(&name).map(str::to_owned);
        resp.headers.remove_all(&name);
        if b.trust.failed() {
            // Already dropped: nothing more from this phone reaches the caller; a final
            // non-2xx just closes the branch.
            return if resp.status >= 300 || resp.status == 100 {
                Trust::Pass
            } else {
                Trust::Failed
            };
        }
        let proven = b.trust == TrustVerdict::Proven;
        if proven || !open || resp.status == 100 {
            return if proven || resp.status >= 200 {
                Trust::Pass
            } else {
                Trust::Unproven
            };
        }
        let call_id = b.request.call_id().to_owned();
        let branch = b.via_branch();
        let answered = (200..300).contains(&resp.status);
        if b.pstn && proof.is_none() && answered {
            // The carrier's voicemail (or any answering service) took the PSTN leg: it has
            // no zone, so it sends no proof. Not an attack: no security event, but it must
            // not take the call from the other devices (R14).
            b.trust = TrustVerdict::Voicemail;
            tracing::info!(
                device,
                "PSTN leg answered without proof (voicemail): no answer"
            );
            if let Some(gate) = gate {
                gate.forget(&device, &call_id, &branch);
            }
            return Trust::Failed;
        }
        if proof.is_none() && !answered {
            if resp.status >= 300
                && let Some(gate) = gate
            {
                gate.forget(&device, &call_id, &branch);
            }
            return if resp.status < 200 {
                Trust::Unproven
            } else {
                Trust::Pass
            };
        }
        let verdict = match gate {
            Some(gate) => gate.verify(now, &device, &call_id, &branch, proof.as_deref()),
            None => Err(no_gate()),
        };
        match verdict {
            Ok(()) => {
                b.trust = TrustVerdict::Proven;
                Trust::Pass
            }
            Err(refusal) => {
                b.trust = TrustVerdict::Refused;
                tracing::info!(
                    device,
                    kind = refusal.kind,
                    "phone branch dropped: trust proof failed"
                );
                out.push(ForkAction::Security {
                    refusal,
                    user: self.request.uri.user_unescaped().unwrap_or_default(),
                    device,
                    call_id,
                });
                Trust::Failed
            }
        }
    }
}

/// The refusal when no trust authority is configured: phones cannot be trusted.
fn no_gate() -> TrustRefusal {
    TrustRefusal {
        kind: "no-trust-gate".into(),
        detail: "no trust authority configured".into(),
    }
}

fn trust_header(name: &str) -> HeaderName {
    HeaderName::Other(name.to_owned())
}

mod apply;
#[cfg(test)]
mod tests;
