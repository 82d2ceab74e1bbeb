//! Trusted provisioning (SPEC R3–R7): the number identity pool, EULA versions, one-time
//! enrolment codes, and the enrolment itself (the patent's EULA provisioning process).
//!
//! Enrolment is one store transaction (code consumed, identifier taken from the pool, device
//! stored) followed by sealing the identifier and a fresh license key to the zone's public
//! key. The license key is kept only encrypted under the master key; the identifier and the
//! key leave this process only inside the sealed package, and never appear in a response
//! after that, nor in a log line (R5).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sip_core::auth::{Algorithm, ha1};
use store::{EnrolError, Enrolment, Eula, NewDevice, PoolCounts, SecurityEvent, StoreError};
use utoipa::ToSchema;
use zone::{LicenseKey, SecurityLevel, ZonePublicKey};

use crate::error::{ApiError, ErrorBody};
use crate::serve::PeerAddr;
use crate::subscribers::{path_user, read, unix_now_ms, write};
use crate::{AppState, Change};

/// Longest range one request may load into the pool.
pub const MAX_POOL_LOAD: u64 = 1_000_000;

/// What the server needs to provision phones: the master key that keeps license keys
/// encrypted at rest, the key that signs sealed packages, and the operator's policy.
pub struct Provisioning {
    /// Master key ring (current key encrypts; older ones still decrypt).
    pub master: Arc<zone::master::MasterKeyRing>,
    /// Signs every sealed package (the device pins its public half).
    pub signer: zone::ServerSigningKey,
    /// How long an enrolment code stays valid by default.
    pub code_ttl: Duration,
    /// Refuse software zones: only PKCS#11 (hardware-backed) zones may enrol.
    pub require_pkcs11: bool,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("code_ttl", &self.code_ttl)
            .field("require_pkcs11", &self.require_pkcs11)
            .finish_non_exhaustive()
    }
}

fn provisioning(state: &AppState) -> Result<Arc<Provisioning>, ApiError> {
    state.provisioning.clone().ok_or_else(|| {
        ApiError::with_code(
            StatusCode::SERVICE_UNAVAILABLE,
            "provisioning_disabled",
            "this server has no master key: provisioning is disabled",
        )
    })
}

// ---- number identity pool (R3) ----

/// Body of `POST /api/v1/pools/numbers`: a range `"+15550100000..+15550109999"` (inclusive,
/// both ends the same length) or a list of identifiers. Exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolLoad {
    /// `FIRST..LAST`, both E.164 numbers (`+` and 2 to 15 digits) of equal length, at most
    /// 1 000 000 identifiers.
    #[schema(example = "+15550100000..+15550109999")]
    range: Option<String>,
    /// E.164 numbers (`+` and 2 to 15 digits), 1 to 1 000 000 of them.
    identifiers: Option<Vec<String>>,
}

/// The number identity pool's counts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PoolStatus {
    /// Identifiers ready to be assigned.
    free: u64,
    /// Identifiers assigned to an enrolled device.
    assigned: u64,
    /// Identifiers taken back from revoked devices, not assignable until released.
    quarantined: u64,
}

impl From<PoolCounts> for PoolStatus {
    fn from(c: PoolCounts) -> Self {
        Self {
            free: c.free,
            assigned: c.assigned,
            quarantined: c.quarantined,
        }
    }
}

/// Answer of `POST /api/v1/pools/numbers`: how many identifiers were new, and the counts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PoolLoaded {
    /// Identifiers added (those already in the pool are skipped).
    added: usize,
    /// Identifiers ready to be assigned.
    free: u64,
    /// Identifiers assigned to an enrolled device.
    assigned: u64,
    /// Identifiers taken back from revoked devices, not assignable until released.
    quarantined: u64,
}

/// An identifier is an E.164 number: `+` and 2 to 15 digits.
fn valid_identifier(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn expand(load: PoolLoad) -> Result<Vec<String>, ApiError> {
    match (load.range, load.identifiers) {
        (Some(range), None) => {
            let (a, b) = range
                .split_once("..")
                .ok_or_else(|| ApiError::invalid("range: expected FIRST..LAST"))?;
            let (a, b) = (a.trim(), b.trim());
            if !valid_identifier(a) || !valid_identifier(b) || a.len() != b.len() {
                return Err(ApiError::invalid(
                    "range: both ends must be E.164 numbers (+ and 2-15 digits) of equal length",
                ));
            }
            let width = a.len() - 1;
            let lo: u64 = a[1..]
                .parse()
                .map_err(|_| ApiError::invalid("range: bad number"))?;
            let hi: u64 = b[1..]
                .parse()
                .map_err(|_| ApiError::invalid("range: bad number"))?;
            if hi < lo {
                return Err(ApiError::invalid("range: LAST is below FIRST"));
            }
            if hi - lo >= MAX_POOL_LOAD {
                return Err(ApiError::invalid(format!(
                    "range: at most {MAX_POOL_LOAD} identifiers per request"
                )));
            }
            Ok((lo..=hi).map(|n| format!("+{n:0width$}")).collect())
        }
        (None, Some(list)) => {
            if list.is_empty() || list.len() as u64 > MAX_POOL_LOAD {
                return Err(ApiError::invalid(format!(
                    "identifiers: 1 to {MAX_POOL_LOAD} entries"
                )));
            }
            if let Some(bad) = list.iter().position(|s| !valid_identifier(s)) {
                return Err(ApiError::invalid(format!(
                    "identifiers[{bad}]: not an E.164 number (+ and 2-15 digits)"
                )));
            }
            Ok(list)
        }
        _ => Err(ApiError::invalid(
            "give exactly one of \"range\" or \"identifiers\"",
        )),
    }
}

/// `POST /api/v1/pools/numbers` -> 200 `{"added": N, "free":…, "assigned":…, "quarantined":…}`.
#[utoipa::path(
    post,
    path = "/api/v1/pools/numbers",
    tag = "pools",
    operation_id = "load_numbers",
    security(("bearer" = [])),
    request_body = PoolLoad,
    responses(
        (status = 200, description = "Identifiers added; the pool's counts after.", body = PoolLoaded),
        (status = 400, description = "Bad JSON, or not exactly one of a valid `range` or `identifiers`.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn load_numbers(
    State(state): State<AppState>,
    body: Result<Json<PoolLoad>, JsonRejection>,
) -> Result<Json<PoolLoaded>, ApiError> {
    let Json(body) = body?;
    let ids = expand(body)?;
    let (added, counts) = read(&state, move |store| {
        let added = store.add_identifiers(&ids)?;
        Ok((added, store.pool_counts()?))
    })
    .await?;
    tracing::info!(added, "number identity pool loaded");
    Ok(Json(PoolLoaded {
        added,
        free: counts.free,
        assigned: counts.assigned,
        quarantined: counts.quarantined,
    }))
}

/// `GET /api/v1/pools/numbers` -> the free / assigned / quarantined counts.
#[utoipa::path(
    get,
    path = "/api/v1/pools/numbers",
    tag = "pools",
    operation_id = "pool_counts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pool's counts.", body = PoolStatus),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn number_counts(
    State(state): State<AppState>,
) -> Result<Json<PoolStatus>, ApiError> {
    let c = read(&state, |store| Ok(store.pool_counts()?)).await?;
    Ok(Json(c.into()))
}

/// Body of `POST /api/v1/pools/numbers/release`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Release {
    /// Release identifiers quarantined at least this long ago.
    min_age_secs: u64,
}

/// Answer of `POST /api/v1/pools/numbers/release`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Released {
    /// Identifiers moved from quarantined back to free.
    released: usize,
}

/// `POST /api/v1/pools/numbers/release` -> quarantined identifiers back to free (R3).
#[utoipa::path(
    post,
    path = "/api/v1/pools/numbers/release",
    tag = "pools",
    operation_id = "release_numbers",
    security(("bearer" = [])),
    request_body = Release,
    responses(
        (status = 200, description = "Quarantined identifiers old enough are free again.", body = Released),
        (status = 400, description = "Bad JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn release_numbers(
    State(state): State<AppState>,
    body: Result<Json<Release>, JsonRejection>,
) -> Result<Json<Released>, ApiError> {
    let Json(body) = body?;
    let age = i64::try_from(body.min_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let before = unix_now_ms().saturating_sub(age);
    let released = read(&state, move |store| Ok(store.release_quarantined(before)?)).await?;
    Ok(Json(Released { released }))
}

// ---- EULA versions (R4) ----

/// Body of `POST /api/v1/eulas`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishEula {
    /// The version label, unique: 1 to 64 of `A-Z a-z 0-9 . - _` (surrounding spaces are
    /// trimmed).
    #[schema(example = "2026-1")]
    version: String,
    /// The full text of the agreement, not empty.
    text: String,
}

/// A published EULA version.
// The store's `Eula`, field for field: the store's types carry no schema.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Eula)]
pub(crate) struct EulaView {
    /// The version label, unique.
    version: String,
    /// The full text of the agreement.
    text: String,
    /// Publication time, Unix milliseconds.
    published_at_ms: i64,
}

impl From<Eula> for EulaView {
    fn from(e: Eula) -> Self {
        Self {
            version: e.version,
            text: e.text,
            published_at_ms: e.published_at_ms,
        }
    }
}

/// `POST /api/v1/eulas` -> 201: publishes a version; the newest is current.
#[utoipa::path(
    post,
    path = "/api/v1/eulas",
    tag = "eulas",
    operation_id = "publish_eula",
    security(("bearer" = [])),
    request_body = PublishEula,
    responses(
        (status = 201, description = "Published; it is now the current version.", body = EulaView),
        (status = 400, description = "Bad JSON, bad version label or empty text.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 409, description = "That version exists already.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn publish_eula(
    State(state): State<AppState>,
    body: Result<Json<PublishEula>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let version = body.version.trim().to_owned();
    if version.is_empty()
        || version.len() > 64
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(ApiError::invalid(
            "version: 1 to 64 characters of A-Z a-z 0-9 . - _",
        ));
    }
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid("text: must not be empty"));
    }
    let eula = Eula {
        version,
        text: body.text,
        published_at_ms: unix_now_ms(),
    };
    let stored = eula.clone();
    read(&state, move |store| match store.publish_eula(&stored) {
        Err(StoreError::Conflict(_)) => Err(ApiError::conflict(format!(
            "EULA version {} already exists",
            stored.version
        ))),
        other => Ok(other?),
    })
    .await?;
    tracing::info!(version = %eula.version, "EULA published");
    Ok((StatusCode::CREATED, Json(EulaView::from(eula))).into_response())
}

/// `GET /api/v1/eulas` -> every version, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/eulas",
    tag = "eulas",
    operation_id = "list_eulas",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every published version, oldest first.", body = [EulaView]),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn list_eulas(
    State(state): State<AppState>,
) -> Result<Json<Vec<EulaView>>, ApiError> {
    let eulas = read(&state, |store| Ok(store.eulas()?)).await?;
    Ok(Json(eulas.into_iter().map(EulaView::from).collect()))
}

/// `GET /api/v1/enrol/eula` (public) -> the current EULA the phone must show and accept.
#[utoipa::path(
    get,
    path = "/api/v1/enrol/eula",
    tag = "enrolment",
    operation_id = "current_eula",
    responses(
        (status = 200, description = "The current EULA, which an enrolling phone must accept.", body = EulaView),
        (status = 404, description = "No EULA has been published.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn current_eula(
    State(state): State<AppState>,
) -> Result<Json<EulaView>, ApiError> {
    read(&state, |store| store.current_eula().map_err(ApiError::from))
        .await?
        .map(|e| Json(e.into()))
        .ok_or_else(|| ApiError::not_found("no EULA has been published"))
}

// ---- enrolment codes ----

/// Longest lifetime an operator may give an enrolment code: 30 days.
const CODE_TTL_MAX_SECS: u64 = 30 * 24 * 3600;

/// Body of `POST /api/v1/subscribers/{user}/enrolments` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCode {
    /// How long the code stays valid, 1 second to 30 days (default: the server's setting).
    #[schema(minimum = 1, maximum = 2592000)]
    ttl_secs: Option<u64>,
}

/// A freshly issued enrolment code, shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct EnrolmentCode {
    /// The one-time code: 20 characters of Crockford base32 in groups of 5.
    #[schema(example = "ABCDE-FGHJK-MNPQR-STVWX")]
    code: String,
    /// The subscriber the code enrols a phone for.
    user: String,
    /// The code is valid until then, Unix milliseconds.
    expires_at_ms: i64,
    /// What to hand the user (R28): the public enrolment endpoint, the code and the server's
    /// TLS key fingerprint, which the phone pins
    /// (`trustring device enroll --zone Z 'trustring-enrol://…'`). Absent when the server
    /// has no enrolment endpoint (tests, embedding).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "trustring-enrol://enrol.example.com:8443?code=ABCDE-FGHJK-MNPQR-STVWX&fp=sha256:3f0c…"
    )]
    uri: Option<String>,
    /// `uri` as a QR code: one string per row of modules, top to bottom, `1` dark and `0`
    /// light, without the quiet zone (leave 4 light modules around it when drawing).
    #[serde(skip_serializing_if = "Option::is_none")]
    qr: Option<Vec<String>>,
}

/// Hash under which a code is stored: the code itself is shown once and never kept.
pub(crate) fn code_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(
        format!("trustring-enrolment:{normal}").as_bytes(),
    ))
}

/// A one-time code: 20 characters of Crockford base32 (100 bits), in groups of 5.
fn new_code() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut raw = [0u8; 20];
    rand::fill(&mut raw[..]);
    let chars: Vec<char> = raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// `POST /api/v1/subscribers/{user}/enrolments` -> 201 `{"code", "user", "expires_at_ms"}`.
/// The code is returned this once.
#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{user}/enrolments",
    tag = "subscribers",
    operation_id = "create_enrolment_code",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "The subscriber's user name.")),
    request_body(
        content = Option<NewCode>,
        description = "Optional; empty means the server's default lifetime.",
        content_type = "application/json",
    ),
    responses(
        (status = 201, description = "A one-time enrolment code, shown this once.", body = EnrolmentCode),
        (status = 400, description = "Bad user name, bad JSON or `ttl_secs` out of range.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 404, description = "No such subscriber.", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
        (status = 503, description = "Provisioning is disabled (no master key).", body = ErrorBody),
    )
)]
pub(crate) async fn create_code(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = path_user(user)?;
    let body = body?;
    let prov = provisioning(&state)?;
    // The body is optional: empty means the server's default lifetime.
    let body: NewCode = if body.iter().all(u8::is_ascii_whitespace) {
        NewCode::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("body: {e}")))?
    };
    let ttl = body.ttl_secs.map_or(prov.code_ttl, Duration::from_secs);
    if ttl.is_zero() || ttl > Duration::from_secs(CODE_TTL_MAX_SECS) {
        return Err(ApiError::invalid("ttl_secs: 1 second to 30 days"));
    }
    let code = new_code();
    let now = unix_now_ms();
    let enrolment = Enrolment {
        code_hash: code_hash(&code),
        user: user.clone(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        used_at_ms: None,
        device_id: None,
        zone_public_key: None,
        presented_at_ms: None,
    };
    let expires_at_ms = enrolment.expires_at_ms;
    let u = user.clone();
    read(&state, move |store| {
        if store.subscriber(&u)?.is_none() {
            return Err(ApiError::not_found(format!("subscriber {u} not found")));
        }
        Ok(store.create_enrolment(&enrolment)?)
    })
    .await?;
    tracing::info!(%user, "enrolment code issued");
    let uri = match (&state.tls.enrol_authority, state.tls.fingerprint) {
        (Some(authority), Some(fingerprint)) => Some(crate::EnrolUri {
            authority: authority.clone(),
            code: code.clone(),
            fingerprint,
        }),
        _ => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentCode {
            qr: uri.as_ref().and_then(crate::EnrolUri::qr_rows),
            uri: uri.map(|u| u.to_string()),
            code,
            user,
            expires_at_ms,
        }),
    )
        .into_response())
}

// ---- enrolment (public, authenticated by the code) ----

/// Body of `POST /api/v1/enrol`, sent by `trustring device enroll`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolBody {
    /// The one-time enrolment code (case and dashes do not matter).
    code: String,
    /// `x25519:…` (software zone) or `p256:…` (PKCS#11 zone).
    zone_public_key: String,
    /// The EULA version the user accepted.
    eula_version: String,
    /// Must be `true`: the user accepted that version.
    accept_eula: bool,
}

/// An [`EnrolBody`] whose fields passed the checks made before the store is asked.
struct ValidEnrol {
    body: EnrolBody,
    zone_key: ZonePublicKey,
    /// Follows the key type: X25519 is the software zone, P-256 the token.
    level: SecurityLevel,
    /// What the store knows the code by ([`code_hash`]).
    code_hash: String,
}

impl EnrolBody {
    /// The checks of `POST /api/v1/enrol` that need neither the store nor the keys, in the
    /// handler's order: the EULA accepted, a well-formed zone key.
    fn validate(self) -> Result<ValidEnrol, ApiError> {
        if !self.accept_eula {
            return Err(ApiError::invalid("accept_eula: the EULA must be accepted"));
        }
        let zone_key: ZonePublicKey = self
            .zone_public_key
            .parse()
            .map_err(|e| ApiError::invalid(format!("zone_public_key: {e}")))?;
        let level = match zone_key {
            ZonePublicKey::X25519(_) => SecurityLevel::Software,
            ZonePublicKey::P256(_) => SecurityLevel::Pkcs11,
        };
        Ok(ValidEnrol {
            code_hash: code_hash(&self.code),
            body: self,
            zone_key,
            level,
        })
    }
}

/// Runs the body of a `POST /api/v1/enrol` through what the endpoint does with it before
/// the store is asked: axum's JSON extractor's parsing (`deny_unknown_fields`, the types)
/// and [`EnrolBody`]'s checks. `Ok` with the zone's security level (`software` or
/// `pkcs11`), or the error code the endpoint would answer. For the fuzz target
/// (`fuzz/fuzz_targets/enrol.rs`); no server, no store.
#[doc(hidden)]
pub fn check_enrol_body(body: &[u8]) -> Result<&'static str, &'static str> {
    let checked = Json::<EnrolBody>::from_bytes(body)
        .map_err(ApiError::from)
        .and_then(|Json(body)| body.validate());
    match checked {
        Ok(valid) => Ok(match valid.level {
            SecurityLevel::Software => "software",
            SecurityLevel::Pkcs11 => "pkcs11",
        }),
        Err(e) => Err(e.code()),
    }
}

/// What the phone gets back: everything it needs, the secrets only sealed.
#[derive(Serialize, ToSchema)]
pub(crate) struct EnrolResponse {
    /// The new device's id (public; not the hidden identifier).
    device_id: String,
    /// The subscriber the phone now rings for.
    user: String,
    /// The subscriber's address of record, `sip:USER@DOMAIN`.
    aor: String,
    /// `software` (X25519 zone key) or `pkcs11` (P-256 zone key).
    #[schema(value_type = String, example = "software")]
    security_level: SecurityLevel,
    /// The phone's own SIP credentials.
    sip: SipCredentials,
    /// The device's bearer token for `/api/v1/device*` (status, on/off).
    token: String,
    /// The server's package-signing key, to pin.
    server_key: String,
    /// Identifier + license key, sealed to the zone (R7): `version`, `device_id`, `body`
    /// (by `scheme`) and `signature`; only the zone can open it.
    #[schema(value_type = Object)]
    package: zone::SealedPackage,
}

/// The phone's SIP digest credentials, returned this once.
#[derive(Serialize, ToSchema)]
struct SipCredentials {
    /// The SIP user name of the device.
    username: String,
    /// The SIP digest password.
    #[schema(format = Password)]
    password: String,
    /// The SIP domain (digest realm).
    domain: String,
}

fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::fill(&mut raw[..]);
    hex::encode(raw)
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(
        format!("trustring-device-token:{token}").as_bytes(),
    ))
}

/// Records a refused enrolment before the refusal is answered, so an operator who sees the
/// error can already find the event; unless `source` is over its rate of security events
/// (the request is unauthenticated: see the `shed` module), then the event is only counted.
async fn refused(state: &AppState, source: Option<IpAddr>, kind: &str, detail: String) {
    if !state.events.allow(source) {
        state.counters.event_shed();
        tracing::debug!(source = ?source, %kind, %detail, "security event shed: source over its rate");
        return;
    }
    let event = SecurityEvent {
        id: 0,
        at_ms: unix_now_ms(),
        kind: kind.to_owned(),
        user: None,
        device_id: None,
        call_id: None,
        detail,
    };
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || store.add_security_event(&event)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record a security event"),
        Err(e) => tracing::warn!(error = %e, "security event task failed"),
    }
}

/// `POST /api/v1/enrol` -> 201 [`EnrolResponse`] (the patent's EULA provisioning).
#[utoipa::path(
    post,
    path = "/api/v1/enrol",
    tag = "enrolment",
    operation_id = "enrol",
    request_body = EnrolBody,
    responses(
        (status = 201, description = "Enrolled: the identifier and license key sealed to the zone.", body = EnrolResponse),
        (status = 400, description = "Bad JSON, bad zone key, or the EULA not accepted.", body = ErrorBody),
        (status = 403, description = "An unknown, used or expired code (`code_invalid`: one \
            answer for the three, status and body alike, so the endpoint tells nobody which \
            codes exist; the security event `enrolment-refused` the admin API lists says \
            which), a code first presented with another zone key (`code_bound`), or a software \
            zone where PKCS#11 is required (`zone_not_allowed`).", body = ErrorBody),
        (status = 409, description = "The accepted EULA is not the current one (`eula_not_current`), or the pool is exhausted (`pool_exhausted`).", body = ErrorBody),
        (status = 413, description = "Body larger than the limit.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
        (status = 503, description = "Provisioning is disabled (no master key).", body = ErrorBody),
    )
)]
pub(crate) async fn enrol(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    body: Result<Json<EnrolBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let source = peer.map(|p| p.ip());
    let prov = provisioning(&state)?;
    let ValidEnrol {
        body,
        zone_key,
        level,
        code_hash: hash,
    } = body.validate()?;
    if prov.require_pkcs11 && level != SecurityLevel::Pkcs11 {
        refused(
            &state,
            source,
            "enrolment-refused",
            "software zone refused by policy".into(),
        )
        .await;
        return Err(ApiError::with_code(
            StatusCode::FORBIDDEN,
            "zone_not_allowed",
            "this server requires a PKCS#11 (hardware) trusted zone",
        ));
    }
    let device_id = format!("d-{}", &random_token(8)[..12]);
    let sip_user = format!("{}{device_id}", sip_core::proxy::DEVICE_USER_PREFIX);
    let sip_password = random_token(16);
    let token = random_token(32);
    let license = LicenseKey::generate();
    let license_key_enc = prov
        .master
        .current()
        .encrypt(&license, &device_id)
        .map_err(|e| ApiError::internal(&e))?;
    let realm: &str = &state.domain;
    let new = NewDevice {
        id: device_id.clone(),
        security_level: match level {
            SecurityLevel::Software => "software".into(),
            SecurityLevel::Pkcs11 => "pkcs11".into(),
        },
        // The canonical text form: the binding compares keys, not spellings.
        zone_public_key: zone_key.to_string(),
        eula_version: body.eula_version.clone(),
        eula_accepted_at_ms: unix_now_ms(),
        license_key_enc,
        sip_ha1_md5: ha1(Algorithm::Md5, &sip_user, realm, &sip_password),
        sip_ha1_sha256: ha1(Algorithm::Sha256, &sip_user, realm, &sip_password),
        token_hash: token_hash(&token),
    };
    let enrolled = write(&state, move |store| {
        // R28: the code's first presentation binds it to this zone key, committed on its own
        // so the binding holds even if this enrolment goes no further (pool exhausted, EULA
        // not current, the reply lost); another key presenting the code is refused.
        store
            .present_code(&hash, &new.zone_public_key, unix_now_ms())
            .map_err(enrol_error)?;
        let enrolled = store
            .enrol(&hash, unix_now_ms(), &new)
            .map_err(enrol_error)?;
        let id = enrolled.device.id.clone();
        Ok((enrolled, Change::DeviceChanged(id)))
    })
    .await;
    let enrolled = match enrolled {
        Ok(e) => e,
        Err(e) => {
            if e.status() != StatusCode::INTERNAL_SERVER_ERROR {
                refused(&state, source, "enrolment-refused", e.detail().to_owned()).await;
            }
            return Err(e);
        }
    };
    let package = zone::seal::seal_for_zone(
        &zone_key,
        &device_id,
        &enrolled.identifier,
        &license,
        &prov.signer,
    )
    .map_err(|e| ApiError::internal(&e))?;
    let user = enrolled.device.user.clone();
    tracing::info!(%user, device = %device_id, level = ?level, "device enrolled");
    let resp = EnrolResponse {
        aor: format!("sip:{user}@{}", state.domain),
        user,
        device_id,
        security_level: level,
        sip: SipCredentials {
            username: sip_user,
            password: sip_password,
            domain: state.domain.to_string(),
        },
        token,
        server_key: prov.signer.public().to_string(),
        package,
    };
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

/// The one answer to an unknown, used or expired code (R30: no enumeration): 403
/// `code_invalid` with this message, whichever it was; the security event says which.
pub(crate) const CODE_REFUSED: &str = "enrolment code unknown, already used or expired: ask \
     the operator for a new one";

fn enrol_error(e: EnrolError) -> ApiError {
    let refuse = |code, msg: &str| ApiError::with_code(StatusCode::FORBIDDEN, code, msg);
    let invalid_code =
        |detail: &str| refuse("code_invalid", CODE_REFUSED).with_detail(detail.to_owned());
    match e {
        EnrolError::CodeUnknown => invalid_code("unknown enrolment code"),
        EnrolError::CodeUsed => invalid_code("enrolment code already used"),
        EnrolError::CodeExpired => invalid_code("enrolment code expired"),
        EnrolError::CodeBound => refuse(
            "code_bound",
            "enrolment code already presented by another trusted zone: it is bound to that \
             zone's key",
        ),
        EnrolError::EulaNotCurrent { accepted, current } => ApiError::with_code(
            StatusCode::CONFLICT,
            "eula_not_current",
            match current {
                Some(c) => format!("accepted EULA {accepted} is not the current version {c}"),
                None => "no EULA has been published yet".to_owned(),
            },
        ),
        EnrolError::PoolExhausted => ApiError::with_code(
            StatusCode::CONFLICT,
            "pool_exhausted",
            "number identity pool exhausted: no free identifier",
        ),
        EnrolError::Store(e) => e.into(),
        other => ApiError::internal(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_with_leading_zeros_and_bounds() {
        let ids = expand(PoolLoad {
            range: Some("+0100..+0103".into()),
            identifiers: None,
        })
        .unwrap_or_default();
        assert_eq!(ids, ["+0100", "+0101", "+0102", "+0103"]);
        for bad in ["+1..+22", "+5..+1", "1..2", "+1", "+12..+1a"] {
            assert!(
                expand(PoolLoad {
                    range: Some(bad.into()),
                    identifiers: None
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    /// The schema's literal bound is the enforced one.
    #[test]
    fn code_ttl_schema_bound_matches_the_rule() {
        let doc = serde_json::to_value(&*crate::openapi::DOC).unwrap_or_default();
        let ttl = &doc["components"]["schemas"]["NewCode"]["properties"]["ttl_secs"];
        assert_eq!(ttl["maximum"].as_u64(), Some(CODE_TTL_MAX_SECS));
        assert_eq!(ttl["minimum"].as_u64(), Some(1));
    }

    #[test]
    fn codes_are_grouped_and_hash_ignores_case_and_dashes() {
        let c = new_code();
        assert_eq!(c.len(), 23);
        assert_eq!(code_hash(&c), code_hash(&c.to_lowercase().replace('-', "")));
        assert_ne!(code_hash(&c), code_hash(&new_code()));
    }
}
