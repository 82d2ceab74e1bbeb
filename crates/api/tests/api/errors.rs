//! Every error, axum's own included, has one JSON shape and a clear 4xx (SPEC R21).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use trustring_api::BODY_LIMIT;

use crate::{App, TOKEN, request_with};

fn post(content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let authorization = format!("Bearer {TOKEN}");
    request_with(
        "POST",
        "/api/v1/subscribers",
        Some(&authorization),
        content_type,
        body,
    )
}

#[tokio::test]
async fn bad_json_is_400_with_a_message() {
    let app = App::new();
    let cases = [
        ("{not json", "Failed to parse"),
        (r#"{"user":"alice","password":"pw""#, "EOF"),
        (
            r#"{"user":"alice","password":"pw","enterprise":"acme","admin":true}"#,
            "unknown field",
        ),
        (r#"{"user":"alice","password":"pw"}"#, "missing field"),
        (
            r#"{"user":"alice","password":"pw","enterprise":7}"#,
            "invalid type",
        ),
        (
            r#"{"user":"a","password":"p","enterprise":"e","ring_timeout_secs":-1}"#,
            "invalid",
        ),
        ("", "EOF"),
    ];
    for (body, hint) in cases {
        let reply = app.send(post(Some("application/json"), body)).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
        assert!(message.contains(hint), "{body}: {message}");
    }
    assert!(app.changes().is_empty());
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = App::new();
    let body = r#"{"user":"alice","password":"pw","enterprise":"acme"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let reply = app.send(post(content_type, body)).await;
        let message =
            reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        assert!(message.contains("application/json"), "{message}");
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = App::new();
    let padding = "x".repeat(BODY_LIMIT);
    let body = format!(r#"{{"user":"alice","password":"{padding}","enterprise":"acme"}}"#);
    let reply = app.send(post(Some("application/json"), body)).await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let app = App::new();
    for path in [
        "/",
        "/api/v1/nope",
        "/api/v2/subscribers",
        "/api/v1/subscribers/alice/x",
    ] {
        let reply = app.call("GET", path, None).await;
        reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    for (method, path) in [
        ("DELETE", "/api/v1/subscribers"),
        ("PATCH", "/api/v1/subscribers/alice"),
        ("POST", "/api/v1/subscribers/alice/profile"),
        ("POST", "/healthz"),
    ] {
        let reply = app.call(method, path, None).await;
        reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
}

#[tokio::test]
async fn store_failure_is_a_generic_500() {
    let app = App::new();
    app.create("alice").await;
    app.store.break_it();
    let body = r#"{"user":"bob","password":"bobs-passw0rd","enterprise":"acme"}"#;
    let replies = [
        app.call("GET", "/api/v1/subscribers", None).await,
        app.call("GET", "/api/v1/subscribers/alice", None).await,
        app.call("POST", "/api/v1/subscribers", Some(body)).await,
        app.call("DELETE", "/api/v1/subscribers/alice", None).await,
        app.call("GET", "/api/v1/subscribers/alice/registrations", None)
            .await,
    ];
    for reply in replies {
        let message = reply.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
        assert_eq!(message, "internal server error");
        assert!(!reply.json.to_string().contains("secret"));
    }
    assert_eq!(
        app.changes().len(),
        1,
        "no change reported for failed operations"
    );
}
