//! A SIP caller that speaks SRTP, written for the tests with `media::srtp` and `media::rtp`
//! (Debian's SIPp cannot do SRTP): a minimal UAC over UDP (RFC 3261 §8.1, §12, §13, §14)
//! that places one call offering `RTP/SAVP` with SDES keys (RFC 4568), sends a 1 kHz tone as
//! SRTP on a 20 ms clock, keeps every datagram the gateway sends back (raw, for the wire
//! checks), re-INVITEs (hold, resume, new keys), answers the gateway's re-INVITEs, and hangs
//! up. Single-threaded: the test drives it step by step and it polls its two sockets.
//!
//! Its SIP hop to the server is plain UDP, so the keys cross that hop in clear: acceptable on
//! loopback for a test; a real caller must send SDES keys over TLS only (docs/gateway.md).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use media::g711::{FRAME_SAMPLES, Law};
use media::rtp::RtpSender;
use media::sdp::{AudioOffer, Transport};
use media::srtp::{Crypto, MasterKey, SrtpContext, Suite};

/// A parsed SIP message, as text: enough for a test UAC.
#[derive(Debug, Clone)]
pub struct Sip {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn long_name(name: &str) -> &str {
    match name {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        _ => name,
    }
}

impl Sip {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let start = lines.next()?.to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| {
                (
                    long_name(&n.trim().to_ascii_lowercase()).to_owned(),
                    v.trim().to_owned(),
                )
            })
            .collect();
        Some(Self {
            start,
            headers,
            body: body.to_owned(),
        })
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    pub fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    pub fn method(&self) -> Option<&str> {
        (self.status().is_none()).then(|| self.start.split(' ').next().unwrap_or_default())
    }

    /// `(number, METHOD)` of the CSeq.
    pub fn cseq(&self) -> (u32, String) {
        let v = self.header("cseq").unwrap_or_default();
        let mut p = v.split_whitespace();
        let n = p.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, p.next().unwrap_or_default().to_owned())
    }
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh SDES line with a random key.
pub fn fresh_crypto(tag: u32, suite: Suite) -> Crypto {
    let mut k = [0u8; 30];
    rand::fill(&mut k[..]);
    Crypto {
        tag,
        suite,
        key: MasterKey::from_bytes(&k),
    }
}

/// One datagram the caller's RTP port received.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// The established call's dialog.
#[derive(Debug, Clone)]
struct Dialog {
    to: String,
    routes: Vec<String>,
    target: String,
}

pub struct SrtpCaller {
    sip: UdpSocket,
    rtp: UdpSocket,
    local: SocketAddr,
    pub rtp_addr: SocketAddr,
    proxy: SocketAddr,
    pub call_id: String,
    from_tag: String,
    cseq: u32,
    sdp_version: u32,
    dialog: Option<Dialog>,
    /// The a=crypto lines of our last offer (each with the key we would send with).
    offered: Vec<Crypto>,
    /// The line we send with, and its context.
    pub tx_crypto: Option<Crypto>,
    tx: Option<SrtpContext>,
    sender: RtpSender,
    tone: Vec<u8>,
    at: usize,
    /// The gateway's line (the key it sends with), from its last SDP.
    pub gateway_crypto: Option<Crypto>,
    /// Where the gateway wants our media (its last SDP's c=/m=).
    pub gateway_media: Option<SocketAddr>,
    /// The key to answer the gateway's next re-INVITE with (else the current one).
    pub next_answer_key: Option<MasterKey>,
    /// Everything that reached our RTP port.
    pub received: Vec<Received>,
    pub sent: u32,
    /// Re-INVITEs from the gateway that we answered (counting retransmissions once).
    pub reinvites_answered: Vec<u32>,
    /// `a=crypto` values added to our offers as they are (e.g. suites the gateway does not
    /// speak); any makes the offer `RTP/SAVP`.
    pub raw_crypto: Vec<String>,
}

impl SrtpCaller {
    pub fn new(proxy: SocketAddr) -> Self {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.set_nonblocking(true).unwrap();
        rtp.set_nonblocking(true).unwrap();
        let pcm = media::tone::sine(1000.0, 0.25, 8000, 8000);
        let mut tone = Vec::new();
        media::g711::encode_frame(Law::Pcmu, &pcm, &mut tone);
        let mut seed = [0u8; 8];
        rand::fill(&mut seed[..]);
        Self {
            local: sip.local_addr().unwrap(),
            rtp_addr: rtp.local_addr().unwrap(),
            sip,
            rtp,
            proxy,
            call_id: format!("srtp-{}", rand_hex(8)),
            from_tag: rand_hex(4),
            cseq: 0,
            sdp_version: 0,
            dialog: None,
            offered: Vec::new(),
            tx_crypto: None,
            tx: None,
            sender: RtpSender::new(0, u64::from_le_bytes(seed)),
            tone,
            at: 0,
            gateway_crypto: None,
            gateway_media: None,
            next_answer_key: None,
            received: Vec::new(),
            sent: 0,
            reinvites_answered: Vec::new(),
            raw_crypto: Vec::new(),
        }
    }

    /// Our SDP with `crypto` lines (none: clear RTP/AVP) and `direction`.
    fn sdp(&mut self, crypto: &[Crypto], direction: &str) -> String {
        self.sdp_version += 1;
        let proto = if crypto.is_empty() && self.raw_crypto.is_empty() {
            "RTP/AVP"
        } else {
            "RTP/SAVP"
        };
        let mut s = format!(
            "v=0\r\no=srtpcaller 42 {v} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} {proto} 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na={direction}\r\n",
            v = self.sdp_version,
            port = self.rtp_addr.port(),
        );
        for c in crypto {
            s.push_str(&format!("a=crypto:{}\r\n", c.to_value()));
        }
        for c in &self.raw_crypto {
            s.push_str(&format!("a=crypto:{c}\r\n"));
        }
        s
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch=z9hG4bK{branch};rport", self.local)
    }

    fn from(&self) -> String {
        format!("<sip:srtp-caller@example.net>;tag={}", self.from_tag)
    }

    fn send_sip(&self, text: &str, to: SocketAddr) {
        self.sip.send_to(text.as_bytes(), to).unwrap();
    }

    fn recv_sip(&self) -> Option<(Sip, SocketAddr)> {
        let mut buf = [0u8; 65_535];
        match self.sip.recv_from(&mut buf) {
            Ok((n, from)) => Sip::parse(&buf[..n]).map(|m| (m, from)),
            Err(_) => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        method: &str,
        uri: &str,
        branch: &str,
        to: &str,
        cseq: u32,
        routes: &[String],
        body: &str,
    ) -> String {
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            self.via(branch),
            self.from(),
            self.call_id
        );
        for r in routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        if method == "INVITE" {
            m.push_str(&format!("Contact: <sip:srtp-caller@{}>\r\n", self.local));
        }
        if !body.is_empty() {
            m.push_str("Content-Type: application/sdp\r\n");
        }
        m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        m
    }

    /// Sends a request (retransmitted every 500 ms until a response) and returns its final
    /// response. Requests from the far end meanwhile are answered.
    fn transact(&mut self, text: &str, cseq: u32, method: &str) -> Sip {
        self.send_sip(text, self.proxy);
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut retx = Instant::now() + Duration::from_millis(500);
        loop {
            assert!(Instant::now() < deadline, "no final response to {method}");
            if let Some((m, from)) = self.recv_sip() {
                if m.status().is_none() {
                    self.incoming(&m, from);
                    continue;
                }
                if m.header("call-id") != Some(self.call_id.as_str())
                    || m.cseq() != (cseq, method.to_owned())
                {
                    continue;
                }
                let status = m.status().unwrap_or(0);
                if status >= 200 {
                    return m;
                }
                retx = deadline; // provisional: stop retransmitting
                continue;
            }
            if Instant::now() >= retx {
                self.send_sip(text, self.proxy);
                retx = Instant::now() + Duration::from_millis(500);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Calls `sip:alice@localhost` offering `crypto` (none: clear RTP); the final status.
    pub fn invite(&mut self, crypto: Vec<Crypto>) -> u16 {
        self.offered = crypto.clone();
        let body = self.sdp(&crypto, "sendrecv");
        self.cseq += 1;
        let branch = rand_hex(8);
        let to = "<sip:alice@localhost>";
        let text = self.message(
            "INVITE",
            "sip:alice@localhost",
            &branch,
            to,
            self.cseq,
            &[],
            &body,
        );
        let resp = self.transact(&text, self.cseq, "INVITE");
        let status = resp.status().unwrap_or(0);
        let to = resp.header("to").unwrap_or_default().to_owned();
        if status >= 300 {
            let ack = self.message(
                "ACK",
                "sip:alice@localhost",
                &branch,
                &to,
                self.cseq,
                &[],
                "",
            );
            self.send_sip(&ack, self.proxy);
            return status;
        }
        let routes: Vec<String> = resp
            .all("record-route")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|r| r.trim().to_owned())
            .rev()
            .collect();
        let target = resp
            .header("contact")
            .and_then(|c| c.split_once('<'))
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(u, _)| u.to_owned())
            .expect("2xx with a Contact");
        self.dialog = Some(Dialog { to, routes, target });
        self.ack(self.cseq);
        self.take_answer(&resp.body);
        status
    }

    fn ack(&self, cseq: u32) {
        let d = self.dialog.clone().expect("dialog");
        let ack = self.message("ACK", &d.target, &rand_hex(8), &d.to, cseq, &d.routes, "");
        self.send_sip(&ack, self.proxy);
    }

    /// The gateway's SDP answer to our offer: its media address, and with SRTP its line,
    /// which must answer one of ours (whose key we then send with).
    fn take_answer(&mut self, body: &str) {
        let a = media::sdp::parse_audio(body.as_bytes()).expect("the gateway's SDP parses");
        self.gateway_media = Some(SocketAddr::new(a.addr, a.port));
        assert_eq!(a.laws.first(), Some(&Law::Pcmu), "{body}");
        if self.offered.is_empty() {
            assert_eq!(a.transport, Transport::Rtp, "{body}");
            self.gateway_crypto = None;
            return;
        }
        assert_eq!(a.transport, Transport::Srtp, "SRTP answered SRTP: {body}");
        assert_eq!(
            a.crypto.len(),
            1,
            "exactly one a=crypto in the answer: {body}"
        );
        let theirs = a.crypto[0].clone();
        let ours = self
            .offered
            .iter()
            .find(|c| c.tag == theirs.tag && c.suite == theirs.suite)
            .unwrap_or_else(|| panic!("the answer's tag and suite are one of ours: {body}"))
            .clone();
        assert!(
            self.offered.iter().all(|c| c.key != theirs.key),
            "the gateway sends under its own key, not ours"
        );
        self.use_tx(Some(ours));
        self.gateway_crypto = Some(theirs);
    }

    fn use_tx(&mut self, crypto: Option<Crypto>) {
        if self.tx_crypto != crypto {
            self.tx = crypto.as_ref().map(SrtpContext::from_crypto);
            self.tx_crypto = crypto;
        }
    }

    /// Re-INVITEs with `direction` and (for SRTP) `crypto`; the final status.
    pub fn reinvite(&mut self, crypto: Vec<Crypto>, direction: &str) -> u16 {
        self.offered = crypto.clone();
        let body = self.sdp(&crypto, direction);
        self.cseq += 1;
        let d = self.dialog.clone().expect("dialog");
        let text = self.message(
            "INVITE",
            &d.target,
            &rand_hex(8),
            &d.to,
            self.cseq,
            &d.routes,
            &body,
        );
        let resp = self.transact(&text, self.cseq, "INVITE");
        let status = resp.status().unwrap_or(0);
        if status < 300 {
            self.ack(self.cseq);
            self.take_answer(&resp.body);
        } else {
            let ack = self.message(
                "ACK",
                &d.target,
                &rand_hex(8),
                resp.header("to").unwrap_or_default(),
                self.cseq,
                &d.routes,
                "",
            );
            self.send_sip(&ack, self.proxy);
        }
        status
    }

    /// A request from the far end (through the server): re-INVITEs get 200 with our
    /// answer; ACKs are taken; anything else gets 200 too.
    fn incoming(&mut self, req: &Sip, from: SocketAddr) {
        let Some(method) = req.method().map(str::to_owned) else {
            return;
        };
        if method == "ACK" {
            return;
        }
        let mut body = String::new();
        if method == "INVITE" {
            let offer: AudioOffer = media::sdp::parse_audio(req.body.as_bytes())
                .unwrap_or_else(|e| panic!("the gateway's re-INVITE offer: {e}: {}", req.body));
            self.gateway_media = Some(SocketAddr::new(offer.addr, offer.port));
            let direction = match offer.direction {
                media::sdp::Direction::SendOnly => "recvonly",
                media::sdp::Direction::RecvOnly => "sendonly",
                media::sdp::Direction::Inactive => "inactive",
                media::sdp::Direction::SendRecv => "sendrecv",
            };
            let answer = match offer.crypto.first() {
                Some(theirs) => {
                    // Answer its line (its tag and suite), with our current key or a new one.
                    let key = match self.next_answer_key.take() {
                        Some(k) => k,
                        None => self.tx_crypto.clone().expect("an SRTP call").key,
                    };
                    let ours = theirs.answer(key);
                    self.gateway_crypto = Some(theirs.clone());
                    self.use_tx(Some(ours.clone()));
                    vec![ours]
                }
                None => Vec::new(),
            };
            body = self.sdp(&answer, direction);
            let (n, _) = req.cseq();
            if !self.reinvites_answered.contains(&n) {
                self.reinvites_answered.push(n);
            }
        }
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for v in req.all("via") {
            resp.push_str(&format!("Via: {v}\r\n"));
        }
        for rr in req.all("record-route") {
            resp.push_str(&format!("Record-Route: {rr}\r\n"));
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            resp.push_str(&format!(
                "{name}: {}\r\n",
                req.header(name).unwrap_or_default()
            ));
        }
        resp.push_str(&format!("Contact: <sip:srtp-caller@{}>\r\n", self.local));
        if !body.is_empty() {
            resp.push_str("Content-Type: application/sdp\r\n");
        }
        resp.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.send_sip(&resp, from);
    }

    /// The next 20 ms of tone as an RTP packet (clear), advancing the stream.
    fn next_clear_packet(&mut self) -> Vec<u8> {
        let frame = self.tone[self.at..self.at + FRAME_SAMPLES].to_vec();
        self.at = (self.at + FRAME_SAMPLES) % self.tone.len();
        let mut p = Vec::new();
        self.sender
            .next_packet(&frame, FRAME_SAMPLES as u32, &mut p);
        p
    }

    /// Sends one frame of the tone to the gateway, protected with our key.
    pub fn send_frame(&mut self) {
        let mut p = self.next_clear_packet();
        if let Some(tx) = &mut self.tx {
            tx.protect_in_place(&mut p).unwrap();
        }
        let to = self.gateway_media.expect("the gateway's media address");
        self.rtp.send_to(&p, to).unwrap();
        self.sent += 1;
    }

    /// Sends a packet that is ours but altered after protection (a forgery from the right
    /// address): one bit of the encrypted payload flipped.
    pub fn send_tampered(&mut self) {
        let mut p = self.next_clear_packet();
        self.tx
            .as_mut()
            .expect("SRTP")
            .protect_in_place(&mut p)
            .unwrap();
        p[30] ^= 0x04;
        let to = self.gateway_media.expect("the gateway's media address");
        self.rtp.send_to(&p, to).unwrap();
    }

    /// For `dur`: sends the tone every 20 ms when `talk`, keeps what arrives on the RTP
    /// port, and answers requests from the far end.
    pub fn pump(&mut self, dur: Duration, talk: bool) {
        let end = Instant::now() + dur;
        let mut next = Instant::now();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if talk && Instant::now() >= next {
                self.send_frame();
                next += Duration::from_millis(20);
            }
            while let Ok((n, from)) = self.rtp.recv_from(&mut buf) {
                self.received.push(Received {
                    from,
                    bytes: buf[..n].to_vec(),
                });
            }
            while let Some((m, from)) = self.recv_sip() {
                if m.status().is_none() {
                    self.incoming(&m, from);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// BYE; its final status.
    pub fn bye(&mut self) -> u16 {
        self.cseq += 1;
        let d = self.dialog.clone().expect("dialog");
        let text = self.message(
            "BYE",
            &d.target,
            &rand_hex(8),
            &d.to,
            self.cseq,
            &d.routes,
            "",
        );
        self.transact(&text, self.cseq, "BYE").status().unwrap_or(0)
    }
}
