//! The Sans-IO agent: datagrams, commands and the time in; datagrams and events out.
//!
//! Contract (as `sip_core`): call [`Agent::handle_datagram`], [`Agent::handle_timeout`] (when
//! [`Agent::poll_timeout`] has come) and the command methods with the current `Instant`, then
//! drain [`Agent::poll_transmit`] and [`Agent::poll_event`]. The agent never reads a clock
//! and never performs IO.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{HeaderName, Message, Method, Request, Response, Uri, parse};
use sip_core::transaction::{ServerTx, TxAction};

use crate::dialog::ByeTx;
use crate::register::Registration;
use crate::uas::Call;
use crate::{PhoneConfig, PhoneError, PhoneEvent, Prover};

/// Methods this phone accepts.
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";
/// The User-Agent / Server header value.
pub(crate) const USER_AGENT: &str = concat!("trustring-phone/", env!("CARGO_PKG_VERSION"));
/// Most non-INVITE server transactions remembered at once (to absorb retransmissions).
const MAX_SERVER_TXS: usize = 1024;
/// How many T1 (4 s by default) a shutdown waits for BYE answers.
const BYE_GRACE_T1: u32 = 8;
/// Most calls (ringing, connected, or finishing) at once; more INVITEs get 486 Busy Here.
const MAX_CALLS: usize = 16;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transmit {
    /// Destination.
    pub(crate) to: SocketAddr,
    /// The message.
    pub(crate) bytes: Bytes,
}

/// What the agent queued for its driver.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    transmits: VecDeque<Transmit>,
    events: VecDeque<PhoneEvent>,
}

impl Outbox {
    /// Queues `bytes` for `to`.
    pub(crate) fn send(&mut self, to: SocketAddr, bytes: Bytes) {
        self.transmits.push_back(Transmit { to, bytes });
    }

    /// Queues an event.
    pub(crate) fn event(&mut self, e: PhoneEvent) {
        self.events.push_back(e);
    }
}

/// What every part of the agent needs to build messages.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) cfg: PhoneConfig,
    /// The address advertised in Via and Contact.
    pub(crate) addr: SocketAddr,
    /// The Contact header value.
    pub(crate) contact: String,
    /// The Contact URI, to find our binding in a REGISTER's 200.
    pub(crate) contact_uri: Uri,
    /// The UDP port named in SDP.
    pub(crate) media_port: u16,
    /// SDP session id (the `o=` line).
    pub(crate) sdp_session: u64,
}

impl Ctx {
    /// A Via value with a fresh branch, and that branch.
    pub(crate) fn via(&self) -> (String, String) {
        let branch = crate::ids::branch();
        (
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                self.cfg.transport.token(),
                self.addr
            ),
            branch,
        )
    }

    /// Whether the transport is reliable (TLS): transactions then never retransmit.
    pub(crate) fn reliable(&self) -> bool {
        self.cfg.transport.is_reliable()
    }
}

/// Key of a non-INVITE server transaction (RFC 3261 §17.2.3: branch, sent-by, method).
type NistKey = (String, SocketAddr, String);

/// The phone's user agent.
pub(crate) struct Agent {
    ctx: Ctx,
    prover: Box<dyn Prover>,
    reg: Registration,
    calls: HashMap<String, Call>,
    nists: HashMap<NistKey, (SocketAddr, ServerTx)>,
    byes: HashMap<String, ByeTx>,
    out: Outbox,
    shutting_down: bool,
    /// After a shutdown, how long BYEs may wait for their answers once the unregister is
    /// done (they are abandoned then).
    bye_grace_until: Option<Instant>,
}

impl Agent {
    /// An agent that advertises `addr` and names `media_port` in its SDP; it sends its first
    /// REGISTER at `now`.
    pub(crate) fn new(
        cfg: PhoneConfig,
        addr: SocketAddr,
        media_port: u16,
        prover: Box<dyn Prover>,
        now: Instant,
    ) -> Result<Self, PhoneError> {
        cfg.validate()?;
        // RFC 3261 §19.1.4: `transport=tls` says how to reach the contact (the server uses
        // the registering connection anyway).
        let transport = if cfg.transport.is_reliable() {
            ";transport=tls"
        } else {
            ""
        };
        let contact_uri = Uri::parse(&format!(
            "sip:{}@{addr}{transport};trustring-device={}",
            cfg.aor_user, cfg.contact_instance
        ))
        .map_err(|e| PhoneError::Config(format!("contact: {e}")))?;
        let ctx = Ctx {
            contact: format!("<{contact_uri}>"),
            contact_uri,
            addr,
            media_port,
            sdp_session: u64::from_be_bytes({
                let mut b = [0u8; 8];
                rand::fill(&mut b[..]);
                b
            }) >> 2,
            cfg,
        };
        let reg = Registration::new(&ctx, now)?;
        Ok(Self {
            ctx,
            prover,
            reg,
            calls: HashMap::new(),
            nists: HashMap::new(),
            byes: HashMap::new(),
            out: Outbox::default(),
            shutting_down: false,
            bye_grace_until: None,
        })
    }

    /// Next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// Next event for the owner.
    pub(crate) fn poll_event(&mut self) -> Option<PhoneEvent> {
        self.out.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().filter_map(Call::next_deadline);
        let nists = self.nists.values().filter_map(|(_, t)| t.next_deadline());
        let byes = self.byes.values().filter_map(|b| b.tx.next_deadline());
        calls
            .chain(nists)
            .chain(byes)
            .chain(self.reg.next_deadline())
            .chain(self.bye_grace_until)
            .min()
    }

    /// Whether the agent is done after [`Self::shutdown`]: the unregister finished, and every
    /// BYE was answered or had [`BYE_GRACE_T1`] T1s to be.
    pub(crate) fn is_finished(&self, now: Instant) -> bool {
        self.shutting_down
            && self.reg.is_done()
            && (self.byes.is_empty() || self.bye_grace_until.is_some_and(|t| t <= now))
    }

    /// Runs every due timer.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.reg.handle_timeout(now, &self.ctx, &mut self.out);
        for call in self.calls.values_mut() {
            call.handle_timeout(now, &self.ctx, &mut self.byes, &mut self.out);
        }
        self.calls.retain(|_, c| !c.is_finished());
        let out = &mut self.out;
        self.nists.retain(|_, (peer, tx)| {
            if tx.next_deadline().is_some_and(|d| d <= now) {
                for a in tx.handle_timeout(now) {
                    match a {
                        TxAction::Retransmit(b) => out.send(*peer, b),
                        TxAction::Terminated => return false,
                        TxAction::Timeout => {}
                    }
                }
            }
            true
        });
        self.byes.retain(|branch, bye| {
            if bye.tx.next_deadline().is_some_and(|d| d <= now) {
                for a in bye.tx.handle_timeout(now) {
                    match a {
                        TxAction::Retransmit(b) => out.send(bye.to, b),
                        TxAction::Timeout => {
                            tracing::debug!(%branch, call_id = %bye.call_id, "BYE timed out");
                            return false;
                        }
                        TxAction::Terminated => return false,
                    }
                }
            }
            true
        });
    }

    /// A datagram arrived from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match parse(data) {
            Ok(Message::Request(req)) => self.handle_request(now, from, req),
            Ok(Message::Response(resp)) => self.handle_response(now, from, &resp),
            Err(e) => {
                tracing::debug!(%from, len = data.len(), error = %e, "dropping unparseable datagram");
            }
        }
    }

    /// Answers the ringing call `call_id`.
    pub(crate) fn answer(&mut self, now: Instant, call_id: &str) -> Result<(), PhoneError> {
        let call = self
            .calls
            .get_mut(call_id)
            .filter(|c| c.is_ringing())
            .ok_or_else(|| PhoneError::UnknownCall(call_id.to_owned()))?;
        call.answer(now, &self.ctx, &mut self.out);
        Ok(())
    }

    /// Declines (ringing) or ends (answered, connected) the call `call_id`.
    pub(crate) fn hangup(&mut self, now: Instant, call_id: &str) -> Result<(), PhoneError> {
        let call = self
            .calls
            .get_mut(call_id)
            .filter(|c| !c.is_ended())
            .ok_or_else(|| PhoneError::UnknownCall(call_id.to_owned()))?;
        call.hangup(now, 603, &self.ctx, &mut self.byes, &mut self.out);
        Ok(())
    }

    /// Ends every call, unregisters, and refuses new calls; [`Self::is_finished`] tells when
    /// it is done.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.bye_grace_until = Some(now + self.ctx.cfg.timers.t1 * BYE_GRACE_T1);
        for call in self.calls.values_mut().filter(|c| !c.is_ended()) {
            call.hangup(now, 480, &self.ctx, &mut self.byes, &mut self.out);
        }
        self.reg.shutdown(now, &self.ctx, &mut self.out);
    }

    fn handle_response(&mut self, now: Instant, from: SocketAddr, resp: &Response) {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(str::to_owned)) else {
            tracing::debug!(%from, "dropping response without a Via branch");
            return;
        };
        if self
            .reg
            .handle_response(now, &branch, resp, &self.ctx, &mut self.out)
        {
            return;
        }
        if let Some(bye) = self.byes.get_mut(&branch) {
            if bye.tx.handle_response(resp.status, now) && resp.status >= 200 {
                tracing::debug!(call_id = %bye.call_id, status = resp.status, "BYE answered");
                self.byes.remove(&branch);
            }
            return;
        }
        tracing::debug!(%from, status = resp.status, "dropping response matching no transaction");
    }

    fn handle_request(&mut self, now: Instant, from: SocketAddr, req: Request) {
        let Some(branch) = req.top_via().and_then(|v| v.branch().map(str::to_owned)) else {
            if req.method != Method::Ack {
                let resp = reply(&req, 400, None);
                self.out.send(from, Bytes::from(resp.to_bytes()));
            }
            return;
        };
        match req.method {
            Method::Ack => {
                if let Some(call) = self.calls.get_mut(req.call_id()) {
                    call.handle_ack(now, &req, &branch, &self.ctx, &mut self.byes, &mut self.out);
                }
                return;
            }
            Method::Invite => {
                self.handle_invite(now, from, &req, branch);
                return;
            }
            _ => {}
        }
        // Non-INVITE: absorb retransmissions with a server transaction (§17.2.2).
        let key = (branch, from, req.method.as_str().to_owned());
        if let Some((peer, tx)) = self.nists.get(&key) {
            if let Some(b) = tx.handle_retransmission() {
                self.out.send(*peer, b);
            }
            return;
        }
        // Our answer goes before anything the handler sends (the 487 after a CANCEL's 200).
        let at = self.out.transmits.len();
        let resp = match req.method {
            Method::Cancel => self.handle_cancel(now, &req, &key.0),
            _ if unsupported_require(&req).is_some() => bad_extension(&req),
            Method::Bye => match self.calls.get_mut(req.call_id()) {
                Some(call) => call.handle_bye(now, &req, &self.ctx, &mut self.out),
                None => reply(&req, 481, None),
            },
            Method::Options => {
                let mut r = reply(&req, 200, Some(&crate::ids::tag()));
                r.headers.push(HeaderName::Allow, ALLOW);
                r.headers
                    .push(HeaderName::Other("Accept".into()), "application/sdp");
                r
            }
            _ => {
                let mut r = reply(&req, 405, Some(&crate::ids::tag()));
                r.headers.push(HeaderName::Allow, ALLOW);
                r
            }
        };
        let bytes = Bytes::from(resp.to_bytes());
        self.out.transmits.insert(
            at,
            Transmit {
                to: from,
                bytes: bytes.clone(),
            },
        );
        if self.nists.len() < MAX_SERVER_TXS {
            let mut tx = ServerTx::new(false, self.ctx.reliable(), self.ctx.cfg.timers);
            tx.send_response(resp.status, bytes, now);
            self.nists.insert(key, (from, tx));
        }
    }

    fn handle_cancel(&mut self, now: Instant, req: &Request, branch: &str) -> Response {
        match self.calls.get_mut(req.call_id()) {
            Some(call) if call.branch() == branch => call.handle_cancel(now, req, &mut self.out),
            _ => reply(req, 481, None),
        }
    }

    fn handle_invite(&mut self, now: Instant, from: SocketAddr, req: &Request, branch: String) {
        let has_to_tag = req.to().is_some_and(|t| t.tag().is_some());
        if has_to_tag {
            match self.calls.get_mut(req.call_id()) {
                Some(call) => {
                    call.handle_reinvite(now, from, req, &branch, &self.ctx, &mut self.out)
                }
                None => self.reject(from, req, 481),
            }
            return;
        }
        if let Some(call) = self.calls.get_mut(req.call_id()) {
            if call.branch() == branch {
                call.handle_invite_retransmission(from, &mut self.out);
            } else {
                // A second copy of the call through another path (§8.2.2.2 merged request).
                self.reject(from, req, 482);
            }
            return;
        }
        if self.shutting_down {
            self.reject(from, req, 480);
            return;
        }
        if self.calls.len() >= MAX_CALLS {
            self.reject(from, req, 486);
            return;
        }
        if unsupported_require(req).is_some() {
            let resp = bad_extension(req);
            self.out.send(from, Bytes::from(resp.to_bytes()));
            return;
        }
        match Call::start(
            now,
            from,
            req,
            branch,
            &self.ctx,
            self.prover.as_mut(),
            &mut self.out,
        ) {
            Ok(call) => {
                self.calls.insert(call.call_id().to_owned(), call);
            }
            Err(status) => self.reject(from, req, status),
        }
    }

    /// A stateless final response to a request (RFC 3261 §8.2.6), with a fresh To tag.
    fn reject(&mut self, to: SocketAddr, req: &Request, status: u16) {
        let mut resp = reply(req, status, Some(&crate::ids::tag()));
        if status == 415 {
            resp.headers
                .push(HeaderName::Other("Accept".into()), "application/sdp");
        }
        self.out.send(to, Bytes::from(resp.to_bytes()));
    }
}

/// A response to `req` with the default reason phrase and our Server header.
pub(crate) fn reply(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut r = Response::to_request(
        req,
        status,
        sip_core::message::reason_phrase(status),
        to_tag,
    );
    r.headers.push(HeaderName::Server, USER_AGENT);
    r
}

/// The first option of the request's `Require` this phone does not support: it supports
/// none (RFC 3261 §8.2.2.3).
fn unsupported_require(req: &Request) -> Option<String> {
    req.headers
        .get_all(&HeaderName::Require)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|t| !t.is_empty())
        .map(str::to_owned)
}

/// 420 Bad Extension listing the unsupported options.
fn bad_extension(req: &Request) -> Response {
    let mut r = reply(req, 420, Some(&crate::ids::tag()));
    let options: Vec<&str> = req
        .headers
        .get_all(&HeaderName::Require)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    r.headers.push(HeaderName::Unsupported, options.join(", "));
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Echo;

    impl Prover for Echo {
        fn prove(&mut self, c: &str, i: &str, b: &str) -> Result<String, String> {
            Ok(format!("{c}.{i}.{b}"))
        }
    }

    fn agent(now: Instant) -> Agent {
        let cfg = PhoneConfig::new(
            "127.0.0.1:5060".parse().expect("addr"),
            "example.com",
            "alice",
            "~d-1",
            "pw",
            "dev-1",
        );
        let addr = "127.0.0.1:5070".parse().expect("addr");
        Agent::new(cfg, addr, 4000, Box::new(Echo), now).expect("agent")
    }

    const INVITE: &str = "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKabc\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n\
From: \"B\" <sip:bob@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5080>\r\nTrust-Challenge: x\r\n\
Content-Type: application/sdp\r\nContent-Length: 46\r\n\r\n\
v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 9 RTP/AVP 0\r\n";

    /// Mutated and truncated messages never panic the agent, whatever their order.
    #[test]
    fn survives_mangled_input() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let peer: SocketAddr = "127.0.0.1:5080".parse().expect("addr");
        let seeds: Vec<String> = vec![
            INVITE.to_owned(),
            INVITE
                .replace("INVITE sip", "CANCEL sip")
                .replace("1 INVITE", "1 CANCEL"),
            INVITE
                .replace("INVITE sip", "BYE sip")
                .replace("1 INVITE", "2 BYE"),
            INVITE
                .replace("INVITE sip", "ACK sip")
                .replace("1 INVITE", "1 ACK"),
            INVITE.replace(
                "To: <sip:alice@example.com>",
                "To: <sip:alice@example.com>;tag=t",
            ),
            "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n\
From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: r\r\n\
CSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\n\r\n"
                .to_owned(),
        ];
        let mut now = t0;
        for round in 0..4000u32 {
            let mut bytes = seeds[round as usize % seeds.len()].clone().into_bytes();
            let mut r = [0u8; 8];
            rand::fill(&mut r[..]);
            let len = bytes.len();
            for k in 0..usize::from(r[0] % 4) {
                let at = usize::from(u16::from_le_bytes([r[1 + k], r[2 + k]])) % len;
                bytes[at] = r[5 + k % 3];
            }
            if r[7] % 5 == 0 {
                bytes.truncate(usize::from(r[6]) % len);
            }
            a.handle_datagram(now, peer, &bytes);
            if round % 7 == 0 {
                let _ = a.answer(now, "c1");
            }
            if round % 11 == 0 {
                let _ = a.hangup(now, "c1");
            }
            now += Duration::from_millis(u64::from(r[0]));
            if a.poll_timeout().is_some_and(|d| d <= now) {
                a.handle_timeout(now);
            }
            while a.poll_transmit().is_some() {}
            while a.poll_event().is_some() {}
        }
        a.shutdown(now);
        assert!(a.calls.len() <= MAX_CALLS);
    }

    #[test]
    fn over_tls_via_says_tls_contact_says_transport_tls_and_nothing_is_retransmitted() {
        let t0 = Instant::now();
        let mut cfg = PhoneConfig::new(
            "127.0.0.1:5061".parse().expect("addr"),
            "example.com",
            "alice",
            "~d-1",
            "pw",
            "dev-1",
        );
        let client = tls::rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(tls::rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.transport = crate::SipTransport::Tls(crate::TlsClient {
            config: std::sync::Arc::new(client),
            server_name: None,
        });
        let addr = "127.0.0.1:40123".parse().expect("addr");
        let mut a = Agent::new(cfg, addr, 4000, Box::new(Echo), t0).expect("agent");
        a.handle_timeout(t0);
        let register = a.poll_transmit().expect("REGISTER");
        let Ok(Message::Request(req)) = parse(&register.bytes) else {
            panic!("the REGISTER parses")
        };
        let via = req.headers.get(&HeaderName::Via).expect("Via");
        assert!(via.starts_with("SIP/2.0/TLS 127.0.0.1:40123;"), "{via}");
        let contact = req.headers.get(&HeaderName::Contact).expect("Contact");
        assert!(
            contact.contains("@127.0.0.1:40123;transport=tls;"),
            "{contact}"
        );
        // Reliable: timer E never fires, only timer F (64*T1) ends the transaction.
        a.handle_timeout(t0 + Duration::from_secs(10));
        assert!(a.poll_transmit().is_none(), "no retransmission over TLS");
    }

    #[test]
    fn cancel_answer_goes_before_the_487() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        while a.poll_transmit().is_some() {}
        let peer: SocketAddr = "127.0.0.1:5080".parse().expect("addr");
        a.handle_datagram(t0, peer, INVITE.as_bytes());
        let ringing = a.poll_transmit().expect("180");
        assert!(ringing.bytes.starts_with(b"SIP/2.0 180 "));
        let cancel = INVITE
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        a.handle_datagram(t0, peer, cancel.as_bytes());
        let first = a.poll_transmit().expect("200");
        let second = a.poll_transmit().expect("487");
        assert!(first.bytes.starts_with(b"SIP/2.0 200 "));
        assert!(second.bytes.starts_with(b"SIP/2.0 487 "));
    }
}
