//! Phone provisioning through the admin API (SPEC R3–R10) against the real router and a real
//! [`SqliteStore`] on disk: the number identity pool, EULA versions, enrolment codes, the
//! public enrolment (sealed package opened by a real software zone), its refusals and their
//! security events, the R3 race through the API, the hidden identifier (R5), the operator's
//! device routes (revoke R9, on/off R10) and the phone's own endpoints.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use store::{SqliteStore, Store};
use tempfile::TempDir;
use trustring_api::{ApiOptions, Change, EventRate, Provisioning, Rates};
use zone::master::{MasterKey, MasterKeyRing};
use zone::seal::{open_hpke, x25519_generate};
use zone::software::{KdfParams, SoftwareZone};
use zone::{SealedPackage, SecurityLevel, ServerPublicKey, TrustedZone, ZonePublicKey};

use crate::{App, DOMAIN, Reply, TOKEN, request_with};

const RANGE_150: &str = "+15550100000..+15550100149";
pub(crate) const EULA: &str = "1.0";
const REFUSED: &str = "enrolment-refused";
/// The billing rates of [`env`]'s router.
pub(crate) const RATES: Rates = Rates {
    voip_per_min: 0.02,
    pstn_per_min: 0.10,
};

/// An [`App`] over a temp-file SQLite store with provisioning enabled.
pub(crate) struct Env {
    pub(crate) app: App<SqliteStore>,
    prov: Arc<Provisioning>,
    _dir: TempDir,
}

fn provisioning(require_pkcs11: bool) -> Arc<Provisioning> {
    Arc::new(Provisioning {
        master: Arc::new(MasterKeyRing::new(MasterKey::generate())),
        signer: zone::ServerSigningKey::generate(),
        code_ttl: Duration::from_secs(600),
        require_pkcs11,
    })
}

fn sqlite(dir: &TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite"))
}

fn env_with(require_pkcs11: bool) -> Env {
    env_rate(require_pkcs11, EventRate::default())
}

/// [`env_with`] with security events of refused enrolments limited to `rate`.
fn env_rate(require_pkcs11: bool, rate: EventRate) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let prov = provisioning(require_pkcs11);
    // Every optional part on, so the document's every route answers in full.
    let options = ApiOptions::default()
        .provisioning(Arc::clone(&prov))
        .rates(RATES)
        .metrics(|| async { crate::metrics::SAMPLE.to_owned() })
        .event_rate(rate);
    let app = App::over_options(sqlite(&dir), TOKEN, options);
    Env {
        app,
        prov,
        _dir: dir,
    }
}

pub(crate) fn env() -> Env {
    env_with(false)
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// The identifiers `+15550100000 ..= +15550100000 + n - 1`.
fn range_ids(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("+{}", 15_550_100_000 + i)).collect()
}

impl Env {
    /// Subscribers, the current EULA and `pool` loaded.
    pub(crate) async fn ready(&self, users: &[&str], pool: Value) {
        for user in users {
            self.app.create(user).await;
        }
        self.publish(EULA).await;
        let reply = self
            .app
            .call("POST", "/api/v1/pools/numbers", Some(&pool.to_string()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }

    async fn publish(&self, version: &str) -> Reply {
        let body = json!({"version": version, "text": format!("EULA {version}: be nice.")});
        let reply = self
            .app
            .call("POST", "/api/v1/eulas", Some(&body.to_string()))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
        reply
    }

    async fn code_with(&self, user: &str, body: Option<&str>) -> Reply {
        self.app
            .call(
                "POST",
                &format!("/api/v1/subscribers/{user}/enrolments"),
                body,
            )
            .await
    }

    /// A fresh enrolment code for `user`.
    pub(crate) async fn code(&self, user: &str) -> String {
        let reply = self.code_with(user, None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
        reply.json["code"].as_str().expect("code").to_owned()
    }

    /// `POST /api/v1/enrol` without any token, the phone's way.
    async fn enrol_raw(&self, body: &Value) -> Reply {
        self.app
            .call_as(None, "POST", "/api/v1/enrol", Some(&body.to_string()))
            .await
    }

    pub(crate) async fn enrol(&self, code: &str, key: &ZonePublicKey) -> Reply {
        self.enrol_raw(&enrol_body(code, key, EULA, true)).await
    }

    async fn counts(&self) -> Value {
        let reply = self.app.call("GET", "/api/v1/pools/numbers", None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        reply.json
    }

    async fn events(&self) -> Vec<Value> {
        let reply = self
            .app
            .call("GET", "/api/v1/security-events?limit=1000", None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        reply.json["events"]
            .as_array()
            .expect("events array")
            .clone()
    }

    /// Waits until exactly `n` `enrolment-refused` events are visible (the API records them
    /// off the request path) and returns them.
    pub(crate) async fn refusals(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let refused: Vec<Value> = self
                .events()
                .await
                .into_iter()
                .filter(|e| e["kind"] == REFUSED)
                .collect();
            assert!(refused.len() <= n, "too many refusals: {refused:?}");
            if refused.len() == n {
                return refused;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} refusal events, want {n}: {refused:?}",
                refused.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn device_changes(&self) -> Vec<String> {
        self.app
            .changes()
            .into_iter()
            .filter_map(|c| match c {
                Change::DeviceChanged(id) => Some(id),
                _ => None,
            })
            .collect()
    }
}

fn enrol_body(code: &str, key: &ZonePublicKey, eula: &str, accept: bool) -> Value {
    json!({
        "code": code,
        "zone_public_key": key.to_string(),
        "eula_version": eula,
        "accept_eula": accept,
    })
}

/// A software zone's key pair without the file around it: (secret, public key).
pub(crate) fn x25519() -> (impl Deref<Target = [u8; 32]>, ZonePublicKey) {
    let (secret, public) = x25519_generate();
    (secret, ZonePublicKey::X25519(public))
}

/// The P-256 base point (public key of the secret 1): a valid `p256:` zone key.
fn p256_key() -> ZonePublicKey {
    let mut sec1 = vec![0x04];
    sec1.extend(unhex(
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
    ));
    sec1.extend(unhex(
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ));
    ZonePublicKey::p256_from_sec1(&sec1).expect("P-256 base point")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Base64 of `b` in the standard or URL-safe alphabet, without padding.
fn b64(b: &[u8], url: bool) -> String {
    let alphabet: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Every text form a hidden value could leak in: identifiers with and without `+`, license
/// keys as hex and base64 (both alphabets).
struct Hidden(Vec<String>);

impl Hidden {
    fn new(identifiers: &[String]) -> Self {
        let mut v = Vec::new();
        for id in identifiers {
            v.push(id.clone());
            v.push(id.trim_start_matches('+').to_owned());
        }
        Self(v)
    }

    fn add_key(&mut self, key: &[u8; 32]) {
        self.0.push(hex(key));
        self.0.push(hex(key).to_uppercase());
        self.0.push(b64(key, false));
        self.0.push(b64(key, true));
    }

    /// Panics if `body` (as the JSON text a client receives) contains a hidden value.
    fn assert_absent(&self, what: &str, body: &Value) {
        let text = body.to_string();
        for (i, secret) in self.0.iter().enumerate() {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: leaks hidden value #{i} (R5/R4): {text}"
            );
        }
    }
}

/// The license keys of every stored device, decrypted with the master key.
fn license_keys(env: &Env) -> Vec<[u8; 32]> {
    env.app
        .store
        .devices(None)
        .expect("devices")
        .iter()
        .map(|d| {
            *env.prov
                .master
                .decrypt(&d.license_key_enc, &d.id)
                .expect("decrypt license key")
                .expose()
        })
        .collect()
}

fn package_of(reply: &Reply) -> SealedPackage {
    serde_json::from_value(reply.json["package"].clone()).expect("sealed package")
}

fn server_key_of(reply: &Reply) -> ServerPublicKey {
    reply.json["server_key"]
        .as_str()
        .expect("server_key")
        .parse()
        .expect("server key text")
}

fn without_package(json: &Value) -> Value {
    let mut json = json.clone();
    json.as_object_mut().expect("object").remove("package");
    json
}

#[test]
fn leak_scanner_sees_every_form() {
    // RFC 4648 §10 vectors, unpadded.
    for (raw, want) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
    ] {
        assert_eq!(b64(raw.as_bytes(), false), want);
    }
    assert_eq!(b64(&[0xfb, 0xff], false), "+/8");
    assert_eq!(b64(&[0xfb, 0xff], true), "-_8");
    let mut hidden = Hidden::new(&range_ids(1));
    let key = [0xab; 32];
    hidden.add_key(&key);
    for leak in [
        json!({"x": "+15550100000"}),
        json!({"x": "tel:15550100000"}),
        json!({"k": hex(&key)}),
        json!({"k": b64(&key, true)}),
    ] {
        let caught = std::panic::catch_unwind(|| hidden.assert_absent("probe", &leak));
        assert!(caught.is_err(), "missed {leak}");
    }
    hidden.assert_absent("clean", &json!({"x": "+15550100001"}));
}

// ---- number identity pool (R3) -----------------------------------------------------------

#[tokio::test]
async fn pool_loads_ranges_and_lists_and_rejects_bad_input() {
    let env = env();
    let app = &env.app;
    let empty = json!({"free": 0, "assigned": 0, "quarantined": 0});
    assert_eq!(env.counts().await, empty);

    let load = |body: Value| async move {
        app.call("POST", "/api/v1/pools/numbers", Some(&body.to_string()))
            .await
    };
    let reply = load(json!({ "range": RANGE_150 })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        reply.json,
        json!({"added": 150, "free": 150, "assigned": 0, "quarantined": 0})
    );
    // Every identifier of the range, and no other, is in the pool: a re-load adds nothing.
    let reply = load(json!({ "identifiers": range_ids(150) })).await;
    assert_eq!(reply.json["added"], 0, "{}", reply.json);

    // The same range again: nothing added.
    let reply = load(json!({ "range": RANGE_150 })).await;
    assert_eq!(
        reply.json,
        json!({"added": 0, "free": 150, "assigned": 0, "quarantined": 0})
    );
    // Overlapping range with spaces around the ends: only the new ones.
    let reply = load(json!({"range": " +15550100148 .. +15550100151 "})).await;
    assert_eq!(reply.json["added"], 2, "{}", reply.json);
    // A list, with one already present and one repeated.
    let reply = load(json!({"identifiers": ["+15550100000", "+4930123456", "+4930123456"]})).await;
    assert_eq!(
        reply.json,
        json!({"added": 1, "free": 153, "assigned": 0, "quarantined": 0})
    );
    // Leading zeros are kept, width from the ends.
    let reply = load(json!({"range": "+0100..+0102"})).await;
    assert_eq!(reply.json["added"], 3, "{}", reply.json);
    let reply = load(json!({"identifiers": ["+0101"]})).await;
    assert_eq!(reply.json["added"], 0, "{}", reply.json);

    let bad = [
        (
            json!({"range": "+1555010000..+15550100149"}),
            "invalid_request",
        ),
        (
            json!({"range": "+15550100149..+15550100000"}),
            "invalid_request",
        ),
        (
            json!({"range": "15550100000..15550100149"}),
            "invalid_request",
        ),
        (
            json!({"range": "+1555010000a..+1555010000b"}),
            "invalid_request",
        ),
        (json!({"range": "+1..+2"}), "invalid_request"),
        (
            json!({"range": "+1234567890123456..+1234567890123457"}),
            "invalid_request",
        ),
        (json!({"range": "+15550100000"}), "invalid_request"),
        (
            json!({"range": "+15550100000-+15550100001"}),
            "invalid_request",
        ),
        (json!({"range": "+10000000..+19999999"}), "invalid_request"),
        (
            json!({"identifiers": ["+15550100000", "15550100001"]}),
            "invalid_request",
        ),
        (json!({"identifiers": ["+1555 0100"]}), "invalid_request"),
        (json!({"identifiers": []}), "invalid_request"),
        (
            json!({"range": RANGE_150, "identifiers": ["+15550100000"]}),
            "invalid_request",
        ),
        (json!({}), "invalid_request"),
        (
            json!({"range": null, "identifiers": null}),
            "invalid_request",
        ),
        (json!({"range": RANGE_150, "state": "free"}), "invalid_json"),
        (json!({"range": 15_550_100_000_u64}), "invalid_json"),
        (json!({"identifiers": "+15550100000"}), "invalid_json"),
    ];
    for (body, code) in bad {
        let reply = load(body.clone()).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, code);
        assert!(!message.is_empty(), "{body}");
    }
    let reply = app
        .call("POST", "/api/v1/pools/numbers", Some("{\"range\":"))
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    // The list error names the bad entry.
    let reply = load(json!({"identifiers": ["+15550100000", "bad"]})).await;
    let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(message.contains("identifiers[1]"), "{message}");

    // Nothing of the refused loads was stored.
    assert_eq!(
        env.counts().await,
        json!({"free": 156, "assigned": 0, "quarantined": 0})
    );
    let counts = app.store.pool_counts().expect("counts");
    assert_eq!((counts.free, counts.assigned), (156, 0));

    // Admin only.
    let reply = app
        .call_as(
            None,
            "POST",
            "/api/v1/pools/numbers",
            Some(&json!({"range": "+15550300000..+15550300001"}).to_string()),
        )
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = app
        .call_as(Some("wrong"), "GET", "/api/v1/pools/numbers", None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Release with nothing quarantined; bad release bodies.
    let reply = app
        .call(
            "POST",
            "/api/v1/pools/numbers/release",
            Some(r#"{"min_age_secs":0}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json, json!({"released": 0}));
    for body in [
        r#"{}"#,
        r#"{"min_age_secs":-1}"#,
        r#"{"min_age_secs":"1"}"#,
        r#"{"min_age_secs":1,"all":true}"#,
    ] {
        let reply = app
            .call("POST", "/api/v1/pools/numbers/release", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    assert!(
        app.changes().is_empty(),
        "pool loads are not SIP-core changes"
    );
}

// ---- EULA versions (R4) ------------------------------------------------------------------

#[tokio::test]
async fn eulas_publish_list_and_current() {
    let env = env();
    let app = &env.app;
    // Nothing published yet: the public endpoint says so, without a token.
    let reply = app.call_as(None, "GET", "/api/v1/enrol/eula", None).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    let reply = app.call("GET", "/api/v1/eulas", None).await;
    assert_eq!(reply.json, json!([]));

    let before = now_ms();
    let reply = app
        .call(
            "POST",
            "/api/v1/eulas",
            Some(r#"{"version":"1.0","text":"Be nice."}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.json["version"], "1.0");
    assert_eq!(reply.json["text"], "Be nice.");
    let at = reply.json["published_at_ms"]
        .as_i64()
        .expect("published_at_ms");
    assert!((before..=now_ms()).contains(&at), "{at}");
    let first = reply.json.clone();

    // Same version again, even with another text: 409.
    let reply = app
        .call(
            "POST",
            "/api/v1/eulas",
            Some(r#"{"version":"1.0","text":"Be very nice."}"#),
        )
        .await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");
    // The version is trimmed before the check.
    let reply = app
        .call(
            "POST",
            "/api/v1/eulas",
            Some(r#"{"version":" 1.0 ","text":"again"}"#),
        )
        .await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");

    let long = "v".repeat(65);
    for version in ["", "   ", "1 0", "v/1", "ünï", "1.0;drop", long.as_str()] {
        let body = json!({"version": version, "text": "t"});
        let reply = app
            .call("POST", "/api/v1/eulas", Some(&body.to_string()))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let ok64 = "v".repeat(64);
    for (body, code) in [
        (json!({"version": "2.0", "text": "  "}), "invalid_request"),
        (json!({"version": "2.0"}), "invalid_json"),
        (
            json!({"version": "2.0", "text": "t", "current": true}),
            "invalid_json",
        ),
        (json!({"version": 2, "text": "t"}), "invalid_json"),
    ] {
        let reply = app
            .call("POST", "/api/v1/eulas", Some(&body.to_string()))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, code);
    }
    // Admin only.
    let reply = app
        .call_as(
            None,
            "POST",
            "/api/v1/eulas",
            Some(r#"{"version":"9","text":"t"}"#),
        )
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = app.call_as(None, "GET", "/api/v1/eulas", None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // The first one is current; the public endpoint returns it whole.
    let reply = app.call_as(None, "GET", "/api/v1/enrol/eula", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json, first);

    // A newer version becomes current.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let second = env.publish("2.0-beta_1").await.json;
    let third = env.publish(&ok64).await.json;
    let reply = app.call_as(None, "GET", "/api/v1/enrol/eula", None).await;
    assert_eq!(reply.json, third);
    let reply = app.call("GET", "/api/v1/eulas", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!([first, second, third]));
    assert!(app.changes().is_empty());
}

// ---- enrolment codes ---------------------------------------------------------------------

#[tokio::test]
async fn enrolment_codes_are_issued_once_per_request() {
    let env = env();
    let app = &env.app;
    app.create("alice").await;

    let before = now_ms();
    let reply = env.code_with("alice", None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let code = reply.json["code"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 23, "{code}");
    assert!(
        code.split('-')
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_alphanumeric())),
        "{code}"
    );
    assert_eq!(reply.json["user"], "alice");
    let expires = reply.json["expires_at_ms"].as_i64().expect("expires_at_ms");
    assert!(
        (before + 600_000..=now_ms() + 600_000).contains(&expires),
        "default ttl: {expires}"
    );
    let keys: BTreeSet<&str> = reply
        .json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["code", "expires_at_ms", "user"]));

    // Explicit ttl; whitespace-only body means the default.
    let before = now_ms();
    let reply = env.code_with("alice", Some(r#"{"ttl_secs":60}"#)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let expires = reply.json["expires_at_ms"].as_i64().expect("expires_at_ms");
    assert!((before + 60_000..=now_ms() + 60_000).contains(&expires));
    let reply = env.code_with("alice", Some(" \n")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let reply = env.code_with("alice", Some("{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let reply = env
        .code_with(
            "alice",
            Some(&json!({"ttl_secs": 30 * 24 * 3600}).to_string()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);

    // Every code is different, and the store keeps only hashes.
    let stored = app.store.enrolments("alice").expect("enrolments");
    assert_eq!(stored.len(), 5);
    let hashes: BTreeSet<&str> = stored.iter().map(|e| e.code_hash.as_str()).collect();
    assert_eq!(hashes.len(), 5);
    let bare = code.replace('-', "");
    for e in &stored {
        assert!(!e.code_hash.contains(&code) && !e.code_hash.contains(&bare));
        assert_eq!(e.used_at_ms, None);
    }

    for body in [
        r#"{"ttl_secs":0}"#,
        r#"{"ttl_secs":2592001}"#,
        r#"{"ttl_secs":-5}"#,
        r#"{"ttl_secs":"60"}"#,
        r#"{"ttl":60}"#,
        r#"{"ttl_secs":60"#,
        "null",
    ] {
        let reply = env.code_with("alice", Some(body)).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let reply = env.code_with("bob", None).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    let reply = env.code_with("Not%20A%20User", None).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let reply = app
        .call_as(None, "POST", "/api/v1/subscribers/alice/enrolments", None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(app.store.enrolments("alice").expect("enrolments").len(), 5);
}

#[tokio::test]
async fn without_provisioning_codes_and_enrolment_are_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `App::over` builds the plain `trustring_api::router`.
    let app = App::over(sqlite(&dir), TOKEN);
    app.create("alice").await;
    let reply = app
        .call("POST", "/api/v1/subscribers/alice/enrolments", None)
        .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "provisioning_disabled");
    let (_, key) = x25519();
    let body = enrol_body("AAAAA-BBBBB-CCCCC-DDDDD", &key, EULA, true);
    let reply = app
        .call_as(None, "POST", "/api/v1/enrol", Some(&body.to_string()))
        .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "provisioning_disabled");
    assert!(
        app.store
            .enrolments("alice")
            .expect("enrolments")
            .is_empty()
    );
}

// ---- enrolment ---------------------------------------------------------------------------

#[tokio::test]
async fn enrol_into_a_software_zone() {
    let env = env();
    env.ready(&["alice"], json!({"range": "+15550100000..+15550100002"}))
        .await;
    let app = &env.app;
    // The phone reads the EULA to show, without a token.
    let reply = app.call_as(None, "GET", "/api/v1/enrol/eula", None).await;
    assert_eq!(reply.json["version"], EULA);

    let zone_dir = tempfile::tempdir().expect("zone dir");
    let cheap = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    let mut zone =
        SoftwareZone::init_with_params(zone_dir.path(), "zone passphrase", cheap).expect("zone");
    assert!(!zone.status().expect("status").enrolled);
    let key = zone.public_key().expect("public key");

    let code = env.code("alice").await;
    let before = now_ms();
    let reply = env.enrol(&code, &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let json = &reply.json;
    let id = json["device_id"].as_str().expect("device_id").to_owned();
    assert!(
        id.starts_with("d-") && zone::wire::is_valid_device_id(&id),
        "{id}"
    );
    assert_eq!(json["user"], "alice");
    assert_eq!(json["aor"], format!("sip:alice@{DOMAIN}"));
    assert_eq!(json["security_level"], "software");
    assert_eq!(json["sip"]["username"], format!("~{id}"));
    assert_eq!(json["sip"]["domain"], DOMAIN);
    let password = json["sip"]["password"].as_str().expect("password");
    assert!(password.len() >= 16, "{password}");
    let token = json["token"].as_str().expect("token").to_owned();
    assert!(token.len() >= 32, "{token}");
    assert!(
        json["server_key"]
            .as_str()
            .expect("server_key")
            .starts_with("ed25519:")
    );
    let server_key = server_key_of(&reply);
    assert_eq!(server_key, env.prov.signer.public());
    let keys: BTreeSet<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "aor",
            "device_id",
            "package",
            "security_level",
            "server_key",
            "sip",
            "token",
            "user"
        ])
    );

    // The package is for this device, signed by the server, and installs into the zone.
    let package = package_of(&reply);
    assert_eq!(package.device_id, id);
    assert_eq!(package.body.scheme(), zone::seal::SCHEME_HPKE);
    package.verify(&server_key).expect("package signature");
    zone.install(&package, &server_key).expect("install");
    let status = zone.status().expect("status");
    assert!(status.enrolled);
    assert_eq!(status.device_id.as_deref(), Some(id.as_str()));
    assert_eq!(status.security_level, SecurityLevel::Software);
    assert!(status.service_on);
    assert_eq!(status.revoked, None);
    // It stays sealed at rest: reopened with the passphrase, still enrolled.
    drop(zone);
    let zone = SoftwareZone::open(zone_dir.path(), "zone passphrase").expect("reopen");
    assert!(zone.status().expect("status").enrolled);

    // The store: the lowest free identifier, the EULA acceptance, the hashed secrets.
    let device = app.store.device(&id).expect("device").expect("stored");
    assert_eq!(device.identifier, "+15550100000");
    assert_eq!(device.user, "alice");
    assert_eq!(device.security_level, "software");
    assert_eq!(device.zone_public_key, key.to_string());
    assert_eq!(device.eula_version, EULA);
    assert!((before..=now_ms()).contains(&device.eula_accepted_at_ms));
    assert!(device.service_on && device.revoked.is_none());
    assert_ne!(device.token_hash, token);
    assert!(!device.license_key_enc.is_empty());
    let stored = app.store.enrolments("alice").expect("enrolments");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].device_id.as_deref(), Some(id.as_str()));
    assert!(stored[0].used_at_ms.is_some());
    assert_eq!(
        env.counts().await,
        json!({"free": 2, "assigned": 1, "quarantined": 0})
    );
    assert_eq!(
        app.changes().last(),
        Some(&Change::DeviceChanged(id.clone()))
    );
    assert_eq!(env.device_changes(), std::slice::from_ref(&id));

    // A second phone, opened by hand with the zone's X25519 secret: the identifier and the
    // license key inside are the ones the server stored. The code is accepted in any case,
    // without dashes.
    let (secret, key2) = x25519();
    let code = env.code("alice").await.to_lowercase().replace('-', "");
    let reply = env.enrol(&code, &key2).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let id2 = reply.json["device_id"]
        .as_str()
        .expect("device_id")
        .to_owned();
    assert_ne!(id2, id);
    assert_ne!(reply.json["token"], json!(token));
    let package = package_of(&reply);
    package.verify(&server_key).expect("signature");
    let (license, identifier) = open_hpke(&package, &secret, &key2).expect("open");
    let device2 = app.store.device(&id2).expect("device").expect("stored");
    assert_eq!(identifier.as_str(), "+15550100001");
    assert_eq!(device2.identifier, *identifier);
    let stored_key = env
        .prov
        .master
        .decrypt(&device2.license_key_enc, &id2)
        .expect("decrypt");
    assert_eq!(stored_key.expose(), license.expose());
    // The package is sealed to that zone only.
    let (other_secret, other_key) = x25519();
    assert!(open_hpke(&package, &other_secret, &other_key).is_err());
    // Neither response shows the identifier or the license key outside the package.
    let mut hidden = Hidden::new(&range_ids(3));
    hidden.add_key(license.expose());
    hidden.assert_absent("enrol response", &without_package(&reply.json));
    assert!(!reply.json["package"].to_string().contains("+1555"));
    assert_eq!(env.device_changes(), [id, id2]);
    assert!(env.events().await.is_empty(), "no refusal recorded");
}

#[tokio::test]
async fn pkcs11_policy_refuses_software_zones_only() {
    let env = env_with(true);
    env.ready(&["alice"], json!({"range": "+15550100000..+15550100001"}))
        .await;
    let code = env.code("alice").await;
    let (_, soft) = x25519();
    let reply = env.enrol(&code, &soft).await;
    reply.assert_error(StatusCode::FORBIDDEN, "zone_not_allowed");
    let refused = env.refusals(1).await;
    assert_eq!(refused[0]["detail"], "software zone refused by policy");
    assert!(env.device_changes().is_empty());
    // The code was not consumed: a P-256 (PKCS#11) zone enrols with it.
    let reply = env.enrol(&code, &p256_key()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.json["security_level"], "pkcs11");
    let package = package_of(&reply);
    assert_eq!(package.body.scheme(), zone::seal::SCHEME_ECDH);
    package
        .verify(&server_key_of(&reply))
        .expect("package signature");
    let id = reply.json["device_id"].as_str().expect("id");
    let reply = env
        .app
        .call("GET", &format!("/api/v1/devices/{id}"), None)
        .await;
    assert_eq!(reply.json["security_level"], "pkcs11");
    assert_eq!(
        env.counts().await,
        json!({"free": 1, "assigned": 1, "quarantined": 0})
    );
}

#[tokio::test]
async fn enrolment_refusals_are_clear_and_recorded() {
    let env = env();
    env.ready(&["alice"], json!({"identifiers": ["+15550100000"]}))
        .await;
    let app = &env.app;
    let (_, key) = x25519();
    let mut refusals = 0;

    // Unknown code.
    let unknown = env.enrol("AAAAA-BBBBB-CCCCC-DDDDD", &key).await;
    let message = unknown.assert_error(StatusCode::FORBIDDEN, "code_invalid");
    assert!(
        message.contains("unknown, already used or expired"),
        "{message}"
    );
    refusals += 1;
    env.refusals(refusals).await;

    let code = env.code("alice").await;
    // EULA not accepted: a bad request, before anything is looked at.
    let reply = env.enrol_raw(&enrol_body(&code, &key, EULA, false)).await;
    let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(message.contains("accept_eula"), "{message}");
    // Malformed requests: 400, no code consumed.
    for body in [
        json!({"code": code, "zone_public_key": "x25519:AAAA", "eula_version": EULA, "accept_eula": true}),
        json!({"code": code, "zone_public_key": "rsa:AAAA", "eula_version": EULA, "accept_eula": true}),
    ] {
        let reply = env.enrol_raw(&body).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for body in [
        json!({"code": code, "zone_public_key": key.to_string(), "eula_version": EULA}),
        json!({"code": code, "zone_public_key": key.to_string(), "eula_version": EULA, "accept_eula": "yes"}),
        json!({"code": code, "zone_public_key": key.to_string(), "eula_version": EULA, "accept_eula": true, "user": "bob"}),
    ] {
        let reply = env.enrol_raw(&body).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }

    // Another EULA version than the current one: 409, the code stays usable.
    let reply = env.enrol_raw(&enrol_body(&code, &key, "0.9", true)).await;
    let message = reply.assert_error(StatusCode::CONFLICT, "eula_not_current");
    assert!(
        message.contains(EULA),
        "names the current version: {message}"
    );
    refusals += 1;
    env.refusals(refusals).await;

    // Success, then the same code again.
    let reply = env.enrol(&code, &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let id = reply.json["device_id"].as_str().expect("id").to_owned();
    // Used: the very answer an unknown code gets (no enumeration, R30).
    let reply = env.enrol(&code, &key).await;
    reply.assert_error(StatusCode::FORBIDDEN, "code_invalid");
    assert_eq!(reply.json, unknown.json, "used answers like unknown");
    refusals += 1;
    env.refusals(refusals).await;

    // The pool (one identifier) is used up; the code is not consumed by the refusal.
    let code2 = env.code("alice").await;
    let (_, key2) = x25519();
    let reply = env.enrol(&code2, &key2).await;
    reply.assert_error(StatusCode::CONFLICT, "pool_exhausted");
    refusals += 1;
    env.refusals(refusals).await;
    let used = app.store.enrolments("alice").expect("enrolments");
    assert_eq!(used.iter().filter(|e| e.used_at_ms.is_some()).count(), 1);

    // An expired code.
    let reply = env.code_with("alice", Some(r#"{"ttl_secs":1}"#)).await;
    let short = reply.json["code"].as_str().expect("code").to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = env.enrol(&short, &key2).await;
    reply.assert_error(StatusCode::FORBIDDEN, "code_invalid");
    assert_eq!(reply.json, unknown.json, "expired answers like unknown");
    refusals += 1;

    // Each refusal: one event, in order, with a human detail and no user/device/call.
    let events = env.refusals(refusals).await;
    let details: Vec<&str> = events
        .iter()
        .map(|e| e["detail"].as_str().expect("detail"))
        .collect();
    assert_eq!(details[0], "unknown enrolment code");
    assert!(details[1].contains("0.9"), "{}", details[1]);
    assert_eq!(details[2], "enrolment code already used");
    assert!(details[3].contains("exhausted"), "{}", details[3]);
    assert_eq!(details[4], "enrolment code expired");
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for e in &events {
        assert!(e["at_ms"].as_i64().expect("at_ms") > 0);
        assert_eq!(e["call_id"], Value::Null);
    }
    // Paging by cursor: after the first id, two at a time; `next` is the cursor of the
    // following page, `null` on the last.
    let page = |query: String| async move {
        let reply = app
            .call("GET", &format!("/api/v1/security-events{query}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.json);
        reply.json
    };
    let first = page(format!("?after={}&limit=2", ids[0])).await;
    assert_eq!(
        first,
        json!({"events": [events[1], events[2]], "next": ids[2]})
    );
    let second = page(format!("?after={}&limit=2", ids[2])).await;
    assert_eq!(
        second,
        json!({"events": [events[3], events[4]], "next": null})
    );
    // Newest first, the same cursor going back.
    let newest = page("?order=desc&limit=3".into()).await;
    assert_eq!(
        newest,
        json!({"events": [events[4], events[3], events[2]], "next": ids[2]})
    );
    let older = page(format!("?order=desc&limit=3&after={}", ids[2])).await;
    assert_eq!(
        older,
        json!({"events": [events[1], events[0]], "next": null})
    );
    // limit is clamped to 1..=1000; the default page holds them all.
    let one = page("?limit=0".into()).await;
    assert_eq!(one, json!({"events": [events[0]], "next": ids[0]}));
    let all = page("?limit=5000".into()).await;
    assert_eq!(all["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(all, page(String::new()).await);
    for query in [
        "?limit=x",
        "?after=abc",
        "?after=-1",
        "?order=up",
        "?since=1",
        "?kind=enrolment-refused",
    ] {
        let reply = app
            .call("GET", &format!("/api/v1/security-events{query}"), None)
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let reply = app
        .call_as(None, "GET", "/api/v1/security-events", None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Only the one success was reported to the SIP core; nothing hidden in the events.
    assert_eq!(env.device_changes(), [id]);
    let mut hidden = Hidden::new(&["+15550100000".to_owned()]);
    for k in license_keys(&env) {
        hidden.add_key(&k);
    }
    hidden.assert_absent("security events", &Value::Array(env.events().await));
    assert_eq!(
        env.counts().await,
        json!({"free": 0, "assigned": 1, "quarantined": 0})
    );
}

/// R28 / threat 12: a code is bound to the first zone key that presents it, even when that
/// first enrolment never finishes; another key gets `code_bound` (recorded), and the first
/// key can still finish.
#[tokio::test]
async fn a_code_is_bound_to_the_first_zone_key_that_presents_it() {
    let env = env();
    env.ready(&["alice"], json!({"identifiers": ["+15550100000"]}))
        .await;
    let code = env.code("alice").await;
    let (_, phone) = x25519();
    let (_, thief) = x25519();

    // The phone's first attempt stops short (a stale EULA): the code is bound all the same.
    let reply = env.enrol_raw(&enrol_body(&code, &phone, "0.9", true)).await;
    reply.assert_error(StatusCode::CONFLICT, "eula_not_current");
    let bound = env.app.store.enrolments("alice").expect("enrolments");
    assert_eq!(
        bound[0].zone_public_key.as_deref(),
        Some(phone.to_string().as_str())
    );
    assert!(bound[0].used_at_ms.is_none());

    // Whoever copied the code cannot enrol another zone with it, in any spelling of the code.
    for spelling in [code.clone(), code.to_lowercase().replace('-', "")] {
        let reply = env.enrol(&spelling, &thief).await;
        let message = reply.assert_error(StatusCode::FORBIDDEN, "code_bound");
        assert!(message.contains("another trusted zone"), "{message}");
    }
    let events = env.refusals(3).await;
    assert!(
        events[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another")),
        "{events:?}"
    );
    assert_eq!(env.counts().await["free"], 1, "nothing taken");

    // The phone retries with the current EULA and is enrolled; the code is then spent.
    let reply = env.enrol(&code, &phone).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    env.enrol(&code, &thief)
        .await
        .assert_error(StatusCode::FORBIDDEN, "code_invalid");
    let device = reply.json["device_id"].as_str().expect("id").to_owned();
    assert_eq!(env.device_changes(), [device]);
}

/// R30: refused enrolments are unauthenticated, so the security events they write are
/// limited per source address (a burst, then one per interval) and in all; the shed ones are
/// counted in `/metrics`, and the answer is the same whether the event was written or not.
#[tokio::test]
async fn refused_enrolment_events_are_limited_per_source() {
    let env = env_rate(
        false,
        EventRate {
            burst: 3,
            interval: Duration::from_secs(3600),
            global_burst: 5,
            global_interval: Duration::from_secs(3600),
            max_sources: 100,
        },
    );
    env.ready(&["alice"], json!({"identifiers": ["+15550100000"]}))
        .await;
    let (_, key) = x25519();
    let from = |source: &str, code: &str| {
        let body = enrol_body(code, &key, EULA, true).to_string();
        let peer: std::net::SocketAddr = format!("{source}:40000").parse().expect("addr");
        let mut req = request_with(
            "POST",
            "/api/v1/enrol",
            None,
            Some("application/json"),
            body,
        );
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        env.app.send(req)
    };
    let first = from("192.0.2.1", "BAD-0").await;
    first.assert_error(StatusCode::FORBIDDEN, "code_invalid");
    // 192.0.2.1 writes 3 of its 5 (its burst); 192.0.2.2 then 2 of its 3 (all sources: 5).
    for i in 1..5 {
        let reply = from("192.0.2.1", &format!("BAD-{i}")).await;
        assert_eq!(reply.json, first.json, "shed or not, one answer");
    }
    assert_eq!(env.refusals(3).await.len(), 3);
    for i in 0..3 {
        let reply = from("192.0.2.2", &format!("OTHER-{i}")).await;
        assert_eq!(reply.json, first.json);
    }
    env.refusals(5).await;
    let metrics = env.app.call("GET", "/metrics", None).await;
    assert!(
        metrics
            .text
            .contains("\ntrustring_security_events_shed_total 3\n"),
        "{}",
        metrics.text
    );
    // The shed ones are only counted: a correct code still enrols from a shed source.
    let code = env.code("alice").await;
    let reply = from("192.0.2.1", &code).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
}

// ---- R3 through the API, and R5 ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enrolments_never_share_an_identifier() {
    let env = Arc::new(env());
    env.ready(&["alice", "bob"], json!({ "range": RANGE_150 }))
        .await;
    let mut codes = Vec::new();
    for i in 0..200 {
        codes.push(env.code(["alice", "bob"][i % 2]).await);
    }

    let barrier = Arc::new(tokio::sync::Barrier::new(codes.len()));
    let tasks: Vec<_> = codes
        .into_iter()
        .map(|code| {
            let env = Arc::clone(&env);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let (_, key) = x25519();
                barrier.wait().await;
                env.enrol(&code, &key).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("enrol task"));
    }

    let created: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    let exhausted: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 150);
    assert_eq!(exhausted.len(), 50);
    for r in &exhausted {
        r.assert_error(StatusCode::CONFLICT, "pool_exhausted");
    }
    let ids: BTreeSet<String> = created
        .iter()
        .map(|r| r.json["device_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 150, "distinct device ids");
    assert_eq!(
        env.counts().await,
        json!({"free": 0, "assigned": 150, "quarantined": 0})
    );
    // Each device holds its own identifier, and together they are the whole range.
    let devices = env.app.store.devices(None).expect("devices");
    assert_eq!(devices.len(), 150);
    let held: BTreeSet<&str> = devices.iter().map(|d| d.identifier.as_str()).collect();
    let all = range_ids(150);
    assert_eq!(held, all.iter().map(String::as_str).collect());
    // The SIP core heard of each, once.
    let changed = env.device_changes();
    assert_eq!(changed.len(), 150);
    assert_eq!(changed.into_iter().collect::<BTreeSet<_>>(), ids);
    // 50 refusals from one source: its burst of 20 security events is written, the other
    // 30 are only counted (R30).
    env.refusals(20).await;
    let metrics = env.app.call("GET", "/metrics", None).await;
    assert!(
        metrics
            .text
            .contains("\ntrustring_security_events_shed_total 30\n"),
        "{}",
        metrics.text
    );

    // R5: no response after provisioning shows an identifier or a license key.
    let mut hidden = Hidden::new(&all);
    for k in license_keys(&env) {
        hidden.add_key(&k);
    }
    for r in &replies {
        if r.status == StatusCode::CREATED {
            hidden.assert_absent("enrol response", &without_package(&r.json));
            let package = r.json["package"].to_string();
            assert!(all.iter().all(|id| !package.contains(id.as_str())));
        } else {
            hidden.assert_absent("enrol refusal", &r.json);
        }
    }
    let app = &env.app;
    let list = app.call("GET", "/api/v1/devices", None).await;
    assert_eq!(list.json.as_array().expect("list").len(), 150);
    hidden.assert_absent("device list", &list.json);
    let mut per_user = 0;
    for user in ["alice", "bob"] {
        let reply = app
            .call("GET", &format!("/api/v1/devices?user={user}"), None)
            .await;
        let list = reply.json.as_array().expect("list");
        assert!(list.iter().all(|d| d["user"] == user), "{}", reply.json);
        per_user += list.len();
        hidden.assert_absent("device list by user", &reply.json);
    }
    assert_eq!(per_user, 150);
    for id in &ids {
        let reply = app
            .call("GET", &format!("/api/v1/devices/{id}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        hidden.assert_absent("device", &reply.json);
    }
    for r in &created {
        let token = r.json["token"].as_str().expect("token");
        let reply = app
            .call_as(Some(token), "GET", "/api/v1/device", None)
            .await;
        assert_eq!(reply.json["id"], r.json["device_id"]);
        hidden.assert_absent("own device", &reply.json);
    }
    hidden.assert_absent("security events", &Value::Array(env.events().await));
    hidden.assert_absent("pool counts", &env.counts().await);
    for user in ["alice", "bob"] {
        let reply = app
            .call("GET", &format!("/api/v1/subscribers/{user}"), None)
            .await;
        hidden.assert_absent("subscriber", &reply.json);
    }
    hidden.assert_absent(
        "subscriber list",
        &app.call("GET", "/api/v1/subscribers", None).await.json,
    );
}

// ---- devices: operator (R9, R10) and the phone's own endpoints -----------------------------

/// One enrolled phone for alice: (device id, device token).
async fn one_device(env: &Env) -> (String, String) {
    env.ready(&["alice"], json!({"range": "+15550100000..+15550100001"}))
        .await;
    let code = env.code("alice").await;
    let (_, key) = x25519();
    let reply = env.enrol(&code, &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    (
        reply.json["device_id"].as_str().expect("id").to_owned(),
        reply.json["token"].as_str().expect("token").to_owned(),
    )
}

#[tokio::test]
async fn operator_lists_switches_and_revokes_devices() {
    let env = env();
    let (id, _) = one_device(&env).await;
    let app = &env.app;
    let path = format!("/api/v1/devices/{id}");

    let list = app.call("GET", "/api/v1/devices", None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.json);
    let list = list.json.as_array().expect("array").clone();
    assert_eq!(list.len(), 1);
    let one = app.call("GET", &path, None).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.json);
    assert_eq!(one.json, list[0]);
    let d = &one.json;
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["user"], "alice");
    assert_eq!(d["security_level"], "software");
    assert_eq!(d["status"], "active");
    assert_eq!(d["service_on"], true);
    assert_eq!(d["eula_version"], EULA);
    assert_eq!(d["revoked_reason"], Value::Null);
    assert_eq!(d["revoked_at_ms"], Value::Null);
    let keys: BTreeSet<&str> = d
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "created_at_ms",
            "eula_accepted_at_ms",
            "eula_version",
            "id",
            "number",
            "revoked_at_ms",
            "revoked_reason",
            "security_level",
            "service_on",
            "status",
            "user",
            "zone_public_key",
        ]),
        "no identifier, key, HA1 or token field"
    );
    let reply = app.call("GET", "/api/v1/devices?user=alice", None).await;
    assert_eq!(reply.json.as_array().expect("array").len(), 1);
    let reply = app.call("GET", "/api/v1/devices?user=bob", None).await;
    assert_eq!(reply.json, json!([]));
    let reply = app.call("GET", "/api/v1/devices?owner=alice", None).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let reply = app.call_as(None, "GET", "/api/v1/devices", None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Off, then on again: each reported to the SIP core.
    let changes_before = env.device_changes().len();
    let service = format!("{path}/service");
    let reply = app.call("PUT", &service, Some(r#"{"on":false}"#)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["service_on"], false);
    assert_eq!(reply.json["status"], "active");
    assert!(
        !app.store
            .device(&id)
            .expect("device")
            .expect("d")
            .service_on
    );
    assert_eq!(env.device_changes().len(), changes_before + 1);
    assert_eq!(
        app.changes().last(),
        Some(&Change::DeviceChanged(id.clone()))
    );
    let reply = app.call("GET", &path, None).await;
    assert_eq!(reply.json["service_on"], false);
    let reply = app.call("PUT", &service, Some(r#"{"on":true}"#)).await;
    assert_eq!(reply.json["service_on"], true);
    assert_eq!(env.device_changes().len(), changes_before + 2);
    for body in [r#"{"on":"no"}"#, r#"{}"#, r#"{"on":true,"x":1}"#] {
        let reply = app.call("PUT", &service, Some(body)).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }

    // Revocation: reason checked, effective, once.
    let revoke = format!("{path}/revoke");
    for body in [r#"{"reason":"bored"}"#, r#"{"reason":""}"#] {
        let reply = app.call("POST", &revoke, Some(body)).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            message.contains("non-payment"),
            "lists the reasons: {message}"
        );
    }
    let reply = app.call("POST", &revoke, Some(r#"{}"#)).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    assert_eq!(env.device_changes().len(), changes_before + 2);
    assert_eq!(env.counts().await["assigned"], 1);

    let before = now_ms();
    let reply = app
        .call("POST", &revoke, Some(r#"{"reason":"lost"}"#))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["status"], "revoked");
    assert_eq!(reply.json["revoked_reason"], "lost");
    let at = reply.json["revoked_at_ms"].as_i64().expect("revoked_at_ms");
    assert!((before..=now_ms()).contains(&at));
    assert_eq!(env.device_changes().len(), changes_before + 3);
    assert_eq!(
        app.changes().last(),
        Some(&Change::DeviceChanged(id.clone()))
    );
    let reply = app.call("GET", &path, None).await;
    assert_eq!(reply.json["status"], "revoked");
    assert_eq!(reply.json["revoked_reason"], "lost");

    let reply = app
        .call("POST", &revoke, Some(r#"{"reason":"non-payment"}"#))
        .await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");
    let reply = app.call("PUT", &service, Some(r#"{"on":true}"#)).await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(env.device_changes().len(), changes_before + 3);
    let reply = app.call("GET", &path, None).await;
    assert_eq!(reply.json["revoked_reason"], "lost", "first reason kept");

    // Unknown and malformed ids.
    for (method, suffix, body) in [
        ("GET", "", None),
        ("POST", "/revoke", Some(r#"{"reason":"lost"}"#)),
        ("PUT", "/service", Some(r#"{"on":false}"#)),
    ] {
        let reply = app
            .call(
                method,
                &format!("/api/v1/devices/d-000000000000{suffix}"),
                body,
            )
            .await;
        reply.assert_error(StatusCode::NOT_FOUND, "not_found");
        let reply = app
            .call(method, &format!("/api/v1/devices/d_bad!{suffix}"), body)
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }

    // The identifier went to quarantine, not back to the pool (R3) ...
    assert_eq!(
        env.counts().await,
        json!({"free": 1, "assigned": 0, "quarantined": 1})
    );
    let hidden = Hidden::new(&range_ids(2));
    hidden.assert_absent("revoked device", &app.call("GET", &path, None).await.json);
    // ... and comes back only when released, once old enough.
    let release = |age: u64| async move {
        app.call(
            "POST",
            "/api/v1/pools/numbers/release",
            Some(&json!({ "min_age_secs": age }).to_string()),
        )
        .await
    };
    let reply = release(3600).await;
    assert_eq!(reply.json, json!({"released": 0}));
    assert_eq!(env.counts().await["quarantined"], 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reply = release(0).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json, json!({"released": 1}));
    assert_eq!(
        env.counts().await,
        json!({"free": 2, "assigned": 0, "quarantined": 0})
    );
    // The released identifier is assignable again.
    let code = env.code("alice").await;
    let (_, key) = x25519();
    let reply = env.enrol(&code, &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let reply = env.enrol(&env.code("alice").await, &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(
        env.counts().await,
        json!({"free": 0, "assigned": 2, "quarantined": 0})
    );
}

#[tokio::test]
async fn phone_reads_and_switches_itself_with_its_token() {
    let env = env();
    let (id, token) = one_device(&env).await;
    let app = &env.app;

    let reply = app
        .call_as(Some(&token), "GET", "/api/v1/device", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["id"], id.as_str());
    assert_eq!(reply.json["user"], "alice");
    assert_eq!(reply.json["status"], "active");
    assert_eq!(reply.json["service_on"], true);
    let admin_view = app
        .call("GET", &format!("/api/v1/devices/{id}"), None)
        .await;
    assert_eq!(reply.json, admin_view.json);

    // Wrong, missing, or the admin token: 401 with the challenge header.
    for bearer in [
        None,
        Some("wrong"),
        Some(TOKEN),
        Some(&token[..token.len() - 1]),
    ] {
        for (method, path, body) in [
            ("GET", "/api/v1/device", None),
            ("PUT", "/api/v1/device/service", Some(r#"{"on":false}"#)),
        ] {
            let reply = app.call_as(bearer, method, path, body).await;
            reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(reply.header(header::WWW_AUTHENTICATE), Some("Bearer"));
        }
    }
    assert!(app.store.device(&id).expect("d").expect("d").service_on);

    // The user switches the service off and on (R10).
    let changes_before = env.device_changes().len();
    let reply = app
        .call_as(
            Some(&token),
            "PUT",
            "/api/v1/device/service",
            Some(r#"{"on":false}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["service_on"], false);
    assert_eq!(reply.json["id"], id.as_str());
    assert_eq!(env.device_changes().len(), changes_before + 1);
    assert_eq!(
        app.changes().last(),
        Some(&Change::DeviceChanged(id.clone()))
    );
    let reply = app
        .call("GET", &format!("/api/v1/devices/{id}"), None)
        .await;
    assert_eq!(reply.json["service_on"], false);
    let reply = app
        .call_as(
            Some(&token),
            "PUT",
            "/api/v1/device/service",
            Some(r#"{"on":"off"}"#),
        )
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let reply = app
        .call_as(
            Some(&token),
            "PUT",
            "/api/v1/device/service",
            Some(r#"{"on":true}"#),
        )
        .await;
    assert_eq!(reply.json["service_on"], true);
    assert_eq!(env.device_changes().len(), changes_before + 2);

    // After revocation the phone still learns its status and why, but cannot switch.
    let reply = app
        .call(
            "POST",
            &format!("/api/v1/devices/{id}/revoke"),
            Some(r#"{"reason":"non-payment"}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let reply = app
        .call_as(Some(&token), "GET", "/api/v1/device", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["status"], "revoked");
    assert_eq!(reply.json["revoked_reason"], "non-payment");
    assert!(reply.json["revoked_at_ms"].as_i64().is_some());
    Hidden::new(&range_ids(2)).assert_absent("own status", &reply.json);
    let reply = app
        .call_as(
            Some(&token),
            "PUT",
            "/api/v1/device/service",
            Some(r#"{"on":false}"#),
        )
        .await;
    reply.assert_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(env.device_changes().len(), changes_before + 3);
}
