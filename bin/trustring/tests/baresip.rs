//! Interop with a real SIP client (issue #10, "real clients on real networks"): Debian's
//! baresip 1.0.0 (package `baresip-core`) against the real `trustring serve`, all on
//! 127.0.0.1. Three baresip processes: alice over UDP, alice over TCP, and bob; bob calls
//! alice, both alices ring, one answers, the other gets CANCEL with the Reason, a 1 kHz tone
//! crosses the call, bob hangs up through the proxy, and the server writes the CDR. Then a
//! phone behind a NAT simulated on loopback (`common::baresip::NatBox`).
//!
//! How the instances are configured and driven (ctrl_tcp JSON commands and events, `-s` SIP
//! traces, `sndfile` recordings): `common/baresip.rs`; what is shown and what baresip 1.0.0
//! can do: `tests/baresip/README.md`. The tests fail (never skip) without baresip.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::baresip::{Account, Baresip, NatBox, ServerLogOnPanic, Transport, wait_until};
use common::{Server, serial};
use media::tone;
use serde_json::Value;

/// Bound of every wait for a SIP step (ringing, answer, hang-up, registration).
const STEP: Duration = Duration::from_secs(10);
/// How long bob and alice talk before bob hangs up.
const TALK: Duration = Duration::from_millis(2200);
/// The NATed phone's private address, as it writes it in Contact and Via: loopback, where
/// nothing listens (never a real private address: a wrong server must not send off-host).
const PRIVATE: &str = "127.0.0.70:5060";
/// `serve --private-ranges` for the NAT test: 127.0.0.64–127.0.0.127, which holds PRIVATE.
const PRIVATE_RANGE: &str = "127.0.0.64/26";
const CANCEL_REASON: &str = r#"SIP;cause=200;text="Call completed elsewhere""#;

/// A server with subscribers alice and bob. Bind the log guard after the server (`let s =
/// server(..); let _log = ServerLogOnPanic(..)`): it must be dropped before the server, whose
/// drop removes the log, and after the baresips, whose output comes first.
fn server(extra: &[&str]) -> Server {
    common::baresip::require();
    let s = Server::start_args(extra);
    s.add_subscriber("alice", "s3cret-passw0rd");
    s.add_subscriber("bob", "b0b-passw0rd");
    s
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn contact_at(r: &Value, addr: &str) -> bool {
    r["contact"]
        .as_str()
        .is_some_and(|c| c.contains(&format!("@{addr}")))
}

/// The server's message trace of one call (`GET /api/v1/calls/{id}/trace`).
fn call_trace(s: &Server, call_id: &str) -> Vec<Value> {
    let (code, body) = s.api("GET", &format!("/api/v1/calls/{call_id}/trace"), None);
    assert_eq!(code, 200, "trace of {call_id}: {body}");
    json(&body)["messages"].as_array().unwrap().clone()
}

fn show(trace: &[Value]) -> String {
    trace
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {} {}",
                m["dir"], m["transport"], m["peer"], m["label"], m["notes"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The steady middle of a recording is a clean tone at `hz`.
fn assert_tone(wav: &media::wav::Wav, hz: f64, who: &str) {
    let rate = wav.rate;
    let ms = |n: u64| (u64::from(rate) * n / 1000) as usize;
    // Skip the start (jitter buffer filling, resampler settling); analyse one second.
    let window = &wav.samples[ms(400)..(ms(400) + ms(1000)).min(wav.samples.len())];
    let level = tone::rms(window);
    let dominant = tone::dominant_frequency(window, rate);
    let purity = tone::tone_purity(window, hz, rate);
    let heard = wav.samples.len() as u64 * 1000 / u64::from(rate);
    eprintln!(
        "{who}: {heard} ms recorded at {rate} Hz; dominant {dominant} Hz, purity {purity:.3} at {hz} Hz, level {level:.3}"
    );
    assert!(level > 0.02, "{who}: silence (rms {level:.4})");
    assert!(
        (dominant - hz).abs() <= 20.0,
        "{who}: dominant frequency {dominant} Hz, expected {hz} Hz"
    );
    assert!(
        purity >= 0.9,
        "{who}: tone purity {purity:.3} at {hz} Hz, expected >= 0.9"
    );
}

#[test]
fn two_alices_ring_one_answers_the_other_is_cancelled_audio_flows_and_a_cdr_is_written() {
    let _g = serial();
    let s = server(&[]);
    let _log = ServerLogOnPanic(s.log.clone());
    // 1. Two alices (UDP and TCP) and bob register with digest auth (the default --digest).
    let desk = Baresip::start(
        "alice-udp",
        Account::new("alice", "s3cret-passw0rd", Transport::Udp, s.sip).tone(400),
    );
    let mobile = Baresip::start(
        "alice-tcp",
        Account::new("alice", "s3cret-passw0rd", Transport::Tcp, s.sip).tone(400),
    );
    let bob = Baresip::start(
        "bob",
        Account::new("bob", "b0b-passw0rd", Transport::Udp, s.sip).tone(1000),
    );
    let (desk_at, mobile_at) = (desk.sip.to_string(), mobile.sip.to_string());
    desk.wait_registered(&s, "alice", |r| {
        r["transport"] == "UDP" && contact_at(r, &desk_at)
    });
    mobile.wait_registered(&s, "alice", |r| {
        r["transport"] == "TCP"
            && contact_at(r, &mobile_at)
            && r["contact"].as_str().unwrap().contains(";transport=tcp")
    });
    bob.wait_registered(&s, "bob", |r| contact_at(r, &bob.sip.to_string()));
    let regs = json(&s.registrations("alice"));
    assert_eq!(
        regs.as_array().unwrap().len(),
        2,
        "alice's registrations: {regs}"
    );
    for b in [&desk, &mobile, &bob] {
        assert!(
            !b.traced("SIP/2.0 401").is_empty() && !b.traced("SIP/2.0 200").is_empty(),
            "{} registered without a digest challenge?",
            b.name
        );
    }

    // 2. bob calls alice: he is challenged (407) as a local subscriber; both alices ring.
    bob.command("dial", Some("sip:alice@localhost"));
    let incoming = [&desk, &mobile].map(|a| a.wait_event("CALL_INCOMING", STEP));
    bob.wait_event("CALL_RINGING", STEP);
    let call_id = incoming[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        incoming[1]["id"],
        call_id.as_str(),
        "one call, two branches"
    );
    assert_eq!(incoming[0]["peeruri"], "sip:bob@localhost");
    assert!(
        !bob.traced("SIP/2.0 407").is_empty(),
        "bob was not challenged"
    );
    let invites = bob.traced("INVITE sip:alice@localhost");
    assert!(
        invites.len() >= 2
            && !invites
                .last()
                .unwrap()
                .header("Proxy-Authorization")
                .is_empty(),
        "bob did not answer the 407: {invites:#?}"
    );

    // The TCP alice answers after a moment of ringing; the UDP alice gets CANCEL + Reason.
    std::thread::sleep(Duration::from_millis(300));
    mobile.command("accept", None);
    mobile.wait_event("CALL_ESTABLISHED", STEP);
    bob.wait_event("CALL_ESTABLISHED", STEP);
    let closed = desk.wait_event("CALL_CLOSED", STEP);
    assert!(
        desk.event("CALL_ESTABLISHED").is_none(),
        "the desk was answered too: {closed}"
    );
    let cancels = desk.traced("CANCEL ");
    assert!(!cancels.is_empty(), "no CANCEL at the desk");
    for c in &cancels {
        assert_eq!(
            c.header("Reason"),
            [CANCEL_REASON],
            "the desk's CANCEL:\n{c}"
        );
        assert_eq!(c.src, s.sip.to_string(), "CANCEL not from the proxy:\n{c}");
    }

    // 3. Talk, then bob hangs up; 4. the BYE crosses the proxy (TCP to the mobile).
    mobile.wait_event("CALL_RTPESTAB", STEP);
    std::thread::sleep(TALK);
    bob.command("hangup", None);
    let closed = mobile.wait_event("CALL_CLOSED", STEP);
    bob.wait_event("CALL_CLOSED", STEP);
    let byes = mobile.traced("BYE ");
    assert!(!byes.is_empty(), "no BYE at the mobile: {closed}");
    let via = byes[0].header("Via");
    assert!(
        via.len() >= 2
            && via[0].starts_with(&format!("SIP/2.0/TCP {}", s.sip))
            && via[1].contains(&bob.sip.to_string()),
        "the BYE did not come through the proxy over TCP:\n{}",
        byes[0]
    );

    // The audio: alice (TCP) heard bob's 1 kHz, bob heard alice's 400 Hz.
    assert_tone(
        &mobile.recording(Duration::from_millis(1500)),
        1000.0,
        "alice (TCP) hearing bob",
    );
    assert_tone(
        &bob.recording(Duration::from_millis(1500)),
        400.0,
        "bob hearing alice (TCP)",
    );

    // The server's view: its trace of the call, and the CDR with the answered leg.
    let trace = call_trace(&s, &call_id);
    let cancel_out = trace
        .iter()
        .find(|m| m["dir"] == "out" && m["label"] == "CANCEL" && m["peer"] == desk_at.as_str());
    assert!(
        cancel_out.is_some_and(|m| m["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| *n == format!("Reason: {CANCEL_REASON}").as_str())),
        "no CANCEL with Reason to the desk in the server's trace:\n{}",
        show(&trace)
    );
    for dir in ["in", "out"] {
        assert!(
            trace.iter().any(|m| m["dir"] == dir && m["label"] == "BYE"),
            "no BYE {dir} in the server's trace:\n{}",
            show(&trace)
        );
    }
    let cdr = wait_until(
        STEP,
        || {
            format!(
                "no CDR for {call_id}: {}",
                s.api("GET", "/api/v1/cdrs", None).1
            )
        },
        || {
            let (code, body) = s.api("GET", "/api/v1/cdrs", None);
            assert_eq!(code, 200, "{body}");
            json(&body)["records"]
                .as_array()?
                .iter()
                .find(|r| r["call_id"] == call_id.as_str())
                .cloned()
        },
    );
    eprintln!("CDR: {cdr}");
    assert_eq!(cdr["caller"], "sip:bob@localhost", "{cdr}");
    assert_eq!(cdr["called"], "sip:alice@localhost", "{cdr}");
    assert_eq!(cdr["final_status"], 200, "{cdr}");
    assert_eq!(cdr["released_by"], "caller", "{cdr}");
    assert!(cdr["duration_ms"].as_i64().unwrap() >= 1500, "{cdr}");
    let legs = cdr["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2, "{cdr}");
    let answered = &legs[cdr["answered_by"].as_u64().expect("answered_by") as usize];
    assert_eq!(answered["outcome"], "answered", "{cdr}");
    assert!(contact_at(answered, &mobile_at), "{cdr}");
    let other = legs
        .iter()
        .find(|l| contact_at(l, &desk_at))
        .expect("the desk's leg");
    assert_eq!(other["outcome"], "cancelled-elsewhere", "{cdr}");
}

/// alice's phone behind the NAT box; returns once the server lists its registration (from
/// the box's outside address, with the private Contact).
fn alice_behind_nat(s: &Server) -> (NatBox, Baresip) {
    let nat = NatBox::start(s.sip, PRIVATE);
    let alice = Baresip::start(
        "alice-nat",
        Account::new("alice", "s3cret-passw0rd", Transport::Udp, nat.inside()),
    );
    let nat = nat.device(alice.sip);
    let outside = nat.outside.to_string();
    let reg = alice.wait_registered(s, "alice", |r| r["source"] == outside.as_str());
    assert!(
        reg["contact"].as_str().unwrap().contains(PRIVATE),
        "the server does not list the private Contact: {reg}"
    );
    (nat, alice)
}

fn call_id_of_invite(bob: &Baresip) -> String {
    let invites = bob.traced("INVITE sip:alice@localhost");
    let first = invites.first().expect("bob sent no INVITE");
    first.header("Call-ID").first().cloned().expect("Call-ID")
}

/// `serve --private-ranges` (R31): a Contact in those ranges registered from another source
/// address is reached at the source, so the phone behind the NAT box rings; the ACK and the
/// BYE (in-dialog requests to the private Contact of its 200 OK) must reach it too.
#[test]
fn a_phone_behind_nat_rings_and_answers_through_the_nat() {
    let _g = serial();
    let s = server(&["--private-ranges", PRIVATE_RANGE]);
    let _log = ServerLogOnPanic(s.log.clone());
    let (nat, alice) = alice_behind_nat(&s);
    let bob = Baresip::start(
        "bob",
        Account::new("bob", "b0b-passw0rd", Transport::Udp, s.sip).tone(1000),
    );
    bob.wait_registered(&s, "bob", |r| contact_at(r, &bob.sip.to_string()));

    bob.command("dial", Some("sip:alice@localhost"));
    alice.wait_event("CALL_INCOMING", STEP);
    bob.wait_event("CALL_RINGING", STEP);
    alice.command("accept", None);
    bob.wait_event("CALL_ESTABLISHED", STEP);
    let call_id = call_id_of_invite(&bob);
    // alice is established once the ACK reaches her: an in-dialog request to her Contact,
    // which is private too (her 200 OK's), so the server must reach it at the NAT as well.
    wait_until(
        STEP,
        || {
            format!(
                "the ACK did not reach the NATed alice; server trace:\n{}",
                show(&call_trace(&s, &call_id))
            )
        },
        || alice.event("CALL_ESTABLISHED"),
    );
    std::thread::sleep(Duration::from_millis(500));
    bob.command("hangup", None);
    alice.wait_event("CALL_CLOSED", STEP);
    bob.wait_event("CALL_CLOSED", STEP);

    // Everything alice exchanged crossed the NAT box; the server never saw 127.0.0.1:B.
    let log = nat.log();
    eprintln!("through the NAT box: {}", log.join(" | "));
    for step in [
        "in INVITE ",
        "out SIP/2.0 180",
        "out SIP/2.0 200",
        "in ACK ",
        "in BYE ",
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(step)),
            "no {step:?} through the NAT box: {log:#?}"
        );
    }
    let trace = call_trace(&s, &call_id);
    let behind = alice.sip.to_string();
    assert!(
        trace
            .iter()
            .all(|m| m["peer"] != behind.as_str() && m["peer"] != PRIVATE),
        "the server talked to alice around the NAT:\n{}",
        show(&trace)
    );
}

/// The negative of the test above: without the private range (the default ranges) the
/// server dials the private Contact, where nothing listens, and the NATed phone never rings.
/// It proves that the set-up can fail.
#[test]
fn without_the_private_range_the_phone_behind_nat_does_not_ring() {
    let _g = serial();
    let s = server(&[]);
    let _log = ServerLogOnPanic(s.log.clone());
    let (nat, alice) = alice_behind_nat(&s);
    let bob = Baresip::start(
        "bob",
        Account::new("bob", "b0b-passw0rd", Transport::Udp, s.sip),
    );
    bob.wait_registered(&s, "bob", |r| contact_at(r, &bob.sip.to_string()));

    bob.command("dial", Some("sip:alice@localhost"));
    let call_id = wait_until(
        STEP,
        || "bob sent no authenticated INVITE".to_owned(),
        || {
            bob.traced("INVITE sip:alice@localhost")
                .iter()
                .find(|m| !m.header("Proxy-Authorization").is_empty())
                .and_then(|m| m.header("Call-ID").first().cloned())
        },
    );
    // The server forwards to the private Contact ...
    let trace = wait_until(
        STEP,
        || {
            format!(
                "no INVITE to {PRIVATE}: {}",
                show(&call_trace(&s, &call_id))
            )
        },
        || {
            let t = call_trace(&s, &call_id);
            t.iter()
                .any(|m| m["dir"] == "out" && m["label"] == "INVITE" && m["peer"] == PRIVATE)
                .then_some(t)
        },
    );
    // ... and nothing reaches the phone (a few retransmissions' worth of waiting).
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        alice.event("CALL_INCOMING").is_none(),
        "the NATed alice rang without --private-ranges:\n{}",
        show(&trace)
    );
    assert!(
        !nat.log().iter().any(|l| l.starts_with("in INVITE")),
        "an INVITE crossed the NAT box: {:#?}",
        nat.log()
    );
    // bob gives up (unless the server already failed the call).
    if bob.event("CALL_CLOSED").is_none() {
        let _ = bob.try_command("hangup", None);
    }
    bob.wait_event("CALL_CLOSED", STEP);
}

/// SIP over TLS (RFC 3261 §26, issue 11 item 1) with a real client: alice on TLS (baresip
/// trusting the server's self-signed certificate) and alice on UDP register; bob's call
/// rings both, the TLS alice answers (the INVITE, the ACK and bob's BYE reach her over her
/// TLS connection, from our TLS address, double record-routed), the UDP alice gets CANCEL.
/// When her process goes, her connection closes and the server forgets her registration.
/// (baresip 1.0.0 does not verify the server's certificate, so this shows interop, not that
/// the client would notice a man in the middle; the pinned clients of `trustring-tls` do.)
#[test]
fn a_tls_alice_and_a_udp_alice_ring_the_tls_one_answers_over_tls() {
    let _g = serial();
    let s = server(&[]);
    let _log = ServerLogOnPanic(s.log.clone());
    let cert = s.data.join("tls").join(tls::CERT_FILE);
    let tls_at = s.sip_tls.to_string();
    let secure = Baresip::start(
        "alice-tls",
        Account::new("alice", "s3cret-passw0rd", Transport::Tls, s.sip_tls)
            .cafile(&cert)
            .tone(400),
    );
    let desk = Baresip::start(
        "alice-udp",
        Account::new("alice", "s3cret-passw0rd", Transport::Udp, s.sip).tone(400),
    );
    let bob = Baresip::start(
        "bob",
        Account::new("bob", "b0b-passw0rd", Transport::Udp, s.sip).tone(1000),
    );
    let reg = secure.wait_registered(&s, "alice", |r| r["transport"] == "TLS");
    assert!(
        reg["contact"]
            .as_str()
            .is_some_and(|c| c.contains("transport=tls")),
        "{reg}"
    );
    let desk_at = desk.sip.to_string();
    desk.wait_registered(&s, "alice", |r| {
        r["transport"] == "UDP" && contact_at(r, &desk_at)
    });
    bob.wait_registered(&s, "bob", |r| contact_at(r, &bob.sip.to_string()));
    let registers = secure.traced("REGISTER ");
    assert!(
        !registers.is_empty() && registers.iter().all(|m| m.transport == "TLS"),
        "the TLS alice registered over something else: {registers:#?}"
    );

    bob.command("dial", Some("sip:alice@localhost"));
    let incoming = [&secure, &desk].map(|a| a.wait_event("CALL_INCOMING", STEP));
    bob.wait_event("CALL_RINGING", STEP);
    let call_id = incoming[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        incoming[1]["id"],
        call_id.as_str(),
        "one call, two branches"
    );
    let invite = secure
        .traced("INVITE ")
        .into_iter()
        .next()
        .expect("an INVITE at the TLS alice");
    assert_eq!(invite.transport, "TLS", "{invite}");
    assert_eq!(invite.src, tls_at, "{invite}");
    assert!(
        invite.header("Via")[0].starts_with(&format!("SIP/2.0/TLS {tls_at}")),
        "{invite}"
    );
    let rr = invite.header("Record-Route");
    assert!(
        rr.len() == 2
            && rr[0].starts_with(&format!("<sip:{tls_at};transport=tls;lr"))
            && rr[1].starts_with(&format!("<sip:{};lr", s.sip)),
        "double record-routing (TLS on top, bob's UDP below): {rr:?}"
    );

    std::thread::sleep(Duration::from_millis(300));
    secure.command("accept", None);
    secure.wait_event("CALL_ESTABLISHED", STEP);
    bob.wait_event("CALL_ESTABLISHED", STEP);
    desk.wait_event("CALL_CLOSED", STEP);
    assert!(
        desk.event("CALL_ESTABLISHED").is_none(),
        "the desk answered too"
    );
    let cancels = desk.traced("CANCEL ");
    assert!(
        !cancels.is_empty()
            && cancels
                .iter()
                .all(|c| c.header("Reason") == [CANCEL_REASON]),
        "the UDP alice's CANCEL: {cancels:#?}"
    );

    secure.wait_event("CALL_RTPESTAB", STEP);
    std::thread::sleep(TALK);
    bob.command("hangup", None);
    secure.wait_event("CALL_CLOSED", STEP);
    bob.wait_event("CALL_CLOSED", STEP);
    let byes = secure.traced("BYE ");
    assert!(!byes.is_empty(), "no BYE at the TLS alice");
    assert_eq!(byes[0].transport, "TLS", "{}", byes[0]);
    assert!(
        byes[0].header("Via")[0].starts_with(&format!("SIP/2.0/TLS {tls_at}")),
        "{}",
        byes[0]
    );
    for m in secure.sip_trace() {
        assert_eq!(
            m.transport, "TLS",
            "the TLS alice saw a message in clear:\n{m}"
        );
    }
    assert_tone(
        &secure.recording(Duration::from_millis(1500)),
        1000.0,
        "alice (TLS) hearing bob",
    );
    let trace = call_trace(&s, &call_id);
    assert!(
        trace
            .iter()
            .any(|m| m["dir"] == "out" && m["label"] == "INVITE" && m["transport"] == "TLS"),
        "the server's trace shows no INVITE over TLS:\n{}",
        show(&trace)
    );
    let cdr = wait_until(
        STEP,
        || format!("no CDR for {call_id}"),
        || {
            let (_, body) = s.api("GET", "/api/v1/cdrs", None);
            json(&body)["records"]
                .as_array()?
                .iter()
                .find(|r| r["call_id"] == call_id.as_str())
                .cloned()
        },
    );
    let legs = cdr["legs"].as_array().unwrap();
    let answered = &legs[cdr["answered_by"].as_u64().expect("answered_by") as usize];
    assert!(
        answered["contact"]
            .as_str()
            .is_some_and(|c| c.contains("transport=tls")),
        "{cdr}"
    );

    // Her process goes: the connection closes, and so does her registration.
    drop(secure);
    wait_until(
        STEP,
        || {
            format!(
                "the TLS registration outlived its connection: {}",
                s.registrations("alice")
            )
        },
        || {
            let regs = json(&s.registrations("alice"));
            let list = regs.as_array()?;
            (list.len() == 1 && list[0]["transport"] == "UDP").then_some(())
        },
    );
}
