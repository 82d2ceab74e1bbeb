//! `GET /metrics`: the server's metrics in the Prometheus text exposition format 0.0.4,
//! behind the admin token like everything else (Prometheus sends it with
//! `authorization: { credentials: TOKEN }` in its scrape config).
//!
//! The text comes from a [`crate::MetricsSource`] the server installs
//! ([`crate::ApiOptions::metrics`]); this crate knows nothing of what the SIP side measures.
//! Without a source the route answers 503, like the provisioning endpoints without a master
//! key. After the source's text come this crate's own [`Counters`]: the HTTP listeners'
//! refused and dropped connections, and the security events shed by the per-source limit,
//! written by `prometheus-client` (as the SIP side's text is) from a collector that reads
//! the atomics at scrape time. Format 0.0.4, not OpenMetrics: two texts are joined here, and
//! OpenMetrics allows one closing `# EOF` only.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// `Content-Type` of the exposition (the text format, version 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `GET /metrics` (admin token): every metric in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    operation_id = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every metric in the Prometheus text exposition format \
            0.0.4 (`text/plain; version=0.0.4`): `trustring_registrations`, \
            `trustring_active_calls`, `trustring_calls_total{outcome}`, \
            `trustring_fork_skew_microseconds` (histogram), `trustring_transactions{kind}`, \
            `trustring_forks`, `trustring_sip_parse_errors_total`, \
            `trustring_cdrs_shed_total`, `trustring_auth_failures_total`, \
            `trustring_trust_failures_total{kind}`, \
            `trustring_store_latency_milliseconds{op}` (histogram), \
            `trustring_sip_connections_refused_total`, \
            `trustring_sip_connections_dropped_total`, `trustring_store_queue_waits_total`, \
            then the API's own: \
            `trustring_http_connections{listener}`, \
            `trustring_http_connections_refused_total{listener}`, \
            `trustring_http_connections_dropped_total{listener}`, \
            `trustring_security_events_shed_total`.",
            body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 503, description = "No metrics source: this server does not run the SIP \
            side.", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let source = state.metrics.clone().ok_or_else(|| {
        ApiError::with_code(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_disabled",
            "this server has no metrics source",
        )
    })?;
    let mut text = source().await;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Arc::clone(&state.counters)));
    // Cannot fail: a `String` takes every write, and the collector only passes on the
    // writer's errors.
    let _ = prometheus_text::encode(&mut text, &registry);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    Ok(response)
}

/// Which HTTP listener a connection came to (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerKind {
    /// The admin API (`--http`).
    Admin,
    /// The public enrolment endpoint (`--enrol`).
    Enrol,
}

impl ListenerKind {
    const ALL: [Self; 2] = [Self::Admin, Self::Enrol];

    /// The `listener` label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Enrol => "enrol",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Admin => 0,
            Self::Enrol => 1,
        }
    }
}

/// The API's own counters, shown by `GET /metrics` after the source's text: one set per
/// server, shared by its routers ([`crate::ApiOptions::counters`]) and its listeners
/// ([`crate::serve::serve`]).
#[derive(Debug, Default)]
pub struct Counters {
    open: [AtomicU64; 2],
    refused: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    events_shed: AtomicU64,
}

impl Counters {
    /// A connection was closed at accept by a connection cap.
    pub(crate) fn connection_refused(&self, kind: ListenerKind) {
        self.refused[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed for want of a complete request in time.
    pub(crate) fn connection_dropped(&self, kind: ListenerKind) {
        self.dropped[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was opened (`true`) or closed.
    pub(crate) fn connection_open(&self, kind: ListenerKind, open: bool) {
        if open {
            self.open[kind.index()].fetch_add(1, Ordering::Relaxed);
        } else {
            self.open[kind.index()].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A security event was not recorded: its source is over its rate.
    pub(crate) fn event_shed(&self) {
        self.events_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Security events shed so far.
    #[must_use]
    pub fn events_shed(&self) -> u64 {
        self.events_shed.load(Ordering::Relaxed)
    }

    /// Connections of `kind` refused at accept so far.
    #[must_use]
    pub fn connections_refused(&self, kind: ListenerKind) -> u64 {
        self.refused[kind.index()].load(Ordering::Relaxed)
    }
}

impl Collector for Counters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        // Counter names without `_total`: the encoder appends it.
        let families: [(&str, &str, MetricType, &[AtomicU64; 2]); 3] = [
            (
                "trustring_http_connections",
                "HTTP connections open.",
                MetricType::Gauge,
                &self.open,
            ),
            (
                "trustring_http_connections_refused",
                "HTTP connections closed at accept by a connection cap.",
                MetricType::Counter,
                &self.refused,
            ),
            (
                "trustring_http_connections_dropped",
                "HTTP connections closed for want of a complete request head or body in time.",
                MetricType::Counter,
                &self.dropped,
            ),
        ];
        for (name, help, kind, values) in families {
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            for l in ListenerKind::ALL {
                let v = values[l.index()].load(Ordering::Relaxed);
                let labels = [("listener", l.label())];
                let mut sample = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                    _ => sample.encode_gauge(&v)?,
                }
            }
        }
        enc.encode_descriptor(
            "trustring_security_events_shed",
            "Security events not recorded: their source was over its rate.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&self.events_shed(), None)
    }
}
