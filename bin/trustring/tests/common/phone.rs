//! An enrolled phone for the end-to-end tests: `trustring device init` + `enroll URI` in a
//! temporary zone (software, or a SoftHSM2 PKCS#11 token of its own), over HTTPS with the
//! server's key pinned by the enrolment URI the admin API issued.
//!
//! Also a TLS relay ([`Relay`]) between a phone and the enrolment endpoint, for the man in
//! the middle tests: it terminates TLS with whatever identity it is given (its own, or the
//! server's genuine one to observe an enrolment), records the plain text it reads, and
//! forwards each request to the real endpoint over HTTPS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Server;

/// The zone PIN / passphrase every test phone uses.
pub const PIN: &str = "1234";

/// Output of a `trustring device …` command that must succeed.
pub fn dev(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = dev_output(env, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "device {args:?} failed: {text}");
    text
}

/// A `trustring device …` command, whatever its outcome.
pub fn dev_output(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trustring"))
        .arg("device")
        .args(args)
        .envs(env.iter().copied())
        .env("TRUSTRING_ZONE_PIN", PIN)
        .env_remove("TRUSTRING_ENROL_URI")
        .env_remove("TRUSTRING_ENROL_CODE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub struct Phone {
    pub zone: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub _dir: tempfile::TempDir,
    /// Everything the device commands printed (scanned for secrets at the end).
    pub printed: String,
    /// The SIP password and device token of the enrolment reply, when the enrolment was
    /// observed ([`enrol_observed`]): the phone itself keeps them sealed in its zone.
    pub secrets: Option<(String, String)>,
}

impl Phone {
    /// A zone made by `trustring device init --backend BACKEND`, not enrolled.
    pub fn init(backend: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("zone");
        let env = if backend == "pkcs11" {
            softhsm(dir.path())
        } else {
            Vec::new()
        };
        let mut p = Self {
            zone,
            env,
            _dir: dir,
            printed: String::new(),
            secrets: None,
        };
        let out = p.cmd(&["init", "--backend", backend]);
        assert!(out.contains(&format!("security level: {backend}")), "{out}");
        p
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    pub fn cmd(&mut self, args: &[&str]) -> String {
        let zone = self.zone.to_str().unwrap().to_owned();
        let mut all = args.to_vec();
        all.extend(["--zone", &zone]);
        let out = dev(&self.env(), &all);
        self.printed.push_str(&out);
        out
    }

    /// `trustring device enroll URI --accept-eula`, whatever its outcome: (success, output).
    pub fn try_enrol(&mut self, uri: &str) -> (bool, String) {
        let zone = self.zone.to_str().unwrap().to_owned();
        let out = dev_output(
            &self.env(),
            &["enroll", uri, "--accept-eula", "--zone", &zone],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.printed.push_str(&text);
        (out.status.success(), text)
    }

    pub fn device_json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.zone.join("device.json")).unwrap())
            .unwrap()
    }

    /// Every file of the phone: its zone directory and, for a PKCS#11 zone, its token's
    /// files (the whole temporary directory holds both), as (path, bytes).
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(self._dir.path(), &mut out);
        out
    }
}

/// A SoftHSM2 token directory of its own, with one token labelled `trustring-zone`.
pub fn softhsm(dir: &Path) -> Vec<(&'static str, String)> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let st = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "trustring-zone"])
        .args(["--so-pin", "12345678", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .status()
        .expect("softhsm2-util is needed (apt-get install softhsm2; .ci/run does it)");
    assert!(st.success());
    vec![("SOFTHSM2_CONF", conf.to_str().unwrap().to_owned())]
}

/// The server's TLS key fingerprint (of `DATA/tls/cert.pem`, made at its first start).
pub fn fingerprint(s: &Server) -> tls::Fingerprint {
    identity(&s.data.join("tls")).fingerprint
}

/// The TLS identity kept in `dir` (made there if missing).
pub fn identity(dir: &Path) -> tls::ServerIdentity {
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    tls::ServerIdentity::load_or_create(dir, None, None, &names).unwrap()
}

/// A fresh enrolment code for `user`, as the enrolment URI the admin API issues with it.
pub fn enrol_uri(s: &Server, user: &str) -> String {
    let (c, b) = s.api(
        "POST",
        &format!("/api/v1/subscribers/{user}/enrolments"),
        None,
    );
    assert_eq!(c, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let uri = v["uri"].as_str().unwrap().to_owned();
    assert!(
        uri.starts_with(&format!("trustring-enrol://{}?code=", s.enrol)),
        "{uri}"
    );
    assert!(uri.ends_with(&format!("&fp={}", fingerprint(s))), "{uri}");
    uri
}

/// Creates a zone, gets a code for alice and enrols the phone (the URI's way).
pub fn enrol(s: &Server, backend: &str) -> Phone {
    enrol_with(s, backend, false)
}

/// [`enrol`] through a relay holding the server's genuine key, which reads the enrolment
/// reply: the returned phone knows the SIP password and device token it was given.
pub fn enrol_observed(s: &Server, backend: &str) -> Phone {
    enrol_with(s, backend, true)
}

fn enrol_with(s: &Server, backend: &str, observed: bool) -> Phone {
    let mut p = Phone::init(backend);
    let uri = enrol_uri(s, "alice");
    let relay = observed.then(|| {
        Relay::start(
            identity(&s.data.join("tls")),
            s.enrol,
            fingerprint(s),
            false,
        )
    });
    let via = match &relay {
        Some(r) => uri.replace(&s.enrol.to_string(), &r.addr.to_string()),
        None => uri.clone(),
    };
    let (ok, out) = p.try_enrol(&via);
    assert!(ok && out.contains("enrolled: device d-"), "{out}");
    if let Some(r) = &relay {
        let reply = r.read_from_server();
        let at = reply.rfind("\r\n\r\n").unwrap() + 4;
        let v: serde_json::Value = serde_json::from_str(&reply[at..]).unwrap();
        let password = v["sip"]["password"].as_str().unwrap().to_owned();
        let token = v["token"].as_str().unwrap().to_owned();
        assert!(password.len() >= 16 && token.len() >= 32, "{v}");
        p.secrets = Some((password, token));
    }
    // The code works once.
    let mut other = Phone::init("software");
    let (ok, out) = other.try_enrol(&uri);
    // Used: the one answer of unknown, used and expired codes.
    assert!(!ok && out.contains("code_invalid"), "{out}");
    p
}

/// A TLS endpoint between a phone and the enrolment endpoint: it terminates TLS with
/// `identity`, records the plain text of each HTTP request it reads and of each answer it
/// gets, and forwards the request to `upstream` over HTTPS (pinned to `upstream_pin`, which an
/// attacker can learn by connecting). With `bad_gateway` it answers a POST (the enrolment)
/// with 502 instead of the server's answer (the phone's enrolment never finishes on its side).
pub struct Relay {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    answers: Arc<Mutex<Vec<u8>>>,
    failed: Arc<AtomicUsize>,
}

impl Relay {
    pub fn start(
        identity: tls::ServerIdentity,
        upstream: SocketAddr,
        upstream_pin: tls::Fingerprint,
        bad_gateway: bool,
    ) -> Self {
        let server = tls::server_config(&identity).unwrap();
        let client = tls::pinned_client_config(upstream_pin).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            answers: Arc::default(),
            failed: Arc::default(),
        };
        let (seen, answers, failed) = (
            relay.seen.clone(),
            relay.answers.clone(),
            relay.failed.clone(),
        );
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (server, client) = (server.clone(), client.clone());
                let (seen, answers, failed) = (seen.clone(), answers.clone(), failed.clone());
                std::thread::spawn(move || {
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let conn = tls::rustls::ServerConnection::new(server).unwrap();
                    let mut phone = tls::rustls::StreamOwned::new(conn, tcp);
                    // One request at a time on the phone's connection (keep-alive).
                    loop {
                        let request = match read_http(&mut phone) {
                            Ok(Some(r)) => r,
                            Ok(None) => return,
                            Err(_) => {
                                if phone.conn.is_handshaking() {
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                                return;
                            }
                        };
                        seen.lock().unwrap().extend_from_slice(&request);
                        let answer = forward(&request, upstream, client.clone());
                        answers.lock().unwrap().extend_from_slice(&answer);
                        let back = if bad_gateway && request.starts_with(b"POST ") {
                            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".to_vec()
                        } else {
                            answer
                        };
                        if phone.write_all(&back).and_then(|()| phone.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        relay
    }

    /// The plain text the relay read from phones.
    pub fn read_from_phone(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// The plain text of the server's answers.
    pub fn read_from_server(&self) -> String {
        String::from_utf8_lossy(&self.answers.lock().unwrap()).into_owned()
    }

    /// TLS handshakes with phones that failed.
    pub fn failed_handshakes(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Forwards one request to `upstream` over pinned HTTPS; returns the whole answer.
fn forward(
    request: &[u8],
    upstream: SocketAddr,
    client: Arc<tls::rustls::ClientConfig>,
) -> Vec<u8> {
    let tcp = TcpStream::connect(upstream).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = tls::rustls::ClientConnection::new(client, name).unwrap();
    let mut server = tls::rustls::StreamOwned::new(conn, tcp);
    server.write_all(request).unwrap();
    server.flush().unwrap();
    read_http(&mut server).unwrap().unwrap_or_default()
}

/// One HTTP/1.1 message (headers and a `Content-Length` body); `None` at a clean end.
fn read_http(stream: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    buf.extend(body);
    Ok(Some(buf))
}
