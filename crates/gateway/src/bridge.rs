//! The media bridge of one call: RTP or SRTP on the IP side (RFC 3550/3711, the law, payload
//! type and keys the SDP negotiated) to and from 20 ms G.711 bearer frames on the PSTN side
//! (the link's law), transcoding between µ-law and A-law when the two sides differ (a
//! 256-entry table per direction: G.711 law conversion is a byte map).
//!
//! No jitter buffer and no packet-loss concealment: RTP is forwarded as it comes, which on
//! one machine is what a real exchange's TDM side would see.
//!
//! **Only the announced source** (issue 11 item 5): the bridge takes media only from the
//! address and port the caller's SDP announced (`c=`/`m=` of the offer, or of the latest
//! re-INVITE or answer, see [`Bridge::update`]), and sends there. There is no latching to
//! whoever sends first (symmetric RTP, RFC 4961): that let anyone who could reach the port
//! first take over the call's audio. A packet from anywhere else is dropped and counted
//! (`rtp_refused_packets_total{reason="source"}`); so is, with SRTP, one whose tag does not
//! verify (`reason="auth"`: forged, tampered, or another key), a replay (`"replay"`) and one
//! that is not RTP at all (`"malformed"`). Packets of other payload types (DTMF events,
//! comfort noise) and RTCP are skipped without counting. A caller behind a NAT must announce
//! its public address (ICE/STUN, or a SIP ALG); the gateway does not guess it.
//!
//! **SRTP** (RFC 3711, keys by SDES, RFC 4568): the caller's key opens what it sends, ours
//! (fresh from the OS RNG for each call) protects what we send. The tag is checked before
//! anything is decrypted, in constant time. No key ever reaches a log: [`SrtpKeys`] and
//! the SRTP contexts print without them.
//!
//! Both directions are bounded: frames from the line wait in a queue of [`BRIDGE_QUEUE`]
//! (a full queue drops the frame, counted as `dropped_frames_total{queue="bridge"}`), and
//! frames toward the line go through the line's own bounded queue ([`LineTx`]), which drops
//! frames the line does not read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use media::g711::{FRAME_SAMPLES, Law};
use media::rtp::{self, RtpSender};
use media::srtp::{Crypto, SrtpContext, SrtpError};
use pstn::msg::{Cic, FRAME_LEN, Message};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::lines::LineTx;
use crate::metrics::{Dir, GatewayMetrics, Queue, RtpRefusal};

/// Frames from the line waiting to leave as RTP (320 ms).
pub(crate) const BRIDGE_QUEUE: usize = 16;

/// The SDES keys of a call's IP side: one `a=crypto` line per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrtpKeys {
    /// The caller's line: it sends under this key; we open its packets with it.
    pub(crate) inbound: Crypto,
    /// Ours (the line in our SDP): we protect what we send with it.
    pub(crate) outbound: Crypto,
}

/// The IP side of a call's media, as negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpSide {
    /// Where the caller receives RTP (its SDP's `c=`/`m=`): we send there, and accept
    /// media only from there.
    pub(crate) remote: SocketAddr,
    /// The law the SDP agreed on.
    pub(crate) law: Law,
    /// Its payload type number.
    pub(crate) payload_type: u8,
    /// SRTP keys; `None` for clear RTP.
    pub(crate) srtp: Option<SrtpKeys>,
}

/// A running bridge; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Bridge {
    /// Frames from the line (PSTN law) to send as RTP; see [`Bridge::frame_from_line`].
    to_ip: mpsc::Sender<[u8; FRAME_LEN]>,
    /// The latest negotiated IP side (re-INVITEs change address, payload type, keys).
    ip: watch::Sender<IpSide>,
    metrics: Arc<GatewayMetrics>,
    /// While set, no audio crosses in either direction (the call is on hold).
    pub(crate) held: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bridge {
    /// Queues a frame from the line for the caller; dropped (and counted) when the bridge is
    /// behind by [`BRIDGE_QUEUE`] frames.
    pub(crate) fn frame_from_line(&self, frame: [u8; FRAME_LEN]) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.to_ip.try_send(frame) {
            self.metrics.dropped_frame(Queue::Bridge);
        }
    }

    /// A new negotiation (a re-INVITE, or the answer to ours): from now on media goes to and
    /// is accepted from `ip.remote`, with its payload type and keys. A key that did not
    /// change keeps its SRTP state (rollover counter, replay window).
    pub(crate) fn update(&self, ip: IpSide) {
        self.ip.send_if_modified(|cur| {
            let changed = *cur != ip;
            *cur = ip;
            changed
        });
    }

    /// Starts bridging `socket` (the RTP port named in our SDP) and circuit `cic` of the line
    /// reached by `line`, whose frames are in `pstn`. `seed` makes our RTP stream's SSRC,
    /// sequence number and timestamp (pass a random value).
    pub(crate) fn start(
        socket: UdpSocket,
        ip: IpSide,
        pstn: Law,
        line: LineTx,
        cic: Cic,
        seed: u64,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let (to_ip, from_line) = mpsc::channel(BRIDGE_QUEUE);
        let held = Arc::new(AtomicBool::new(false));
        let (ip_tx, ip_rx) = watch::channel(ip.clone());
        let media = IpMedia::new(ip, pstn, seed);
        let task = tokio::spawn(run(
            socket,
            media,
            ip_rx,
            line,
            cic,
            from_line,
            held.clone(),
            metrics.clone(),
        ));
        Self {
            to_ip,
            ip: ip_tx,
            metrics,
            held,
            task,
        }
    }
}

/// The IP side's packet handling, without sockets: checks, opens and transcodes what
/// arrives, and builds (and protects) what leaves.
#[derive(Debug)]
pub(crate) struct IpMedia {
    ip: IpSide,
    pstn: Law,
    sender: RtpSender,
    /// Opens the caller's packets (SRTP only).
    rx: Option<SrtpContext>,
    /// Protects ours (SRTP only).
    tx: Option<SrtpContext>,
}

impl IpMedia {
    pub(crate) fn new(ip: IpSide, pstn: Law, seed: u64) -> Self {
        let (rx, tx) = match &ip.srtp {
            Some(k) => (
                Some(SrtpContext::from_crypto(&k.inbound)),
                Some(SrtpContext::from_crypto(&k.outbound)),
            ),
            None => (None, None),
        };
        Self {
            sender: RtpSender::new(ip.payload_type, seed),
            ip,
            pstn,
            rx,
            tx,
        }
    }

    /// Where our packets go.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.ip.remote
    }

    /// Applies a new negotiation; contexts whose key did not change are kept.
    pub(crate) fn update(&mut self, ip: IpSide) {
        let old = self.ip.srtp.as_ref();
        match &ip.srtp {
            Some(k) => {
                if old.is_none_or(|o| o.inbound != k.inbound) {
                    self.rx = Some(SrtpContext::from_crypto(&k.inbound));
                }
                if old.is_none_or(|o| o.outbound != k.outbound) {
                    self.tx = Some(SrtpContext::from_crypto(&k.outbound));
                }
            }
            None => {
                self.rx = None;
                self.tx = None;
            }
        }
        self.sender.set_payload_type(ip.payload_type);
        self.ip = ip;
    }

    /// A datagram from `src`, in `packet`: `Ok(Some(range))` is the voice payload's place in
    /// `packet` (opened, and transcoded to the PSTN law); `Ok(None)` something to skip quietly
    /// (another payload type, RTCP); `Err` a packet refused, to be counted.
    pub(crate) fn inbound(
        &mut self,
        src: SocketAddr,
        packet: &mut Vec<u8>,
    ) -> Result<Option<std::ops::Range<usize>>, RtpRefusal> {
        if src != self.ip.remote {
            return Err(RtpRefusal::Source);
        }
        if rtp::looks_like_rtcp(packet) {
            return Ok(None);
        }
        // The payload type from the fixed header alone: under SRTP the padding count (if
        // any) is encrypted and the tag follows, so the packet is parsed only once opened.
        if packet.len() < rtp::HEADER_LEN || packet[0] >> 6 != rtp::VERSION {
            return Err(RtpRefusal::Malformed);
        }
        let pt = packet[1] & 0x7F;
        if pt != self.ip.payload_type {
            return Ok(None); // comfort noise, DTMF events: not voice
        }
        if let Some(rx) = &mut self.rx {
            rx.unprotect_in_place(packet).map_err(|e| match e {
                SrtpError::Auth => RtpRefusal::Auth,
                SrtpError::Replay => RtpRefusal::Replay,
                _ => RtpRefusal::Malformed,
            })?;
        }
        let payload = rtp::parse(packet)
            .map_err(|_| RtpRefusal::Malformed)?
            .payload;
        let start = payload.as_ptr() as usize - packet.as_ptr() as usize;
        let range = start..start + payload.len();
        media::g711::transcode_in_place(self.ip.law, self.pstn, &mut packet[range.clone()]);
        Ok(Some(range))
    }

    /// The packet carrying `frame` (PSTN law) to the caller, in `out` (cleared first):
    /// transcoded, RTP, and protected with SRTP.
    pub(crate) fn outbound(&mut self, frame: &mut [u8; FRAME_LEN], out: &mut Vec<u8>) {
        media::g711::transcode_in_place(self.pstn, self.ip.law, frame);
        out.clear();
        self.sender.next_packet(frame, FRAME_SAMPLES as u32, out);
        if let Some(tx) = &mut self.tx {
            // Our own packet is always well-formed.
            if tx.protect_in_place(out).is_err() {
                out.clear();
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    socket: UdpSocket,
    mut media: IpMedia,
    mut updates: watch::Receiver<IpSide>,
    line: LineTx,
    cic: Cic,
    mut from_line: mpsc::Receiver<[u8; FRAME_LEN]>,
    held: Arc<AtomicBool>,
    metrics: Arc<GatewayMetrics>,
) {
    let mut pending: Vec<u8> = Vec::with_capacity(2 * FRAME_LEN);
    let mut seq: u16 = 0;
    let mut buf = vec![0u8; 2048];
    let mut packet = Vec::with_capacity(2048);
    let mut out = Vec::with_capacity(FRAME_LEN + rtp::HEADER_LEN + 16);
    let mut frame = [0u8; FRAME_LEN];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                packet.clear();
                packet.extend_from_slice(&buf[..n]);
                let payload = match media.inbound(src, &mut packet) {
                    Ok(Some(range)) => &packet[range],
                    Ok(None) => continue,
                    Err(why) => {
                        metrics.rtp_refused(why);
                        continue;
                    }
                };
                metrics.rtp(Dir::In);
                if held.load(Ordering::Relaxed) {
                    pending.clear();
                    continue;
                }
                pending.extend_from_slice(payload);
                while pending.len() >= FRAME_LEN {
                    frame.copy_from_slice(&pending[..FRAME_LEN]);
                    pending.drain(..FRAME_LEN);
                    seq = seq.wrapping_add(1);
                    line.send(Message::Frm { cic, seq, payload: frame });
                }
            }
            f = from_line.recv() => {
                let Some(mut f) = f else { return };
                if held.load(Ordering::Relaxed) {
                    continue;
                }
                media.outbound(&mut f, &mut out);
                if !out.is_empty() && socket.send_to(&out, media.remote()).await.is_ok() {
                    metrics.rtp(Dir::Out);
                }
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    return; // the exchange dropped the bridge
                }
                let ip = updates.borrow_and_update().clone();
                tracing::debug!(remote = %ip.remote, srtp = ip.srtp.is_some(), "media re-negotiated");
                media.update(ip);
                pending.clear();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use media::srtp::{MasterKey, Suite};

    use super::*;

    const TONE_PCMU: [u8; 8] = [0xff, 0xa9, 0xa0, 0xa9, 0xff, 0x29, 0x20, 0x29];

    fn crypto(tag: u32, fill: u8) -> Crypto {
        Crypto {
            tag,
            suite: Suite::AesCm128HmacSha1_80,
            key: MasterKey::from_bytes(&[fill; 30]),
        }
    }

    fn keys() -> SrtpKeys {
        SrtpKeys {
            inbound: crypto(1, 0x11),
            outbound: crypto(1, 0x22),
        }
    }

    fn voice() -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        for (i, b) in f.iter_mut().enumerate() {
            *b = TONE_PCMU[i % 8];
        }
        f
    }

    fn caller_packet(seq: u16, ctx: Option<&mut SrtpContext>) -> Vec<u8> {
        let mut p = Vec::new();
        rtp::write(
            0,
            false,
            seq,
            u32::from(seq) * 160,
            0xcafe,
            &voice(),
            &mut p,
        );
        if let Some(ctx) = ctx {
            ctx.protect_in_place(&mut p).unwrap();
        }
        p
    }

    fn side(remote: SocketAddr, srtp: Option<SrtpKeys>) -> IpSide {
        IpSide {
            remote,
            law: Law::Pcmu,
            payload_type: 0,
            srtp,
        }
    }

    #[test]
    fn srtp_is_opened_and_sent_protected() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut m = IpMedia::new(side(caller, Some(keys())), Law::Pcmu, 7);
        let mut caller_tx = SrtpContext::from_crypto(&keys().inbound);
        let mut p = caller_packet(10, Some(&mut caller_tx));
        assert!(
            !p.windows(8).any(|w| w == TONE_PCMU),
            "the voice is encrypted on the wire"
        );
        let range = m.inbound(caller, &mut p).unwrap().unwrap();
        assert_eq!(&p[range], &voice()[..], "opened with the caller's key");

        let mut frame = voice();
        let mut out = Vec::new();
        m.outbound(&mut frame, &mut out);
        assert_eq!(out.len(), rtp::HEADER_LEN + FRAME_LEN + 10, "80-bit tag");
        assert!(!out.windows(8).any(|w| w == TONE_PCMU), "no clear voice");
        // The caller opens it with our key, and with nothing else.
        let mut wrong = SrtpContext::from_crypto(&keys().inbound);
        assert_eq!(wrong.unprotect(&out), Err(SrtpError::Auth));
        let mut ours = SrtpContext::from_crypto(&keys().outbound);
        let clear = ours.unprotect(&out).unwrap();
        assert_eq!(rtp::parse(&clear).unwrap().payload, &voice()[..]);
    }

    #[test]
    fn clear_rtp_stays_clear_and_is_transcoded() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut m = IpMedia::new(side(caller, None), Law::Pcma, 7);
        let mut p = caller_packet(1, None);
        let range = m.inbound(caller, &mut p).unwrap().unwrap();
        let mut want = voice();
        media::g711::transcode_in_place(Law::Pcmu, Law::Pcma, &mut want);
        assert_eq!(&p[range], &want[..]);
        let mut frame = want;
        let mut out = Vec::new();
        m.outbound(&mut frame, &mut out);
        let mut back = want;
        media::g711::transcode_in_place(Law::Pcma, Law::Pcmu, &mut back);
        assert_eq!(rtp::parse(&out).unwrap().payload, &back[..]);
        assert_eq!(out.len(), rtp::HEADER_LEN + FRAME_LEN, "no tag");
    }

    #[test]
    fn only_the_announced_source_is_heard() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        for srtp in [None, Some(keys())] {
            let mut m = IpMedia::new(side(caller, srtp.clone()), Law::Pcmu, 7);
            let mut ctx = srtp.as_ref().map(|k| SrtpContext::from_crypto(&k.inbound));
            // Another port of the same host, and another host: refused, even first.
            for other in ["192.0.2.1:7002", "198.51.100.9:7000"] {
                let mut p = caller_packet(1, ctx.as_mut());
                assert_eq!(
                    m.inbound(other.parse().unwrap(), &mut p),
                    Err(RtpRefusal::Source)
                );
            }
            let mut p = caller_packet(2, ctx.as_mut());
            assert!(m.inbound(caller, &mut p).unwrap().is_some());
            // A re-INVITE moves the stream: the old address is now refused.
            let moved: SocketAddr = "192.0.2.1:7010".parse().unwrap();
            m.update(side(moved, srtp.clone()));
            let mut p = caller_packet(3, ctx.as_mut());
            assert_eq!(m.inbound(caller, &mut p), Err(RtpRefusal::Source));
            let mut p = caller_packet(4, ctx.as_mut());
            assert!(m.inbound(moved, &mut p).unwrap().is_some());
            assert_eq!(m.remote(), moved);
        }
    }

    #[test]
    fn forged_tampered_replayed_and_clear_packets_are_refused_under_srtp() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut m = IpMedia::new(side(caller, Some(keys())), Law::Pcmu, 7);
        let mut caller_tx = SrtpContext::from_crypto(&keys().inbound);
        let good = caller_packet(5, Some(&mut caller_tx));
        let mut tampered = good.clone();
        tampered[40] ^= 0x01;
        assert_eq!(m.inbound(caller, &mut tampered), Err(RtpRefusal::Auth));
        // Another key (e.g. ours, or an attacker's).
        let mut forger = SrtpContext::from_crypto(&crypto(1, 0x33));
        let mut forged = caller_packet(6, Some(&mut forger));
        assert_eq!(m.inbound(caller, &mut forged), Err(RtpRefusal::Auth));
        // Clear RTP injected into an SRTP call: no valid tag.
        let mut clear = caller_packet(7, None);
        assert_eq!(m.inbound(caller, &mut clear), Err(RtpRefusal::Auth));
        let mut ok = good.clone();
        assert!(m.inbound(caller, &mut ok).unwrap().is_some());
        let mut again = good;
        assert_eq!(m.inbound(caller, &mut again), Err(RtpRefusal::Replay));
        let mut junk = vec![0x80, 0, 0, 1];
        assert_eq!(m.inbound(caller, &mut junk), Err(RtpRefusal::Malformed));
    }

    #[test]
    fn padded_srtp_is_opened_before_it_is_parsed() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut m = IpMedia::new(side(caller, Some(keys())), Law::Pcmu, 7);
        // RTP with padding (P bit, 4 bytes, the count last): encrypted with the payload.
        let mut p = Vec::new();
        rtp::write(0, false, 9, 1440, 0xcafe, &voice(), &mut p);
        p[0] |= 0x20;
        p.extend_from_slice(&[0, 0, 0, 4]);
        SrtpContext::from_crypto(&keys().inbound)
            .protect_in_place(&mut p)
            .unwrap();
        let range = m.inbound(caller, &mut p).unwrap().unwrap();
        assert_eq!(&p[range], &voice()[..]);
    }

    #[test]
    fn new_keys_in_a_reinvite_replace_the_old_ones_and_same_keys_keep_their_state() {
        let caller: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut m = IpMedia::new(side(caller, Some(keys())), Law::Pcmu, 7);
        let mut old_tx = SrtpContext::from_crypto(&keys().inbound);
        let seen = caller_packet(1, Some(&mut old_tx));
        assert!(m.inbound(caller, &mut seen.clone()).unwrap().is_some());
        // The same keys again (a hold re-INVITE): the replay window is kept.
        m.update(side(caller, Some(keys())));
        assert_eq!(
            m.inbound(caller, &mut seen.clone()),
            Err(RtpRefusal::Replay)
        );
        // New keys from the caller: the old key no longer opens anything.
        let mut renewed = keys();
        renewed.inbound = crypto(2, 0x44);
        m.update(side(caller, Some(renewed.clone())));
        let mut stale = caller_packet(2, Some(&mut old_tx));
        assert_eq!(m.inbound(caller, &mut stale), Err(RtpRefusal::Auth));
        let mut new_tx = SrtpContext::from_crypto(&renewed.inbound);
        let mut fresh = caller_packet(3, Some(&mut new_tx));
        assert!(m.inbound(caller, &mut fresh).unwrap().is_some());
    }

    /// The running bridge, on loopback sockets: SRTP in, frames out to the line; frames in,
    /// SRTP out; the stranger's and the forger's packets dropped and counted.
    #[tokio::test]
    async fn bridge_protects_unprotects_and_counts_what_it_drops() {
        let metrics = Arc::new(GatewayMetrics::new());
        let gw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = gw.local_addr().unwrap();
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (line, mut line_rx) = LineTx::detached(64, metrics.clone());
        let bridge = Bridge::start(
            gw,
            side(caller.local_addr().unwrap(), Some(keys())),
            Law::Pcmu,
            line,
            Cic(2),
            42,
            metrics.clone(),
        );
        let mut caller_tx = SrtpContext::from_crypto(&keys().inbound);
        // A stranger first (it would have been latched to before), a forgery, then the
        // caller's real packet.
        let mut stranger_ctx = SrtpContext::from_crypto(&keys().inbound);
        stranger
            .send_to(&caller_packet(1, Some(&mut stranger_ctx)), gw_addr)
            .await
            .unwrap();
        let mut forged = caller_packet(2, Some(&mut caller_tx));
        forged[20] ^= 0xff;
        caller.send_to(&forged, gw_addr).await.unwrap();
        caller
            .send_to(&caller_packet(3, Some(&mut caller_tx)), gw_addr)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), line_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Message::Frm { payload, .. } = got else {
            panic!("a frame: {got:?}");
        };
        assert_eq!(
            payload,
            voice(),
            "only the caller's real packet reached the line"
        );
        assert!(line_rx.try_recv().is_err(), "and nothing else");
        let text = metrics.render();
        for series in [
            "trustring_gateway_rtp_refused_packets_total{reason=\"source\"} 1\n",
            "trustring_gateway_rtp_refused_packets_total{reason=\"auth\"} 1\n",
            "trustring_gateway_rtp_packets_total{direction=\"in\"} 1\n",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }

        // The line's frame leaves as SRTP only the caller's key for our side opens.
        bridge.frame_from_line(voice());
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), caller.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, gw_addr);
        let wire = &buf[..n];
        assert!(!wire.windows(8).any(|w| w == TONE_PCMU), "no clear voice");
        let mut ours = SrtpContext::from_crypto(&keys().outbound);
        let clear = ours.unprotect(wire).unwrap();
        assert_eq!(rtp::parse(&clear).unwrap().payload, &voice()[..]);

        // A re-INVITE moves the caller to another port: the old one is refused from then on.
        let moved = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        bridge.update(side(moved.local_addr().unwrap(), Some(keys())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        caller
            .send_to(&caller_packet(4, Some(&mut caller_tx)), gw_addr)
            .await
            .unwrap();
        moved
            .send_to(&caller_packet(5, Some(&mut caller_tx)), gw_addr)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), line_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, Message::Frm { .. }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(line_rx.try_recv().is_err());
        assert!(
            metrics
                .render()
                .contains("trustring_gateway_rtp_refused_packets_total{reason=\"source\"} 2\n")
        );
    }
}
