//! `GET /api/v1/server`: what an operator needs to know about this server's endpoints: its
//! SIP domain, the fingerprint of its TLS key (what enrolment URIs carry and phones pin), the
//! public enrolment endpoint, and whether this admin listener speaks HTTPS.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// This server's identity and endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ServerInfo {
    /// The SIP domain (addresses of record are `sip:USER@DOMAIN`).
    #[schema(example = "example.com")]
    domain: String,
    /// The trustring version.
    #[schema(example = "0.1.0")]
    version: &'static str,
    /// SHA-256 of the TLS certificate's public key (SubjectPublicKeyInfo), `sha256:` and 64
    /// hex digits; `null` when the server runs without TLS (tests, embedding).
    #[schema(example = "sha256:3f0c…")]
    tls_fingerprint: Option<String>,
    /// The public enrolment endpoint phones reach, `https://HOST:PORT`; `null` if none.
    #[schema(example = "https://enrol.example.com:8443")]
    enrol_url: Option<String>,
    /// Whether this admin API listener speaks HTTPS (plain HTTP only on loopback).
    admin_https: bool,
}

/// `GET /api/v1/server` -> the server's identity and endpoints.
#[utoipa::path(
    get,
    path = "/api/v1/server",
    tag = "meta",
    operation_id = "server_info",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The server's domain, TLS key fingerprint and endpoints.", body = ServerInfo),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
    )
)]
pub(crate) async fn info(State(state): State<AppState>) -> Result<Json<ServerInfo>, ApiError> {
    Ok(Json(ServerInfo {
        domain: state.domain.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        tls_fingerprint: state.tls.fingerprint.map(|f| f.to_string()),
        enrol_url: state
            .tls
            .enrol_authority
            .as_ref()
            .map(|a| format!("https://{a}")),
        admin_https: state.tls.admin_https,
    }))
}
