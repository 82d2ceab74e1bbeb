//! The gateway's trunk side: a SIP user agent (UAS of incoming calls, UAC inside their
//! dialogs) toward trustring's forking proxy, as a Sans-IO state machine.
//!
//! # Why Sans-IO
//! Like `sip_core` (and `quinn-proto`, `str0m`), [`TrunkUa`] performs no IO and reads no
//! clock: the driver hands it datagrams, commands and the current [`Instant`], and drains
//! datagrams to send and [`UaEvent`]s. So every retransmission and timeout is testable in
//! simulated time (see `tests/trunk_ua.rs`), and the tokio runtime that owns the UDP socket
//! stays free of SIP logic.
//!
//! Contract: after each [`TrunkUa::handle_datagram`], [`TrunkUa::handle_timeout`] (call it
//! when [`TrunkUa::poll_timeout`] has come) or command, drain [`TrunkUa::poll_transmit`] and
//! [`TrunkUa::poll_event`], then sleep until the new [`TrunkUa::poll_timeout`].
//!
//! # What it does (RFC 3261 sections)
//! - A new INVITE (no To tag) gets an INVITE server transaction (§17.2.1) and 100 Trying at
//!   once; the exchange is told ([`UaEvent::Incoming`]) and answers with [`TrunkUa::ring`]
//!   (180 with our To tag: the early dialog, §12.1.1), [`TrunkUa::answer`] (200 with SDP,
//!   retransmitted until the ACK, §13.3.1.4) or [`TrunkUa::reject`]. Retransmitted INVITEs
//!   are absorbed by the transaction. While ringing, the 180 is repeated every minute
//!   (§13.3.1.1).
//! - CANCEL (§9.2): 200 to the CANCEL, 487 to the INVITE. BYE (§15.1.2): 200, in either
//!   phase; our own BYE follows the route set with loose routing (§12.2.1.1).
//! - Re-INVITE in both directions (§14), with 491 on glare and 500 with Retry-After on
//!   overlap; ACK for 2xx end to end, for non-2xx hop by hop (§17.1.1.3).
//! - Out of dialog: OPTIONS 200 (§11.2), other methods 405 with Allow (§8.2.1), unknown
//!   dialogs 481 (§12.2.2), unsupported `Require` 420 (§8.2.2.3), unknown URI schemes 416,
//!   requests that do not parse 400 when a response can be formed, else dropped (§18.3).
//!   Non-INVITE retransmissions are absorbed by server transactions (§17.2.2).
//!
//! # Bounded state
//! At most [`DEFAULT_MAX_CALLS`] calls (changeable with [`TrunkUa::set_max_calls`]); more
//! INVITEs get 503 with Retry-After. A call's entry lives until its last transaction ends
//! (at most 64*T1 after `Ended`), an INVITE that never gets a final response is given up
//! after five minutes, and remembered non-INVITE transactions and finished INVITE keys are
//! capped and expire after 64*T1.
//!
//! # Not done
//! No PRACK/UPDATE (405), no session timers; an SDP answer in an ACK (after an offerless
//! INVITE) is not reported (the exchange refuses offerless INVITEs); merged requests (§8.2.2.2) are not
//! detected, on purpose: a subscriber with two lines on one gateway gets two INVITEs with
//! the same Call-ID, From tag and CSeq, which are two calls.

mod call;
mod dialog;
mod reinvite;
mod wire;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{HeaderName, Message, Method, Request, Response, parse};
use sip_core::transaction::{ServerTx, Timers};

use call::Call;
use wire::{Ctx, DialogKey, IndexOp, Outbox, TxKey};

/// Default limit on concurrent calls (ringing, up, or finishing).
pub const DEFAULT_MAX_CALLS: usize = 10_000;
/// Most non-INVITE server transactions remembered (to absorb retransmissions).
const MAX_SERVER_TXS: usize = 32_768;
/// Most finished INVITE transaction keys remembered (to absorb late retransmissions).
const MAX_TOMBSTONES: usize = 32_768;
/// Seconds a 503 for too many calls asks the proxy to wait.
const BUSY_RETRY_AFTER: &str = "5";

/// Configuration of a [`TrunkUa`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaConfig {
    /// The address advertised in Via and Contact (where the gateway's SIP listener is
    /// reachable from the proxy).
    pub local: SocketAddr,
    /// The trunk is SIP over TLS: Via `SIP/2.0/TLS` and a `transport=tls` Contact (so the
    /// proxy sends in-dialog requests over TLS too); else UDP.
    pub tls: bool,
    /// The RFC 3261 timers (T1, T2, T4).
    pub timers: Timers,
    /// The `User-Agent` / `Server` header value; empty for none.
    pub user_agent: String,
}

impl UaConfig {
    /// Default timers and a `trustring-gateway/VERSION` user agent.
    pub fn new(local: SocketAddr) -> Self {
        Self {
            local,
            tls: false,
            timers: Timers::default(),
            user_agent: concat!("trustring-gateway/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// The UA-local handle of one incoming call (its dialog). Never reused by one [`TrunkUa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call#{}", self.0)
    }
}

/// Something the exchange must know. For every `Incoming`, exactly one `Ended` follows, and
/// it is the call's last event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UaEvent {
    /// A new call. 100 Trying went out; answer with [`TrunkUa::ring`], [`TrunkUa::answer`]
    /// or [`TrunkUa::reject`].
    Incoming {
        /// The handle for commands.
        call: CallId,
        /// Where the INVITE came from (the proxy).
        source: SocketAddr,
        /// The Request-URI, e.g. `sip:+15551234567@gw.example.com;user=phone`.
        request_uri: String,
        /// The user part of the Request-URI, %-decoded, e.g. `+15551234567`.
        called_user: String,
        /// The From URI (no display name, no tag).
        from: String,
        /// The user part of the From URI, when it has one (the calling number).
        calling_user: Option<String>,
        /// The SIP Call-ID (the prover binds its proof to it).
        sip_call_id: String,
        /// The top Via branch of the INVITE (the prover binds to it too).
        branch: String,
        /// Every header as received (canonical names, one entry per list value), so the
        /// exchange can read `Trust-Challenge`, `Trunk-Auth`, etc.
        headers: Vec<(String, String)>,
        /// The SDP offer, if the INVITE carried one.
        offer: Option<Bytes>,
    },
    /// The caller cancelled before the answer; 200 (CANCEL) and 487 (INVITE) went out.
    Cancelled {
        /// The call.
        call: CallId,
        /// The CANCEL's `Reason` (RFC 3326), e.g. `SIP;cause=200;text="Call completed
        /// elsewhere"`.
        reason: Option<String>,
    },
    /// The ACK for our 200 arrived: the call is up.
    Confirmed {
        /// The call.
        call: CallId,
    },
    /// The far end sent BYE; the UA answered 200.
    RemoteBye {
        /// The call.
        call: CallId,
        /// The BYE's `Reason` (RFC 3326), if any.
        reason: Option<String>,
    },
    /// A re-INVITE from the far end: call [`TrunkUa::answer_reinvite`] (or
    /// [`TrunkUa::reject_reinvite`]) within 32*T1, or the UA refuses it with 500.
    RemoteReinvite {
        /// The call.
        call: CallId,
        /// The new offer, if any.
        offer: Option<Bytes>,
    },
    /// Our re-INVITE ([`TrunkUa::reinvite`]) finished. 491 means glare: retry after a random
    /// 2.1–4 s (RFC 3261 §14.1); 408 and 481 also end the call (an `Ended` follows).
    ReinviteDone {
        /// The call.
        call: CallId,
        /// The final status (408 when none came).
        status: u16,
        /// The SDP answer of a 2xx.
        answer: Option<Bytes>,
    },
    /// The call is over; commands on it fail from now on.
    Ended {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// We gave the INVITE this final non-2xx status ([`TrunkUa::reject`], or
    /// [`TrunkUa::hangup`] before the answer, which sends 480).
    Rejected {
        /// The status sent.
        status: u16,
    },
    /// The caller cancelled before the answer.
    Cancelled,
    /// The far end sent BYE.
    RemoteBye,
    /// Our BYE ([`TrunkUa::hangup`]) finished.
    LocalBye {
        /// Its final status, `None` when none came in 64*T1.
        status: Option<u16>,
    },
    /// Our 200 was never ACKed within 64*T1 (RFC 3261 §13.3.1.4); a BYE went out.
    NoAck,
    /// The INVITE got no final response from the exchange within five minutes; 480 went out.
    RingTimeout,
    /// Our re-INVITE got 408 or 481 (§12.2.1.2): the dialog is gone (after 408, a BYE was
    /// sent first).
    DialogFailed {
        /// That status.
        status: u16,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UaError {
    /// No such call, or it has already ended.
    #[error("no live call {0}")]
    UnknownCall(CallId),
    /// The call is not in a state where the command applies (e.g. answer after answer).
    #[error("{call} cannot {op} in its current state")]
    InvalidState {
        /// The call.
        call: CallId,
        /// What was asked.
        op: &'static str,
    },
    /// The status code does not fit the command (reject needs 300..=699).
    #[error("status {0} is not allowed here")]
    InvalidStatus(u16),
    /// A header given by the exchange is malformed, or one the UA writes itself.
    #[error("header {name:?} cannot be sent as given")]
    InvalidHeader {
        /// The header's name.
        name: String,
    },
}

/// Key of a non-INVITE server transaction: transaction key and method (§17.2.3).
type NistKey = (TxKey, String);

/// The gateway's trunk-side SIP user agent (one per gateway). See the module
/// docs for the contract.
#[derive(Debug)]
pub struct TrunkUa {
    ctx: Ctx,
    max_calls: usize,
    next_call: u64,
    calls: HashMap<CallId, Call>,
    /// Each call's next deadline, earliest first.
    schedule: BTreeSet<(Instant, CallId)>,
    /// INVITE server transactions (initial and re-INVITEs) by key.
    server_invites: HashMap<TxKey, CallId>,
    dialogs: HashMap<DialogKey, CallId>,
    /// Our client transactions (BYE, re-INVITE) by branch.
    client_txs: HashMap<String, CallId>,
    nists: HashMap<NistKey, (SocketAddr, ServerTx)>,
    /// Non-INVITE transactions in expiry order (they all answer at once, so FIFO).
    nist_expiry: VecDeque<(Instant, NistKey)>,
    /// Keys of INVITE transactions whose calls are gone.
    tombstones: HashSet<TxKey>,
    tombstone_expiry: VecDeque<(Instant, TxKey)>,
    out: Outbox,
}

impl TrunkUa {
    /// A UA with no calls. `now` is the start of its time line.
    pub fn new(cfg: UaConfig, now: Instant) -> Self {
        let _ = now;
        let contact = if cfg.tls {
            format!("<sip:{};transport=tls>", cfg.local)
        } else {
            format!("<sip:{}>", cfg.local)
        };
        Self {
            ctx: Ctx { cfg, contact },
            max_calls: DEFAULT_MAX_CALLS,
            next_call: 1,
            calls: HashMap::new(),
            schedule: BTreeSet::new(),
            server_invites: HashMap::new(),
            dialogs: HashMap::new(),
            client_txs: HashMap::new(),
            nists: HashMap::new(),
            nist_expiry: VecDeque::new(),
            tombstones: HashSet::new(),
            tombstone_expiry: VecDeque::new(),
            out: Outbox::default(),
        }
    }

    /// Changes the limit on concurrent calls (existing calls are kept).
    pub fn set_max_calls(&mut self, max_calls: usize) {
        self.max_calls = max_calls;
    }

    /// How many calls the UA holds (including ended ones whose transactions still run).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// A datagram arrived from `from`. Never panics: input that does not parse is answered
    /// 400 when a response can be formed, else dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match parse(data) {
            Ok(Message::Request(req)) => self.handle_request(now, from, req),
            Ok(Message::Response(resp)) => self.handle_response(now, &resp),
            Err(e) => {
                tracing::debug!(%from, len = data.len(), error = %e, "unparseable datagram");
                if let Some(mut resp) = e.response_with_to_tag(&wire::tag()) {
                    if !self.ctx.cfg.user_agent.is_empty() {
                        resp.headers
                            .push(HeaderName::Server, self.ctx.cfg.user_agent.clone());
                    }
                    self.out.send_response(from, &resp);
                }
            }
        }
    }

    /// Runs every timer due at `now`: retransmissions, transaction timeouts, cleanup.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<CallId> = self
            .schedule
            .range(..=(now, CallId(u64::MAX)))
            .map(|&(_, id)| id)
            .collect();
        for id in due {
            if let Some(call) = self.calls.get_mut(&id) {
                call.handle_timeout(now, &self.ctx, &mut self.out);
            }
            self.touch(id, now);
        }
        while self.nist_expiry.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, key)) = self.nist_expiry.pop_front() {
                self.nists.remove(&key);
            }
        }
        while self
            .tombstone_expiry
            .front()
            .is_some_and(|(t, _)| *t <= now)
        {
            if let Some((_, key)) = self.tombstone_expiry.pop_front() {
                self.tombstones.remove(&key);
            }
        }
    }

    /// When [`Self::handle_timeout`] must next be called; `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.schedule.first().map(|&(t, _)| t),
            self.nist_expiry.front().map(|&(t, _)| t),
            self.tombstone_expiry.front().map(|&(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram to send: destination and bytes.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.out.transmits.pop_front()
    }

    /// The next event for the exchange.
    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.out.events.pop_front()
    }

    /// Sends 180 Ringing (with our To tag: the early dialog) plus `extra` headers, e.g.
    /// `("Trust-Proof", proof)`. May be called again (a new 180 with new headers).
    pub fn ring(
        &mut self,
        call: CallId,
        now: Instant,
        extra: &[(&str, &str)],
    ) -> Result<(), UaError> {
        let extra = wire::check_extra(extra)?;
        self.with_call(call, now, |c, ctx, out| c.ring(now, extra, ctx, out))
    }

    /// Answers with 200 OK carrying `sdp` (application/sdp), Contact, Record-Route and
    /// `extra`; it is retransmitted until the ACK ([`UaEvent::Confirmed`]). Without an ACK
    /// in 64*T1 the call ends ([`EndReason::NoAck`]) with a BYE.
    pub fn answer(
        &mut self,
        call: CallId,
        now: Instant,
        sdp: Bytes,
        extra: &[(&str, &str)],
    ) -> Result<(), UaError> {
        let extra = wire::check_extra(extra)?;
        self.with_call(call, now, |c, ctx, out| c.answer(now, sdp, extra, ctx, out))
    }

    /// Refuses the unanswered call with a final `status` (300..=699, e.g. 486, 480, 488,
    /// 403) and an optional `Reason` value (RFC 3326, e.g. `Q.850;cause=17;text="User
    /// busy"`). [`UaEvent::Ended`] follows at once.
    pub fn reject(
        &mut self,
        call: CallId,
        now: Instant,
        status: u16,
        reason: Option<&str>,
    ) -> Result<(), UaError> {
        let reason = wire::check_reason(reason)?;
        self.with_call(call, now, |c, ctx, out| {
            c.reject(now, status, reason, ctx, out)
        })
    }

    /// Ends the call: BYE in the dialog (with `Reason` if given), [`UaEvent::Ended`] when
    /// the BYE transaction finishes. Answered but not yet ACKed: the BYE waits for the ACK
    /// (§15). Still ringing: 480 with the Reason, and `Ended` at once.
    pub fn hangup(
        &mut self,
        call: CallId,
        now: Instant,
        reason: Option<&str>,
    ) -> Result<(), UaError> {
        let reason = wire::check_reason(reason)?;
        self.with_call(call, now, |c, ctx, out| c.hangup(now, reason, ctx, out))
    }

    /// Sends a re-INVITE with `sdp` (hold/resume; the caller builds the SDP). The 2xx is
    /// ACKed; [`UaEvent::ReinviteDone`] reports the outcome. Fails while another INVITE
    /// transaction of the dialog is in progress (§14.1).
    pub fn reinvite(&mut self, call: CallId, now: Instant, sdp: Bytes) -> Result<(), UaError> {
        self.with_call(call, now, |c, ctx, out| c.reinvite(now, sdp, ctx, out))
    }

    /// Answers the far end's pending re-INVITE ([`UaEvent::RemoteReinvite`]) with 200 and
    /// `sdp`, retransmitted until its ACK.
    pub fn answer_reinvite(
        &mut self,
        call: CallId,
        now: Instant,
        sdp: Bytes,
    ) -> Result<(), UaError> {
        self.with_call(call, now, |c, ctx, out| {
            c.answer_reinvite(now, sdp, ctx, out)
        })
    }

    /// Refuses the far end's pending re-INVITE with `status` (300..=699, e.g. 488); the
    /// call continues with the old session.
    pub fn reject_reinvite(
        &mut self,
        call: CallId,
        now: Instant,
        status: u16,
    ) -> Result<(), UaError> {
        self.with_call(call, now, |c, ctx, out| {
            c.reject_reinvite(now, status, ctx, out)
        })
    }

    /// Runs a command on a live call, then reschedules it.
    fn with_call<T>(
        &mut self,
        id: CallId,
        now: Instant,
        f: impl FnOnce(&mut Call, &Ctx, &mut Outbox) -> Result<T, UaError>,
    ) -> Result<T, UaError> {
        let call = self
            .calls
            .get_mut(&id)
            .filter(|c| !c.is_over())
            .ok_or(UaError::UnknownCall(id))?;
        let result = f(call, &self.ctx, &mut self.out);
        self.touch(id, now);
        result
    }

    /// After anything touched call `id`: applies its index changes, reschedules it, and
    /// removes it once finished.
    fn touch(&mut self, id: CallId, now: Instant) {
        for op in std::mem::take(&mut self.out.index) {
            match op {
                IndexOp::AddBranch(b) => {
                    self.client_txs.insert(b, id);
                }
                IndexOp::DropBranch(b) => {
                    self.client_txs.remove(&b);
                }
                IndexOp::AddKey(k) => {
                    self.server_invites.insert(k, id);
                }
                IndexOp::DropKey(k) => {
                    self.server_invites.remove(&k);
                }
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let next = if call.is_finished() {
            None
        } else {
            call.next_deadline()
        };
        if next != call.scheduled {
            if let Some(old) = call.scheduled {
                self.schedule.remove(&(old, id));
            }
            if let Some(new) = next {
                self.schedule.insert((new, id));
            }
            call.scheduled = next;
        }
        if call.is_finished() {
            self.remove_call(id, now);
        }
    }

    /// Forgets a finished call and its index entries; its INVITE key is kept a while to
    /// absorb late retransmissions.
    fn remove_call(&mut self, id: CallId, now: Instant) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        tracing::debug!(call = %id, "call state freed");
        self.dialogs.remove(&call.dialog_key());
        let (keys, branches) = call.index_entries();
        for k in keys {
            self.server_invites.remove(&k);
        }
        for b in branches {
            self.client_txs.remove(&b);
        }
        if self.tombstone_expiry.len() >= MAX_TOMBSTONES
            && let Some((_, old)) = self.tombstone_expiry.pop_front()
        {
            self.tombstones.remove(&old);
        }
        if self.tombstones.insert(call.key.clone()) {
            let expiry = now + self.ctx.cfg.timers.timeout();
            self.tombstone_expiry.push_back((expiry, call.key));
        }
    }

    fn handle_response(&mut self, now: Instant, resp: &Response) {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(str::to_owned)) else {
            return;
        };
        let Some(&id) = self.client_txs.get(&branch) else {
            tracing::debug!(status = resp.status, "response matching no transaction");
            return;
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.handle_response(now, &branch, resp, &self.ctx, &mut self.out);
        }
        self.touch(id, now);
    }

    fn handle_request(&mut self, now: Instant, from: SocketAddr, req: Request) {
        let Some(via) = req.top_via() else {
            return; // `parse` guarantees a Via; nothing to answer to otherwise
        };
        let Some(branch) = via.branch().filter(|b| !b.is_empty()) else {
            if req.method != Method::Ack {
                self.stateless(from, &req, 400);
            }
            return;
        };
        let key = TxKey::new(branch, &via);
        match req.method {
            Method::Ack => self.handle_ack(now, &req, &key),
            Method::Invite => self.handle_invite(now, from, req, key),
            _ => self.handle_non_invite(now, from, &req, key),
        }
    }

    /// The call whose dialog a request (with a To tag) belongs to.
    fn dialog_of(&self, req: &Request) -> Option<CallId> {
        let to = req.to()?;
        let key = (req.call_id().to_owned(), to.tag()?.to_owned());
        self.dialogs.get(&key).copied()
    }

    fn handle_ack(&mut self, now: Instant, req: &Request, key: &TxKey) {
        let Some(id) = self
            .server_invites
            .get(key)
            .copied()
            .or_else(|| self.dialog_of(req))
        else {
            return; // an ACK for nothing we know (e.g. a stateless reject's): drop
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.handle_ack(now, req, key, &self.ctx, &mut self.out);
        }
        self.touch(id, now);
    }

    fn handle_invite(&mut self, now: Instant, from: SocketAddr, req: Request, key: TxKey) {
        if let Some(&id) = self.server_invites.get(&key) {
            if let Some(call) = self.calls.get(&id) {
                call.handle_invite_retransmission(&key, &mut self.out);
            }
            return;
        }
        if self.tombstones.contains(&key) {
            return; // a late retransmission of a call that is gone
        }
        if !wire::uri_supported(&req.uri) {
            self.stateless(from, &req, 416);
            return;
        }
        if !wire::required_options(&req).is_empty() {
            self.bad_extension(from, &req);
            return;
        }
        if req.to().is_some_and(|t| t.tag().is_some()) {
            let Some(id) = self.dialog_of(&req) else {
                self.stateless(from, &req, 481);
                return;
            };
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let refused =
                call.handle_reinvite(now, from, req.clone(), key, &self.ctx, &mut self.out);
            if let Err(Some(r)) = refused {
                let mut resp = wire::reply(&req, r.status, None, &self.ctx.cfg);
                if r.retry_after {
                    resp.headers
                        .push(wire::retry_after(), wire::random_below(11).to_string());
                }
                self.out.send_response(from, &resp);
            }
            self.touch(id, now);
            return;
        }
        if self.calls.len() >= self.max_calls {
            tracing::warn!(
                calls = self.calls.len(),
                "call limit reached, refusing INVITE"
            );
            let mut resp = wire::reply(&req, 503, Some(&wire::tag()), &self.ctx.cfg);
            resp.headers.push(wire::retry_after(), BUSY_RETRY_AFTER);
            self.out.send_response(from, &resp);
            return;
        }
        let id = CallId(self.next_call);
        match Call::start(
            id,
            now,
            from,
            req.clone(),
            key.clone(),
            &self.ctx,
            &mut self.out,
        ) {
            Ok(call) => {
                self.next_call += 1;
                self.dialogs.insert(call.dialog_key(), id);
                self.server_invites.insert(key, id);
                self.calls.insert(id, call);
                self.touch(id, now);
            }
            Err(status) => self.stateless(from, &req, status),
        }
    }

    fn handle_non_invite(&mut self, now: Instant, from: SocketAddr, req: &Request, key: TxKey) {
        let nkey = (key, req.method.as_str().to_owned());
        if let Some((peer, tx)) = self.nists.get(&nkey) {
            if let Some(b) = tx.handle_retransmission() {
                self.out.send(*peer, b);
            }
            return;
        }
        // Our answer goes before anything the handler sends (the 487 after a CANCEL's 200).
        let at = self.out.transmits.len();
        let mut touched = None;
        let cfg = &self.ctx.cfg;
        let resp = if !wire::uri_supported(&req.uri) {
            wire::reply(req, 416, Some(&wire::tag()), cfg)
        } else if req.method == Method::Cancel {
            match self.server_invites.get(&nkey.0).copied() {
                Some(id) => {
                    touched = Some(id);
                    match self.calls.get_mut(&id) {
                        Some(call) => {
                            call.handle_cancel(now, req, &nkey.0, &self.ctx, &mut self.out)
                        }
                        None => wire::reply(req, 481, Some(&wire::tag()), cfg),
                    }
                }
                None => wire::reply(req, 481, Some(&wire::tag()), cfg),
            }
        } else if !matches!(req.method, Method::Bye | Method::Options) {
            let mut r = wire::reply(req, 405, Some(&wire::tag()), cfg);
            r.headers.push(HeaderName::Allow, wire::ALLOW);
            r
        } else if !wire::required_options(req).is_empty() {
            bad_extension(req, cfg)
        } else if req.to().is_some_and(|t| t.tag().is_some()) {
            match (self.dialog_of(req), &req.method) {
                (Some(id), Method::Bye) => {
                    touched = Some(id);
                    match self.calls.get_mut(&id) {
                        Some(call) => call.handle_bye(now, req, &self.ctx, &mut self.out),
                        None => wire::reply(req, 481, None, cfg),
                    }
                }
                (Some(id), _) if self.calls.get(&id).is_some_and(|c| !c.is_over()) => {
                    options_ok(req, cfg)
                }
                _ => wire::reply(req, 481, None, cfg),
            }
        } else if req.method == Method::Options {
            options_ok(req, cfg)
        } else {
            wire::reply(req, 481, Some(&wire::tag()), cfg) // BYE outside any dialog
        };
        let bytes = Bytes::from(resp.to_bytes());
        self.out.transmits.insert(at, (from, bytes.clone()));
        if self.nists.len() < MAX_SERVER_TXS {
            let mut tx = ServerTx::new(false, self.ctx.cfg.tls, self.ctx.cfg.timers);
            tx.send_response(resp.status, bytes, now);
            if let Some(expiry) = tx.next_deadline() {
                self.nist_expiry.push_back((expiry, nkey.clone()));
                self.nists.insert(nkey, (from, tx));
            }
        }
        if let Some(id) = touched {
            self.touch(id, now);
        }
    }

    /// A stateless final response with a fresh To tag (RFC 3261 §8.2.6).
    fn stateless(&mut self, to: SocketAddr, req: &Request, status: u16) {
        let mut resp = wire::reply(req, status, Some(&wire::tag()), &self.ctx.cfg);
        if status == 415 {
            resp.headers
                .push(HeaderName::Other("Accept".into()), "application/sdp");
        }
        self.out.send_response(to, &resp);
    }

    fn bad_extension(&mut self, to: SocketAddr, req: &Request) {
        let resp = bad_extension(req, &self.ctx.cfg);
        self.out.send_response(to, &resp);
    }
}

/// 420 Bad Extension listing the options of `Require` (§8.2.2.3).
fn bad_extension(req: &Request, cfg: &UaConfig) -> Response {
    let mut r = wire::reply(req, 420, Some(&wire::tag()), cfg);
    r.headers.push(
        HeaderName::Unsupported,
        wire::required_options(req).join(", "),
    );
    r
}

/// 200 to OPTIONS, with what we accept (§11.2).
fn options_ok(req: &Request, cfg: &UaConfig) -> Response {
    let mut r = wire::reply(req, 200, Some(&wire::tag()), cfg);
    r.headers.push(HeaderName::Allow, wire::ALLOW);
    r.headers
        .push(HeaderName::Other("Accept".into()), "application/sdp");
    r
}
