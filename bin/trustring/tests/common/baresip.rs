//! Real baresip user agents (Debian's `baresip-core`, baresip 1.0.0 on libre 1.x) for the
//! interop tests, and a UDP "NAT box" to put one of them behind a simulated NAT on loopback.
//!
//! Each [`Baresip`] is its own process with its own config directory (`-f DIR`: a generated
//! `config` and `accounts`), headless (no audio device: no player module at all, an `ausine`
//! tone as the source, the `sndfile` filter writing what it decodes to `DIR/rec/*-dec.wav`),
//! bound to 127.0.0.1 only (`sip_listen`, `net_interface`, a loopback `dns_server`), and
//! driven through the `ctrl_tcp` module: netstring-framed JSON commands (`dial`, `accept`,
//! `hangup`, from the `menu` module) and JSON events back (`CALL_INCOMING`,
//! `CALL_ESTABLISHED`, `CALL_CLOSED`, ...). `-s` writes its SIP trace to its stdout file.
//! The process is killed by its PID on drop (and quits by itself after `-t` seconds anyway);
//! on a panic its output and events are printed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Server, free_port};

/// The baresip binary, or a panic saying how to get it (the suite fails, never skips).
pub fn require() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("baresip"))
            .find(|p| p.is_file())
    });
    let Some(bin) = found else {
        panic!(
            "baresip is not installed: the interop tests need Debian's baresip-core \
             (apt-get install -y baresip-core; .ci/run installs it)"
        );
    };
    let modules = Path::new(MODULES);
    for m in ["ctrl_tcp", "menu", "account", "g711", "ausine", "sndfile"] {
        assert!(
            modules.join(format!("{m}.so")).is_file(),
            "baresip module {m}.so missing in {MODULES} (package baresip-core)"
        );
    }
    bin
}

const MODULES: &str = "/usr/lib/baresip/modules";

/// A SIP port for baresip: `sip_listen 127.0.0.1:P` binds UDP and TCP `P` and TLS on TCP
/// `P + 1`, so both must be free.
pub fn free_sip_port() -> u16 {
    for _ in 0..100 {
        let p = free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for baresip");
}

/// Polls `f` every 20 ms until it gives `Some`, at most `limit`; panics with `what()`.
pub fn wait_until<T>(
    limit: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > limit {
            panic!("timed out after {limit:?}: {}", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIP transport of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (`;transport=tls`); the account's outbound must be the server's TLS
    /// address.
    Tls,
}

/// One baresip instance's account and media set-up.
#[derive(Debug, Clone)]
pub struct Account {
    /// `sip:USER@localhost`, digest user `USER`.
    pub user: String,
    pub password: String,
    pub transport: Transport,
    /// Where every request goes first (the account's `outbound` proxy): the server, or a
    /// NAT box in front of it.
    pub outbound: SocketAddr,
    /// The audio it sends: `ausine` at this frequency (none: no source module).
    pub tone_hz: Option<u32>,
    /// The CA file it trusts for TLS (`sip_cafile`): the server's self-signed certificate.
    pub cafile: Option<PathBuf>,
    /// Media encryption (`;mediaenc=`, e.g. `srtp-mand`: SDES SRTP, RTP/SAVP, or no call);
    /// loads the `srtp` module.
    pub mediaenc: Option<String>,
}

impl Account {
    pub fn new(user: &str, password: &str, transport: Transport, outbound: SocketAddr) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            transport,
            outbound,
            tone_hz: None,
            cafile: None,
            mediaenc: None,
        }
    }

    /// Encrypts its media: `srtp-mand` offers and accepts only SDES SRTP (`RTP/SAVP`).
    pub fn mediaenc(mut self, mode: &str) -> Self {
        self.mediaenc = Some(mode.into());
        self
    }

    /// Trusts `cert` (PEM) for TLS: `sip_cafile`. Note that baresip 1.0.0 (libre 1.1) does
    /// not check the server's certificate at all: it connects with no CA file, or with a
    /// wrong one (tried). The option is set so a verifying build (baresip 1.1 and later,
    /// `sip_verify_server`) would accept the server's self-signed certificate too.
    pub fn cafile(mut self, cert: &Path) -> Self {
        self.cafile = Some(cert.to_owned());
        self
    }

    pub fn tone(mut self, hz: u32) -> Self {
        self.tone_hz = Some(hz);
        self
    }
}

/// A running baresip, killed by PID on drop.
pub struct Baresip {
    pub name: String,
    /// Its SIP address (UDP and TCP).
    pub sip: SocketAddr,
    pub account: Account,
    child: Option<Child>,
    dir: tempfile::TempDir,
    ctrl: Ctrl,
}

impl Baresip {
    /// Writes the config directory, starts `baresip -f DIR -s` and connects to its
    /// `ctrl_tcp` port (bounded; panics with its output if it does not come up).
    pub fn start(name: &str, account: Account) -> Self {
        let bin = require();
        let dir = tempfile::Builder::new()
            .prefix(&format!("baresip-{name}-"))
            .tempdir()
            .unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{}", free_sip_port()).parse().unwrap();
        let ctrl_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let rec = dir.path().join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(
            dir.path().join("config"),
            config(
                sip,
                ctrl_addr,
                &rec,
                account.tone_hz,
                account.cafile.as_deref(),
                account.mediaenc.is_some(),
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("accounts"), account_line(&account)).unwrap();
        let out = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        let child = Command::new(bin)
            .arg("-f")
            .arg(dir.path())
            // SIP trace to stdout; quit after 120 s even if this test process dies.
            .args(["-s", "-t", "120"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start baresip (package baresip-core)");
        let mut b = Self {
            name: name.into(),
            sip,
            account,
            child: Some(child),
            dir,
            ctrl: Ctrl::dead(),
        };
        let t0 = Instant::now();
        let stream = loop {
            if let Ok(s) = TcpStream::connect_timeout(&ctrl_addr, Duration::from_millis(200)) {
                break s;
            }
            if let Some(st) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("baresip {name} exited ({st}); its output follows");
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!(
                    "baresip {name}: no ctrl_tcp on {ctrl_addr} after 10 s (its output follows)",
                );
            }
            std::thread::sleep(Duration::from_millis(30));
        };
        b.ctrl = Ctrl::connect(stream);
        b
    }

    /// Runs a command (`dial`, `accept`, `hangup`, ...) and returns its response's `data`;
    /// panics if baresip says it failed or does not answer within 5 s.
    pub fn command(&self, cmd: &str, params: Option<&str>) -> String {
        let resp = self.try_command(cmd, params);
        assert_eq!(
            resp["ok"],
            Value::Bool(true),
            "baresip {}: {cmd} failed: {resp} (its output follows)",
            self.name,
        );
        resp["data"].as_str().unwrap_or_default().to_owned()
    }

    /// Runs a command and returns the whole response (`{"ok": .., "data": ..}`), failed or
    /// not; panics only if baresip does not answer within 5 s.
    pub fn try_command(&self, cmd: &str, params: Option<&str>) -> Value {
        let token = self.ctrl.send(cmd, params);
        wait_until(
            Duration::from_secs(5),
            || {
                format!(
                    "baresip {}: no response to {cmd} (its output follows)",
                    self.name
                )
            },
            || self.ctrl.response(&token),
        )
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.ctrl.events()
    }

    /// The first event of type `kind` (e.g. `CALL_INCOMING`), if any yet.
    pub fn event(&self, kind: &str) -> Option<Value> {
        self.events().into_iter().find(|e| e["type"] == kind)
    }

    /// Waits (bounded) for an event of type `kind` and returns it.
    pub fn wait_event(&self, kind: &str, limit: Duration) -> Value {
        wait_until(
            limit,
            || {
                format!(
                    "baresip {}: no {kind} event (its output follows)",
                    self.name
                )
            },
            || self.event(kind),
        )
    }

    /// Its SIP trace (`-s`): every message it sent or received, header section only.
    pub fn sip_trace(&self) -> Vec<TracedMessage> {
        parse_trace(&self.stdout())
    }

    /// The traced messages whose start line begins with `start` (`"CANCEL "`,
    /// `"SIP/2.0 407"`, ...).
    pub fn traced(&self, start: &str) -> Vec<TracedMessage> {
        self.sip_trace()
            .into_iter()
            .filter(|m| m.start_line().starts_with(start))
            .collect()
    }

    /// The audio it decoded during its call (the `sndfile` filter's `*-dec.wav`), once the
    /// file is complete (libsndfile writes the sizes on close, at the end of the call) and
    /// holds at least `min` of audio; bounded.
    pub fn recording(&self, min: Duration) -> media::wav::Wav {
        let rec = self.dir.path().join("rec");
        wait_until(
            Duration::from_secs(5),
            || {
                format!(
                    "baresip {}: no recording of {min:?} in {} ({:?}) (its output follows)",
                    self.name,
                    rec.display(),
                    std::fs::read_dir(&rec)
                        .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                        .unwrap_or_default()
                )
            },
            || {
                let file = std::fs::read_dir(&rec)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with("-dec.wav"))?;
                let wav = media::wav::read(std::fs::File::open(file).ok()?).ok()?;
                let need = min.as_millis() * u128::from(wav.rate) / 1000;
                (wav.samples.len() as u128 >= need).then_some(wav)
            },
        )
    }

    /// Waits (bounded) until the server lists a registration of `user` for which `pred`
    /// holds (one entry of `GET /api/v1/subscribers/{user}/registrations`); returns it.
    pub fn wait_registered(
        &self,
        server: &Server,
        user: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(
            Duration::from_secs(10),
            || {
                format!(
                    "baresip {} did not register as {user}; registrations: {} (its output follows)",
                    self.name,
                    server.registrations(user),
                )
            },
            || {
                let regs: Value = serde_json::from_str(&server.registrations(user)).ok()?;
                regs.as_array()?.iter().find(|r| pred(r)).cloned()
            },
        )
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default()
    }

    /// Its config, accounts, output (ANSI colours removed) and events, for failure messages.
    pub fn diagnostics(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let out = strip_ansi(&read("stdout.txt"));
        let lines: Vec<&str> = out.lines().collect();
        let tail = lines[lines.len().saturating_sub(400)..].join("\n");
        let events: Vec<String> = self.events().iter().map(Value::to_string).collect();
        format!(
            "===== baresip {} (SIP {}, {}) =====\n--- accounts ---\n{}--- stdout (last 400 lines; SIP trace) ---\n{}\n--- stderr ---\n{}\n--- ctrl_tcp events ---\n{}\n===== end of baresip {} =====",
            self.name,
            self.sip,
            self.dir.path().display(),
            read("accounts"),
            tail,
            strip_ansi(&read("stderr.txt")),
            events.join("\n"),
            self.name
        )
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.child.take() {
            // By PID (Child::kill is kill(pid, SIGKILL)); it has nothing to save.
            let _ = c.kill();
            let _ = super::wait_timeout(&mut c, Duration::from_secs(5));
        }
        self.ctrl.close();
    }
}

/// The `config` file of one instance: loopback only, no audio device, explicit modules.
fn config(
    sip: SocketAddr,
    ctrl: SocketAddr,
    rec: &Path,
    tone_hz: Option<u32>,
    cafile: Option<&Path>,
    srtp: bool,
) -> String {
    let mut c = format!(
        "# generated by bin/trustring/tests/common/baresip.rs (baresip 1.0.0)
poll_method\t\tepoll
sip_listen\t\t{sip}
call_local_timeout\t60
call_max_calls\t\t4
audio_buffer\t\t20-160
audio_level\t\tno
ausrc_format\t\ts16
auplay_format\t\ts16
auenc_format\t\ts16
audec_format\t\ts16
rtcp_mux\t\tno
jitter_buffer_delay\t1-10
rtp_stats\t\tno
# loopback only: local address (SDP, Via, Contact) and a DNS server where nothing answers
net_interface\t\t127.0.0.1
dns_server\t\t127.0.0.1:9
statmode_default\toff
module_path\t\t{MODULES}
module\t\t\tg711.so
module\t\t\tsndfile.so
module_app\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t{ctrl}
snd_path\t\t{}
",
        rec.display()
    );
    if let Some(hz) = tone_hz {
        // ausine 1.0.0 only runs at 48 kHz stereo; baresip resamples to the codec's 8 kHz.
        c.push_str(&format!(
            "module\t\t\tausine.so\naudio_source\t\tausine,{hz}\nausrc_srate\t\t48000\nausrc_channels\t\t2\n"
        ));
    }
    if let Some(ca) = cafile {
        c.push_str(&format!("sip_cafile\t\t{}\n", ca.display()));
    }
    if srtp {
        c.push_str("module\t\t\tsrtp.so\n");
    }
    c
}

/// The `accounts` line: `<sip:USER@localhost[;transport=tcp|tls]>;auth_pass=..;outbound=..`.
fn account_line(a: &Account) -> String {
    let t = match a.transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    let enc = a
        .mediaenc
        .as_deref()
        .map(|m| format!(";mediaenc={m}"))
        .unwrap_or_default();
    format!(
        "<sip:{user}@localhost{t}>;auth_pass={pw};outbound=\"sip:{ob}{t}\";regint=600;answermode=manual{enc}\n",
        user = a.user,
        pw = a.password,
        ob = a.outbound,
    )
}

/// One message of a `-s` SIP trace: `UDP|TCP SRC -> DST` and its header section.
#[derive(Debug, Clone)]
pub struct TracedMessage {
    pub transport: String,
    pub src: String,
    pub dst: String,
    pub head: String,
}

impl TracedMessage {
    pub fn start_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The values of header `name` (case-insensitive; no compact forms).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

impl std::fmt::Display for TracedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {}\n{}",
            self.transport, self.src, self.dst, self.head
        )
    }
}

/// Splits baresip's `-s` output into messages. Each is printed as a `#` line, a
/// `UDP 127.0.0.1:A -> 127.0.0.1:B` line, then the message; other log lines may come in
/// between messages but not inside a header section, which ends at the first empty line.
fn parse_trace(out: &str) -> Vec<TracedMessage> {
    // SIP lines end in CRLF; baresip's own lines in LF, and status lines in a lone CR.
    let text = strip_ansi(out).replace("\r\n", "\n");
    let mut msgs = Vec::new();
    let mut lines = text.split(['\n', '\r']);
    while let Some(line) = lines.next() {
        let mut words = line.split(' ');
        let (Some(transport @ ("UDP" | "TCP" | "TLS")), Some(src), Some("->"), Some(dst), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let mut head = String::new();
        for l in lines.by_ref() {
            if l.is_empty() {
                break;
            }
            head.push_str(l);
            head.push('\n');
        }
        msgs.push(TracedMessage {
            transport: transport.into(),
            src: src.into(),
            dst: dst.into(),
            head,
        });
    }
    msgs
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `ctrl_tcp` connection: a reader thread collects responses and events.
struct Ctrl {
    writer: Option<TcpStream>,
    inbox: Arc<Mutex<Inbox>>,
    reader: Option<JoinHandle<()>>,
    next_token: AtomicU64,
}

#[derive(Default)]
struct Inbox {
    events: Vec<Value>,
    responses: Vec<Value>,
    /// Input that was not a netstring of JSON (kept for the diagnostics).
    garbage: Vec<String>,
}

impl Ctrl {
    fn dead() -> Self {
        Self {
            writer: None,
            inbox: Arc::default(),
            reader: None,
            next_token: AtomicU64::new(1),
        }
    }

    fn connect(stream: TcpStream) -> Self {
        let mut rd = stream.try_clone().unwrap();
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let sink = inbox.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // Ends when the peer closes or `close` shuts the socket down.
                let n = match rd.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match take_netstring(&mut buf) {
                        Netstring::Incomplete => break,
                        Netstring::Bad => {
                            let mut inbox = sink.lock().unwrap_or_else(PoisonError::into_inner);
                            inbox
                                .garbage
                                .push(String::from_utf8_lossy(&buf).into_owned());
                            return;
                        }
                        Netstring::Message(m) => {
                            let mut inbox = sink.lock().unwrap_or_else(PoisonError::into_inner);
                            match serde_json::from_slice::<Value>(&m) {
                                Ok(v) if v["event"] == true => inbox.events.push(v),
                                Ok(v) if v["response"] == true => inbox.responses.push(v),
                                _ => inbox.garbage.push(String::from_utf8_lossy(&m).into_owned()),
                            }
                        }
                    }
                }
            }
        });
        Self {
            writer: Some(stream),
            inbox,
            reader: Some(reader),
            next_token: AtomicU64::new(1),
        }
    }

    /// Sends a command; returns its token.
    fn send(&self, cmd: &str, params: Option<&str>) -> String {
        let token = format!("t{}", self.next_token.fetch_add(1, Ordering::Relaxed));
        let mut msg = serde_json::json!({ "command": cmd, "token": token });
        if let Some(p) = params {
            msg["params"] = Value::String(p.into());
        }
        let body = msg.to_string();
        let mut w = self.writer.as_ref().expect("ctrl_tcp connected");
        w.write_all(format!("{}:{body},", body.len()).as_bytes())
            .expect("write to baresip ctrl_tcp");
        token
    }

    fn response(&self, token: &str) -> Option<Value> {
        let inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        inbox
            .responses
            .iter()
            .find(|r| r["token"] == token)
            .cloned()
    }

    fn events(&self) -> Vec<Value> {
        let inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v = inbox.events.clone();
        v.extend(
            inbox
                .garbage
                .iter()
                .map(|g| serde_json::json!({ "not-json": g })),
        );
        v
    }

    fn close(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

enum Netstring {
    Incomplete,
    Bad,
    Message(Vec<u8>),
}

/// Takes one `LEN:PAYLOAD,` off the front of `buf`.
fn take_netstring(buf: &mut Vec<u8>) -> Netstring {
    const MAX: usize = 1 << 20;
    let Some(colon) = buf.iter().position(|&b| b == b':') else {
        return if buf.len() > 10 || !buf.iter().all(u8::is_ascii_digit) {
            Netstring::Bad
        } else {
            Netstring::Incomplete
        };
    };
    let len = match std::str::from_utf8(&buf[..colon])
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<usize>().ok())
    {
        Some(l) if l <= MAX => l,
        _ => return Netstring::Bad,
    };
    let end = colon + 1 + len;
    if buf.len() <= end {
        return Netstring::Incomplete;
    }
    if buf[end] != b',' {
        return Netstring::Bad;
    }
    let msg = buf[colon + 1..end].to_vec();
    buf.drain(..=end);
    Netstring::Message(msg)
}

/// A NAT on loopback for one UDP SIP device.
///
/// The device (baresip on `127.0.0.1:B`) uses the box's `inside` address as its outbound
/// proxy; the box relays to the server from its own `outside` socket `127.0.0.1:O`, and
/// what the server sends to `O` goes back to the device. Loopback has one address, so the
/// box also stands in for the route: in messages going in it writes its inside address for
/// the server's, and the reverse going out, so that every SIP packet of the device crosses
/// the box, as every packet of a phone behind a NAT crosses the NAT. Going out it also
/// writes `private` (e.g. `127.0.0.70:5060`, where nothing listens) for the device's own
/// `127.0.0.1:B` in Contact and Via, as a phone behind a NAT puts its private address there.
/// Only the header section is rewritten, never the body (SDP and RTP are not relayed: media
/// go directly between the phones on 127.0.0.1). Every address is a loopback one.
pub struct NatBox {
    pub inside: SocketAddr,
    pub outside: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NatBox {
    pub fn start(server: SocketAddr, private: &str) -> NatBoxBuilder {
        NatBoxBuilder {
            server,
            private: private.into(),
            inside: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// `in`/`out` and the start line of every datagram relayed so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A NAT box whose inside address is known (the device's outbound proxy) before the device,
/// and so the device's own address, exists.
pub struct NatBoxBuilder {
    server: SocketAddr,
    private: String,
    inside: UdpSocket,
}

impl NatBoxBuilder {
    pub fn inside(&self) -> SocketAddr {
        self.inside.local_addr().unwrap()
    }

    /// Starts relaying for the device at `device`.
    pub fn device(self, device: SocketAddr) -> NatBox {
        let inside_sock = self.inside;
        let outside_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inside = inside_sock.local_addr().unwrap();
        let outside = outside_sock.local_addr().unwrap();
        for s in [&inside_sock, &outside_sock] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let server = self.server;
        let (server_s, inside_s, device_s) =
            (server.to_string(), inside.to_string(), device.to_string());
        let private = self.private;

        // Out: device -> inside socket -> outside socket -> server.
        let out_thread = {
            let (rx, tx) = (
                inside_sock.try_clone().unwrap(),
                outside_sock.try_clone().unwrap(),
            );
            let (log, stop) = (log.clone(), stop.clone());
            let (server_s, inside_s) = (server_s.clone(), inside_s.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = rx.recv_from(&mut buf) else {
                        continue;
                    };
                    if from != device {
                        continue; // a NAT maps its inside hosts only
                    }
                    let msg = rewrite_head(&buf[..n], |line| {
                        let line = replace_addr(&line, &inside_s, &server_s);
                        if is_header(&line, &["via", "v", "contact", "m"]) {
                            replace_addr(&line, &device_s, &private)
                        } else {
                            line
                        }
                    });
                    note(&log, "out", &msg);
                    let _ = tx.send_to(&msg, server);
                }
            })
        };
        // In: anyone -> outside socket -> inside socket -> device.
        let in_thread = {
            let (rx, tx) = (outside_sock, inside_sock);
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _from)) = rx.recv_from(&mut buf) else {
                        continue;
                    };
                    let msg =
                        rewrite_head(&buf[..n], |line| replace_addr(&line, &server_s, &inside_s));
                    note(&log, "in", &msg);
                    let _ = tx.send_to(&msg, device);
                }
            })
        };
        NatBox {
            inside,
            outside,
            log,
            stop,
            threads: vec![out_thread, in_thread],
        }
    }
}

impl Drop for NatBox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn note(log: &Mutex<Vec<String>>, dir: &str, msg: &[u8]) {
    let first = msg
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(format!("{dir} {}", String::from_utf8_lossy(first)));
}

/// `line` with every `from` (an `ip:port`) that is not followed by another digit written as
/// `to` (`127.0.0.1:5060` must not match inside `127.0.0.1:50601`).
fn replace_addr(line: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whether `line` is one of the headers `names` (lower-case, long or compact form).
fn is_header(line: &str, names: &[&str]) -> bool {
    line.split_once(':')
        .is_some_and(|(n, _)| names.contains(&n.trim().to_ascii_lowercase().as_str()))
}

/// Applies `f` to each line of the header section of a SIP datagram (up to the first empty
/// line); the body is copied unchanged (Content-Length counts the body only). A datagram
/// without a header section, or not UTF-8 there, is relayed as it is.
fn rewrite_head(msg: &[u8], f: impl Fn(String) -> String) -> Vec<u8> {
    let Some(end) = msg.windows(4).position(|w| w == b"\r\n\r\n") else {
        return msg.to_vec();
    };
    let Ok(head) = std::str::from_utf8(&msg[..end]) else {
        return msg.to_vec();
    };
    let head: Vec<String> = head.split("\r\n").map(|l| f(l.to_owned())).collect();
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(&msg[end..]);
    out
}

/// Prints the tail of the server's log if the test panics. Declare it after the `Server`
/// (whose drop removes the log) and before the baresips (whose output is printed first).
pub struct ServerLogOnPanic(pub PathBuf);

impl Drop for ServerLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = strip_ansi(&std::fs::read_to_string(&self.0).unwrap_or_default());
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "===== server log (last 300 lines) =====\n{}\n===== end of server log =====",
                lines[lines.len().saturating_sub(300)..].join("\n")
            );
        }
    }
}
