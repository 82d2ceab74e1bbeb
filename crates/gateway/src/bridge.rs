//! The media bridge of one call: RTP on the IP side (RFC 3550, the law and payload type the
//! SDP negotiated) to and from 20 ms G.711 bearer frames on the PSTN side (the link's law),
//! transcoding between µ-law and A-law when the two sides differ (a 256-entry table per
//! direction: G.711 law conversion is a byte map).
//!
//! No jitter buffer and no packet-loss concealment: RTP is forwarded as it comes, which on
//! one machine is what a real exchange's TDM side would see. The RTP destination latches to
//! the source of the first packet received (symmetric RTP, RFC 4961), so a caller behind a
//! NAT still hears the phone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use media::g711::{FRAME_SAMPLES, Law};
use media::rtp::{self, RtpSender};
use pstn::msg::{Cic, FRAME_LEN, Message};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::{Dir, GatewayMetrics};

/// The IP side of a call's media, as negotiated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpSide {
    /// Where the caller receives RTP (from its SDP).
    pub(crate) remote: SocketAddr,
    /// The law the SDP agreed on.
    pub(crate) law: Law,
    /// Its payload type number.
    pub(crate) payload_type: u8,
}

/// A running bridge; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Bridge {
    /// Frames from the line (PSTN law) to send as RTP.
    pub(crate) to_ip: mpsc::UnboundedSender<[u8; FRAME_LEN]>,
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
    /// Starts bridging `socket` (the RTP port named in our SDP) and circuit `cic` of the line
    /// reached by `line`, whose frames are in `pstn`.
    pub(crate) fn start(
        socket: UdpSocket,
        ip: IpSide,
        pstn: Law,
        line: mpsc::UnboundedSender<Message>,
        cic: Cic,
        seed: u64,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let (to_ip, from_line) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            socket,
            ip,
            pstn,
            line,
            cic,
            seed,
            from_line,
            held.clone(),
            metrics,
        ));
        Self { to_ip, held, task }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    socket: UdpSocket,
    ip: IpSide,
    pstn: Law,
    line: mpsc::UnboundedSender<Message>,
    cic: Cic,
    seed: u64,
    mut from_line: mpsc::UnboundedReceiver<[u8; FRAME_LEN]>,
    held: Arc<AtomicBool>,
    metrics: Arc<GatewayMetrics>,
) {
    let mut remote = ip.remote;
    let mut latched = false;
    let mut sender = RtpSender::new(ip.payload_type, seed);
    let mut pending: Vec<u8> = Vec::with_capacity(2 * FRAME_LEN);
    let mut seq: u16 = 0;
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(FRAME_LEN + rtp::HEADER_LEN);
    let mut frame = [0u8; FRAME_LEN];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                let Ok(pkt) = rtp::parse(&buf[..n]) else { continue };
                if pkt.payload_type != ip.payload_type {
                    continue; // comfort noise, DTMF events, RTCP on the same port: not voice
                }
                if !latched {
                    remote = src;
                    latched = true;
                } else if src != remote {
                    continue; // not the caller's stream: nobody injects audio into the call
                }
                metrics.rtp(Dir::In);
                if held.load(Ordering::Relaxed) {
                    pending.clear();
                    continue;
                }
                let start = pending.len();
                pending.extend_from_slice(pkt.payload);
                media::g711::transcode_in_place(ip.law, pstn, &mut pending[start..]);
                while pending.len() >= FRAME_LEN {
                    frame.copy_from_slice(&pending[..FRAME_LEN]);
                    pending.drain(..FRAME_LEN);
                    seq = seq.wrapping_add(1);
                    if line.send(Message::Frm { cic, seq, payload: frame }).is_err() {
                        return;
                    }
                }
            }
            f = from_line.recv() => {
                let Some(mut f) = f else { return };
                if held.load(Ordering::Relaxed) {
                    continue;
                }
                media::g711::transcode_in_place(pstn, ip.law, &mut f);
                out.clear();
                sender.next_packet(&f, FRAME_SAMPLES as u32, &mut out);
                if socket.send_to(&out, remote).await.is_ok() {
                    metrics.rtp(Dir::Out);
                }
            }
        }
    }
}
