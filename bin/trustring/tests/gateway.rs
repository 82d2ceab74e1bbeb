//! The phone's PSTN leg end to end (issue #4; SPEC R11–R19, R27, R29): real `trustring serve
//! --gateway --gateway-fp` dialling a real `trustring gateway` over SIP over TLS (issue #11),
//! the enrolled phone attached to it over TLS with
//! `trustring device run --attach URI` (software zone; the gateway has the server check the
//! zone's proof of the phone's key before it gives the line the number), plain lines
//! (`trustring line`, numbers listed with `--plain-line`), SIPp callers and desktops, an SRTP
//! caller written with `media::srtp` (`gateway/srtp_caller.rs`), and raw TR-ISUP clients
//! playing squatters and a line that stops reading, all on 127.0.0.1.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
#[path = "gateway/srtp_caller.rs"]
mod srtp_caller;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use media::g711::Law;
use media::srtp::{Crypto, SrtpContext, SrtpError, Suite};
use pstn::msg::{Cic, FRAME_LEN, Iam, Message, Number};
use srtp_caller::{SrtpCaller, fresh_crypto};

use common::phone::{PIN, Phone, enrol};
use common::proc::Proc;
use common::{Server, caller, device, free_port, serial, sipp};

const WAIT: Duration = Duration::from_secs(45);
const NUMBER: &str = "+15551230001";
const OTHER: &str = "+15559990000";
/// A second plain PSTN line.
const THIRD: &str = "+15559990001";
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
    /// The line port's TLS key fingerprint (`None`: plain lines).
    lines_fp: Option<String>,
    phone: Phone,
    dir: tempfile::TempDir,
}

fn trustring() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trustring"))
}

/// Which key the server pins for the gateway's SIP trunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// The gateway's own (made in its data directory before either starts).
    Gateway,
    /// Another key: the gateway cannot complete a handshake with the server.
    Other,
}

fn rig(gateway_flags: &[&str]) -> Rig {
    rig_pinned(gateway_flags, Pin::Gateway)
}

fn rig_pinned(gateway_flags: &[&str], pin: Pin) -> Rig {
    let gw_sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw_data = dir.path().join("gw");
    // The gateway's key, made now (as its first start would, under DATA/tls/) so that the
    // server can pin it: the operator copies the fingerprint the gateway prints.
    let names = vec!["127.0.0.1".to_owned()];
    let gw_identity =
        tls::ServerIdentity::load_or_create(&gw_data.join("tls"), None, None, &names).unwrap();
    let pinned = match pin {
        Pin::Gateway => gw_identity.fingerprint,
        Pin::Other => {
            tls::ServerIdentity::load_or_create(&dir.path().join("other-tls"), None, None, &names)
                .unwrap()
                .fingerprint
        }
    };
    let plain_trunk = gateway_flags.contains(&"--danger-plain-trunk");
    let (pinned_text, gw_sip_text) = (pinned.to_string(), gw_sip.to_string());
    let mut server_args = vec!["--gateway", gw_sip_text.as_str()];
    if plain_trunk {
        server_args.push("--danger-plain-trunk");
    } else {
        server_args.extend(["--gateway-fp", pinned_text.as_str()]);
    }
    let s = Server::start_args(&server_args);
    s.add_subscriber("alice", "s3cret-passw0rd");
    s.add_subscriber("bob", "b0b-passw0rd");
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
        // The server's trust authority, for the lines' attach proofs (R29).
        .args(["--server-api", &format!("http://{}", s.http)])
        .args(["--plain-line", OTHER, "--plain-line", THIRD])
        .args(gateway_flags)
        .env("TRUSTRING_LOG", "info");
    let gw = Proc::spawn(cmd, dir.path().join("gw.out"), false);
    gw.wait_for("gateway ready");
    let lines_fp = gw.text().lines().find_map(|l| {
        l.strip_prefix("gateway line TLS fingerprint: ")
            .map(|f| f.trim().to_owned())
    });
    assert_eq!(
        lines_fp.is_none(),
        gateway_flags.contains(&"--danger-plain-lines"),
        "{}",
        gw.text()
    );
    // The trunk's key is the one made above (the line port's too), printed for the server.
    let sip_fp = gw.text().lines().find_map(|l| {
        l.strip_prefix("gateway SIP trunk TLS fingerprint: ")
            .map(|f| f.trim().to_owned())
    });
    if plain_trunk {
        assert_eq!(sip_fp, None, "{}", gw.text());
    } else {
        // Nothing listens for SIP over UDP on the trunk's port: no branch can cross in clear.
        assert!(
            std::net::UdpSocket::bind(gw_sip).is_ok(),
            "the gateway holds UDP {gw_sip} with a TLS trunk"
        );
        assert_eq!(
            sip_fp,
            Some(gw_identity.fingerprint.to_string()),
            "{}",
            gw.text()
        );
    }
    Rig {
        s,
        gw,
        gw_sip,
        gw_http,
        gw_data,
        lines,
        lines_fp,
        phone,
        dir,
    }
}

impl Rig {
    /// The attach URI the gateway printed (or, with plain lines, the address and the
    /// explicit flag).
    fn attach_args(&self) -> Vec<String> {
        match &self.lines_fp {
            Some(fp) => vec![
                "--attach".into(),
                format!("trustring-line://{}?fp={fp}", self.lines),
            ],
            None => vec![
                "--attach".into(),
                self.lines.to_string(),
                "--danger-plain-lines".into(),
            ],
        }
    }

    /// `trustring device run --attach URI` for the enrolled phone.
    fn attach_phone(&self, flags: &[&str], stdin: bool) -> Proc {
        let mut cmd = trustring();
        cmd.args(["device", "run", "--zone"])
            .arg(&self.phone.zone)
            .args(self.attach_args())
            .args(flags)
            .env("TRUSTRING_ZONE_PIN", PIN);
        let p = Proc::spawn(cmd, self.dir.path().join("phone.out"), stdin);
        p.wait_for(&format!("attached as {NUMBER}"));
        assert!(p.text().contains("zone key proved"), "{}", p.text());
        p
    }

    /// A plain PSTN line with `number`.
    fn line(&self, number: &str, flags: &[&str]) -> Proc {
        let mut cmd = trustring();
        cmd.arg("line")
            .args(self.attach_args())
            .args(["--number", number])
            .args(flags);
        let p = Proc::spawn(cmd, self.dir.path().join(format!("line{number}.out")), true);
        p.wait_for(&format!("attached as {number}"));
        p
    }

    /// A raw TR-ISUP connection to the line port (TLS with the gateway's key pinned, or
    /// plain with plain lines).
    fn raw(&self) -> RawLine {
        let tcp = TcpStream::connect(self.lines).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stream: Box<dyn ReadWrite> = match &self.lines_fp {
            Some(fp) => {
                let config = tls::pinned_client_config(fp.parse().unwrap()).unwrap();
                let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = tls::rustls::ClientConnection::new(config, name).unwrap();
                Box::new(tls::rustls::StreamOwned::new(conn, tcp))
            }
            None => Box::new(tcp),
        };
        RawLine {
            stream,
            dec: pstn::Decoder::new(),
        }
    }

    /// The gateway's `/metrics`: value of the sample line starting with `series `.
    fn metric(&self, series: &str) -> f64 {
        let mut s = TcpStream::connect(self.gw_http).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
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

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A TR-ISUP peer written by hand: what a squatter (or a line that stops reading) sends.
struct RawLine {
    stream: Box<dyn ReadWrite>,
    dec: pstn::Decoder,
}

impl RawLine {
    fn send(&mut self, m: &Message) {
        let bytes = pstn::codec::encode_to_vec(m).unwrap();
        self.stream.write_all(&bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// The next message within `limit` (`None`: the gateway closed the connection, or
    /// nothing came).
    fn recv(&mut self, limit: Duration) -> Option<Message> {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.dec.pop() {
                return Some(m.unwrap());
            }
            if t0.elapsed() > limit {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.push(&buf[..n]).unwrap(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next message that is not a bearer frame.
    fn recv_signal(&mut self, limit: Duration) -> Option<Message> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            match self.recv(limit.saturating_sub(t0.elapsed())) {
                Some(Message::Frm { .. }) => {}
                other => return other,
            }
        }
        None
    }

    /// Whether the gateway closes the connection within `limit` (every message read on
    /// the way is returned).
    fn closed_within(&mut self, limit: Duration) -> (bool, Vec<Message>) {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < limit {
            while let Some(m) = self.dec.pop() {
                seen.push(m.unwrap());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return (true, seen),
                Ok(n) => self.dec.push(&buf[..n]).unwrap(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // A reset, or TLS ended without close_notify: closed all the same.
                Err(_) => return (true, seen),
            }
        }
        (false, seen)
    }

    /// ATT with `number`; the gateway's first answer.
    fn attach(&mut self, number: &str) -> Message {
        self.send(&Message::Att {
            number: Number::new(number).unwrap(),
            device: None,
        });
        self.recv(Duration::from_secs(10))
            .expect("an answer to ATT")
    }
}

fn num(s: &str) -> Number {
    Number::new(s).unwrap()
}

/// A line's IAM for `called` on its first circuit.
fn dial(called: &str) -> Message {
    Message::Iam(Iam {
        cic: Cic(1),
        called: num(called),
        calling: None,
        challenge: None,
        call_ref: None,
        branch: None,
    })
}

/// The gateway's resident memory, kB (`VmRSS` of /proc/PID/status).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
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
        .arg("b0b-passw0rd")
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
        // Signed, each with its own key (threat 18).
        assert!(out.contains("1 record(s) signed"), "{out}");
    }
    let public_key = |data: &Path| {
        let out = trustring()
            .args(["cdr", "public-key", "--data"])
            .arg(data)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_ne!(public_key(&r.s.data), public_key(&r.gw_data));
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

/// Over a plain UDP trunk (`--danger-plain-trunk` on both sides), anyone on the path can
/// send the gateway INVITEs: Trunk-Auth refuses them.
#[test]
fn direct_invite_to_the_gateway_is_refused_and_logged() {
    let _g = serial();
    let mut r = rig(&["--danger-plain-trunk"]);
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

/// Over the TLS trunk, a client that completes a handshake (anyone may: the gateway asks no
/// client certificate) still gets 403 for an INVITE the server did not make (no challenge,
/// no Trunk-Auth), over the connection it came on.
#[test]
fn direct_invite_over_tls_is_refused_by_trunk_auth() {
    let _g = serial();
    let r = rig(&[]);
    let fp = r.lines_fp.clone().expect("one key for lines and trunk");
    let tcp = TcpStream::connect(r.gw_sip).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = tls::pinned_client_config(fp.parse().unwrap()).unwrap();
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = tls::rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = tls::rustls::StreamOwned::new(conn, tcp);
    let local = stream.get_ref().local_addr().unwrap();
    let invite = format!(
        "INVITE sip:{NUMBER}@{};user=phone;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-direct-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:mallory@127.0.0.1>;tag=m1\r\n\
         To: <sip:{NUMBER}@{}>\r\n\
         Call-ID: direct-tls-1@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:mallory@{local};transport=tls>\r\n\
         Content-Length: 0\r\n\r\n",
        r.gw_sip, r.gw_sip
    );
    stream.write_all(invite.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&got).contains("SIP/2.0 403") && t0.elapsed() < WAIT {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("SIP/2.0 403"), "{text}");
    assert_eq!(
        r.metric("trustring_gateway_refused_invites_total{reason=\"no-challenge\"}"),
        1.0
    );
    assert!(r.gw.text().contains("INVITE refused (toll-fraud check)"));
}

/// The server pins another key than the gateway's: its TLS handshake fails, the gateway
/// gets no INVITE (the phone does not ring, no leg record), the server says why, and the
/// call still completes on the desktop.
#[test]
fn a_gateway_with_another_key_gets_no_invite_and_the_desktop_answers() {
    let _g = serial();
    let r = rig_pinned(&[], Pin::Other);
    let mut phone = r.attach_phone(&[], false);
    let mut desk = device(&r.s, "uas-answer.xml", 500, false);
    bob(&r.s, "uac-call-auth.xml").run_ok();
    desk.expect_ok(WAIT);
    let cdrs = r.server_cdrs(1);
    assert_eq!(
        leg(&cdrs["records"][0], "voip")["outcome"],
        "answered",
        "{cdrs:#}"
    );
    // The phone's branch failed at the handshake (503, RFC 3261 §16.9), not by a timeout.
    assert_eq!(
        leg(&cdrs["records"][0], "pstn")["outcome"],
        "failed",
        "{cdrs:#}"
    );
    let log = r.s.log_text();
    assert!(
        log.contains("TLS connect to the gateway failed"),
        "the server says why the gateway got nothing: {log}"
    );
    assert!(
        log.contains("server key does not match the pinned fingerprint"),
        "{log}"
    );
    let gw = r.gw.text();
    assert!(
        !gw.contains("SIP trunk TLS connection from the server"),
        "no session with the gateway: {gw}"
    );
    assert!(gw.contains("SIP trunk TLS handshake failed"), "{gw}");
    let out = phone.stop();
    assert!(
        !out.contains("incoming call"),
        "the phone did not ring: {out}"
    );
    // With the right key this leg ends "cancelled-elsewhere" (the test above).
    assert_eq!(
        r.metric("trustring_gateway_calls_total{outcome=\"cancelled-elsewhere\"}"),
        0.0
    );
    let records = cdr_export(&r.gw_data);
    assert_eq!(
        records["records"].as_array().map(Vec::len),
        Some(0),
        "{records:#}"
    );
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

/// `trustring line` (no trusted zone) claiming the phone's number: (success, output).
fn plain_line_claims(r: &Rig, number: &str) -> (bool, String) {
    let out = trustring()
        .arg("line")
        .args(r.attach_args())
        .args(["--number", number])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `ctr` of a `Trust-Challenge` value.
fn counter_of(challenge: &str) -> &str {
    challenge
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ctr="))
        .unwrap()
}

/// A squatter's whole attempt with a wrong proof: ATT, the gateway's ATC, a well-formed
/// proof that is not the zone's; the gateway answers ATR and closes.
fn squat_with_a_wrong_proof(r: &Rig) {
    let mut sq = r.raw();
    let Message::Atc {
        challenge,
        call_ref,
        branch,
    } = sq.attach(NUMBER)
    else {
        panic!("the phone's number is challenged");
    };
    assert_eq!(branch, pstn::msg::ATTACH_BRANCH);
    assert!(call_ref.starts_with("attach-"), "{call_ref}");
    let ctr = counter_of(&challenge);
    sq.send(&Message::Atp {
        proof: format!("v=1;ctr={ctr};proof={}", "A".repeat(43)),
    });
    let (closed, seen) = sq.closed_within(Duration::from_secs(10));
    assert!(closed, "a refused line is closed: {seen:?}");
    assert_eq!(
        seen,
        [Message::Atr {
            cause: pstn::Cause::CALL_REJECTED
        }]
    );
}

/// SECURITY threat 13 / R29: squatting the phone's number is refused (no proof, a wrong
/// proof, dialling before or instead of attaching), leaves no IAM at the squatter, no call
/// and no record, and never locks the phone out: the real phone then attaches over TLS and
/// answers a call with its zone's proof, audio included.
#[test]
fn line_squatting_is_refused_and_never_locks_the_phone_out() {
    let _g = serial();
    let mut r = rig(&[]);
    let mut other = r.line(OTHER, &[]);

    // A plain line (no trusted zone) claiming the phone's number.
    let (ok, text) = plain_line_claims(&r, NUMBER);
    assert!(
        !ok && text.contains("proof of the phone's zone key"),
        "{text}"
    );
    // Wrong proofs, more of them than the lockout threshold (5 bad proofs).
    for _ in 0..6 {
        squat_with_a_wrong_proof(&r);
    }
    // No proof: ATT, then a call to another line (with the phone's caller ID, billed to
    // its number, were it switched).
    let mut sq = r.raw();
    assert!(matches!(sq.attach(NUMBER), Message::Atc { .. }));
    sq.send(&dial(OTHER));
    let (closed, seen) = sq.closed_within(Duration::from_secs(10));
    assert!(closed, "{seen:?}");
    assert_eq!(
        seen,
        [Message::Atr {
            cause: pstn::Cause::CALL_REJECTED
        }]
    );
    // Dialling without attaching at all.
    let mut sq = r.raw();
    sq.send(&dial(OTHER));
    let (closed, seen) = sq.closed_within(Duration::from_secs(10));
    assert!(closed, "{seen:?}");
    assert_eq!(
        seen,
        [Message::Atr {
            cause: pstn::Cause::CALL_REJECTED
        }]
    );
    // A number that is neither a phone's nor a listed plain line.
    let mut sq = r.raw();
    assert_eq!(
        sq.attach("+15557770000"),
        Message::Atr {
            cause: pstn::Cause::UNALLOCATED_NUMBER
        }
    );
    assert!(sq.closed_within(Duration::from_secs(10)).0);

    // Nothing reached anyone: no IAM left the gateway, no call was switched or recorded.
    let refused = |reason: &str| {
        r.metric(&format!(
            "trustring_gateway_refused_attaches_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("wrong-proof"), 6.0);
    assert_eq!(refused("no-proof"), 2.0, "the plain line and the dial");
    assert_eq!(refused("not-attached"), 1.0);
    assert_eq!(refused("unassigned"), 1.0);
    assert_eq!(
        r.metric("trustring_gateway_isup_messages_total{type=\"IAM\",direction=\"out\"}"),
        0.0
    );
    assert_eq!(r.metric("trustring_gateway_lines"), 1.0, "only OTHER");
    assert!(!other.text().contains("incoming call"), "{}", other.text());
    let gw = cdr_export(&r.gw_data);
    assert_eq!(gw["records"].as_array().map(Vec::len), Some(0), "{gw:#}");

    // The real phone is not kept out: it attaches over TLS with its zone's proof.
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
    assert!(phone.text().contains("over TLS"), "{}", phone.text());
    // A squatter now cannot take the number from it either.
    squat_with_a_wrong_proof(&r);
    assert_eq!(r.metric("trustring_gateway_lines"), 2.0);

    // And it is not locked out: it answers a call with its proof, and the audio crosses.
    let mut desk = device(&r.s, "uas-ring-cancel.xml", 0, false);
    let tone = tone_file(r.dir.path(), false, 2);
    bob(&r.s, "gw-uac-call-audio.xml")
        .key("sdp_codecs", "0 8")
        .key("rtp_pt", "0")
        .key("rtp_stream", &format!("{},-1,0", tone.display()))
        .key("hold_ms", "2500")
        .run_ok();
    desk.expect_ok(WAIT);
    phone.wait_for("cause 16");
    let out = phone.stop();
    assert!(out.contains("trust challenge"), "{out}");
    assert_tone(&wav);
    let cdrs = r.server_cdrs(1);
    let pstn_leg = leg(&cdrs["records"][0], "pstn");
    assert_eq!(pstn_leg["outcome"], "answered", "{cdrs:#}");
    let (c, events) = r.s.api("GET", "/api/v1/security-events", None);
    assert_eq!(c, 200);
    assert!(
        !events.contains("locked-out") && !events.contains("wrong-proof"),
        "attach failures never count toward the phone's lockout: {events}"
    );
    // One record at the gateway: the real call, on the phone's device.
    let gw = r.gateway_records(1);
    let device_id = r.phone.device_json()["device_id"].clone();
    assert_eq!(gw["records"][0]["legs"][0]["device"], device_id, "{gw:#}");
    let log = r.gw.stop();
    assert!(log.contains("line attach refused"), "{log}");
    other.stop();
}

/// R29: a revocation takes effect at once on an attached line: its next call is not
/// switched, the line is detached, and it cannot attach again.
#[test]
fn a_revoked_phone_is_detached_at_once() {
    let _g = serial();
    let r = rig(&[]);
    let mut other = r.line(OTHER, &[]);
    let mut phone = r.attach_phone(&[], true);
    let id = r.phone.device_json()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (c, b) = r.s.api(
        "POST",
        &format!("/api/v1/devices/{id}/revoke"),
        Some(r#"{"reason":"lost"}"#),
    );
    assert_eq!(c, 200, "{b}");
    phone.say(&format!("dial {OTHER}"));
    phone.wait_for("detached");
    let out = phone.stop();
    assert!(out.contains("the exchange detached the line"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!other.text().contains("incoming call"), "{}", other.text());
    assert_eq!(
        r.metric("trustring_gateway_refused_attaches_total{reason=\"no-longer-holder\"}"),
        1.0
    );
    let gw = cdr_export(&r.gw_data);
    assert_eq!(gw["records"].as_array().map(Vec::len), Some(0), "{gw:#}");
    // Attaching again with the number is refused: no phone holds it any more.
    let out = trustring()
        .args(["device", "run", "--zone"])
        .arg(&r.phone.zone)
        .args(r.attach_args())
        .args(["--number", NUMBER])
        .env("TRUSTRING_ZONE_PIN", PIN)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("refused the attach"),
        "{text}"
    );
    other.stop();
}

/// SECURITY threat 15 / issue 12: a line that stops reading while another sends it 30,000
/// bearer frames leaves the gateway's memory bounded: its frames are dropped and it is
/// closed, never queued without bound.
#[test]
fn a_line_that_stops_reading_leaves_the_gateway_memory_bounded() {
    let _g = serial();
    let r = rig(&["--danger-plain-lines"]);
    let pid = r.gw.pid().unwrap();
    let frm = |cic: Cic, seq: u16| Message::Frm {
        cic,
        seq,
        payload: [0x55; FRAME_LEN],
    };
    // The slow line (THIRD) and the sender (OTHER), both plain PSTN lines.
    let mut slow = r.raw();
    assert!(matches!(slow.attach(THIRD), Message::Ata { .. }));
    let mut sender = r.raw();
    assert!(matches!(sender.attach(OTHER), Message::Ata { .. }));
    sender.send(&dial(THIRD));
    let Some(Message::Iam(iam)) = slow.recv_signal(Duration::from_secs(10)) else {
        panic!("the call reaches the slow line");
    };
    slow.send(&Message::Acm {
        cic: iam.cic,
        proof: None,
    });
    slow.send(&Message::Anm {
        cic: iam.cic,
        proof: None,
    });
    let t0 = Instant::now();
    loop {
        match sender.recv_signal(Duration::from_secs(10)) {
            Some(Message::Anm { .. }) => break,
            Some(_) if t0.elapsed() < Duration::from_secs(10) => {}
            other => panic!("no answer: {other:?}"),
        }
    }
    // Warm up: frames cross while the slow line still reads (in bursts of 50; a burst
    // longer than the line's queue would be dropped, as voice is not buffered).
    let mut got = 0;
    for burst in 0..10u16 {
        for seq in 0..50 {
            sender.send(&frm(Cic(1), burst * 50 + seq));
        }
        let t0 = Instant::now();
        while got < (usize::from(burst) + 1) * 50 && t0.elapsed() < Duration::from_secs(5) {
            if let Some(Message::Frm { .. }) = slow.recv(Duration::from_secs(1)) {
                got += 1;
            }
        }
    }
    assert_eq!(got, 500, "frames cross while the line reads");
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);

    // The line stops reading; 30,000 frames come for it as fast as the sender can write.
    for seq in 0..30_000u32 {
        sender.send(&frm(Cic(1), seq as u16));
    }
    let dropped = || r.metric("trustring_gateway_dropped_frames_total{queue=\"line\"}");
    let closed = || r.metric("trustring_gateway_slow_lines_closed_total");
    // The gateway has read everything once its metrics say the last frames were handled:
    // each frame was either queued for the slow line (at most its queue) or dropped.
    let t0 = Instant::now();
    let mut last = -1.0;
    while t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        let now = r.metric("trustring_gateway_isup_messages_total{type=\"FRM\",direction=\"in\"}");
        if now == last {
            break;
        }
        last = now;
    }
    let after = rss_kb(pid);
    let (dropped, closed) = (dropped(), closed());
    eprintln!(
        "gateway VmRSS before {before} kB, after {after} kB (growth {} kB); frames in {last}, dropped {dropped}, slow lines closed {closed}",
        after.saturating_sub(before)
    );
    assert_eq!(last, 30_500.0, "every frame reached the gateway");
    assert!(
        after.saturating_sub(before) < 10 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // The loopback socket takes a megabyte or so; the rest is dropped, never queued.
    assert!(
        dropped > 10_000.0 || closed >= 1.0,
        "the slow line's frames are dropped (or the line closed): dropped {dropped}, closed {closed}"
    );
    let _ = slow;
}

// ---- SRTP on the gateway's SIP side (issue 11 item 5) ---------------------------------------

fn pcmu_samples(codes: &[u8]) -> Vec<i16> {
    let mut out = Vec::with_capacity(codes.len());
    media::g711::decode_frame(Law::Pcmu, codes, &mut out);
    out
}

/// The base64 of an SDES key as it appears in SDP (`inline:…`).
fn inline_key(c: &Crypto) -> String {
    c.to_value().split("inline:").nth(1).unwrap().to_owned()
}

/// No SDES key appears in any log: the server's, the gateway's, the phone's.
fn assert_no_key_logged(r: &Rig, phone_out: &str, keys: &[&Crypto]) {
    let logs = [
        ("server", r.s.log_text()),
        ("gateway", r.gw.text()),
        ("phone", phone_out.to_owned()),
    ];
    for k in keys {
        let b64 = inline_key(k);
        for (who, text) in &logs {
            assert!(!text.contains(&b64), "an SRTP key is in the {who}'s log");
        }
    }
    assert!(
        r.gw.text().contains("SRTP negotiated (SDES)"),
        "the gateway logs the negotiation (without the key): {}",
        r.gw.text()
    );
}

/// tcpdump on loopback, TCP and UDP `port`, into `pcap`; `None` (said on stderr) when
/// tcpdump is not installed or may not capture here. Under CI (`CI=true`, where `.ci/run`
/// installs tcpdump and runs as root) a capture that cannot run fails the test instead, so
/// the wire check can never be skipped silently there.
fn capture(pcap: &Path, port: u16) -> Option<Proc> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if Command::new("tcpdump").arg("--version").output().is_err() {
        assert!(
            !ci,
            "tcpdump is not installed (CI=true): the wire check cannot run"
        );
        eprintln!("tcpdump is not installed: the capture checks are skipped");
        return None;
    }
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-i", "lo", "-U", "-n", "-s", "0", "-w"])
        .arg(pcap)
        .args(["port", &port.to_string()]);
    let mut p = Proc::spawn(cmd, pcap.with_extension("out"), false);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let text = p.text();
        if text.contains("listening on") {
            return Some(p);
        }
        if text.contains("ermission") || text.contains("not permitted") {
            assert!(!ci, "tcpdump may not capture (CI=true): {text}");
            eprintln!("tcpdump may not capture here: the capture checks are skipped: {text}");
            p.stop();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("tcpdump did not start: {}", p.stop());
}

/// Stops a capture and returns what it wrote.
fn captured(mut p: Proc, pcap: &Path) -> Vec<u8> {
    let out = p.stop();
    eprintln!("tcpdump {}: {}", pcap.display(), out.trim());
    std::fs::read(pcap).unwrap()
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn refused_packets(r: &Rig, reason: &str) -> f64 {
    r.metric(&format!(
        "trustring_gateway_rtp_refused_packets_total{{reason=\"{reason}\"}}"
    ))
}

/// R27 / issue 11 item 5: a caller offering SRTP (RTP/SAVP, SDES) calls the phone through the
/// gateway. The gateway answers RTP/SAVP with the first line it supports (same tag, its own
/// key), the phone hears the caller's 1 kHz tone, and no clear RTP crosses the wire: every
/// packet the caller gets from the gateway is SRTP (it opens only with the gateway's key; with
/// another it fails authentication), and its bytes on the wire are not G.711 of the phone's
/// tone, which they carry. A stranger on another port (clear RTP, or SRTP under its own key)
/// and forged packets from the caller's own address are dropped and counted; no key is logged.
#[test]
fn srtp_caller_is_heard_through_the_gateway_and_no_clear_rtp_is_on_the_wire() {
    let _g = serial();
    let r = rig(&[]);
    // What crosses the trunk (TLS) and, as a control, the caller's own leg (plain UDP, where
    // the caller's offer is in clear): the capture must see the key there and not here.
    let (trunk_pcap, caller_pcap) = (
        r.dir.path().join("trunk.pcap"),
        r.dir.path().join("caller.pcap"),
    );
    let trunk_cap = capture(&trunk_pcap, r.gw_sip.port());
    let caller_cap = trunk_cap
        .as_ref()
        .and_then(|_| capture(&caller_pcap, r.s.sip.port()));
    let wav = r.dir.path().join("heard.wav");
    let mut phone = r.attach_phone(
        &[
            "--answer-after-ms",
            "300",
            "--record",
            wav.to_str().unwrap(),
            "--play-tone",
            "1000",
        ],
        false,
    );
    let mut caller = SrtpCaller::new(r.s.sip);
    let offered = vec![
        fresh_crypto(1, Suite::AesCm128HmacSha1_80),
        fresh_crypto(2, Suite::AesCm128HmacSha1_32),
    ];
    assert_eq!(caller.invite(offered.clone()), 200);
    let gw_key = caller.gateway_crypto.clone().expect("SRTP answered");
    assert_eq!(
        (gw_key.tag, gw_key.suite),
        (1, Suite::AesCm128HmacSha1_80),
        "the first line offered, with the gateway's own key"
    );
    let gw_media = caller.gateway_media.unwrap();

    caller.pump(Duration::from_millis(1000), true);
    // A stranger on another port of this host: clear RTP (a 400 Hz tone that would spoil the
    // phone's recording) and SRTP under a key of its own. Before, RTP latched to whoever
    // sent first; now only the address the caller's SDP announced is heard.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let noise = media::tone::sine(400.0, 0.5, 160, 8000);
    let mut codes = Vec::new();
    media::g711::encode_frame(Law::Pcmu, &noise, &mut codes);
    let mut stranger_srtp = SrtpContext::from_crypto(&fresh_crypto(1, Suite::AesCm128HmacSha1_80));
    for seq in 0..20u16 {
        let mut p = Vec::new();
        media::rtp::write(0, false, seq, u32::from(seq) * 160, 0xbad, &codes, &mut p);
        stranger.send_to(&p, gw_media).unwrap();
        stranger
            .send_to(&stranger_srtp.protect(&p).unwrap(), gw_media)
            .unwrap();
    }
    // Forgeries from the caller's own address: tampered after protection.
    for _ in 0..5 {
        caller.send_tampered();
    }
    caller.pump(Duration::from_millis(1500), true);
    assert_eq!(caller.bye(), 200);
    phone.wait_for("cause 16");
    let phone_out = phone.stop();
    assert!(phone_out.contains("trust challenge"), "{phone_out}");
    // The phone heard the caller's tone, unspoilt by the stranger.
    assert_tone(&wav);

    // What reached the caller: SRTP only, from the address the gateway announced.
    let got = &caller.received;
    assert!(
        got.len() >= 50,
        "the phone's tone came back: {} packets",
        got.len()
    );
    let mut opener = SrtpContext::from_crypto(&gw_key);
    let mut wrong_keys: Vec<SrtpContext> = offered.iter().map(SrtpContext::from_crypto).collect();
    let (mut clear_voice, mut wire_voice) = (Vec::new(), Vec::new());
    for p in got {
        assert_eq!(
            p.from, gw_media,
            "media only from the address in the gateway's SDP"
        );
        let header = media::rtp::parse(&p.bytes).expect("an RTP header (clear under SRTP)");
        assert_eq!(header.payload_type, 0);
        let tag = gw_key.suite.tag_len();
        assert_eq!(
            header.payload.len(),
            FRAME_LEN + tag,
            "160 bytes of voice and the tag"
        );
        wire_voice.extend_from_slice(&header.payload[..FRAME_LEN]);
        for wrong in &mut wrong_keys {
            assert_eq!(
                wrong.unprotect(&p.bytes),
                Err(SrtpError::Auth),
                "another key fails authentication"
            );
        }
        let clear = opener
            .unprotect(&p.bytes)
            .expect("every packet is SRTP under the gateway's key");
        clear_voice.extend_from_slice(media::rtp::parse(&clear).unwrap().payload);
    }
    // Opened, it is the phone's 1 kHz tone; as it travelled, it is not G.711 of any tone.
    let heard = pcmu_samples(&clear_voice);
    let on_wire = pcmu_samples(&wire_voice);
    let mid = |v: &[i16]| v[v.len() / 4..v.len() * 3 / 4].to_vec();
    let (heard, on_wire) = (mid(&heard), mid(&on_wire));
    let opened = media::tone::tone_purity(&heard, 1000.0, 8000);
    let raw = media::tone::tone_purity(&on_wire, 1000.0, 8000);
    eprintln!(
        "caller got {} SRTP packets; opened: {} Hz purity {opened:.3}; as on the wire: {} Hz purity {raw:.3}",
        got.len(),
        media::tone::dominant_frequency(&heard, 8000),
        media::tone::dominant_frequency(&on_wire, 8000),
    );
    assert!(
        opened > 0.9,
        "the opened payload is the phone's tone: {opened}"
    );
    assert!(
        raw < 0.05,
        "the bytes on the wire do not carry the tone in clear: {raw}"
    );
    let cycle = &clear_voice[..8];
    assert!(
        !wire_voice.windows(8).any(|w| w == cycle),
        "no G.711 tone cycle on the wire"
    );

    // Counted: the stranger's 40 packets by source, the 5 forgeries by authentication.
    assert_eq!(r.metric("trustring_gateway_srtp_calls_total"), 1.0);
    assert_eq!(refused_packets(&r, "source"), 40.0);
    assert_eq!(refused_packets(&r, "auth"), 5.0);
    assert_eq!(refused_packets(&r, "replay"), 0.0);
    assert!(r.metric("trustring_gateway_rtp_packets_total{direction=\"in\"}") >= 100.0);
    let gw = r.gateway_records(1);
    assert_eq!(gw["records"][0]["legs"][0]["outcome"], "answered", "{gw:#}");
    let mut keys: Vec<&Crypto> = offered.iter().collect();
    keys.push(&gw_key);
    assert_no_key_logged(&r, &phone_out, &keys);

    if let (Some(trunk), Some(control)) = (trunk_cap, caller_cap) {
        let trunk = captured(trunk, &trunk_pcap);
        let control = captured(control, &caller_pcap);
        // The control: the caller's plain leg shows its offer and key, so the capture works.
        assert!(
            holds(&control, b"a=crypto:"),
            "the caller's leg was captured"
        );
        assert!(holds(&control, inline_key(&offered[0]).as_bytes()));
        // The trunk carried TLS application data records, and no SIP or key in clear.
        assert!(
            holds(&trunk, &[0x17, 0x03, 0x03]),
            "TLS records on the trunk ({} bytes captured)",
            trunk.len()
        );
        for clear in [&b"a=crypto"[..], b"INVITE sip:", b"Trunk-Auth", b"SIP/2.0"] {
            assert!(
                !holds(&trunk, clear),
                "{:?} in clear on the trunk",
                String::from_utf8_lossy(clear)
            );
        }
        for k in &keys {
            assert!(
                !holds(&trunk, inline_key(k).as_bytes()),
                "an SRTP key in clear on the trunk"
            );
        }
    }
}

/// Polls the caller (no audio) until the gateway's `n`th re-INVITE is answered.
fn until_reinvites_answered(caller: &mut SrtpCaller, n: usize) {
    let t0 = Instant::now();
    while caller.reinvites_answered.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no re-INVITE {n} from the gateway"
        );
        caller.pump(Duration::from_millis(20), false);
    }
}

/// Re-INVITEs keep SRTP working: the caller holds and resumes with a new key (a re-offer may
/// carry new keys, RFC 4568 §7.1.4), then the phone holds and resumes (the gateway's own
/// re-INVITEs, SAVP with its unchanged key) and the caller answers with yet another key. The
/// gateway follows each change: every packet of the caller is accepted (none fails
/// authentication) and the phone hears the tone throughout.
#[test]
fn srtp_survives_hold_and_resume_with_new_keys_from_either_side() {
    let _g = serial();
    let r = rig(&[]);
    let wav = r.dir.path().join("heard.wav");
    let mut phone = r.attach_phone(
        &[
            "--answer-after-ms",
            "300",
            "--record",
            wav.to_str().unwrap(),
            "--play-tone",
            "1000",
        ],
        true,
    );
    let mut caller = SrtpCaller::new(r.s.sip);
    let k1 = fresh_crypto(5, Suite::AesCm128HmacSha1_32);
    assert_eq!(caller.invite(vec![k1.clone()]), 200);
    let g1 = caller.gateway_crypto.clone().unwrap();
    assert_eq!((g1.tag, g1.suite), (5, Suite::AesCm128HmacSha1_32));
    caller.pump(Duration::from_millis(800), true);

    // The caller holds (same key), then resumes with a new one.
    assert_eq!(caller.reinvite(vec![k1.clone()], "sendonly"), 200);
    assert_eq!(
        caller.gateway_crypto.as_ref(),
        Some(&g1),
        "the gateway keeps its key"
    );
    phone.wait_for("on hold");
    caller.pump(Duration::from_millis(300), false);
    let k2 = fresh_crypto(5, Suite::AesCm128HmacSha1_32);
    assert_eq!(caller.reinvite(vec![k2.clone()], "sendrecv"), 200);
    assert_eq!(
        caller.tx_crypto.as_ref(),
        Some(&k2),
        "the caller sends under its new key"
    );
    assert_eq!(caller.gateway_crypto.as_ref(), Some(&g1));
    phone.wait_for("resumed");
    caller.pump(Duration::from_millis(800), true);

    // The phone holds and resumes: the gateway re-INVITEs the caller, which answers with a
    // third key.
    let k3 = fresh_crypto(5, Suite::AesCm128HmacSha1_32);
    caller.next_answer_key = Some(k3.key.clone());
    phone.say("hold");
    until_reinvites_answered(&mut caller, 1);
    assert_eq!(
        caller.gateway_crypto.as_ref(),
        Some(&g1),
        "SAVP with the same key"
    );
    caller.pump(Duration::from_millis(300), false);
    phone.say("resume");
    until_reinvites_answered(&mut caller, 2);
    assert_eq!(caller.tx_crypto.as_ref().map(|c| &c.key), Some(&k3.key));
    // The ACK of our answer has left before the gateway applies it: give it a moment.
    caller.pump(Duration::from_millis(150), false);
    caller.pump(Duration::from_millis(800), true);
    assert_eq!(caller.bye(), 200);
    phone.wait_for("cause 16");
    let phone_out = phone.stop();

    assert_eq!(
        refused_packets(&r, "auth"),
        0.0,
        "every key change was followed"
    );
    assert_eq!(refused_packets(&r, "replay"), 0.0);
    assert_eq!(refused_packets(&r, "source"), 0.0);
    let sent = f64::from(caller.sent);
    let accepted = r.metric("trustring_gateway_rtp_packets_total{direction=\"in\"}");
    eprintln!("caller sent {sent} SRTP packets, the gateway accepted {accepted}");
    assert_eq!(accepted, sent, "none lost to a stale key");
    assert_tone(&wav);
    let w = media::wav::read(std::fs::File::open(&wav).unwrap()).unwrap();
    assert!(
        w.samples.len() >= 8 * 2000,
        "the phone heard most of the 2.4 s of tone: {} ms",
        w.samples.len() / 8
    );
    // The gateway's packets all open under its one key.
    let mut opener = SrtpContext::from_crypto(&g1);
    assert!(!caller.received.is_empty());
    for p in &caller.received {
        opener
            .unprotect(&p.bytes)
            .expect("SRTP under the gateway's key");
    }
    assert_no_key_logged(&r, &phone_out, &[&k1, &k2, &k3, &g1]);
}

/// An SRTP offer with no key the gateway can use (only suites it does not speak, or an MKI)
/// gets 488, never a fall back to clear RTP; a caller offering only RTP/AVP gets plain RTP as
/// before.
#[test]
fn srtp_without_a_usable_key_gets_488_and_plain_rtp_stays_plain() {
    let _g = serial();
    let r = rig(&[]);
    let mut phone = r.attach_phone(&["--answer-after-ms", "200"], false);
    let mut caller = SrtpCaller::new(r.s.sip);
    caller.raw_crypto = vec![
        "1 AEAD_AES_256_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .into(),
        "2 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4".into(),
    ];
    assert_eq!(caller.invite(Vec::new()), 488);
    let gw = r.gateway_records(1);
    let rec = &gw["records"][0];
    assert_eq!(rec["final_status"], 488, "{gw:#}");
    assert!(
        rec["release_cause"]
            .as_str()
            .unwrap()
            .contains("no usable SRTP key"),
        "{rec:#}"
    );

    let mut plain = SrtpCaller::new(r.s.sip);
    assert_eq!(plain.invite(Vec::new()), 200, "RTP/AVP answered RTP/AVP");
    assert!(plain.gateway_crypto.is_none());
    plain.pump(Duration::from_millis(600), true);
    assert_eq!(plain.bye(), 200);
    phone.wait_for("cause 16");
    let out = phone.stop();
    assert_eq!(out.matches("incoming call").count(), 1, "{out}");
    assert_eq!(r.metric("trustring_gateway_srtp_calls_total"), 0.0);
    assert!(r.metric("trustring_gateway_rtp_packets_total{direction=\"in\"}") >= 20.0);
    assert_eq!(refused_packets(&r, "source"), 0.0);
}

impl Rig {
    /// The phone attached as a line that answers after `answer_ms`, records what it hears
    /// into `wav` and plays a 1 kHz tone.
    fn attach_tone_phone(&self, answer_ms: &str, wav: &Path) -> Proc {
        self.attach_phone(
            &[
                "--answer-after-ms",
                answer_ms,
                "--record",
                wav.to_str().unwrap(),
                "--play-tone",
                "1000",
            ],
            false,
        )
    }

    /// bob in baresip, registered over SIP over TLS (the server's certificate as its CA),
    /// sending a 1 kHz tone and offering only SRTP (`mediaenc=srtp-mand`).
    fn srtp_bob(&self, name: &str) -> common::baresip::Baresip {
        use common::baresip::{Account, Baresip, Transport};
        let cert = self.s.data.join("tls").join(tls::CERT_FILE);
        let bob = Baresip::start(
            name,
            Account::new("bob", "b0b-passw0rd", Transport::Tls, self.s.sip_tls)
                .cafile(&cert)
                .tone(1000)
                .mediaenc("srtp-mand"),
        );
        bob.wait_registered(&self.s, "bob", |reg| reg["transport"] == "TLS");
        bob
    }
}

/// bob hangs up the call the phone answered: the line is released (cause 16), the phone was
/// challenged, and it heard bob's tone in `wav`.
fn hang_up_and_check_the_phone(bob: &common::baresip::Baresip, mut phone: Proc, wav: &Path) {
    bob.command("hangup", None);
    bob.wait_event("CALL_CLOSED", WAIT);
    phone.wait_for("cause 16");
    let phone_out = phone.stop();
    assert!(phone_out.contains("trust challenge"), "{phone_out}");
    assert_tone(wav);
}

/// A real SDES client (issue 11's test list): baresip (libre's SRTP) registers as bob over SIP
/// over TLS, so its keys never cross a clear hop to the server, and calls alice with
/// `mediaenc=srtp-mand` (it offers only RTP/SAVP and refuses a clear answer). The phone
/// answers through the gateway; each side hears the other's 1 kHz tone, decrypted from SRTP;
/// the gateway counted the call as SRTP and refused none of baresip's packets, and did not
/// warn about a clear caller hop.
#[test]
fn baresip_over_tls_with_srtp_calls_the_phone_through_the_gateway() {
    let _g = serial();
    common::baresip::require();
    let r = rig(&[]);
    let wav = r.dir.path().join("heard.wav");
    let phone = r.attach_tone_phone("300", &wav);
    let bob = r.srtp_bob("bob-srtp");
    bob.command("dial", Some("sip:alice@localhost"));
    bob.wait_event("CALL_ESTABLISHED", WAIT);
    std::thread::sleep(Duration::from_millis(2500));
    // The phone heard baresip's tone, and baresip the phone's.
    hang_up_and_check_the_phone(&bob, phone, &wav);
    let heard = bob.recording(Duration::from_millis(1500));
    let n = heard.samples.len();
    let mid = &heard.samples[n / 4..n * 3 / 4];
    let (f, purity) = (
        media::tone::dominant_frequency(mid, heard.rate),
        media::tone::tone_purity(mid, 1000.0, heard.rate),
    );
    eprintln!("baresip heard {f} Hz, purity {purity:.3}");
    assert!(
        (f - 1000.0).abs() <= 20.0 && purity > 0.9,
        "{f} Hz {purity}"
    );
    let invites = bob.traced("INVITE ");
    assert!(
        !invites.is_empty() && invites.iter().all(|m| m.transport == "TLS"),
        "the offer with the keys went over TLS: {invites:#?}"
    );
    assert_eq!(r.metric("trustring_gateway_srtp_calls_total"), 1.0);
    assert_eq!(refused_packets(&r, "auth"), 0.0);
    assert_eq!(refused_packets(&r, "source"), 0.0);
    assert!(r.metric("trustring_gateway_rtp_packets_total{direction=\"in\"}") >= 100.0);
    let log = r.gw.text();
    let negotiated = log
        .lines()
        .find(|l| l.contains("SRTP negotiated (SDES)"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        negotiated.contains("caller_hop") && negotiated.contains("\"TLS\""),
        "the caller's own hop was TLS: {negotiated}"
    );
    assert!(!log.contains("whose own hop is not TLS"), "{log}");
}

/// Issue 11 item 1's call: one desktop over TLS, one over UDP and the phone through the
/// gateway all ring for one call (bob, over TLS with SRTP); the phone answers with its proof,
/// both desktops get CANCEL with `Reason: SIP;cause=200;text="Call completed elsewhere"`, the
/// TLS desktop only ever over TLS, and audio crosses.
#[test]
fn a_fork_to_a_tls_desktop_a_udp_desktop_and_the_phone_completes() {
    use common::baresip::{Account, Baresip, Transport};
    let _g = serial();
    common::baresip::require();
    let r = rig(&[]);
    let wav = r.dir.path().join("heard3.wav");
    let phone = r.attach_tone_phone("800", &wav);
    let cert = r.s.data.join("tls").join(tls::CERT_FILE);
    // The desktops take SRTP too (bob offers only RTP/SAVP); they ring and never answer.
    let desk_tls = Baresip::start(
        "alice-tls",
        Account::new("alice", "s3cret-passw0rd", Transport::Tls, r.s.sip_tls)
            .cafile(&cert)
            .mediaenc("srtp"),
    );
    let desk_udp = Baresip::start(
        "alice-udp",
        Account::new("alice", "s3cret-passw0rd", Transport::Udp, r.s.sip).mediaenc("srtp"),
    );
    desk_tls.wait_registered(&r.s, "alice", |reg| reg["transport"] == "TLS");
    desk_udp.wait_registered(&r.s, "alice", |reg| reg["transport"] == "UDP");
    let bob = r.srtp_bob("bob-3way");
    bob.command("dial", Some("sip:alice@localhost"));
    desk_tls.wait_event("CALL_INCOMING", WAIT);
    desk_udp.wait_event("CALL_INCOMING", WAIT);
    bob.wait_event("CALL_ESTABLISHED", WAIT);
    desk_tls.wait_event("CALL_CLOSED", WAIT);
    desk_udp.wait_event("CALL_CLOSED", WAIT);
    std::thread::sleep(Duration::from_millis(2000));
    hang_up_and_check_the_phone(&bob, phone, &wav);
    for (desk, transport) in [(&desk_tls, "TLS"), (&desk_udp, "UDP")] {
        let cancels = desk.traced("CANCEL ");
        assert!(
            cancels.iter().any(|c| c
                .header("Reason")
                .iter()
                .any(|v| v == r#"SIP;cause=200;text="Call completed elsewhere""#)),
            "{transport} desktop: CANCEL with the Reason: {cancels:#?}"
        );
        let invites = desk.traced("INVITE ");
        assert!(
            !invites.is_empty() && invites.iter().all(|m| m.transport == transport),
            "{transport} desktop rang over {transport} only: {invites:#?}"
        );
    }
    assert_eq!(r.metric("trustring_gateway_srtp_calls_total"), 1.0);
}
