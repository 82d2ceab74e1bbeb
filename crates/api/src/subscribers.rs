//! Subscriber handlers: create, list, get, replace profile, delete, list live registrations.
//!
//! The store is synchronous (SQLite), so every call runs on tokio's blocking pool through
//! [`read()`] and [`write()`]; a store call never stalls the async workers that also carry SIP
//! traffic. The password is hashed into the two HA1s at once (realm = the SIP domain, R2) and
//! is neither stored nor logged.
//!
//! [`write()`] holds the state's write lock across the store call *and* the `on_change` call.
//! Without it, a create and a delete of the same user racing on two threads could commit in
//! one order and report in the other, leaving a deleted subscriber in the SIP core's
//! directory. The callback runs only after a commit, so the directory never runs ahead of the
//! store. Admin writes are rare, so serializing them costs nothing that matters.

use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sip_core::auth::{Algorithm, ha1};
use store::{Store, StoreError, Subscriber};

use crate::error::{ApiError, ErrorBody};
use crate::model::{
    CreateSubscriber, ProfileUpdate, RegistrationView, SubscriberView, validate_user,
};
use crate::{AppState, Change};

/// Runs a read `f` against the store on the blocking pool. A panicking store call is a 500.
pub(crate) async fn read<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|err| ApiError::internal(&err))?
}

/// Runs a mutation `f` on the blocking pool under the write lock; if it commits, reports its
/// [`Change`] through `on_change` before releasing the lock (see the module docs).
pub(crate) async fn write<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<(T, Change), ApiError> + Send + 'static,
{
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        // The lock guards no data, only ordering: a poisoned lock is still usable.
        let _ordered = state.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let (value, change) = f(state.store.as_ref())?;
        (state.on_change)(change);
        Ok(value)
    })
    .await
    .map_err(|err| ApiError::internal(&err))?
}

/// The user of a `{user}` path segment, checked like a creation body's `user`.
pub(crate) fn path_user(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(user) = path?;
    validate_user(&user)?;
    Ok(user)
}

fn subscriber_not_found(user: &str) -> ApiError {
    ApiError::not_found(format!("subscriber {user} not found"))
}

pub(crate) fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `POST /api/v1/subscribers` -> 201 with the subscriber and a `Location` header.
#[utoipa::path(
    post,
    path = "/api/v1/subscribers",
    tag = "subscribers",
    operation_id = "create_subscriber",
    security(("bearer" = [])),
    request_body = CreateSubscriber,
    responses(
        (status = 201, description = "Created.", body = SubscriberView,
            headers(("Location" = String, description = "`/api/v1/subscribers/USER`"))),
        (status = 400, description = "Bad JSON or an invalid field (`invalid_request`, \
            `invalid_json`), or a password shorter than 12 characters (`weak_password`).",
            body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 409, description = "The subscriber exists already.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateSubscriber>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let profile = body.validate()?;
    let realm: &str = &state.domain;
    let sub = Subscriber {
        ha1_md5: ha1(Algorithm::Md5, &body.user, realm, &body.password),
        ha1_sha256: ha1(Algorithm::Sha256, &body.user, realm, &body.password),
        user: body.user,
        enterprise: body.enterprise,
        profile,
        created_at: unix_now_ms() / 1000,
    };
    let created = sub.clone();
    write(&state, move |store| {
        match store.create_subscriber(&created) {
            Ok(()) => Ok(((), Change::SubscriberUpserted(created))),
            Err(StoreError::Conflict(_)) => Err(ApiError::conflict(format!(
                "subscriber {} already exists",
                created.user
            ))),
            Err(err) => Err(err.into()),
        }
    })
    .await?;
    tracing::info!(user = %sub.user, enterprise = %sub.enterprise, "subscriber created");

    let location = HeaderValue::from_str(&format!("/api/v1/subscribers/{}", sub.user)).ok();
    let mut response = (
        StatusCode::CREATED,
        Json(SubscriberView::new(sub, &state.domain)),
    )
        .into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /api/v1/subscribers` -> 200 with every subscriber, ordered by user.
#[utoipa::path(
    get,
    path = "/api/v1/subscribers",
    tag = "subscribers",
    operation_id = "list_subscribers",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every subscriber, ordered by user.", body = [SubscriberView]),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
) -> Result<Json<Vec<SubscriberView>>, ApiError> {
    let subs = read(&state, |store| Ok(store.subscribers()?)).await?;
    let views = subs
        .into_iter()
        .map(|sub| SubscriberView::new(sub, &state.domain))
        .collect();
    Ok(Json(views))
}

/// `GET /api/v1/subscribers/{user}` -> 200 or 404.
#[utoipa::path(
    get,
    path = "/api/v1/subscribers/{user}",
    tag = "subscribers",
    operation_id = "get_subscriber",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "The subscriber's user name.")),
    responses(
        (status = 200, description = "The subscriber.", body = SubscriberView),
        (status = 400, description = "Invalid user name.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such subscriber.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubscriberView>, ApiError> {
    let user = path_user(path)?;
    let found = {
        let user = user.clone();
        read(&state, move |store| Ok(store.subscriber(&user)?)).await?
    };
    let sub = found.ok_or_else(|| subscriber_not_found(&user))?;
    Ok(Json(SubscriberView::new(sub, &state.domain)))
}

/// `PUT /api/v1/subscribers/{user}/profile` -> 200 with the updated subscriber, 404 if none.
#[utoipa::path(
    put,
    path = "/api/v1/subscribers/{user}/profile",
    tag = "subscribers",
    operation_id = "put_profile",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "The subscriber's user name.")),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "The profile was replaced; the updated subscriber.", body = SubscriberView),
        (status = 400, description = "Invalid user name, bad JSON or an invalid field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such subscriber.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn put_profile(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ProfileUpdate>, JsonRejection>,
) -> Result<Json<SubscriberView>, ApiError> {
    let user = path_user(path)?;
    let Json(body) = body?;
    let profile = body.validate()?;
    let sub = write(&state, move |store| {
        match store.set_profile(&user, &profile) {
            Ok(()) => {}
            Err(StoreError::NotFound(_)) => return Err(subscriber_not_found(&user)),
            Err(err) => return Err(err.into()),
        }
        // Read back what was committed; no other write can run in between.
        let sub = store
            .subscriber(&user)?
            .ok_or_else(|| subscriber_not_found(&user))?;
        Ok((sub.clone(), Change::SubscriberUpserted(sub)))
    })
    .await?;
    tracing::info!(user = %sub.user, "subscriber profile replaced");
    Ok(Json(SubscriberView::new(sub, &state.domain)))
}

/// `DELETE /api/v1/subscribers/{user}` -> 204, 404 if none. The store drops the subscriber's
/// registrations in the same transaction.
#[utoipa::path(
    delete,
    path = "/api/v1/subscribers/{user}",
    tag = "subscribers",
    operation_id = "delete_subscriber",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "The subscriber's user name.")),
    responses(
        (status = 204, description = "Deleted, with its registrations."),
        (status = 400, description = "Invalid user name.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such subscriber.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let user = path_user(path)?;
    let deleted = user.clone();
    write(&state, move |store| {
        if store.delete_subscriber(&deleted)? {
            Ok(((), Change::SubscriberDeleted(deleted)))
        } else {
            Err(subscriber_not_found(&deleted))
        }
    })
    .await?;
    tracing::info!(%user, "subscriber deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/subscribers/{user}/registrations` -> 200 with the live registrations (q
/// descending), 404 if the subscriber does not exist.
#[utoipa::path(
    get,
    path = "/api/v1/subscribers/{user}/registrations",
    tag = "subscribers",
    operation_id = "list_registrations",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "The subscriber's user name.")),
    responses(
        (status = 200, description = "The live registrations, highest q first.", body = [RegistrationView]),
        (status = 400, description = "Invalid user name.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such subscriber.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn registrations(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<RegistrationView>>, ApiError> {
    let user = path_user(path)?;
    let now_ms = unix_now_ms();
    let found = {
        let user = user.clone();
        read(&state, move |store| {
            if store.subscriber(&user)?.is_none() {
                return Ok(None);
            }
            Ok(Some(store.registrations(Some(&user), now_ms)?))
        })
        .await?
    };
    let regs = found.ok_or_else(|| subscriber_not_found(&user))?;
    let views = regs
        .into_iter()
        .map(|reg| RegistrationView::new(reg, now_ms))
        .collect();
    Ok(Json(views))
}
