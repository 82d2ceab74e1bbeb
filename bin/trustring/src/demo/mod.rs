//! `trustring demo`: the whole product in one command on a fresh machine.
//!
//! It starts `trustring serve --gateway` and `trustring gateway` (the IP->PSTN gateway) as
//! child processes on free loopback ports with temporary data directories, provisions alice
//! (subscriber, number pool, EULA, enrolment code), enrols a phone with a software trusted
//! zone and its own number over HTTPS with the enrolment URI the server issued, which pins the
//! server's key (`trustring device init` / `enroll URI --number`, as a user would),
//! registers a desktop softphone over SIP over TLS and attaches the phone to the gateway as a
//! PSTN line
//! (TR-ISUP over TLS with the gateway's key pinned; the gateway has the phone's zone prove
//! its key to the server before it gives the line the number; the line records what it
//! hears), and places a call to `sip:alice@localhost` from its own caller, also over TLS (both
//! pin the server's key, the fingerprint in the enrolment URI; plain UDP with
//! `--plain-sip`). Both ring:
//! the desktop directly, the phone through the gateway (INVITE with Trunk-Auth, then an IAM
//! carrying the trust challenge). The phone answers with its zone's proof, the desktop is
//! cancelled "elsewhere", the caller sends a 1 kHz tone as SRTP (RTP/SAVP, SDES keys; plain
//! RTP with `--plain-rtp`) to the gateway for the hold time and hangs up.
//!
//! It then prints the ladder diagram the server recorded with the ISUP messages of the
//! phone's line spliced in, each lane headed with the transport the server recorded for it,
//! the transport of every hop, the fork skew at the server and as the two devices saw it, the
//! trust proof result, the audio check (pitch and purity of what the phone recorded), the
//! server's CDR and the gateway's own leg record of the call (linked by the Call-ID), checks
//! each, and cleans up everything it started. It exits non-zero when a check fails.

mod ladder;
mod uac;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pstn::line::{Line, LineConfig, LineError, LineEvent, LineProver, LineTransport};
use serde_json::{Value, json};

use crate::admin::Client;
use crate::device::ZoneProver;
use ladder::unix_us;

/// The phone's own number: the server rings it through the gateway.
const PHONE_NUMBER: &str = "+15551230001";
/// How far from the caller's tone the phone's dominant frequency may be.
const PITCH_TOLERANCE_HZ: f64 = 20.0;
/// The least share of the recording's energy at the tone's pitch.
const MIN_PURITY: f64 = 0.8;

/// `trustring demo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the phone rings before it answers, ms.
    #[arg(long, default_value_t = 1200)]
    answer_after_ms: u64,
    /// How long the call lasts once answered (the caller sends its tone meanwhile), ms.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Keep the temporary data directory (and print where it is).
    #[arg(long)]
    keep: bool,
    /// The caller offers plain RTP (RTP/AVP) instead of SRTP (RTP/SAVP with SDES keys).
    #[arg(long)]
    plain_rtp: bool,
    /// The caller and the desktop softphone speak SIP over UDP instead of TLS (the SRTP keys
    /// in their SDP then cross loopback in clear).
    #[arg(long)]
    plain_sip: bool,
}

/// A port free for UDP and TCP on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// A child process (the server, the gateway), stopped by its PID (SIGTERM, then kill) on
/// drop.
struct ChildProc(Child);

impl ChildProc {
    /// True once the process has ended.
    fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn step(text: &str) {
    println!("==> {text}");
}

fn run_cmd(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running trustring {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "trustring {} failed: {}{}",
            args.first().copied().unwrap_or_default(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The zone's prover for the phone's line, shared so that a retried attach can hand it over
/// again, noting when each proof was ready: the line sends its ACM right then.
#[derive(Clone)]
struct TimedProver {
    zone: Arc<Mutex<ZoneProver>>,
    /// Unix µs of each answer, and whether it was a proof.
    proofs: Arc<Mutex<Vec<(i64, bool)>>>,
}

impl LineProver for TimedProver {
    fn prove(&mut self, challenge: &str, call_ref: &str, branch: &str) -> Result<String, String> {
        let result = match self.zone.lock() {
            Ok(mut zone) => LineProver::prove(&mut *zone, challenge, call_ref, branch),
            Err(_) => Err("the zone's lock is poisoned".to_owned()),
        };
        if let Ok(mut proofs) = self.proofs.lock() {
            proofs.push((unix_us(), result.is_ok()));
        }
        result
    }
}

/// What the demo heard from its two devices.
#[derive(Debug)]
enum Heard {
    Desktop(phone::PhoneEvent),
    Line(LineEvent),
}

struct NoProver;

impl phone::Prover for NoProver {
    fn prove(&mut self, _: &str, _: &str, _: &str) -> Result<String, String> {
        Err("a desktop has no trusted zone".into())
    }
}

pub(crate) fn run(a: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo(a))
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the trustring executable")?;
    let dir = tempfile::Builder::new()
        .prefix("trustring-demo-")
        .tempdir()?;
    let data = dir.path().join("data");
    let gw_data = dir.path().join("gateway-data");
    let sip: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let enrol: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let gw_sip: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let gw_lines: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let sip_tls: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let token = {
        let mut b = [0u8; 16];
        rand::fill(&mut b[..]);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };

    // The gateway's key (its line port and its SIP trunk), made here as an operator would
    // before handing its fingerprint to the phones and to the server (the gateway finds and
    // uses it under its data directory).
    let gw_identity = tls::ServerIdentity::load_or_create(
        &gw_data.join("tls"),
        None,
        None,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .context("making the gateway's TLS key")?;
    let gw_fp = gw_identity.fingerprint;
    step(&format!(
        "starting trustring serve (SIP {sip}, SIP over TLS {sip_tls}, admin API http://{http}, enrolment https://{enrol}, gateway {gw_sip}, data {})",
        data.display()
    ));
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let child = Command::new(&exe)
        .args([
            "serve",
            "--sip",
            &sip.to_string(),
            "--http",
            &http.to_string(),
            "--enrol",
            &enrol.to_string(),
            "--sip-tls",
            &sip_tls.to_string(),
            "--gateway",
            &gw_sip.to_string(),
            // The server dials the gateway's trunk over TLS with the gateway's key pinned.
            "--gateway-fp",
            &gw_fp.to_string(),
        ])
        .arg("--data")
        .arg(&data)
        .args(["--domain", "localhost", "--rate-voip", "0.02"])
        .env("TRUSTRING_ADMIN_TOKEN", &token)
        .env("TRUSTRING_LOG", "warn")
        // The ladder is the server's per-call trace.
        .env_remove("TRUSTRING_NO_CALL_TRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the server")?;
    let server = ChildProc(child);
    let api = Client::new(&format!("http://{http}"), &token, None)?;
    let t0 = Instant::now();
    while api.call("GET", "/healthz", None).is_err() {
        if t0.elapsed() > Duration::from_secs(15) {
            bail!(
                "the server did not start: {}",
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    step("provisioning alice: subscriber, number pool, EULA, one-time enrolment code");
    let desk_password = "demo-desk-password";
    api.call(
        "POST",
        "/api/v1/subscribers",
        Some(json!({"user": "alice", "password": desk_password, "enterprise": "acme"})),
    )?;
    api.call(
        "POST",
        "/api/v1/pools/numbers",
        Some(json!({"range": "+15550100000..+15550100099"})),
    )?;
    api.call(
        "POST",
        "/api/v1/eulas",
        Some(json!({"version": "demo-1", "text": "Demo terms: be nice."})),
    )?;
    let code = api.call(
        "POST",
        "/api/v1/subscribers/alice/enrolments",
        Some(json!({})),
    )?;
    // What the operator hands the user: the code and the server's key fingerprint.
    let uri = code["uri"]
        .as_str()
        .context("the server gave no enrolment URI")?
        .to_owned();
    // The server's key fingerprint: the enrolment URI carries it, and the demo's own SIP
    // clients pin it too.
    let server_fp = uri
        .parse::<api::EnrolUri>()
        .map_err(|e| anyhow::anyhow!("the server's enrolment URI: {e}"))?
        .fingerprint;

    step(&format!(
        "enrolling the phone over HTTPS, the server's key pinned by the enrolment URI: trusted zone (software), sealed identifier + license key + SIP credentials, number {PHONE_NUMBER}"
    ));
    if let Ok(u) = uri.parse::<api::EnrolUri>() {
        println!(
            "    enrolment URI: {SCHEME}://{}?code=…&fp={}",
            u.authority,
            u.fingerprint,
            SCHEME = api::enrol_uri::SCHEME
        );
    }
    let zone = dir.path().join("phone-zone");
    let zone_s = zone.to_str().context("temp path is not UTF-8")?.to_owned();
    let pin = [("TRUSTRING_ZONE_PIN", "demo-zone-passphrase")];
    print!(
        "{}",
        indent(&run_cmd(
            &exe,
            &["device", "init", "--zone", &zone_s],
            &pin
        )?)
    );
    let out = run_cmd(
        &exe,
        &[
            "device",
            "enroll",
            "--zone",
            &zone_s,
            &uri,
            "--accept-eula",
            "--number",
            PHONE_NUMBER,
        ],
        &pin,
    )?;
    for l in out
        .lines()
        .filter(|l| l.starts_with("enrolled") || l.starts_with("number"))
    {
        println!("    {l}");
    }

    step(&format!(
        "starting trustring gateway (SIP trunk {gw_sip} over TLS, phone lines {gw_lines} over TLS, key {gw_fp} for both, data {})",
        gw_data.display()
    ));
    let log = std::fs::File::create(dir.path().join("gateway.log"))?;
    let child = Command::new(&exe)
        .args([
            "gateway",
            "--sip",
            &gw_sip.to_string(),
            "--lines",
            &gw_lines.to_string(),
            "--media-ip",
            "127.0.0.1",
            "--allow",
            "127.0.0.1",
            // Where the gateway asks the server's trust authority about attaching lines.
            "--server-api",
            &format!("http://{http}"),
        ])
        .arg("--trunk-secret-file")
        .arg(data.join("trunk-secret"))
        .arg("--data")
        .arg(&gw_data)
        .env("TRUSTRING_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the gateway")?;
    let mut gateway = ChildProc(child);

    // The proxy's address for the demo's SIP clients, and how they reach it.
    let (proxy, sip_how) = if a.plain_sip {
        (sip, "SIP over UDP (--plain-sip)".to_owned())
    } else {
        (
            sip_tls,
            format!("SIP over TLS to {sip_tls}, server key {server_fp} pinned"),
        )
    };
    step(&format!(
        "registering the desktop softphone as alice ({sip_how}); attaching the phone to the gateway as line {PHONE_NUMBER}"
    ));
    let mut desk_cfg = phone::PhoneConfig::new(
        proxy,
        "localhost",
        "alice",
        "alice",
        desk_password,
        "desktop",
    );
    desk_cfg.local = SocketAddr::new(sip.ip(), 0);
    if !a.plain_sip {
        desk_cfg.transport = phone::SipTransport::Tls(phone::TlsClient::pinned(server_fp)?);
    }
    let (desk, mut desk_events) = phone::Phone::start(desk_cfg, Box::new(NoProver)).await?;
    wait_for(&mut desk_events, "desktop", |e| {
        matches!(e, phone::PhoneEvent::Registered { .. })
    })
    .await?;
    let (phone_cfg, zone_prover, who) = crate::device::load_phone(&zone, pin[0].1, sip)?;
    let prover = TimedProver {
        zone: Arc::new(Mutex::new(zone_prover)),
        proofs: Arc::new(Mutex::new(Vec::new())),
    };
    let recording = dir.path().join("phone-heard.wav");
    let mut line_cfg = LineConfig::new(
        gw_lines.to_string(),
        LineTransport::Tls(gw_fp),
        PHONE_NUMBER.parse()?,
    );
    line_cfg.device_id = Some(phone_cfg.contact_instance.clone());
    line_cfg.answer_after = Some(Duration::from_millis(a.answer_after_ms));
    line_cfg.record = Some(recording.clone());
    let t0 = Instant::now();
    let (line, mut line_events) = loop {
        // The gateway reads the trunk secret and binds its sockets as it starts.
        match Line::attach(line_cfg.clone(), Some(Box::new(prover.clone()))).await {
            Ok(attached) => break attached,
            Err(LineError::Connect { .. })
                if t0.elapsed() < Duration::from_secs(10) && !gateway.exited() =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!(
                "the phone could not attach to the gateway: {e}\n{}",
                std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
            ),
        }
    };
    // The line's first event says how the attach went.
    let attached_event = line_events.recv().await;
    let attach_proved = matches!(
        attached_event,
        Some(LineEvent::Attached {
            tls: true,
            proved: true,
            ..
        })
    );
    let line_tls = matches!(attached_event, Some(LineEvent::Attached { tls: true, .. }));
    let attached = attached_event.map_or_else(|| "detached at once".to_owned(), |e| e.to_string());
    // That was the attach challenge's proof; the ladder shows the call's.
    if let Ok(mut proofs) = prover.proofs.lock() {
        proofs.clear();
    }
    println!(
        "    desktop {} registered; phone {who} {attached} on {gw_lines}",
        desk.local_addr()
    );

    step(&format!(
        "calling sip:alice@localhost (the phone answers after {} ms; the caller then sends a {} Hz tone for {} ms)",
        a.answer_after_ms,
        uac::TONE_HZ,
        a.hold_ms
    ));
    // Each device's events, stamped the moment they arrive, on one channel. Unbounded on
    // purpose: it carries the events of one demo call (a few dozen, from the demo's own two
    // devices) and is drained until the call ends; a full bounded queue would delay the
    // timestamps the fork-skew figures are made of.
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Heard)>();
    tokio::spawn({
        let tx = heard_tx.clone();
        async move {
            while let Some(e) = desk_events.recv().await {
                if tx.send((unix_us(), Heard::Desktop(e))).is_err() {
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(e) = line_events.recv().await {
            if heard_tx.send((unix_us(), Heard::Line(e))).is_err() {
                break;
            }
        }
    });
    let mut caller = if a.plain_sip {
        uac::Uac::udp(sip).await?
    } else {
        uac::Uac::tls(sip_tls, server_fp).await?
    };
    let call = tokio::spawn({
        let hold = Duration::from_millis(a.hold_ms);
        let srtp = !a.plain_rtp;
        async move {
            caller
                .call("sip:alice@localhost", hold, srtp)
                .await
                .map(|r| (r, caller.local_addr()))
        }
    });
    let mut heard: Vec<(i64, Heard)> = Vec::new();
    let show = |h: &Heard| match h {
        Heard::Desktop(e) => println!("    desktop: {e}"),
        Heard::Line(e) => println!("    phone:   {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !call.is_finished() && Instant::now() < deadline {
        tokio::select! {
            Some(h) = heard_rx.recv() => { show(&h.1); heard.push(h); }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let (result, caller_addr) = call.await.context("caller task")??;
    // The BYE reaches the phone as REL: wait for its release, then take what else is queued.
    let released = |heard: &[(i64, Heard)]| {
        heard
            .iter()
            .any(|(_, h)| matches!(h, Heard::Line(LineEvent::Released { .. })))
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while !released(&heard) {
        match tokio::time::timeout_at(until, heard_rx.recv()).await {
            Ok(Some(h)) => {
                show(&h.1);
                heard.push(h);
            }
            Ok(None) | Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(h) = heard_rx.try_recv() {
        show(&h.1);
        heard.push(h);
    }
    // Shutting the line down finishes its recording.
    line.shutdown().await;
    let desk_addr = desk.local_addr();
    let _ = desk.shutdown().await;
    println!(
        "    caller got {:?} then {} after {} ms; talked {} ms and hung up",
        result.provisional, result.status, result.setup_ms, a.hold_ms
    );

    // The ladder the server recorded, with the phone line's ISUP messages on the same clock.
    let trace = api.call(
        "GET",
        &format!("/api/v1/calls/{}/trace", result.call_id),
        None,
    )?;
    // The API serves `sip_net::trace::TraceEntry` itself: read it back as that type.
    let entries: Vec<sip_net::trace::TraceEntry> =
        serde_json::from_value(trace["messages"].clone())?;
    let mut names = HashMap::new();
    names.insert(caller_addr, "caller".to_owned());
    names.insert(desk_addr, "desktop".to_owned());
    // The gateway is every other peer: its trunk may reach the server from another address
    // than its SIP listener (a connection's).
    for e in &entries {
        names.entry(e.peer).or_insert_with(|| "gateway".to_owned());
    }
    let line_heard: Vec<(i64, LineEvent)> = heard
        .iter()
        .filter_map(|(at, h)| match h {
            Heard::Line(e) => Some((*at, e.clone())),
            Heard::Desktop(_) => None,
        })
        .collect();
    let proofs = prover.proofs.lock().map(|p| p.clone()).unwrap_or_default();
    let isup = ladder::isup_rows(&line_heard, &proofs);
    step("ladder diagram (SIP as the server saw it; ISUP as the phone's line saw it)");
    print!(
        "{}",
        ladder::splice(
            &sip_net::trace::ladder_text(&entries, &ladder::lane_names(&entries, &names)),
            &entries,
            "gateway",
            &format!("phone line {PHONE_NUMBER}"),
            &isup
        )
    );
    // The signalling's transport, hop by hop, as the server recorded it.
    let sip_hops = ladder::hops(&entries, &names);
    println!(
        "    transport by hop (SIP as the server's trace recorded it; ISUP as the line attached):"
    );
    for h in &sip_hops {
        println!("      {h}");
    }
    println!(
        "      gateway -> phone line {PHONE_NUMBER}: {}",
        if line_tls {
            "TR-ISUP over TLS (gateway key pinned)"
        } else {
            "TR-ISUP over plain TCP"
        }
    );
    let want = if a.plain_sip { "UDP" } else { "TLS" };
    let sip_over = |who: &str| {
        ladder::peer_transports(&entries)
            .iter()
            .any(|(p, t)| names.get(p).is_some_and(|n| n == who) && t == want)
    };
    let clients_transport = sip_over("caller") && sip_over("desktop");
    // The media, hop by hop (the ladder above is the signalling).
    let media_hops = match &result.audio {
        Ok(s) => match s.srtp {
            Some(suite) => format!(
                "caller <-> gateway: SRTP ({}, SDES keys in the SDP; {} SRTP packets sent, {} received, {} refused)",
                suite.name(),
                s.sent,
                s.received,
                s.refused
            ),
            None => format!(
                "caller <-> gateway: clear RTP (--plain-rtp; {} packets sent, {} received)",
                s.sent, s.received
            ),
        },
        Err(e) => format!("caller <-> gateway: no media ({e})"),
    };
    println!("    media: {media_hops}; gateway <-> phone line: G.711 frames inside the line's TLS");

    let invites: Vec<&sip_net::trace::TraceEntry> = entries
        .iter()
        .filter(|e| e.dir == sip_net::trace::Direction::Out && e.label == "INVITE")
        .collect();
    let skew_us = match invites.as_slice() {
        [first, .., last] => last.at_us - first.at_us,
        _ => bail!("the server did not fork the INVITE to two devices"),
    };
    step(&format!(
        "fork skew: {:.3} ms between the first and the last branch INVITE",
        skew_us as f64 / 1000.0
    ));
    let desk_rang = heard.iter().find_map(|(at, h)| {
        matches!(h, Heard::Desktop(phone::PhoneEvent::Ringing { .. })).then_some(*at)
    });
    let line_rang = line_heard
        .iter()
        .find_map(|(at, e)| matches!(e, LineEvent::Incoming { .. }).then_some(*at));
    if let (Some(desk_at), Some(line_at)) = (desk_rang, line_rang) {
        let first = if desk_at <= line_at {
            "the desktop"
        } else {
            "the phone"
        };
        step(&format!(
            "fork skew through the gateway: {:.3} ms between the desktop's INVITE and the phone line's IAM ({first} rang first)",
            (line_at - desk_at).abs() as f64 / 1000.0
        ));
    }

    let events = api.call("GET", "/api/v1/security-events", None)?;
    let proofs_failed = events["events"].as_array().map_or(0, |v| {
        v.iter()
            .filter(|e| e["kind"].as_str().is_some_and(|k| k.ends_with("-proof")))
            .count()
    });
    let line_answered = line_heard
        .iter()
        .any(|(_, e)| matches!(e, LineEvent::Answered { .. }));
    let desk_cancelled = heard.iter().any(|(_, h)| {
        matches!(h, Heard::Desktop(phone::PhoneEvent::Cancelled { reason: Some(r), .. }) if r.contains("Call completed elsewhere"))
    });
    let challenged = entries
        .iter()
        .any(|e| e.notes.iter().any(|n| n == "trust challenge"));
    let proved = entries.iter().any(|e| {
        e.dir == sip_net::trace::Direction::In
            && e.label.starts_with("200")
            && e.notes.iter().any(|n| n == "trust proof")
    });
    let iam_challenged = line_heard.iter().any(|(_, e)| {
        matches!(
            e,
            LineEvent::Incoming {
                challenged: true,
                ..
            }
        )
    });
    let zone_proved = !proofs.is_empty() && proofs.iter().all(|(_, ok)| *ok);
    let trusted = challenged && proved && proofs_failed == 0 && iam_challenged && zone_proved;
    step(&format!(
        "trust proof: phone challenged {challenged} (in the IAM {iam_challenged}), zone proved {zone_proved}, proof on its answer {proved}, refused proofs {proofs_failed} -> {}",
        if trusted { "VERIFIED" } else { "FAILED" }
    ));

    let heard_tone = audio_check(&recording);
    let sent = match &result.audio {
        Ok(s) => s.summary(),
        Err(e) => format!("the caller sent no audio: {e}"),
    };
    let tone_ok = match &heard_tone {
        Ok(t) => {
            let ok = (t.freq - uac::TONE_HZ).abs() <= PITCH_TOLERANCE_HZ && t.purity >= MIN_PURITY;
            if ok {
                step(&format!(
                    "audio: {:.0} Hz tone received by the phone, purity {:.2} ({} ms recorded; {sent})",
                    t.freq, t.purity, t.ms
                ));
            } else {
                step(&format!(
                    "audio: FAILED: the phone heard {:.0} Hz at purity {:.2}, expected {} Hz ± {PITCH_TOLERANCE_HZ} at purity {MIN_PURITY} or more ({} ms recorded; {sent})",
                    t.freq,
                    t.purity,
                    uac::TONE_HZ,
                    t.ms
                ));
            }
            ok
        }
        Err(e) => {
            step(&format!("audio: FAILED: {e:#} ({sent})"));
            false
        }
    };

    // The CDR (durable before it is listed).
    let mut cdr = Value::Null;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let v = api.call("GET", "/api/v1/cdrs", None)?;
        if let Some(r) = v["records"].as_array().and_then(|r| r.first()) {
            cdr = json!({ "record": r, "totals": v["totals"] });
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step("call detail record (the server's)");
    let r = &cdr["record"];
    let legs = r["legs"].as_array().cloned().unwrap_or_default();
    print_record("CDR", r, &legs);

    // The gateway's own record of its leg, as an operator reads it.
    let gw_data_s = gw_data.to_str().context("temp path is not UTF-8")?;
    let mut gw_rec = Value::Null;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let out = run_cmd(
            &exe,
            &["cdr", "export", "--data", gw_data_s, "--format", "json"],
            &[],
        )?;
        let v: Value = serde_json::from_str(&out).context("the gateway's records")?;
        if let Some(r) = v["records"].as_array().and_then(|r| r.first()) {
            gw_rec = r.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step("the gateway's leg record (trustring cdr export --data GATEWAY_DATA --format json)");
    let gw_legs = gw_rec["legs"].as_array().cloned().unwrap_or_default();
    print_record("gateway leg record", &gw_rec, &gw_legs);
    let linked = !result.call_id.is_empty()
        && r["call_id"].as_str() == Some(result.call_id.as_str())
        && gw_rec["call_id"] == r["call_id"];
    println!(
        "    {} Call-ID: {} (server CDR) / {} (gateway record)",
        if linked { "same" } else { "DIFFERENT" },
        r["call_id"].as_str().unwrap_or("-"),
        gw_rec["call_id"].as_str().unwrap_or("-")
    );

    drop(gateway);
    drop(server);
    if a.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }

    let cancel_with_reason = entries.iter().any(|e| {
        e.label == "CANCEL"
            && e.notes
                .iter()
                .any(|n| n.contains("Call completed elsewhere"))
    });
    let leg_of = |kind: &str| legs.iter().find(|l| l["leg_type"] == kind);
    let checks = [
        (
            "both devices rang",
            invites.len() >= 2 && desk_rang.is_some() && line_rang.is_some(),
        ),
        (
            "the phone's line attached over TLS with its zone's proof",
            attach_proved,
        ),
        (
            if a.plain_sip {
                "the caller's and the desktop's SIP went over UDP, as asked (--plain-sip)"
            } else {
                "the caller's and the desktop's SIP went over TLS"
            },
            clients_transport,
        ),
        ("the phone answered through the gateway", line_answered),
        ("the caller got 200", result.status == 200),
        (
            "the desktop got CANCEL with Reason",
            desk_cancelled && cancel_with_reason,
        ),
        ("the trust proof was verified", trusted),
        (
            if a.plain_rtp {
                "the caller's media was plain RTP, as asked (--plain-rtp)"
            } else {
                "the caller's media was SRTP"
            },
            result
                .audio
                .as_ref()
                .is_ok_and(|s| s.srtp.is_some() != a.plain_rtp && s.refused == 0),
        ),
        ("the phone heard the caller's tone", tone_ok),
        (
            "one CDR, its PSTN leg answered and billed to alice",
            r["final_status"] == 200
                && leg_of("pstn")
                    .is_some_and(|l| l["outcome"] == "answered" && l["billing_entity"] == "alice"),
        ),
        (
            "the gateway's leg record shares the Call-ID",
            linked && gw_legs.iter().any(|l| l["outcome"] == "answered"),
        ),
    ];
    let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    if failed.is_empty() {
        println!("demo OK: {}", checks.map(|c| c.0).join("; "));
        Ok(())
    } else {
        bail!("demo failed: {}", failed.join("; "))
    }
}

/// A stored record (the server's CDR or the gateway's leg record) and its legs, one line each.
fn print_record(what: &str, r: &Value, legs: &[Value]) {
    if r.is_null() {
        println!("    no {what} was written");
        return;
    }
    println!(
        "    {what} {}: {} -> {} status {} duration {} ms released by {} ({}) hash {}…",
        r["id"],
        r["caller"].as_str().unwrap_or_default(),
        r["called"].as_str().unwrap_or_default(),
        r["final_status"],
        r["duration_ms"],
        r["released_by"].as_str().unwrap_or_default(),
        r["release_cause"].as_str().unwrap_or_default(),
        r["hash"]
            .as_str()
            .unwrap_or_default()
            .get(..12)
            .unwrap_or_default()
    );
    for l in legs {
        println!(
            "      leg {} {} {} billed to {} ({} ms)",
            l["device"]
                .as_str()
                .unwrap_or(l["contact"].as_str().unwrap_or_default()),
            l["leg_type"].as_str().unwrap_or_default(),
            l["outcome"].as_str().unwrap_or_default(),
            l["billing_entity"].as_str().unwrap_or_default(),
            l["billable_ms"]
        );
    }
}

/// What the phone's recording holds.
struct HeardTone {
    /// Length of the recording.
    ms: usize,
    /// Its strongest frequency (middle half).
    freq: f64,
    /// The share of its energy at the caller's tone (middle half).
    purity: f64,
}

/// Pitch and purity over the middle half of the recording: the start and the end may hold a
/// partial packet's worth of anything.
fn audio_check(path: &Path) -> anyhow::Result<HeardTone> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("the phone's recording {}", path.display()))?;
    let wav = media::wav::read(std::io::BufReader::new(file))
        .with_context(|| format!("reading {}", path.display()))?;
    let n = wav.samples.len();
    let rate = wav.rate.max(1);
    let ms = n * 1000 / rate as usize;
    if n < media::g711::FRAME_SAMPLES * 4 {
        bail!("the phone recorded only {ms} ms of audio");
    }
    let mid = &wav.samples[n / 4..n * 3 / 4];
    Ok(HeardTone {
        ms,
        freq: media::tone::dominant_frequency(mid, rate),
        purity: media::tone::tone_purity(mid, uac::TONE_HZ, rate),
    })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

async fn wait_for(
    events: &mut tokio::sync::mpsc::Receiver<phone::PhoneEvent>,
    who: &str,
    pred: impl Fn(&phone::PhoneEvent) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if pred(&e) => return Ok(()),
            Ok(Some(phone::PhoneEvent::RegistrationFailed { status })) => {
                bail!("the {who} could not register ({status})")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("the {who} did not register in time"),
        }
    }
}
