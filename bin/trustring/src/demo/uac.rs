//! The demo's caller: a minimal SIP UAC (RFC 3261 §8.1, §12, §13) that places one call
//! offering G.711 (PCMU, PCMA), waits for the answer, talks for the hold time (a 1 kHz tone,
//! 20 ms packets, to where the answer's SDP says), and hangs up. Just enough for a demo on
//! loopback: it follows the route set of the 2xx and, over UDP, retransmits the INVITE and
//! the BYE on T1 doubling.
//!
//! Its SIP goes over TLS by default (RFC 3261 §26): one connection to the proxy's TLS
//! listener, the server's key pinned (the fingerprint the operator hands out, the one in the
//! enrolment URI), stream framing by `sip_core::message::frame_stream`, Via `SIP/2.0/TLS`;
//! plain UDP with `demo --plain-sip`.
//!
//! By default it offers SRTP (`RTP/SAVP`, RFC 3711) keyed by SDES (RFC 4568): one
//! `a=crypto` line, AES_CM_128_HMAC_SHA1_80 with a fresh master key from the OS random number
//! generator. The answer must be SRTP with our tag (else no audio is sent); the tone leaves
//! protected under our key, and what comes back is opened with the answerer's key (packets
//! that do not authenticate are counted, never played). The key is never printed. SDES keys
//! must only cross TLS-protected signalling: with `--plain-sip` they cross loopback in clear.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use media::g711::{FRAME_SAMPLES, Law, SAMPLE_RATE};
use media::sdp::Transport;
use media::srtp::{Crypto, MasterKey, SrtpContext, Suite};
use sip_core::message::{
    Frame, HeaderName, Message, Method, NameAddr, Request, Response, Uri, frame_stream, parse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::MissedTickBehavior;
use tokio_rustls::client::TlsStream;

/// The caller's test tone: the phone must hear this pitch.
pub(crate) const TONE_HZ: f64 = 1000.0;
/// Its amplitude, of full scale: loud, well clear of G.711's clipping.
const TONE_AMPLITUDE: f64 = 0.5;
/// Samples per RTP packet: 20 ms of G.711.
const PACKET_SAMPLES: u32 = FRAME_SAMPLES as u32;

/// What happened to the call.
#[derive(Debug)]
pub(crate) struct CallResult {
    /// Call-ID.
    pub(crate) call_id: String,
    /// Provisional statuses seen, in order.
    pub(crate) provisional: Vec<u16>,
    /// The final status.
    pub(crate) status: u16,
    /// When the INVITE left and when the answer came.
    pub(crate) setup_ms: u128,
    /// The audio sent while the call was up; `Err` says why none was (no usable SDP).
    pub(crate) audio: Result<AudioSent, String>,
}

/// What the caller sent and heard on an answered call.
#[derive(Debug)]
pub(crate) struct AudioSent {
    /// Where the RTP went (the answer's SDP).
    pub(crate) to: SocketAddr,
    /// The law the answer chose.
    pub(crate) law: Law,
    /// The SRTP suite the answer chose; `None`: clear RTP.
    pub(crate) srtp: Option<Suite>,
    /// RTP packets sent.
    pub(crate) sent: u32,
    /// RTP packets that came back (the phone's side of the call), authenticated under the
    /// answerer's key when SRTP.
    pub(crate) received: u32,
    /// Packets that came back and did not authenticate (or were not RTP).
    pub(crate) refused: u32,
}

impl AudioSent {
    /// One line for the demo's summary, e.g. `101 SRTP packets (PCMU, AES_CM_128_HMAC_SHA1_80,
    /// SDES keys) to the gateway at …`.
    pub(crate) fn summary(&self) -> String {
        let media = match self.srtp {
            Some(suite) => format!("SRTP packets ({}, {}, SDES keys)", self.law, suite.name()),
            None => format!("RTP packets ({}, clear: no SRTP)", self.law),
        };
        let refused = if self.refused > 0 {
            format!(", refused {} that did not authenticate", self.refused)
        } else {
            String::new()
        };
        format!(
            "the caller sent {} {media} to the gateway at {} and got {} back{refused}",
            self.sent, self.to, self.received
        )
    }
}

/// The SDES line the demo's caller offers: tag 1, AES_CM_128_HMAC_SHA1_80, a fresh key from
/// the OS random number generator.
fn fresh_crypto() -> anyhow::Result<Crypto> {
    use rand::TryRng as _;
    let mut bytes = [0u8; 30];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    Ok(Crypto {
        tag: 1,
        suite: Suite::AesCm128HmacSha1_80,
        key: MasterKey::from_bytes(&bytes),
    })
}

/// How the caller's media is protected, once the answer is in: our context for what we
/// send, the answerer's for what we receive.
struct Protection {
    suite: Suite,
    tx: SrtpContext,
    rx: SrtpContext,
}

/// How the caller's SIP reaches the proxy.
enum Signalling {
    /// Datagrams to the proxy's UDP port.
    Udp(UdpSocket),
    /// One TLS connection to the proxy's TLS port, and what was read but not yet framed.
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        pending: Vec<u8>,
    },
}

pub(crate) struct Uac {
    sig: Signalling,
    local: SocketAddr,
    proxy: SocketAddr,
    /// The RTP socket named in the offer.
    rtp: UdpSocket,
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Uac {
    /// A caller that sends its SIP to the proxy's UDP port `proxy`.
    pub(crate) async fn udp(proxy: SocketAddr) -> anyhow::Result<Self> {
        let sock = UdpSocket::bind((proxy.ip(), 0)).await?;
        let local = sock.local_addr()?;
        let rtp = UdpSocket::bind((proxy.ip(), 0)).await?;
        Ok(Self {
            sig: Signalling::Udp(sock),
            local,
            proxy,
            rtp,
        })
    }

    /// A caller connected to the proxy's TLS listener `proxy`, trusting only the server key
    /// `pin`.
    pub(crate) async fn tls(proxy: SocketAddr, pin: tls::Fingerprint) -> anyhow::Result<Self> {
        let config = tls::pinned_client_config(pin)?;
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(proxy))
            .await
            .context("connecting to the proxy's TLS port timed out")?
            .with_context(|| format!("connecting to {proxy}"))?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let name = tls::pki_types::ServerName::from(proxy.ip());
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {proxy} (key pinned to {pin})"))?;
        let rtp = UdpSocket::bind((proxy.ip(), 0)).await?;
        Ok(Self {
            sig: Signalling::Tls {
                stream: Box::new(stream),
                pending: Vec::new(),
            },
            local,
            proxy,
            rtp,
        })
    }

    /// The caller's SIP address (its UDP socket's, or its TLS connection's local address):
    /// what the server's trace names it by.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the transport is reliable: then nothing is retransmitted (RFC 3261 §17.1).
    fn reliable(&self) -> bool {
        matches!(self.sig, Signalling::Tls { .. })
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.sig {
            Signalling::Udp(sock) => {
                sock.send_to(bytes, self.proxy).await?;
            }
            Signalling::Tls { stream, .. } => {
                stream.write_all(bytes).await?;
                stream.flush().await?;
            }
        }
        Ok(())
    }

    /// The next message before `until`; `None` at the deadline (or when the connection
    /// closed).
    async fn recv(&mut self, until: Instant) -> Option<Message> {
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            match &mut self.sig {
                Signalling::Udp(sock) => {
                    let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf))
                        .await
                        .ok()?
                        .ok()?;
                    if let Ok(m) = parse(&buf[..n]) {
                        return Some(m);
                    }
                }
                Signalling::Tls { stream, pending } => {
                    match frame_stream(pending) {
                        Ok(Frame::Message(n)) => {
                            let rest = pending.split_off(n.min(pending.len()));
                            let msg = std::mem::replace(pending, rest);
                            if let Ok(m) = parse(&msg) {
                                return Some(m);
                            }
                            continue;
                        }
                        Ok(Frame::KeepAlive(n)) => {
                            pending.drain(..n.min(pending.len()));
                            continue;
                        }
                        Ok(Frame::Incomplete) => {}
                        // The stream cannot be resynchronised.
                        Err(_) => return None,
                    }
                    let n = tokio::time::timeout(left, stream.read(&mut buf))
                        .await
                        .ok()?
                        .ok()?;
                    if n == 0 {
                        return None;
                    }
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    fn via(&self, branch: &str) -> String {
        let transport = if self.reliable() { "TLS" } else { "UDP" };
        format!(
            "SIP/2.0/{transport} {};branch=z9hG4bK{branch};rport",
            self.local
        )
    }

    /// The caller's Contact: `;transport=tls` over TLS (RFC 3261 §19.1.4).
    fn contact(&self) -> String {
        let param = if self.reliable() {
            ";transport=tls"
        } else {
            ""
        };
        format!("<sip:caller@{}{param}>", self.local)
    }

    /// Calls `target` (e.g. `sip:alice@localhost`) offering SRTP when `srtp` (else clear
    /// RTP), talks on an answered call for `hold` (the tone), then sends BYE.
    pub(crate) async fn call(
        &mut self,
        target: &str,
        hold: Duration,
        srtp: bool,
    ) -> anyhow::Result<CallResult> {
        let call_id = format!("demo-{}", rand_hex(8));
        let from_tag = rand_hex(4);
        let uri = Uri::parse(target).map_err(|e| anyhow::anyhow!("{target}: {e:?}"))?;
        let mut h = sip_core::message::Headers(Vec::new());
        let branch = rand_hex(8);
        h.push(HeaderName::Via, self.via(&branch));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("\"Demo caller\" <sip:caller@example.net>;tag={from_tag}"),
        );
        h.push(HeaderName::To, format!("<{target}>"));
        h.push(HeaderName::CallId, call_id.clone());
        h.push(HeaderName::CSeq, "1 INVITE");
        h.push(HeaderName::Contact, self.contact());
        h.push(HeaderName::ContentType, "application/sdp");
        let rtp = self.rtp.local_addr()?;
        let ours = if srtp { Some(fresh_crypto()?) } else { None };
        let mut sdp = format!(
            "v=0\r\no=demo 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} {proto} 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=ptime:20\r\na=sendrecv\r\n",
            ip = rtp.ip(),
            port = rtp.port(),
            proto = if srtp { "RTP/SAVP" } else { "RTP/AVP" },
        );
        if let Some(c) = &ours {
            sdp.push_str(&format!("a=crypto:{}\r\n", c.to_value()));
        }
        let invite = Request {
            method: Method::Invite,
            uri,
            headers: h,
            body: Bytes::from(sdp),
        };
        let bytes = invite.to_bytes();
        let t0 = Instant::now();
        self.send(&bytes).await?;
        let mut provisional = Vec::new();
        let mut next_retx = Instant::now() + Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs(40);
        let answer: Response = loop {
            let until = next_retx.min(deadline);
            match self.recv(until).await {
                Some(Message::Response(r)) if r.call_id() == call_id => {
                    if r.status < 200 {
                        next_retx = deadline;
                        if r.status > 100 {
                            provisional.push(r.status);
                        }
                        continue;
                    }
                    break r;
                }
                Some(_) => {}
                None if Instant::now() >= deadline => bail!("no final answer to the INVITE"),
                None if self.reliable() => next_retx = deadline,
                None => {
                    self.send(&bytes).await?;
                    next_retx = Instant::now() + Duration::from_secs(1);
                }
            }
        };
        let setup_ms = t0.elapsed().as_millis();
        let to = answer
            .headers
            .get(&HeaderName::To)
            .context("answer without To")?
            .to_owned();
        if answer.status >= 300 {
            // ACK of a non-2xx is hop by hop, same branch (§17.1.1.3).
            let ack = self.request(
                Method::Ack,
                &invite.uri,
                &branch,
                &from_tag,
                &to,
                &call_id,
                1,
                &[],
            );
            self.send(&ack.to_bytes()).await?;
            return Ok(CallResult {
                call_id,
                provisional,
                status: answer.status,
                setup_ms,
                audio: Err(format!("the call was not answered ({})", answer.status)),
            });
        }
        // §12.1.2: the route set is the Record-Route in reverse; the remote target the Contact.
        let routes: Vec<String> = answer
            .headers
            .get_all(&HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let remote = answer
            .headers
            .get(&HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|n| n.uri)
            .context("2xx without Contact")?;
        let ack = self.request(
            Method::Ack,
            &remote,
            &rand_hex(8),
            &from_tag,
            &to,
            &call_id,
            1,
            &routes,
        );
        self.send(&ack.to_bytes()).await?;
        let talk_start = Instant::now();
        let audio = match media::sdp::parse_audio(&answer.body) {
            Ok(sdp) => match (
                sdp.laws.first().zip(sdp.payload_types.first()),
                protection(ours.as_ref(), &sdp),
            ) {
                (Some((&law, &pt)), Ok(p)) => {
                    let to = SocketAddr::new(sdp.addr, sdp.port);
                    self.talk(to, law, pt, p, hold).await
                }
                (None, _) => Err("the answer's SDP has no G.711".to_owned()),
                (_, Err(e)) => Err(e),
            },
            Err(e) => Err(format!("the answer's SDP: {e}")),
        };
        // Hold the call for the whole time even when no audio could be sent.
        tokio::time::sleep(hold.saturating_sub(talk_start.elapsed())).await;
        let bye = self.request(
            Method::Bye,
            &remote,
            &rand_hex(8),
            &from_tag,
            &to,
            &call_id,
            2,
            &routes,
        );
        let bye_bytes = bye.to_bytes();
        for attempt in 0..4u32 {
            if attempt == 0 || !self.reliable() {
                self.send(&bye_bytes).await?;
            }
            let until = Instant::now() + Duration::from_millis(500 << attempt);
            while let Some(m) = self.recv(until).await {
                match m {
                    Message::Response(r)
                        if r.call_id() == call_id && r.cseq().method == Method::Bye =>
                    {
                        return Ok(CallResult {
                            call_id,
                            provisional,
                            status: answer.status,
                            setup_ms,
                            audio,
                        });
                    }
                    // A retransmitted 2xx: ACK it again.
                    Message::Response(r) if r.call_id() == call_id && r.status < 300 => {
                        self.send(&ack.to_bytes()).await?;
                    }
                    _ => {}
                }
            }
        }
        bail!("no answer to the BYE")
    }

    /// Sends the tone to `to` for `hold` as RTP in `law` under payload type `pt` (protected
    /// with SRTP when `protection` says so), one 20 ms packet per tick of a timer (RFC 3551
    /// pacing), counting what comes back meanwhile.
    async fn talk(
        &self,
        to: SocketAddr,
        law: Law,
        pt: u8,
        mut protection: Option<Protection>,
        hold: Duration,
    ) -> Result<AudioSent, String> {
        // One second of tone: a whole number of cycles and of packets, so it loops seamlessly.
        let second = SAMPLE_RATE as usize;
        let pcm = media::tone::sine(TONE_HZ, TONE_AMPLITUDE, second, SAMPLE_RATE);
        let mut codes = Vec::with_capacity(second);
        media::g711::encode_frame(law, &pcm, &mut codes);
        let mut seed = [0u8; 8];
        rand::fill(&mut seed[..]);
        let mut sender = media::rtp::RtpSender::new(pt, u64::from_le_bytes(seed));
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        // A late tick is made up at once: the stream keeps real time, as a phone's would.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let end = tokio::time::Instant::now() + hold;
        let (mut sent, mut received, mut refused, mut at) = (0u32, 0u32, 0u32, 0usize);
        let mut packet = Vec::with_capacity(media::rtp::HEADER_LEN + FRAME_SAMPLES);
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                tick = ticks.tick() => {
                    if tick >= end {
                        break;
                    }
                    let frame = codes.get(at..at + FRAME_SAMPLES).unwrap_or_default();
                    at = (at + FRAME_SAMPLES) % codes.len().max(1);
                    packet.clear();
                    sender.next_packet(frame, PACKET_SAMPLES, &mut packet);
                    if let Some(p) = &mut protection {
                        p.tx
                            .protect_in_place(&mut packet)
                            .map_err(|e| format!("protecting our RTP: {e}"))?;
                    }
                    self.rtp
                        .send_to(&packet, to)
                        .await
                        .map_err(|e| format!("sending RTP to {to}: {e}"))?;
                    sent += 1;
                }
                got = self.rtp.recv_from(&mut buf) => {
                    let Ok((n, _)) = got else { continue };
                    let ok = match &mut protection {
                        Some(p) => p.rx.unprotect(&buf[..n]).is_ok(),
                        None => media::rtp::parse(&buf[..n]).is_ok(),
                    };
                    if ok {
                        received += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
        }
        Ok(AudioSent {
            to,
            law,
            srtp: protection.map(|p| p.suite),
            sent,
            received,
            refused,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: Method,
        uri: &Uri,
        branch: &str,
        from_tag: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        routes: &[String],
    ) -> Request {
        let mut h = sip_core::message::Headers(Vec::new());
        h.push(HeaderName::Via, self.via(branch));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("\"Demo caller\" <sip:caller@example.net>;tag={from_tag}"),
        );
        h.push(HeaderName::To, to);
        h.push(HeaderName::CallId, call_id);
        h.push(HeaderName::CSeq, format!("{cseq} {}", method.as_str()));
        for r in routes {
            h.push(HeaderName::Route, r.as_str());
        }
        Request {
            method,
            uri: uri.clone(),
            headers: h,
            body: Bytes::new(),
        }
    }
}

/// The protection the answer agreed to: none when we offered clear RTP; with SRTP offered, the
/// answer must be SRTP with our tag and suite (no audio otherwise: never fall back to clear).
fn protection(
    ours: Option<&Crypto>,
    answer: &media::sdp::AudioOffer,
) -> Result<Option<Protection>, String> {
    let Some(ours) = ours else {
        return Ok(None);
    };
    if answer.transport != Transport::Srtp {
        return Err("SRTP was offered, the answer is clear RTP: no audio sent".to_owned());
    }
    let theirs = answer
        .crypto
        .iter()
        .find(|c| c.tag == ours.tag && c.suite == ours.suite)
        .ok_or("the answer's a=crypto does not answer ours: no audio sent")?;
    Ok(Some(Protection {
        suite: ours.suite,
        tx: SrtpContext::from_crypto(ours),
        rx: SrtpContext::from_crypto(theirs),
    }))
}
