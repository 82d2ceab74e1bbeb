//! Admin API tests: the router driven in-process with `tower::ServiceExt::oneshot`, over an
//! in-memory [`store::Store`] (`mem_store`).

mod auth;
mod cdrs;
mod errors;
mod mem_store;
mod metrics;
mod openapi;
mod ordering;
mod provisioning;
mod sqlite;
mod subscribers;
mod surfaces;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::Value;
use sip_core::auth::{Algorithm, ha1};
use store::{Store, Subscriber};
use tower::ServiceExt;
use trustring_api::{
    ApiConfig, ApiOptions, Change, Provisioning, router, router_with, router_with_options,
};

use mem_store::MemStore;

pub(crate) const TOKEN: &str = "correct-horse-battery-staple";
pub(crate) const DOMAIN: &str = "example.com";
/// The password of the subscribers [`App::create`] makes.
pub(crate) const PASSWORD: &str = "s3cret-passw0rd";

/// A router over a store (by default a fresh in-memory one), recording every `Change`.
pub(crate) struct App<S = MemStore> {
    pub(crate) router: Router,
    pub(crate) store: Arc<S>,
    pub(crate) changes: Arc<Mutex<Vec<Change>>>,
}

impl App {
    pub(crate) fn new() -> Self {
        Self::with_token(TOKEN)
    }

    pub(crate) fn with_token(token: &str) -> Self {
        Self::over(Arc::new(MemStore::default()), token)
    }
}

impl<S: Store> App<S> {
    pub(crate) fn over(store: Arc<S>, token: &str) -> Self {
        Self::over_with(store, token, None)
    }

    /// [`App::over`] with phone provisioning enabled by `provisioning` (`None`: disabled, like
    /// `trustring_api::router`).
    pub(crate) fn over_with(
        store: Arc<S>,
        token: &str,
        provisioning: Option<Arc<Provisioning>>,
    ) -> Self {
        Self::build(store, token, Setup::Plain(provisioning))
    }

    /// [`App::over`] with the optional parts in `options` (`router_with_options`).
    pub(crate) fn over_options(store: Arc<S>, token: &str, options: ApiOptions) -> Self {
        Self::build(store, token, Setup::Options(options))
    }

    fn build(store: Arc<S>, token: &str, setup: Setup) -> Self {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&changes);
        let config = ApiConfig {
            domain: DOMAIN.into(),
            token: token.into(),
        };
        let dyn_store = Arc::clone(&store) as Arc<dyn Store>;
        let on_change: Arc<dyn Fn(Change) + Send + Sync> =
            Arc::new(move |change| sink.lock().expect("changes lock").push(change));
        // Without provisioning, the plain `router` (what a server without a master key runs).
        let router = match setup {
            Setup::Plain(Some(p)) => router_with(dyn_store, config, Some(p), on_change),
            Setup::Plain(None) => router(dyn_store, config, on_change),
            Setup::Options(options) => router_with_options(dyn_store, config, options, on_change),
        };
        Self {
            router,
            store,
            changes,
        }
    }

    pub(crate) fn changes(&self) -> Vec<Change> {
        self.changes.lock().expect("changes lock").clone()
    }

    /// Sends a request with the right token; JSON bodies get `Content-Type: application/json`.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call_as(Some(TOKEN), method, path, body).await
    }

    /// [`App::call`] with `Authorization: Bearer BEARER`, or no `Authorization` at all.
    pub(crate) async fn call_as(
        &self,
        bearer: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let authorization = bearer.map(|b| format!("Bearer {b}"));
        let content_type = body.map(|_| "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let req = request_with(method, path, authorization.as_deref(), content_type, body);
        self.send(req).await
    }

    /// Sends any request as is.
    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let response = match self.router.clone().oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("response body");
        let is_text =
            header_str(&headers, header::CONTENT_TYPE).is_some_and(|v| v.starts_with("text/plain"));
        if is_text {
            return Reply {
                status,
                headers,
                json: Value::Null,
                text: String::from_utf8(bytes.to_vec()).expect("UTF-8 text"),
            };
        }
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "response body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            json,
            text: String::new(),
        }
    }

    /// Creates `user` (password [`PASSWORD`], enterprise `acme`) and checks the 201.
    pub(crate) async fn create(&self, user: &str) -> Reply {
        let body = format!(r#"{{"user":"{user}","password":"{PASSWORD}","enterprise":"acme"}}"#);
        let reply = self.call("POST", "/api/v1/subscribers", Some(&body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
        reply
    }
}

impl<S: Store> App<S> {
    /// `user` as stored, asserting that it holds both HA1s of [`PASSWORD`] (realm: the
    /// domain) and nowhere the password itself.
    pub(crate) fn stored_with_password(&self, user: &str) -> Subscriber {
        let stored = self
            .store
            .subscriber(user)
            .expect("store")
            .expect("subscriber stored");
        assert_eq!(stored.ha1_md5, ha1(Algorithm::Md5, user, DOMAIN, PASSWORD));
        assert_eq!(
            stored.ha1_sha256,
            ha1(Algorithm::Sha256, user, DOMAIN, PASSWORD)
        );
        assert!(!format!("{stored:?}").contains(PASSWORD));
        stored
    }
}

/// A request `method` `path` with a raw `Authorization` value and a `Content-Type`, each
/// only if given.
pub(crate) fn request_with(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    if let Some(value) = content_type {
        req = req.header(header::CONTENT_TYPE, value);
    }
    req.body(body.into()).expect("request")
}

/// How an [`App`]'s router is built.
enum Setup {
    /// `router` (no provisioning) or `router_with` (provisioning).
    Plain(Option<Arc<Provisioning>>),
    /// `router_with_options`.
    Options(ApiOptions),
}

/// A response, body parsed as JSON (`Null` if empty or `text/plain`).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) json: Value,
    /// The body of a `text/plain` response (`GET /metrics`); empty otherwise.
    pub(crate) text: String,
}

/// Header `name` of `headers` as text, if it is there and is text.
fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Reply {
    /// Header `name` as text, if it is there and is text.
    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        header_str(&self.headers, name)
    }

    /// Asserts the error shape `{"error":{"code","message"}}` with `application/json`, the
    /// given status and code, and a non-empty message; returns the message.
    pub(crate) fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(
            self.header(header::CONTENT_TYPE),
            Some("application/json"),
            "error body content type"
        );
        let error = self.json.get("error").expect("error object");
        let keys: Vec<&String> = error
            .as_object()
            .expect("error is an object")
            .keys()
            .collect();
        assert_eq!(keys, ["code", "message"], "{}", self.json);
        assert_eq!(error["code"], code, "{}", self.json);
        let message = error["message"]
            .as_str()
            .expect("message string")
            .to_owned();
        assert!(!message.is_empty());
        message
    }
}
