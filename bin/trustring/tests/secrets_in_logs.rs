//! The admin token never appears in the server's log (issue #12 item 10): a first start
//! makes the token file and logs its path only.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

#[test]
fn a_generated_admin_token_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["serve", "--domain", "localhost"])
        .args(["--sip", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--enrol", "127.0.0.1:0"])
        .args(["--sip-tls", &format!("127.0.0.1:{}", free_port())])
        .arg("--data")
        .arg(&data)
        .env_remove("TRUSTRING_ADMIN_TOKEN")
        .env("TRUSTRING_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("generated the admin API token") || t0.elapsed() > Duration::from_secs(20)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let it run a moment more (anything logged at start is out by now).
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    let _ = child.kill();
    let _ = child.wait();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let token = token.trim();
    assert!(token.len() >= 32, "a real token was made");
    assert!(
        text.contains("generated the admin API token") && text.contains("admin-token"),
        "the file's path is logged: {text}"
    );
    assert!(!text.contains(token), "the token itself never is: {text}");
}
