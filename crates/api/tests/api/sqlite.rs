//! The same flow against the real [`SqliteStore`] on disk: create, read back, profile,
//! registrations, delete (which drops the registrations too).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde_json::json;
use store::{Registration, SqliteStore, Store};

use crate::{App, TOKEN};

#[tokio::test]
async fn full_flow_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite");
    let app = App::over(Arc::new(store), TOKEN);

    let reply = app.create("alice").await;
    assert_eq!(reply.json["aor"], "sip:alice@example.com");
    let body = r#"{"user":"alice","password":"other-passw0rd","enterprise":"acme"}"#;
    let reply = app.call("POST", "/api/v1/subscribers", Some(body)).await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");

    app.stored_with_password("alice");

    let profile =
        r#"{"ring_timeout_secs":25,"ring_delays":[{"contact_contains":"5082","delay_ms":1500}]}"#;
    let reply = app
        .call("PUT", "/api/v1/subscribers/alice/profile", Some(profile))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let reply = app.call("GET", "/api/v1/subscribers/alice", None).await;
    assert_eq!(
        reply.json["profile"],
        json!({"ring_timeout_secs": 25, "ring_delays": [{"contact_contains": "5082", "delay_ms": 1500}]})
    );

    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    for (contact, expires_at_ms) in [
        ("sip:alice@192.0.2.20:5060", now + 120_000),
        ("sip:alice@192.0.2.21:5060", now - 5_000),
    ] {
        let reg = Registration {
            user: "alice".into(),
            contact: contact.into(),
            transport: "TCP".into(),
            source: "192.0.2.20:40000".into(),
            local: "192.0.2.1:5060".into(),
            call_id: "call-1".into(),
            cseq: 7,
            expires_at_ms,
            q: 1000,
            device_id: None,
        };
        app.store.put_registration(&reg).expect("put registration");
    }
    let reply = app
        .call("GET", "/api/v1/subscribers/alice/registrations", None)
        .await;
    let regs = reply.json.as_array().expect("array");
    assert_eq!(regs.len(), 1, "{}", reply.json);
    assert_eq!(regs[0]["contact"], "sip:alice@192.0.2.20:5060");
    assert_eq!(regs[0]["transport"], "TCP");
    let secs = regs[0]["expires_in_secs"].as_i64().expect("secs");
    assert!((110..=120).contains(&secs), "{secs}");

    let reply = app.call("DELETE", "/api/v1/subscribers/alice", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        app.store
            .registrations(Some("alice"), 0)
            .expect("read")
            .is_empty()
    );
    let reply = app
        .call("GET", "/api/v1/subscribers/alice/registrations", None)
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.changes().len(), 3, "create, profile, delete");
}
