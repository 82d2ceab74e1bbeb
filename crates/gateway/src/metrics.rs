//! The gateway's metrics in the Prometheus text format 0.0.4 (`trustring gateway --http`,
//! `GET /metrics`): lines attached, calls up, calls by outcome, refused INVITEs (toll-fraud
//! checks), refused line attaches, TR-ISUP messages by type and direction, RTP packets and
//! bearer frames, RTP/SRTP packets refused (wrong source, failed authentication, replays),
//! SRTP and transcoded calls, and what the bounded queues shed (dropped bearer frames, lines
//! closed for not reading). Plain atomics, observed where things happen; a scrape
//! copies them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Record outcomes, listed at zero from the first scrape.
pub const OUTCOMES: [&str; 9] = [
    "answered",
    "busy",
    "declined",
    "no-answer",
    "cancelled",
    "cancelled-elsewhere",
    "voicemail",
    "refused",
    "failed",
];

/// TR-ISUP message names counted.
pub const ISUP_TYPES: [&str; 12] = [
    "IAM", "ACM", "ANM", "CPG", "REL", "RLC", "FRM", "ATT", "ATA", "ATR", "ATC", "ATP",
];

/// A bounded queue that drops bearer frames when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// A line's write queue (frames toward the line).
    Line = 0,
    /// A call's media bridge (frames toward the caller's RTP).
    Bridge = 1,
}

const QUEUES: [&str; 2] = ["line", "bridge"];

/// Why a media packet from the IP side was dropped (and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpRefusal {
    /// It came from an address or port other than the one the caller's SDP announced.
    Source = 0,
    /// SRTP whose authentication tag does not verify: forged, tampered, clear RTP injected
    /// into an SRTP call, or another key.
    Auth = 1,
    /// SRTP replayed (a packet index already received, or older than the window).
    Replay = 2,
    /// Not an RTP packet.
    Malformed = 3,
}

const RTP_REFUSALS: [&str; 4] = ["source", "auth", "replay", "malformed"];

/// Direction of a message or packet, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Received.
    In = 0,
    /// Sent.
    Out = 1,
}

/// Every counter and gauge of one gateway.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    lines: AtomicU64,
    calls_up: AtomicU64,
    transcoded: AtomicU64,
    srtp_calls: AtomicU64,
    rtp: [AtomicU64; 2],
    rtp_refused: [AtomicU64; RTP_REFUSALS.len()],
    outcomes: [AtomicU64; OUTCOMES.len()],
    isup: [[AtomicU64; 2]; ISUP_TYPES.len()],
    refused: Mutex<BTreeMap<String, u64>>,
    refused_attaches: Mutex<BTreeMap<String, u64>>,
    dropped_frames: [AtomicU64; QUEUES.len()],
    slow_lines_closed: AtomicU64,
}

impl GatewayMetrics {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn set_lines(&self, n: usize) {
        self.lines.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_calls(&self, n: usize) {
        self.calls_up.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn transcoded_call(&self) {
        self.transcoded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rtp(&self, dir: Dir) {
        self.rtp[dir as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A media packet from the IP side dropped, and why.
    pub(crate) fn rtp_refused(&self, why: RtpRefusal) {
        self.rtp_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A call whose IP side negotiated SRTP.
    pub(crate) fn srtp_call(&self) {
        self.srtp_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn isup(&self, name: &str, dir: Dir) {
        if let Some(i) = ISUP_TYPES.iter().position(|t| *t == name) {
            self.isup[i][dir as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn ended(&self, outcome: &str) {
        let i = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An INVITE refused by the toll-fraud checks, by reason kind (a short fixed word).
    pub(crate) fn refused(&self, kind: &str) {
        let mut m = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(kind.to_owned()).or_default() += 1;
    }

    /// A line whose attach was refused (or that was detached), by reason (a short fixed
    /// word).
    pub(crate) fn refused_attach(&self, reason: &str) {
        let mut m = self
            .refused_attaches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry(reason.to_owned()).or_default() += 1;
    }

    /// A bearer frame dropped because `queue` was full.
    pub(crate) fn dropped_frame(&self, queue: Queue) {
        self.dropped_frames[queue as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A line closed because it did not read its messages.
    pub(crate) fn slow_line_closed(&self) {
        self.slow_lines_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut o,
            "trustring_gateway_lines",
            "gauge",
            "Phone lines attached (TR-ISUP).",
        );
        let _ = writeln!(o, "trustring_gateway_lines {}", get(&self.lines));
        family(
            &mut o,
            "trustring_gateway_active_calls",
            "gauge",
            "Trunk calls ringing or up.",
        );
        let _ = writeln!(o, "trustring_gateway_active_calls {}", get(&self.calls_up));
        let name = "trustring_gateway_calls_total";
        family(
            &mut o,
            name,
            "counter",
            "Calls ended, by the outcome in their leg record.",
        );
        for (i, out) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(o, "{name}{{outcome=\"{out}\"}} {}", get(&self.outcomes[i]));
        }
        let name = "trustring_gateway_refused_invites_total";
        family(
            &mut o,
            name,
            "counter",
            "INVITEs refused by the toll-fraud checks, by reason.",
        );
        for (kind, n) in self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(o, "{name}{{reason=\"{kind}\"}} {n}");
        }
        let name = "trustring_gateway_refused_attaches_total";
        family(
            &mut o,
            name,
            "counter",
            "Line attaches refused (or lines detached), by reason.",
        );
        for (reason, n) in self
            .refused_attaches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {n}");
        }
        let name = "trustring_gateway_dropped_frames_total";
        family(
            &mut o,
            name,
            "counter",
            "Bearer frames dropped because a bounded queue was full, by queue.",
        );
        for (i, q) in QUEUES.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}{{queue=\"{q}\"}} {}",
                get(&self.dropped_frames[i])
            );
        }
        let name = "trustring_gateway_slow_lines_closed_total";
        family(
            &mut o,
            name,
            "counter",
            "Lines closed because they did not read their messages.",
        );
        let _ = writeln!(o, "{name} {}", get(&self.slow_lines_closed));
        let name = "trustring_gateway_isup_messages_total";
        family(
            &mut o,
            name,
            "counter",
            "TR-ISUP messages by type and direction (FRM: bearer frames).",
        );
        for (i, t) in ISUP_TYPES.iter().enumerate() {
            for (d, dir) in ["in", "out"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{name}{{type=\"{t}\",direction=\"{dir}\"}} {}",
                    get(&self.isup[i][d])
                );
            }
        }
        let name = "trustring_gateway_rtp_packets_total";
        family(
            &mut o,
            name,
            "counter",
            "RTP voice packets on the IP side, by direction.",
        );
        for (d, dir) in ["in", "out"].iter().enumerate() {
            let _ = writeln!(o, "{name}{{direction=\"{dir}\"}} {}", get(&self.rtp[d]));
        }
        let name = "trustring_gateway_rtp_refused_packets_total";
        family(
            &mut o,
            name,
            "counter",
            "RTP/SRTP packets from the IP side dropped, by reason (source: not the address the SDP announced; auth: SRTP tag did not verify; replay; malformed).",
        );
        for (i, r) in RTP_REFUSALS.iter().enumerate() {
            let _ = writeln!(o, "{name}{{reason=\"{r}\"}} {}", get(&self.rtp_refused[i]));
        }
        let name = "trustring_gateway_srtp_calls_total";
        family(
            &mut o,
            name,
            "counter",
            "Calls whose IP side negotiated SRTP (SDES).",
        );
        let _ = writeln!(o, "{name} {}", get(&self.srtp_calls));
        let name = "trustring_gateway_transcoded_calls_total";
        family(
            &mut o,
            name,
            "counter",
            "Calls whose IP side used the other G.711 law.",
        );
        let _ = writeln!(o, "{name} {}", get(&self.transcoded));
        o
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = GatewayMetrics::new();
        m.set_lines(2);
        m.ended("answered");
        m.ended("something-new");
        m.isup("IAM", Dir::Out);
        m.rtp(Dir::In);
        m.refused("bad-mac");
        m.rtp_refused(RtpRefusal::Auth);
        m.srtp_call();
        let t = m.render();
        assert!(t.contains("trustring_gateway_rtp_refused_packets_total{reason=\"auth\"} 1\n"));
        assert!(t.contains("trustring_gateway_rtp_refused_packets_total{reason=\"source\"} 0\n"));
        assert!(t.contains("trustring_gateway_srtp_calls_total 1\n"));
        assert!(t.contains("trustring_gateway_lines 2\n"), "{t}");
        assert!(t.contains("trustring_gateway_calls_total{outcome=\"answered\"} 1\n"));
        assert!(t.contains("trustring_gateway_calls_total{outcome=\"failed\"} 1\n"));
        assert!(
            t.contains("trustring_gateway_isup_messages_total{type=\"IAM\",direction=\"out\"} 1\n")
        );
        assert!(t.contains("trustring_gateway_rtp_packets_total{direction=\"in\"} 1\n"));
        assert!(t.contains("trustring_gateway_refused_invites_total{reason=\"bad-mac\"} 1\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
        }
    }
}
