//! The gateway's metrics (`trustring gateway --http`, `GET /metrics`): lines attached, calls
//! up, calls by outcome, refused INVITEs (toll-fraud checks), refused line attaches, TR-ISUP
//! messages by type and direction, RTP packets and bearer frames, RTP/SRTP packets refused
//! (wrong source, failed authentication, replays), SRTP and transcoded calls, and what the
//! bounded queues shed (dropped bearer frames, lines closed for not reading).
//!
//! Plain atomics, bumped where things happen (an RTP packet costs one relaxed add, no lock);
//! a scrape reads them through a `prometheus-client` collector, and the crate writes the
//! Prometheus text format 0.0.4 ([`GatewayMetrics::CONTENT_TYPE`]). The crate's own labelled
//! counters (`Family`) would take a read lock and a hash lookup per packet, so the values
//! stay ours.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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

/// The `direction` labels, indexed by [`Dir`].
const DIRS: [&str; 2] = ["in", "out"];

/// Every counter and gauge of one gateway.
#[derive(Debug)]
pub struct GatewayMetrics {
    counts: Arc<Counts>,
    /// Holds `counts` as its only collector.
    registry: Registry,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The values, shared with the registry that encodes them.
#[derive(Debug, Default)]
struct Counts {
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
    /// `Content-Type` of [`Self::render`]'s text (the Prometheus text format 0.0.4).
    pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

    /// All zero.
    pub fn new() -> Self {
        let counts = Arc::new(Counts::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&counts)));
        Self { counts, registry }
    }

    pub(crate) fn set_lines(&self, n: usize) {
        self.counts.lines.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_calls(&self, n: usize) {
        self.counts.calls_up.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn transcoded_call(&self) {
        self.counts.transcoded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rtp(&self, dir: Dir) {
        self.counts.rtp[dir as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A media packet from the IP side dropped, and why.
    pub(crate) fn rtp_refused(&self, why: RtpRefusal) {
        self.counts.rtp_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A call whose IP side negotiated SRTP.
    pub(crate) fn srtp_call(&self) {
        self.counts.srtp_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn isup(&self, name: &str, dir: Dir) {
        if let Some(i) = ISUP_TYPES.iter().position(|t| *t == name) {
            self.counts.isup[i][dir as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn ended(&self, outcome: &str) {
        let i = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.counts.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An INVITE refused by the toll-fraud checks, by reason kind (a short fixed word).
    pub(crate) fn refused(&self, kind: &str) {
        count(&self.counts.refused, kind);
    }

    /// A line whose attach was refused (or that was detached), by reason (a short fixed
    /// word).
    pub(crate) fn refused_attach(&self, reason: &str) {
        count(&self.counts.refused_attaches, reason);
    }

    /// A bearer frame dropped because `queue` was full.
    pub(crate) fn dropped_frame(&self, queue: Queue) {
        self.counts.dropped_frames[queue as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A line closed because it did not read its messages.
    pub(crate) fn slow_line_closed(&self) {
        self.counts
            .slow_lines_closed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition (format 0.0.4, served as [`Self::CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Cannot fail: a `String` takes every write, and the collector only passes on the
        // writer's errors.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
    *m.entry(key.to_owned()).or_default() += 1;
}

impl Collector for Counts {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut enc,
            "trustring_gateway_lines",
            "Phone lines attached (TR-ISUP).",
            MetricType::Gauge,
        )?
        .encode_gauge(&get(&self.lines))?;
        family(
            &mut enc,
            "trustring_gateway_active_calls",
            "Trunk calls ringing or up.",
            MetricType::Gauge,
        )?
        .encode_gauge(&get(&self.calls_up))?;
        let mut calls = family(
            &mut enc,
            "trustring_gateway_calls_total",
            "Calls ended, by the outcome in their leg record.",
            MetricType::Counter,
        )?;
        for (outcome, n) in OUTCOMES.iter().zip(&self.outcomes) {
            counter(&mut calls.encode_family(&[("outcome", *outcome)])?, get(n))?;
        }
        for (name, help, map) in [
            (
                "trustring_gateway_refused_invites_total",
                "INVITEs refused by the toll-fraud checks, by reason.",
                &self.refused,
            ),
            (
                "trustring_gateway_refused_attaches_total",
                "Line attaches refused (or lines detached), by reason.",
                &self.refused_attaches,
            ),
        ] {
            let mut refused = family(&mut enc, name, help, MetricType::Counter)?;
            let map = map.lock().unwrap_or_else(PoisonError::into_inner);
            for (reason, n) in map.iter() {
                counter(
                    &mut refused.encode_family(&[("reason", reason.as_str())])?,
                    *n,
                )?;
            }
        }
        let mut dropped = family(
            &mut enc,
            "trustring_gateway_dropped_frames_total",
            "Bearer frames dropped because a bounded queue was full, by queue.",
            MetricType::Counter,
        )?;
        for (queue, n) in QUEUES.iter().zip(&self.dropped_frames) {
            counter(&mut dropped.encode_family(&[("queue", *queue)])?, get(n))?;
        }
        counter(
            &mut family(
                &mut enc,
                "trustring_gateway_slow_lines_closed_total",
                "Lines closed because they did not read their messages.",
                MetricType::Counter,
            )?,
            get(&self.slow_lines_closed),
        )?;
        let mut isup = family(
            &mut enc,
            "trustring_gateway_isup_messages_total",
            "TR-ISUP messages by type and direction (FRM: bearer frames).",
            MetricType::Counter,
        )?;
        for (t, by_dir) in ISUP_TYPES.iter().zip(&self.isup) {
            for (dir, n) in DIRS.iter().zip(by_dir) {
                let labels = [("type", *t), ("direction", *dir)];
                counter(&mut isup.encode_family(&labels)?, get(n))?;
            }
        }
        let mut rtp = family(
            &mut enc,
            "trustring_gateway_rtp_packets_total",
            "RTP voice packets on the IP side, by direction.",
            MetricType::Counter,
        )?;
        for (dir, n) in DIRS.iter().zip(&self.rtp) {
            counter(&mut rtp.encode_family(&[("direction", *dir)])?, get(n))?;
        }
        let mut rtp_refused = family(
            &mut enc,
            "trustring_gateway_rtp_refused_packets_total",
            "RTP/SRTP packets from the IP side dropped, by reason (source: not the address the \
             SDP announced; auth: SRTP tag did not verify; replay; malformed).",
            MetricType::Counter,
        )?;
        for (reason, n) in RTP_REFUSALS.iter().zip(&self.rtp_refused) {
            counter(
                &mut rtp_refused.encode_family(&[("reason", *reason)])?,
                get(n),
            )?;
        }
        for (name, help, n) in [
            (
                "trustring_gateway_srtp_calls_total",
                "Calls whose IP side negotiated SRTP (SDES).",
                &self.srtp_calls,
            ),
            (
                "trustring_gateway_transcoded_calls_total",
                "Calls whose IP side used the other G.711 law.",
                &self.transcoded,
            ),
        ] {
            counter(
                &mut family(&mut enc, name, help, MetricType::Counter)?,
                get(n),
            )?;
        }
        Ok(())
    }
}

/// Starts the family `name`, spelled as its samples are: the encoder appends `_total` to a
/// counter's name itself, so it is cut here.
fn family<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    let name = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    enc.encode_descriptor(name, help, None, kind)
}

fn counter(m: &mut MetricEncoder<'_>, n: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&n, None)
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
        let names: Vec<String> = families(&t).into_iter().map(|(n, _)| n).collect();
        let want = [
            "lines",
            "active_calls",
            "calls_total",
            "refused_invites_total",
            "refused_attaches_total",
            "dropped_frames_total",
            "slow_lines_closed_total",
            "isup_messages_total",
            "rtp_packets_total",
            "rtp_refused_packets_total",
            "srtp_calls_total",
            "transcoded_calls_total",
        ]
        .map(|n| format!("trustring_gateway_{n}"));
        assert_eq!(names, want, "{t}");
    }

    /// Every family is declared once, `# HELP` then `# TYPE`, before its samples; counters
    /// are named `_total` in both; returns (family, type) in order.
    fn families(text: &str) -> Vec<(String, String)> {
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut help: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP name text");
                assert!(!text.is_empty(), "{line}");
                help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(help.take(), Some(name), "TYPE without HELP: {line}");
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(
                    kind != "counter" || name.ends_with("_total"),
                    "counter not named _total: {line}"
                );
                assert!(
                    declared.iter().all(|(n, _)| n != name),
                    "declared twice: {line}"
                );
                declared.push((name.to_owned(), kind.to_owned()));
            } else {
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let name = series.split('{').next().unwrap_or_default();
                assert_eq!(
                    declared.last().map(|(n, _)| n.as_str()),
                    Some(name),
                    "sample outside its family: {line}"
                );
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
        declared
    }

    #[test]
    fn counters_only_grow_between_scrapes() {
        let m = GatewayMetrics::new();
        let samples = |t: &str| -> BTreeMap<String, u64> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(series, v)| (series.to_owned(), v.parse().unwrap_or(u64::MAX)))
                .collect()
        };
        let first = m.render();
        let kinds = families(&first);
        m.ended("busy");
        m.isup("REL", Dir::In);
        m.refused_attach("revoked");
        m.dropped_frame(Queue::Bridge);
        m.slow_line_closed();
        m.set_lines(0);
        let second = m.render();
        assert_eq!(families(&second), kinds, "same families in the same order");
        let (before, after) = (samples(&first), samples(&second));
        for (series, v) in &before {
            let name = series.split('{').next().unwrap_or_default();
            if name.ends_with("_total") {
                assert!(after[series] >= *v, "{series}: {v} -> {}", after[series]);
            }
        }
        for series in [
            "trustring_gateway_calls_total{outcome=\"busy\"}",
            "trustring_gateway_isup_messages_total{type=\"REL\",direction=\"in\"}",
            "trustring_gateway_dropped_frames_total{queue=\"bridge\"}",
            "trustring_gateway_slow_lines_closed_total",
        ] {
            assert_eq!(after[series], before[series] + 1, "{series}");
        }
        // A reason appears when first counted.
        assert!(
            !before.contains_key("trustring_gateway_refused_attaches_total{reason=\"revoked\"}")
        );
        assert_eq!(
            after["trustring_gateway_refused_attaches_total{reason=\"revoked\"}"],
            1
        );
    }
}
