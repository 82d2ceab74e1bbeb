//! Subscriber routes: create, list, get, profile, delete, registrations, and the `Change`s.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, header};
use serde_json::json;
use store::{Registration, RingDelay, RoutingProfile, Store};
use trustring_api::Change;

use crate::{App, PASSWORD};

#[tokio::test]
async fn create_returns_201_with_aor_and_no_secrets() {
    let app = App::new();
    let body = format!(
        r#"{{"user":"alice","password":"{PASSWORD}","enterprise":"acme","ring_timeout_secs":45}}"#
    );
    let reply = app.call("POST", "/api/v1/subscribers", Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(
        reply.headers.get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/api/v1/subscribers/alice"[..])
    );
    let created_at = reply.json["created_at"].as_i64().expect("created_at");
    assert!(created_at > 1_600_000_000);
    assert_eq!(
        reply.json,
        json!({
            "user": "alice",
            "aor": "sip:alice@example.com",
            "enterprise": "acme",
            "profile": {"ring_timeout_secs": 45, "ring_delays": []},
            "created_at": created_at,
        })
    );
    assert!(!reply.json.to_string().contains(PASSWORD));

    // Stored: both HA1s with realm = the domain, no password anywhere.
    let stored = app.stored_with_password("alice");
    assert_eq!(app.changes(), [Change::SubscriberUpserted(stored)]);
}

#[tokio::test]
async fn default_profile_when_no_timeout_given() {
    let app = App::new();
    let reply = app.create("bob").await;
    assert_eq!(
        reply.json["profile"],
        json!({"ring_timeout_secs": 30, "ring_delays": []})
    );
}

#[tokio::test]
async fn duplicate_is_409_and_changes_nothing() {
    let app = App::new();
    app.create("alice").await;
    let body = r#"{"user":"alice","password":"other-passw0rd","enterprise":"evil"}"#;
    let reply = app.call("POST", "/api/v1/subscribers", Some(body)).await;
    let message = reply.assert_error(StatusCode::CONFLICT, "conflict");
    assert!(message.contains("alice"), "{message}");
    assert_eq!(app.changes().len(), 1);
    let stored = app
        .store
        .subscriber("alice")
        .expect("store")
        .expect("alice");
    assert_eq!(stored.enterprise, "acme");
}

#[tokio::test]
async fn invalid_fields_are_400_naming_the_field() {
    let app = App::new();
    let cases = [
        (
            r#"{"user":"al ice","password":"long-enough-pw","enterprise":"acme"}"#,
            "user",
        ),
        (
            r#"{"user":"","password":"long-enough-pw","enterprise":"acme"}"#,
            "user",
        ),
        (
            r#"{"user":"..","password":"long-enough-pw","enterprise":"acme"}"#,
            "user",
        ),
        (
            r#"{"user":"alice","password":"long-enough-pw","enterprise":""}"#,
            "enterprise",
        ),
        (
            r#"{"user":"alice","password":"long-enough-pw","enterprise":"acme","ring_timeout_secs":0}"#,
            "ring_timeout_secs",
        ),
        (
            r#"{"user":"alice","password":"long-enough-pw","enterprise":"acme","ring_timeout_secs":601}"#,
            "ring_timeout_secs",
        ),
    ];
    for (body, field) in cases {
        let reply = app.call("POST", "/api/v1/subscribers", Some(body)).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let long_user = format!(
        r#"{{"user":"{}","password":"long-enough-pw","enterprise":"e"}}"#,
        "a".repeat(65)
    );
    let reply = app
        .call("POST", "/api/v1/subscribers", Some(&long_user))
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(app.changes().is_empty());
    assert!(app.store.subscribers().expect("store").is_empty());
}

/// R30: a subscriber password shorter than 12 characters is refused with 400
/// `weak_password` and a message that says the rule; 12 characters is enough; nothing is
/// stored or reported for a refused one. The OpenAPI document states the minimum.
#[tokio::test]
async fn short_passwords_are_refused_as_weak() {
    let app = App::new();
    for password in ["", "s3cret", "alicepw", "elevenchars"] {
        let body = format!(r#"{{"user":"alice","password":"{password}","enterprise":"acme"}}"#);
        let reply = app.call("POST", "/api/v1/subscribers", Some(&body)).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "weak_password");
        assert!(
            message.starts_with("password") && message.contains("at least 12 characters"),
            "{password:?}: {message}"
        );
    }
    assert!(app.changes().is_empty());
    assert!(app.store.subscribers().expect("store").is_empty());
    let body = r#"{"user":"alice","password":"twelve-chars","enterprise":"acme"}"#;
    let reply = app.call("POST", "/api/v1/subscribers", Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);

    let doc = app.call("GET", "/api/v1/openapi.json", None).await;
    let password = &doc.json["components"]["schemas"]["CreateSubscriber"]["properties"]["password"];
    assert_eq!(password["minLength"], 12, "{password}");
    assert!(
        password["description"]
            .as_str()
            .is_some_and(|d| d.contains("weak_password")),
        "{password}"
    );
    let create = &doc.json["paths"]["/api/v1/subscribers"]["post"]["responses"]["400"];
    assert!(
        create["description"]
            .as_str()
            .is_some_and(|d| d.contains("weak_password")),
        "{create}"
    );
}

#[tokio::test]
async fn get_and_list() {
    let app = App::new();
    let reply = app.call("GET", "/api/v1/subscribers/alice", None).await;
    let message = reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(message, "subscriber alice not found");

    app.create("carol").await;
    app.create("alice").await;
    let reply = app.call("GET", "/api/v1/subscribers/alice", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["aor"], "sip:alice@example.com");
    assert!(reply.json.get("ha1_md5").is_none() && reply.json.get("ha1_sha256").is_none());

    let reply = app.call("GET", "/api/v1/subscribers", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let users: Vec<&str> = reply
        .json
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["user"].as_str())
        .collect();
    assert_eq!(users, ["alice", "carol"]);

    let reply = app.call("GET", "/api/v1/subscribers/al%20ice", None).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn delete_is_204_then_404() {
    let app = App::new();
    app.create("alice").await;
    let reply = app.call("DELETE", "/api/v1/subscribers/alice", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.json, serde_json::Value::Null);
    let reply = app.call("DELETE", "/api/v1/subscribers/alice", None).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    let reply = app.call("GET", "/api/v1/subscribers/alice", None).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");

    let changes = app.changes();
    assert_eq!(changes.len(), 2);
    assert!(matches!(&changes[0], Change::SubscriberUpserted(sub) if sub.user == "alice"));
    assert_eq!(changes[1], Change::SubscriberDeleted("alice".into()));
}

#[tokio::test]
async fn put_profile_replaces_and_notifies() {
    let app = App::new();
    app.create("alice").await;
    let body =
        r#"{"ring_timeout_secs":20,"ring_delays":[{"contact_contains":"5082","delay_ms":2000}]}"#;
    let reply = app
        .call("PUT", "/api/v1/subscribers/alice/profile", Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        reply.json["profile"],
        json!({"ring_timeout_secs": 20, "ring_delays": [{"contact_contains": "5082", "delay_ms": 2000}]})
    );
    let expected = RoutingProfile {
        ring_timeout_secs: 20,
        ring_delays: vec![RingDelay {
            contact_contains: "5082".into(),
            delay_ms: 2000,
        }],
    };
    let stored = app
        .store
        .subscriber("alice")
        .expect("store")
        .expect("alice");
    assert_eq!(stored.profile, expected);
    assert_eq!(
        app.changes().last(),
        Some(&Change::SubscriberUpserted(stored))
    );

    // Replace means replace: no ring_delays -> none.
    let reply = app
        .call(
            "PUT",
            "/api/v1/subscribers/alice/profile",
            Some(r#"{"ring_timeout_secs":30}"#),
        )
        .await;
    assert_eq!(reply.json["profile"]["ring_delays"], json!([]));
}

#[tokio::test]
async fn put_profile_rejects_bad_input_and_unknown_users() {
    let app = App::new();
    app.create("alice").await;
    let rule = r#"{"contact_contains":"x","delay_ms":1}"#;
    let seventeen = vec![rule; 17].join(",");
    let cases = [
        r#"{"ring_timeout_secs":0}"#.to_owned(),
        r#"{"ring_timeout_secs":30,"ring_delays":[{"contact_contains":"a","delay_ms":60001}]}"#
            .to_owned(),
        r#"{"ring_timeout_secs":30,"ring_delays":[{"contact_contains":"","delay_ms":1}]}"#
            .to_owned(),
        format!(r#"{{"ring_timeout_secs":30,"ring_delays":[{seventeen}]}}"#),
    ];
    for body in &cases {
        let reply = app
            .call("PUT", "/api/v1/subscribers/alice/profile", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let reply = app
        .call(
            "PUT",
            "/api/v1/subscribers/alice/profile",
            Some(r#"{"ring_timeout_secs":30,"x":1}"#),
        )
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let reply = app
        .call(
            "PUT",
            "/api/v1/subscribers/nobody/profile",
            Some(r#"{"ring_timeout_secs":30}"#),
        )
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.changes().len(), 1, "only the creation");
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

fn registration(user: &str, contact: &str, expires_at_ms: i64, q: u16) -> Registration {
    Registration {
        user: user.into(),
        contact: contact.into(),
        transport: "UDP".into(),
        source: "192.0.2.10:5060".into(),
        local: "192.0.2.1:5060".into(),
        call_id: format!("{contact}-call"),
        cseq: 1,
        expires_at_ms,
        q,
        device_id: None,
    }
}

#[tokio::test]
async fn registrations_lists_only_live_ones() {
    let app = App::new();
    app.create("alice").await;
    app.create("bob").await;
    let now = now_ms();
    for reg in [
        registration("alice", "sip:alice@192.0.2.10:5060", now + 60_000, 500),
        registration("alice", "sip:alice@192.0.2.11:5060", now + 3_600_000, 1000),
        registration("alice", "sip:alice@192.0.2.12:5060", now - 1_000, 1000),
        registration("bob", "sip:bob@192.0.2.13:5060", now + 60_000, 1000),
    ] {
        app.store.put_registration(&reg).expect("put");
    }
    let reply = app
        .call("GET", "/api/v1/subscribers/alice/registrations", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let regs = reply.json.as_array().expect("array");
    assert_eq!(regs.len(), 2, "{}", reply.json);
    assert_eq!(regs[0]["contact"], "sip:alice@192.0.2.11:5060");
    assert_eq!(regs[0]["q"], json!(1.0));
    let secs = regs[0]["expires_in_secs"].as_i64().expect("secs");
    assert!((3590..=3600).contains(&secs), "{secs}");
    assert_eq!(regs[1]["contact"], "sip:alice@192.0.2.10:5060");
    assert_eq!(regs[1]["q"], json!(0.5));
    let secs = regs[1]["expires_in_secs"].as_i64().expect("secs");
    assert!((50..=60).contains(&secs), "{secs}");
    let keys: Vec<&String> = regs[1].as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["contact", "expires_in_secs", "q", "source", "transport"]
    );
    assert_eq!(regs[1]["transport"], "UDP");
    assert_eq!(regs[1]["source"], "192.0.2.10:5060");

    let reply = app
        .call("GET", "/api/v1/subscribers/carol/registrations", None)
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.create("carol").await;
    let reply = app
        .call("GET", "/api/v1/subscribers/carol/registrations", None)
        .await;
    assert_eq!(reply.json, json!([]));
}
