//! Driving Debian's linphone console client (`linphonec`, package `linphone-cli`) headless,
//! and a UDP relay that records the SIP text between a client and the server (and can tell
//! the client a shorter registration than the server granted, so that its refreshes come
//! within a test's time).
//!
//! Each `linphonec` runs with its own configuration file (`-c`) and `HOME` in a temporary
//! directory, commands on stdin through a pipe (`quit`, `answer`, ...), and its full log
//! (`-d 6 -l FILE`: every SIP message it sends and receives). No sound card is needed: with
//! none, linphone still answers and runs the call's RTP (nothing is played or recorded).
//! Every process is stopped by its PID (`quit` first, then kill), every wait is bounded, and
//! on a panic the output of every instance and relay still alive is printed.
//!
//! Declared by `tests/linphone.rs` as `#[path = "common/linphone.rs"] mod linphone_client;`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::wait_timeout;

pub const LINPHONEC: &str = "linphonec";

/// Panics (the tests fail, never skip) unless `linphonec` runs; returns its version line.
pub fn require() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LINPHONEC)
        .arg("-v")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .find(|l| l.contains("ersion"))
                .unwrap_or("version unknown")
                .trim()
                .to_owned()
        }
        Ok(o) => panic!(
            "`linphonec -v` failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            panic!("linphonec not found ({e}): install linphone-cli (apt-get install linphone-cli)")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One linphone account: who registers where, and how.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub user: String,
    pub password: String,
    /// The registrar (and outbound proxy) linphone sends to: the server, or a relay.
    pub proxy: SocketAddr,
    pub transport: Transport,
    /// Seconds asked for in `Expires` (linphone refreshes at 90 % of what is granted).
    pub expires: u32,
    /// `linphonec -a`: answer every incoming call at once.
    pub auto_answer: bool,
    /// `[sip] keepalive_period` in milliseconds: how often linphone sends its CRLF keep-alive
    /// on UDP (linphone's default, 30 s, when `None`).
    pub keepalive_ms: Option<u32>,
}

impl Account {
    pub fn new(name: &str, user: &str, password: &str, proxy: SocketAddr, t: Transport) -> Self {
        Self {
            name: name.into(),
            user: user.into(),
            password: password.into(),
            proxy,
            transport: t,
            expires: 60,
            auto_answer: false,
            keepalive_ms: None,
        }
    }

    pub fn auto_answer(mut self) -> Self {
        self.auto_answer = true;
        self
    }

    /// CRLF keep-alives every `period` instead of every 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.keepalive_ms = Some(u32::try_from(period.as_millis()).unwrap());
        self
    }

    /// The `linphonerc` for this account: one proxy, its credentials in clear text (linphone
    /// replaces them by the HA1 of the first algorithm it answers, see tests/linphone/README.md),
    /// SIP on one transport and port, RTP on random ports, no IPv6, no video.
    fn linphonerc(&self, sip_port: u16) -> String {
        let (udp, tcp, t) = match self.transport {
            Transport::Udp => (sip_port, 0, "udp"),
            Transport::Tcp => (0, sip_port, "tcp"),
        };
        let keepalive = self
            .keepalive_ms
            .map_or(String::new(), |ms| format!("keepalive_period={ms}\n"));
        format!(
            "[sip]\n\
             sip_port={udp}\n\
             sip_tcp_port={tcp}\n\
             sip_tls_port=0\n\
             use_ipv6=0\n\
             default_proxy=0\n\
             {keepalive}\
             \n\
             [net]\n\
             firewall_policy=0\n\
             \n\
             [rtp]\n\
             audio_rtp_port=20000-29999\n\
             video_rtp_port=15000-17499\n\
             text_rtp_port=17500-19999\n\
             \n\
             [video]\n\
             capture=0\n\
             display=0\n\
             \n\
             [proxy_0]\n\
             reg_proxy=<sip:{proxy};transport={t}>\n\
             reg_identity=sip:{user}@localhost\n\
             reg_expires={expires}\n\
             reg_sendregister=1\n\
             \n\
             [auth_info_0]\n\
             username={user}\n\
             passwd={password}\n\
             realm=localhost\n\
             domain=localhost\n",
            proxy = self.proxy,
            user = self.user,
            password = self.password,
            expires = self.expires,
        )
    }
}

/// A running `linphonec` (killed by PID on drop).
pub struct Linphone {
    pub name: String,
    pub sip_port: u16,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl Linphone {
    pub fn start(account: &Account) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        // linphone keeps its databases (call history, chat, ZRTP) under
        // $XDG_DATA_HOME/linphone; without that directory the core never starts.
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        std::fs::create_dir_all(home.join(".config")).unwrap();
        let sip_port = crate::common::free_port();
        std::fs::write(dir.path().join("linphonerc"), account.linphonerc(sip_port)).unwrap();
        let mut cmd = Command::new(LINPHONEC);
        if account.auto_answer {
            cmd.arg("-a");
        }
        cmd.arg("-c")
            .arg(dir.path().join("linphonerc"))
            .args(["-d", "6", "-l"])
            .arg(dir.path().join("linphone.log"))
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("DISPLAY")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start linphonec ({e}): install linphone-cli"));
        Self {
            name: account.name.clone(),
            sip_port,
            stdin: child.stdin.take(),
            child: Some(child),
            dir,
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// What linphonec printed (its console: prompts, call events).
    pub fn output(&self) -> String {
        let mut t = self.read("stdout");
        t.push_str(&self.read("stderr"));
        t
    }

    /// linphone's log (`-d 6`): every SIP message it sent and received, among the rest.
    pub fn log(&self) -> String {
        self.read("linphone.log")
    }

    /// The configuration file as linphone rewrote it.
    pub fn config(&self) -> String {
        self.read("linphonerc")
    }

    /// Waits (bounded) until linphone has written `needle` into its configuration file (it
    /// saves changes, such as the credentials it learned, a moment after making them).
    pub fn wait_config(&self, needle: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let rc = self.config();
            if rc.contains(needle) {
                return rc;
            }
            assert!(
                t0.elapsed() < limit,
                "{}: no {needle:?} in its configuration within {limit:?}:\n{rc}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One line on linphonec's stdin.
    pub fn say(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("linphonec stdin");
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    /// Waits (bounded) until the console output holds `needle` `n` times.
    pub fn wait_output(&self, needle: &str, n: usize, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let out = self.output();
            if out.matches(needle).count() >= n {
                return out;
            }
            assert!(
                t0.elapsed() < limit,
                "{}: no {n} x {needle:?} within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `quit` (linphone unregisters first), then a bounded wait; killed if still running.
    pub fn quit(&mut self, limit: Duration) {
        if self.child.is_none() {
            return;
        }
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "quit");
            let _ = s.flush();
        }
        let mut c = self.child.take().unwrap();
        if wait_timeout(&mut c, limit).is_none() {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} did not quit within {limit:?}", self.name);
        }
    }

    /// The console output and the end of the log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        format!(
            "--- {} console ---\n{}\n--- {} log (last 200 lines of {}) ---\n{tail}\n--- {} linphonerc ---\n{}",
            self.name,
            self.output(),
            self.name,
            lines.len(),
            self.name,
            self.config()
        )
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One datagram the relay forwarded.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// From the client to the server (else from the server to the client).
    pub to_server: bool,
    pub at: Instant,
    /// As the sender sent it.
    pub text: String,
    /// The relay forwarded it with the registration's expiry shortened (see
    /// [`UdpRelay::start_granting`]).
    pub rewritten: bool,
}

impl Datagram {
    /// A SIP message (linphone also sends bare CRLF keep-alives on UDP).
    pub fn is_sip(&self) -> bool {
        !self.text.trim().is_empty()
    }

    /// A keep-alive: nothing but CR and LF.
    pub fn is_keepalive(&self) -> bool {
        !self.text.is_empty() && self.text.bytes().all(|b| b == b'\r' || b == b'\n')
    }

    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.start_line().starts_with(&format!("{method} "))
    }

    pub fn status(&self) -> Option<u16> {
        let l = self.start_line().strip_prefix("SIP/2.0 ")?;
        l.get(..3)?.parse().ok()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or("")
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> (u32, &str) {
        let v = self.header("CSeq").unwrap_or("");
        let (n, m) = v.split_once(' ').unwrap_or((v, ""));
        (n.trim().parse().unwrap_or(0), m.trim())
    }
}

/// One parameter of a digest challenge or answer (`name=value` or `name="value"`).
pub fn digest_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let body = header.trim();
    let body = body
        .strip_prefix("Digest")
        .or_else(|| body.strip_prefix("digest"))
        .unwrap_or(body);
    body.split(',').find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The last 8 characters of a nonce (its first ones are a time stamp, alike in all).
fn tail(nonce: &str) -> &str {
    nonce.get(nonce.len().saturating_sub(8)..).unwrap_or(nonce)
}

/// A REGISTER the relay forwarded and the final response it carried back.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Datagram,
    pub response: Option<Datagram>,
}

impl Exchange {
    /// The `algorithm` of the request's Authorization header(s), in order.
    pub fn answered_with(&self) -> Vec<String> {
        self.request
            .headers("Authorization")
            .iter()
            .map(|a| digest_param(a, "algorithm").unwrap_or("MD5").to_owned())
            .collect()
    }

    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().and_then(Datagram::status)
    }

    /// The response's challenges all say `stale=true` (and there is at least one).
    pub fn stale(&self) -> bool {
        let challenges = self
            .response
            .as_ref()
            .map(|r| r.headers("WWW-Authenticate"))
            .unwrap_or_default();
        !challenges.is_empty()
            && challenges
                .iter()
                .all(|c| digest_param(c, "stale").is_some_and(|v| v.eq_ignore_ascii_case("true")))
    }

    /// A parameter of the request's (first) Authorization header.
    pub fn answered(&self, param: &str) -> Option<&str> {
        digest_param(self.request.header("Authorization")?, param)
    }

    /// A parameter of the response's first WWW-Authenticate header.
    pub fn challenged(&self, param: &str) -> Option<&str> {
        digest_param(self.response.as_ref()?.header("WWW-Authenticate")?, param)
    }

    /// The `algorithm` of every WWW-Authenticate of the response, in order.
    pub fn offered(&self) -> Vec<String> {
        self.response
            .as_ref()
            .map(|r| {
                r.headers("WWW-Authenticate")
                    .iter()
                    .map(|c| digest_param(c, "algorithm").unwrap_or("MD5").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn show(&self) -> String {
        let auth = self
            .request
            .headers("Authorization")
            .iter()
            .map(|a| {
                format!(
                    " [Authorization algorithm={} nonce=..{} nc={}]",
                    digest_param(a, "algorithm").unwrap_or("-"),
                    tail(digest_param(a, "nonce").unwrap_or("-")),
                    digest_param(a, "nc").unwrap_or("-")
                )
            })
            .collect::<String>();
        let resp = self
            .response
            .as_ref()
            .map_or("(no answer)".to_owned(), |r| {
                let offers = r
                    .headers("WWW-Authenticate")
                    .iter()
                    .map(|c| {
                        format!(
                            " [WWW-Authenticate algorithm={} nonce=..{}{}]",
                            digest_param(c, "algorithm").unwrap_or("-"),
                            tail(digest_param(c, "nonce").unwrap_or("-")),
                            if digest_param(c, "stale").is_some() {
                                " stale"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<String>();
                format!("{}{offers}", r.start_line())
            });
        format!(
            "REGISTER CSeq {} Call-ID {} Expires {}{auth} -> {resp}",
            self.request.cseq().0,
            self.request.call_id(),
            self.request.header("Expires").unwrap_or("-"),
        )
    }
}

/// A UDP relay between one client and the server that records every datagram: the client
/// sends to `addr`, the server sees the relay's `upstream` socket (like a NAT, so linphone
/// writes `upstream` into its Contact after its first REGISTER; the server's requests to the
/// client come through the relay too).
pub struct UdpRelay {
    pub name: String,
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    log: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    pub fn start(name: &str, server: SocketAddr) -> Self {
        Self::start_with(name, server, None)
    }

    /// A relay that tells the client its registrations last `secs` seconds: in every 2xx to a
    /// REGISTER the Contact's `expires` parameters and the Expires header (when not 0) become
    /// `secs`. The server keeps the binding for what it granted; the client refreshes at 90 %
    /// of `secs` (belle-sip), so a test sees linphone's own refreshes without waiting 54 s.
    /// The log keeps the server's text as sent (`rewritten` marks these).
    pub fn start_granting(name: &str, server: SocketAddr, secs: u32) -> Self {
        Self::start_with(name, server, Some(secs))
    }

    fn start_with(name: &str, server: SocketAddr, grant: Option<u32>) -> Self {
        let down = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&down, &up] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let (addr, upstream) = (down.local_addr().unwrap(), up.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = Arc::new(Mutex::new(None::<SocketAddr>));
        let pump = |from: UdpSocket, to: UdpSocket, to_server: bool| {
            let (log, stop, client) = (log.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let dest = if to_server {
                        *client.lock().unwrap() = Some(src);
                        Some(server)
                    } else {
                        *client.lock().unwrap()
                    };
                    let shortened = grant
                        .filter(|_| !to_server)
                        .and_then(|secs| shorten_registration(&text, secs));
                    if let Some(dest) = dest {
                        let bytes = shortened.as_ref().map_or(&buf[..n], |t| t.as_bytes());
                        let _ = to.send_to(bytes, dest);
                    }
                    log.lock().unwrap().push(Datagram {
                        to_server,
                        at: Instant::now(),
                        text,
                        rewritten: shortened.is_some(),
                    });
                }
            })
        };
        let threads = vec![
            pump(down.try_clone().unwrap(), up.try_clone().unwrap(), true),
            pump(up, down, false),
        ];
        Self {
            name: name.into(),
            addr,
            upstream,
            log,
            stop,
            threads,
        }
    }

    pub fn datagrams(&self) -> Vec<Datagram> {
        self.log.lock().unwrap().clone()
    }

    /// Every REGISTER the client sent (retransmissions left out), each with the final
    /// response the server sent back.
    pub fn registers(&self) -> Vec<Exchange> {
        let all = self.datagrams();
        let mut seen = std::collections::HashSet::new();
        all.iter()
            .filter(|d| d.to_server && d.is_request("REGISTER"))
            .filter(|d| seen.insert((d.call_id().to_owned(), d.cseq().0)))
            .map(|req| Exchange {
                request: req.clone(),
                response: all
                    .iter()
                    .filter(|r| !r.to_server && r.status().is_some_and(|c| c >= 200))
                    .find(|r| r.call_id() == req.call_id() && r.cseq() == req.cseq())
                    .cloned(),
            })
            .collect()
    }

    /// Waits (bounded) until `pred` holds for the REGISTER exchanges; returns them.
    pub fn wait_registers(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[Exchange]) -> bool,
    ) -> Vec<Exchange> {
        let t0 = Instant::now();
        loop {
            let r = self.registers();
            if pred(&r) {
                return r;
            }
            assert!(
                t0.elapsed() < limit,
                "{}: {what}: not within {limit:?}; REGISTERs seen:\n{}",
                self.name,
                show(&r)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every SIP message forwarded, in order, for failure messages.
    pub fn transcript(&self) -> String {
        let all = self.datagrams();
        let t0 = all.first().map(|d| d.at);
        all.iter()
            .map(|d| {
                let ms = t0.map_or(0, |t| d.at.duration_since(t).as_millis());
                let dir = if d.to_server {
                    "client -> server"
                } else {
                    "server -> client"
                };
                if d.rewritten {
                    format!(
                        "[{ms} ms] {dir} (forwarded with a shorter expiry)\n{}",
                        d.text.trim_end()
                    )
                } else if d.is_sip() {
                    format!("[{ms} ms] {dir}\n{}", d.text.trim_end())
                } else {
                    format!("[{ms} ms] {dir}: keep-alive {:?}", d.text)
                }
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// `text` with the expiry of a 2xx to a REGISTER set to `secs` (see
/// [`UdpRelay::start_granting`]); `None` when it is no such response or holds no expiry.
fn shorten_registration(text: &str, secs: u32) -> Option<String> {
    if !text.starts_with("SIP/2.0 2") {
        return None;
    }
    let (head, body) = text.split_once("\r\n\r\n")?;
    let header = |line: &str| {
        line.split_once(':')
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
    };
    if !head
        .split("\r\n")
        .filter_map(header)
        .any(|(n, v)| n == "cseq" && v.ends_with("REGISTER"))
    {
        return None;
    }
    let mut changed = false;
    let lines: Vec<String> = head
        .split("\r\n")
        .map(|line| match header(line) {
            Some((n, v)) if n == "expires" && v.parse::<u32>().is_ok_and(|e| e > 0) => {
                changed = true;
                format!("Expires: {secs}")
            }
            Some((n, _)) if n == "contact" || n == "m" => {
                // Each `;expires=N` (N > 0) of the line.
                let mut out = String::new();
                let mut rest = line;
                while let Some(i) = rest.to_ascii_lowercase().find(";expires=") {
                    let (before, after) = rest.split_at(i + ";expires=".len());
                    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                    out.push_str(before);
                    if after[..digits].parse::<u32>().is_ok_and(|e| e > 0) {
                        changed = true;
                        out.push_str(&secs.to_string());
                    } else {
                        out.push_str(&after[..digits]);
                    }
                    rest = &after[digits..];
                }
                out.push_str(rest);
                out
            }
            _ => line.to_owned(),
        })
        .collect();
    changed.then(|| format!("{}\r\n\r\n{body}", lines.join("\r\n")))
}

/// REGISTER exchanges, one a line.
pub fn show(ex: &[Exchange]) -> String {
    ex.iter().map(Exchange::show).collect::<Vec<_>>().join("\n")
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- relay {} ({} <-> {}) ---\n{}",
                self.name,
                self.addr,
                self.upstream,
                self.transcript()
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Prints the end of every server log in a data directory (`server-PORT.log`, one per start)
/// if the test panics.
pub struct ServerLogOnPanic(pub PathBuf);

impl Drop for ServerLogOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("server-") && n.ends_with(".log"))
            })
            .collect();
        logs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        for log in logs {
            print_tail("server log", &log, 150);
        }
    }
}

pub fn print_tail(what: &str, path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!(
        "--- {what} {} (last {n} lines) ---\n{}",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    );
}
