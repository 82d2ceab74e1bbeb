//! Trusted provisioning end to end (issue #3; SPEC R3–R10, R14): the real `trustring serve`,
//! real `trustring device` phones (software zone and a SoftHSM2 PKCS#11 zone), SIPp callers
//! and desktops on 127.0.0.1. Enrolment runs over HTTPS with the server's key pinned by the
//! enrolment URI (issue #11, R27, R28); the man in the middle tests (SECURITY.md threat 12)
//! put a TLS relay or a plain-HTTP server between the phone and the enrolment endpoint.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::phone::{
    PIN, Phone, Relay, dev_output, enrol, enrol_observed, enrol_uri, fingerprint, identity,
};
use common::proc::Proc;
use common::{Server, caller, device, serial, sipp};

const WAIT: Duration = Duration::from_secs(45);
/// The pool every test loads: ten identifiers that must never show up anywhere.
const POOL: &str = "+15550100000..+15550100009";

fn identifiers() -> Vec<String> {
    (0..10).map(|i| format!("+1555010000{i}")).collect()
}

/// A server with alice (desktop password s3cret-passw0rd), the pool and an EULA.
fn server() -> Server {
    let s = server_without_pool();
    load_pool(&s);
    s
}

fn load_pool(s: &Server) {
    let (c, b) = s.api(
        "POST",
        "/api/v1/pools/numbers",
        Some(&format!(r#"{{"range":"{POOL}"}}"#)),
    );
    assert_eq!(c, 200, "{b}");
}

/// A server with alice and an EULA, but an empty number pool.
fn server_without_pool() -> Server {
    let s = Server::start();
    s.add_subscriber("alice", "s3cret-passw0rd");
    let (c, b) = s.api(
        "POST",
        "/api/v1/eulas",
        Some(r#"{"version":"2026-1","text":"Be nice."}"#),
    );
    assert_eq!(c, 201, "{b}");
    s
}

/// `trustring device run` in the background, answering after `answer_ms`; registered.
fn run_phone(p: &Phone, s: &Server, answer_ms: u64) -> Proc {
    run_phone_with(p, answer_ms, &["--sip-server", &s.target()])
}

/// [`run_phone`] with `sip` as the phone's SIP arguments.
fn run_phone_with(p: &Phone, answer_ms: u64, sip: &[&str]) -> Proc {
    let out = p.zone.join(format!("run-{}.out", common::free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trustring"));
    cmd.args(["device", "run", "--zone"])
        .arg(&p.zone)
        .args(sip)
        .args(["--answer-after-ms", &answer_ms.to_string()])
        .envs(p.env())
        .env("TRUSTRING_ZONE_PIN", PIN);
    let r = Proc::spawn(cmd, out, false);
    r.wait_for("registered");
    r
}

fn events(s: &Server) -> String {
    let (c, b) = s.api("GET", "/api/v1/security-events", None);
    assert_eq!(c, 200, "{b}");
    b
}

/// The phone answers with its zone's proof: it wins and the desktop gets the CANCEL with the
/// RFC 3326 reason (R11, R12, R14).
fn phone_answer_wins(backend: &str) {
    let _g = serial();
    let s = server();
    // Through a relay holding the server's own key, so the test learns the SIP password and
    // device token the phone was given (and checks below that the phone kept them sealed).
    let mut p = enrol_observed(&s, backend);
    let mut run = run_phone(&p, &s, 400);
    let mut desk = device(&s, "uas-ring-cancel.xml", 0, false);
    caller(&s, "uac-call.xml").arg("-d").arg("500").run_ok();
    desk.expect_ok(WAIT);
    run.wait_for("ended");
    let out = run.stop();
    assert!(
        out.contains("incoming call") && out.contains("answered"),
        "{out}"
    );
    assert!(!out.contains("proof failed"), "{out}");
    let ev = events(&s);
    assert!(
        !ev.contains("-proof"),
        "no proof failure for a good proof: {ev}"
    );
    assert!(
        ev.contains("enrolment-refused"),
        "the reused code was recorded: {ev}"
    );
    p.printed.push_str(&out);
    // R18: one CDR for the call, the phone's leg answered, the desktop's cancelled elsewhere.
    let device = p.device_json()["device_id"].as_str().unwrap().to_owned();
    let cdrs = cdr_export(&s);
    assert_eq!(cdrs["records"].as_array().unwrap().len(), 1, "{cdrs}");
    let r = &cdrs["records"][0];
    assert_eq!(r["final_status"], 200, "{r}");
    assert_eq!(r["called"], "sip:alice@localhost");
    assert_eq!(r["released_by"], "caller", "{r}");
    let legs = r["legs"].as_array().unwrap();
    let answered = &legs[r["answered_by"].as_u64().unwrap() as usize];
    assert_eq!(answered["device"], device.as_str(), "{r}");
    assert_eq!(answered["outcome"], "answered");
    assert!(answered["billable_ms"].as_i64().unwrap() > 0, "{r}");
    assert!(
        legs.iter()
            .any(|l| l["device"].is_null() && l["outcome"] == "cancelled-elsewhere"),
        "{r}"
    );
    assert_eq!(cdrs["totals"][0]["entity"], "acme", "{cdrs}");
    let v = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["cdr", "verify", "--data"])
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert!(String::from_utf8_lossy(&v.stdout).contains("1 CDR(s): hash chain intact"));
    no_secret_leaks(&s, &p);
    // Threat 9: someone with the database file shortens the call; `cdr verify` names it.
    let db = rusqlite::Connection::open(s.data.join("trustring.db")).unwrap();
    db.execute_batch("DROP TRIGGER cdrs_no_update;").unwrap();
    let n = db
        .execute(
            "UPDATE cdrs SET body = replace(body, '\"final_status\":200', '\"final_status\":486')",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let v = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["cdr", "verify", "--data"])
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(!v.status.success());
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("CDR 1:") && out.contains("changed"), "{out}");
}

/// `trustring cdr export --format json` once a record is there (the writer is asynchronous
/// to the SIP loop; the record is durable before it is listed).
fn cdr_export(s: &Server) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
            .args([
                "cdr",
                "export",
                "--format",
                "json",
                "--rate-voip",
                "0.02",
                "--data",
            ])
            .arg(&s.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if !v["records"].as_array().unwrap().is_empty() || t0.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn software_zone_phone_answers_with_proof_and_desktop_is_cancelled() {
    phone_answer_wins("software");
}

#[test]
fn pkcs11_zone_phone_answers_with_proof_and_desktop_is_cancelled() {
    phone_answer_wins("pkcs11");
}

/// Registers a SIPp UAS as the phone (the device's SIP credentials) but it answers without
/// any proof: it is hung up, the caller never sees its 200, the desktop answers.
/// `device run --sip-tls`: the phone registers over SIP over TLS with the key it pinned at
/// enrolment, takes the forked call on that connection and wins with its proof; the binding
/// the server holds says `transport=tls` (R27).
#[test]
fn phone_over_sip_tls_answers_with_proof() {
    let _g = serial();
    let s = server();
    let p = enrol(&s, "software");
    let tls = s.sip_tls.to_string();
    let mut run = run_phone_with(&p, 400, &["--sip-tls", "--sip-server", &tls]);
    let regs = s.registrations_when("alice", |r| r.contains("transport=tls"));
    assert!(regs.contains("transport=tls"), "{regs}");
    let mut desk = device(&s, "uas-ring-cancel.xml", 0, false);
    caller(&s, "uac-call.xml").arg("-d").arg("500").run_ok();
    desk.expect_ok(WAIT);
    run.wait_for("ended");
    let out = run.stop();
    assert!(out.contains(", TLS)") && out.contains("answered"), "{out}");
    assert!(!events(&s).contains("-proof"), "{}", events(&s));
}

/// Pinning holds for SIP too: a phone whose pinned key is not the server's never registers.
#[test]
fn phone_over_sip_tls_refuses_another_server_key() {
    let _g = serial();
    let s = server();
    let p = enrol(&s, "software");
    let other = Server::start();
    let out = p.zone.join("run-wrong-key.out");
    let r = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["device", "run", "--zone"])
        .arg(&p.zone)
        .args(["--sip-tls", "--sip-server", &other.sip_tls.to_string()])
        .args(["--answer-after-ms", "100"])
        .envs(p.env())
        .env("TRUSTRING_ZONE_PIN", PIN)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("registered")
    );
    let (c, regs) = other.api("GET", "/api/v1/subscribers/alice/registrations", None);
    assert!(c == 404 || !regs.contains("tls"), "{c} {regs}");
}

#[test]
fn phone_without_proof_never_connects() {
    let _g = serial();
    let s = server();
    let p = enrol_observed(&s, "software");
    let cfg = p.device_json();
    let (password, _token) = p.secrets.clone().unwrap();
    // A forged phone: SIPp with the device's credentials, answering at once with no proof.
    let mut forged = sipp("uas-answer.xml").arg("-d").arg("0").spawn();
    std::thread::sleep(Duration::from_millis(150));
    sipp("register.xml")
        .arg("-s")
        .arg("alice")
        .arg("-au")
        .arg(cfg["sip_username"].as_str().unwrap())
        .arg("-ap")
        .arg(&password)
        .key("domain", "localhost")
        .key("contact_port", &forged.port.to_string())
        .key("expires", "3600")
        .target(&s.target())
        .run_ok();
    let mut desk = device(&s, "uas-answer.xml", 1500, false);
    caller(&s, "uac-call.xml").arg("-d").arg("500").run_ok();
    desk.expect_ok(WAIT);
    // The forged phone got ACK + BYE from the proxy (its scenario ends with the BYE).
    forged.expect_ok(WAIT);
    let ev = events(&s);
    assert!(ev.contains("missing-proof"), "{ev}");
    assert!(ev.contains(cfg["device_id"].as_str().unwrap()), "{ev}");
    // The CDR shows the phone's leg as failed-trust and the desktop as the answering leg.
    let cdrs = cdr_export(&s);
    let r = &cdrs["records"][0];
    let legs = r["legs"].as_array().unwrap();
    let answered = &legs[r["answered_by"].as_u64().unwrap() as usize];
    assert!(answered["device"].is_null(), "{r}");
    assert!(
        legs.iter()
            .any(|l| l["device"] == cfg["device_id"] && l["outcome"] == "failed-trust"),
        "{r}"
    );
}

/// Off: only the desktop rings (R10); on again: both ring.
#[test]
fn service_off_rings_only_the_desktop() {
    let _g = serial();
    let s = server();
    let mut p = enrol(&s, "software");
    let mut run = run_phone(&p, &s, 60_000);
    let out = p.cmd(&["service", "off"]);
    assert!(out.contains("service off"), "{out}");
    let mut desk = device(&s, "uas-answer.xml", 300, false);
    caller(&s, "uac-call.xml").arg("-d").arg("300").run_ok();
    desk.expect_ok(WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!run.text().contains("incoming call"), "{}", run.text());
    let st = p.cmd(&["status"]);
    assert!(st.contains("service: off"), "{st}");
    p.cmd(&["service", "on"]);
    let st = p.cmd(&["status"]);
    assert!(st.contains("service: on"), "{st}");
    run.stop();
}

/// Revoked: at once the phone's registrations go, calls do not fork to it, the device learns
/// why, and it can no longer take calls (R9).
#[test]
fn revoked_phone_does_not_ring() {
    let _g = serial();
    let s = server();
    let mut p = enrol(&s, "software");
    let mut run = run_phone(&p, &s, 60_000);
    let id = p.device_json()["device_id"].as_str().unwrap().to_owned();
    // The binding is listed once the store writer has it (it runs beside the SIP loop).
    let bound = format!("trustring-device={id}");
    let regs = s.registrations_when("alice", |r| r.contains(&bound));
    assert!(regs.contains(&bound), "{regs}");
    let (c, b) = s.api(
        "POST",
        &format!("/api/v1/devices/{id}/revoke"),
        Some(r#"{"reason":"lost"}"#),
    );
    assert_eq!(c, 200, "{b}");
    assert!(b.contains(r#""status":"revoked""#), "{b}");
    let regs = s.registrations("alice");
    assert_eq!(regs, "[]", "the phone's registration is gone");
    let mut desk = device(&s, "uas-answer.xml", 300, false);
    caller(&s, "uac-call.xml").arg("-d").arg("300").run_ok();
    desk.expect_ok(WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!run.text().contains("incoming call"), "{}", run.text());
    run.stop();
    let st = p.cmd(&["status"]);
    assert!(st.contains("status: revoked (lost)"), "{st}");
    // The zone refuses to serve calls now.
    let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["device", "run", "--zone"])
        .arg(&p.zone)
        .args(["--sip-server", &s.target()])
        .env("TRUSTRING_ZONE_PIN", PIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    let (_, counts) = s.api("GET", "/api/v1/pools/numbers", None);
    assert!(counts.contains(r#""quarantined":1"#), "{counts}");
}

/// R5 / threat 6: neither an identifier of the pool nor the license key (in any usual
/// encoding) appears in the server log, any API answer or anything the device printed.
fn no_secret_leaks(s: &Server, p: &Phone) {
    let mut seen = s.log_text();
    for path in [
        "/api/v1/devices",
        "/api/v1/security-events",
        "/api/v1/subscribers/alice/registrations",
        "/api/v1/pools/numbers",
    ] {
        seen.push_str(&s.api("GET", path, None).1);
    }
    let id = p.device_json()["device_id"].as_str().unwrap().to_owned();
    seen.push_str(&s.api("GET", &format!("/api/v1/devices/{id}"), None).1);
    seen.push_str(&p.printed);
    let mut zone_files = String::new();
    for entry in std::fs::read_dir(&p.zone).unwrap() {
        let mut f = std::fs::File::open(entry.unwrap().path()).unwrap();
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        zone_files.push_str(&String::from_utf8_lossy(&b));
    }
    seen.push_str(&zone_files);
    // The license key in clear, from the store with the server's master key.
    let store = store::SqliteStore::open(&s.data.join("trustring.db")).unwrap();
    let d = store::Store::device(&store, &id).unwrap().unwrap();
    let keys =
        zone::master::MasterKeyRing::load(&s.data.join(zone::master::MASTER_KEY_FILE)).unwrap();
    let key = keys.decrypt(&d.license_key_enc, &id).unwrap();
    let raw = key.expose();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    use base64::Engine;
    let b64s = [
        base64::engine::general_purpose::STANDARD.encode(raw),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
    ];
    assert!(!seen.contains(&hex), "license key (hex) leaked");
    assert!(
        !seen.to_lowercase().contains(&hex),
        "license key (HEX) leaked"
    );
    for b in &b64s {
        assert!(
            !seen.contains(b.trim_end_matches('=')),
            "license key (base64) leaked"
        );
    }
    // Issue #11 item 6: the SIP password and the device token are nowhere in clear: not in
    // any file of the phone (zone directory, PKCS#11 token files), not in what it printed,
    // not in the server's log or API answers.
    let (password, token) = p.secrets.clone().expect("an observed enrolment");
    let cfg = p.device_json();
    assert!(
        cfg.get("sip_password").is_none() && cfg.get("token").is_none(),
        "{cfg}"
    );
    let files = p.files();
    assert!(
        files.len() >= 3,
        "zone.json, device.json, the zone's own files"
    );
    for (path, bytes) in &files {
        for secret in [&password, &token] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a device secret in clear",
                path.display()
            );
        }
    }
    assert!(
        !seen.contains(&password) && !seen.contains(&token),
        "device secret leaked"
    );
    for ident in identifiers() {
        assert!(!seen.contains(&ident), "identifier {ident} leaked");
        assert!(!seen.contains(&ident[1..]), "identifier {ident} leaked");
    }
    assert!(seen.contains(&id), "the scan saw the device's records");
}

/// Enrolled phones survive a restart and a master key rotation: the re-encrypted license
/// key still verifies the phone's proof (R4, "nothing stored is lost on restart").
#[test]
fn phone_survives_restart_and_master_key_rotation() {
    let _g = serial();
    let mut s = server();
    let p = enrol(&s, "software");
    let data = s.data.clone();
    let port = s.sip.port();
    s.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["master-key", "rotate", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 license key record(s) re-encrypted"),
        "{text}"
    );
    let keys = std::fs::read_to_string(data.join(zone::master::MASTER_KEY_FILE)).unwrap();
    assert_eq!(
        keys.lines().filter(|l| l.starts_with("v1:")).count(),
        2,
        "old key kept"
    );
    let s = Server::start_in(&data, port);
    let mut run = run_phone(&p, &s, 300);
    let mut desk = device(&s, "uas-ring-cancel.xml", 0, false);
    caller(&s, "uac-call.xml").arg("-d").arg("300").run_ok();
    desk.expect_ok(WAIT);
    let out = run.stop();
    assert!(out.contains("answered"), "{out}");
    assert!(!events(&s).contains("-proof"), "{}", events(&s));
}

/// The bytes of every file in the zone directory (to show nothing was written).
fn zone_files(p: &Phone) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(&p.zone)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Threat 12 (issue #11): a man in the middle between the phone and the enrolment endpoint,
/// a TLS endpoint with its own (equally self-signed, same names) certificate that would relay
/// to the real server, gets nothing: the phone refuses its key with a clear error before
/// sending anything, writes nothing to its zone, and the code is still good for the real
/// phone, which then enrols through the real endpoint.
#[test]
fn enrolment_man_in_the_middle_with_its_own_certificate_gets_nothing() {
    let s = server();
    let uri = enrol_uri(&s, "alice");
    let code = uri.parse::<api::EnrolUri>().unwrap().code;
    let mitm = tempfile::tempdir().unwrap();
    let own = identity(mitm.path());
    assert_ne!(own.fingerprint, fingerprint(&s));
    let relay = Relay::start(own, s.enrol, fingerprint(&s), false);

    let mut p = Phone::init("software");
    let before = zone_files(&p);
    let via = uri.replace(&s.enrol.to_string(), &relay.addr.to_string());
    let (ok, out) = p.try_enrol(&via);
    assert!(!ok, "{out}");
    assert!(
        out.contains("TLS key is not the pinned one") && out.contains(&fingerprint(&s).to_string()),
        "a clear error naming the pinned key: {out}"
    );
    assert!(out.contains("nothing was written to the zone"), "{out}");
    assert!(
        relay.failed_handshakes() >= 1,
        "the phone aborted the handshake"
    );
    assert_eq!(relay.read_from_phone(), "", "the relay read no request");
    assert!(!relay.read_from_phone().contains(&code));
    assert_eq!(zone_files(&p), before, "nothing written to the zone");
    assert!(!p.zone.join("device.json").exists());
    let st = p.cmd(&["status"]);
    assert!(st.contains("status: not enrolled"), "{st}");

    // The same phone, the same code, the real endpoint.
    let (ok, out) = p.try_enrol(&uri);
    assert!(ok && out.contains("enrolled: device d-"), "{out}");
    let ev = events(&s);
    assert!(
        !ev.contains("enrolment-refused"),
        "the relay reached nothing: {ev}"
    );
}

/// A plain TCP server that answers every request with the enrolment endpoint's EULA, as a
/// plain-HTTP impostor would; it keeps every byte it received.
fn plain_http_impostor() -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = tcp.read(&mut buf) {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            let body = r#"{"version":"2026-1","text":"Be nice.","published_at_ms":1}"#;
            let _ = write!(
                tcp,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, got)
}

/// Threat 12: a plain-HTTP enrolment server is refused: an `http://` endpoint before anything
/// is sent, and a URI pointing at a port that answers plain HTTP (a fake enrolment server, or
/// the admin API's loopback listener) at the TLS handshake. Nothing is written to the zone,
/// the code never leaves the phone, and it still enrols the real phone.
#[test]
fn plain_http_enrolment_servers_are_refused() {
    let s = server();
    let uri = enrol_uri(&s, "alice");
    let parsed: api::EnrolUri = uri.parse().unwrap();
    let fp = fingerprint(&s).to_string();
    let mut p = Phone::init("software");
    let before = zone_files(&p);
    let zone = p.zone.to_str().unwrap().to_owned();

    let refused = |args: &[&str]| {
        let out = dev_output(&[], args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        text
    };
    for server in [format!("http://{}", s.enrol), format!("http://{}", s.http)] {
        let out = refused(&[
            "enroll",
            "--zone",
            &zone,
            "--server",
            &server,
            "--fingerprint",
            &fp,
            "--code",
            &parsed.code,
            "--accept-eula",
        ]);
        assert!(out.contains("plain http:// is refused"), "{out}");
    }
    let out = refused(&[
        "enroll",
        "--zone",
        &zone,
        &format!("http://{}/?code={}&fp={fp}", s.http, parsed.code),
        "--accept-eula",
    ]);
    assert!(out.contains("plain http:// is refused"), "{out}");

    let (impostor, got) = plain_http_impostor();
    for plain in [impostor, s.http] {
        let (ok, out) = p.try_enrol(&uri.replace(&s.enrol.to_string(), &plain.to_string()));
        assert!(!ok, "{out}");
        assert!(out.contains("does not speak TLS"), "{out}");
        assert!(out.contains("nothing was written to the zone"), "{out}");
    }
    let got = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(!got.is_empty(), "the impostor was reached");
    assert!(
        !got.contains(&parsed.code) && !got.contains("HTTP/1.1"),
        "it got a TLS hello only"
    );
    assert_eq!(zone_files(&p), before, "nothing written to the zone");

    let (ok, out) = p.try_enrol(&uri);
    assert!(ok && out.contains("enrolled: device d-"), "{out}");
}

/// Threat 12 / R28: a code is bound to the first zone key that presents it, even when that
/// enrolment never finished (here the pool was empty): the zone of whoever copied the code
/// is refused, and the phone enrols once the operator refills the pool. A relay that a phone
/// was tricked into trusting copies the code on its way, but cannot enrol its own zone with
/// it either.
#[test]
fn a_presented_code_is_bound_to_the_first_zone_key() {
    let s = server_without_pool();
    let uri = enrol_uri(&s, "alice");
    let mut phone = Phone::init("software");
    let (ok, out) = phone.try_enrol(&uri);
    assert!(!ok && out.contains("pool_exhausted"), "{out}");
    assert!(out.contains("nothing was written to the zone"), "{out}");

    let mut thief = Phone::init("software");
    let (ok, out) = thief.try_enrol(&uri);
    assert!(!ok, "{out}");
    assert!(
        out.contains("code_bound") && out.contains("another trusted zone"),
        "{out}"
    );
    let ev = events(&s);
    assert!(ev.contains("another trusted zone"), "recorded: {ev}");

    load_pool(&s);
    let (ok, out) = thief.try_enrol(&uri);
    assert!(!ok && out.contains("code_bound"), "still refused: {out}");
    let (ok, out) = phone.try_enrol(&uri);
    assert!(ok && out.contains("enrolled: device d-"), "{out}");

    // A phone given a doctored URI that pins the relay's key: the relay reads the code,
    // passes the request on and answers the phone 502. Its own zone gets nothing with it.
    let uri2 = enrol_uri(&s, "alice");
    let code2 = uri2.parse::<api::EnrolUri>().unwrap().code;
    let mitm = tempfile::tempdir().unwrap();
    let own = identity(mitm.path());
    let relays_key = own.fingerprint;
    let relay = Relay::start(own, s.enrol, fingerprint(&s), true);
    let doctored = api::EnrolUri {
        authority: relay.addr.to_string(),
        code: code2.clone(),
        fingerprint: relays_key,
    };
    let mut tricked = Phone::init("software");
    let (ok, out) = tricked.try_enrol(&doctored.to_string());
    assert!(!ok && out.contains("502"), "{out}");
    assert!(
        relay.read_from_phone().contains(&code2),
        "the relay copied the code"
    );
    let mut relays_zone = Phone::init("software");
    let (ok, out) = relays_zone.try_enrol(&uri2);
    assert!(!ok, "{out}");
    assert!(
        out.contains("code_invalid") || out.contains("code_bound"),
        "{out}"
    );
}
