//! One incoming call: the INVITE server transaction, the 2xx retransmission until the ACK
//! (RFC 3261 §13.3.1.4), CANCEL (§9.2), BYE (§15.1.2), re-INVITE (§14.2), and the trust
//! proof (SPEC R14).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::dialog::Dialog;
use sip_core::message::{HeaderName, Method, Request, Response};
use sip_core::transaction::{ServerState, ServerTx, TxAction};

use crate::agent::{ALLOW, Ctx, Outbox, reply};
use crate::dialog::{self, ByeTx};
use crate::{PhoneEvent, Prover, ids, sdp};

/// How long a call may ring before the phone gives up with 480 (the proxy's ring timeout
/// normally CANCELs it long before).
const MAX_RING: Duration = Duration::from_secs(180);
/// Longest `Trust-Proof` value accepted from the prover.
const MAX_PROOF_LEN: usize = 1024;

/// The challenge header on the INVITE.
fn trust_challenge() -> HeaderName {
    HeaderName::Other("Trust-Challenge".to_owned())
}

/// The proof header on the 18x/2xx.
fn trust_proof() -> HeaderName {
    HeaderName::Other("Trust-Proof".to_owned())
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// 180 sent, waiting for the user (or `answer_after`).
    Ringing,
    /// 200 sent, waiting for the ACK.
    Answered,
    /// ACK received.
    Confirmed,
    /// Over (the entry stays until its transactions have finished).
    Ended,
}

/// A 2xx being retransmitted until its ACK comes.
#[derive(Debug)]
struct PendingAck {
    /// CSeq of the INVITE (or re-INVITE) it answers.
    cseq: u32,
    /// That INVITE's branch, to recognise its retransmissions.
    branch: String,
    peer: SocketAddr,
    bytes: Bytes,
    next_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

/// One incoming call.
#[derive(Debug)]
pub(crate) struct Call {
    /// The initial INVITE, to build its responses from.
    invite: Request,
    /// Where the INVITE came from: its responses go there.
    peer: SocketAddr,
    branch: String,
    dialog: Dialog,
    tx: ServerTx,
    proof: Option<String>,
    state: State,
    answer_at: Option<Instant>,
    ring_until: Instant,
    pending_ack: Option<PendingAck>,
    /// The user hung up before the ACK: send BYE when it comes (§15).
    bye_after_ack: bool,
}

impl Call {
    /// Accepts a new INVITE: asks the prover, sends 180 Ringing, reports the call. On
    /// refusal returns the status to answer it with.
    pub(crate) fn start(
        now: Instant,
        peer: SocketAddr,
        invite: &Request,
        branch: String,
        ctx: &Ctx,
        prover: &mut dyn Prover,
        out: &mut Outbox,
    ) -> Result<Self, u16> {
        if let Some(status) = check_offer(invite) {
            return Err(status);
        }
        // §8.1.1.8: an INVITE must carry the Contact that becomes our remote target.
        let (Some(dialog), Some(from)) = (Dialog::uas(invite, ids::tag(), 0), invite.from()) else {
            return Err(400);
        };
        let call_id = dialog.call_id.clone();

        let challenge = invite.headers.get(&trust_challenge());
        let mut proof_error = None;
        let proof = challenge.and_then(|c| match prover.prove(c, &call_id, &branch) {
            Ok(p) if is_header_safe(&p) => Some(p),
            Ok(_) => {
                proof_error = Some("the prover returned a malformed proof".to_owned());
                None
            }
            Err(e) => {
                proof_error = Some(e);
                None
            }
        });
        let challenged = challenge.is_some();

        let mut call = Self {
            invite: invite.clone(),
            peer,
            branch,
            dialog,
            tx: ServerTx::new(true, ctx.reliable(), ctx.cfg.timers),
            proof,
            state: State::Ringing,
            answer_at: ctx.cfg.answer_after.map(|d| now + d),
            ring_until: now + MAX_RING,
            pending_ack: None,
            bye_after_ack: false,
        };
        let ringing = call.invite_response(180, ctx);
        call.send_final_or_provisional(now, &ringing, out);
        let from = match from.display {
            Some(d) => format!("{d} <{}>", from.uri),
            None => from.uri.to_string(),
        };
        tracing::info!(%call_id, challenged, proof = call.proof.is_some(), "incoming call ringing");
        out.event(PhoneEvent::Ringing {
            call_id: call_id.clone(),
            from,
            challenged,
        });
        if let Some(reason) = proof_error {
            tracing::warn!(%call_id, %reason, "could not answer the trust challenge");
            out.event(PhoneEvent::ProofFailed { call_id, reason });
        }
        Ok(call)
    }

    /// The Call-ID.
    pub(crate) fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// The initial INVITE's top Via branch.
    pub(crate) fn branch(&self) -> &str {
        &self.branch
    }

    /// Whether the call rings (can be answered).
    pub(crate) fn is_ringing(&self) -> bool {
        self.state == State::Ringing
    }

    /// Whether the call is over for the user.
    pub(crate) fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Whether the entry can go: over, no 2xx pending, INVITE transaction finished.
    pub(crate) fn is_finished(&self) -> bool {
        self.state == State::Ended
            && self.pending_ack.is_none()
            && self.tx.state() == ServerState::Terminated
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ringing = (self.state == State::Ringing).then_some(self.ring_until);
        let answer = self.answer_at.filter(|_| self.state == State::Ringing);
        let ack = self
            .pending_ack
            .as_ref()
            .map(|p| p.next_at.min(p.give_up_at));
        [self.tx.next_deadline(), ringing, answer, ack]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs due timers: INVITE transaction, auto-answer, ring limit, 2xx retransmission.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        ctx: &Ctx,
        byes: &mut HashMap<String, ByeTx>,
        out: &mut Outbox,
    ) {
        if self.tx.next_deadline().is_some_and(|d| d <= now) {
            for a in self.tx.handle_timeout(now) {
                if let TxAction::Retransmit(b) = a {
                    out.send(self.peer, b);
                }
            }
        }
        if self.state == State::Ringing && self.answer_at.is_some_and(|t| t <= now) {
            self.answer(now, ctx, out);
        }
        if self.state == State::Ringing && self.ring_until <= now {
            tracing::info!(call_id = %self.dialog.call_id, "ringing too long, giving up");
            self.hangup(now, 480, ctx, byes, out);
        }
        let Some(p) = &mut self.pending_ack else {
            return;
        };
        if p.give_up_at <= now {
            // §13.3.1.4: no ACK within 64*T1: the dialog is confirmed, then ended with BYE.
            tracing::info!(call_id = %self.dialog.call_id, "no ACK for our 200, ending the call");
            self.pending_ack = None;
            self.bye_after_ack = false;
            self.end(false, out);
            self.send_bye(now, ctx, byes, out);
        } else if p.next_at <= now {
            out.send(p.peer, p.bytes.clone());
            p.interval = (p.interval * 2).min(ctx.cfg.timers.t2);
            p.next_at = now + p.interval;
        }
    }

    /// Sends the 200 OK with the SDP and the proof.
    pub(crate) fn answer(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        if self.state != State::Ringing {
            return;
        }
        let ok = self.invite_response(200, ctx);
        let bytes = Bytes::from(ok.to_bytes());
        if !self.tx.send_response(200, bytes.clone(), now) {
            return;
        }
        out.send(self.peer, bytes.clone());
        let t1 = ctx.cfg.timers.t1;
        self.pending_ack = Some(PendingAck {
            cseq: self.invite.cseq().seq,
            branch: self.branch.clone(),
            peer: self.peer,
            bytes,
            next_at: now + t1,
            interval: t1,
            give_up_at: now + ctx.cfg.timers.timeout(),
        });
        self.state = State::Answered;
        self.answer_at = None;
        tracing::info!(call_id = %self.dialog.call_id, "answered");
        out.event(PhoneEvent::Answered {
            call_id: self.dialog.call_id.clone(),
        });
    }

    /// The user (or shutdown, or the ring limit) ends the call: a ringing call is refused
    /// with `status`, a connected one gets a BYE, an answered one a BYE once its ACK came.
    pub(crate) fn hangup(
        &mut self,
        now: Instant,
        status: u16,
        ctx: &Ctx,
        byes: &mut HashMap<String, ByeTx>,
        out: &mut Outbox,
    ) {
        match self.state {
            State::Ringing => {
                let resp = self.invite_response(status, ctx);
                self.send_final_or_provisional(now, &resp, out);
            }
            State::Answered => self.bye_after_ack = true,
            State::Confirmed => self.send_bye(now, ctx, byes, out),
            State::Ended => return,
        }
        self.end(false, out);
    }

    /// A retransmission of the initial INVITE: resend the last response.
    pub(crate) fn handle_invite_retransmission(&self, from: SocketAddr, out: &mut Outbox) {
        match &self.pending_ack {
            Some(p) if p.branch == self.branch => out.send(p.peer, p.bytes.clone()),
            _ => {
                if let Some(b) = self.tx.handle_retransmission() {
                    out.send(from, b);
                }
            }
        }
    }

    /// An ACK for this Call-ID.
    pub(crate) fn handle_ack(
        &mut self,
        now: Instant,
        ack: &Request,
        branch: &str,
        ctx: &Ctx,
        byes: &mut HashMap<String, ByeTx>,
        out: &mut Outbox,
    ) {
        if !self.dialog.matches(ack) {
            return;
        }
        // ACK for a non-2xx final response: same branch, the transaction's (§17.2.1).
        if branch == self.branch && self.tx.state() == ServerState::Completed {
            self.tx.handle_ack(now);
            return;
        }
        if self
            .pending_ack
            .as_ref()
            .is_some_and(|p| p.cseq == ack.cseq().seq)
        {
            self.pending_ack = None;
            if self.state == State::Answered {
                self.state = State::Confirmed;
                tracing::debug!(call_id = %self.dialog.call_id, "ACK received, call connected");
            }
            if self.bye_after_ack {
                self.bye_after_ack = false;
                self.send_bye(now, ctx, byes, out);
            }
        }
    }

    /// A CANCEL matching the INVITE's branch; returns the response to the CANCEL.
    pub(crate) fn handle_cancel(
        &mut self,
        now: Instant,
        cancel: &Request,
        out: &mut Outbox,
    ) -> Response {
        let resp = reply(cancel, 200, Some(&self.dialog.local_tag));
        if self.state == State::Ringing {
            let terminated = reply(&self.invite, 487, Some(&self.dialog.local_tag));
            self.send_final_or_provisional(now, &terminated, out);
            let reason = cancel.headers.get(&HeaderName::Reason).map(str::to_owned);
            tracing::info!(call_id = %self.dialog.call_id, reason = reason.as_deref().unwrap_or("-"), "call cancelled");
            self.state = State::Ended;
            out.event(PhoneEvent::Cancelled {
                call_id: self.dialog.call_id.clone(),
                reason,
            });
        }
        resp
    }

    /// A BYE for this Call-ID; returns the response.
    pub(crate) fn handle_bye(
        &mut self,
        now: Instant,
        bye: &Request,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> Response {
        if !self.dialog.matches(bye) {
            return reply(bye, 481, None);
        }
        let seq = bye.cseq().seq;
        if seq < self.dialog.remote_cseq {
            return reply(bye, 500, None);
        }
        self.dialog.remote_cseq = seq;
        if self.state == State::Ringing {
            // BYE in the early dialog: the INVITE ends with 487 (§15.1.2).
            let terminated = self.invite_response(487, ctx);
            self.send_final_or_provisional(now, &terminated, out);
        }
        self.pending_ack = None;
        self.bye_after_ack = false;
        self.end(true, out);
        reply(bye, 200, None)
    }

    /// An INVITE inside this dialog (To tag set).
    pub(crate) fn handle_reinvite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        req: &Request,
        branch: &str,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        let mut refuse = |status| out.send(from, Bytes::from(reply(req, status, None).to_bytes()));
        if !self.dialog.matches(req) || self.state == State::Ended {
            refuse(481);
            return;
        }
        if let Some(p) = self.pending_ack.as_ref().filter(|p| p.branch == branch) {
            out.send(p.peer, p.bytes.clone());
            return;
        }
        let seq = req.cseq().seq;
        if seq == self.dialog.remote_cseq {
            return; // a late retransmission of one already answered and ACKed
        }
        if seq < self.dialog.remote_cseq {
            refuse(500);
            return;
        }
        if self.state != State::Confirmed {
            refuse(491);
            return;
        }
        if let Some(status) = check_offer(req) {
            refuse(status);
            return;
        }
        self.dialog.remote_cseq = seq;
        self.dialog.refresh_target(&req.headers); // target refresh (§12.2.2)
        let mut ok = reply(req, 200, None);
        self.add_session(&mut ok, ctx);
        let bytes = Bytes::from(ok.to_bytes());
        out.send(from, bytes.clone());
        let t1 = ctx.cfg.timers.t1;
        self.pending_ack = Some(PendingAck {
            cseq: seq,
            branch: branch.to_owned(),
            peer: from,
            bytes,
            next_at: now + t1,
            interval: t1,
            give_up_at: now + ctx.cfg.timers.timeout(),
        });
    }

    /// A response to the initial INVITE; 1xx/2xx carry Record-Route, Contact and the proof.
    fn invite_response(&self, status: u16, ctx: &Ctx) -> Response {
        let mut r = reply(&self.invite, status, Some(&self.dialog.local_tag));
        if (101..300).contains(&status) {
            if !r.headers.contains(&HeaderName::RecordRoute) {
                for rr in &self.dialog.route_set {
                    r.headers.push(HeaderName::RecordRoute, rr.clone());
                }
            }
            if let Some(p) = &self.proof {
                r.headers.push(trust_proof(), p.clone());
            }
        }
        if status == 200 {
            self.add_session(&mut r, ctx);
        } else if (101..300).contains(&status) {
            r.headers.push(HeaderName::Contact, ctx.contact.clone());
        }
        r
    }

    /// Contact, Allow and the SDP of a 200 to an (re-)INVITE.
    fn add_session(&self, r: &mut Response, ctx: &Ctx) {
        r.headers.push(HeaderName::Contact, ctx.contact.clone());
        r.headers.push(HeaderName::Allow, ALLOW);
        r.headers.push(HeaderName::ContentType, "application/sdp");
        r.body = sdp::session(ctx.addr.ip(), ctx.media_port, ctx.sdp_session);
    }

    /// Sends a non-2xx response to the initial INVITE through its transaction.
    fn send_final_or_provisional(&mut self, now: Instant, resp: &Response, out: &mut Outbox) {
        let bytes = Bytes::from(resp.to_bytes());
        if self.tx.send_response(resp.status, bytes.clone(), now) {
            out.send(self.peer, bytes);
        }
    }

    fn send_bye(
        &mut self,
        now: Instant,
        ctx: &Ctx,
        byes: &mut HashMap<String, ByeTx>,
        out: &mut Outbox,
    ) {
        let (req, branch, hop) = dialog::request(&mut self.dialog, Method::Bye, ctx);
        let bytes = Bytes::from(req.to_bytes());
        out.send(hop, bytes.clone());
        tracing::debug!(call_id = %self.dialog.call_id, %hop, "BYE sent");
        byes.insert(
            branch,
            ByeTx {
                tx: sip_core::transaction::ClientTx::new(
                    false,
                    ctx.reliable(),
                    bytes,
                    ctx.cfg.timers,
                    now,
                ),
                to: hop,
                call_id: self.dialog.call_id.clone(),
            },
        );
    }

    /// Marks the call over and reports it once.
    fn end(&mut self, by_remote: bool, out: &mut Outbox) {
        if self.state == State::Ended {
            return;
        }
        self.state = State::Ended;
        tracing::info!(call_id = %self.dialog.call_id, by_remote, "call ended");
        out.event(PhoneEvent::Ended {
            call_id: self.dialog.call_id.clone(),
            by_remote,
        });
    }
}

/// The status to refuse an offer with: 415 for a body that is not SDP, 488 for SDP without
/// PCMU audio; `None` when acceptable (no body: the phone offers in its 200).
fn check_offer(req: &Request) -> Option<u16> {
    if req.body.is_empty() {
        return None;
    }
    let is_sdp = req.headers.get(&HeaderName::ContentType).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/sdp"))
    });
    if !is_sdp {
        return Some(415);
    }
    (!sdp::offer_has_pcmu(&req.body)).then_some(488)
}

/// Whether a prover's answer can be a header value as is.
fn is_header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_PROOF_LEN && v.bytes().all(|c| (0x20..0x7f).contains(&c))
}
