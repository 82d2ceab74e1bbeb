//! The OpenAPI document of the admin API, served (public) at `GET /api/v1/openapi.json`.
//!
//! It is generated at compile time by `utoipa` from the code: the `#[utoipa::path]` attribute
//! on each handler (method, path, parameters, security, every status it answers) and the
//! `ToSchema` derives on the request and response bodies, which are the very types the
//! handlers deserialize and serialize, so a schema cannot describe a field the wire lacks.
//!
//! How the document and the router are kept in step:
//!
//! - [`crate::ROUTES`] is read off this document; there is no second hand-kept list.
//! - The router is built from one table of (path, method router); a unit test in `lib.rs`
//!   checks every path of that table is documented.
//! - `tests/api/openapi.rs` checks, through HTTP, that every documented (method, path) is
//!   routed, that every other method on a documented path is 405, that each operation's
//!   declared security is what the auth layer enforces, and that real responses match their
//!   schemas.
//!
//! Security schemes: `bearer` is the admin token (every operation whose path is not in
//! [`crate::PUBLIC_ROUTES`]); `device_token` is the token a phone got at enrolment
//! (`/api/v1/device*`). `/healthz`, `/api/v1/enrol*` and this document need no token.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Name of the admin-token security scheme.
pub(crate) const BEARER: &str = "bearer";
/// Name of the device-token security scheme.
pub(crate) const DEVICE_TOKEN: &str = "device_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "trustring admin API",
        description = "Subscribers, their routing profiles and live registrations; the number \
            identity pool, EULA versions, enrolment codes and enrolled phones (SPEC R21); call \
            detail records with billing totals (R18, R19) and the Prometheus metrics. Every \
            error is `application/json` of one shape, `{\"error\":{\"code\",\"message\"}}` \
            (schema `ErrorBody`), axum's own 404/405/413/415 included. Every path needs the \
            admin token (`Authorization: Bearer TOKEN`, scheme `bearer`) unless its operation \
            declares otherwise; unknown paths answer 401 without it. `GET /metrics` answers \
            `text/plain` (Prometheus text format 0.0.4), not JSON."
    ),
    paths(
        crate::healthz,
        openapi_json,
        crate::server::info,
        crate::subscribers::create,
        crate::subscribers::list,
        crate::subscribers::get,
        crate::subscribers::delete,
        crate::subscribers::put_profile,
        crate::subscribers::registrations,
        crate::provisioning::create_code,
        crate::provisioning::load_numbers,
        crate::provisioning::number_counts,
        crate::provisioning::release_numbers,
        crate::provisioning::publish_eula,
        crate::provisioning::list_eulas,
        crate::devices::list,
        crate::devices::get,
        crate::devices::revoke,
        crate::devices::put_service,
        crate::devices::put_number,
        crate::devices::security_events,
        crate::cdrs::list,
        crate::calls::list,
        crate::calls::stream,
        crate::calls::trace,
        crate::metrics::metrics,
        crate::provisioning::current_eula,
        crate::provisioning::enrol,
        crate::devices::own_status,
        crate::devices::own_service,
        crate::devices::own_number,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "meta", description = "Health and this document (no token); the server's identity (admin token)."),
        (name = "subscribers", description = "Subscribers, profiles, registrations, enrolment codes."),
        (name = "pools", description = "The number identity pool (R3)."),
        (name = "eulas", description = "EULA versions (R4)."),
        (name = "calls", description = "Recent calls and their message ladders (R22)."),
        (name = "devices", description = "Enrolled phones, the operator's view (R9, R10)."),
        (name = "security", description = "Security events (R14)."),
        (name = "cdrs", description = "Call detail records and billing totals (R18, R19)."),
        (name = "metrics", description = "Prometheus metrics (admin token; text format 0.0.4)."),
        (name = "enrolment", description = "A phone's enrolment (no token: the code authenticates). Served on the public enrolment listener (HTTPS), not the admin one."),
        (name = "device", description = "A phone's own endpoints (device token). Served on the public enrolment listener (HTTPS), not the admin one."),
    )
)]
struct ApiDoc;

/// Adds the two security schemes the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some(
            "The admin token (`TRUSTRING_ADMIN_TOKEN`, else the file `DATA/admin-token`).".into(),
        );
        components.add_security_scheme(BEARER, SecurityScheme::Http(admin));
        let mut device = Http::new(HttpAuthScheme::Bearer);
        device.description = Some("The device token a phone got in its enrolment response.".into());
        components.add_security_scheme(DEVICE_TOKEN, SecurityScheme::Http(device));
    }
}

/// The document, built once.
pub(crate) static DOC: LazyLock<Document> = LazyLock::new(ApiDoc::openapi);

/// Every documented operation as (method, path template), in document order.
pub(crate) fn operations() -> Vec<(&'static str, &'static str)> {
    let doc: &'static Document = &DOC;
    let mut ops = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, op) in methods {
            if op.is_some() {
                ops.push((method, path.as_str()));
            }
        }
    }
    ops
}

/// `GET /api/v1/openapi.json` (public): this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1, JSON).", body = Object, content_type = "application/json"),
    )
)]
pub(crate) async fn openapi_json() -> Json<&'static Document> {
    Json(&DOC)
}
