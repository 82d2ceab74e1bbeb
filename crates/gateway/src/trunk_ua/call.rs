//! One incoming call: the INVITE server transaction, provisional and final responses, the
//! 2xx retransmitted until its ACK (RFC 3261 §13.3.1.4), CANCEL (§9.2), BYE in and out
//! (§15), and the timers of all of them. Re-INVITEs are in `reinvite.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::message::{HeaderName, Method, Request, Response};
use sip_core::transaction::{ClientTx, ServerState, ServerTx, TxAction};

use sip_core::dialog::Dialog;

use super::dialog::Outgoing;
use super::reinvite::{InInvite, OutInvite};
use super::wire::{self, Ctx, IndexOp, Outbox, TxKey};
use super::{CallId, EndReason, UaError, UaEvent};

/// A UAS that cannot answer at once sends a provisional response every minute, so that
/// proxies do not give up on the transaction (RFC 3261 §13.3.1.1, Timer C of §16.6).
const PROVISIONAL_REFRESH: Duration = Duration::from_secs(60);
/// Longest an INVITE may stay without a final response. The proxy's ring timeout CANCELs
/// long before; this only bounds the state when the proxy or the exchange goes silent.
pub(super) const MAX_EARLY: Duration = Duration::from_secs(300);

/// Where the call is, as the exchange sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The INVITE has no final response yet (100 or 180 sent).
    Early,
    /// 200 sent to the INVITE, waiting for the ACK.
    Answered,
    /// The ACK came: the call is up.
    Confirmed,
    /// Our BYE is in flight; `Ended` with this reason follows when it finishes.
    Closing(EndReason),
    /// `Ended` was reported. The entry stays only until its transactions are over.
    Done,
}

/// A 2xx being retransmitted until its ACK comes (§13.3.1.4).
#[derive(Debug)]
pub(super) struct PendingAck {
    /// CSeq of the INVITE (or re-INVITE) it answers: the ACK carries the same number.
    pub(super) cseq: u32,
    /// That INVITE's transaction key, to recognise its retransmissions.
    pub(super) key: TxKey,
    pub(super) peer: SocketAddr,
    pub(super) bytes: Bytes,
    pub(super) next_at: Instant,
    pub(super) interval: Duration,
    pub(super) give_up_at: Instant,
}

impl PendingAck {
    /// Starts retransmitting `bytes` (just sent at `now`) every T1, doubling up to T2, for
    /// 64*T1.
    pub(super) fn new(
        cseq: u32,
        key: TxKey,
        peer: SocketAddr,
        bytes: Bytes,
        now: Instant,
        ctx: &Ctx,
    ) -> Self {
        let t1 = ctx.cfg.timers.t1;
        Self {
            cseq,
            key,
            peer,
            bytes,
            next_at: now + t1,
            interval: t1,
            give_up_at: now + ctx.cfg.timers.timeout(),
        }
    }
}

/// Our BYE (a non-INVITE client transaction).
#[derive(Debug)]
pub(super) struct OutBye {
    branch: String,
    tx: ClientTx,
    to: SocketAddr,
}

/// One incoming call and its dialog.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) id: CallId,
    /// The initial INVITE, to build its responses from.
    invite: Request,
    /// Where the INVITE came from: its responses go there, and so do in-dialog requests
    /// whose next hop names a host.
    pub(super) peer: SocketAddr,
    /// The INVITE's server transaction key.
    pub(super) key: TxKey,
    tx: ServerTx,
    pub(super) dialog: Dialog,
    pub(super) phase: Phase,
    pub(super) pending_ack: Option<PendingAck>,
    /// The exchange hung up before the ACK: BYE (with this Reason) once it comes (§15).
    hangup_after_ack: Option<Option<String>>,
    /// The last 18x, resent every minute while the call rings.
    ringing: Option<Bytes>,
    refresh_at: Option<Instant>,
    early_until: Instant,
    bye: Option<OutBye>,
    /// Our re-INVITEs: the last may be in progress, earlier ones absorb retransmitted
    /// final responses until their transactions end.
    pub(super) out_invites: Vec<OutInvite>,
    /// Re-INVITEs from the far end whose server transactions are alive.
    pub(super) in_invites: Vec<InInvite>,
    /// The deadline under which the owner has this call scheduled.
    pub(super) scheduled: Option<Instant>,
}

impl Call {
    /// Accepts a new INVITE: sends 100 Trying and reports [`UaEvent::Incoming`]. On refusal
    /// returns the status to answer it with.
    pub(super) fn start(
        id: CallId,
        now: Instant,
        peer: SocketAddr,
        invite: Request,
        key: TxKey,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<Self, u16> {
        if !invite.body.is_empty() && !wire::is_sdp(&invite) {
            return Err(415);
        }
        // §8.1.1.8: an INVITE must carry the Contact that becomes our remote target.
        let dialog = Dialog::uas(&invite, wire::tag(), wire::cseq_start());
        let (Some(dialog), Some(from)) = (dialog, invite.from()) else {
            return Err(400);
        };
        let mut call = Self {
            id,
            peer,
            key,
            tx: ServerTx::new(true, ctx.cfg.tls, ctx.cfg.timers),
            dialog,
            phase: Phase::Early,
            pending_ack: None,
            hangup_after_ack: None,
            ringing: None,
            refresh_at: None,
            early_until: now + MAX_EARLY,
            bye: None,
            out_invites: Vec::new(),
            in_invites: Vec::new(),
            scheduled: None,
            invite,
        };
        // The proxy already sent its own 100 upstream; ours stops its retransmissions.
        let trying = wire::reply(&call.invite, 100, None, &ctx.cfg);
        call.send_invite_response(now, &trying, out);
        let req = &call.invite;
        tracing::info!(call = %id, call_id = %req.call_id(), uri = %req.uri, "incoming call");
        out.event(UaEvent::Incoming {
            call: id,
            source: peer,
            request_uri: req.uri.to_string(),
            called_user: wire::user_part(&req.uri),
            from: from.uri.to_string(),
            calling_user: Some(wire::user_part(&from.uri)).filter(|u| !u.is_empty()),
            sip_call_id: req.call_id().to_owned(),
            branch: call.key.branch.clone(),
            headers: req
                .headers
                .0
                .iter()
                .map(|h| (h.name.as_str().to_owned(), h.value.clone()))
                .collect(),
            offer: wire::sdp_body(req),
        });
        Ok(call)
    }

    /// The dialog's key in the owner's index.
    pub(super) fn dialog_key(&self) -> wire::DialogKey {
        (self.dialog.call_id.clone(), self.dialog.local_tag.clone())
    }

    /// Whether `Ended` was reported (commands no longer apply).
    pub(super) fn is_over(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the entry can go: over, and every transaction of it finished.
    pub(super) fn is_finished(&self) -> bool {
        self.phase == Phase::Done
            && self.tx.state() == ServerState::Terminated
            && self.pending_ack.is_none()
            && self.bye.is_none()
            && self.out_invites.is_empty()
            && self.in_invites.is_empty()
    }

    /// Every index entry the call still owns: its server keys and client branches.
    pub(super) fn index_entries(&self) -> (Vec<TxKey>, Vec<String>) {
        let keys = std::iter::once(self.key.clone())
            .chain(self.in_invites.iter().map(|i| i.key.clone()))
            .collect();
        let branches = self
            .bye
            .iter()
            .map(|b| b.branch.clone())
            .chain(self.out_invites.iter().map(|o| o.branch.clone()))
            .collect();
        (keys, branches)
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let early = (self.phase == Phase::Early).then(|| {
            self.refresh_at
                .map_or(self.early_until, |r| r.min(self.early_until))
        });
        let ack = self
            .pending_ack
            .as_ref()
            .map(|p| p.next_at.min(p.give_up_at));
        let bye = self.bye.as_ref().and_then(|b| b.tx.next_deadline());
        let ins = self.in_invites.iter().filter_map(InInvite::next_deadline);
        let outs = self.out_invites.iter().filter_map(OutInvite::next_deadline);
        [self.tx.next_deadline(), early, ack, bye]
            .into_iter()
            .flatten()
            .chain(ins)
            .chain(outs)
            .min()
    }

    /// Sends 180 Ringing with our To tag, Contact, Record-Route and `extra`.
    pub(super) fn ring(
        &mut self,
        now: Instant,
        extra: Vec<(HeaderName, String)>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        let resp = self.early_response(180, extra, "ring", ctx)?;
        let bytes = self.send_invite_response(now, &resp, out);
        self.ringing = bytes;
        self.refresh_at = Some(now + PROVISIONAL_REFRESH);
        Ok(())
    }

    /// Sends 200 OK with `sdp` and starts retransmitting it until the ACK.
    pub(super) fn answer(
        &mut self,
        now: Instant,
        sdp: Bytes,
        extra: Vec<(HeaderName, String)>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        let mut resp = self.early_response(200, extra, "answer", ctx)?;
        set_sdp(&mut resp, sdp);
        let bytes = Bytes::from(resp.to_bytes());
        if !self.tx.send_response(200, bytes.clone(), now) {
            return Err(UaError::InvalidState {
                call: self.id,
                op: "answer",
            });
        }
        out.send(self.peer, bytes.clone());
        let seq = self.invite.cseq().seq;
        self.pending_ack = Some(PendingAck::new(
            seq,
            self.key.clone(),
            self.peer,
            bytes,
            now,
            ctx,
        ));
        self.phase = Phase::Answered;
        self.ringing = None;
        self.refresh_at = None;
        tracing::info!(call = %self.id, "answered");
        Ok(())
    }

    /// Refuses the INVITE with a final non-2xx `status` and an optional `Reason`.
    pub(super) fn reject(
        &mut self,
        now: Instant,
        status: u16,
        reason: Option<String>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        if !(300..=699).contains(&status) {
            return Err(UaError::InvalidStatus(status));
        }
        self.expect_phase(Phase::Early, "reject")?;
        self.final_non2xx(now, status, reason, ctx, out);
        self.end(EndReason::Rejected { status }, out);
        Ok(())
    }

    /// Ends the call from our side: BYE when confirmed, BYE after the ACK when answered,
    /// 480 when still ringing (the callee may not BYE an early dialog, §15).
    pub(super) fn hangup(
        &mut self,
        now: Instant,
        reason: Option<String>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Result<(), UaError> {
        match self.phase {
            Phase::Early => {
                self.final_non2xx(now, 480, reason, ctx, out);
                self.end(EndReason::Rejected { status: 480 }, out);
            }
            Phase::Answered if self.hangup_after_ack.is_none() => {
                self.hangup_after_ack = Some(reason);
            }
            Phase::Confirmed => {
                self.refuse_pending_reinvites(now, ctx, out);
                self.phase = Phase::Closing(EndReason::LocalBye { status: None });
                self.send_bye(now, reason, ctx, out);
            }
            _ => {
                return Err(UaError::InvalidState {
                    call: self.id,
                    op: "hang up",
                });
            }
        }
        Ok(())
    }

    /// A retransmission of one of our INVITE server transactions (initial or re-INVITE):
    /// resend its last response.
    pub(super) fn handle_invite_retransmission(&self, key: &TxKey, out: &mut Outbox) {
        if let Some(p) = self.pending_ack.as_ref().filter(|p| &p.key == key) {
            out.send(p.peer, p.bytes.clone());
        } else if key == &self.key {
            if let Some(b) = self.tx.handle_retransmission() {
                out.send(self.peer, b);
            }
        } else if let Some(i) = self.in_invites.iter().find(|i| &i.key == key) {
            i.resend_last(out);
        }
    }

    /// An ACK that matched this call by transaction key or dialog.
    pub(super) fn handle_ack(
        &mut self,
        now: Instant,
        ack: &Request,
        key: &TxKey,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        // ACK for a non-2xx final response: the INVITE's own branch (§17.2.1).
        if key == &self.key && self.tx.state() == ServerState::Completed {
            self.tx.handle_ack(now);
            return;
        }
        if let Some(i) = self
            .in_invites
            .iter_mut()
            .find(|i| &i.key == key && i.is_completed())
        {
            i.handle_ack(now);
            return;
        }
        // ACK for a 2xx: a new transaction, matched by dialog and CSeq (§13.3.1.4).
        if !self.dialog.matches(ack)
            || self
                .pending_ack
                .as_ref()
                .is_none_or(|p| p.cseq != ack.cseq().seq)
        {
            return;
        }
        self.pending_ack = None;
        if self.phase == Phase::Answered {
            self.phase = Phase::Confirmed;
            tracing::debug!(call = %self.id, "ACK received, call confirmed");
            out.event(UaEvent::Confirmed { call: self.id });
            if let Some(reason) = self.hangup_after_ack.take() {
                self.phase = Phase::Closing(EndReason::LocalBye { status: None });
                self.send_bye(now, reason, ctx, out);
            }
        }
    }

    /// A CANCEL for one of our INVITE server transactions; returns the answer to it.
    pub(super) fn handle_cancel(
        &mut self,
        now: Instant,
        cancel: &Request,
        key: &TxKey,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Response {
        // §9.2: the CANCEL's To tag matches the one of the INVITE's responses.
        let resp = wire::reply(cancel, 200, Some(&self.dialog.local_tag), &ctx.cfg);
        if key == &self.key && self.phase == Phase::Early {
            self.final_non2xx(now, 487, None, ctx, out);
            let reason = cancel.headers.get(&HeaderName::Reason).map(str::to_owned);
            tracing::info!(call = %self.id, reason = reason.as_deref().unwrap_or("-"), "call cancelled");
            out.event(UaEvent::Cancelled {
                call: self.id,
                reason,
            });
            self.end(EndReason::Cancelled, out);
        }
        // A CANCEL for a re-INVITE, or after the final response, has no effect (§9.2).
        resp
    }

    /// A BYE in this dialog; returns the answer to it.
    pub(super) fn handle_bye(
        &mut self,
        now: Instant,
        bye: &Request,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Response {
        if !self.dialog.matches(bye) || self.phase == Phase::Done {
            return wire::reply(bye, 481, None, &ctx.cfg);
        }
        let seq = bye.cseq().seq;
        if seq < self.dialog.remote_cseq {
            return wire::reply(bye, 500, None, &ctx.cfg); // §12.2.2: out of order
        }
        self.dialog.remote_cseq = seq;
        match self.phase {
            Phase::Closing(_) | Phase::Done => {} // BYEs crossed: ours ends the call
            phase => {
                if phase == Phase::Early {
                    // A caller may BYE an early dialog: the INVITE then gets 487 (§15.1.2).
                    self.final_non2xx(now, 487, None, ctx, out);
                }
                self.pending_ack = None;
                self.hangup_after_ack = None;
                self.refuse_pending_reinvites(now, ctx, out);
                let reason = bye.headers.get(&HeaderName::Reason).map(str::to_owned);
                out.event(UaEvent::RemoteBye {
                    call: self.id,
                    reason,
                });
                self.end(EndReason::RemoteBye, out);
            }
        }
        wire::reply(bye, 200, None, &ctx.cfg)
    }

    /// A response whose top Via branch is one of this call's client transactions.
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        branch: &str,
        resp: &Response,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        if let Some(bye) = self.bye.as_mut().filter(|b| b.branch == branch) {
            if bye.tx.handle_response(resp.status, now) && resp.status >= 200 {
                tracing::debug!(call = %self.id, status = resp.status, "BYE answered");
                self.bye_finished(Some(resp.status), out);
            }
            return;
        }
        self.handle_reinvite_response(now, branch, resp, ctx, out);
    }

    /// Runs due timers: the INVITE transaction, ringing refresh and limit, 2xx
    /// retransmission, BYE and re-INVITE transactions.
    pub(super) fn handle_timeout(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        if self.tx.next_deadline().is_some_and(|d| d <= now) {
            for a in self.tx.handle_timeout(now) {
                if let TxAction::Retransmit(b) = a {
                    out.send(self.peer, b);
                }
            }
        }
        if self.phase == Phase::Early {
            if self.early_until <= now {
                tracing::info!(call = %self.id, "no final response in time, giving up");
                self.final_non2xx(now, 480, None, ctx, out);
                self.end(EndReason::RingTimeout, out);
            } else if let Some(at) = self.refresh_at.filter(|t| *t <= now) {
                if let Some(b) = &self.ringing {
                    out.send(self.peer, b.clone());
                }
                self.refresh_at = Some(at.max(now) + PROVISIONAL_REFRESH);
            }
        }
        self.ack_timeout(now, ctx, out);
        self.bye_timeout(now, out);
        self.reinvite_timeouts(now, ctx, out);
    }

    /// Retransmits the pending 2xx, or gives up on its ACK.
    fn ack_timeout(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        let Some(p) = &mut self.pending_ack else {
            return;
        };
        if p.give_up_at <= now {
            // §13.3.1.4: no ACK within 64*T1: the dialog is confirmed, then ended with BYE.
            tracing::info!(call = %self.id, "no ACK for our 2xx, ending the call");
            self.pending_ack = None;
            if matches!(self.phase, Phase::Answered | Phase::Confirmed) {
                let reason = self.hangup_after_ack.take().flatten();
                self.refuse_pending_reinvites(now, ctx, out);
                self.end(EndReason::NoAck, out);
                self.send_bye(now, reason, ctx, out);
            }
        } else if p.next_at <= now {
            out.send(p.peer, p.bytes.clone());
            p.interval = (p.interval * 2).min(ctx.cfg.timers.t2);
            p.next_at = now + p.interval;
        }
    }

    /// Runs the BYE transaction's timers.
    fn bye_timeout(&mut self, now: Instant, out: &mut Outbox) {
        let Some(bye) = &mut self.bye else {
            return;
        };
        if bye.tx.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let to = bye.to;
        for a in bye.tx.handle_timeout(now) {
            match a {
                TxAction::Retransmit(b) => out.send(to, b),
                TxAction::Timeout => {
                    tracing::debug!(call = %self.id, "BYE timed out");
                    self.bye_finished(None, out);
                }
                TxAction::Terminated => {}
            }
        }
        if let Some(bye) = self
            .bye
            .take_if(|b| b.tx.state() == sip_core::transaction::ClientState::Terminated)
        {
            out.index.push(IndexOp::DropBranch(bye.branch));
        }
    }

    /// Our BYE got its final response (or none): report the end if it was pending.
    fn bye_finished(&mut self, status: Option<u16>, out: &mut Outbox) {
        if let Phase::Closing(reason) = self.phase {
            let reason = match reason {
                EndReason::LocalBye { .. } => EndReason::LocalBye { status },
                other => other,
            };
            self.end(reason, out);
        }
    }

    /// Sends a BYE in the dialog (once).
    pub(super) fn send_bye(
        &mut self,
        now: Instant,
        reason: Option<String>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        if self.bye.is_some() {
            return;
        }
        let mut bye = Outgoing::request(&mut self.dialog, Method::Bye, self.peer, ctx);
        if let Some(r) = reason {
            bye.request.headers.push(HeaderName::Reason, r);
        }
        let bytes = Bytes::from(bye.request.to_bytes());
        out.send(bye.hop, bytes.clone());
        tracing::debug!(call = %self.id, hop = %bye.hop, "BYE sent");
        out.index.push(IndexOp::AddBranch(bye.branch.clone()));
        self.bye = Some(OutBye {
            branch: bye.branch,
            tx: ClientTx::new(false, ctx.cfg.tls, bytes, ctx.cfg.timers, now),
            to: bye.hop,
        });
    }

    /// Marks the call over and reports it (once).
    pub(super) fn end(&mut self, reason: EndReason, out: &mut Outbox) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        self.ringing = None;
        self.refresh_at = None;
        out.ended(self.id, reason);
    }

    /// Sends a final non-2xx response to the INVITE, with a `Reason` if given.
    fn final_non2xx(
        &mut self,
        now: Instant,
        status: u16,
        reason: Option<String>,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        let mut resp = self.invite_response(status, ctx);
        if let Some(r) = reason {
            resp.headers.push(HeaderName::Reason, r);
        }
        self.send_invite_response(now, &resp, out);
    }

    /// A response to the initial INVITE; 101..=299 carry Record-Route and Contact (§12.1.1),
    /// 2xx also Allow.
    fn invite_response(&self, status: u16, ctx: &Ctx) -> Response {
        let mut r = wire::reply(&self.invite, status, Some(&self.dialog.local_tag), &ctx.cfg);
        if (101..300).contains(&status) {
            for rr in &self.dialog.route_set {
                r.headers.push(HeaderName::RecordRoute, rr.clone());
            }
            r.headers.push(HeaderName::Contact, ctx.contact.clone());
        }
        if (200..300).contains(&status) {
            r.headers.push(HeaderName::Allow, wire::ALLOW);
        }
        r
    }

    /// A 180 or 200 to the still ringing INVITE (`op` names the command refused otherwise),
    /// with the exchange's `extra` headers.
    fn early_response(
        &self,
        status: u16,
        extra: Vec<(HeaderName, String)>,
        op: &'static str,
        ctx: &Ctx,
    ) -> Result<Response, UaError> {
        self.expect_phase(Phase::Early, op)?;
        let mut resp = self.invite_response(status, ctx);
        for (name, value) in extra {
            resp.headers.push(name, value);
        }
        Ok(resp)
    }

    /// Sends a response to the initial INVITE through its transaction; returns the bytes
    /// sent, if the transaction let it go.
    fn send_invite_response(
        &mut self,
        now: Instant,
        resp: &Response,
        out: &mut Outbox,
    ) -> Option<Bytes> {
        let bytes = Bytes::from(resp.to_bytes());
        self.tx
            .send_response(resp.status, bytes.clone(), now)
            .then(|| {
                out.send(self.peer, bytes.clone());
                bytes
            })
    }

    /// Errors unless the call is in `phase`.
    pub(super) fn expect_phase(&self, phase: Phase, op: &'static str) -> Result<(), UaError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(UaError::InvalidState { call: self.id, op })
        }
    }
}

/// Puts `sdp` in a response (or request) body with its Content-Type; no header when empty.
pub(super) fn set_sdp(resp: &mut Response, sdp: Bytes) {
    if !sdp.is_empty() {
        resp.headers
            .push(HeaderName::ContentType, "application/sdp");
    }
    resp.body = sdp;
}
