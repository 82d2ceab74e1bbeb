//! [`ApiError`]: the one error shape of the admin API.
//!
//! Every failure, including axum's own (unknown route, wrong method, bad JSON, body too large),
//! leaves as `application/json` of one shape, so a client needs a single error parser:
//!
//! ```json
//! {"error":{"code":"not_found","message":"subscriber alice not found"}}
//! ```
//!
//! `code` is a stable machine-readable token; `message` is for humans. Internal failures (store,
//! panicked blocking task) become a generic 500 and the detail goes to the log only: database
//! messages can contain paths, SQL or data of other subscribers, so they never reach a client
//! (STYLE.md habit 5, SPEC R21).

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

/// An API error: HTTP status, stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// What the server records about it (security events, logs) when that says more than
    /// the public message; never returned.
    detail: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The same error, with `detail` for the server's records only (see [`Self::detail`]).
    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// What the server records about the error: its private detail if it has one, else its
    /// message.
    pub(crate) fn detail(&self) -> &str {
        self.detail.as_deref().unwrap_or(&self.message)
    }

    /// Any status with its own stable code (provisioning errors such as `pool_exhausted`).
    pub(crate) fn with_code(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(status, code, message)
    }

    /// 400: the request is well-formed JSON but a field is invalid.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401: missing or wrong bearer token (the caller adds `WWW-Authenticate`).
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }

    /// 404: no such resource.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405: the path exists but not with this method.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    /// 413: the body is larger than [`crate::BODY_LIMIT`].
    fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body larger than {} bytes", crate::BODY_LIMIT),
        )
    }

    /// 409: the resource exists already.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 with a generic message. `detail` is logged, never returned.
    pub(crate) fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(%detail, "admin API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
}

/// The body of every error response (4xx and 5xx), `application/json`.
// As serialized and as documented: one type for both, so the schema cannot drift from the wire.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "subscriber alice not found"}}))]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code: `invalid_request`, `invalid_json`, `invalid_body`,
    /// `unsupported_media_type`, `payload_too_large`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `conflict`, `internal`, `provisioning_disabled`, `weak_password`,
    /// `zone_not_allowed`, `code_invalid` (unknown, used or expired enrolment code: one answer
    /// for the three), `code_bound`, `eula_not_current`, `pool_exhausted`, `metrics_disabled`.
    code: &'static str,
    /// For humans; never contains server internals.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // `detail` stays here: it is for the server's records only.
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Store errors: `Conflict` and `NotFound` are the caller's business (409/404); everything else
/// is ours (500, detail logged only). Handlers that know which resource they touched map
/// `Conflict`/`NotFound` themselves with a precise message; this is the fallback, and it does
/// not echo the store's text either.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(_) => Self::conflict("resource already exists"),
            StoreError::NotFound(_) => Self::not_found("resource not found"),
            other => Self::internal(&other),
        }
    }
}

/// axum's JSON extractor failures, mapped to our shape. axum answers a well-formed body of the
/// wrong type (unknown field, missing field, wrong type) with 422; we answer 400 like any other
/// bad body, so clients see one status for "your JSON is wrong". The message names the problem
/// (serde's text: field, line, column) and contains nothing of the server.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ),
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(),
            // Failed to read the body (client went away, bad chunking): the client's problem.
            _ => Self::new(StatusCode::BAD_REQUEST, "invalid_body", message),
        }
    }
}

/// Raw body extractor failures (a body that is optional JSON, read as bytes): too large is
/// 413, anything else a 400, in our shape rather than axum's plain text.
impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::payload_too_large()
        } else {
            Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    }
}

/// Path extractor failures (e.g. percent-encoding that is not UTF-8).
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_status_without_leaking() {
        let conflict = ApiError::from(StoreError::Conflict("subscriber alice".into()));
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        let missing = ApiError::from(StoreError::NotFound("subscriber bob".into()));
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let db = ApiError::from(StoreError::Database("disk I/O at /secret/path".into()));
        assert_eq!(db.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!db.message.contains("secret"));
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let response = ApiError::unauthorized().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE),
            Some(&HeaderValue::from_static("Bearer"))
        );
    }
}
