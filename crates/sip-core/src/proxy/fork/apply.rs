//! The proxy's side of a fork: building the branches (Record-Route, Via, the trust
//! challenge and trunk MAC), and carrying out the [`ForkAction`]s a [`Fork`] returns with the
//! proxy's transactions, ids and call records.

use std::time::Instant;

use bytes::Bytes;

use super::super::request::decrement_max_forwards;
use super::super::{ClientKind, Event, Output, Proxy, TRUNK_AUTH, Target, TimerRef, trunk_auth};
use super::{
    Branch, Fork, ForkAction, ForkPlan, TRUST_CHALLENGE, TrustGate, TrustRefusal, no_gate,
    trust_header,
};
use crate::message::{CSeq, HeaderName, Headers, Method, NameAddr, Request, Response};

impl Proxy {
    /// Starts a fork for request `req` of server transaction `server`.
    pub(in crate::proxy) fn start_fork(
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
                && !self.challenge_branch(&mut r, &req, device, &branch, t.pstn, now)
            {
                continue;
            }
            let send_at = (!t.delay.is_zero()).then(|| now + t.delay);
            branches.push(Branch::new(r, t.target, send_at, t.device, t.pstn));
        }
        if branches.is_empty() {
            self.reply(server, &req, 480, now);
            if record_route {
                self.call_unreachable(&req, now);
            }
            return;
        }
        let invite = req.method == Method::Invite;
        let fork = Fork::new(server, req, branches, ring_timeout.map(|d| now + d));
        let mut out = Vec::new();
        fork.start(&mut out);
        self.forks.insert(id, fork);
        if let Some(s) = self.servers.get_mut(&server) {
            s.fork = Some(id);
        }
        if record_route && invite {
            self.call_started(id, now);
        }
        self.apply_fork(id, out, now);
        self.arm_fork(id);
    }

    /// R14: a phone's INVITE carries a fresh challenge bound to this call and branch (and,
    /// through the gateway, the trunk MAC). A phone that cannot be challenged is not rung:
    /// `false`, and a security event says why.
    fn challenge_branch(
        &mut self,
        r: &mut Request,
        req: &Request,
        device: &str,
        branch: &str,
        pstn: bool,
        now: Instant,
    ) -> bool {
        let call_id = r.call_id().to_owned();
        let challenge = match self.trust.as_mut() {
            Some(gate) => gate.challenge(now, device, &call_id, branch),
            None => Err(no_gate()),
        };
        match challenge {
            Ok(value) => {
                if pstn && let Some(trunk) = &self.cfg.trunk {
                    let number = r.uri.user.clone().unwrap_or_default();
                    let mac = trunk_auth(&trunk.secret, &call_id, branch, &number, &value);
                    r.headers.push(trust_header(TRUNK_AUTH), mac);
                }
                r.headers.push(trust_header(TRUST_CHALLENGE), value);
                true
            }
            Err(refusal) => {
                let user = req.uri.user_unescaped().unwrap_or_default();
                self.security_event(refusal, user, device, &call_id);
                false
            }
        }
    }

    fn arm_fork(&mut self, id: u64) {
        let next = self.forks.get(&id).and_then(Fork::next_deadline);
        self.arm(next, TimerRef::Fork(id));
    }

    /// Carries out what fork `id` asked for, in order.
    fn apply_fork(&mut self, id: u64, actions: Vec<ForkAction>, now: Instant) {
        for action in actions {
            match action {
                ForkAction::SendBranch(i) => self.send_branch(id, i, now),
                ForkAction::Respond(resp) => {
                    if let Some(server) = self.forks.get(&id).map(Fork::server) {
                        self.respond(server, &resp, now);
                    }
                }
                ForkAction::Reply(status) => {
                    if let Some(f) = self.forks.get(&id) {
                        let (server, req) = (f.server(), f.request.clone());
                        self.reply(server, &req, status, now);
                    }
                }
                ForkAction::SendCancel { branch, reason } => {
                    let cancel = self.forks.get(&id).and_then(|f| {
                        let (_, target) = f.branch_request(branch)?;
                        Some((f.cancel_request(branch, reason.as_deref())?, target))
                    });
                    if let Some((cancel, target)) = cancel {
                        self.send_request(&cancel, target, ClientKind::Own, now);
                    }
                }
                ForkAction::Abandon { client } => {
                    let abandon_at = now + self.cfg.timers.timeout();
                    if let Some(e) = self.clients.get_mut(&client) {
                        e.tx.expire_at(abandon_at);
                        let next = e.tx.next_deadline();
                        self.arm(next, TimerRef::Client(client));
                    }
                }
                ForkAction::EndLateAnswer {
                    branch,
                    response,
                    reason,
                    bye,
                } => self.end_late_answer(id, branch, &response, reason, bye, now),
                ForkAction::BranchFinal {
                    branch,
                    status,
                    outcome,
                } => self.call_branch_final(id, branch, status, outcome),
                ForkAction::Answered { branch, status } => {
                    self.call_answered(id, branch, status, now);
                }
                ForkAction::Failed { status, cause } => self.call_failed(id, status, &cause, now),
                ForkAction::Security {
                    refusal,
                    user,
                    device,
                    call_id,
                } => self.security_event(refusal, user, &device, &call_id),
            }
        }
    }

    /// A copy of branch `i` of fork `id`'s request and its target (to send from it while
    /// the proxy is borrowed mutably).
    fn branch_copy(&self, id: u64, i: usize) -> Option<(Request, Target)> {
        let (req, target) = self.forks.get(&id)?.branch_request(i)?;
        Some((req.clone(), target))
    }

    fn send_branch(&mut self, id: u64, i: usize, now: Instant) {
        let Some((req, target)) = self.branch_copy(id, i) else {
            return;
        };
        let client = self.send_request(
            &req,
            target,
            ClientKind::Branch {
                fork: id,
                branch: i,
            },
            now,
        );
        if let Some(f) = self.forks.get_mut(&id) {
            f.branch_sent(i, client);
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

    pub(in crate::proxy) fn fork_timeout(&mut self, id: u64, now: Instant) {
        let Some(f) = self.forks.get_mut(&id) else {
            return;
        };
        if f.expired(now) {
            if let Some(f) = self.forks.remove(&id)
                && let Some(gate) = self.trust.as_mut()
            {
                let call_id = f.request.call_id();
                for (device, branch) in f.unproven_challenges() {
                    gate.forget(device, call_id, &branch);
                }
            }
            return;
        }
        let mut out = Vec::new();
        f.on_timeout(now, &mut out);
        self.apply_fork(id, out, now);
        self.arm_fork(id);
    }

    /// Caller's CANCEL (§16.10): cancel every pending branch.
    pub(in crate::proxy) fn cancel_fork(&mut self, id: u64, reason: Option<&str>, now: Instant) {
        let mut out = Vec::new();
        if let Some(f) = self.forks.get_mut(&id) {
            f.on_cancel(reason, &mut out);
        }
        self.apply_fork(id, out, now);
    }

    /// A branch's client transaction timed out (Timer B, or abandoned after CANCEL).
    pub(in crate::proxy) fn branch_timed_out(&mut self, id: u64, i: usize, now: Instant) {
        let mut out = Vec::new();
        if let Some(f) = self.forks.get_mut(&id) {
            f.on_branch_timeout(i, &mut out);
        }
        self.apply_fork(id, out, now);
    }

    /// Branch `i` of fork `id` could not be sent: its target is unreachable (503, §16.9).
    pub(in crate::proxy) fn branch_unreachable(&mut self, id: u64, i: usize, now: Instant) {
        let mut out = Vec::new();
        if let Some(f) = self.forks.get_mut(&id) {
            f.on_branch_failed(i, 503, "Service Unavailable", &mut out);
        }
        self.apply_fork(id, out, now);
    }

    /// A response (our Via removed) on branch `i` of fork `id`.
    pub(in crate::proxy) fn branch_response(
        &mut self,
        id: u64,
        i: usize,
        resp: Response,
        now: Instant,
    ) {
        let mut out = Vec::new();
        if let Some(f) = self.forks.get_mut(&id) {
            let gate = self.trust.as_deref_mut().map(|g| g as &mut dyn TrustGate);
            f.on_response(i, resp, now, gate, &mut out);
        }
        self.apply_fork(id, out, now);
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

    /// ACK a 2xx from branch `i` that must not reach the caller and, if `bye`, hang it up
    /// (R12), so the caller sees exactly one answer.
    fn end_late_answer(
        &mut self,
        id: u64,
        i: usize,
        resp: &Response,
        reason: &str,
        bye: bool,
        now: Instant,
    ) {
        let Some((branch_req, target)) = self.branch_copy(id, i) else {
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
        if bye {
            let mut bye = build(self, Method::Bye, seq.saturating_add(1));
            bye.headers.push(HeaderName::Reason, reason);
            self.send_request(&bye, target, ClientKind::Own, now);
        }
    }

    /// The server transaction ended: keep the context a while for late responses, then drop.
    pub(in crate::proxy) fn fork_server_gone(&mut self, id: u64, now: Instant) {
        let linger = self.cfg.timers.timeout();
        if let Some(f) = self.forks.get_mut(&id) {
            f.server_gone(now, linger);
        }
        self.arm_fork(id);
    }
}
