//! The SIP server's metrics, in the Prometheus text exposition format 0.0.4 written by the
//! `prometheus-client` crate.
//!
//! Three sources, one [`Metrics`] shared (`Arc`) by whoever observes and whoever serves:
//!
//! - the proxy's counters and gauges ([`ProxyStats`]), copied out of the SIP loop when a
//!   scrape asks for them ([`crate::SipHandle::render_metrics`]): nothing is copied per
//!   packet, and the gauges are exact at scrape time;
//! - the fork skew histogram, observed by the driver where the branch INVITEs really leave
//!   (after each `send_to`), lock-free;
//! - the store latency histograms, observed by the server's store writer, lock-free.
//!
//! The crate writes the text (`# HELP` and `# TYPE`, names, label escaping, `le` bounds) from
//! collectors ([`Collector`]) that read these values only at scrape time. The values are not
//! kept in the crate's metric types: the proxy's counters belong to the single-threaded SIP
//! loop, and the crate's `Histogram` locks a mutex on every observation, which the fork skew,
//! observed on the SIP loop's hot path, must not. So [`Histogram`] stays ours: one atomic per
//! bucket plus the sum; `_count` and `+Inf` are the total of the buckets, so they always agree
//! even while observations race a scrape.
//!
//! Format 0.0.4 rather than OpenMetrics (the crate writes both from the same collectors):
//! 0.0.4 declares counters under their sample name (`# TYPE trustring_calls_total counter`)
//! as this server always has, and `GET /metrics` appends the API's own families to this text,
//! where OpenMetrics' one closing `# EOF` would need the two to agree on who writes it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sip_core::proxy::{CallOutcome, ProxyStats};

/// Upper bounds of the fork skew buckets, microseconds.
pub const FORK_SKEW_BUCKETS_US: [f64; 9] = [
    10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 100_000.0,
];

/// Upper bounds of the store latency buckets, milliseconds.
pub const STORE_LATENCY_BUCKETS_MS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0,
];

/// Trust-failure kinds listed at zero before they first happen, so `increase()` and alerts
/// work from the first scrape (the codes of `trustring-zone`'s authority, plus the proxy's
/// own `no-trust-gate`). Other kinds appear when they are first counted.
pub const KNOWN_TRUST_KINDS: [&str; 9] = [
    "missing-proof",
    "malformed-proof",
    "unknown-device",
    "revoked-device",
    "wrong-proof",
    "replayed-proof",
    "expired-proof",
    "locked-out",
    "no-trust-gate",
];

/// What a store call timed by [`Metrics::observe_store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A registration written or deleted.
    Registration,
    /// A call detail record appended (with the subscriber lookup for its billing entity).
    Cdr,
    /// A security event recorded.
    SecurityEvent,
}

impl StoreOp {
    /// Every operation, in label order.
    pub const ALL: [Self; 3] = [Self::Registration, Self::Cdr, Self::SecurityEvent];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Cdr => "cdr",
            Self::SecurityEvent => "security-event",
        }
    }
}

/// A histogram of durations with fixed buckets, safe to observe from any thread.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, in `unit`, increasing; a last implicit `+Inf` bucket follows.
    bounds: &'static [f64],
    /// Nanoseconds per unit (1 000 for microseconds, 1 000 000 for milliseconds).
    unit_nanos: f64,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` of them.
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram with buckets `bounds` expressed in `unit` (e.g. 1 µs).
    pub fn new(bounds: &'static [f64], unit: Duration) -> Self {
        Self {
            bounds,
            unit_nanos: unit.as_nanos() as f64,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation. Two relaxed atomic adds; no allocation, no lock.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let value = nanos as f64 / self.unit_nanos;
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The current counts, cumulative as Prometheus wants them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / self.unit_nanos,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets.
    pub bounds: &'static [f64],
    /// Observations at or below each bound, then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of the observations, in the histogram's unit.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// Every metric of the SIP server (see the module docs).
#[derive(Debug)]
pub struct Metrics {
    fork_skew: Histogram,
    store_latency: [Histogram; 3],
    /// The proxy's counters as last copied out of the SIP loop.
    proxy: Mutex<ProxyStats>,
    /// TCP/TLS connections refused at accept (a connection cap), and closed by us (slow
    /// reader, no first message in time, idle): counted by the stream transports.
    connections_refused: AtomicU64,
    connections_dropped: AtomicU64,
    /// Times the SIP loop found the store-event queue full and waited for the writer.
    store_waits: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        let store = || Histogram::new(&STORE_LATENCY_BUCKETS_MS, Duration::from_millis(1));
        Self {
            fork_skew: Histogram::new(&FORK_SKEW_BUCKETS_US, Duration::from_micros(1)),
            store_latency: [store(), store(), store()],
            proxy: Mutex::new(ProxyStats::default()),
            connections_refused: AtomicU64::new(0),
            connections_dropped: AtomicU64::new(0),
            store_waits: AtomicU64::new(0),
        }
    }

    /// Counts one time the SIP loop waited for the store writer (its queue was full).
    pub fn count_store_wait(&self) {
        self.store_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the SIP loop waited for the store writer.
    pub fn store_waits(&self) -> u64 {
        self.store_waits.load(Ordering::Relaxed)
    }

    /// Counts a TCP/TLS connection refused by a connection cap.
    pub fn count_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TCP/TLS connection closed by the server: its peer did not read, sent no
    /// message (or finished no TLS handshake) in time, or went idle.
    pub fn count_connection_dropped(&self) {
        self.connections_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// (refused, dropped) connections so far.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.connections_refused.load(Ordering::Relaxed),
            self.connections_dropped.load(Ordering::Relaxed),
        )
    }

    /// Records how far apart the first and the last branch INVITE of one fork left.
    pub fn observe_fork_skew(&self, d: Duration) {
        self.fork_skew.observe(d);
    }

    /// Records how long one store call took.
    pub fn observe_store(&self, op: StoreOp, d: Duration) {
        self.store_latency[op as usize].observe(d);
    }

    /// The fork skew histogram now.
    pub fn fork_skew(&self) -> HistogramSnapshot {
        self.fork_skew.snapshot()
    }

    /// The store latency histogram of `op` now.
    pub fn store_latency(&self, op: StoreOp) -> HistogramSnapshot {
        self.store_latency[op as usize].snapshot()
    }

    /// Keeps `stats` as the proxy's latest counters.
    pub fn set_proxy_stats(&self, stats: ProxyStats) {
        *self.proxy.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    /// The proxy's counters as last kept.
    pub fn proxy_stats(&self) -> ProxyStats {
        self.proxy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The text exposition of everything, with `stats` as the proxy's counters.
    pub fn render_with(&self, stats: &ProxyStats) -> String {
        let (refused, dropped) = self.connections();
        encode([
            Box::new(ProxyFamilies::new(stats, self)) as Box<dyn Collector>,
            Box::new(TransportFamilies {
                connections_refused: refused,
                connections_dropped: dropped,
                store_waits: self.store_waits(),
            }),
        ])
    }

    /// The text exposition of everything, with the proxy's counters as last kept.
    pub fn render(&self) -> String {
        self.render_with(&self.proxy_stats())
    }
}

/// The Prometheus text exposition (format 0.0.4) of the proxy's `stats`, the `fork_skew`
/// histogram (µs) and the store latency histograms (ms) by operation. Every family has its
/// `# HELP` and `# TYPE`; every name starts with `trustring_`.
pub fn render(
    stats: &ProxyStats,
    fork_skew: &HistogramSnapshot,
    store: &[(StoreOp, HistogramSnapshot)],
) -> String {
    encode([Box::new(ProxyFamilies {
        stats: stats.clone(),
        fork_skew: fork_skew.clone(),
        store: store.to_vec(),
    }) as Box<dyn Collector>])
}

/// Encodes `collectors`, in order, in the text format 0.0.4. A registry per scrape: the
/// collectors own what one scrape shows, so nothing is registered for the server's lifetime.
fn encode<const N: usize>(collectors: [Box<dyn Collector>; N]) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(collector);
    }
    let mut out = String::with_capacity(4096);
    // Cannot fail: a `String` takes every write, and the collectors only pass on the
    // writer's errors.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// The proxy's counters and gauges and the histograms, as one scrape read them.
#[derive(Debug)]
struct ProxyFamilies {
    stats: ProxyStats,
    fork_skew: HistogramSnapshot,
    store: Vec<(StoreOp, HistogramSnapshot)>,
}

impl ProxyFamilies {
    fn new(stats: &ProxyStats, metrics: &Metrics) -> Self {
        Self {
            stats: stats.clone(),
            fork_skew: metrics.fork_skew(),
            store: StoreOp::ALL
                .iter()
                .map(|&op| (op, metrics.store_latency(op)))
                .collect(),
        }
    }
}

impl Collector for ProxyFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        family(
            &mut enc,
            "trustring_registrations",
            "Live registrations (contact bindings not expired), every subscriber together.",
            MetricType::Gauge,
        )?
        .encode_gauge(&s.registrations)?;
        family(
            &mut enc,
            "trustring_active_calls",
            "Calls ringing, or answered and not yet hung up.",
            MetricType::Gauge,
        )?
        .encode_gauge(&s.active_calls)?;
        let mut calls = family(
            &mut enc,
            "trustring_calls_total",
            "Calls ended, by outcome: answered, busy, no-answer, declined, cancelled (by the \
             caller), unreachable (nothing to ring), failed.",
            MetricType::Counter,
        )?;
        for outcome in CallOutcome::ALL {
            let n = s.calls_ended(outcome);
            counter(
                &mut calls.encode_family(&[("outcome", outcome.as_str())])?,
                n,
            )?;
        }
        histogram(
            &mut family(
                &mut enc,
                "trustring_fork_skew_microseconds",
                "Time between the first and the last branch INVITE of a fork leaving the \
                 server (R11), microseconds; forks of one branch are not observed.",
                MetricType::Histogram,
            )?,
            &self.fork_skew,
        )?;
        let mut transactions = family(
            &mut enc,
            "trustring_transactions",
            "Live SIP transactions, by kind (server, client).",
            MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("server", s.server_transactions),
            ("client", s.client_transactions),
        ] {
            transactions
                .encode_family(&[("kind", kind)])?
                .encode_gauge(&n)?;
        }
        family(
            &mut enc,
            "trustring_forks",
            "Live forks (response contexts of proxied requests), lingering ones included.",
            MetricType::Gauge,
        )?
        .encode_gauge(&s.forks)?;
        for (name, help, n) in [
            (
                "trustring_sip_parse_errors_total",
                "Received SIP messages that did not parse.",
                s.parse_errors,
            ),
            (
                "trustring_cdrs_shed_total",
                "Records of unanswered calls from unauthenticated callers not written: their \
                 source exceeded its rate.",
                s.cdrs_shed,
            ),
            (
                "trustring_auth_failures_total",
                "Failed digest authentications (REGISTER and callers): wrong credentials, or \
                 another user's.",
                s.auth_failures,
            ),
        ] {
            counter(&mut family(&mut enc, name, help, MetricType::Counter)?, n)?;
        }
        let mut trust = family(
            &mut enc,
            "trustring_trust_failures_total",
            "Phone branches dropped or not rung because the trust proof failed (R14), by kind.",
            MetricType::Counter,
        )?;
        let unseen = KNOWN_TRUST_KINDS
            .iter()
            .filter(|kind| !s.trust_failures.contains_key(**kind))
            .map(|kind| (*kind, 0));
        let seen = s.trust_failures.iter().map(|(k, n)| (k.as_str(), *n));
        for (kind, n) in unseen.chain(seen) {
            counter(&mut trust.encode_family(&[("kind", kind)])?, n)?;
        }
        let mut store = family(
            &mut enc,
            "trustring_store_latency_milliseconds",
            "Duration of the SIP server's store writes, by operation (registration, cdr, \
             security-event), milliseconds.",
            MetricType::Histogram,
        )?;
        for (op, h) in &self.store {
            histogram(&mut store.encode_family(&[("op", op.as_str())])?, h)?;
        }
        Ok(())
    }
}

/// The stream transports' and the store writer's counters, as one scrape read them.
#[derive(Debug)]
struct TransportFamilies {
    connections_refused: u64,
    connections_dropped: u64,
    store_waits: u64,
}

impl Collector for TransportFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        for (name, help, n) in [
            (
                "trustring_sip_connections_refused_total",
                "SIP TCP/TLS connections closed at accept because a connection cap was reached \
                 (total or per source address).",
                self.connections_refused,
            ),
            (
                "trustring_sip_connections_dropped_total",
                "SIP TCP/TLS connections closed by the server: the peer did not read what it \
                 was sent, sent no whole message (or finished no TLS handshake) in time, or \
                 went idle.",
                self.connections_dropped,
            ),
            (
                "trustring_store_queue_waits_total",
                "Times the SIP loop found the queue of store writes (registrations, CDRs, \
                 security events) full and waited for the store: back-pressure instead of \
                 unbounded memory.",
                self.store_waits,
            ),
        ] {
            counter(&mut family(&mut enc, name, help, MetricType::Counter)?, n)?;
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

/// One histogram's samples: the encoder takes per-bucket counts and accumulates them.
fn histogram(m: &mut MetricEncoder<'_>, h: &HistogramSnapshot) -> fmt::Result {
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = h
        .cumulative
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bound = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let in_bucket = n.saturating_sub(below);
            below = n;
            (bound, in_bucket)
        })
        .collect();
    m.encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use prometheus_parse::{Sample, Scrape, Value};

    use super::*;

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
    }

    /// Every sample line belongs to a family declared by `# HELP` then `# TYPE` before it,
    /// each family once, every name prefixed; returns the families and their types.
    fn check_structure(text: &str) -> BTreeMap<String, String> {
        let mut types = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut last_help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
                last_help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(
                    last_help.as_deref(),
                    Some(name),
                    "TYPE without HELP: {line}"
                );
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice: {line}"
                );
            } else {
                assert!(!line.starts_with('#'), "stray comment: {line}");
                let name = line
                    .split(['{', ' '])
                    .next()
                    .expect("sample name")
                    .to_owned();
                assert!(name.starts_with("trustring_"), "{line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                    })
                    .unwrap_or(&name)
                    .to_owned();
                assert!(
                    types.contains_key(&family),
                    "sample before its TYPE: {line}"
                );
                assert!(line.ends_with(|c: char| c.is_ascii_digit()), "{line}");
                if types[&family] == "counter" {
                    assert!(family.ends_with("_total"), "{line}");
                }
            }
        }
        assert_eq!(helped.len(), types.len());
        types
    }

    fn stats(n: u64) -> ProxyStats {
        let mut s = ProxyStats {
            parse_errors: n,
            auth_failures: 2 * n,
            registrations: 3,
            active_calls: 1,
            server_transactions: 4,
            client_transactions: 5,
            forks: 2,
            ..ProxyStats::default()
        };
        s.calls[0] = n;
        s.calls[1] = 1;
        s.trust_failures.insert("wrong-proof".into(), n);
        s.trust_failures.insert("odd \"kind\"\\".into(), 1);
        s
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = find(scrape, name, labels);
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is a histogram"),
        }
    }

    fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    }

    /// Bucket counts never decrease with the bound, and `+Inf` is `_count`.
    fn check_histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let s = find(scrape, name, labels);
        let Value::Histogram(buckets) = &s.value else {
            panic!("{name} is not a histogram: {:?}", s.value);
        };
        let mut points: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1), "{points:?}");
        let inf = points.last().expect("buckets");
        assert!(inf.0.is_infinite(), "{points:?}");
        let count = value(scrape, &format!("{name}_count"), labels);
        assert!(
            (inf.1 - count).abs() < f64::EPSILON,
            "+Inf {} != count {count}",
            inf.1
        );
        points
    }

    #[test]
    fn families_have_help_and_type_and_parse_back() {
        let m = Metrics::new();
        m.observe_fork_skew(Duration::from_micros(30));
        m.observe_store(StoreOp::Cdr, Duration::from_micros(700));
        let text = m.render_with(&stats(1));
        let types = check_structure(&text);
        let want: BTreeMap<String, String> = [
            ("trustring_registrations", "gauge"),
            ("trustring_active_calls", "gauge"),
            ("trustring_calls_total", "counter"),
            ("trustring_fork_skew_microseconds", "histogram"),
            ("trustring_transactions", "gauge"),
            ("trustring_forks", "gauge"),
            ("trustring_sip_parse_errors_total", "counter"),
            ("trustring_cdrs_shed_total", "counter"),
            ("trustring_auth_failures_total", "counter"),
            ("trustring_trust_failures_total", "counter"),
            ("trustring_store_latency_milliseconds", "histogram"),
            ("trustring_sip_connections_refused_total", "counter"),
            ("trustring_sip_connections_dropped_total", "counter"),
            ("trustring_store_queue_waits_total", "counter"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        assert_eq!(types, want);

        let scrape = parse(&text);
        let docs: BTreeSet<&String> = scrape.docs.keys().collect();
        assert_eq!(docs, want.keys().collect());
        assert_eq!(value(&scrape, "trustring_registrations", &[]), 3.0);
        assert_eq!(value(&scrape, "trustring_active_calls", &[]), 1.0);
        assert_eq!(value(&scrape, "trustring_forks", &[]), 2.0);
        assert_eq!(
            value(&scrape, "trustring_transactions", &[("kind", "server")]),
            4.0
        );
        assert_eq!(
            value(&scrape, "trustring_transactions", &[("kind", "client")]),
            5.0
        );
        assert_eq!(
            value(&scrape, "trustring_calls_total", &[("outcome", "answered")]),
            1.0
        );
        assert_eq!(
            value(&scrape, "trustring_calls_total", &[("outcome", "failed")]),
            0.0
        );
        assert_eq!(
            value(
                &scrape,
                "trustring_trust_failures_total",
                &[("kind", "wrong-proof")]
            ),
            1.0
        );
        // Known kinds are listed at zero before they happen.
        assert_eq!(
            value(
                &scrape,
                "trustring_trust_failures_total",
                &[("kind", "locked-out")]
            ),
            0.0
        );
        // Label values are escaped (the naive parser keeps the escapes).
        assert!(
            text.contains(r#"trustring_trust_failures_total{kind="odd \"kind\"\\"} 1"#),
            "{text}"
        );

        // Bounds are written as they always were, the family's labels before `le`.
        for sample in [
            "\ntrustring_fork_skew_microseconds_bucket{le=\"10\"} 0\n",
            "\ntrustring_fork_skew_microseconds_bucket{le=\"100000\"} 1\n",
            "\ntrustring_fork_skew_microseconds_bucket{le=\"+Inf\"} 1\n",
            "\ntrustring_fork_skew_microseconds_count 1\n",
            "\ntrustring_store_latency_milliseconds_bucket{op=\"cdr\",le=\"0.1\"} 0\n",
            "\ntrustring_store_latency_milliseconds_bucket{op=\"cdr\",le=\"1\"} 1\n",
            "\ntrustring_store_latency_milliseconds_count{op=\"cdr\"} 1\n",
            "\n# TYPE trustring_calls_total counter\n",
        ] {
            assert!(text.contains(sample), "{sample}in\n{text}");
        }

        let skew = check_histogram(&scrape, "trustring_fork_skew_microseconds", &[]);
        let bounds: Vec<f64> = skew.iter().map(|p| p.0).filter(|b| b.is_finite()).collect();
        assert_eq!(bounds, FORK_SKEW_BUCKETS_US);
        assert_eq!(skew[0], (10.0, 0.0));
        assert_eq!(skew[1], (50.0, 1.0));
        let sum = value(&scrape, "trustring_fork_skew_microseconds_sum", &[]);
        assert!((sum - 30.0).abs() < 1e-9, "{sum}");
        for op in StoreOp::ALL {
            let points = check_histogram(
                &scrape,
                "trustring_store_latency_milliseconds",
                &[("op", op.as_str())],
            );
            assert_eq!(points.len(), STORE_LATENCY_BUCKETS_MS.len() + 1);
            let want = u8::from(op == StoreOp::Cdr);
            assert_eq!(points.last().map(|p| p.1), Some(f64::from(want)), "{op:?}");
        }
        // 0.7 ms lands in the 1 ms bucket, not the 0.5 ms one.
        let cdr = check_histogram(
            &scrape,
            "trustring_store_latency_milliseconds",
            &[("op", "cdr")],
        );
        let at = |b: f64| cdr.iter().find(|p| p.0 == b).map(|p| p.1);
        assert_eq!((at(0.5), at(1.0)), (Some(0.0), Some(1.0)));
    }

    #[test]
    fn counters_only_grow_and_histograms_stay_consistent() {
        let m = Metrics::new();
        let mut previous: Option<HashMap<String, f64>> = None;
        for round in 1..=5u64 {
            for us in [1, 9, 10, 11, 400, 2_000, 150_000] {
                m.observe_fork_skew(Duration::from_micros(us * round));
                m.observe_store(StoreOp::Registration, Duration::from_micros(us * round));
            }
            let text = m.render_with(&stats(round));
            check_structure(&text);
            let scrape = parse(&text);
            let mut now = HashMap::new();
            for s in &scrape.samples {
                let key = format!("{}{{{}}}", s.metric, s.labels);
                match &s.value {
                    Value::Counter(v) => {
                        now.insert(key, *v);
                    }
                    Value::Histogram(buckets) => {
                        for b in buckets {
                            now.insert(format!("{key}le={}", b.less_than), b.count);
                        }
                    }
                    _ => {}
                }
            }
            check_histogram(&scrape, "trustring_fork_skew_microseconds", &[]);
            let skew = m.fork_skew();
            assert_eq!(skew.count(), 7 * round);
            if let Some(before) = &previous {
                for (k, v) in before {
                    let after = now
                        .get(k)
                        .copied()
                        .unwrap_or_else(|| panic!("{k} vanished"));
                    assert!(after >= *v, "{k} went from {v} to {after}");
                }
            }
            previous = Some(now);
        }
    }

    #[test]
    fn render_shows_the_proxy_families_only() {
        let m = Metrics::new();
        m.count_connection_refused();
        m.observe_fork_skew(Duration::from_micros(70));
        let text = render(&stats(2), &m.fork_skew(), &[]);
        let types = check_structure(&text);
        assert!(types.contains_key("trustring_calls_total"), "{text}");
        assert!(!types.contains_key("trustring_sip_connections_refused_total"));
        let scrape = parse(&text);
        let skew = check_histogram(&scrape, "trustring_fork_skew_microseconds", &[]);
        assert_eq!(skew[1], (50.0, 0.0));
        assert_eq!(skew[2], (100.0, 1.0));
        assert_eq!(value(&scrape, "trustring_sip_parse_errors_total", &[]), 2.0);
        // `render_with` adds the transports' counters after them.
        let all = m.render_with(&stats(2));
        assert!(all.starts_with(&text), "{all}");
        assert!(
            all.contains("\ntrustring_sip_connections_refused_total 1\n"),
            "{all}"
        );
    }

    #[test]
    fn histogram_buckets_take_values_at_their_bound() {
        let h = Histogram::new(&FORK_SKEW_BUCKETS_US, Duration::from_micros(1));
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_nanos(10_001));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), FORK_SKEW_BUCKETS_US.len() + 1);
        assert_eq!(s.cumulative[0], 1, "10 µs is in le=10");
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[8], 2, "1 s is above 100 ms");
        assert_eq!(s.count(), 3);
        assert!((s.sum - 1_000_020.001).abs() < 1e-6, "{}", s.sum);
    }
}
