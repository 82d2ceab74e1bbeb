//! The phone's PSTN leg end to end (issue #4; SPEC R11–R19): real `trustring serve
//! --gateway`, a real `trustring gateway`, the enrolled phone attached to it with `trustring
//! device run --attach` (software zone), plain lines (`trustring line`), SIPp callers and
//! desktops, all on 127.0.0.1.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::phone::{PIN, Phone, enrol};
use common::proc::Proc;
use common::{Server, caller, device, free_port, serial, sipp};

const WAIT: Duration = Duration::from_secs(45);
const NUMBER: &str = "+15551230001";
const OTHER: &str = "+15559990000";
/// A 1 kHz tone at amplitude 8000 is this 8-sample cycle (G.711 of 0, ±5657, ±8000).
const TONE_PCMU: [u8; 8] = [0xff, 0xa9, 0xa0, 0xa9, 0xff, 0x29, 0x20, 0x29];
const TONE_PCMA: [u8; 8] = [0xd5, 0x83, 0x8a, 0x83, 0xd5, 0x03, 0x0a, 0x03];

/// Server (with alice, bob, a pool and an EULA), gateway, and alice's enrolled phone with
/// its number.
struct Rig {
    s: Server,
    gw: Proc,
    gw_sip: SocketAddr,
    gw_http: SocketAddr,
    gw_data: PathBuf,
    lines: SocketAddr,
    phone: Phone,
    dir: tempfile::TempDir,
}

fn trustring() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trustring"))
}

fn rig(gateway_flags: &[&str]) -> Rig {
    let gw_sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = Server::start_args(&["--gateway", &gw_sip.to_string()]);
    s.add_subscriber("alice", "s3cret");
    s.add_subscriber("bob", "bobpw");
    let (c, b) = s.api(
        "POST",
        "/api/v1/pools/numbers",
        Some(r#"{"range":"+15550100000..+15550100009"}"#),
    );
    assert_eq!(c, 200, "{b}");
    let (c, b) = s.api(
        "POST",
        "/api/v1/eulas",
        Some(r#"{"version":"1","text":"ok"}"#),
    );
    assert_eq!(c, 201, "{b}");
    let mut phone = enrol(&s, "software");
    let out = phone.cmd(&["number", NUMBER]);
    assert!(out.contains(&format!("number {NUMBER} set")), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let gw_data = dir.path().join("gw");
    let lines: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = trustring();
    cmd.args(["gateway", "--sip", &gw_sip.to_string()])
        .args(["--lines", &lines.to_string()])
        .args(["--http", &gw_http.to_string()])
        .arg("--trunk-secret-file")
        .arg(s.data.join("trunk-secret"))
        .arg("--data")
        .arg(&gw_data)
        .args(gateway_flags)
        .env("TRUSTRING_LOG", "info");
    let gw = Proc::spawn(cmd, dir.path().join("gw.out"), false);
    gw.wait_for("gateway ready");
    Rig {
        s,
        gw,
        gw_sip,
        gw_http,
        gw_data,
        lines,
        phone,
        dir,
    }
}

impl Rig {
    /// `trustring device run --attach` for the enrolled phone.
    fn attach_phone(&self, flags: &[&str], stdin: bool) -> Proc {
        let mut cmd = trustring();
        cmd.args(["device", "run", "--zone"])
            .arg(&self.phone.zone)
            .args(["--attach", &self.lines.to_string()])
            .args(flags)
            .env("TRUSTRING_ZONE_PIN", PIN);
        let p = Proc::spawn(cmd, self.dir.path().join("phone.out"), stdin);
        p.wait_for(&format!("attached as {NUMBER}"));
        p
    }

    /// A plain PSTN line with `number`.
    fn line(&self, number: &str, flags: &[&str]) -> Proc {
        let mut cmd = trustring();
        cmd.args(["line", "--attach", &self.lines.to_string()])
            .args(["--number", number])
            .args(flags);
        let p = Proc::spawn(cmd, self.dir.path().join(format!("line{number}.out")), true);
        p.wait_for(&format!("attached as {number}"));
        p
    }

    /// The gateway's `/metrics`: value of the sample line starting with `series `.
    fn metric(&self, series: &str) -> f64 {
        let mut s = std::net::TcpStream::connect(self.gw_http).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    }

    /// The server's CDRs (waits for `n`).
    fn server_cdrs(&self, n: usize) -> serde_json::Value {
        wait_cdrs(&self.s.data, n)
    }

    /// The gateway's leg records (waits for `n`).
    fn gateway_records(&self, n: usize) -> serde_json::Value {
        wait_cdrs(&self.gw_data, n)
    }
}

fn cdr_export(data: &Path) -> serde_json::Value {
    let out = trustring()
        .args(["cdr", "export", "--format", "json", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_cdrs(data: &Path, n: usize) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let v = cdr_export(data);
        let len = v["records"].as_array().map_or(0, Vec::len);
        if len >= n || t0.elapsed() > Duration::from_secs(10) {
            assert_eq!(len, n, "{v:#}");
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn verify(data: &Path) -> (bool, String) {
    let out = trustring()
        .args(["cdr", "verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The leg of `cdr` of type `leg_type`.
fn leg<'a>(cdr: &'a serde_json::Value, leg_type: &str) -> &'a serde_json::Value {
    cdr["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["leg_type"] == leg_type)
        .unwrap_or_else(|| panic!("no {leg_type} leg in {cdr:#}"))
}

/// An authenticated caller (bob) of alice running `scenario`.
fn bob(s: &Server, scenario: &str) -> common::SippBuilder {
    caller(s, scenario)
        .key("caller", "bob")
        .arg("-au")
        .arg("bob")
        .arg("-ap")
        .arg("bobpw")
        .arg("-auth_uri")
        .arg("alice@localhost")
}

/// Writes `secs` seconds of the 1 kHz tone in `law` (headerless: SIPp's rtp_stream sends
/// the file byte for byte).
fn tone_file(dir: &Path, pcma: bool, secs: usize) -> PathBuf {
    let cycle = if pcma { TONE_PCMA } else { TONE_PCMU };
    let path = dir.join(if pcma { "tone.pcma" } else { "tone.pcmu" });
    let bytes: Vec<u8> = cycle.iter().copied().cycle().take(8000 * secs).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The 1 kHz tone is in the recording: dominant frequency and purity over its middle.
fn assert_tone(wav: &Path) {
    let w = media::wav::read(std::fs::File::open(wav).unwrap()).unwrap();
    assert_eq!(w.rate, 8000);
    let n = w.samples.len();
    assert!(
        n > 8000,
        "less than a second of audio recorded: {n} samples"
    );
    let mid = &w.samples[n / 4..n * 3 / 4];
    let f = media::tone::dominant_frequency(mid, 8000);
    let purity = media::tone::tone_purity(mid, 1000.0, 8000);
    eprintln!(
        "recorded {} ms; dominant {f} Hz, 1 kHz purity {purity:.3}",
        n / 8
    );
    assert!((f - 1000.0).abs() <= 20.0, "dominant frequency {f} Hz");
    assert!(purity > 0.9, "tone purity {purity}");
}

/// A call answered by the phone through the gateway with audio from the caller; the gateway's
/// PSTN law `law`, the caller offering `codecs` and sending payload type `pt`.
fn audio_call(law: &str, codecs: &str, pt: u8) {
    let _g = serial();
    let mut r = rig(&["--law", law]);
    let wav = r.dir.path().join("heard.wav");
    let mut phone = r.attach_phone(
        &[
            "--answer-after-ms",
            "400",
            "--record",
            wav.to_str().unwrap(),
        ],
        false,
    );
    let mut desk = device(&r.s, "uas-ring-cancel.xml", 0, false);
    let tone = tone_file(r.dir.path(), pt == 8, 2);
    bob(&r.s, "gw-uac-call-audio.xml")
        .key("sdp_codecs", codecs)
        .key("rtp_pt", &pt.to_string())
        .key("rtp_stream", &format!("{},-1,{pt}", tone.display()))
        .key("hold_ms", "2500")
        .run_ok();
    desk.expect_ok(WAIT);
    // The caller's BYE reached the phone as REL with normal clearing.
    phone.wait_for("cause 16");
    let out = phone.stop();
    assert!(out.contains("trust challenge"), "{out}");
    assert_tone(&wav);

    let cdrs = r.server_cdrs(1);
    let cdr = &cdrs["records"][0];
    assert_eq!(cdr["final_status"], 200);
    let pstn = leg(cdr, "pstn");
    assert_eq!(pstn["outcome"], "answered", "{cdr:#}");
    assert_eq!(
        pstn["billing_entity"], "alice",
        "PSTN legs are billed to the user"
    );
    assert!(pstn["billable_ms"].as_i64().unwrap() > 1000);
    let voip = leg(cdr, "voip");
    assert_eq!(voip["outcome"], "cancelled-elsewhere");
    assert_eq!(voip["billing_entity"], "acme");
    let gw = r.gateway_records(1);
    let rec = &gw["records"][0];
    assert_eq!(rec["call_id"], cdr["call_id"], "the two records are linked");
    assert_eq!(rec["called"], format!("tel:{NUMBER}"));
    assert_eq!(rec["legs"][0]["outcome"], "answered");
    assert_eq!(rec["legs"][0]["leg_type"], "pstn");
    assert!(
        rec["release_cause"].as_str().unwrap().contains("cause 16"),
        "{rec:#}"
    );
    assert_eq!(
        r.metric("trustring_gateway_calls_total{outcome=\"answered\"}"),
        1.0
    );
    assert_eq!(
        r.metric("trustring_gateway_isup_messages_total{type=\"IAM\",direction=\"out\"}"),
        1.0
    );
    assert!(r.metric("trustring_gateway_rtp_packets_total{direction=\"in\"}") >= 100.0);
    assert!(
        r.metric("trustring_gateway_isup_messages_total{type=\"FRM\",direction=\"out\"}") >= 100.0
    );
    let transcoded = r.metric("trustring_gateway_transcoded_calls_total");
    assert_eq!(transcoded, if law == "pcma" { 1.0 } else { 0.0 });
    for data in [&r.s.data, &r.gw_data] {
        let (ok, out) = verify(data);
        assert!(ok, "{out}");
    }
    // Threat 9 on the gateway's records too: an edited record is named.
    let log = r.gw.stop();
    assert!(
        pt == 0 && law == "pcmu" || log.contains("transcoding"),
        "{log}"
    );
    let db = rusqlite::Connection::open(r.gw_data.join("trustring.db")).unwrap();
    db.execute_batch("DROP TRIGGER cdrs_no_update;").unwrap();
    let n = db
        .execute(
            "UPDATE cdrs SET body = replace(body, '\"answered\"', '\"busy\"')",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let (ok, out) = verify(&r.gw_data);
    assert!(!ok && out.contains("CDR 1:"), "{out}");
}

#[test]
fn phone_answers_through_the_gateway_and_audio_crosses() {
    audio_call("pcmu", "0 8", 0);
}

#[test]
fn caller_with_the_other_g711_law_is_transcoded() {
    // The PSTN side is A-law; the caller offers only µ-law.
    audio_call("pcma", "0", 0);
}

#[test]
fn desktop_answers_and_the_phone_gets_rel_non_selected_user_clearing() {
    let _g = serial();
    let r = rig(&[]);
    let mut phone = r.attach_phone(&[], false);
    let mut desk = device(&r.s, "uas-answer.xml", 1500, false);
    bob(&r.s, "uac-call-auth.xml").run_ok();
    desk.expect_ok(WAIT);
    phone.wait_for("cause 26");
    let out = phone.stop();
    assert!(out.contains("incoming call"), "{out}");
    let cdrs = r.server_cdrs(1);
    let cdr = &cdrs["records"][0];
    assert_eq!(leg(cdr, "voip")["outcome"], "answered");
    assert_eq!(leg(cdr, "pstn")["outcome"], "cancelled-elsewhere");
    let gw = r.gateway_records(1);
    assert_eq!(
        gw["records"][0]["legs"][0]["outcome"],
        "cancelled-elsewhere"
    );
}

#[test]
fn busy_phone_maps_to_486() {
    let _g = serial();
    let r = rig(&[]);
    let mut phone = r.attach_phone(&["--busy"], false);
    caller(&r.s, "uac-busy.xml").run_ok();
    let out = phone.stop();
    assert!(out.contains("cause 17"), "{out}");
    let cdrs = r.server_cdrs(1);
    let cdr = &cdrs["records"][0];
    assert_eq!(cdr["final_status"], 486);
    assert_eq!(leg(cdr, "pstn")["outcome"], "busy");
    let gw = r.gateway_records(1);
    assert_eq!(gw["records"][0]["legs"][0]["outcome"], "busy");
}

#[test]
fn carrier_voicemail_does_not_steal_the_call() {
    let _g = serial();
    let r = rig(&["--voicemail-after-ms", "300"]);
    // The phone is busy: the carrier's voicemail answers at once, without a trust proof.
    let mut phone = r.attach_phone(&["--busy"], false);
    // The desktop answers after 3 s; a CANCEL before that fails it.
    let mut desk = device(&r.s, "uas-answer.xml", 3000, false);
    bob(&r.s, "uac-call-auth.xml").run_ok();
    desk.expect_ok(WAIT);
    phone.stop();
    let cdrs = r.server_cdrs(1);
    let cdr = &cdrs["records"][0];
    assert_eq!(leg(cdr, "voip")["outcome"], "answered", "{cdr:#}");
    assert_eq!(leg(cdr, "pstn")["outcome"], "no-answer", "{cdr:#}");
    let gw = r.gateway_records(1);
    assert_eq!(gw["records"][0]["legs"][0]["outcome"], "voicemail");
    let (c, events) = r.s.api("GET", "/api/v1/security-events", None);
    assert_eq!(c, 200);
    assert!(
        !events.contains("missing-proof"),
        "voicemail is not an attack: {events}"
    );
}

#[test]
fn direct_invite_to_the_gateway_is_refused_and_logged() {
    let _g = serial();
    let mut r = rig(&[]);
    let _phone = r.attach_phone(&["--answer-after-ms", "0"], false);
    sipp("gw-uac-direct.xml")
        .target(&r.gw_sip.to_string())
        .run_ok();
    assert_eq!(
        r.metric("trustring_gateway_refused_invites_total{reason=\"no-challenge\"}"),
        1.0
    );
    let log = r.gw.stop();
    assert!(log.contains("INVITE refused (toll-fraud check)"), "{log}");
    // Anyone can send such packets: they are logged and counted, never stored (a record per
    // packet would let them fill the disk).
    let gw = cdr_export(&r.gw_data);
    assert_eq!(gw["records"].as_array().map(Vec::len), Some(0), "{gw:#}");
}

#[test]
fn no_common_codec_gets_488() {
    let _g = serial();
    let r = rig(&[]);
    let _phone = r.attach_phone(&["--answer-after-ms", "0"], false);
    bob(&r.s, "gw-uac-call-488.xml").run_ok();
    let gw = r.gateway_records(1);
    assert_eq!(gw["records"][0]["final_status"], 488);
}

#[test]
fn call_swap_hold_take_a_pstn_call_and_resume() {
    let _g = serial();
    let r = rig(&[]);
    let mut phone = r.attach_phone(&["--answer-after-ms", "300"], true);
    let mut other = r.line(OTHER, &[]);
    let mut call = bob(&r.s, "gw-uac-hold-wait.xml").spawn();
    phone.wait_for("answered");
    // Hold the VoIP call (re-INVITE a=sendonly to the caller) and take a direct PSTN call.
    phone.say("hold");
    phone.wait_for("on hold");
    other.say(&format!("dial {NUMBER}"));
    phone.wait_count("incoming call", 2);
    phone.wait_count("answered", 2);
    other.wait_for("answered");
    other.say("hangup");
    phone.wait_for("released by the exchange, cause 16");
    // Back to the first call (re-INVITE a=sendrecv); the caller then hangs up.
    phone.say("resume");
    call.expect_ok(WAIT);
    phone.wait_count("cause 16", 2);
    phone.stop();
    other.stop();
    let cdrs = r.server_cdrs(1);
    assert_eq!(
        leg(&cdrs["records"][0], "pstn")["outcome"],
        "answered",
        "{cdrs:#}"
    );
    let gw = r.gateway_records(2);
    let recs = gw["records"].as_array().unwrap();
    let direct = recs
        .iter()
        .find(|r| r["caller"] == format!("tel:{OTHER}"))
        .unwrap_or_else(|| panic!("no direct call record: {gw:#}"));
    assert_eq!(direct["legs"][0]["outcome"], "answered");
    assert_eq!(
        direct["legs"][0]["billing_entity"], OTHER,
        "the PSTN caller pays"
    );
    let sip_leg = recs
        .iter()
        .find(|r| r["call_id"] == cdrs["records"][0]["call_id"])
        .unwrap();
    assert_eq!(sip_leg["legs"][0]["billing_entity"], NUMBER);
}

#[test]
fn per_number_caps_refuse_pstn_legs_beyond_them() {
    let _g = serial();
    // SECURITY threat 3: one PSTN leg per minute per number.
    let r = rig(&["--max-calls-per-minute", "1"]);
    let mut phone = r.attach_phone(&["--busy"], false);
    caller(&r.s, "uac-busy.xml").run_ok();
    // The second call within the minute never reaches the line: the gateway refuses it.
    caller(&r.s, "uac-busy.xml").run_fails();
    let out = phone.stop();
    assert_eq!(out.matches("incoming call").count(), 1, "{out}");
    assert_eq!(
        r.metric("trustring_gateway_refused_invites_total{reason=\"rate-cap\"}"),
        1.0
    );
    let gw = r.gateway_records(2);
    let refused = &gw["records"][1];
    assert_eq!(refused["legs"][0]["outcome"], "refused");
    assert!(
        refused["release_cause"]
            .as_str()
            .unwrap()
            .contains("rate cap"),
        "{refused:#}"
    );
    // A spend cap of 0 answered minutes a day refuses every leg.
    let r = rig(&["--max-minutes-per-day", "0"]);
    let _phone = r.attach_phone(&["--busy"], false);
    caller(&r.s, "uac-busy.xml").run_fails();
    assert_eq!(
        r.metric("trustring_gateway_refused_invites_total{reason=\"spend-cap\"}"),
        1.0
    );
}
