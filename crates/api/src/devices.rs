//! Enrolled phones: the operator's view (list, revoke R9, on/off R10), the security events
//! of R14, and the phone's own endpoints (status, on/off), authenticated by the device token
//! it got at enrolment.
//!
//! [`DeviceView`] is the only shape a device leaves the API in: it has no field for the
//! hidden identifier or the license key, so no handler can return them by mistake (R5).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use store::{Device, SecurityEvent, StoreError};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};

use crate::error::{ApiError, ErrorBody};
use crate::provisioning::token_hash;
use crate::subscribers::{read, unix_now_ms, write};
use crate::{AppState, Change};

/// Revocation reasons an operator may give (R9).
pub const REVOKE_REASONS: &[&str] = &["non-payment", "left-enterprise", "eula-violation", "lost"];

/// An enrolled phone. Never its hidden identifier, never its license key (R5).
// It has no field for either, so no handler can return them by mistake.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceView {
    /// The device id (public; not the hidden identifier).
    #[schema(example = "d-0123456789ab")]
    id: String,
    /// The subscriber the phone rings for.
    user: String,
    /// `software` or `pkcs11`.
    security_level: String,
    /// The zone's public key it enrolled with (`x25519:…` or `p256:…`).
    zone_public_key: String,
    /// The EULA version the user accepted.
    eula_version: String,
    /// When the user accepted it, Unix milliseconds.
    eula_accepted_at_ms: i64,
    /// The single-number service switch (R10).
    service_on: bool,
    /// `active` or `revoked`.
    #[schema(schema_with = device_status_schema)]
    status: &'static str,
    /// Why it was revoked; `null` while active.
    #[schema(required = true)]
    revoked_reason: Option<String>,
    /// When it was revoked, Unix milliseconds; `null` while active.
    #[schema(required = true)]
    revoked_at_ms: Option<i64>,
    /// Enrolment time, Unix milliseconds.
    created_at_ms: i64,
    /// The phone's own number (E.164), rung through the gateway; `null` until set.
    #[schema(required = true, example = "+15551230001")]
    number: Option<String>,
}

/// `status` of a [`DeviceView`]: a string, one of `active` and `revoked`.
fn device_status_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["active", "revoked"]))
        .description(Some("`active` or `revoked`."))
}

/// `reason` of a [`RevokeBody`]: a string, one of [`REVOKE_REASONS`] (built from the constant,
/// so the document cannot drift from the check).
fn revoke_reason_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(REVOKE_REASONS.iter().copied()))
        .description(Some("Why the device is revoked."))
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        Self {
            status: if d.revoked.is_some() {
                "revoked"
            } else {
                "active"
            },
            revoked_reason: d.revoked.as_ref().map(|r| r.reason.clone()),
            revoked_at_ms: d.revoked.as_ref().map(|r| r.at_ms),
            id: d.id,
            user: d.user,
            security_level: d.security_level,
            zone_public_key: d.zone_public_key,
            eula_version: d.eula_version,
            eula_accepted_at_ms: d.eula_accepted_at_ms,
            service_on: d.service_on,
            created_at_ms: d.created_at_ms,
            number: d.number,
        }
    }
}

fn device_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::invalid("device id: letters, digits and -"));
    }
    Ok(id)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("device {id} not found"))
}

/// Query of `GET /api/v1/devices`.
// `utoipa::IntoParams` spelled out, not imported: the `params(...)` expansion names it so,
// and an import would make that an unnecessary qualification (a lint).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceQuery {
    /// Only this subscriber's devices.
    user: Option<String>,
}

/// `GET /api/v1/devices[?user=alice]`.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    operation_id = "list_devices",
    security(("bearer" = [])),
    params(DeviceQuery),
    responses(
        (status = 200, description = "Enrolled phones, revoked ones included.", body = [DeviceView]),
        (status = 400, description = "Bad query string (unknown parameter).", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let devices = read(&state, move |store| Ok(store.devices(q.user.as_deref())?)).await?;
    Ok(Json(devices.into_iter().map(DeviceView::from).collect()))
}

/// `GET /api/v1/devices/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    operation_id = "get_device",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The device id.")),
    responses(
        (status = 200, description = "The device.", body = DeviceView),
        (status = 400, description = "Invalid device id.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such device.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = device_id(path)?;
    let d = read(&state, move |store| {
        store.device(&id)?.ok_or_else(|| not_found(&id))
    })
    .await?;
    Ok(Json(d.into()))
}

/// Body of `POST /api/v1/devices/{id}/revoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    /// Why the device is revoked.
    #[schema(schema_with = revoke_reason_schema)]
    reason: String,
}

/// `POST /api/v1/devices/{id}/revoke` -> 200 the revoked device. Effective at once: the SIP
/// core drops its registrations and never forks to it again; its identifier is quarantined.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/revoke",
    tag = "devices",
    operation_id = "revoke_device",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The device id.")),
    request_body = RevokeBody,
    responses(
        (status = 200, description = "Revoked, effective at once.", body = DeviceView),
        (status = 400, description = "Invalid device id, bad JSON or an unknown reason.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such device.", body = ErrorBody),
        (status = 409, description = "Already revoked.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = device_id(path)?;
    let Json(body) = body?;
    if !REVOKE_REASONS.contains(&body.reason.as_str()) {
        return Err(ApiError::invalid(format!(
            "reason: one of {}",
            REVOKE_REASONS.join(", ")
        )));
    }
    let reason = body.reason;
    let d = write(&state, move |store| {
        match store.revoke_device(&id, &reason, unix_now_ms()) {
            Ok(d) => Ok((d, Change::DeviceChanged(id))),
            Err(StoreError::NotFound(_)) => Err(not_found(&id)),
            Err(StoreError::Conflict(_)) => Err(ApiError::conflict(format!(
                "device {id} is already revoked"
            ))),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    tracing::info!(device = %d.id, user = %d.user, reason = ?d.revoked.as_ref().map(|r| &r.reason), "device revoked");
    Ok(Json(d.into()))
}

/// Body of the on/off endpoints.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceBody {
    /// `true`: the phone rings with the desktop; `false`: it does not.
    on: bool,
}

async fn set_service(state: &AppState, id: String, on: bool) -> Result<DeviceView, ApiError> {
    let d = write(state, move |store| {
        match store.device(&id)? {
            None => return Err(not_found(&id)),
            Some(d) if d.revoked.is_some() => {
                return Err(ApiError::conflict(format!("device {id} is revoked")));
            }
            Some(_) => {}
        }
        store.set_service(&id, on)?;
        let d = store.device(&id)?.ok_or_else(|| not_found(&id))?;
        Ok((d, Change::DeviceChanged(id)))
    })
    .await?;
    tracing::info!(device = %d.id, on, "single-number service switched");
    Ok(d.into())
}

/// `PUT /api/v1/devices/{id}/service {"on": bool}` (operator).
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/service",
    tag = "devices",
    operation_id = "put_device_service",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The device id.")),
    request_body = ServiceBody,
    responses(
        (status = 200, description = "The device with its switch set.", body = DeviceView),
        (status = 400, description = "Invalid device id or bad JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such device.", body = ErrorBody),
        (status = 409, description = "The device is revoked.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn put_service(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = device_id(path)?;
    let Json(body) = body?;
    Ok(Json(set_service(&state, id, body.on).await?))
}

/// Body of the number endpoints.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NumberBody {
    /// E.164: `+` and 2 to 15 digits; `null` clears it (the phone is then rung only over
    /// SIP).
    #[schema(required = true, example = "+15551230001")]
    number: Option<String>,
}

/// Whether `n` is an E.164 number as the gateway dials it: `+` and 2..=15 digits.
pub(crate) fn is_e164(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

async fn set_number(
    state: &AppState,
    id: String,
    number: Option<String>,
) -> Result<DeviceView, ApiError> {
    if let Some(n) = &number
        && !is_e164(n)
    {
        return Err(ApiError::invalid("number: E.164, `+` and 2 to 15 digits"));
    }
    let d = write(state, move |store| {
        match store.device(&id)? {
            None => return Err(not_found(&id)),
            Some(d) if d.revoked.is_some() => {
                return Err(ApiError::conflict(format!("device {id} is revoked")));
            }
            Some(_) => {}
        }
        store.set_number(&id, number.as_deref())?;
        let d = store.device(&id)?.ok_or_else(|| not_found(&id))?;
        Ok((d, Change::DeviceChanged(id)))
    })
    .await?;
    tracing::info!(device = %d.id, "phone number set");
    Ok(d.into())
}

/// `PUT /api/v1/devices/{id}/number {"number": "+E164"|null}` (operator).
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/number",
    tag = "devices",
    operation_id = "put_device_number",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The device id.")),
    request_body = NumberBody,
    responses(
        (status = 200, description = "The device with its number set.", body = DeviceView),
        (status = 400, description = "Invalid device id, number or JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such device.", body = ErrorBody),
        (status = 409, description = "The device is revoked, or another active phone has the number.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn put_number(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<NumberBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = device_id(path)?;
    let Json(body) = body?;
    Ok(Json(set_number(&state, id, body.number).await?))
}

/// `PUT /api/v1/device/number {"number": "+E164"|null}` (device token): the phone tells its
/// own number.
#[utoipa::path(
    put,
    path = "/api/v1/device/number",
    tag = "device",
    operation_id = "own_number",
    security(("device_token" = [])),
    request_body = NumberBody,
    responses(
        (status = 200, description = "The phone's record with its number set.", body = DeviceView),
        (status = 400, description = "Invalid number or JSON.", body = ErrorBody),
        (status = 401, description = "Missing or unknown device token.", body = ErrorBody),
        (status = 409, description = "The device is revoked, or another active phone has the number.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn own_number(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NumberBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = authenticated_device(&state, &headers).await?;
    let Json(body) = body?;
    Ok(Json(set_number(&state, d.id, body.number).await?))
}

/// The device behind `Authorization: Bearer DEVICE_TOKEN`.
async fn authenticated_device(state: &AppState, headers: &HeaderMap) -> Result<Device, ApiError> {
    let token = crate::auth::bearer_in(headers).ok_or_else(ApiError::unauthorized)?;
    let hash = token_hash(token);
    read(state, move |store| Ok(store.device_by_token_hash(&hash)?))
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// `GET /api/v1/device` (device token): the phone's own status — enrolled or revoked and why,
/// and the service switch.
#[utoipa::path(
    get,
    path = "/api/v1/device",
    tag = "device",
    operation_id = "own_status",
    security(("device_token" = [])),
    responses(
        (status = 200, description = "The phone's own record: active or revoked and why, and the switch.", body = DeviceView),
        (status = 401, description = "Missing or unknown device token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn own_status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(authenticated_device(&state, &headers).await?.into()))
}

/// `PUT /api/v1/device/service {"on": bool}` (device token): the user's on/off (R10).
#[utoipa::path(
    put,
    path = "/api/v1/device/service",
    tag = "device",
    operation_id = "own_service",
    security(("device_token" = [])),
    request_body = ServiceBody,
    responses(
        (status = 200, description = "The phone's record with its switch set.", body = DeviceView),
        (status = 400, description = "Bad JSON.", body = ErrorBody),
        (status = 401, description = "Missing or unknown device token.", body = ErrorBody),
        (status = 409, description = "The device is revoked.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn own_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = authenticated_device(&state, &headers).await?;
    let Json(body) = body?;
    Ok(Json(set_service(&state, d.id, body.on).await?))
}

/// Query of `GET /api/v1/security-events`: one page of events, by cursor (the paging of
/// `GET /api/v1/cdrs`: `after`, `limit`, and `next` in the body).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Cursor: the `next` of the previous page; this page has the events after it in the
    /// page order (`asc`: larger ids, `desc`: smaller ones). Without it the first page (the
    /// oldest events with `asc`, the newest with `desc`).
    #[param(example = 0, minimum = 0)]
    after: Option<i64>,
    /// Events per page: 1 to 1000 (a larger value is lowered to 1000, 0 raised to 1).
    /// Default 100.
    #[param(example = 100)]
    limit: Option<u32>,
    /// `asc` (default: oldest first) or `desc` (newest first).
    #[param(inline)]
    order: Option<PageOrder>,
}

/// Order of a page of security events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PageOrder {
    /// Oldest first (increasing ids).
    #[default]
    Asc,
    /// Newest first (decreasing ids).
    Desc,
}

/// Events per page when `limit` is not given.
pub(crate) const EVENTS_PAGE_DEFAULT: u32 = 100;
/// Most events per page (a larger `limit` is lowered to it).
pub(crate) const EVENTS_PAGE_MAX: u32 = 1000;

/// Body of `GET /api/v1/security-events`: one page of events.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SecurityEventPage {
    /// Up to `limit` events after the cursor, in the page order.
    events: Vec<SecurityEventView>,
    /// The cursor of the next page (pass it as `after`, with the same `order`); `null` on the
    /// last page.
    #[schema(required = true)]
    next: Option<i64>,
}

/// A security event (R14): a refused proof, lock-out, revoked device, refused enrolment...
// The store's `SecurityEvent`, field for field: the store's types carry no schema.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SecurityEvent)]
pub(crate) struct SecurityEventView {
    /// Increasing id; the last one of a page is the cursor (`after`) of the next.
    id: i64,
    /// When it happened, Unix milliseconds.
    at_ms: i64,
    /// What happened, e.g. `missing-proof`, `wrong-proof`, `replayed-proof`, `locked-out`,
    /// `revoked-device`, `enrolment-refused`.
    kind: String,
    /// The subscriber concerned, if known.
    #[schema(required = true)]
    user: Option<String>,
    /// The device concerned, if known.
    #[schema(required = true)]
    device_id: Option<String>,
    /// The SIP Call-ID concerned, if any.
    #[schema(required = true)]
    call_id: Option<String>,
    /// Human-readable detail (never a secret or an identifier).
    detail: String,
}

impl From<SecurityEvent> for SecurityEventView {
    fn from(e: SecurityEvent) -> Self {
        Self {
            id: e.id,
            at_ms: e.at_ms,
            kind: e.kind,
            user: e.user,
            device_id: e.device_id,
            call_id: e.call_id,
            detail: e.detail,
        }
    }
}

/// `GET /api/v1/security-events[?after=ID&limit=N&order=asc|desc]` -> one page of events and
/// the cursor of the next.
#[utoipa::path(
    get,
    path = "/api/v1/security-events",
    tag = "security",
    operation_id = "list_security_events",
    security(("bearer" = [])),
    params(EventQuery),
    responses(
        (status = 200, description = "Up to `limit` events (default 100, at most 1000) after \
            the cursor `after`, oldest first (`order=desc`: newest first), and `next`, the \
            cursor of the following page (`null` on the last).", body = SecurityEventPage),
        (status = 400, description = "Bad query string: an unknown parameter, a bad number, \
            a negative cursor or an order other than `asc`/`desc`.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn security_events(
    State(state): State<AppState>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SecurityEventPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q
        .limit
        .unwrap_or(EVENTS_PAGE_DEFAULT)
        .clamp(1, EVENTS_PAGE_MAX);
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after: must be an event id, 0 or more"));
    }
    let order = q.order.unwrap_or_default();
    let after = q.after;
    let mut events = read(&state, move |store| {
        // One more than asked tells whether there is a next page.
        Ok(match order {
            PageOrder::Asc => store.security_events(after.unwrap_or(0), limit + 1)?,
            PageOrder::Desc => {
                store.security_events_newest(after.unwrap_or(i64::MAX), limit + 1)?
            }
        })
    })
    .await?;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next = if more {
        events.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(SecurityEventPage {
        events: events.into_iter().map(SecurityEventView::from).collect(),
        next,
    }))
}
