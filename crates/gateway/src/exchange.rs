//! The exchange: the gateway's switching logic between the SIP trunk and the phone lines.
//!
//! One task owns all call state (no locks): the trunk's SIP user agent (`trunk_ua`, Sans-IO,
//! fed here with datagrams and timers), the attached lines by number, and every circuit.
//! A leg the server forked (`INVITE sip:+NUMBER@gw`) is admitted (`admission`), its SDP
//! negotiated (RFC 3264: our PSTN law if offered, the other G.711 law with transcoding, or
//! 488; SRTP with SDES keys when the caller offers `RTP/SAVP`, 488 when it offers SRTP with
//! no key we can use), and offered to the line as IAM with the trust challenge; ACM/ANM come back as
//! 180/200 with the line's proof. Releases map both ways after RFC 3398 (`pstn::cause`).
//! A line can also call another line's number directly (a PSTN call that never touches
//! SIP); the exchange switches it locally. Hold/retrieve (CPG) on a SIP call becomes a
//! re-INVITE with `a=sendonly` / `a=sendrecv` (call swap, R17).
//!
//! **Attach** (R29, `line_auth`): a connection is a line only once attached. Its ATT's
//! number is looked up with the server's trust authority (off this task); a phone's number
//! gets an attach challenge (ATC) that the line's zone must prove (ATP) before ATA; a number
//! no phone holds attaches only if listed as a plain line. Anything else before ATA (an IAM,
//! no proof, a wrong proof, a timeout) is ATR and the connection is closed: such a line gets
//! no IAM and places no call. An attached line is checked again before each call it dials,
//! every [`SWEEP_EVERY`], and when an INVITE's challenge names another device than its own.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use media::g711::Law;
use media::sdp::{self, AudioOffer, Direction, SdpError, SessionParams, Transport};
use media::srtp::MasterKey;
use pstn::cause::{Cause, cause_for_cancel, sip_status_for};
use pstn::msg::{Cic, Event, FRAME_LEN, Iam, Message, Number};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc};

use crate::admission::{Admission, Refusal, TrunkInvite};
use crate::bridge::{Bridge, IpSide, SrtpKeys};
use crate::config::GatewayConfig;
use crate::line_auth::{AttachLookup, AuthorityError, LineAuthority};
use crate::lines::{LineInput, LineTx};
use crate::records::{LegRecord, Recorder, unix_ms};
use crate::sip_tls::SipInput;
use crate::trunk_ua::{CallId, TrunkUa, UaEvent};

/// A circuit: one call on one line, named by (connection, CIC).
type CircuitKey = (u64, u16);

/// Every attached line is checked with the server this often (revocations, number changes).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// A connection must be attached within this (TLS done; ATT, ATC/ATP, ATA).
const ATTACH_DEADLINE: Duration = Duration::from_secs(20);
/// Most connections attaching at once; more are refused (cause 42).
const MAX_ATTACHING: usize = 64;
/// Most calls one line may have waiting for the server's check before they are switched.
const MAX_PENDING_DIALS: usize = 2;
/// Questions to the server's trust authority in flight at once.
const AUTHORITY_CONCURRENCY: usize = 8;
/// Most attaches one source address may start per minute (each costs the server a lookup
/// and a challenge); more are refused (cause 42) without asking it.
const ATTACHES_PER_MINUTE: usize = 60;
/// Source addresses whose attach times are remembered.
const ATTACH_SOURCES: usize = 4096;

/// An attached line.
struct Line {
    number: String,
    /// The phone whose zone proved its key at the attach; `None` for a plain PSTN line.
    device: Option<String>,
    tx: LineTx,
    /// Next even CIC the exchange seizes on this line.
    next_cic: u16,
}

/// A connection that has not attached yet.
struct Attaching {
    peer: SocketAddr,
    tx: LineTx,
    state: AttachState,
}

enum AttachState {
    /// Waiting for ATT.
    AwaitAtt,
    /// The server is asked about the number.
    Lookup { number: String },
    /// ATC sent; waiting for the line's ATP.
    AwaitProof {
        number: String,
        device_id: String,
        call_ref: String,
    },
    /// The server checks the proof.
    Verify { number: String, device_id: String },
}

/// Why an attached line is checked with the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recheck {
    /// Before switching the call it dials.
    Dial(CircuitKey),
    /// Periodically, or after an INVITE for its number named another device.
    Sweep,
}

/// An answer of the server's trust authority, back on the exchange's task.
pub(crate) enum AuthResult {
    Lookup {
        conn: u64,
        result: Result<AttachLookup, AuthorityError>,
    },
    Verify {
        conn: u64,
        result: Result<(), AuthorityError>,
    },
    Holder {
        conn: u64,
        number: String,
        why: Recheck,
        result: Result<Option<String>, AuthorityError>,
    },
}

/// Who is at the other end of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Far {
    /// A SIP call from the trunk.
    Sip(CallId),
    /// Another circuit (a direct PSTN call).
    Circuit(CircuitKey),
    /// Nobody any more: waiting for RLC.
    None,
}

struct Circuit {
    far: Far,
    answered: bool,
    /// The record of a direct call, kept by its originating circuit.
    record: Option<LegRecord>,
}

/// A SIP call on the trunk.
struct SipLeg {
    circuit: Option<CircuitKey>,
    offer: AudioOffer,
    offer_body: Bytes,
    ip_law: Law,
    payload_type: u8,
    /// The SDES keys when the caller offered SRTP (its line and ours); `None`: clear RTP.
    srtp: Option<SrtpKeys>,
    /// Seeds our RTP stream's SSRC, sequence number and timestamp (random, unrelated to
    /// anything in the SDP).
    rtp_seed: u64,
    /// The RTP port named in our SDP, until the bridge takes it.
    rtp: Option<UdpSocket>,
    rtp_port: u16,
    bridge: Option<Bridge>,
    answered: bool,
    session_id: u64,
    sdp_version: u64,
    record: LegRecord,
    /// The carrier's voicemail answers at this time.
    voicemail_at: Option<Instant>,
    /// The line gives up ringing at this time.
    ring_deadline: Option<Instant>,
    voicemail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Voicemail(CallId),
    Ring(CallId),
    /// The connection must have attached by now.
    Attach(u64),
    /// Check every attached line with the server.
    Sweep,
}

/// The exchange's state; see the module docs.
pub(crate) struct Exchange {
    cfg: GatewayConfig,
    ua: TrunkUa,
    sip: SipSocket,
    /// The server's live SIP over TLS connections: peer and write queue (see `sip_tls`).
    sip_conns: HashMap<u64, (SocketAddr, mpsc::Sender<Bytes>)>,
    admission: Admission,
    recorder: Recorder,
    lines: HashMap<u64, Line>,
    by_number: HashMap<String, u64>,
    attaching: HashMap<u64, Attaching>,
    /// Recent attach starts per source address (rate limit).
    attach_starts: HashMap<std::net::IpAddr, std::collections::VecDeque<Instant>>,
    /// Calls lines dialled, waiting for the server's check of the line.
    pending_dials: HashMap<CircuitKey, Iam>,
    authority: Arc<dyn LineAuthority>,
    auth_tx: mpsc::Sender<AuthResult>,
    auth_slots: Arc<Semaphore>,
    circuits: HashMap<CircuitKey, Circuit>,
    calls: HashMap<CallId, SipLeg>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_local: u64,
    metrics: Arc<crate::GatewayMetrics>,
}

/// How the trunk's SIP messages travel.
#[derive(Debug)]
pub(crate) enum SipSocket {
    /// Plain UDP (`--danger-plain-trunk`).
    Udp(Arc<UdpSocket>),
    /// SIP over TLS connections the server opened (`sip_tls`); their input arrives on the
    /// receiver given to [`Exchange::run`].
    Tls,
}

/// The next datagram, or never without a UDP socket.
async fn recv_udp(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The next input from the SIP connections, or never without them.
async fn recv_stream(rx: Option<&mut mpsc::Receiver<SipInput>>) -> Option<SipInput> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn q850_reason(cause: Cause) -> String {
    format!("Q.850;cause={};text=\"{}\"", cause.value(), cause.text())
}

fn cause_text(cause: Cause) -> String {
    format!("Q.850 cause {} ({})", cause.value(), cause.text())
}

impl Exchange {
    pub(crate) fn new(
        cfg: GatewayConfig,
        ua: TrunkUa,
        sip: SipSocket,
        recorder: Recorder,
        metrics: Arc<crate::GatewayMetrics>,
        auth_tx: mpsc::Sender<AuthResult>,
    ) -> Self {
        let admission = Admission::new(cfg.allow.clone(), cfg.trunk_secret.clone(), cfg.caps);
        let authority = cfg.authority.clone();
        Self {
            cfg,
            ua,
            sip,
            sip_conns: HashMap::new(),
            admission,
            recorder,
            lines: HashMap::new(),
            by_number: HashMap::new(),
            attaching: HashMap::new(),
            attach_starts: HashMap::new(),
            pending_dials: HashMap::new(),
            authority,
            auth_tx,
            auth_slots: Arc::new(Semaphore::new(AUTHORITY_CONCURRENCY)),
            circuits: HashMap::new(),
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            next_local: 0,
            metrics,
        }
    }

    /// Runs until `stop` fires; then writes the queued records.
    pub(crate) async fn run(
        mut self,
        mut lines: mpsc::Receiver<LineInput>,
        mut auth: mpsc::Receiver<AuthResult>,
        mut sip_streams: Option<mpsc::Receiver<SipInput>>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        self.timers
            .push(Reverse((Instant::now() + SWEEP_EVERY, Timer::Sweep)));
        let udp = match &self.sip {
            SipSocket::Udp(s) => Some(s.clone()),
            SipSocket::Tls => None,
        };
        let mut buf = vec![0u8; 65_535];
        loop {
            self.flush().await;
            self.metrics.set_calls(self.calls.len());
            let next = [self.ua.poll_timeout(), self.timers.peek().map(|t| t.0.0)]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = recv_udp(udp.as_deref(), &mut buf) => match r {
                    Ok((n, from)) => self.ua.handle_datagram(Instant::now(), from, &buf[..n]),
                    Err(e) => tracing::debug!(error = %e, "SIP receive error"),
                },
                Some(i) = recv_stream(sip_streams.as_mut()) => self.sip_input(i),
                input = lines.recv() => match input {
                    Some(i) => self.line_input(i),
                    None => break,
                },
                Some(answer) = auth.recv() => self.auth_result(answer),
                () = sleep => {
                    let now = Instant::now();
                    self.ua.handle_timeout(now);
                    self.fire_timers(now);
                }
                () = &mut stop => break,
            }
        }
        self.flush().await;
        self.recorder.close();
    }

    /// Sends what the UA queued and acts on its events, until both are empty.
    async fn flush(&mut self) {
        loop {
            let mut idle = true;
            while let Some((to, bytes)) = self.ua.poll_transmit() {
                idle = false;
                match &self.sip {
                    SipSocket::Udp(sock) => {
                        if let Err(e) = sock.send_to(&bytes, to).await {
                            tracing::debug!(%to, error = %e, "SIP send failed");
                        }
                    }
                    SipSocket::Tls => self.send_stream(to, bytes),
                }
            }
            while let Some(e) = self.ua.poll_event() {
                idle = false;
                self.ua_event(e);
            }
            if idle {
                return;
            }
        }
    }

    /// A SIP connection's news (see `sip_tls`).
    fn sip_input(&mut self, input: SipInput) {
        match input {
            SipInput::Opened { conn, peer, tx } => {
                self.sip_conns.insert(conn, (peer, tx));
            }
            SipInput::Message { conn, peer, data } => {
                if self.sip_conns.contains_key(&conn) {
                    self.ua.handle_datagram(Instant::now(), peer, &data);
                }
            }
            SipInput::Closed { conn } => {
                self.sip_conns.remove(&conn);
            }
        }
    }

    /// Queues `bytes` for the connection whose peer is `to` (a response goes back the way
    /// its request came), else for the newest connection (our own requests: the server is
    /// the only SIP peer, and the address its Record-Route names is its listener, not the
    /// connection's source). Never waits: a full queue closes the connection.
    fn send_stream(&mut self, to: SocketAddr, bytes: Bytes) {
        let conn = self
            .sip_conns
            .iter()
            .find(|(_, (peer, _))| *peer == to)
            .or_else(|| self.sip_conns.iter().max_by_key(|(id, _)| **id))
            .map(|(id, _)| *id);
        let Some(conn) = conn else {
            tracing::warn!(%to, "no SIP connection from the server: message not sent (the server dials the gateway)");
            return;
        };
        let full = match self.sip_conns.get(&conn) {
            Some((_, tx)) => matches!(tx.try_send(bytes), Err(mpsc::error::TrySendError::Full(_))),
            None => false,
        };
        if full {
            tracing::warn!(
                conn,
                "the server does not read the SIP trunk (queue full): closing the connection"
            );
            // Dropping the queue's sender ends the writer, and the connection with it.
            self.sip_conns.remove(&conn);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Voicemail(call) => {
                    if self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.voicemail_at == Some(at))
                    {
                        self.voicemail_answers(call, now);
                    }
                }
                Timer::Ring(call) => {
                    if self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.ring_deadline == Some(at) && !c.answered)
                    {
                        self.ring_timeout(call, now);
                    }
                }
                Timer::Attach(conn) => {
                    if self.attaching.contains_key(&conn) {
                        self.refuse(conn, Cause::RECOVERY_ON_TIMER_EXPIRY, "timeout");
                    }
                }
                Timer::Sweep => {
                    let lines: Vec<u64> = self.lines.keys().copied().collect();
                    for conn in lines {
                        self.recheck(conn, Recheck::Sweep);
                    }
                    self.timers.push(Reverse((now + SWEEP_EVERY, Timer::Sweep)));
                }
            }
        }
    }

    /// Writes a leg record, and counts its answered time against the number's daily cap.
    fn write_record(&mut self, mut r: LegRecord) {
        let now = unix_ms();
        r.end_ms = Some(now);
        if let Some(answer) = r.answer_ms
            && r.outcome == Some("answered")
        {
            self.admission.charge(&r.billing_entity, now, now - answer);
        }
        self.recorder.write(r);
    }

    /// The record of a trunk call refused before it reached a line: (Call-ID, From, number),
    /// billed to the number like every server leg.
    fn write_unconnected(
        &mut self,
        (call_id, from, number): (&str, &str, &str),
        outcome: &'static str,
        status: u16,
        cause: String,
    ) {
        let mut r = LegRecord::new(call_id.into(), from.into(), number.into(), number.into());
        r.outcome = Some(outcome);
        r.status = Some(status);
        r.cause = cause;
        self.write_record(r);
    }

    /// Answered time of `number`'s calls still up, ms (they count against its daily cap
    /// before they end).
    fn live_ms(&self, number: &str, now_ms: i64) -> i64 {
        self.calls
            .values()
            .filter(|c| c.answered && !c.voicemail && c.record.billing_entity == number)
            .filter_map(|c| c.record.answer_ms)
            .map(|a| (now_ms - a).max(0))
            .sum()
    }

    /// Counts the answered time of today's stored records (at start, so a restart does not
    /// reset the daily caps).
    pub(crate) fn preload_spend(&mut self, records: &[store::Cdr]) {
        for c in records {
            for leg in &c.legs {
                self.admission
                    .charge(&leg.billing_entity, c.end_ms, leg.billable_ms);
            }
        }
    }

    // ---- the SIP side -------------------------------------------------------------------

    fn ua_event(&mut self, e: UaEvent) {
        let now = Instant::now();
        match e {
            UaEvent::Incoming {
                call,
                source,
                called_user,
                from,
                sip_call_id,
                branch,
                headers,
                offer,
                ..
            } => self.incoming(
                call,
                source,
                &called_user,
                &from,
                &sip_call_id,
                &branch,
                &headers,
                offer,
                now,
            ),
            UaEvent::Cancelled { call, reason } => {
                let cause = cause_for_cancel(reason.as_deref());
                self.end_sip_leg(
                    call,
                    cause,
                    "caller",
                    Some(if cause == Cause::NON_SELECTED_USER_CLEARING {
                        "cancelled-elsewhere"
                    } else {
                        "cancelled"
                    }),
                    Some(487),
                );
            }
            UaEvent::RemoteBye { call, .. } => {
                // A BYE on an early dialog ends the call before an answer (the UA sent 487).
                let answered = self.calls.get(&call).is_some_and(|c| c.answered);
                let (outcome, status) = if answered {
                    (None, None)
                } else {
                    (Some("cancelled"), Some(487))
                };
                self.end_sip_leg(call, Cause::NORMAL_CLEARING, "caller", outcome, status);
            }
            UaEvent::RemoteReinvite { call, offer } => self.remote_reinvite(call, offer, now),
            UaEvent::ReinviteDone {
                call,
                status: 200..=299,
                answer: Some(answer),
            } => self.reinvite_answered(call, &answer),
            // Our BYE finished, or the 200 was never ACKed: release whatever is left.
            UaEvent::Ended { call, .. } if self.calls.contains_key(&call) => {
                self.end_sip_leg(call, Cause::NORMAL_CLEARING, "gateway", None, None);
            }
            // Confirmed (ACK), re-INVITE outcomes and late answers change nothing here.
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn incoming(
        &mut self,
        call: CallId,
        source: SocketAddr,
        number: &str,
        from: &str,
        sip_call_id: &str,
        branch: &str,
        headers: &[(String, String)],
        offer: Option<Bytes>,
        now: Instant,
    ) {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let challenge = header("Trust-Challenge");
        let inv = TrunkInvite {
            source: source.ip(),
            call_id: sip_call_id,
            branch,
            number,
            challenge,
            trunk_auth: header("Trunk-Auth"),
        };
        let now_ms = unix_ms();
        let live = self.live_ms(number, now_ms);
        if let Err(why) = self.admission.admit(&inv, now_ms, live) {
            tracing::warn!(%source, number, call_id = sip_call_id, reason = %why, "INVITE refused (toll-fraud check)");
            self.metrics.refused(why.kind());
            let reason = match why {
                Refusal::RateCap(_) | Refusal::SpendCap(_) => {
                    "Q.850;cause=29;text=\"Facility rejected\""
                }
                _ => "SIP;cause=403;text=\"Not an authorised trunk call\"",
            };
            let _ = self.ua.reject(call, now, 403, Some(reason));
            // Only a leg the server really sent (past the MAC) gets a durable record: anyone
            // can send the rest, and a record per packet would let them fill the disk.
            if matches!(
                why,
                Refusal::Replayed | Refusal::RateCap(_) | Refusal::SpendCap(_)
            ) {
                let cause = format!("refused: {why}");
                self.write_unconnected((sip_call_id, from, number), "refused", 403, cause);
            }
            return;
        }
        let Some(body) = offer else {
            // No offer in the INVITE: the server's legs always carry the caller's.
            let _ = self.ua.reject(call, now, 488, None);
            return;
        };
        let negotiated = sdp::parse_audio(&body)
            .and_then(|o| sdp::negotiate(&o, self.cfg.law).map(|law| (o, law)));
        let (offer, ip_law) = match negotiated {
            Ok(x) => x,
            Err(e) => {
                let what = if e == SdpError::NoUsableCrypto {
                    "no usable SRTP key"
                } else {
                    "no common codec"
                };
                tracing::info!(call_id = sip_call_id, error = %e, "{what}: 488");
                let _ = self.ua.reject(
                    call,
                    now,
                    488,
                    Some("Q.850;cause=65;text=\"Bearer capability not implemented\""),
                );
                let cause = format!("{what}: {e}");
                self.write_unconnected((sip_call_id, from, number), "failed", 488, cause);
                return;
            }
        };
        let Some(payload_type) = sdp::payload_type_for(&offer, ip_law) else {
            let _ = self.ua.reject(call, now, 488, None);
            return;
        };
        let srtp = match offer.crypto.first() {
            None => None,
            Some(theirs) => match fresh_key() {
                Some(key) => Some(SrtpKeys {
                    inbound: theirs.clone(),
                    outbound: theirs.answer(key),
                }),
                None => {
                    tracing::error!("the OS random number generator failed: no SRTP key");
                    let _ = self.ua.reject(call, now, 500, None);
                    return;
                }
            },
        };
        if let Some(k) = &srtp {
            self.metrics.srtp_call();
            let caller_hop = caller_transport(headers);
            // The keys are never logged; which suite and tag were chosen is.
            tracing::info!(
                call_id = sip_call_id,
                suite = k.outbound.suite.name(),
                tag = k.outbound.tag,
                caller_hop = caller_hop.as_deref().unwrap_or("-"),
                "SRTP negotiated (SDES)"
            );
            if !caller_hop.is_some_and(|t| t.eq_ignore_ascii_case("TLS")) {
                tracing::warn!(
                    call_id = sip_call_id,
                    "SDES keys came from a caller whose own hop is not TLS: whoever can read that hop can decrypt the call's media"
                );
            }
        }
        let rtp =
            match std::net::UdpSocket::bind(SocketAddr::new(self.cfg.media_ip, 0)).and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "no RTP port");
                    let _ = self.ua.reject(call, now, 503, None);
                    return;
                }
            };
        let rtp_port = rtp.local_addr().map_or(0, |a| a.port());
        // Offer the call only to a line whose zone proved the very device the server rings
        // (the challenge names it): after a number change or a revocation, a line still
        // attached with the number is not that phone.
        let rung = challenge.and_then(challenge_device);
        let line = self.by_number.get(number).copied().filter(|c| {
            let proved = self.lines.get(c).and_then(|l| l.device.as_deref());
            proved.is_some() && proved == rung
        });
        if line.is_none()
            && let Some(&stale) = self.by_number.get(number)
        {
            tracing::warn!(
                number,
                device = rung.unwrap_or("-"),
                "the line attached with this number is not the phone the server rings: not offered; checking it"
            );
            self.recheck(stale, Recheck::Sweep);
        }
        let device = line
            .and_then(|c| self.lines.get(&c))
            .and_then(|l| l.device.clone());
        let mut record = LegRecord::new(
            sip_call_id.into(),
            from.into(),
            number.into(),
            number.into(),
        );
        record.device = device;
        if ip_law != self.cfg.law {
            self.metrics.transcoded_call();
            tracing::info!(call_id = sip_call_id, ip = %ip_law.encoding_name(), pstn = %self.cfg.law.encoding_name(), "transcoding");
        }
        let leg = SipLeg {
            circuit: None,
            offer,
            offer_body: body,
            ip_law,
            payload_type,
            srtp,
            rtp_seed: rand::random(),
            rtp: Some(rtp),
            rtp_port,
            bridge: None,
            answered: false,
            session_id: rand::random::<u32>().into(),
            sdp_version: 1,
            record,
            voicemail_at: None,
            ring_deadline: None,
            voicemail: false,
        };
        self.calls.insert(call, leg);
        let Some(conn) = line else {
            tracing::info!(number, "number not attached");
            self.unreachable(call, Cause::SUBSCRIBER_ABSENT, now);
            return;
        };
        let Some(cic) = self.seize_cic(conn) else {
            self.unreachable(call, Cause::NO_CIRCUIT_AVAILABLE, now);
            return;
        };
        let Some(l) = self.lines.get(&conn) else {
            return;
        };
        let called = Number::new(number);
        let calling = from_number(from);
        let Ok(called) = called else {
            self.unreachable(call, Cause::UNALLOCATED_NUMBER, now);
            return;
        };
        let iam = Message::Iam(Iam {
            cic: Cic(cic),
            called,
            calling,
            challenge: challenge.map(str::to_owned),
            call_ref: Some(sip_call_id.to_owned()),
            branch: Some(branch.to_owned()),
        });
        l.tx.send(iam);
        self.circuits.insert(
            (conn, cic),
            Circuit {
                far: Far::Sip(call),
                answered: false,
                record: None,
            },
        );
        if let Some(c) = self.calls.get_mut(&call) {
            c.circuit = Some((conn, cic));
            c.record.rang_ms = Some(unix_ms());
            let at = now + self.cfg.ring_timeout;
            c.ring_deadline = Some(at);
            self.timers.push(Reverse((at, Timer::Ring(call))));
        }
        tracing::info!(number, cic, call_id = sip_call_id, "IAM sent");
    }

    /// The phone cannot take the call (`cause`): the carrier's voicemail answers if it is
    /// on, else the caller gets the mapped SIP status.
    fn unreachable(&mut self, call: CallId, cause: Cause, now: Instant) {
        if let Some(after) = self.cfg.voicemail_after
            && let Some(c) = self.calls.get_mut(&call)
        {
            let at = now + after;
            c.voicemail_at = Some(at);
            c.circuit = None;
            c.record.cause = cause_text(cause);
            self.timers.push(Reverse((at, Timer::Voicemail(call))));
            return;
        }
        let status = sip_status_for(cause);
        let _ = self.ua.reject(call, now, status, Some(&q850_reason(cause)));
        if let Some(mut c) = self.calls.remove(&call) {
            c.record.status = Some(status);
            c.record.outcome = Some(outcome_for(cause));
            c.record.cause = cause_text(cause);
            c.record.released_by = "callee";
            self.write_record(c.record);
        }
    }

    /// The simulated carrier voicemail picks up: 200 with SDP and no trust proof.
    fn voicemail_answers(&mut self, call: CallId, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.voicemail_at = None;
        c.voicemail = true;
        c.answered = true;
        c.record.answer_ms = Some(unix_ms());
        let sdp = answer_sdp(c, self.cfg.media_ip, Direction::SendRecv);
        tracing::info!(call_id = %c.record.call_id, "carrier voicemail answers (no trust proof)");
        let _ = self.ua.answer(call, now, sdp, &[]);
    }

    fn ring_timeout(&mut self, call: CallId, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.ring_deadline = None;
        c.record.cause = cause_text(Cause::NO_ANSWER);
        if let Some(key) = c.circuit.take() {
            self.release_circuit(key, Cause::NO_ANSWER);
        }
        if self.cfg.voicemail_after.is_some() {
            // The phone rang long enough: the carrier's voicemail takes it now.
            self.voicemail_answers(call, now);
        } else {
            self.unreachable(call, Cause::NO_ANSWER, now);
        }
    }

    fn remote_reinvite(&mut self, call: CallId, offer: Option<Bytes>, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let parsed = offer.as_deref().map(sdp::parse_audio);
        let hold = matches!(&parsed, Some(Ok(o)) if o.is_hold());
        match (parsed, offer) {
            (Some(Ok(o)), Some(body)) => {
                // The call's law must stay offered, and its transport stay what it is (no
                // falling back from SRTP to clear RTP mid-call, and no keys added to a clear
                // call): a re-offer that changes either is refused (488), the session goes
                // on as it was.
                let Some(pt) = sdp::payload_type_for(&o, c.ip_law) else {
                    let _ = self.ua.reject_reinvite(call, now, 488);
                    return;
                };
                if o.transport != transport_of(c) {
                    tracing::info!(call_id = %c.record.call_id, "re-INVITE changes RTP/SRTP: 488");
                    let _ = self.ua.reject_reinvite(call, now, 488);
                    return;
                }
                if let Some(k) = &c.srtp {
                    // A re-offer may carry new keys (RFC 4568 §7.1.4). Ours stay as they
                    // are if the offer still has our tag and suite, else ours are new too.
                    let theirs = o
                        .crypto
                        .iter()
                        .find(|t| t.tag == k.inbound.tag && t.suite == k.inbound.suite)
                        .or(o.crypto.first())
                        .cloned();
                    let Some(theirs) = theirs else {
                        let _ = self.ua.reject_reinvite(call, now, 488);
                        return;
                    };
                    let outbound =
                        if theirs.tag == k.outbound.tag && theirs.suite == k.outbound.suite {
                            k.outbound.clone()
                        } else {
                            let Some(key) = fresh_key() else {
                                let _ = self.ua.reject_reinvite(call, now, 500);
                                return;
                            };
                            theirs.answer(key)
                        };
                    c.srtp = Some(SrtpKeys {
                        inbound: theirs,
                        outbound,
                    });
                }
                c.payload_type = pt;
                c.offer = o;
                c.offer_body = body;
            }
            // An offer we cannot use (e.g. SRTP without a usable key): refused, the session
            // goes on as it was.
            (Some(Err(e)), _) => {
                tracing::info!(call_id = %c.record.call_id, error = %e, "re-INVITE offer refused: 488");
                let _ = self.ua.reject_reinvite(call, now, 488);
                return;
            }
            _ => {}
        }
        c.sdp_version += 1;
        let dir = if hold {
            Direction::RecvOnly
        } else {
            Direction::SendRecv
        };
        let sdp = answer_sdp(c, self.cfg.media_ip, dir);
        if let Some(b) = &c.bridge {
            b.held.store(hold, Ordering::Relaxed);
            b.update(ip_side(c));
        }
        let circuit = c.circuit;
        let _ = self.ua.answer_reinvite(call, now, sdp);
        if let Some(key) = circuit {
            let event = if hold {
                Event::RemoteHold
            } else {
                Event::RemoteRetrieval
            };
            self.send_line(
                key.0,
                Message::Cpg {
                    cic: Cic(key.1),
                    event,
                },
            );
        }
    }

    /// The caller answered our re-INVITE (hold/resume): its answer may move its media or,
    /// with SRTP, carry a new key for what it sends (RFC 4568 §7.1.4).
    fn reinvite_answered(&mut self, call: CallId, answer: &[u8]) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let a = match sdp::parse_audio(answer) {
            Ok(a) if a.transport == transport_of(c) => a,
            other => {
                // Nothing sensible to switch to: keep the media as it was.
                let error = other
                    .err()
                    .map_or("RTP/SRTP changed".into(), |e| e.to_string());
                tracing::warn!(call_id = %c.record.call_id, error, "unusable answer to our re-INVITE; media unchanged");
                return;
            }
        };
        if let Some(k) = &mut c.srtp {
            // Their line answering ours: our tag.
            match a.crypto.iter().find(|t| t.tag == k.outbound.tag) {
                Some(theirs) => k.inbound = theirs.clone(),
                None => {
                    tracing::warn!(call_id = %c.record.call_id, "answer to our re-INVITE without our crypto tag; media unchanged");
                    return;
                }
            }
        }
        if let Some(pt) = sdp::payload_type_for(&a, c.ip_law) {
            c.payload_type = pt;
        }
        c.offer.addr = a.addr;
        c.offer.port = a.port;
        if let Some(b) = &c.bridge {
            b.update(ip_side(c));
        }
    }

    /// Ends a SIP leg from the SIP side (CANCEL, BYE, or the dialog ending): releases its
    /// circuit and writes its record.
    fn end_sip_leg(
        &mut self,
        call: CallId,
        cause: Cause,
        released_by: &'static str,
        outcome: Option<&'static str>,
        status: Option<u16>,
    ) {
        let Some(mut c) = self.calls.remove(&call) else {
            return;
        };
        if let Some(key) = c.circuit.take() {
            self.release_circuit(key, cause);
        }
        let r = &mut c.record;
        if r.outcome.is_none() {
            r.outcome = Some(outcome.unwrap_or(if c.voicemail {
                "voicemail"
            } else if c.answered {
                "answered"
            } else {
                "failed"
            }));
        }
        if r.status.is_none() {
            r.status = status.or(c.answered.then_some(200));
        }
        if r.cause.is_empty() || c.answered {
            r.cause = cause_text(cause);
        }
        r.released_by = released_by;
        self.write_record(c.record);
    }

    // ---- the PSTN side ------------------------------------------------------------------

    fn send_line(&self, conn: u64, m: Message) {
        if let Some(l) = self.lines.get(&conn) {
            l.tx.send(m);
        }
    }

    /// Sends REL on a circuit we end; it is forgotten when the RLC comes.
    fn release_circuit(&mut self, key: CircuitKey, cause: Cause) {
        if let Some(c) = self.circuits.get_mut(&key) {
            c.far = Far::None;
            self.send_line(
                key.0,
                Message::Rel {
                    cic: Cic(key.1),
                    cause,
                },
            );
        }
    }

    fn line_input(&mut self, input: LineInput) {
        match input {
            LineInput::Opened { conn, peer, tx } => self.opened(conn, peer, tx),
            LineInput::Msg { conn, msg } => {
                if self.lines.contains_key(&conn) {
                    self.line_msg(conn, msg);
                } else if self.attaching.contains_key(&conn) {
                    self.attach_msg(conn, msg);
                }
            }
            LineInput::Closed { conn } => {
                if let Some(a) = self.attaching.remove(&conn)
                    && let AttachState::AwaitProof { number, .. } = &a.state
                {
                    tracing::warn!(peer = %a.peer, number, "line attach refused: the line left without proving the phone's zone key");
                    self.metrics.refused_attach("no-proof");
                }
                self.detach(conn);
            }
        }
    }

    /// Runs `job` against the server's trust authority off this task (it blocks), a few at
    /// a time; its answer comes back through [`Exchange::auth_result`].
    fn ask<T: Send + 'static>(
        &self,
        job: impl FnOnce(&dyn LineAuthority) -> T + Send + 'static,
        done: impl FnOnce(T) -> AuthResult + Send + 'static,
    ) {
        let (authority, tx, slots) = (
            self.authority.clone(),
            self.auth_tx.clone(),
            self.auth_slots.clone(),
        );
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            if let Ok(answer) = tokio::task::spawn_blocking(move || job(&*authority)).await {
                let _ = tx.send(done(answer)).await;
            }
        });
    }

    /// A new connection: it must attach within [`ATTACH_DEADLINE`].
    fn opened(&mut self, conn: u64, peer: SocketAddr, tx: LineTx) {
        if self.attaching.len() >= MAX_ATTACHING {
            tracing::warn!(%peer, "too many lines attaching at once: refused");
            self.metrics.refused_attach("congestion");
            tx.send(Message::Atr {
                cause: Cause::SWITCHING_EQUIPMENT_CONGESTION,
            });
            return;
        }
        self.attaching.insert(
            conn,
            Attaching {
                peer,
                tx,
                state: AttachState::AwaitAtt,
            },
        );
        self.timers.push(Reverse((
            Instant::now() + ATTACH_DEADLINE,
            Timer::Attach(conn),
        )));
    }

    /// A message from a connection that has not attached: ATT, then ATP if challenged.
    /// Anything else (a dial above all) is refused and the connection closed.
    fn attach_msg(&mut self, conn: u64, msg: Message) {
        let Some(a) = self.attaching.get_mut(&conn) else {
            return;
        };
        let state = std::mem::replace(&mut a.state, AttachState::AwaitAtt);
        match (state, msg) {
            (AttachState::AwaitAtt, Message::Att { number, device }) => {
                let peer = a.peer;
                if !self.attach_allowed(peer.ip()) {
                    tracing::warn!(%peer, "too many attaches from this address: refused");
                    self.refuse(conn, Cause::SWITCHING_EQUIPMENT_CONGESTION, "rate-limited");
                    return;
                }
                let Some(a) = self.attaching.get_mut(&conn) else {
                    return;
                };
                let number = number.as_str().to_owned();
                tracing::info!(peer = %a.peer, number, claimed_device = device.as_deref().unwrap_or("-"), "line attaching: asking the server who holds the number");
                a.state = AttachState::Lookup {
                    number: number.clone(),
                };
                self.ask(
                    move |auth| auth.challenge(&number),
                    move |result| AuthResult::Lookup { conn, result },
                );
            }
            (
                AttachState::AwaitProof {
                    number,
                    device_id,
                    call_ref,
                },
                Message::Atp { proof },
            ) => {
                a.state = AttachState::Verify {
                    number: number.clone(),
                    device_id: device_id.clone(),
                };
                self.ask(
                    move |auth| auth.verify(&number, &device_id, &call_ref, &proof),
                    move |result| AuthResult::Verify { conn, result },
                );
            }
            (state, msg) => {
                let reason = match (&state, &msg) {
                    (AttachState::AwaitAtt, Message::Iam(_)) => "not-attached",
                    (
                        AttachState::Lookup { .. }
                        | AttachState::AwaitProof { .. }
                        | AttachState::Verify { .. },
                        _,
                    ) => "no-proof",
                    _ => "protocol-error",
                };
                tracing::warn!(
                    peer = %a.peer,
                    msg = msg.name(),
                    "line sent {} before it was attached: refused",
                    msg.name()
                );
                self.refuse(conn, Cause::CALL_REJECTED, reason);
            }
        }
    }

    /// Counts an attach from `ip`; false when it had [`ATTACHES_PER_MINUTE`] already.
    fn attach_allowed(&mut self, ip: std::net::IpAddr) -> bool {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        if self.attach_starts.len() >= ATTACH_SOURCES && !self.attach_starts.contains_key(&ip) {
            self.attach_starts
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < minute));
            if self.attach_starts.len() >= ATTACH_SOURCES {
                return false;
            }
        }
        let q = self.attach_starts.entry(ip).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= minute) {
            q.pop_front();
        }
        if q.len() >= ATTACHES_PER_MINUTE {
            return false;
        }
        q.push_back(now);
        true
    }

    /// Refuses a connection's attach (ATR; the line then closes it and so do we).
    fn refuse(&mut self, conn: u64, cause: Cause, reason: &'static str) {
        if let Some(a) = self.attaching.remove(&conn) {
            tracing::warn!(peer = %a.peer, reason, cause = cause.value(), "line attach refused");
            self.metrics.refused_attach(reason);
            a.tx.send(Message::Atr { cause });
        }
    }

    /// Detaches an attached line that may no longer hold its number (ATR, closed).
    fn kick(&mut self, conn: u64, reason: &'static str) {
        if let Some(l) = self.lines.get(&conn) {
            tracing::warn!(number = l.number, reason, "line detached by the exchange");
            self.metrics.refused_attach(reason);
            l.tx.send(Message::Atr {
                cause: Cause::CALL_REJECTED,
            });
        }
        self.detach(conn);
    }

    /// Asks the server who holds an attached line's number now.
    fn recheck(&self, conn: u64, why: Recheck) {
        let Some(number) = self.lines.get(&conn).map(|l| l.number.clone()) else {
            return;
        };
        let asked = number.clone();
        self.ask(
            move |auth| auth.holder(&asked),
            move |result| AuthResult::Holder {
                conn,
                number,
                why,
                result,
            },
        );
    }

    fn auth_result(&mut self, answer: AuthResult) {
        match answer {
            AuthResult::Lookup { conn, result } => self.looked_up(conn, result),
            AuthResult::Verify { conn, result } => self.verified(conn, result),
            AuthResult::Holder {
                conn,
                number,
                why,
                result,
            } => self.rechecked(conn, &number, why, result),
        }
    }

    fn looked_up(&mut self, conn: u64, result: Result<AttachLookup, AuthorityError>) {
        let Some(a) = self.attaching.get_mut(&conn) else {
            return;
        };
        let AttachState::Lookup { number } = &a.state else {
            return;
        };
        let number = number.clone();
        match result {
            Ok(AttachLookup::Phone {
                device_id,
                challenge,
                call_ref,
                branch,
            }) => {
                tracing::info!(peer = %a.peer, number, device = device_id, "a phone's number: the line's zone must prove its key (ATC)");
                a.tx.send(Message::Atc {
                    challenge,
                    call_ref: call_ref.clone(),
                    branch,
                });
                a.state = AttachState::AwaitProof {
                    number,
                    device_id,
                    call_ref,
                };
            }
            Ok(AttachLookup::Unassigned) => {
                if !self.cfg.plain_lines.contains(&number) {
                    self.refuse(conn, Cause::UNALLOCATED_NUMBER, "unassigned");
                } else if self.by_number.contains_key(&number) {
                    self.refuse(conn, Cause::CALL_REJECTED, "number-in-use");
                } else if let Some(a) = self.attaching.remove(&conn) {
                    self.attach_line(conn, a.peer, a.tx, number, None);
                }
            }
            Err(AuthorityError::Refused { code }) => {
                tracing::warn!(number, code, "the server gives no attach challenge");
                self.refuse(conn, Cause::CALL_REJECTED, "no-challenge");
            }
            Err(e) => {
                tracing::warn!(number, error = %e, "cannot attach: no answer from the server");
                self.refuse(conn, Cause::TEMPORARY_FAILURE, "server-unavailable");
            }
        }
    }

    fn verified(&mut self, conn: u64, result: Result<(), AuthorityError>) {
        let Some(a) = self.attaching.get(&conn) else {
            return;
        };
        let AttachState::Verify { number, device_id } = &a.state else {
            return;
        };
        let (number, device_id) = (number.clone(), device_id.clone());
        match result {
            Ok(()) => {
                // A proved attach wins over whatever holds the number now (a stale
                // connection of the same phone, or a line that lost the number).
                if let Some(&old) = self.by_number.get(&number) {
                    self.kick(old, "replaced");
                }
                if let Some(a) = self.attaching.remove(&conn) {
                    self.attach_line(conn, a.peer, a.tx, number, Some(device_id));
                }
            }
            Err(AuthorityError::Refused { code }) => {
                tracing::warn!(
                    number,
                    device = device_id,
                    code,
                    "line attach refused: the proof of the phone's zone key failed (this never counts toward the phone's lockout)"
                );
                self.refuse(conn, Cause::CALL_REJECTED, "wrong-proof");
            }
            Err(e) => {
                tracing::warn!(number, error = %e, "cannot attach: no answer from the server");
                self.refuse(conn, Cause::TEMPORARY_FAILURE, "server-unavailable");
            }
        }
    }

    fn rechecked(
        &mut self,
        conn: u64,
        number: &str,
        why: Recheck,
        result: Result<Option<String>, AuthorityError>,
    ) {
        let dial = match why {
            Recheck::Dial(key) => self.pending_dials.remove(&key).map(|iam| (key, iam)),
            Recheck::Sweep => None,
        };
        let Some(line) = self.lines.get(&conn).filter(|l| l.number == number) else {
            return;
        };
        let holds = match &result {
            Ok(holder) => match (&line.device, holder) {
                (Some(proved), Some(holder)) => proved == holder,
                (None, None) => self.cfg.plain_lines.iter().any(|n| n == number),
                _ => false,
            },
            // Unreachable server: a dial fails (closed), an attached line stays.
            Err(_) => true,
        };
        if !holds {
            if let Some((key, _)) = dial {
                self.send_line(
                    conn,
                    Message::Rel {
                        cic: Cic(key.1),
                        cause: Cause::CALL_REJECTED,
                    },
                );
            }
            self.kick(conn, "no-longer-holder");
            return;
        }
        if let Some((key, iam)) = dial {
            if result.is_err() {
                tracing::warn!(
                    number,
                    "call from the line not switched: the server cannot confirm the line"
                );
                self.send_line(
                    conn,
                    Message::Rel {
                        cic: Cic(key.1),
                        cause: Cause::TEMPORARY_FAILURE,
                    },
                );
            } else {
                self.line_originated(conn, iam);
            }
        }
    }

    /// Accepts a line: ATA with the law of its frames.
    fn attach_line(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        tx: LineTx,
        number: String,
        device: Option<String>,
    ) {
        tx.send(Message::Ata { law: self.cfg.law });
        tracing::info!(
            %peer,
            number,
            device = device.as_deref().unwrap_or("-"),
            "line attached{}",
            if device.is_some() { " (the phone's zone proved its key)" } else { " (plain PSTN line)" }
        );
        self.by_number.insert(number.clone(), conn);
        self.lines.insert(
            conn,
            Line {
                number,
                device,
                tx,
                next_cic: 2,
            },
        );
        self.metrics.set_lines(self.lines.len());
    }

    fn detach(&mut self, conn: u64) {
        self.pending_dials.retain(|k, _| k.0 != conn);
        let Some(line) = self.lines.remove(&conn) else {
            return;
        };
        tracing::info!(number = line.number, "line detached");
        self.metrics.set_lines(self.lines.len());
        if self.by_number.get(&line.number) == Some(&conn) {
            self.by_number.remove(&line.number);
        }
        let keys: Vec<CircuitKey> = self
            .circuits
            .keys()
            .filter(|k| k.0 == conn)
            .copied()
            .collect();
        for key in keys {
            self.circuit_released(key, Cause::NETWORK_OUT_OF_ORDER);
        }
    }

    fn line_msg(&mut self, conn: u64, msg: Message) {
        let now = Instant::now();
        match msg {
            Message::Iam(iam) => self.dial_requested(conn, iam),
            Message::Acm { cic, proof } => {
                let key = (conn, cic.0);
                match self.circuits.get(&key).map(|c| c.far) {
                    Some(Far::Sip(call)) => {
                        let extra: Vec<(&str, &str)> = proof
                            .as_deref()
                            .map(|p| ("Trust-Proof", p))
                            .into_iter()
                            .collect();
                        let _ = self.ua.ring(call, now, &extra);
                    }
                    Some(Far::Circuit(other)) => self.send_line(
                        other.0,
                        Message::Acm {
                            cic: Cic(other.1),
                            proof: None,
                        },
                    ),
                    _ => {}
                }
            }
            Message::Anm { cic, proof } => self.answered(conn, cic, proof, now),
            Message::Cpg { cic, event } => self.progress(conn, cic, event, now),
            Message::Rel { cic, cause } => {
                self.pending_dials.remove(&(conn, cic.0));
                self.send_line(conn, Message::Rlc { cic });
                self.circuit_released((conn, cic.0), cause);
            }
            Message::Rlc { cic } => {
                let key = (conn, cic.0);
                match self.circuits.get(&key).map(|c| c.far) {
                    Some(Far::None) => {
                        self.circuits.remove(&key);
                    }
                    // RLC without our REL: the line dropped the call; release it properly.
                    Some(_) => self.circuit_released(key, Cause::PROTOCOL_ERROR),
                    None => {}
                }
            }
            Message::Frm { cic, payload, .. } => self.frame(conn, cic, payload),
            other => tracing::debug!(?other, "unexpected line message"),
        }
    }

    fn answered(&mut self, conn: u64, cic: Cic, proof: Option<String>, now: Instant) {
        let key = (conn, cic.0);
        let Some(circuit) = self.circuits.get_mut(&key) else {
            return;
        };
        if circuit.answered {
            return; // a repeated ANM changes nothing (and must not restart the billing)
        }
        circuit.answered = true;
        match circuit.far {
            Far::Sip(call) => {
                let pstn = self.cfg.law;
                let media_ip = self.cfg.media_ip;
                let Some(line_tx) = self.lines.get(&conn).map(|l| l.tx.clone()) else {
                    return;
                };
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.answered = true;
                c.ring_deadline = None;
                c.record.answer_ms = Some(unix_ms());
                let sdp = answer_sdp(c, media_ip, Direction::SendRecv);
                if let Some(sock) = c.rtp.take() {
                    let bridge = Bridge::start(
                        sock,
                        ip_side(c),
                        pstn,
                        line_tx,
                        cic,
                        c.rtp_seed,
                        self.metrics.clone(),
                    );
                    c.bridge = Some(bridge);
                }
                let extra: Vec<(&str, &str)> = proof
                    .as_deref()
                    .map(|p| ("Trust-Proof", p))
                    .into_iter()
                    .collect();
                let _ = self.ua.answer(call, now, sdp, &extra);
                tracing::info!(call_id = %c.record.call_id, "phone answered");
            }
            Far::Circuit(other) => {
                if let Some(o) = self.circuits.get_mut(&other) {
                    o.answered = true;
                    if let Some(r) = o.record.as_mut() {
                        r.answer_ms = Some(unix_ms());
                    }
                }
                self.send_line(
                    other.0,
                    Message::Anm {
                        cic: Cic(other.1),
                        proof: None,
                    },
                );
            }
            Far::None => {}
        }
    }

    fn progress(&mut self, conn: u64, cic: Cic, event: Event, now: Instant) {
        let key = (conn, cic.0);
        match self.circuits.get(&key).map(|c| c.far) {
            Some(Far::Sip(call)) => {
                let hold = match event {
                    Event::RemoteHold => true,
                    Event::RemoteRetrieval => false,
                    _ => return,
                };
                let media_ip = self.cfg.media_ip;
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                if !c.answered {
                    return;
                }
                if let Some(b) = &c.bridge {
                    b.held.store(hold, Ordering::Relaxed);
                }
                c.sdp_version += 1;
                let dir = if hold {
                    Direction::SendOnly
                } else {
                    Direction::SendRecv
                };
                let sdp = offer_sdp(c, media_ip, dir);
                tracing::info!(call_id = %c.record.call_id, hold, "phone holds/resumes: re-INVITE");
                if let Err(e) = self.ua.reinvite(call, now, sdp) {
                    tracing::info!(error = %e, "re-INVITE not sent");
                }
            }
            Some(Far::Circuit(other)) => self.send_line(
                other.0,
                Message::Cpg {
                    cic: Cic(other.1),
                    event,
                },
            ),
            _ => {}
        }
    }

    fn frame(&mut self, conn: u64, cic: Cic, payload: [u8; FRAME_LEN]) {
        match self
            .circuits
            .get(&(conn, cic.0))
            .map(|c| (c.far, c.answered))
        {
            Some((Far::Sip(call), true)) => {
                if let Some(b) = self.calls.get(&call).and_then(|c| c.bridge.as_ref()) {
                    b.frame_from_line(payload);
                }
            }
            Some((Far::Circuit(other), true)) => {
                self.send_line(
                    other.0,
                    Message::Frm {
                        cic: Cic(other.1),
                        seq: 0,
                        payload,
                    },
                );
            }
            _ => {}
        }
    }

    /// The line released circuit `key` with `cause` (or went away).
    fn circuit_released(&mut self, key: CircuitKey, cause: Cause) {
        let Some(circuit) = self.circuits.remove(&key) else {
            return;
        };
        let now = Instant::now();
        match circuit.far {
            Far::Sip(call) => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.circuit = None;
                if c.answered {
                    let _ = self.ua.hangup(call, now, Some(&q850_reason(cause)));
                    if let Some(mut c) = self.calls.remove(&call) {
                        c.record.outcome = Some("answered");
                        c.record.status = Some(200);
                        c.record.cause = cause_text(cause);
                        c.record.released_by = "callee";
                        self.write_record(c.record);
                    }
                } else {
                    c.ring_deadline = None;
                    self.unreachable(call, cause, now);
                }
            }
            Far::Circuit(other) => {
                let record = circuit
                    .record
                    .or_else(|| self.circuits.get_mut(&other).and_then(|o| o.record.take()));
                self.release_circuit(other, cause);
                if let Some(mut r) = record {
                    let abandoned = key.1 % 2 == 1 && !circuit.answered;
                    r.outcome = Some(if abandoned {
                        "cancelled"
                    } else if circuit.answered {
                        "answered"
                    } else {
                        outcome_for(cause)
                    });
                    r.status = Some(if circuit.answered {
                        200
                    } else if abandoned {
                        487
                    } else {
                        sip_status_for(cause)
                    });
                    r.cause = cause_text(cause);
                    // Lines seize odd CICs: an odd one released is the caller's side.
                    r.released_by = if key.1 % 2 == 1 { "caller" } else { "callee" };
                    self.write_record(r);
                }
            }
            Far::None => {}
        }
    }

    /// A line dials: the call is switched once the server confirms the line still holds its
    /// number (a revoked phone, or one whose number moved, places no call).
    fn dial_requested(&mut self, conn: u64, iam: Iam) {
        let key = (conn, iam.cic.0);
        if !iam.cic.is_line_side()
            || self.circuits.contains_key(&key)
            || self.pending_dials.contains_key(&key)
        {
            // Lines seize odd CICs, and only free ones: refuse without touching the call
            // that may hold it.
            tracing::info!(conn, cic = iam.cic.0, "IAM on an even or busy CIC refused");
            self.send_line(
                conn,
                Message::Rel {
                    cic: iam.cic,
                    cause: Cause::PROTOCOL_ERROR,
                },
            );
            return;
        }
        if self.pending_dials.keys().filter(|k| k.0 == conn).count() >= MAX_PENDING_DIALS {
            self.send_line(
                conn,
                Message::Rel {
                    cic: iam.cic,
                    cause: Cause::NO_CIRCUIT_AVAILABLE,
                },
            );
            return;
        }
        self.pending_dials.insert(key, iam);
        self.recheck(conn, Recheck::Dial(key));
    }

    /// The next free even CIC on `conn` (the exchange's half; odd ones are the line's).
    fn seize_cic(&mut self, conn: u64) -> Option<u16> {
        for _ in 0..(u16::MAX / 2) {
            let l = self.lines.get_mut(&conn)?;
            let cic = l.next_cic;
            l.next_cic = if l.next_cic >= u16::MAX - 1 {
                2
            } else {
                l.next_cic + 2
            };
            if !self.circuits.contains_key(&(conn, cic)) {
                return Some(cic);
            }
        }
        None
    }

    /// A line's call, confirmed: switch it to the line that has the number (a direct PSTN
    /// call).
    fn line_originated(&mut self, conn: u64, iam: Iam) {
        let key = (conn, iam.cic.0);
        if self.circuits.contains_key(&key) {
            self.send_line(
                conn,
                Message::Rel {
                    cic: iam.cic,
                    cause: Cause::PROTOCOL_ERROR,
                },
            );
            return;
        }
        let Some(caller_number) = self.lines.get(&conn).map(|l| l.number.clone()) else {
            return;
        };
        self.next_local += 1;
        let mut record = LegRecord::new(
            format!("pstn-{}-{}", unix_ms(), self.next_local),
            format!("tel:{caller_number}"),
            iam.called.as_str().to_owned(),
            caller_number.clone(),
        );
        let target = self.by_number.get(iam.called.as_str()).copied();
        let Some(tconn) = target.filter(|t| *t != conn) else {
            self.send_line(
                conn,
                Message::Rel {
                    cic: iam.cic,
                    cause: Cause::UNALLOCATED_NUMBER,
                },
            );
            self.circuits.insert(
                key,
                Circuit {
                    far: Far::None,
                    answered: false,
                    record: None,
                },
            );
            record.outcome = Some("failed");
            record.status = Some(404);
            record.cause = cause_text(Cause::UNALLOCATED_NUMBER);
            self.write_record(record);
            return;
        };
        let Some(cic) = self.seize_cic(tconn) else {
            self.send_line(
                conn,
                Message::Rel {
                    cic: iam.cic,
                    cause: Cause::NO_CIRCUIT_AVAILABLE,
                },
            );
            self.circuits.insert(
                key,
                Circuit {
                    far: Far::None,
                    answered: false,
                    record: None,
                },
            );
            return;
        };
        let Some(t) = self.lines.get(&tconn) else {
            return;
        };
        record.device = t.device.clone();
        record.rang_ms = Some(unix_ms());
        t.tx.send(Message::Iam(Iam {
            cic: Cic(cic),
            called: iam.called,
            calling: Number::new(&caller_number).ok(),
            challenge: None,
            call_ref: None,
            branch: None,
        }));
        self.circuits.insert(
            key,
            Circuit {
                far: Far::Circuit((tconn, cic)),
                answered: false,
                record: Some(record),
            },
        );
        self.circuits.insert(
            (tconn, cic),
            Circuit {
                far: Far::Circuit(key),
                answered: false,
                record: None,
            },
        );
        tracing::info!(from = caller_number, cic, "direct PSTN call switched");
    }
}

/// The `dev` parameter of a `Trust-Challenge` value: the device the server rings.
fn challenge_device(challenge: &str) -> Option<&str> {
    challenge
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim() == "dev")
        .map(|(_, v)| v.trim())
}

/// The caller's number, when its From user part is one (`sip:+15550001@host`).
fn from_number(from: &str) -> Option<Number> {
    let user = from
        .split_once("sip:")
        .map(|(_, r)| r)?
        .split(['@', ';', '>'])
        .next()?;
    Number::new(user).ok()
}

fn outcome_for(cause: Cause) -> &'static str {
    match cause.value() {
        17 => "busy",
        18..=20 => "no-answer",
        21 => "declined",
        26 => "cancelled-elsewhere",
        _ => "failed",
    }
}

fn session(c: &SipLeg, ip: std::net::IpAddr, direction: Direction) -> SessionParams {
    SessionParams {
        ip,
        port: c.rtp_port,
        session_id: c.session_id,
        version: c.sdp_version,
        law: c.ip_law,
        direction,
        crypto: c.srtp.as_ref().map(|k| k.outbound.clone()),
    }
}

/// The call's IP side as the bridge needs it: the announced address, law, payload type, keys.
fn ip_side(c: &SipLeg) -> IpSide {
    IpSide {
        remote: SocketAddr::new(c.offer.addr, c.offer.port),
        law: c.ip_law,
        payload_type: c.payload_type,
        srtp: c.srtp.clone(),
    }
}

fn transport_of(c: &SipLeg) -> Transport {
    if c.srtp.is_some() {
        Transport::Srtp
    } else {
        Transport::Rtp
    }
}

/// A fresh SRTP master key and salt from the operating system's random number generator;
/// `None` if it fails (the call is then refused rather than keyed weakly).
fn fresh_key() -> Option<MasterKey> {
    use rand::TryRng as _;
    let mut bytes = [0u8; 30];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes).ok()?;
    Some(MasterKey::from_bytes(&bytes))
}

/// The transport of the caller's own hop: the bottom `Via` (the first proxy adds its own on
/// top), e.g. `TLS` or `UDP`.
fn caller_transport(headers: &[(String, String)]) -> Option<String> {
    let via = headers
        .iter()
        .rfind(|(n, _)| n.eq_ignore_ascii_case("Via") || n == "v")?;
    let proto = via.1.split_whitespace().next()?;
    proto.rsplit('/').next().map(str::to_owned)
}

/// Our answer to the call's offer.
fn answer_sdp(c: &SipLeg, ip: std::net::IpAddr, direction: Direction) -> Bytes {
    let p = session(c, ip, direction);
    sdp::answer(&c.offer_body, &p, c.payload_type, None)
        .unwrap_or_else(|_| sdp::session(&p, c.payload_type))
}

/// A new offer of ours (hold/resume re-INVITE).
fn offer_sdp(c: &SipLeg, ip: std::net::IpAddr, direction: Direction) -> Bytes {
    sdp::session(&session(c, ip, direction), c.payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_hop_is_the_bottom_via() {
        let h = |vias: &[&str]| -> Vec<(String, String)> {
            vias.iter()
                .map(|v| ("Via".to_owned(), (*v).to_owned()))
                .chain([("From".to_owned(), "<sip:bob@x>".to_owned())])
                .collect()
        };
        let proxied = h(&[
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy",
            "SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bKcaller;rport",
        ]);
        assert_eq!(caller_transport(&proxied).as_deref(), Some("TLS"));
        let clear = h(&[
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy",
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKcaller",
        ]);
        assert_eq!(caller_transport(&clear).as_deref(), Some("UDP"));
        assert_eq!(caller_transport(&[]), None);
    }

    #[test]
    fn every_call_gets_a_fresh_key() {
        let a = fresh_key().expect("the OS RNG works");
        let b = fresh_key().expect("the OS RNG works");
        assert_ne!(a, b);
        assert_ne!(a.key, [0; 16]);
    }
}
