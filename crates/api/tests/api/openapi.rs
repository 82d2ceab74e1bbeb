//! `GET /api/v1/openapi.json`: the document is OpenAPI 3 JSON, public, and agrees with the
//! router (every documented operation is routed, no other method is served on a documented
//! path, `ROUTES` is the document's list), with the auth layer (declared security is enforced),
//! and with the wire (every error is the documented `ErrorBody` with a documented status, and
//! real responses match their schemas).
//!
//! The other half of "router ⊆ document", that every routed path is documented, is the unit
//! test `every_routed_path_is_documented` in `src/lib.rs` (the router's table is private).

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use store::{Registration, Store};
use trustring_api::{BODY_LIMIT, PUBLIC_ROUTES, ROUTES};

use crate::auth::{assert_unauthorized, concrete, request};
use crate::provisioning::{EULA, env, x25519};
use crate::{App, Reply, TOKEN, request_with};

const DOC_PATH: &str = "/api/v1/openapi.json";
const ERROR_REF: &str = "#/components/schemas/ErrorBody";
/// Methods probed on each documented path (HEAD and OPTIONS are axum's own business).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// The document as served, without any token.
async fn document<S: Store>(app: &App<S>) -> Value {
    let reply = app.call_as(None, "GET", DOC_PATH, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    reply.json
}

/// One operation of the document.
struct Op<'a> {
    method: String,
    path: &'a str,
    spec: &'a Value,
}

impl Op<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The declared security requirements (empty if none).
    fn security(&self) -> Vec<Value> {
        self.spec
            .get("security")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The documented status codes.
    fn statuses(&self) -> BTreeSet<u16> {
        self.spec["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| k.parse().expect("numeric status"))
            .collect()
    }

    fn is_device(&self) -> bool {
        self.path == "/api/v1/device" || self.path.starts_with("/api/v1/device/")
    }
}

/// Every (method, path) operation of `doc`.
fn operations(doc: &Value) -> Vec<Op<'_>> {
    let paths = doc["paths"].as_object().expect("paths object");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (method, spec) in item.as_object().expect("path item") {
            // A path item may also hold `parameters`, `summary`...: only methods are operations.
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                ops.push(Op {
                    method: method.to_uppercase(),
                    path,
                    spec,
                });
            }
        }
    }
    ops
}

/// Resolves a local `$ref` (`#/components/...`) in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    reference
        .strip_prefix('#')
        .filter(|pointer| pointer.starts_with("/components/"))
        .and_then(|pointer| doc.pointer(pointer))
}

/// Every `$ref` anywhere in `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                    _ => refs(v, format!("{at}/{key}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn document_is_public_openapi_3_json_whose_refs_all_resolve() {
    let app = App::new();
    let doc = document(&app).await;
    // Public, and the same whatever the caller presents.
    let with_bad_token = app.call_as(Some("wrong"), "GET", DOC_PATH, None).await;
    assert_eq!(with_bad_token.status, StatusCode::OK);
    assert_eq!(with_bad_token.json, doc);
    assert_eq!(app.call("GET", DOC_PATH, None).await.json, doc);

    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3."), "openapi {version}");
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        doc["info"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(!operations(&doc).is_empty());
    for op in operations(&doc) {
        assert!(op.path.starts_with('/'), "{}", op.name());
        assert!(op.spec["operationId"].is_string(), "{}", op.name());
        assert!(
            op.spec["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{}",
            op.name()
        );
        // Every `{param}` of the path is declared as a required path parameter.
        let declared: BTreeSet<&str> = op.spec["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path" && p["required"] == true)
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let templated: BTreeSet<&str> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, templated, "{}", op.name());
    }

    let mut all = Vec::new();
    refs(&doc, String::new(), &mut all);
    assert!(all.len() > 50, "suspiciously few $refs: {}", all.len());
    for (at, reference) in all {
        assert!(
            resolve(&doc, reference).is_some(),
            "{at}: $ref {reference} does not resolve within components"
        );
    }

    for scheme in ["bearer", "device_token"] {
        let s = &doc["components"]["securitySchemes"][scheme];
        assert_eq!(s["type"], "http", "{scheme}");
        assert_eq!(s["scheme"], "bearer", "{scheme}");
    }
}

#[tokio::test]
async fn document_and_router_agree() {
    let app = App::new();
    app.create("alice").await;
    let doc = document(&app).await;
    let ops = operations(&doc);

    // `ROUTES` is exactly the document's operations, both ways.
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|op| (op.method.clone(), op.path.to_owned()))
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES has duplicates");
    assert_eq!(documented.len(), ops.len());
    for route in &routes {
        assert!(documented.contains(route), "{route:?} not in the document");
    }
    for op in &documented {
        assert!(routes.contains(op), "{op:?} not in ROUTES");
    }

    // Every documented operation is routed (with the token: neither 405 nor "no such route"),
    // and every other method on a documented path is 405: the router serves nothing there
    // that the document does not describe.
    let auth = format!("Bearer {TOKEN}");
    let paths: BTreeSet<&str> = ops.iter().map(|op| op.path).collect();
    for path in paths {
        for method in METHODS {
            let reply = app
                .send(request(method, &concrete(path), Some(&auth)))
                .await;
            let what = format!("{method} {path}: {}", reply.json);
            if documented.contains(&(method.to_owned(), path.to_owned())) {
                assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
                assert_ne!(
                    reply.json.pointer("/error/message"),
                    Some(&json!("no such route")),
                    "{what}"
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{what}: served but not documented"
                );
                reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            }
        }
    }
}

#[tokio::test]
async fn declared_security_is_what_the_auth_layer_enforces() {
    // SQLite: the in-memory store has no devices, so a device-token lookup would be a 500.
    let env = env();
    let app = &env.app;
    app.create("alice").await;
    let doc = document(app).await;
    let admin = format!("Bearer {TOKEN}");
    let mut public = BTreeSet::new();
    for op in operations(&doc) {
        let path = concrete(op.path);
        let security = op.security();
        let lists_401 = op.statuses().contains(&401);
        if !PUBLIC_ROUTES.contains(&op.path) {
            assert_eq!(security, [json!({"bearer": []})], "{}", op.name());
            assert!(lists_401, "{} does not list 401", op.name());
            let reply = app.send(request(&op.method, &path, None)).await;
            assert_unauthorized(&reply, &op.name());
        } else if op.is_device() {
            // The device token, not the admin token, and checked by the handler.
            assert_eq!(security, [json!({"device_token": []})], "{}", op.name());
            assert!(lists_401, "{} does not list 401", op.name());
            for authorization in [None, Some(admin.as_str())] {
                let reply = app.send(request(&op.method, &path, authorization)).await;
                assert_unauthorized(&reply, &format!("{} with {authorization:?}", op.name()));
            }
        } else {
            assert!(security.is_empty(), "{}: {security:?}", op.name());
            assert!(!lists_401, "{} lists 401 but needs no token", op.name());
            let reply = app.send(request(&op.method, &path, None)).await;
            assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{}", op.name());
            public.insert(op.path);
        }
    }
    assert_eq!(
        public,
        BTreeSet::from(["/healthz", DOC_PATH, "/api/v1/enrol", "/api/v1/enrol/eula"])
    );
    // Every public route is documented.
    let documented: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in PUBLIC_ROUTES {
        assert!(documented.contains(path), "{path}");
    }
}

#[tokio::test]
async fn every_documented_error_is_the_error_body() {
    let app = App::new();
    let doc = document(&app).await;

    // The one shape: {"error": {"code": string, "message": string}}, both required.
    let body = resolve(&doc, ERROR_REF).expect("ErrorBody schema");
    assert_eq!(body["type"], "object");
    assert_eq!(body["required"], json!(["error"]));
    let detail = resolve(
        &doc,
        body["properties"]["error"]["$ref"].as_str().expect("ref"),
    )
    .expect("ErrorDetail schema");
    assert_eq!(detail["required"], json!(["code", "message"]));
    for field in ["code", "message"] {
        assert_eq!(detail["properties"][field]["type"], "string", "{field}");
    }

    for op in operations(&doc) {
        for (status, response) in op.spec["responses"].as_object().expect("responses") {
            let status: u16 = status.parse().expect("status");
            let content = response["content"].as_object();
            if status < 400 {
                continue;
            }
            let content = content.unwrap_or_else(|| panic!("{} {status}: no content", op.name()));
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/json"],
                "{} {status}",
                op.name()
            );
            assert_eq!(
                content["application/json"]["schema"]["$ref"],
                ERROR_REF,
                "{} {status}",
                op.name()
            );
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{} {status}",
                op.name()
            );
        }
        let statuses = op.statuses();
        let has_params = op.path.contains('{');
        let has_body = op.spec.get("requestBody").is_some();
        // Nothing behind these can fail with a 500: `/metrics` only renders counters held in
        // memory (and answers 503 when the server has none).
        let trivial = ["/healthz", DOC_PATH, "/metrics", "/api/v1/server"].contains(&op.path);
        if has_params || has_body {
            assert!(statuses.contains(&400), "{} does not list 400", op.name());
        }
        if has_body {
            assert!(statuses.contains(&413), "{} does not list 413", op.name());
        }
        if !trivial {
            assert!(statuses.contains(&500), "{} does not list 500", op.name());
        }
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{} has no success response",
            op.name()
        );
    }
}

/// Bad requests of every kind against every documented operation, with the credential it
/// declares: each error is `application/json` of the one shape, with a status the operation
/// documents.
#[tokio::test]
async fn every_operation_answers_errors_in_the_documented_shape_and_statuses() {
    let env = env();
    let app = &env.app;
    let doc = document(app).await;
    env.ready(&["alice"], json!({"range": "+15550100000..+15550100001"}))
        .await;
    let oversized = format!(r#"{{"pad":"{}"}}"#, "x".repeat(BODY_LIMIT));
    let admin = format!("Bearer {TOKEN}");
    let mut checked = 0;
    for op in operations(&doc) {
        let credential = if op.security().is_empty() {
            None
        } else {
            Some(admin.as_str())
        };
        let good = concrete(op.path);
        let bad_param = op
            .path
            .replace("{user}", "-not-a-user")
            .replace("{id}", "not~an~id");
        let cases: [(&str, String, Option<&str>, Body); 6] = [
            (
                "oversized",
                good.clone(),
                Some("application/json"),
                Body::from(oversized.clone()),
            ),
            (
                "bad JSON",
                good.clone(),
                Some("application/json"),
                Body::from("{not json"),
            ),
            (
                "wrong fields",
                good.clone(),
                Some("application/json"),
                Body::from(r#"{"nope":1}"#),
            ),
            (
                "no content type",
                good.clone(),
                None,
                Body::from(r#"{"on":true}"#),
            ),
            (
                "unknown query",
                format!("{good}?nope=1"),
                None,
                Body::empty(),
            ),
            ("bad path parameter", bad_param, None, Body::empty()),
        ];
        for (what, uri, content_type, body) in cases {
            let req = request_with(op.method.as_str(), &uri, credential, content_type, body);
            let reply = app.send(req).await;
            let name = format!("{} ({what}, {uri})", op.name());
            let status = reply.status.as_u16();
            if status >= 400 {
                let code = reply.json["error"]["code"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {status} {}", reply.json))
                    .to_owned();
                reply.assert_error(reply.status, &code);
                assert!(
                    op.statuses().contains(&status),
                    "{name}: answered {status} ({code}), which is not documented"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} error replies checked");
}

/// Checks `value` against `schema`, the subset of JSON Schema the document uses, resolving
/// `$ref`s in `doc`. Objects are closed: a key the schema does not declare is an error, so a
/// response field missing from the document is caught.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let target = resolve(doc, reference).ok_or(format!("{at}: unresolved {reference}"))?;
        return check(doc, target, value, at);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        return if choices.iter().any(|s| check(doc, s, value, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: matches no oneOf: {value}"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if schema["enum"]
        .as_array()
        .is_some_and(|allowed| !allowed.contains(value))
    {
        return Err(format!("{at}: {value} not in {}", schema["enum"]));
    }
    let below = |n: f64| schema["minimum"].as_f64().is_some_and(|min| n < min);
    let above = |n: f64| schema["maximum"].as_f64().is_some_and(|max| n > max);
    if value.as_f64().is_some_and(|n| below(n) || above(n)) {
        return Err(format!("{at}: {value} out of bounds"));
    }
    match value {
        Value::Object(map) => {
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !map.contains_key(key) {
                    return Err(format!("{at}: required `{key}` missing"));
                }
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (key, v) in map {
                    let field = properties
                        .get(key)
                        .ok_or(format!("{at}: `{key}` is not in the schema"))?;
                    check(doc, field, v, &format!("{at}.{key}"))?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Asserts `reply` has a status documented for `method path` and, if that response has a
/// JSON body, that the body matches its schema.
fn assert_documented(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let op = &doc["paths"][path][method.to_lowercase()];
    let name = format!("{method} {path} -> {}", reply.status);
    let response = &op["responses"][reply.status.as_str()];
    assert!(response.is_object(), "{name}: status not documented");
    let content_type = reply.header(header::CONTENT_TYPE).unwrap_or_default();
    if content_type.starts_with("text/plain") {
        // The Prometheus exposition: documented as text, served as text, never empty.
        assert_eq!(
            response["content"]["text/plain"]["schema"]["type"], "string",
            "{name}: text body not documented as text/plain"
        );
        assert!(!reply.text.is_empty(), "{name}: empty text body");
        return;
    }
    match response["content"]["application/json"]["schema"].as_object() {
        Some(_) => {
            let schema = &response["content"]["application/json"]["schema"];
            if let Err(e) = check(doc, schema, &reply.json, "body") {
                panic!("{name}: {e}\n{:#}", reply.json);
            }
        }
        None => assert_eq!(reply.json, Value::Null, "{name}: undocumented body"),
    }
}

#[tokio::test]
async fn real_responses_match_their_schemas() {
    let env = env();
    let app = &env.app;
    let doc = document(app).await;
    let mut seen = BTreeSet::new();
    let mut call = async |bearer: Option<&str>,
                          method: &str,
                          template: &str,
                          path: &str,
                          body: Option<Value>| {
        let body = body.map(|b| b.to_string());
        let reply = app.call_as(bearer, method, path, body.as_deref()).await;
        assert_documented(&doc, method, template, &reply);
        seen.insert((method.to_owned(), template.to_owned()));
        reply
    };
    let admin = Some(TOKEN);
    let user = "/api/v1/subscribers/{user}";

    call(None, "GET", "/healthz", "/healthz", None).await;
    call(None, "GET", DOC_PATH, DOC_PATH, None).await;
    let server = call(admin, "GET", "/api/v1/server", "/api/v1/server", None).await;
    assert_eq!(server.json["domain"], crate::DOMAIN);
    assert_eq!(server.json["tls_fingerprint"], Value::Null);
    call(None, "GET", "/api/v1/server", "/api/v1/server", None).await;
    // Error bodies are validated too, against the ErrorBody schema.
    call(
        None,
        "GET",
        "/api/v1/enrol/eula",
        "/api/v1/enrol/eula",
        None,
    )
    .await;
    call(admin, "GET", user, "/api/v1/subscribers/alice", None).await;

    let created = call(
        admin,
        "POST",
        "/api/v1/subscribers",
        "/api/v1/subscribers",
        Some(json!({"user": "alice", "password": "long-enough-pw", "enterprise": "acme", "ring_timeout_secs": 45})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    call(
        admin,
        "GET",
        "/api/v1/subscribers",
        "/api/v1/subscribers",
        None,
    )
    .await;
    call(admin, "GET", user, "/api/v1/subscribers/alice", None).await;
    let profile = call(
        admin,
        "PUT",
        &format!("{user}/profile"),
        "/api/v1/subscribers/alice/profile",
        Some(json!({"ring_timeout_secs": 20, "ring_delays": [{"contact_contains": "5082", "delay_ms": 2000}]})),
    )
    .await;
    assert_eq!(profile.json["profile"]["ring_delays"][0]["delay_ms"], 2000);
    app.store
        .put_registration(&Registration {
            user: "alice".into(),
            contact: "sip:alice@192.0.2.1:5060".into(),
            transport: "UDP".into(),
            source: "192.0.2.1:5060".into(),
            local: "192.0.2.9:5060".into(),
            call_id: "c1".into(),
            cseq: 1,
            expires_at_ms: i64::MAX / 2,
            q: 500,
            device_id: None,
        })
        .expect("registration");
    let regs = call(
        admin,
        "GET",
        &format!("{user}/registrations"),
        "/api/v1/subscribers/alice/registrations",
        None,
    )
    .await;
    assert_eq!(regs.json.as_array().map(Vec::len), Some(1));

    let pools = "/api/v1/pools/numbers";
    call(
        admin,
        "POST",
        pools,
        pools,
        Some(json!({"range": "+15550100000..+15550100002"})),
    )
    .await;
    call(
        admin,
        "POST",
        pools,
        pools,
        Some(json!({"identifiers": ["+15550100009"]})),
    )
    .await;
    call(admin, "GET", pools, pools, None).await;
    let release = "/api/v1/pools/numbers/release";
    call(
        admin,
        "POST",
        release,
        release,
        Some(json!({"min_age_secs": 0})),
    )
    .await;

    let eulas = "/api/v1/eulas";
    call(
        admin,
        "POST",
        eulas,
        eulas,
        Some(json!({"version": EULA, "text": "Be nice."})),
    )
    .await;
    call(
        admin,
        "POST",
        eulas,
        eulas,
        Some(json!({"version": EULA, "text": "Again."})),
    )
    .await;
    call(admin, "GET", eulas, eulas, None).await;
    call(
        None,
        "GET",
        "/api/v1/enrol/eula",
        "/api/v1/enrol/eula",
        None,
    )
    .await;

    let codes = "/api/v1/subscribers/{user}/enrolments";
    let code = call(
        admin,
        "POST",
        codes,
        "/api/v1/subscribers/alice/enrolments",
        None,
    )
    .await;
    call(
        admin,
        "POST",
        codes,
        "/api/v1/subscribers/alice/enrolments",
        Some(json!({"ttl_secs": 60})),
    )
    .await;
    let code = code.json["code"].as_str().expect("code").to_owned();
    let (_secret, key) = x25519();
    let enrol_body = |code: &str| json!({"code": code, "zone_public_key": key.to_string(), "eula_version": EULA, "accept_eula": true});
    // A refused enrolment first, so a security event exists (with its null fields).
    let refused = call(
        None,
        "POST",
        "/api/v1/enrol",
        "/api/v1/enrol",
        Some(enrol_body("NOPE-NOPE")),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let enrolled = call(
        None,
        "POST",
        "/api/v1/enrol",
        "/api/v1/enrol",
        Some(enrol_body(&code)),
    )
    .await;
    assert_eq!(enrolled.status, StatusCode::CREATED, "{}", enrolled.json);
    let id = enrolled.json["device_id"].as_str().expect("id").to_owned();
    let device_token = enrolled.json["token"].as_str().expect("token").to_owned();

    let devices = "/api/v1/devices";
    call(admin, "GET", devices, devices, None).await;
    call(admin, "GET", devices, "/api/v1/devices?user=alice", None).await;
    let one = "/api/v1/devices/{id}";
    call(admin, "GET", one, &format!("/api/v1/devices/{id}"), None).await;
    call(admin, "GET", one, "/api/v1/devices/d-none", None).await;
    let service = "/api/v1/devices/{id}/service";
    call(
        admin,
        "PUT",
        service,
        &format!("/api/v1/devices/{id}/service"),
        Some(json!({"on": false})),
    )
    .await;
    let number = "/api/v1/devices/{id}/number";
    let set = call(
        admin,
        "PUT",
        number,
        &format!("/api/v1/devices/{id}/number"),
        Some(json!({"number": "+15551230001"})),
    )
    .await;
    assert_eq!(set.json["number"], "+15551230001");
    let bad = call(
        admin,
        "PUT",
        number,
        &format!("/api/v1/devices/{id}/number"),
        Some(json!({"number": "15551230001"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "E.164 needs the +");
    let own = Some(device_token.as_str());
    let cleared = call(
        own,
        "PUT",
        "/api/v1/device/number",
        "/api/v1/device/number",
        Some(json!({"number": null})),
    )
    .await;
    assert_eq!(cleared.json["number"], Value::Null);
    call(own, "GET", "/api/v1/device", "/api/v1/device", None).await;
    call(
        own,
        "PUT",
        "/api/v1/device/service",
        "/api/v1/device/service",
        Some(json!({"on": true})),
    )
    .await;
    let revoke = "/api/v1/devices/{id}/revoke";
    let revoked = call(
        admin,
        "POST",
        revoke,
        &format!("/api/v1/devices/{id}/revoke"),
        Some(json!({"reason": "lost"})),
    )
    .await;
    assert_eq!(revoked.json["status"], "revoked");
    call(
        admin,
        "POST",
        revoke,
        &format!("/api/v1/devices/{id}/revoke"),
        Some(json!({"reason": "lost"})),
    )
    .await;
    call(own, "GET", "/api/v1/device", "/api/v1/device", None).await;

    let events = "/api/v1/security-events";
    env.refusals(1).await;
    let listed = call(admin, "GET", events, events, None).await;
    assert!(
        listed.json["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    call(
        admin,
        "GET",
        events,
        "/api/v1/security-events?after=0&limit=5&order=desc",
        None,
    )
    .await;

    let cdrs = "/api/v1/cdrs";
    crate::cdrs::append_sample(app.store.as_ref());
    let listed = call(admin, "GET", cdrs, cdrs, None).await;
    assert_eq!(listed.json["records"].as_array().map(Vec::len), Some(4));
    call(
        admin,
        "GET",
        cdrs,
        "/api/v1/cdrs?from=2026-12-01&to=2027-01-01&entity=acme",
        None,
    )
    .await;
    call(admin, "GET", cdrs, "/api/v1/cdrs?from=someday", None).await;
    let metrics = call(admin, "GET", "/metrics", "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    call(None, "GET", "/metrics", "/metrics", None).await;

    call(admin, "DELETE", user, "/api/v1/subscribers/alice", None).await;
    call(admin, "DELETE", user, "/api/v1/subscribers/alice", None).await;

    // Call views: without traces they are not available (404, documented) — the stream is
    // only checked that way, its 200 never ends.
    call(
        admin,
        "GET",
        "/api/v1/calls/stream",
        "/api/v1/calls/stream",
        None,
    )
    .await;
    // With traces: one recorded INVITE.
    let sink = sip_net::trace::TraceSink::new();
    sink.record(
        sip_net::trace::Direction::In,
        "UDP",
        "127.0.0.1:6000".parse().expect("addr"),
        b"INVITE sip:alice@localhost SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n",
    );
    let traced = App::over_options(
        std::sync::Arc::new(crate::mem_store::MemStore::default()),
        TOKEN,
        trustring_api::ApiOptions::default().call_traces(sink),
    );
    for (template, path) in [
        ("/api/v1/calls", "/api/v1/calls"),
        ("/api/v1/calls", "/api/v1/calls?limit=5"),
        ("/api/v1/calls/{call_id}/trace", "/api/v1/calls/c1/trace"),
        ("/api/v1/calls/{call_id}/trace", "/api/v1/calls/nope/trace"),
    ] {
        let reply = traced.call_as(admin, "GET", path, None).await;
        assert_documented(&doc, "GET", template, &reply);
        seen.insert(("GET".to_owned(), template.to_owned()));
    }
    let list = traced.call_as(admin, "GET", "/api/v1/calls", None).await;
    assert_eq!(list.json[0]["call_id"], "c1", "{}", list.json);
    assert_eq!(list.json[0]["state"], "ringing");

    // Every documented operation was exercised.
    let all: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missed: Vec<_> = all.difference(&seen).collect();
    assert!(missed.is_empty(), "not exercised: {missed:?}");
}
