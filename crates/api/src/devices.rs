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

use crate::error::ApiError;
use crate::provisioning::token_hash;
use crate::subscribers::{read, unix_now_ms, write};
use crate::{AppState, Change};

/// Revocation reasons an operator may give (R9).
pub const REVOKE_REASONS: &[&str] = &["non-payment", "left-enterprise", "eula-violation", "lost"];

/// A device as the API shows it. Never the identifier, never the key.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceView {
    id: String,
    user: String,
    security_level: String,
    zone_public_key: String,
    eula_version: String,
    eula_accepted_at_ms: i64,
    service_on: bool,
    /// `active` or `revoked`.
    status: &'static str,
    revoked_reason: Option<String>,
    revoked_at_ms: Option<i64>,
    created_at_ms: i64,
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceQuery {
    user: Option<String>,
}

/// `GET /api/v1/devices[?user=alice]`.
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let devices = read(&state, move |store| Ok(store.devices(q.user.as_deref())?)).await?;
    Ok(Json(devices.into_iter().map(DeviceView::from).collect()))
}

/// `GET /api/v1/devices/{id}`.
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    reason: String,
}

/// `POST /api/v1/devices/{id}/revoke` -> 200 the revoked device. Effective at once: the SIP
/// core drops its registrations and never forks to it again; its identifier is quarantined.
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceBody {
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
pub(crate) async fn put_service(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = device_id(path)?;
    let Json(body) = body?;
    Ok(Json(set_service(&state, id, body.on).await?))
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
pub(crate) async fn own_status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(authenticated_device(&state, &headers).await?.into()))
}

/// `PUT /api/v1/device/service {"on": bool}` (device token): the user's on/off (R10).
pub(crate) async fn own_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = authenticated_device(&state, &headers).await?;
    let Json(body) = body?;
    Ok(Json(set_service(&state, d.id, body.on).await?))
}

/// Query of `GET /api/v1/security-events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventQuery {
    since: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/security-events[?since=ID&limit=N]` -> events after id `since`, oldest first.
pub(crate) async fn security_events(
    State(state): State<AppState>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SecurityEvent>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let since = q.since.unwrap_or(0);
    Ok(Json(
        read(
            &state,
            move |store| Ok(store.security_events(since, limit)?),
        )
        .await?,
    ))
}
