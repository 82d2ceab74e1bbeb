//! Test harness: runs the real `trustring` binary on 127.0.0.1 and real SIPp peers.
//! Every process started here is stopped by its PID (Drop), and every wait is bounded.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod baresip;
pub mod mem;
pub mod phone;
pub mod proc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
}

pub struct Server {
    child: Option<Child>,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    /// The public enrolment listener (HTTPS, the phone's routes only).
    pub enrol: SocketAddr,
    /// SIP over TLS (`--sip-tls`).
    pub sip_tls: SocketAddr,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub log: PathBuf,
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut s = Self::start_in(&data, free_port());
        s._dir = Some(dir);
        s
    }

    pub fn start_in(data: &Path, sip_port: u16) -> Self {
        Self::start_with(data, sip_port, &[])
    }

    /// A server in a new temporary directory with `extra` `serve` flags.
    pub fn start_args(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut s = Self::start_with(&data, free_port(), extra);
        s._dir = Some(dir);
        s
    }

    pub fn start_with(data: &Path, sip_port: u16, extra: &[&str]) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The enrolment listener takes a port of its own choosing (one race fewer); its
        // address is read back from `GET /api/v1/server` once the server is up.
        let enrol: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sip_tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = data.join(format!("server-{}.log", http.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_trustring"))
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
            ])
            .arg("--data")
            .arg(data)
            .args(["--domain", "localhost"])
            .args(extra)
            .env("TRUSTRING_ADMIN_TOKEN", TOKEN)
            .env("TRUSTRING_LOG", "info,sip_core=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start trustring");
        let mut s = Self {
            child: Some(child),
            sip,
            http,
            enrol,
            sip_tls,
            data: data.to_owned(),
            _dir: None,
            log,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if s.try_api("GET", "/healthz", None)
                .is_some_and(|(c, _)| c == 200)
            {
                let (c, b) = s.api("GET", "/api/v1/server", None);
                assert_eq!(c, 200, "{b}");
                let info: serde_json::Value = serde_json::from_str(&b).unwrap();
                s.enrol = info["enrol_url"]
                    .as_str()
                    .and_then(|u| u.strip_prefix("https://"))
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no enrolment address in {b}"));
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "server did not start: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_api(method, path, body)
            .expect("API request failed")
    }

    fn try_api(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.http,
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    pub fn add_subscriber(&self, user: &str, password: &str) {
        let body = format!(r#"{{"user":"{user}","password":"{password}","enterprise":"acme"}}"#);
        let (code, resp) = self.api("POST", "/api/v1/subscribers", Some(&body));
        assert_eq!(code, 201, "create {user}: {resp}");
    }

    pub fn set_ring_timeout(&self, user: &str, secs: u32) {
        let body = format!(r#"{{"ring_timeout_secs":{secs},"ring_delays":[]}}"#);
        let (code, resp) = self.api(
            "PUT",
            &format!("/api/v1/subscribers/{user}/profile"),
            Some(&body),
        );
        assert_eq!(code, 200, "profile: {resp}");
    }

    pub fn registrations(&self, user: &str) -> String {
        let (code, body) = self.api(
            "GET",
            &format!("/api/v1/subscribers/{user}/registrations"),
            None,
        );
        assert_eq!(code, 200, "{body}");
        body
    }

    /// `user`'s registrations once `done` holds, or as they are after 5 s: the API lists
    /// them from the store, which the server's writer updates just after the 200 OK, so a
    /// reader right after a REGISTER may be a moment early.
    pub fn registrations_when(&self, user: &str, done: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let body = self.registrations(user);
            if done(&body) || t0.elapsed() > Duration::from_secs(5) {
                return body;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server process's id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                panic!("server did not stop on SIGTERM");
            }
        }
    }

    pub fn target(&self) -> String {
        self.sip.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A SIPp process (killed on drop).
pub struct Sipp {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct SippBuilder {
    scenario: String,
    args: Vec<String>,
    port: u16,
    target: Option<String>,
    transport_tcp: bool,
}

pub fn sipp(scenario_file: &str) -> SippBuilder {
    SippBuilder {
        scenario: scenario_file.into(),
        args: Vec::new(),
        port: free_port(),
        target: None,
        transport_tcp: false,
    }
}

impl SippBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn key(mut self, k: &str, v: &str) -> Self {
        self.args.extend(["-key".into(), k.into(), v.into()]);
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    pub fn tcp(mut self) -> Self {
        self.transport_tcp = true;
        self
    }
    pub fn target(mut self, t: &str) -> Self {
        self.target = Some(t.into());
        self
    }

    pub fn spawn(self) -> Sipp {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sipp.log");
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf").arg(scenario(&self.scenario));
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-nostdin",
            "-m",
            "1",
        ]);
        cmd.args([
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
            "-trace_msg",
        ]);
        cmd.arg("-error_file").arg(dir.path().join("err.log"));
        cmd.arg("-message_file").arg(dir.path().join("msg.log"));
        if self.transport_tcp {
            cmd.args(["-t", "t1"]);
        }
        cmd.args(&self.args);
        if let Some(t) = &self.target {
            cmd.arg(t);
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(&log).unwrap());
        let child = cmd
            .spawn()
            .expect("sipp must be installed (Debian package sip-tester)");
        Sipp {
            child: Some(child),
            name: self.scenario,
            port: self.port,
            log,
            _dir: dir,
        }
    }

    /// Runs to completion (bounded) and asserts success.
    pub fn run_ok(self) {
        let mut s = self.spawn();
        s.expect_ok(Duration::from_secs(45));
    }

    /// Runs to completion (bounded) and asserts failure (the server refused something).
    pub fn run_fails(self) {
        let mut s = self.spawn();
        let st = s.wait(Duration::from_secs(45));
        assert!(!st.success(), "{} unexpectedly succeeded", s.name);
    }
}

impl Sipp {
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("waited once");
        match wait_timeout(&mut c, limit) {
            Some(s) => s,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not finish within {limit:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
        }
    }

    pub fn expect_ok(&mut self, limit: Duration) {
        let st = self.wait(limit);
        assert!(
            st.success(),
            "{} failed ({st})\n{}",
            self.name,
            self.diagnostics()
        );
    }

    pub fn diagnostics(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let dir = self._dir.path();
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- {} stderr ---\n{}\n--- errors ---\n{}\n--- messages ---\n{}",
            self.name,
            tail(read(&self.log)),
            tail(read(&dir.join("err.log"))),
            tail(read(&dir.join("msg.log")))
        )
    }

    /// All messages SIPp exchanged (for assertions on what it received).
    pub fn messages(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("msg.log")).unwrap_or_default()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Registers `user` (password `pw`) with contact 127.0.0.1:`contact_port` through SIPp.
pub fn register(server: &Server, user: &str, pw: &str, contact_port: u16, tcp: bool) {
    let mut b = sipp("register.xml")
        .arg("-s")
        .arg(user)
        .arg("-au")
        .arg(user)
        .arg("-ap")
        .arg(pw)
        .key("domain", "localhost")
        .key("contact_port", &contact_port.to_string())
        .key("expires", "3600")
        .target(&server.target());
    if tcp {
        b = b
            .tcp()
            .arg("-set")
            .arg("contact_params")
            .arg(";transport=tcp");
    }
    b.run_ok();
}

/// Serializes the SIPp tests of one test binary: they are timing-sensitive (races between
/// branches), and 2 cores shared by many SIPp processes would make them flaky.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device: a SIPp UAS running `scenario`, registered for alice.
pub fn device(server: &Server, scenario: &str, delay_ms: u64, tcp: bool) -> Sipp {
    let mut b = sipp(scenario).arg("-d").arg(&delay_ms.to_string());
    if tcp {
        b = b.tcp();
    }
    let uas = b.spawn();
    std::thread::sleep(Duration::from_millis(150));
    register(server, "alice", "s3cret-passw0rd", uas.port, tcp);
    uas
}

/// A caller: SIPp UAC running `scenario` against alice.
pub fn caller(server: &Server, scenario: &str) -> SippBuilder {
    sipp(scenario)
        .arg("-s")
        .arg("alice")
        .key("domain", "localhost")
        .target(&server.target())
}
