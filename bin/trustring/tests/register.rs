//! Registration end to end: the real binary, SIPp and a raw UDP client (issue #2 points
//! 3 and 5; SPEC R2, R26; SECURITY threats 2, 4, 5).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Server, register, serial, sipp};
use sip_core::auth::{Algorithm, ResponseInput, ha1, response};
use sip_core::message::{HeaderName, Message, parse};

fn server() -> Server {
    let s = Server::start();
    s.add_subscriber("alice", "s3cret-passw0rd");
    s.add_subscriber("bob", "b0b-passw0rd");
    s
}

fn reg(
    s: &Server,
    file: &str,
    user: &str,
    auth_user: &str,
    pw: &str,
    port: u16,
) -> common::SippBuilder {
    sipp(file)
        .arg("-s")
        .arg(user)
        .arg("-au")
        .arg(auth_user)
        .arg("-ap")
        .arg(pw)
        .key("domain", "localhost")
        .key("contact_port", &port.to_string())
        .key("expires", "3600")
        .target(&s.target())
}

#[test]
fn md5_registration_wrong_password_hijack_and_replay() {
    let _g = serial();
    let s = server();
    register(&s, "alice", "s3cret-passw0rd", 5999, false);
    let regs = s.registrations("alice");
    assert!(regs.contains("sip:alice@127.0.0.1:5999"), "{regs}");
    // `source` is where the REGISTER came from (SIPp's own port), not the Contact.
    let v: serde_json::Value = serde_json::from_str(&regs).unwrap();
    let source = v[0]["source"].as_str().unwrap();
    assert!(
        source.starts_with("127.0.0.1:") && source != "127.0.0.1:5999",
        "{regs}"
    );
    reg(&s, "register-wrongpass.xml", "alice", "alice", "nope", 5998).run_ok();
    reg(
        &s,
        "register-hijack.xml",
        "alice",
        "bob",
        "b0b-passw0rd",
        5997,
    )
    .run_ok();
    let regs = s.registrations("alice");
    assert!(
        !regs.contains("5998") && !regs.contains("5997"),
        "refused contacts bound: {regs}"
    );
}

#[test]
fn unknown_and_known_users_get_the_same_challenge() {
    let _g = serial();
    let s = server();
    for user in ["alice", "mallory"] {
        sipp("register-challenge.xml")
            .arg("-s")
            .arg(user)
            .key("domain", "localhost")
            .key("contact_port", "5990")
            .key("expires", "3600")
            .target(&s.target())
            .run_ok();
    }
    reg(
        &s,
        "register-wrongpass.xml",
        "mallory",
        "mallory",
        "x",
        5991,
    )
    .run_ok();
}

#[test]
fn unregister_one_and_all() {
    let _g = serial();
    let s = server();
    register(&s, "alice", "s3cret-passw0rd", 5981, false);
    register(&s, "alice", "s3cret-passw0rd", 5982, false);
    reg(
        &s,
        "unregister.xml",
        "alice",
        "alice",
        "s3cret-passw0rd",
        5981,
    )
    .run_ok();
    let regs = s.registrations("alice");
    assert!(!regs.contains("5981") && regs.contains("5982"), "{regs}");
    sipp("unregister-all.xml")
        .arg("-s")
        .arg("alice")
        .arg("-au")
        .arg("alice")
        .arg("-ap")
        .arg("s3cret-passw0rd")
        .key("domain", "localhost")
        .target(&s.target())
        .run_ok();
    assert_eq!(s.registrations("alice"), "[]");
}

#[test]
fn registrations_survive_a_restart() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let mut s = Server::start_in(&data, port);
    s.add_subscriber("alice", "s3cret-passw0rd");
    register(&s, "alice", "s3cret-passw0rd", 5971, false);
    register(&s, "alice", "s3cret-passw0rd", 5972, true);
    s.stop();
    let s = Server::start_in(&data, port);
    let regs = s.registrations("alice");
    assert!(
        regs.contains("127.0.0.1:5971") && regs.contains("127.0.0.1:5972"),
        "{regs}"
    );
    assert!(regs.contains("\"TCP\""), "transport kept: {regs}");
    // And the restored bindings are used: a call forks to the restored desk and rings.
    let mut desk = sipp("uas-answer.xml")
        .port(5971)
        .arg("-d")
        .arg("100")
        .spawn();
    common::caller(&s, "uac-call.xml")
        .arg("-d")
        .arg("200")
        .run_ok();
    desk.expect_ok(Duration::from_secs(30));
}

/// The default digest policy (`auto`) end to end, with a client written here (SIPp 3.6
/// cannot answer SHA-256): MD5 alone at first, the refresh probes with SHA-256 + MD5, a
/// SHA-256 answer makes it SHA-256 alone from then on.
#[test]
fn sha256_registration_over_udp() {
    let _g = serial();
    let s = server();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    let request = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsha{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=sha\r\nTo: <sip:alice@localhost>\r\n\
Call-ID: sha256-reg\r\nCSeq: {cseq} REGISTER\r\nUser-Agent: test-rfc8760/1\r\n\
Contact: <sip:alice@127.0.0.1:5961>\r\n{auth}Expires: 600\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let exchange = |msg: String| {
        sock.send_to(msg.as_bytes(), s.sip).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        match parse(&buf[..n]).unwrap() {
            Message::Response(r) => r,
            Message::Request(_) => panic!("expected a response"),
        }
    };
    let algorithms = |r: &sip_core::message::Response| -> Vec<String> {
        r.headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|c| c.rsplit("algorithm=").next().unwrap().to_owned())
            .collect()
    };
    let answer = |challenge: &sip_core::message::Response, alg: Algorithm| {
        let first = challenge
            .headers
            .get(&HeaderName::WwwAuthenticate)
            .unwrap()
            .to_owned();
        let param = |name: &str| {
            let i = first.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            first[i..].split('"').next().unwrap().to_owned()
        };
        let (nonce, opaque) = (param("nonce"), param("opaque"));
        let uri = "sip:localhost";
        let ha1 = ha1(alg, "alice", "localhost", "s3cret-passw0rd");
        let input = ResponseInput {
            nonce: &nonce,
            nc: "00000001",
            cnonce: "c0ffee",
            qop: "auth",
            method: "REGISTER",
            uri,
        };
        let digest = response(alg, &ha1, &input);
        format!(
            "Authorization: Digest username=\"alice\", realm=\"localhost\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{digest}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc=00000001, opaque=\"{opaque}\"\r\n",
            alg.as_str()
        )
    };
    let challenge = exchange(request(1, ""));
    assert_eq!(challenge.status, 401);
    assert_eq!(algorithms(&challenge), ["MD5"], "a new client: MD5 alone");
    let ok = exchange(request(2, &answer(&challenge, Algorithm::Md5)));
    assert_eq!(ok.status, 200, "{ok:?}");
    // The refresh is the probe.
    let probe = exchange(request(3, ""));
    assert_eq!(algorithms(&probe), ["SHA-256", "MD5"], "SHA-256 first");
    let auth = answer(&probe, Algorithm::Sha256);
    let ok = exchange(request(4, &auth));
    assert_eq!(ok.status, 200, "{ok:?}");
    let regs = s.registrations_when("alice", |r| r.contains("127.0.0.1:5961"));
    assert!(regs.contains("127.0.0.1:5961"), "{regs}");
    // The same credentials again (same nonce and nc): a replay, refused.
    let replay = exchange(request(5, &auth));
    assert_eq!(replay.status, 401);
    // Learned: SHA-256 alone.
    assert_eq!(algorithms(&exchange(request(6, ""))), ["SHA-256"]);
}
