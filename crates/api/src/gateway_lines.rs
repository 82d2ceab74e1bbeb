//! The gateway's line-authentication channel (SPEC R29, SECURITY threat 13): how the
//! IP->PSTN gateway learns that a line attaching with a phone's number holds that phone's
//! trusted zone, without ever trusting the line.
//!
//! The gateway never holds license keys. For each attach it asks the server, over this
//! channel, for a fresh **attach challenge** for the number; the line's zone proves it; the
//! gateway hands the proof back here and the server's trust authority checks it
//! ([`zone::authority::TrustAuthority::issue_attach`] / `verify_attach`: a kind of challenge
//! apart from call challenges, whose failures never count toward the phone's lockout).
//! The number -> device mapping is read from the store at each request, so a revocation or
//! a number change takes effect at once; the gateway also asks who holds a number before a
//! line dials out and periodically for every attached line ([`PATH_HOLDER`]).
//!
//! | method | path | body | success | errors |
//! |---|---|---|---|---|
//! | POST | [`PATH_CHALLENGE`] | [`ChallengeRequest`] | 200 [`ChallengeResponse`] | 404 `unassigned` (no active phone has the number), 409 `no_key` |
//! | POST | [`PATH_VERIFY`] | [`VerifyRequest`] | 200 [`VerifyResponse`] | 403 (code of the trust failure, e.g. `wrong-proof`), 409 `number_moved` |
//! | POST | [`PATH_HOLDER`] | [`HolderRequest`] | 200 [`HolderResponse`] | |
//!
//! Every request carries `Gateway-Auth: v=1;ts=UNIX_MS;mac=HEX` ([`request_auth`]): an
//! HMAC-SHA256 under a key derived from the trunk secret the server already shares with the
//! gateway (`DATA/trunk-secret`), over the time, the method, the path and the SHA-256 of the
//! body; the server accepts it within [`MAX_SKEW_MS`] of its clock. Anything else is 401
//! (also 400 bad body, 413 over [`BODY_LIMIT`], 500, all in the API's error shape
//! `{"error":{"code","message"}}`). The derived key is separate from the `Trunk-Auth` MAC's
//! (another label), so neither MAC can stand in for the other. A replay within the window
//! gains nothing: a second challenge is just another challenge, a verify consumes its
//! challenge, a holder lookup reads.
//!
//! The channel is not part of the operator's API (nor of its OpenAPI document): `trustring
//! serve --gateway` merges [`router`] into the admin listener, outside the admin-token layer,
//! because its credential is the trunk secret, not the admin token. Without `--gateway` the
//! paths do not exist (the admin layer answers 401, as for any unknown path).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zone::authority::{ATTACH_BRANCH, TrustAuthority, TrustFailure};

/// Asks for an attach challenge for a number.
pub const PATH_CHALLENGE: &str = "/gateway/v1/attach/challenge";
/// Checks a line's proof of an attach challenge.
pub const PATH_VERIFY: &str = "/gateway/v1/attach/verify";
/// Which phone holds a number now.
pub const PATH_HOLDER: &str = "/gateway/v1/lines/holder";
/// The request MAC header.
pub const AUTH_HEADER: &str = "gateway-auth";
/// How far a request's time may be from the server's clock.
pub const MAX_SKEW_MS: i64 = 60_000;
/// Largest request body.
pub const BODY_LIMIT: usize = 4096;

/// `POST` [`PATH_CHALLENGE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The number the line claims (as it sent it in ATT).
    pub number: String,
}

/// The attach challenge for the phone holding the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// The phone's device id.
    pub device_id: String,
    /// The challenge (`Trust-Challenge` form) for the line's zone.
    pub challenge: String,
    /// The binding's call reference (`attach-…`).
    pub call_ref: String,
    /// The binding's branch ([`ATTACH_BRANCH`]).
    pub branch: String,
}

/// `POST` [`PATH_VERIFY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The number the line claims.
    pub number: String,
    /// The device the challenge was issued to.
    pub device_id: String,
    /// The challenge's call reference.
    pub call_ref: String,
    /// The line's `Trust-Proof` value (ATP).
    pub proof: String,
}

/// The proof is good and the device still holds the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyResponse {
    /// The phone's device id.
    pub device_id: String,
}

/// `POST` [`PATH_HOLDER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderRequest {
    /// A number.
    pub number: String,
}

/// Who holds a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderResponse {
    /// The active (enrolled, not revoked) phone whose number it is; `None`: no phone's.
    pub device_id: Option<String>,
}

/// The key of the request MAC, derived from the trunk secret (never the secret itself).
fn mac_key(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"trustring/v1/gateway-api-key\0");
    h.update(secret);
    h.finalize().into()
}

fn request_mac(secret: &[u8], ts_ms: i64, method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut msg = Vec::with_capacity(96 + path.len());
    for part in [
        ts_ms.to_string().as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
    ] {
        msg.extend_from_slice(part);
        msg.push(0);
    }
    msg.extend_from_slice(&Sha256::digest(body));
    zone::proof::mac(&mac_key(secret), b"trustring/v1/gateway-api", &msg)
}

/// The `Gateway-Auth` value of a request made at `ts_ms` (Unix ms).
pub fn request_auth(secret: &[u8], ts_ms: i64, method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "v=1;ts={ts_ms};mac={}",
        hex::encode(request_mac(secret, ts_ms, method, path, body))
    )
}

/// Whether `value` authenticates this request at `now_ms` (constant-time MAC compare).
pub fn verify_request_auth(
    secret: &[u8],
    value: &str,
    now_ms: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> bool {
    let (mut ts, mut mac) = (None, None);
    for p in value.split(';').map(str::trim) {
        match p.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("v", "1")) => {}
            Some(("ts", v)) if ts.is_none() => ts = v.parse::<i64>().ok(),
            Some(("mac", v)) if mac.is_none() => mac = hex::decode(v).ok(),
            _ => return false,
        }
    }
    let (Some(ts), Some(given)) = (ts, mac) else {
        return false;
    };
    if (now_ms - ts).abs() > MAX_SKEW_MS {
        return false;
    }
    let want = request_mac(secret, ts, method, path, body);
    given.len() == want.len() && bool::from(given.ct_eq(&want))
}

/// What the channel needs: the store (who holds which number), the trust authority (the
/// phones' license keys) and the trunk secret.
pub struct GatewayLines {
    store: Arc<dyn store::Store>,
    authority: Arc<Mutex<TrustAuthority>>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for GatewayLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLines").finish_non_exhaustive()
    }
}

impl GatewayLines {
    /// The channel over `store` and `authority`, authenticated by the trunk `secret`.
    pub fn new(
        store: Arc<dyn store::Store>,
        authority: Arc<Mutex<TrustAuthority>>,
        secret: Vec<u8>,
    ) -> Self {
        Self {
            store,
            authority,
            secret,
        }
    }
}

/// The channel's routes, to merge into the admin listener's router (see the module docs).
pub fn router(lines: GatewayLines) -> Router {
    let state = Arc::new(lines);
    Router::new()
        .route(PATH_CHALLENGE, post(challenge))
        .route(PATH_VERIFY, post(verify))
        .route(PATH_HOLDER, post(holder))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An answer in the API's error shape, `{"error":{"code","message"}}`.
#[derive(Debug)]
struct Fail {
    status: StatusCode,
    code: String,
    message: String,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Fail {
    Fail {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// The request's body as `T`, once its MAC checked out.
fn authenticated<T: serde::de::DeserializeOwned>(
    s: &GatewayLines,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Fail> {
    let value = headers
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let method = Method::POST.as_str();
    if !verify_request_auth(&s.secret, value, unix_ms(), method, path, body) {
        tracing::warn!(
            path,
            "gateway request with a missing or bad Gateway-Auth refused"
        );
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid Gateway-Auth",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()))
}

/// The active phone whose number is `number`, from the store.
async fn holder_of(s: &GatewayLines, number: &str) -> Result<Option<String>, Fail> {
    let store = s.store.clone();
    let number = number.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        store.devices(None).map(|all| {
            all.into_iter()
                .find(|d| d.revoked.is_none() && d.number.as_deref() == Some(number.as_str()))
                .map(|d| d.id)
        })
    })
    .await;
    match found {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "gateway line lookup: store failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )),
    }
}

fn authority(s: &GatewayLines) -> std::sync::MutexGuard<'_, TrustAuthority> {
    s.authority.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn challenge(
    State(s): State<Arc<GatewayLines>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let req: ChallengeRequest = authenticated(&s, PATH_CHALLENGE, &headers, &body)?;
    let Some(device) = holder_of(&s, &req.number).await? else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "unassigned",
            "no enrolled phone has this number",
        ));
    };
    let issued = authority(&s).issue_attach(Instant::now(), unix_ms().max(0) as u64, &device);
    match issued {
        Ok(a) => Ok(axum::Json(ChallengeResponse {
            device_id: device,
            challenge: a.challenge.to_header(),
            call_ref: a.call_ref,
            branch: ATTACH_BRANCH.to_owned(),
        })
        .into_response()),
        Err(f) => {
            tracing::warn!(device = %device, failure = f.code(), "no attach challenge for the phone");
            Err(error(StatusCode::CONFLICT, "no_key", f.code()))
        }
    }
}

async fn verify(
    State(s): State<Arc<GatewayLines>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let req: VerifyRequest = authenticated(&s, PATH_VERIFY, &headers, &body)?;
    let checked =
        authority(&s).verify_attach(Instant::now(), &req.device_id, &req.call_ref, &req.proof);
    if let Err(f) = checked {
        tracing::info!(number = %req.number, device = %req.device_id, failure = f.code(), "line attach proof refused (does not count toward the phone's lockout)");
        let code = match f {
            TrustFailure::Malformed(_) => "malformed-proof",
            _ => f.code(),
        };
        return Err(error(StatusCode::FORBIDDEN, code, "attach proof refused"));
    }
    // The number may have moved (or the phone been revoked) since the challenge.
    match holder_of(&s, &req.number).await? {
        Some(d) if d == req.device_id => Ok(axum::Json(VerifyResponse {
            device_id: req.device_id,
        })
        .into_response()),
        _ => Err(error(
            StatusCode::CONFLICT,
            "number_moved",
            "the phone no longer holds this number",
        )),
    }
}

async fn holder(
    State(s): State<Arc<GatewayLines>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let req: HolderRequest = authenticated(&s, PATH_HOLDER, &headers, &body)?;
    let device_id = holder_of(&s, &req.number).await?;
    Ok(axum::Json(HolderResponse { device_id }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    const SECRET: &[u8] = b"0123456789abcdef-trunk-secret";

    fn app() -> Router {
        let store: Arc<dyn store::Store> =
            Arc::new(store::SqliteStore::open_in_memory().unwrap_or_else(|e| panic!("{e}")));
        let authority = Arc::new(Mutex::new(TrustAuthority::new(Default::default())));
        router(GatewayLines::new(store, authority, SECRET.to_vec()))
    }

    async fn call(path: &str, body: &str, auth: Option<String>) -> (StatusCode, String) {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header(AUTH_HEADER, a);
        }
        let resp = app()
            .oneshot(
                req.body(Body::from(body.to_owned()))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn signed(path: &str, body: &str) -> Option<String> {
        Some(request_auth(
            SECRET,
            unix_ms(),
            "POST",
            path,
            body.as_bytes(),
        ))
    }

    #[tokio::test]
    async fn only_the_gateway_gets_answers() {
        let body = r#"{"number":"+15551230001"}"#;
        for path in [PATH_CHALLENGE, PATH_VERIFY, PATH_HOLDER] {
            // No MAC, a MAC under another secret, a MAC for another path: 401.
            let other = Some(request_auth(
                b"another-secret-0000000",
                unix_ms(),
                "POST",
                path,
                body.as_bytes(),
            ));
            let moved = signed(PATH_CHALLENGE, body).filter(|_| path != PATH_CHALLENGE);
            for auth in [None, other, moved] {
                let (status, text) = call(path, body, auth).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {text}");
                assert!(text.contains(r#""code":"unauthorized""#), "{text}");
            }
        }
        // Signed: no phone has the number.
        let (status, text) = call(PATH_CHALLENGE, body, signed(PATH_CHALLENGE, body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert!(text.contains(r#""code":"unassigned""#), "{text}");
        let (status, text) = call(PATH_HOLDER, body, signed(PATH_HOLDER, body)).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::OK, r#"{"device_id":null}"#)
        );
        let verify =
            r#"{"number":"+15551230001","device_id":"d-1","call_ref":"attach-00","proof":"junk"}"#;
        let (status, text) = call(PATH_VERIFY, verify, signed(PATH_VERIFY, verify)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        assert!(text.contains(r#""code":"malformed-proof""#), "{text}");
        // Signed but not the body the route takes.
        let junk = r#"{"number":"+1","extra":1}"#;
        let (status, _) = call(PATH_HOLDER, junk, signed(PATH_HOLDER, junk)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn request_mac_binds_time_method_path_and_body() {
        let secret = b"0123456789abcdef-secret";
        let now = 1_764_567_890_123;
        let v = request_auth(secret, now, "POST", PATH_VERIFY, b"{}");
        assert!(verify_request_auth(
            secret,
            &v,
            now + 1000,
            "POST",
            PATH_VERIFY,
            b"{}"
        ));
        for (s, t, m, p, b) in [
            (
                &b"another-secret-000000"[..],
                now,
                "POST",
                PATH_VERIFY,
                &b"{}"[..],
            ),
            (secret, now + MAX_SKEW_MS + 1, "POST", PATH_VERIFY, b"{}"),
            (secret, now, "GET", PATH_VERIFY, b"{}"),
            (secret, now, "POST", PATH_CHALLENGE, b"{}"),
            (secret, now, "POST", PATH_VERIFY, b"{ }"),
        ] {
            assert!(!verify_request_auth(s, &v, t, m, p, b), "{m} {p}");
        }
        for junk in ["", "v=1", "v=1;ts=1;mac=zz", "v=2;ts=1;mac=00", "x=1"] {
            assert!(!verify_request_auth(
                secret,
                junk,
                now,
                "POST",
                PATH_VERIFY,
                b"{}"
            ));
        }
    }
}
