//! The web console end to end in a real browser: the real `trustring serve`, two SIPp devices
//! registered for alice, and headless Debian Chromium driven by
//! `tests/browser/console.test.mjs` (playwright-core, no browser download). The page logs in,
//! then this test makes a forked call; the page must show the call's two branches turn
//! answered and cancelled without a reload, draw its ladder (INVITE, 200, CANCEL), and list its
//! CDR.
//!
//! Handshake (every wait bounded): the script prints `CONSOLE-READY` once it is logged in with
//! the live feed open; this test then runs the caller and, when SIPp has finished, creates
//! `HANDSHAKE/call-done` (or `call-failed`) for the script's CDR step.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM_PATH`) and `tests/browser/node_modules`
//! (`npm ci`). Without them the test fails under `CI=true`; elsewhere it fails too, unless
//! `TRUSTRING_SKIP_BROWSER=1`, when it says why and passes.
//!
//! The screenshot goes to `CARGO_TARGET_TMPDIR/console.png`, or to `docs/console.png` (the
//! README's) with `TRUSTRING_UPDATE_SCREENSHOT=1`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, TOKEN, caller, device, serial, wait_timeout};

const WAIT: Duration = Duration::from_secs(45);
/// From spawning the script to `CONSOLE-READY` (Chromium start + login).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The whole script (its own test timeout is 150 s).
const SCRIPT_WITHIN: Duration = Duration::from_secs(160);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the browser test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("`node` is not installed (Debian package nodejs)".into()),
    }
    if !chromium().exists() {
        return Some(format!(
            "{} is missing (apt-get install -y chromium)",
            chromium().display()
        ));
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("tests/browser/node_modules is missing (cd tests/browser && npm ci)".into());
    }
    None
}

/// The node process; SIGTERM (Playwright then closes Chromium), then SIGKILL, on drop.
struct Script {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Script {
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Collects `r` into `out` line by line, sending each line on `tx` too.
fn pump(r: impl std::io::Read + Send + 'static, out: Arc<Mutex<String>>, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            out.lock().unwrap().push_str(&line);
            out.lock().unwrap().push('\n');
            let _ = tx.send(line);
        }
    });
}

#[test]
fn console_follows_a_forked_call_live_and_shows_its_ladder_and_cdr() {
    if let Some(why) = missing_prerequisite() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "the browser test cannot run: {why}. Under CI, .ci/run must install Debian's \
                 chromium and run `npm ci` in tests/browser."
            );
        }
        if std::env::var("TRUSTRING_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED (TRUSTRING_SKIP_BROWSER=1): the browser test cannot run: {why}");
            return;
        }
        panic!(
            "the browser test cannot run: {why}.\nInstall with `apt-get install -y chromium` and \
             `cd tests/browser && npm ci`, or set TRUSTRING_SKIP_BROWSER=1 to skip it."
        );
    }
    let _g = serial();
    let t0 = Instant::now();
    let s = Server::start();
    s.add_subscriber("alice", "s3cret-passw0rd");
    // The desk answers 1.5 s after ringing, so the page has time to show both branches ringing.
    let mut desk = device(&s, "uas-answer.xml", 1500, false);
    let mut mobile = device(&s, "uas-ring-cancel.xml", 0, false);

    let handshake = tempfile::tempdir().unwrap();
    let screenshot = if std::env::var("TRUSTRING_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png")
    };
    let mut child = Command::new("node")
        .arg("console.test.mjs")
        .current_dir(browser_dir())
        .env("CONSOLE_URL", format!("http://{}", s.http))
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CONSOLE_HANDSHAKE", handshake.path())
        .env("CONSOLE_SCREENSHOT", &screenshot)
        .env("CHROMIUM_PATH", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    pump(child.stdout.take().unwrap(), output.clone(), tx.clone());
    pump(child.stderr.take().unwrap(), output.clone(), tx);
    let mut script = Script {
        child: Some(child),
        output,
    };

    // 1. The page is logged in and listening.
    let ready_by = Instant::now() + READY_WITHIN;
    loop {
        let left = ready_by.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim() == "CONSOLE-READY" => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the page did not get ready ({e:?}):\n{}\n--- server log ---\n{}",
                script.output(),
                s.log_text()
            ),
        }
    }

    // 2. The forked call: desk answers, mobile is cancelled, the caller hangs up after 1.5 s.
    let mut call = caller(&s, "uac-call.xml").arg("-d").arg("1500").spawn();
    let status = call.wait(WAIT);
    if !status.success() {
        let _ = std::fs::write(handshake.path().join("call-failed"), "caller SIPp failed");
        panic!(
            "the caller failed ({status})\n{}\n--- page ---\n{}",
            call.diagnostics(),
            script.output()
        );
    }
    desk.expect_ok(WAIT);
    mobile.expect_ok(WAIT);
    std::fs::write(handshake.path().join("call-done"), "ok").unwrap();

    // 3. The page's verdict.
    let mut child = script.child.take().unwrap();
    let exit = wait_timeout(&mut child, SCRIPT_WITHIN);
    script.child = Some(child);
    let out = script.output();
    match exit {
        Some(st) if st.success() => {}
        Some(st) => panic!(
            "the browser test failed ({st}):\n{out}\n--- server log (tail) ---\n{}",
            tail(&s.log_text(), 60)
        ),
        None => panic!("the browser test did not finish within {SCRIPT_WITHIN:?}:\n{out}"),
    }
    assert!(out.contains("# pass 1"), "{out}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!(
        "{out}\nbrowser test passed in {:.1} s; screenshot {}",
        t0.elapsed().as_secs_f64(),
        screenshot.display()
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
