//! `trustring demo`: the whole product in one command on a fresh machine.
//!
//! It starts `trustring serve` on free loopback ports with a temporary data directory,
//! provisions alice (subscriber, number pool, EULA, enrolment code), enrols a phone with a
//! software trusted zone (`trustring device init` / `enroll`, as a user would), registers a
//! desktop softphone and the phone, and places a call to `sip:alice@localhost`: both ring,
//! the phone answers with its zone's proof, the desktop is cancelled "elsewhere", the caller
//! hangs up. It then prints the ladder diagram the server recorded, the fork skew, the trust
//! proof result and the CDR, checks each, and cleans up everything it started.

mod uac;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::admin::Client;

/// `trustring demo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the phone rings before it answers, ms.
    #[arg(long, default_value_t = 1200)]
    answer_after_ms: u64,
    /// How long the call lasts once answered, ms.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Keep the temporary data directory (and print where it is).
    #[arg(long)]
    keep: bool,
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

/// The server child, stopped (SIGTERM, then kill) on drop.
struct ServerProc(Child);

impl Drop for ServerProc {
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
    let sip: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let token = {
        let mut b = [0u8; 16];
        rand::fill(&mut b[..]);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };

    step(&format!(
        "starting trustring serve (SIP {sip}, admin API http://{http}, data {})",
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
        ])
        .arg("--data")
        .arg(&data)
        .args(["--domain", "localhost", "--rate-voip", "0.02"])
        .env("TRUSTRING_ADMIN_TOKEN", &token)
        .env("TRUSTRING_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the server")?;
    let server = ServerProc(child);
    let api = Client::new(&format!("http://{http}"), &token);
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
    let code = code["code"].as_str().context("no code")?.to_owned();

    step("enrolling the phone: trusted zone (software), sealed identifier + license key");
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
            "--server",
            &format!("http://{http}"),
            "--code",
            &code,
            "--accept-eula",
        ],
        &pin,
    )?;
    print!("{}", indent(out.lines().last().unwrap_or_default()));
    println!();

    step("registering the desktop softphone and the phone as alice");
    let mut desk_cfg =
        phone::PhoneConfig::new(sip, "localhost", "alice", "alice", desk_password, "desktop");
    desk_cfg.local = SocketAddr::new(sip.ip(), 0);
    let (desk, mut desk_events) = phone::Phone::start(desk_cfg, Box::new(NoProver)).await?;
    let (mut phone_cfg, prover, who) = crate::device::load_phone(&zone, pin[0].1, sip)?;
    phone_cfg.answer_after = Some(Duration::from_millis(a.answer_after_ms));
    let (phone, mut phone_events) = phone::Phone::start(phone_cfg, Box::new(prover)).await?;
    for (name, ev) in [("desktop", &mut desk_events), ("phone", &mut phone_events)] {
        wait_for(ev, name, |e| {
            matches!(e, phone::PhoneEvent::Registered { .. })
        })
        .await?;
    }
    println!(
        "    desktop {} and phone {who} {} registered",
        desk.local_addr(),
        phone.local_addr()
    );

    step(&format!(
        "calling sip:alice@localhost (the phone answers after {} ms)",
        a.answer_after_ms
    ));
    let caller = uac::Uac::bind(sip).await?;
    let call = tokio::spawn({
        let hold = Duration::from_millis(a.hold_ms);
        async move {
            caller
                .call("sip:alice@localhost", hold)
                .await
                .map(|r| (r, caller.local_addr()))
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !call.is_finished() && Instant::now() < deadline {
        tokio::select! {
            Some(e) = desk_events.recv() => { println!("    desktop: {e}"); seen.push(("desktop", e)); }
            Some(e) = phone_events.recv() => { println!("    phone:   {e}"); seen.push(("phone", e)); }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let (result, caller_addr) = call.await.context("caller task")??;
    // Drain what is still queued (the BYE's Ended).
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(e) = phone_events.try_recv() {
        println!("    phone:   {e}");
        seen.push(("phone", e));
    }
    while let Ok(e) = desk_events.try_recv() {
        println!("    desktop: {e}");
        seen.push(("desktop", e));
    }
    println!(
        "    caller got {:?} then {} after {} ms; held {} ms and hung up",
        result.provisional, result.status, result.setup_ms, a.hold_ms
    );

    // The ladder the server recorded.
    let trace = api.call(
        "GET",
        &format!("/api/v1/calls/{}/trace", result.call_id),
        None,
    )?;
    let entries: Vec<sip_net::trace::TraceEntry> =
        serde_json::from_value::<Vec<TraceView>>(trace["messages"].clone())?
            .into_iter()
            .map(TraceView::into_entry)
            .collect();
    let mut names = HashMap::new();
    names.insert(caller_addr, "caller".to_owned());
    names.insert(desk.local_addr(), "desktop".to_owned());
    names.insert(phone.local_addr(), "phone".to_owned());
    step("ladder diagram (as the server saw it)");
    print!("{}", sip_net::trace::ladder_text(&entries, &names));

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

    let events = api.call("GET", "/api/v1/security-events", None)?;
    let proofs_failed = events.as_array().map_or(0, |v| {
        v.iter()
            .filter(|e| e["kind"].as_str().is_some_and(|k| k.ends_with("-proof")))
            .count()
    });
    let phone_answered = seen
        .iter()
        .any(|(who, e)| *who == "phone" && matches!(e, phone::PhoneEvent::Answered { .. }));
    let desk_cancelled = seen.iter().any(|(who, e)| {
        *who == "desktop"
            && matches!(e, phone::PhoneEvent::Cancelled { reason: Some(r), .. } if r.contains("Call completed elsewhere"))
    });
    let challenged = entries
        .iter()
        .any(|e| e.notes.iter().any(|n| n == "trust challenge"));
    let proved = entries.iter().any(|e| {
        e.dir == sip_net::trace::Direction::In
            && e.label.starts_with("200")
            && e.notes.iter().any(|n| n == "trust proof")
    });
    step(&format!(
        "trust proof: phone challenged {challenged}, proof on its answer {proved}, refused proofs {proofs_failed} -> {}",
        if challenged && proved && proofs_failed == 0 {
            "VERIFIED"
        } else {
            "FAILED"
        }
    ));

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
    step("call detail record");
    let r = &cdr["record"];
    let legs = r["legs"].as_array().cloned().unwrap_or_default();
    println!(
        "    CDR {}: {} -> {} status {} duration {} ms released by {} ({}) hash {}…",
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
    for l in &legs {
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

    let _ = desk.shutdown().await;
    let _ = phone.shutdown().await;
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
    let checks = [
        ("both devices rang", invites.len() >= 2),
        ("the phone answered", phone_answered),
        ("the caller got 200", result.status == 200),
        (
            "the desktop got CANCEL with Reason",
            desk_cancelled && cancel_with_reason,
        ),
        (
            "the trust proof was verified",
            challenged && proved && proofs_failed == 0,
        ),
        (
            "one CDR, answered by the phone",
            r["final_status"] == 200
                && legs
                    .iter()
                    .any(|l| l["outcome"] == "answered" && !l["device"].is_null()),
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

/// A trace entry as the API returns it.
#[derive(serde::Deserialize)]
struct TraceView {
    at_us: i64,
    dir: String,
    transport: String,
    peer: SocketAddr,
    label: String,
    cseq: String,
    notes: Vec<String>,
}

impl TraceView {
    fn into_entry(self) -> sip_net::trace::TraceEntry {
        sip_net::trace::TraceEntry {
            at_us: self.at_us,
            dir: if self.dir == "in" {
                sip_net::trace::Direction::In
            } else {
                sip_net::trace::Direction::Out
            },
            transport: if self.transport == "TCP" {
                "TCP"
            } else {
                "UDP"
            },
            peer: self.peer,
            label: self.label,
            cseq: self.cseq,
            notes: self.notes,
        }
    }
}
