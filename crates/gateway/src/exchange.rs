//! The exchange: the gateway's switching logic between the SIP trunk and the phone lines.
//!
//! One task owns all call state (no locks): the trunk's SIP user agent (`trunk_ua`, Sans-IO,
//! fed here with datagrams and timers), the attached lines by number, and every circuit.
//! A leg the server forked (`INVITE sip:+NUMBER@gw`) is admitted (`admission`), its SDP
//! negotiated (RFC 3264: our PSTN law if offered, the other G.711 law with transcoding, or
//! 488), and offered to the line as IAM with the trust challenge; ACM/ANM come back as
//! 180/200 with the line's proof. Releases map both ways after RFC 3398 (`pstn::cause`).
//! A line can also call another line's number directly (a PSTN call that never touches
//! SIP); the exchange switches it locally. Hold/retrieve (CPG) on a SIP call becomes a
//! re-INVITE with `a=sendonly` / `a=sendrecv` (call swap, R17).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use media::g711::Law;
use media::sdp::{self, AudioOffer, Direction, SessionParams};
use pstn::cause::{Cause, cause_for_cancel, sip_status_for};
use pstn::msg::{Cic, Event, FRAME_LEN, Iam, Message, Number};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::admission::{Admission, Refusal, TrunkInvite};
use crate::bridge::{Bridge, IpSide};
use crate::config::GatewayConfig;
use crate::lines::LineInput;
use crate::records::{LegRecord, Recorder, unix_ms};
use crate::trunk_ua::{CallId, TrunkUa, UaEvent};

/// A circuit: one call on one line, named by (connection, CIC).
type CircuitKey = (u64, u16);

/// An attached line.
struct Line {
    number: String,
    device: Option<String>,
    tx: mpsc::UnboundedSender<Message>,
    /// Next even CIC the exchange seizes on this line.
    next_cic: u16,
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
}

/// The exchange's state; see the module docs.
pub(crate) struct Exchange {
    cfg: GatewayConfig,
    ua: TrunkUa,
    sip: std::sync::Arc<UdpSocket>,
    admission: Admission,
    recorder: Recorder,
    lines: HashMap<u64, Line>,
    by_number: HashMap<String, u64>,
    circuits: HashMap<CircuitKey, Circuit>,
    calls: HashMap<CallId, SipLeg>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_local: u64,
    metrics: std::sync::Arc<crate::GatewayMetrics>,
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
        sip: std::sync::Arc<UdpSocket>,
        recorder: Recorder,
        metrics: std::sync::Arc<crate::GatewayMetrics>,
    ) -> Self {
        let admission = Admission::new(cfg.allow.clone(), cfg.trunk_secret.clone(), cfg.caps);
        Self {
            cfg,
            ua,
            sip,
            admission,
            recorder,
            lines: HashMap::new(),
            by_number: HashMap::new(),
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
        mut lines: mpsc::UnboundedReceiver<LineInput>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let sip = self.sip.clone();
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
                r = sip.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.ua.handle_datagram(Instant::now(), from, &buf[..n]),
                    Err(e) => tracing::debug!(error = %e, "SIP receive error"),
                },
                input = lines.recv() => match input {
                    Some(i) => self.line_input(i),
                    None => break,
                },
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
                if let Err(e) = self.sip.send_to(&bytes, to).await {
                    tracing::debug!(%to, error = %e, "SIP send failed");
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
                tracing::info!(call_id = sip_call_id, error = %e, "no common codec: 488");
                let _ = self.ua.reject(
                    call,
                    now,
                    488,
                    Some("Q.850;cause=65;text=\"Bearer capability not implemented\""),
                );
                let cause = format!("no common codec: {e}");
                self.write_unconnected((sip_call_id, from, number), "failed", 488, cause);
                return;
            }
        };
        let Some(payload_type) = sdp::payload_type_for(&offer, ip_law) else {
            let _ = self.ua.reject(call, now, 488, None);
            return;
        };
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
        let line = self.by_number.get(number).copied();
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
        let _ = l.tx.send(iam);
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
        if let (Some(Ok(o)), Some(body)) = (parsed, offer) {
            // The call's law must stay offered; a re-offer without it is refused (488), the
            // session goes on as it was.
            let Some(pt) = sdp::payload_type_for(&o, c.ip_law) else {
                let _ = self.ua.reject_reinvite(call, now, 488);
                return;
            };
            c.payload_type = pt;
            c.offer = o;
            c.offer_body = body;
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
            let _ = l.tx.send(m);
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
            LineInput::Opened {
                conn,
                peer,
                first,
                tx,
            } => self.attach(conn, peer, first, tx),
            LineInput::Msg { conn, msg } => self.line_msg(conn, msg),
            LineInput::Closed { conn } => self.detach(conn),
        }
    }

    fn attach(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        first: Message,
        tx: mpsc::UnboundedSender<Message>,
    ) {
        let Message::Att { number, device } = first else {
            let _ = tx.send(Message::Atr {
                cause: Cause::PROTOCOL_ERROR,
            });
            return;
        };
        let number = number.as_str().to_owned();
        if self.by_number.contains_key(&number) {
            tracing::info!(%peer, number, "attach refused: number already attached");
            let _ = tx.send(Message::Atr {
                cause: Cause::CALL_REJECTED,
            });
            return;
        }
        let _ = tx.send(Message::Ata { law: self.cfg.law });
        tracing::info!(%peer, number, device = device.as_deref().unwrap_or("-"), "line attached");
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
        let Some(line) = self.lines.remove(&conn) else {
            return;
        };
        tracing::info!(number = line.number, "line detached");
        self.metrics.set_lines(self.lines.len());
        self.by_number.remove(&line.number);
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
            Message::Iam(iam) => self.line_originated(conn, iam),
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
                    let ip = IpSide {
                        remote: SocketAddr::new(c.offer.addr, c.offer.port),
                        law: c.ip_law,
                        payload_type: c.payload_type,
                    };
                    let bridge = Bridge::start(
                        sock,
                        ip,
                        pstn,
                        line_tx,
                        cic,
                        c.session_id,
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
                    let _ = b.to_ip.send(payload);
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

    /// A line dials a number: switch it to the line that has it (a direct PSTN call).
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

    fn line_originated(&mut self, conn: u64, iam: Iam) {
        let key = (conn, iam.cic.0);
        if !iam.cic.is_line_side() || self.circuits.contains_key(&key) {
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
        let _ = t.tx.send(Message::Iam(Iam {
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
    }
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
