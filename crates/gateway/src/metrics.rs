//! The gateway's metrics in the Prometheus text format 0.0.4 (`trustring gateway --http`,
//! `GET /metrics`): lines attached, calls up, calls by outcome, refused INVITEs (toll-fraud
//! checks), TR-ISUP messages by type and direction, RTP packets and bearer frames, and
//! transcoded calls. Plain atomics, observed where things happen; a scrape copies them.

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
pub const ISUP_TYPES: [&str; 10] = [
    "IAM", "ACM", "ANM", "CPG", "REL", "RLC", "FRM", "ATT", "ATA", "ATR",
];

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
    rtp: [AtomicU64; 2],
    outcomes: [AtomicU64; OUTCOMES.len()],
    isup: [[AtomicU64; 2]; ISUP_TYPES.len()],
    refused: Mutex<BTreeMap<String, u64>>,
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
        let t = m.render();
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
