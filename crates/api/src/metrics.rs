//! `GET /metrics`: the server's metrics in the Prometheus text exposition format 0.0.4,
//! behind the admin token like everything else (Prometheus sends it with
//! `authorization: { credentials: TOKEN }` in its scrape config).
//!
//! The text comes from a [`crate::MetricsSource`] the server installs
//! ([`crate::ApiOptions::metrics`]); this crate knows nothing of what is measured. Without a
//! source the route answers 503, like the provisioning endpoints without a master key.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// `Content-Type` of the exposition (the text format, version 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
            `trustring_auth_failures_total`, `trustring_trust_failures_total{kind}`, \
            `trustring_store_latency_milliseconds{op}` (histogram).",
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
    let text = source().await;
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    Ok(response)
}
