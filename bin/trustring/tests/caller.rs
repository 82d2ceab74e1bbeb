//! Caller authentication and asserted identity end to end: the real `trustring` binary and
//! SIPp peers on 127.0.0.1 (RFC 3261 §22.3, RFC 3325; SPEC R25; SECURITY §4 threats 1, 4).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Server, SippBuilder, caller, device, register, serial};

const WAIT: Duration = Duration::from_secs(45);

/// alice (the callee) and bob (a subscriber who calls).
fn server() -> Server {
    let s = Server::start();
    s.add_subscriber("alice", "s3cret-passw0rd");
    s.add_subscriber("bob", "b0b-passw0rd");
    s
}

/// A bare UDP socket registered as one of alice's devices: it shows whether the proxy
/// forwarded anything, without a SIPp process waiting out its timeout.
fn silent_device(s: &Server) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    register(
        s,
        "alice",
        "s3cret-passw0rd",
        sock.local_addr().unwrap().port(),
        false,
    );
    sock
}

/// Asserts that no INVITE reaches `sock` within `quiet`.
fn assert_no_invite(sock: &UdpSocket, quiet: Duration) {
    let end = Instant::now() + quiet;
    let mut buf = [0u8; 65_535];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(!text.starts_with("INVITE "), "forwarded:\n{text}");
            }
            Err(_) => break,
        }
    }
}

/// Runs a SIPp caller that must fail, and returns the messages it exchanged.
fn run_refused(b: SippBuilder) -> String {
    let mut p = b.spawn();
    let st = p.wait(WAIT);
    assert!(!st.success(), "{} unexpectedly succeeded", p.name);
    p.messages()
}

/// How many responses with `status` appear in a SIPp message log.
fn count_status(msgs: &str, status: u16) -> usize {
    msgs.matches(&format!("SIP/2.0 {status} ")).count()
}

#[test]
fn subscribers_call_is_challenged_then_carries_asserted_identity() {
    let _g = serial();
    let s = server();
    let mut desk = device(&s, "uas-answer-pai.xml", 200, false);
    caller(&s, "uac-call-auth.xml")
        .key("caller", "bob")
        .arg("-au")
        .arg("bob")
        .arg("-ap")
        .arg("b0b-passw0rd")
        .arg("-auth_uri")
        .arg("alice@localhost")
        .run_ok();
    desk.expect_ok(WAIT);
    let msgs = desk.messages();
    assert!(
        msgs.contains("P-Asserted-Identity: <sip:bob@localhost>"),
        "{msgs}"
    );
    assert!(!msgs.contains("Proxy-Authorization"), "{msgs}");
}

#[test]
fn subscriber_call_over_tcp() {
    let _g = serial();
    let s = server();
    let mut desk = device(&s, "uas-answer-pai.xml", 200, false);
    caller(&s, "uac-call-auth.xml")
        .tcp()
        .key("caller", "bob")
        .arg("-au")
        .arg("bob")
        .arg("-ap")
        .arg("b0b-passw0rd")
        .arg("-auth_uri")
        .arg("alice@localhost")
        .run_ok();
    desk.expect_ok(WAIT);
}

#[test]
fn unauthenticated_invite_from_a_local_user_gets_407_known_or_not() {
    let _g = serial();
    let s = server();
    let sock = silent_device(&s);
    for from in ["bob", "nobody"] {
        caller(&s, "uac-call-noauth-407.xml")
            .key("caller", from)
            .run_ok();
    }
    assert_no_invite(&sock, Duration::from_millis(500));
}

#[test]
fn wrong_password_and_someone_elses_credentials_are_refused() {
    let _g = serial();
    let s = server();
    let sock = silent_device(&s);
    let auth_call = |caller_user: &str, auth_user: &str, pw: &str| {
        caller(&s, "uac-call-auth.xml")
            .key("caller", caller_user)
            .arg("-au")
            .arg(auth_user)
            .arg("-ap")
            .arg(pw)
    };
    // Wrong password: the second INVITE gets another 407, not the call.
    let msgs = run_refused(
        auth_call("bob", "bob", "wrong")
            .arg("-auth_uri")
            .arg("alice@localhost"),
    );
    assert!(count_status(&msgs, 407) >= 2, "{msgs}");
    // bob's good credentials on a From of alice: 403.
    let msgs = run_refused(
        auth_call("alice", "bob", "b0b-passw0rd")
            .arg("-auth_uri")
            .arg("alice@localhost"),
    );
    assert!(count_status(&msgs, 403) >= 1, "{msgs}");
    // A digest uri naming another resource (SIPp's default, the proxy's sip:IP:PORT): 400.
    let msgs = run_refused(auth_call("bob", "bob", "b0b-passw0rd"));
    assert!(count_status(&msgs, 400) >= 1, "{msgs}");
    assert_no_invite(&sock, Duration::from_millis(500));
    let log = s.log_text();
    assert!(!log.contains("b0b-passw0rd"), "no password in the log");
}

#[test]
fn forged_identity_from_another_domain_is_stripped() {
    let _g = serial();
    let s = server();
    let mut desk = device(&s, "uas-answer-no-pai.xml", 200, false);
    caller(&s, "uac-call-forged-pai.xml").run_ok();
    desk.expect_ok(WAIT);
    let msgs = desk.messages();
    assert!(!msgs.contains("P-Asserted-Identity"), "{msgs}");
}
