//! The two surfaces `trustring serve` runs (issue #11): the operator's API on the admin
//! listener and the phone's routes alone on the public enrolment listener, over one store.
//! A route of one surface is 404 on the other, with or without a token; a new code comes with
//! its pinned enrolment URI and QR code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use store::SqliteStore;
use trustring_api::{
    ApiConfig, ApiOptions, Change, ENROL_ROUTES, EnrolUri, PUBLIC_ROUTES, Provisioning, Surface,
    TlsInfo, admin_and_enrol_routers,
};
use zone::master::{MasterKey, MasterKeyRing};

use crate::provisioning::{EULA, x25519};
use crate::{App, DOMAIN, TOKEN};

const AUTHORITY: &str = "enrol.example.com:8443";

fn fingerprint() -> tls::Fingerprint {
    tls::Fingerprint([0x5a; 32])
}

/// The admin and the enrolment surface over one SQLite store, as `serve` wires them
/// (`admin_and_enrol_routers`: one state, one write order).
fn surfaces(dir: &tempfile::TempDir) -> (App<SqliteStore>, App<SqliteStore>) {
    let store = Arc::new(SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite"));
    let prov = Arc::new(Provisioning {
        master: Arc::new(MasterKeyRing::new(MasterKey::generate())),
        signer: zone::ServerSigningKey::generate(),
        code_ttl: Duration::from_secs(600),
        require_pkcs11: false,
    });
    let options = ApiOptions::default()
        .provisioning(Arc::clone(&prov))
        .tls(TlsInfo {
            fingerprint: Some(fingerprint()),
            enrol_authority: Some(AUTHORITY.into()),
            admin_https: false,
        });
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&changes);
    let on_change: Arc<dyn Fn(Change) + Send + Sync> =
        Arc::new(move |c| sink.lock().expect("changes lock").push(c));
    let (admin, enrol) = admin_and_enrol_routers(
        Arc::clone(&store) as Arc<dyn store::Store>,
        ApiConfig {
            domain: DOMAIN.into(),
            token: TOKEN.into(),
        },
        options,
        on_change,
    );
    let app = |router| App {
        router,
        store: Arc::clone(&store),
        changes: Arc::clone(&changes),
    };
    (app(admin), app(enrol))
}

/// `Surface::Enrol` alone, through `router_with_options`, serves the same as the split.
#[tokio::test]
async fn a_single_surface_router() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite"));
    let enrol = App::over_options(store, TOKEN, ApiOptions::default().surface(Surface::Enrol));
    enrol
        .call("GET", "/api/v1/subscribers", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    enrol
        .call_as(None, "GET", "/api/v1/enrol/eula", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    enrol
        .call_as(None, "DELETE", "/api/v1/enrol/eula", None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn admin_and_enrolment_surfaces_are_disjoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin, enrol) = surfaces(&dir);
    admin.create("alice").await;
    for (path, body) in [
        (
            "/api/v1/eulas",
            json!({"version": EULA, "text": "Be nice."}),
        ),
        (
            "/api/v1/pools/numbers",
            json!({"range": "+15550100000..+15550100001"}),
        ),
    ] {
        let reply = admin.call("POST", path, Some(&body.to_string())).await;
        assert!(reply.status.is_success(), "{path}: {}", reply.json);
    }

    // The code comes with the URI the phone pins, and its QR code.
    let reply = admin
        .call("POST", "/api/v1/subscribers/alice/enrolments", None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let code = reply.json["code"].as_str().expect("code").to_owned();
    let uri: EnrolUri = reply.json["uri"]
        .as_str()
        .expect("uri")
        .parse()
        .expect("a valid enrolment URI");
    assert_eq!(uri.code, code);
    assert_eq!(uri.authority, AUTHORITY);
    assert_eq!(uri.fingerprint, fingerprint());
    let qr = reply.json["qr"].as_array().expect("qr rows");
    assert_eq!(
        qr.iter()
            .map(|r| r.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>(),
        uri.qr_rows().expect("qr")
    );
    let info = admin.call("GET", "/api/v1/server", None).await;
    assert_eq!(
        info.json,
        json!({
            "domain": DOMAIN,
            "version": env!("CARGO_PKG_VERSION"),
            "tls_fingerprint": fingerprint().to_string(),
            "enrol_url": format!("https://{AUTHORITY}"),
            "admin_https": false,
        })
    );

    // The phone's routes are not on the admin surface, with or without the admin token.
    for path in ENROL_ROUTES {
        assert!(PUBLIC_ROUTES.contains(path));
        for method in ["GET", "POST", "PUT"] {
            for bearer in [None, Some(TOKEN)] {
                let reply = admin.call_as(bearer, method, path, Some("{}")).await;
                reply.assert_error(StatusCode::NOT_FOUND, "not_found");
            }
        }
    }

    // The enrolment surface serves the phone and nothing else: no 401 to probe with, no
    // console, no document, no health check.
    for path in [
        "/api/v1/subscribers",
        "/api/v1/subscribers/alice",
        "/api/v1/server",
        "/api/v1/devices",
        "/api/v1/openapi.json",
        "/healthz",
        "/metrics",
        "/console",
        "/console/app.js",
        "/nope",
    ] {
        for bearer in [None, Some(TOKEN)] {
            let reply = enrol.call_as(bearer, "GET", path, None).await;
            reply.assert_error(StatusCode::NOT_FOUND, "not_found");
        }
    }
    let reply = enrol
        .call_as(
            Some(TOKEN),
            "POST",
            "/api/v1/subscribers",
            Some(r#"{"user":"mallory","password":"x","enterprise":"e"}"#),
        )
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");

    let eula = enrol.call_as(None, "GET", "/api/v1/enrol/eula", None).await;
    assert_eq!(eula.status, StatusCode::OK, "{}", eula.json);
    let (_, key) = x25519();
    let body = json!({"code": code, "zone_public_key": key.to_string(), "eula_version": EULA, "accept_eula": true});
    let enrolled = enrol
        .call_as(None, "POST", "/api/v1/enrol", Some(&body.to_string()))
        .await;
    assert_eq!(enrolled.status, StatusCode::CREATED, "{}", enrolled.json);
    let token = enrolled.json["token"].as_str().expect("token").to_owned();
    let own = enrol
        .call_as(Some(&token), "GET", "/api/v1/device", None)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.json);
    assert_eq!(own.json["status"], "active");
    // The device token opens nothing on the admin surface.
    let reply = admin
        .call_as(Some(&token), "GET", "/api/v1/devices", None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let devices = admin.call("GET", "/api/v1/devices", None).await;
    assert_eq!(devices.json.as_array().map(Vec::len), Some(1));
    assert_eq!(devices.json[0]["id"], enrolled.json["device_id"]);
    // Both surfaces report to one `on_change`: the enrolment, once.
    assert_eq!(admin.changes(), enrol.changes(), "one shared change log");
    assert!(
        admin.changes().contains(&Change::DeviceChanged(
            own.json["id"].as_str().unwrap_or("?").into()
        )),
        "{:?}",
        admin.changes()
    );
}

/// Without TLS information (tests, embedding) a code has no URI, and the server reports no
/// fingerprint.
#[tokio::test]
async fn without_tls_there_is_no_uri() {
    let env = crate::provisioning::env();
    env.ready(&["alice"], json!({"identifiers": ["+15550100000"]}))
        .await;
    let reply = env
        .app
        .call("POST", "/api/v1/subscribers/alice/enrolments", None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.json.get("uri").is_none() && reply.json.get("qr").is_none());
    let info = env.app.call("GET", "/api/v1/server", None).await;
    assert_eq!(info.json["tls_fingerprint"], Value::Null);
    assert_eq!(info.json["enrol_url"], Value::Null);
}
