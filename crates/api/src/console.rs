//! The web console (`GET /console`): a small single-page front end for operators, embedded in
//! the binary (`crates/api/console/`: plain HTML, CSS and one ES module; no framework, no
//! build step, nothing fetched from elsewhere at run time).
//!
//! Why it looks the way it does:
//!
//! - **The pages hold no data**, so their three paths ([`PATHS`]) need no token: the browser
//!   must be able to load the login form before it has one. The auth layer lets exactly these
//!   through, as a list of their own beside [`crate::PUBLIC_ROUTES`] (which lists the API's
//!   operations without a token, each in the OpenAPI document). Everything the
//!   console shows comes from the admin API, with the token the operator typed sent in the
//!   `Authorization` header. The token lives in the tab's `sessionStorage` only and never in a
//!   URL (no query-string login, no cookie, so no CSRF either: a cross-site page cannot make the
//!   browser attach the token).
//! - **Strict CSP.** `default-src 'self'` with no inline script or style and no `eval`, no
//!   framing (clickjacking), no `<base>`, no form submission: whatever a SIP peer puts in a
//!   header that the console shows cannot run as script. The page also builds every element
//!   with `textContent`, never `innerHTML`.
//! - **`Cache-Control: no-store`**, so a new server version is never paired with an old
//!   cached script, and `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.
//!
//! The routes are generic over the router's state: they need none.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE_CSS: &str = include_str!("../console/style.css");

/// The console's paths: no token needed (they hold no data). The auth layer checks this list
/// beside [`crate::PUBLIC_ROUTES`].
pub(crate) const PATHS: [&str; 3] = ["/console", "/console/app.js", "/console/style.css"];

/// `Content-Security-Policy` of every console response.
pub(crate) const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; \
                              frame-ancestors 'none'; object-src 'none'";

/// GET (and HEAD) `/console`, `/console/app.js`, `/console/style.css`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            PATHS[0],
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            PATHS[1],
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            PATHS[2],
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str, method: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let app: Router = routes::<()>();
        let res = app
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_three_files_with_strict_headers() {
        for (path, ctype, needle) in [
            ("/console", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/console/app.js",
                "text/javascript; charset=utf-8",
                "/api/v1/calls/stream",
            ),
            ("/console/style.css", "text/css; charset=utf-8", ":root"),
        ] {
            let (status, h, body) = get(path, "GET").await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(h[header::CONTENT_TYPE], ctype, "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.starts_with("default-src 'self';"), "{path}: {csp}");
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert!(body.contains(needle), "{path}");
            // HEAD works too (axum answers it from the GET handler).
            let (status, h, _) = get(path, "HEAD").await;
            assert_eq!(status, StatusCode::OK, "HEAD {path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "HEAD {path}");
        }
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_not_served_here() {
        assert_eq!(
            get("/console/", "GET").await.0,
            StatusCode::NOT_FOUND,
            "trailing slash"
        );
        assert_eq!(get("/console/x.js", "GET").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get("/console", "POST").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// The page loads nothing from elsewhere (no CDN, no font service) and only the files
    /// served here; every `src`/`href` of the HTML is one of [`PATHS`].
    #[test]
    fn the_page_references_only_its_own_files() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for bad in ["http://", "https://", "//cdn", "@import", "url("] {
                let hits: Vec<&str> = text
                    .lines()
                    // The SVG namespace is a name, not a download.
                    .filter(|l| l.contains(bad) && !l.contains("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{name} contains {bad}: {hits:?}");
            }
        }
        for attr in ["src=\"", "href=\""] {
            for part in INDEX_HTML.split(attr).skip(1) {
                let url = part.split('"').next().unwrap();
                assert!(PATHS.contains(&url), "index.html loads {url}");
            }
        }
        // No inline script or style (the CSP would block them anyway).
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style=\""));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(
            !APP_JS.contains("innerHTML"),
            "app.js must build DOM safely"
        );
        assert!(!APP_JS.contains("eval("));
    }

    /// The token never goes into a URL or a cookie: only into `Authorization` headers, and
    /// it is kept in sessionStorage (not localStorage).
    #[test]
    fn the_token_stays_out_of_urls() {
        assert!(!APP_JS.contains("?token"));
        assert!(!APP_JS.contains("&token"));
        assert!(!APP_JS.contains("document.cookie"));
        assert!(!APP_JS.contains("localStorage"));
        assert!(!APP_JS.contains("new EventSource"));
        assert!(APP_JS.contains("Authorization: `Bearer ${token}`"));
        // The token field has no `name`, so even a form submitted without the script cannot
        // carry it.
        let field = INDEX_HTML
            .split("<input id=\"token\"")
            .nth(1)
            .and_then(|rest| rest.split('>').next())
            .unwrap();
        assert!(!field.contains("name="), "{field}");
    }

    /// As wired into the admin router: the three files need no token; nothing else gains
    /// from it (a trailing slash, another file, the API) and a wrong method is the API's 405.
    #[tokio::test]
    async fn the_admin_router_serves_the_console_without_a_token_and_nothing_more() {
        let store = std::sync::Arc::new(store::SqliteStore::open_in_memory().unwrap());
        let config = crate::ApiConfig {
            domain: "localhost".into(),
            token: "t0ken".into(),
        };
        let app = crate::router(store, config, std::sync::Arc::new(|_| {}));
        let send = |method: &'static str, path: &'static str| {
            let app = app.clone();
            async move {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap();
                app.oneshot(req).await.unwrap().status()
            }
        };
        for path in PATHS {
            assert_eq!(send("GET", path).await, StatusCode::OK, "{path}");
            assert_eq!(
                send("POST", path).await,
                StatusCode::METHOD_NOT_ALLOWED,
                "{path}"
            );
        }
        for path in ["/console/", "/console/x", "/api/v1/subscribers", "/"] {
            assert_eq!(send("GET", path).await, StatusCode::UNAUTHORIZED, "{path}");
        }
    }

    /// The revoke reasons offered are exactly the ones the API accepts.
    #[test]
    fn revoke_reasons_match_the_api() {
        let line = APP_JS
            .lines()
            .find(|l| l.starts_with("const REVOKE_REASONS"))
            .unwrap();
        let offered: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        assert_eq!(offered, crate::REVOKE_REASONS);
    }
}
