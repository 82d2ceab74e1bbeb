//! Trusted provisioning end to end (issue #3; SPEC R3–R10, R14): the real `trustring serve`,
//! real `trustring device` phones (software zone and a SoftHSM2 PKCS#11 zone), SIPp callers
//! and desktops on 127.0.0.1.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::phone::{PIN, Phone, enrol};
use common::proc::Proc;
use common::{Server, caller, device, serial, sipp};

const WAIT: Duration = Duration::from_secs(45);
/// The pool every test loads: ten identifiers that must never show up anywhere.
const POOL: &str = "+15550100000..+15550100009";

fn identifiers() -> Vec<String> {
    (0..10).map(|i| format!("+1555010000{i}")).collect()
}

/// A server with alice (desktop password s3cret), the pool and an EULA.
fn server() -> Server {
    let s = Server::start();
    s.add_subscriber("alice", "s3cret");
    let (c, b) = s.api(
        "POST",
        "/api/v1/pools/numbers",
        Some(&format!(r#"{{"range":"{POOL}"}}"#)),
    );
    assert_eq!(c, 200, "{b}");
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
    let out = p.zone.join(format!("run-{}.out", common::free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trustring"));
    cmd.args(["device", "run", "--zone"])
        .arg(&p.zone)
        .args(["--sip-server", &s.target()])
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
    let mut p = enrol(&s, backend);
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
#[test]
fn phone_without_proof_never_connects() {
    let _g = serial();
    let s = server();
    let p = enrol(&s, "software");
    let cfg = p.device_json();
    // A forged phone: SIPp with the device's credentials, answering at once with no proof.
    let mut forged = sipp("uas-answer.xml").arg("-d").arg("0").spawn();
    std::thread::sleep(Duration::from_millis(150));
    sipp("register.xml")
        .arg("-s")
        .arg("alice")
        .arg("-au")
        .arg(cfg["sip_username"].as_str().unwrap())
        .arg("-ap")
        .arg(cfg["sip_password"].as_str().unwrap())
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
    let regs = s.registrations("alice");
    assert!(regs.contains(&format!("trustring-device={id}")), "{regs}");
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
