//! `trustring admin …` against a running server: the operator's round trip (issue #5 point 5);
//! the admin API over HTTPS with the server's key pinned, plain HTTP refused off loopback, and
//! the public enrolment listener serving none of the admin routes (issue #11, R27).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::phone::fingerprint;
use common::{Server, TOKEN, free_port, wait_timeout};

/// Runs `trustring admin --server URL ARGS…`; returns (success, stdout + stderr).
fn admin(s: &Server, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustring"));
    c.arg("admin")
        .args(["--server", &format!("http://{}", s.http)])
        .arg("--data")
        .arg(&s.data)
        .args(args)
        .env_remove("TRUSTRING_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("TRUSTRING_ADMIN_TOKEN", t);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(s: &Server, args: &[&str]) -> String {
    let (success, out) = admin(s, Some(TOKEN), args);
    assert!(success, "admin {args:?}: {out}");
    out
}

#[test]
fn operator_round_trip() {
    let s = Server::start();
    let out = ok(
        &s,
        &[
            "subscribers",
            "add",
            "alice",
            "--password",
            "s3cret-passw0rd",
            "--enterprise",
            "acme",
        ],
    );
    assert!(out.contains("created sip:alice@localhost"), "{out}");
    let out = ok(&s, &["subscribers", "list"]);
    assert!(out.starts_with("USER"), "a table with a header: {out}");
    assert!(out.contains("alice") && out.contains("acme"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "subscribers", "list"])).unwrap();
    assert_eq!(json[0]["aor"], "sip:alice@localhost");
    let out = ok(&s, &["subscribers", "show", "alice"]);
    assert!(
        out.contains("registrations:") && out.contains("(none)"),
        "{out}"
    );

    let out = ok(&s, &["pool", "load", "+15550100000..+15550100009"]);
    assert!(
        out.contains("added: 10") && out.contains("free: 10"),
        "{out}"
    );
    let out = ok(&s, &["pool", "show"]);
    assert!(
        out.contains("free: 10") && out.contains("quarantined: 0"),
        "{out}"
    );

    let eula = s.data.join("eula.txt");
    std::fs::write(&eula, "Be nice.").unwrap();
    let out = ok(
        &s,
        &[
            "eulas",
            "publish",
            "2026-1",
            "--file",
            eula.to_str().unwrap(),
        ],
    );
    assert!(out.contains("published EULA 2026-1"), "{out}");
    assert!(ok(&s, &["eulas", "list"]).contains("2026-1"));

    let out = ok(&s, &["enrol", "alice"]);
    assert!(out.contains("enrolment code for alice: "), "{out}");
    // The URI to hand over, with the server's key fingerprint, and its QR code.
    let uri = out
        .lines()
        .find(|l| l.starts_with("trustring-enrol://"))
        .unwrap_or_else(|| panic!("no enrolment URI: {out}"));
    let uri: api::EnrolUri = uri.parse().unwrap();
    assert_eq!(uri.authority, s.enrol.to_string());
    assert_eq!(uri.fingerprint, fingerprint(&s));
    assert!(out.contains(&uri.code));
    assert!(out.contains('█') && out.contains('▀'), "a QR code: {out}");
    let out = ok(&s, &["enrol", "alice", "--no-qr"]);
    assert!(!out.contains('█'), "{out}");
    let out = ok(&s, &["server"]);
    assert!(
        out.contains(&format!("tls_fingerprint: {}", fingerprint(&s)))
            && out.contains(&format!("enrol_url: https://{}", s.enrol))
            && out.contains("admin_https: false"),
        "{out}"
    );
    assert!(
        s.log_text()
            .contains(&format!("tls fingerprint {}", fingerprint(&s))),
        "logged once at start"
    );
    let out = ok(&s, &["devices", "list"]);
    assert!(out.contains("(none)"), "{out}");
    let (success, out) = admin(
        &s,
        Some(TOKEN),
        &["devices", "number", "d-none", "+15551230001"],
    );
    assert!(!success);
    assert!(out.contains("404") && out.contains("d-none"), "{out}");
    let out = ok(&s, &["events"]);
    assert!(out.starts_with("ID"), "{out}");

    // Errors are the API's, readable, with a non-zero exit.
    let (success, out) = admin(&s, Some(TOKEN), &["subscribers", "show", "nobody"]);
    assert!(!success);
    assert!(out.contains("404") && out.contains("not_found"), "{out}");
    let (success, out) = admin(&s, Some("wrong"), &["subscribers", "list"]);
    assert!(!success);
    assert!(out.contains("401"), "{out}");
    // Without the env variable the token is read from the data directory, where `serve`
    // keeps it only when it generated it; here it came from the env, so there is none.
    let (success, out) = admin(&s, None, &["subscribers", "list"]);
    assert!(!success);
    assert!(out.contains("admin-token"), "{out}");
    std::fs::write(s.data.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let (success, out) = admin(&s, None, &["subscribers", "list"]);
    assert!(
        success && out.contains("alice"),
        "token read from the data dir: {out}"
    );

    let out = ok(&s, &["subscribers", "delete", "alice"]);
    assert!(out.contains("deleted alice"), "{out}");
    assert!(ok(&s, &["subscribers", "list"]).contains("(none)"));
}

/// `trustring serve ARGS` in `data`, its stderr to a file; returns the child and the log path.
fn spawn_serve(data: &Path, args: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    std::fs::create_dir_all(data).unwrap();
    let log = data.join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .arg("serve")
        .args(args)
        .arg("--data")
        .arg(data)
        .env("TRUSTRING_ADMIN_TOKEN", TOKEN)
        .env("TRUSTRING_LOG", "info")
        // SIP over TLS on a port of its own, not the default 5061 (tests run side by side).
        .env("TRUSTRING_SIP_TLS", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// One HTTPS request with the key `pin` pinned; (status, body).
fn https(
    addr: SocketAddr,
    pin: tls::Fingerprint,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        tls::rustls::ClientConnection::new(tls::pinned_client_config(pin).unwrap(), name).unwrap();
    let mut stream = tls::rustls::StreamOwned::new(conn, tcp);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Plain HTTP for the admin API on an address that is not loopback is refused at start, with
/// a clear error, before anything is bound.
#[test]
fn admin_over_plain_http_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    for http in [
        format!("http://0.0.0.0:{port}"),
        format!("http://[::]:{port}"),
    ] {
        let (mut child, log) = spawn_serve(
            dir.path(),
            &[
                "--sip",
                &format!("127.0.0.1:{}", free_port()),
                "--http",
                &http,
                "--enrol",
                &format!("127.0.0.1:{}", free_port()),
            ],
        );
        let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{text}");
        assert!(
            text.contains("plain HTTP for the admin API is allowed on a loopback address only"),
            "{text}"
        );
        assert!(!text.contains("trustring serving"), "{text}");
    }
}

/// The admin API off loopback speaks HTTPS with the server's identity; `trustring admin`
/// pins its key (from the data directory, or `--tls-fingerprint`) and refuses another.
#[test]
fn admin_api_off_loopback_is_https_with_the_pinned_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let (mut child, log) = spawn_serve(
        &data,
        &[
            "--sip",
            &format!("127.0.0.1:{}", free_port()),
            "--http",
            &format!("0.0.0.0:{port}"),
            "--enrol",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("trustring serving")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pin = common::phone::identity(&data.join("tls")).fingerprint;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("tls fingerprint {pin}")), "{text}");

    // Plain HTTP gets no HTTP answer.
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{got:?}"
    );
    // HTTPS does.
    assert_eq!(https(addr, pin, "/healthz", None).0, 200);

    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
            .arg("admin")
            .args(["--server", &format!("https://{addr}")])
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("TRUSTRING_ADMIN_TOKEN", TOKEN)
            .env_remove("TRUSTRING_API_FINGERPRINT")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = admin(&[
        "subscribers",
        "add",
        "alice",
        "--password",
        "s3cret-passw0rd",
        "--enterprise",
        "acme",
    ]);
    assert!(ok && out.contains("created sip:alice@localhost"), "{out}");
    let (ok, out) = admin(&["server"]);
    assert!(ok && out.contains("admin_https: true"), "{out}");
    assert!(out.contains(&format!("tls_fingerprint: {pin}")), "{out}");
    let other = format!("sha256:{}", "00".repeat(32));
    let (ok, out) = admin(&["--tls-fingerprint", &other, "subscribers", "list"]);
    assert!(
        !ok && out.contains("TLS key is not the pinned one"),
        "{out}"
    );
    let (ok, out) = admin(&["--tls-fingerprint", &pin.to_string(), "subscribers", "list"]);
    assert!(ok && out.contains("alice"), "{out}");

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(wait_timeout(&mut child, Duration::from_secs(10)).is_some());
}

/// The public enrolment listener serves the phone's routes and nothing else: every admin
/// route is 404 there even with the admin token (no 401 to probe with either), and the
/// phone's routes are 404 on the admin listener.
#[test]
fn enrolment_listener_serves_no_admin_route() {
    let s = Server::start();
    let pin = fingerprint(&s);
    for path in [
        "/api/v1/subscribers",
        "/api/v1/server",
        "/api/v1/devices",
        "/api/v1/security-events",
        "/api/v1/openapi.json",
        "/metrics",
        "/healthz",
        "/console",
    ] {
        for token in [None, Some(TOKEN)] {
            let (code, body) = https(s.enrol, pin, path, token);
            assert_eq!(code, 404, "{path}: {body}");
            assert!(body.contains("not_found"), "{body}");
        }
    }
    let (code, body) = https(s.enrol, pin, "/api/v1/enrol/eula", None);
    assert_eq!(code, 404, "no EULA yet: {body}");
    assert!(body.contains("no EULA has been published"), "{body}");
    let (success, out) = admin(&s, Some(TOKEN), &["subscribers", "list"]);
    assert!(success, "{out}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustring"));
    let out = c
        .arg("admin")
        .args(["--server", &format!("https://{}", s.enrol)])
        .arg("--data")
        .arg(&s.data)
        .args(["subscribers", "list"])
        .env("TRUSTRING_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("404") && text.contains("not_found"), "{text}");
    for path in ["/api/v1/enrol/eula", "/api/v1/device"] {
        let (code, body) = s.api("GET", path, None);
        assert_eq!(code, 404, "{path} on the admin listener: {body}");
    }
}
