//! Re-INVITEs in an established call (RFC 3261 §14): hold and resume from the PSTN side
//! (ours: a client transaction, the 2xx ACKed end to end, a non-2xx ACKed hop by hop as
//! §17.1.1.3 asks) and session changes from the far end (theirs: a server transaction, the
//! exchange answers, the 2xx retransmitted until its ACK). Glare gives 491 and overlapping
//! INVITEs 500 with Retry-After (§14.2); 408 and 481 end the dialog (§12.2.1.2).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{HeaderName, Headers, Method, Request, Response};
use sip_core::transaction::{ClientState, ClientTx, ServerState, ServerTx, TxAction};

use super::call::{Call, PendingAck, Phase, set_sdp};
use super::dialog::Outgoing;
use super::wire::{self, Ctx, IndexOp, Outbox, TxKey};
use super::{EndReason, UaError, UaEvent};

/// Why a re-INVITE from the far end is refused without involving the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The final status.
    pub(super) status: u16,
    /// Whether to add `Retry-After` (the 500 for overlapping INVITEs, §14.2).
    pub(super) retry_after: bool,
}

impl Refusal {
    fn new(status: u16) -> Self {
        Self {
            status,
            retry_after: false,
        }
    }
}

/// A re-INVITE from the far end.
#[derive(Debug)]
pub(super) struct InInvite {
    pub(super) key: TxKey,
    peer: SocketAddr,
    request: Request,
    tx: ServerTx,
    /// Whether a final response went out.
    answered: bool,
    /// The exchange must answer by then, or the UA refuses with 500 (the far end's timer B
    /// runs out at 64*T1).
    answer_by: Instant,
}

impl InInvite {
    /// When its timers next need running.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let answer = (!self.answered).then_some(self.answer_by);
        [self.tx.next_deadline(), answer]
            .into_iter()
            .flatten()
            .min()
    }

    /// Resends the last response (for a retransmitted re-INVITE).
    pub(super) fn resend_last(&self, out: &mut Outbox) {
        if let Some(b) = self.tx.handle_retransmission() {
            out.send(self.peer, b);
        }
    }

    /// Whether a non-2xx final response went out and waits for its ACK.
    pub(super) fn is_completed(&self) -> bool {
        self.tx.state() == ServerState::Completed
    }

    /// The ACK for its non-2xx final response.
    pub(super) fn handle_ack(&mut self, now: Instant) {
        self.tx.handle_ack(now);
    }

    /// Sends a response through the transaction.
    fn respond(&mut self, now: Instant, resp: &Response, out: &mut Outbox) -> Option<Bytes> {
        let bytes = Bytes::from(resp.to_bytes());
        if !self.tx.send_response(resp.status, bytes.clone(), now) {
            return None;
        }
        if resp.status >= 200 {
            self.answered = true;
        }
        out.send(self.peer, bytes.clone());
        Some(bytes)
    }
}

/// One of our re-INVITEs.
#[derive(Debug)]
pub(super) struct OutInvite {
    pub(super) branch: String,
    tx: ClientTx,
    hop: SocketAddr,
    request: Request,
    /// The ACK we sent for its final response and where, to resend on retransmissions.
    ack: Option<(SocketAddr, Bytes)>,
}

impl OutInvite {
    /// When its timers next need running.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.tx.next_deadline()
    }

    /// Whether it still waits for a final response.
    fn in_progress(&self) -> bool {
        matches!(
            self.tx.state(),
            ClientState::Calling | ClientState::Proceeding
        )
    }
}

impl Call {
    /// A re-INVITE (To tag set) in this dialog that is not a retransmission. Either starts a
    /// server transaction and reports [`UaEvent::RemoteReinvite`], or says how to refuse.
    pub(super) fn handle_reinvite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        req: Request,
        key: TxKey,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), Option<Refusal>> {
        if !self.dialog.matches(&req) || matches!(self.phase, Phase::Closing(_) | Phase::Done) {
            return Err(Some(Refusal::new(481)));
        }
        let seq = req.cseq().seq;
        if seq == self.dialog.remote_cseq {
            return Err(None); // a late copy of one already handled
        }
        if seq < self.dialog.remote_cseq {
            return Err(Some(Refusal::new(500))); // §12.2.2: out of order
        }
        let overlapping = Refusal {
            status: 500,
            retry_after: true,
        };
        if self.phase == Phase::Early || self.in_invites.iter().any(|i| !i.answered) {
            return Err(Some(overlapping)); // our final to a lower CSeq is pending (§14.2)
        }
        // Glare (§14.2); also while our 2xx to the last INVITE waits for its ACK.
        if self.phase == Phase::Answered
            || self.pending_ack.is_some()
            || self.out_invites.iter().any(OutInvite::in_progress)
        {
            return Err(Some(Refusal::new(491)));
        }
        if !req.body.is_empty() && !wire::is_sdp(&req) {
            return Err(Some(Refusal::new(415)));
        }
        self.dialog.remote_cseq = seq;
        self.dialog.refresh_target(&req.headers); // target refresh (§12.2.2)
        let offer = wire::sdp_body(&req);
        let mut inv = InInvite {
            key: key.clone(),
            peer: from,
            tx: ServerTx::new(true, ctx.cfg.tls, ctx.cfg.timers),
            answered: false,
            answer_by: now + ctx.cfg.timers.timeout() / 2,
            request: req,
        };
        let trying = wire::reply(&inv.request, 100, None, &ctx.cfg);
        inv.respond(now, &trying, out);
        self.in_invites.push(inv);
        out.index.push(IndexOp::AddKey(key));
        tracing::debug!(call = %self.id, "re-INVITE from the far end");
        out.event(UaEvent::RemoteReinvite {
            call: self.id,
            offer,
        });
        Ok(())
    }

    /// The exchange answers the pending far-end re-INVITE with 200 and `sdp`.
    pub(super) fn answer_reinvite(
        &mut self,
        now: Instant,
        sdp: Bytes,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        let inv = self.unanswered_reinvite("answer a re-INVITE")?;
        let mut ok = wire::reply(&inv.request, 200, None, &ctx.cfg);
        ok.headers.push(HeaderName::Contact, ctx.contact.clone());
        ok.headers.push(HeaderName::Allow, wire::ALLOW);
        set_sdp(&mut ok, sdp);
        let seq = inv.request.cseq().seq;
        let (key, peer) = (inv.key.clone(), inv.peer);
        if let Some(bytes) = inv.respond(now, &ok, out) {
            self.pending_ack = Some(PendingAck::new(seq, key, peer, bytes, now, ctx));
        }
        Ok(())
    }

    /// The exchange refuses the pending far-end re-INVITE (e.g. 488).
    pub(super) fn reject_reinvite(
        &mut self,
        now: Instant,
        status: u16,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        if !(300..=699).contains(&status) {
            return Err(UaError::InvalidStatus(status));
        }
        let inv = self.unanswered_reinvite("reject a re-INVITE")?;
        let resp = wire::reply(&inv.request, status, None, &ctx.cfg);
        inv.respond(now, &resp, out);
        Ok(())
    }

    /// The far-end re-INVITE waiting for the exchange.
    fn unanswered_reinvite(&mut self, op: &'static str) -> Result<&mut InInvite, UaError> {
        let call = self.id;
        match self.phase {
            Phase::Confirmed => self.in_invites.iter_mut().find(|i| !i.answered),
            _ => None,
        }
        .ok_or(UaError::InvalidState { call, op })
    }

    /// Answers every unanswered far-end re-INVITE with 487 (the call is ending, §15.1.2).
    pub(super) fn refuse_pending_reinvites(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        for inv in self.in_invites.iter_mut().filter(|i| !i.answered) {
            let resp = wire::reply(&inv.request, 487, None, &ctx.cfg);
            inv.respond(now, &resp, out);
        }
    }

    /// Sends a re-INVITE with `sdp` (hold, resume).
    pub(super) fn reinvite(
        &mut self,
        now: Instant,
        sdp: Bytes,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        // §14.1: no new INVITE while another is in progress in either direction.
        let busy = self.in_invites.iter().any(|i| !i.answered)
            || self.out_invites.iter().any(OutInvite::in_progress)
            || self.pending_ack.is_some();
        if self.phase != Phase::Confirmed || busy {
            return Err(UaError::InvalidState {
                call: self.id,
                op: "send a re-INVITE",
            });
        }
        let mut inv = Outgoing::request(&mut self.dialog, Method::Invite, self.peer, ctx);
        let h = &mut inv.request.headers;
        h.push(HeaderName::Contact, ctx.contact.clone());
        h.push(HeaderName::Allow, wire::ALLOW);
        if !sdp.is_empty() {
            h.push(HeaderName::ContentType, "application/sdp");
        }
        inv.request.body = sdp;
        let bytes = Bytes::from(inv.request.to_bytes());
        out.send(inv.hop, bytes.clone());
        out.index.push(IndexOp::AddBranch(inv.branch.clone()));
        tracing::debug!(call = %self.id, hop = %inv.hop, "re-INVITE sent");
        self.out_invites.push(OutInvite {
            branch: inv.branch,
            tx: ClientTx::new(true, ctx.cfg.tls, bytes, ctx.cfg.timers, now),
            hop: inv.hop,
            request: inv.request,
            ack: None,
        });
        Ok(())
    }

    /// A response to one of our re-INVITEs (matched by branch).
    pub(super) fn handle_reinvite_response(
        &mut self,
        now: Instant,
        branch: &str,
        resp: &Response,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        let Some(o) = self.out_invites.iter_mut().find(|o| o.branch == branch) else {
            return;
        };
        let fresh = o.tx.handle_response(resp.status, now);
        if resp.status < 200 {
            // A provisional response stops timer B; bound the wait for the final one anyway
            // (a re-INVITE is answered at once, §14.2), so the dialog cannot hang on it.
            o.tx.expire_at(now + ctx.cfg.timers.timeout());
            return;
        }
        if let Some((to, ack)) = &o.ack {
            // A retransmitted final response: the same ACK again.
            if fresh || resp.status >= 300 {
                out.send(*to, ack.clone());
            }
            return;
        }
        if !fresh {
            return;
        }
        let seq = o.request.cseq().seq;
        let (to, ack) = if resp.class() == 2 {
            self.dialog.refresh_target(&resp.headers); // target refresh (§12.2.1.2)
            let ack = Outgoing::ack(&self.dialog, seq, self.peer, ctx);
            (ack.hop, ack.request)
        } else {
            (o.hop, non2xx_ack(&o.request, resp))
        };
        let bytes = Bytes::from(ack.to_bytes());
        out.send(to, bytes.clone());
        o.ack = Some((to, bytes));
        let answer = (resp.class() == 2).then(|| response_sdp(resp)).flatten();
        self.reinvite_done(now, resp.status, answer, ctx, out);
    }

    /// Reports the outcome of our re-INVITE; 408 and 481 end the dialog (§12.2.1.2).
    fn reinvite_done(
        &mut self,
        now: Instant,
        status: u16,
        answer: Option<Bytes>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        if self.phase != Phase::Confirmed {
            return; // the call is ending: the exchange no longer cares
        }
        tracing::debug!(call = %self.id, status, "re-INVITE done");
        out.event(UaEvent::ReinviteDone {
            call: self.id,
            status,
            answer,
        });
        match status {
            481 => self.end(EndReason::DialogFailed { status }, out),
            408 => {
                self.refuse_pending_reinvites(now, ctx, out);
                self.phase = Phase::Closing(EndReason::DialogFailed { status });
                self.send_bye(now, None, ctx, out);
            }
            _ => {}
        }
    }

    /// Runs the timers of re-INVITEs in both directions and forgets finished ones.
    pub(super) fn reinvite_timeouts(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        let mut timed_out = false;
        for o in &mut self.out_invites {
            if o.tx.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            for a in o.tx.handle_timeout(now) {
                match a {
                    TxAction::Retransmit(b) => out.send(o.hop, b),
                    TxAction::Timeout => timed_out |= o.ack.is_none(),
                    TxAction::Terminated => {}
                }
            }
        }
        for inv in &mut self.in_invites {
            if !inv.answered && inv.answer_by <= now {
                tracing::info!(call = %self.id, "re-INVITE not answered in time, refusing it");
                let mut resp = wire::reply(&inv.request, 500, None, &ctx.cfg);
                resp.headers
                    .push(wire::retry_after(), wire::random_below(11).to_string());
                inv.respond(now, &resp, out);
            }
            if inv.tx.next_deadline().is_some_and(|d| d <= now) {
                for a in inv.tx.handle_timeout(now) {
                    if let TxAction::Retransmit(b) = a {
                        out.send(inv.peer, b);
                    }
                }
            }
        }
        self.out_invites.retain(|o| {
            let keep = o.tx.state() != ClientState::Terminated;
            if !keep {
                out.index.push(IndexOp::DropBranch(o.branch.clone()));
            }
            keep
        });
        self.in_invites.retain(|i| {
            let keep = i.tx.state() != ServerState::Terminated;
            if !keep {
                out.index.push(IndexOp::DropKey(i.key.clone()));
            }
            keep
        });
        if timed_out {
            self.reinvite_done(now, 408, None, ctx, out);
        }
    }
}

/// The ACK for a non-2xx final response to `invite` (§17.1.1.3): same branch, Request-URI,
/// From, Call-ID and Route; the response's To; CSeq number of the INVITE.
fn non2xx_ack(invite: &Request, resp: &Response) -> Request {
    let mut h = Headers(Vec::with_capacity(8));
    let first = |name: HeaderName| invite.headers.get(&name).unwrap_or_default().to_owned();
    h.push(HeaderName::Via, first(HeaderName::Via));
    h.push(HeaderName::MaxForwards, "70");
    h.push(HeaderName::From, first(HeaderName::From));
    h.push(
        HeaderName::To,
        resp.headers.get(&HeaderName::To).unwrap_or_default(),
    );
    h.push(HeaderName::CallId, first(HeaderName::CallId));
    h.push(
        HeaderName::CSeq,
        format!("{} {}", invite.cseq().seq, Method::Ack),
    );
    for r in invite.headers.get_all(&HeaderName::Route) {
        h.push(HeaderName::Route, r);
    }
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers: h,
        body: Bytes::new(),
    }
}

/// The SDP body of a response, if it has one.
fn response_sdp(resp: &Response) -> Option<Bytes> {
    let sdp = resp
        .headers
        .get(&HeaderName::ContentType)
        .and_then(|t| t.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/sdp"));
    (sdp && !resp.body.is_empty()).then(|| resp.body.clone())
}
