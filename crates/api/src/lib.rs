//! trustring's admin HTTP API (SPEC R21): subscribers, their routing profiles and their live
//! registrations, as JSON over HTTP (axum).
//!
//! | method | path | success | errors |
//! |---|---|---|---|
//! | GET | `/healthz` | 200 `{"status":"ok"}` (no token) | |
//! | GET | `/api/v1/openapi.json` | 200 this API's OpenAPI 3.1 document (no token) | |
//! | GET | `/api/v1/server` | 200 domain, TLS key fingerprint, enrolment endpoint | |
//! | POST | `/api/v1/subscribers` | 201 subscriber (password 12+ characters) | 400, 409, 413, 415 |
//! | GET | `/api/v1/subscribers` | 200 list | |
//! | GET | `/api/v1/subscribers/{user}` | 200 subscriber | 400, 404 |
//! | DELETE | `/api/v1/subscribers/{user}` | 204 | 400, 404 |
//! | PUT | `/api/v1/subscribers/{user}/profile` | 200 subscriber | 400, 404, 413, 415 |
//! | GET | `/api/v1/subscribers/{user}/registrations` | 200 live registrations | 400, 404 |
//! | POST | `/api/v1/subscribers/{user}/enrolments` | 201 one-time enrolment code and URI | 400, 404, 413, 503 |
//! | POST | `/api/v1/pools/numbers` | 200 added + counts | 400 |
//! | GET | `/api/v1/pools/numbers` | 200 free / assigned / quarantined | |
//! | POST | `/api/v1/pools/numbers/release` | 200 released count | 400 |
//! | POST | `/api/v1/eulas` | 201 EULA version (newest is current) | 400, 409 |
//! | GET | `/api/v1/eulas` | 200 list | |
//! | GET | `/api/v1/devices` | 200 enrolled phones (`?user=`) | 400 |
//! | GET | `/api/v1/devices/{id}` | 200 phone | 400, 404 |
//! | POST | `/api/v1/devices/{id}/revoke` | 200 revoked phone | 400, 404, 409 |
//! | PUT | `/api/v1/devices/{id}/service` | 200 phone (on/off) | 400, 404, 409 |
//! | GET | `/api/v1/security-events` | 200 a page of events (`?after=ID&limit=N&order=`) | 400 |
//! | GET | `/api/v1/cdrs` | 200 a page of CDRs (+ totals per billing entity on the first) (`?from=&to=&entity=&limit=&after=`) | 400 |
//! | GET | `/metrics` | 200 Prometheus text format 0.0.4 | 503 |
//! | GET | `/api/v1/enrol/eula` | 200 current EULA (no token) | 404 |
//! | POST | `/api/v1/enrol` | 201 sealed package (no token; the code authenticates) | 400, 403, 409 |
//! | GET | `/api/v1/device` | 200 own status (device token) | 401 |
//! | PUT | `/api/v1/device/service` | 200 own on/off (device token) | 400, 401, 409 |
//!
//! **Two surfaces** ([`Surface`]): `trustring serve` runs the operator's API (everything but
//! the phone's routes, [`ENROL_ROUTES`]) on the admin listener (`--http`, loopback by default)
//! and the phone's routes alone on the public enrolment listener (`--enrol`, HTTPS only; see
//! [`https`]); a route of one surface answers 404 on the other. [`Surface::All`], the
//! default, serves both on one router (for tests and embedding).
//!
//! The table is a summary. Every row is an operation of the OpenAPI document served at
//! `/api/v1/openapi.json`, generated from the handlers (`openapi` module), which lists every
//! status of each (also 401 without the admin token, 500, and 413/415 for JSON bodies), its
//! bodies' schemas and its security scheme.
//!
//! Design choices, and why:
//!
//! - **Deny by default.** Every request needs `Authorization: Bearer TOKEN` unless its path is
//!   in [`PUBLIC_ROUTES`]; the check wraps the whole router, so new routes and even unknown
//!   paths are covered (SECURITY.md threat 10). See the `auth` module for the constant-time
//!   comparison.
//! - **One error shape.** Every 4xx/5xx, axum's own included (404 unknown route, 405 wrong
//!   method, 413, 415, bad JSON), is `{"error":{"code":"…","message":"…"}}`; store failures
//!   are a generic 500 with the detail logged, never returned (STYLE.md habit 5).
//! - **Strict input.** Bodies are at most [`BODY_LIMIT`] bytes, unknown JSON fields are
//!   rejected, and every field is checked before anything is stored (SPEC R26); the rules are
//!   in the `model` module.
//! - **Secrets.** The password is turned into the MD5 and SHA-256 digest HA1s (realm = the SIP
//!   domain) and dropped; neither it nor the HA1s are ever returned or logged.
//! - **Hostile clients** (R30). [`serve::serve`] runs a listener with a read timeout and
//!   connection caps (total and per source); the public enrolment endpoint answers unknown,
//!   used and expired codes alike, and the security events its refusals write are limited
//!   per source (the `shed` module), the shed ones counted in `GET /metrics` with the
//!   listeners' refused and dropped connections ([`Counters`]).
//! - **The SIP core stays in step.** The `on_change` callback runs after each committed change.
//! - **Optional parts are options.** Provisioning, the billing rates and the metrics source
//!   are given with [`ApiOptions`] ([`router_with_options`]); without them the routes still
//!   exist (the document does not change) and answer 503, or use zero rates.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{MethodRouter, get, post, put};
use serde::Serialize;
use utoipa::ToSchema;

mod auth;
mod calls;
mod cdrs;
mod console;
mod devices;
pub mod enrol_uri;
mod error;
pub mod gateway_lines;
pub mod https;
mod metrics;
mod model;
mod openapi;
mod provisioning;
pub mod serve;
mod server;
mod shed;
mod subscribers;

pub use cdrs::{TimeError, parse_time};
pub use devices::REVOKE_REASONS;
pub use enrol_uri::EnrolUri;
pub use metrics::{Counters, ListenerKind, METRICS_CONTENT_TYPE};
#[doc(hidden)]
pub use provisioning::check_enrol_body;
pub use provisioning::{MAX_POOL_LOAD, Provisioning};
pub use shed::EventRate;
pub use store::billing::Rates;

use error::ApiError;

/// Paths served without a bearer token. Everything else, including unknown paths, answers 401
/// without a valid token.
/// The enrolment and device endpoints authenticate by enrolment code or device token instead;
/// the OpenAPI document describes the API and holds nothing secret.
pub const PUBLIC_ROUTES: &[&str] = &[
    "/healthz",
    "/api/v1/openapi.json",
    "/api/v1/enrol",
    "/api/v1/enrol/eula",
    "/api/v1/device",
    "/api/v1/device/service",
    "/api/v1/device/number",
];

/// The phone's routes: enrolment (the code authenticates) and the device's own endpoints
/// (the device token authenticates). The only routes of [`Surface::Enrol`], and absent from
/// [`Surface::Admin`].
pub const ENROL_ROUTES: &[&str] = &[
    "/api/v1/enrol",
    "/api/v1/enrol/eula",
    "/api/v1/device",
    "/api/v1/device/service",
    "/api/v1/device/number",
];

/// Which routes a router serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Surface {
    /// Every route (tests, embedding).
    #[default]
    All,
    /// The operator's API: every route but [`ENROL_ROUTES`] (they answer 404 here), behind
    /// the admin token; the console's page.
    Admin,
    /// The public enrolment endpoint: [`ENROL_ROUTES`] alone, with no admin-token layer at
    /// all; every other path answers 404.
    Enrol,
}

impl Surface {
    fn serves(self, path: &str) -> bool {
        match self {
            Self::All => true,
            Self::Admin => !ENROL_ROUTES.contains(&path),
            Self::Enrol => ENROL_ROUTES.contains(&path),
        }
    }
}

/// What the API tells about the server's TLS (see [`ApiOptions::tls`]).
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The fingerprint of the server's TLS key.
    pub fingerprint: Option<tls::Fingerprint>,
    /// `HOST:PORT` of the public enrolment endpoint, as written in enrolment URIs.
    pub enrol_authority: Option<String>,
    /// Whether the admin listener speaks HTTPS.
    pub admin_https: bool,
}

/// Every route of the router as (method, path template), `{user}` standing for a user name
/// and `{id}` for a device id, read off the OpenAPI document (`GET /api/v1/openapi.json`).
/// Tests walk it to check that each one is routed and is protected or listed in
/// [`PUBLIC_ROUTES`]; a unit test checks every path of the router is documented.
pub static ROUTES: LazyLock<Vec<(&'static str, &'static str)>> = LazyLock::new(openapi::operations);

/// Largest accepted request body, in bytes; larger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Configuration of the admin API.
#[derive(Clone)]
pub struct ApiConfig {
    /// The SIP domain: addresses of record are `sip:user@DOMAIN`, and it is the digest realm
    /// of the stored HA1s.
    pub domain: String,
    /// The bearer token clients must present. Empty means no client gets in.
    pub token: String,
}

/// Redacts the token, so logging a config never leaks it.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("domain", &self.domain)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Renders the body of `GET /metrics` (Prometheus text format 0.0.4) each time it is
/// called; see [`ApiOptions::metrics`].
pub type MetricsSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// The optional parts of the admin API, for [`router_with_options`]. The default has none:
/// no provisioning (503), zero billing rates, no metrics (503).
#[derive(Clone, Default)]
pub struct ApiOptions {
    provisioning: Option<Arc<Provisioning>>,
    rates: Rates,
    metrics: Option<MetricsSource>,
    calls: Option<sip_net::trace::TraceSink>,
    surface: Surface,
    tls: TlsInfo,
    counters: Arc<Counters>,
    event_rate: EventRate,
}

impl ApiOptions {
    /// The API's own counters (a fresh set per `ApiOptions`, shared by its clones and the
    /// routers built from it): give them to [`serve::serve`] too, so `GET /metrics` shows
    /// the listeners' refused and dropped connections.
    #[must_use]
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// How many security events unauthenticated requests (refused enrolments) may write,
    /// per source and in all (default: [`EventRate::default`]).
    #[must_use]
    pub fn event_rate(mut self, rate: EventRate) -> Self {
        self.event_rate = rate;
        self
    }

    /// Serves only the routes of `surface` (default: [`Surface::All`]).
    #[must_use]
    pub fn surface(mut self, surface: Surface) -> Self {
        self.surface = surface;
        self
    }

    /// The server's TLS key fingerprint and public enrolment endpoint: shown by
    /// `GET /api/v1/server`, and with both, every new enrolment code comes with its
    /// enrolment URI ([`EnrolUri`]).
    #[must_use]
    pub fn tls(mut self, tls: TlsInfo) -> Self {
        self.tls = tls;
        self
    }

    /// Enables phone provisioning with these keys and policy.
    #[must_use]
    pub fn provisioning(mut self, provisioning: Arc<Provisioning>) -> Self {
        self.provisioning = Some(provisioning);
        self
    }

    /// The per-minute rates `GET /api/v1/cdrs` computes its totals at.
    #[must_use]
    pub fn rates(mut self, rates: Rates) -> Self {
        self.rates = rates;
        self
    }

    /// Serves the call views (`/api/v1/calls…`) from the SIP driver's message traces.
    #[must_use]
    pub fn call_traces(mut self, sink: sip_net::trace::TraceSink) -> Self {
        self.calls = Some(sink);
        self
    }

    /// [`ApiOptions::call_traces`] if there are traces (`None`: the call views answer 404).
    #[must_use]
    pub fn call_traces_opt(mut self, sink: Option<sip_net::trace::TraceSink>) -> Self {
        self.calls = sink;
        self
    }

    /// Serves `GET /metrics` with the text `render` produces on each scrape.
    #[must_use]
    pub fn metrics<F, Fut>(mut self, render: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        self.metrics = Some(Arc::new(move || {
            Box::pin(render()) as Pin<Box<dyn Future<Output = String> + Send>>
        }));
        self
    }
}

impl fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiOptions")
            .field("provisioning", &self.provisioning)
            .field("rates", &self.rates)
            .field("metrics", &self.metrics.is_some())
            .field("surface", &self.surface)
            .field("tls", &self.tls)
            .field("event_rate", &self.event_rate)
            .finish()
    }
}

/// A committed change the SIP core must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A subscriber was created or its routing profile replaced; this is its new state.
    SubscriberUpserted(store::Subscriber),
    /// The subscriber with this user name was deleted, with its registrations.
    SubscriberDeleted(String),
    /// The device with this id was enrolled, switched on/off or revoked: reload it.
    DeviceChanged(String),
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn store::Store>,
    pub(crate) domain: Arc<str>,
    pub(crate) on_change: Arc<dyn Fn(Change) + Send + Sync>,
    /// Serializes writes with their `on_change` calls, so changes are reported in commit order.
    pub(crate) writes: Arc<Mutex<()>>,
    /// Keys and policy for provisioning phones; `None` disables those endpoints (503).
    pub(crate) provisioning: Option<Arc<Provisioning>>,
    /// Per-minute rates of the CDR totals.
    pub(crate) rates: Rates,
    /// Renders `GET /metrics`; `None` answers 503.
    pub(crate) metrics: Option<MetricsSource>,
    /// The SIP driver's message traces; `None` answers 404 on the call views.
    pub(crate) calls: Option<sip_net::trace::TraceSink>,
    /// The server's TLS fingerprint and enrolment endpoint.
    pub(crate) tls: Arc<TlsInfo>,
    /// The API's own counters (`GET /metrics`).
    pub(crate) counters: Arc<Counters>,
    /// The per-source limit on security events of unauthenticated requests.
    pub(crate) events: Arc<shed::EventLimiter>,
}

/// The admin router. `on_change` is called after each committed change so the SIP core can
/// update its in-memory directory.
///
/// `on_change` is called in commit order, one call at a time, on tokio's blocking pool while
/// admin writes are held back; keep it quick (e.g. send on a channel) and do not call this API
/// from it.
pub fn router(
    store: Arc<dyn store::Store>,
    config: ApiConfig,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> Router {
    router_with(store, config, None, on_change)
}

/// [`router`] with phone provisioning enabled by `provisioning`.
pub fn router_with(
    store: Arc<dyn store::Store>,
    config: ApiConfig,
    provisioning: Option<Arc<Provisioning>>,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> Router {
    let options = ApiOptions {
        provisioning,
        ..ApiOptions::default()
    };
    router_with_options(store, config, options, on_change)
}

/// [`router`] with the optional parts in `options`: provisioning, billing rates, metrics,
/// the surface served and the TLS information.
pub fn router_with_options(
    store: Arc<dyn store::Store>,
    config: ApiConfig,
    options: ApiOptions,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> Router {
    let surface = options.surface;
    let (state, expected) = app_state(store, config, options, on_change);
    build(state, surface, expected)
}

/// The two routers `trustring serve` runs: ([`Surface::Admin`], [`Surface::Enrol`]), over
/// one shared state, so the changes of both reach `on_change` one at a time in commit order.
/// `options`' own surface is ignored.
pub fn admin_and_enrol_routers(
    store: Arc<dyn store::Store>,
    config: ApiConfig,
    options: ApiOptions,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> (Router, Router) {
    let (state, expected) = app_state(store, config, options, on_change);
    (
        build(state.clone(), Surface::Admin, expected.clone()),
        build(state, Surface::Enrol, expected),
    )
}

fn app_state(
    store: Arc<dyn store::Store>,
    config: ApiConfig,
    options: ApiOptions,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> (AppState, auth::ExpectedToken) {
    let expected = auth::ExpectedToken::new(&config.token);
    let ApiOptions {
        provisioning,
        rates,
        metrics,
        calls,
        surface: _,
        tls,
        counters,
        event_rate,
    } = options;
    let state = AppState {
        store,
        domain: Arc::from(config.domain),
        on_change,
        writes: Arc::new(Mutex::new(())),
        provisioning,
        rates,
        metrics,
        calls,
        tls: Arc::new(tls),
        counters,
        events: Arc::new(shed::EventLimiter::new(event_rate)),
    };
    (state, expected)
}

fn build(state: AppState, surface: Surface, expected: auth::ExpectedToken) -> Router {
    let router = routes()
        .into_iter()
        .filter(|(path, _)| surface.serves(path))
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        });
    // The web console's static files (public: they hold no data; see `console`).
    let router = if surface == Surface::Enrol {
        router
    } else {
        router.merge(console::routes())
    };
    let router = router
        // After all routes: it is set on the routes that exist when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // Outermost, so it runs before routing and covers the fallbacks too. The enrolment
    // surface has nothing the admin token opens: no layer (unknown paths are plain 404).
    let router = if surface == Surface::Enrol {
        router
    } else {
        router.layer(middleware::from_fn_with_state(
            expected,
            auth::require_token,
        ))
    };
    router.with_state(state)
}

/// Every route: (path, the handlers by method). Each path and method must be an operation of
/// the OpenAPI document, i.e. its handler carries `#[utoipa::path]` and is listed in the
/// `openapi` module (a unit test below and `tests/api/openapi.rs` check it).
fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/healthz", get(healthz)),
        ("/api/v1/openapi.json", get(openapi::openapi_json)),
        ("/api/v1/server", get(server::info)),
        (
            "/api/v1/subscribers",
            get(subscribers::list).post(subscribers::create),
        ),
        (
            "/api/v1/subscribers/{user}",
            get(subscribers::get).delete(subscribers::delete),
        ),
        (
            "/api/v1/subscribers/{user}/profile",
            put(subscribers::put_profile),
        ),
        (
            "/api/v1/subscribers/{user}/registrations",
            get(subscribers::registrations),
        ),
        (
            "/api/v1/subscribers/{user}/enrolments",
            post(provisioning::create_code),
        ),
        (
            "/api/v1/pools/numbers",
            get(provisioning::number_counts).post(provisioning::load_numbers),
        ),
        (
            "/api/v1/pools/numbers/release",
            post(provisioning::release_numbers),
        ),
        (
            "/api/v1/eulas",
            get(provisioning::list_eulas).post(provisioning::publish_eula),
        ),
        ("/api/v1/devices", get(devices::list)),
        ("/api/v1/devices/{id}", get(devices::get)),
        ("/api/v1/devices/{id}/revoke", post(devices::revoke)),
        ("/api/v1/devices/{id}/service", put(devices::put_service)),
        ("/api/v1/devices/{id}/number", put(devices::put_number)),
        ("/api/v1/security-events", get(devices::security_events)),
        ("/api/v1/cdrs", get(cdrs::list)),
        ("/api/v1/calls", get(calls::list)),
        ("/api/v1/calls/stream", get(calls::stream)),
        ("/api/v1/calls/{call_id}/trace", get(calls::trace)),
        ("/metrics", get(metrics::metrics)),
        ("/api/v1/enrol/eula", get(provisioning::current_eula)),
        ("/api/v1/enrol", post(provisioning::enrol)),
        ("/api/v1/device", get(devices::own_status)),
        ("/api/v1/device/service", put(devices::own_service)),
        ("/api/v1/device/number", put(devices::own_number)),
    ]
}

/// Body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// `GET /healthz`: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    operation_id = "healthz",
    responses((status = 200, description = "The process is up and serving HTTP.", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router direction of "the document and the routes agree": every path the router
    /// serves is documented (tests/api/openapi.rs checks methods, and the other direction,
    /// through HTTP).
    #[test]
    fn every_routed_path_is_documented() {
        let documented: Vec<&str> = ROUTES.iter().map(|(_, path)| *path).collect();
        let routed: Vec<&str> = routes().iter().map(|(path, _)| *path).collect();
        for path in &routed {
            assert!(
                documented.contains(path),
                "{path} is routed but not in the OpenAPI document: add #[utoipa::path] to its \
                 handlers and list them in the openapi module"
            );
        }
        for path in &documented {
            assert!(routed.contains(path), "{path} is documented but not routed");
        }
    }
}
