//! Bearer-token authentication (SPEC R21, SECURITY.md threat 10).
//!
//! Why it looks the way it does:
//!
//! - **Deny by default.** The check is a layer over the whole router, fallbacks included, and
//!   lets a request through without a token only if its path is in [`crate::PUBLIC_ROUTES`].
//!   A route added later is protected without anyone remembering to protect it, and an
//!   unauthenticated client learns nothing by probing (unknown paths get 401 too). The route
//!   table itself is no secret: the public OpenAPI document lists it.
//! - **Constant time.** A plain `==` on strings stops at the first differing byte, so the
//!   response time tells an attacker how many leading bytes of a guess are right, and the token
//!   can be recovered byte by byte. We compare with `subtle`, and we compare SHA-256 digests of
//!   the presented and the configured token rather than the tokens themselves, so the time does
//!   not depend on the token's length either (`subtle` returns early on a length mismatch).
//! - **Fail closed.** An empty configured token matches nothing: every protected route answers
//!   401 rather than being open to `Authorization: Bearer ` (an empty token).
//! - The token is never logged.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub(crate) struct ExpectedToken {
    /// `None` when no token was configured: nothing matches.
    digest: Option<[u8; 32]>,
}

impl ExpectedToken {
    /// Digests `token`; an empty token disables access to every protected route.
    pub(crate) fn new(token: &str) -> Self {
        if token.is_empty() {
            tracing::warn!("admin API token is empty: every protected route will answer 401");
            return Self { digest: None };
        }
        Self {
            digest: Some(Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// True if `presented` is the configured token, compared in constant time.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(expected.ct_eq(&presented))
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (RFC 6750 §2.1; the scheme name is
/// case-insensitive, RFC 7235 §2.1). `None` if absent, not ASCII or another scheme.
fn bearer_token(req: &Request) -> Option<&str> {
    bearer_in(req.headers())
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive, RFC 7235).
pub(crate) fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// Middleware: public paths pass; everything else needs the bearer token, or gets 401 with
/// `WWW-Authenticate: Bearer`.
pub(crate) async fn require_token(
    State(expected): State<ExpectedToken>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    // The console's static files hold no data: the page must load before it has a token.
    if crate::PUBLIC_ROUTES.contains(&path) || crate::console::PATHS.contains(&path) {
        return next.run(req).await;
    }
    match bearer_token(&req) {
        Some(token) if expected.matches(token) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn with_auth(value: &str) -> Request {
        let mut req = Request::new(Body::empty());
        if let Ok(value) = value.parse() {
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        req
    }

    #[test]
    fn matches_only_the_configured_token() {
        let expected = ExpectedToken::new("t0ken");
        assert!(expected.matches("t0ken"));
        assert!(!expected.matches("t0ke"));
        assert!(!expected.matches("t0ken "));
        assert!(!expected.matches(""));
    }

    #[test]
    fn empty_configured_token_matches_nothing() {
        let expected = ExpectedToken::new("");
        assert!(!expected.matches(""));
        assert!(!expected.matches("anything"));
    }

    #[test]
    fn parses_bearer_scheme_case_insensitively() {
        assert_eq!(bearer_token(&with_auth("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("Basic abc")), None);
        assert_eq!(bearer_token(&with_auth("Bearer ")), None);
        assert_eq!(bearer_token(&with_auth("Bearer")), None);
        assert_eq!(bearer_token(&Request::new(Body::empty())), None);
    }
}
