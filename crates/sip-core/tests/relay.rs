//! Hostile-network moves against the proxy in simulated time (R30, R26; SECURITY threats 4,
//! 14, 16): the in-dialog relay, loops, reflection and user enumeration. Each test performs
//! the attack and shows it fail; nothing here touches a socket.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::digest::answer_challenge;
use common::msg::register;
use common::setup::{binding, config, subscriber};
use common::sim::{Sent, Sim, responses_to};
use common::{PROXY, addr};
use sip_core::auth::Algorithm;
use sip_core::proxy::Transport;

const ATTACKER: &str = "127.0.0.1:6666";
const VICTIM: &str = "127.0.0.1:9999";
const DESK: &str = "127.0.0.1:7001";

impl Sim {
    /// alice (registered at DESK) and bob (nothing registered) are subscribers.
    fn new() -> Self {
        let mut sim = Self::with_config(config());
        let now = sim.now;
        for user in ["alice", "bob"] {
            sim.proxy
                .upsert_subscriber(subscriber(user, Some("a-long-password")));
        }
        let desk = binding("alice", DESK, None, now + Duration::from_secs(3600));
        sim.proxy.restore_binding("alice", desk, now);
        sim
    }
}

/// The status line of every response in `sent` to `to`.
fn answers(sent: &[Sent], to: &str) -> Vec<(u16, String)> {
    responses_to(sent, to)
        .into_iter()
        .map(|r| (r.status, r.reason))
        .collect()
}

/// An in-dialog OPTIONS (To tag) for `ruri`, with `route` header lines.
fn in_dialog(ruri: &str, route: &str, call_id: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "OPTIONS {ruri} SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKrelay{n}
Max-Forwards: 70
{route}From: <sip:mallory@example.net>;tag=m1
To: <sip:anyone@example.net>;tag=t1
Call-ID: {call_id}
CSeq: 1 OPTIONS
Content-Length: 0

"
    )
}

#[test]
fn in_dialog_requests_off_our_route_reach_nobody() {
    let mut sim = Sim::new();
    let victim = format!("sip:anyone@{VICTIM}");
    let other_calls_tag = sim.proxy.route_tag("someone-elses-call");
    for (what, route) in [
        ("no Route at all", String::new()),
        (
            "a Route naming us, untagged",
            format!("Route: <sip:{PROXY};lr>\n"),
        ),
        (
            "a Route naming us with another call's tag",
            format!("Route: <sip:{PROXY};lr;rr={other_calls_tag}>\n"),
        ),
        (
            "a Route naming us with a made-up tag",
            format!("Route: <sip:{PROXY};lr;rr=0011223344556677>\n"),
        ),
        ("a foreign Route", format!("Route: <sip:{VICTIM};lr>\n")),
    ] {
        sim.recv(ATTACKER, &in_dialog(&victim, &route, "relay-1"));
        let sent = sim.take();
        assert_eq!(
            answers(&sent, ATTACKER),
            [(403, "Not On Our Route".to_owned())],
            "{what}"
        );
        assert_eq!(sent.len(), 1, "{what}: one answer and nothing else");
        sim.advance(Duration::from_secs(40));
        assert!(sim.take().is_empty(), "{what}: no retransmission");
    }
    // The ACK form of the same move is dropped without a word.
    sim.recv(
        ATTACKER,
        &in_dialog(&victim, "", "relay-2").replace("OPTIONS", "ACK"),
    );
    assert!(sim.take().is_empty());
}

#[test]
fn our_route_with_its_tag_is_followed_but_never_to_ourselves() {
    let mut sim = Sim::new();
    let tag = sim.proxy.route_tag("dialog-ok");
    let route = format!("Route: <sip:{PROXY};lr;rr={tag}>\n");
    sim.recv(
        ATTACKER,
        &in_dialog(&format!("sip:alice@{DESK}"), &route, "dialog-ok"),
    );
    let sent = sim.take();
    assert!(
        sent.iter()
            .any(|s| s.to == addr(DESK) && s.bytes.starts_with(b"OPTIONS ")),
        "a request of a dialog we record-routed goes on"
    );
    // Unspecified and own addresses are never a next hop: one 404, nothing else.
    for ruri in [
        "sip:x@0.0.0.0",
        "sip:x@0.0.0.0:5060",
        &format!("sip:x@{PROXY}"),
        "sip:x@127.0.0.2:5060",
    ] {
        sim.recv(ATTACKER, &in_dialog(ruri, &route, "dialog-ok"));
        let sent = sim.take();
        assert_eq!(
            answers(&sent, ATTACKER)
                .iter()
                .map(|a| a.0)
                .collect::<Vec<_>>(),
            [404],
            "{ruri}"
        );
        assert_eq!(sent.len(), 1, "{ruri}: nothing forwarded");
    }
}

#[test]
fn a_request_that_comes_back_is_a_loop() {
    let mut sim = Sim::new();
    sim.recv(
        ATTACKER,
        &format!(
            "OPTIONS sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKloop2
Via: SIP/2.0/UDP {PROXY};branch=z9hG4bKloop1
Max-Forwards: 60
From: <sip:mallory@example.net>;tag=m1
To: <sip:alice@localhost>
Call-ID: loop
CSeq: 1 OPTIONS
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    assert_eq!(
        answers(&sent, ATTACKER),
        [(482, "Loop Detected".to_owned())]
    );
    assert_eq!(sent.len(), 1);
}

#[test]
fn unauthenticated_invite_gets_one_small_answer() {
    let mut sim = Sim::new();
    // "From alice" with a spoofed source: the 407 goes to the victim, once.
    sim.recv(
        VICTIM,
        &format!(
            "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {VICTIM};branch=z9hG4bKrefl
Max-Forwards: 70
From: <sip:alice@localhost>;tag=a1
To: <sip:bob@localhost>
Call-ID: refl
CSeq: 1 INVITE
Contact: <sip:alice@{VICTIM}>
Content-Length: 0

"
        ),
    );
    sim.advance(Duration::from_secs(64));
    let sent = sim.take();
    assert_eq!(
        answers(&sent, VICTIM)
            .iter()
            .map(|a| a.0)
            .collect::<Vec<_>>(),
        [407],
        "no 100 Trying, no retransmission"
    );
    let out: usize = sent.iter().map(|s| s.bytes.len()).sum();
    let ratio = out as f64 / sim.received_bytes as f64;
    assert!(
        ratio <= 3.0,
        "amplification {ratio:.2} ({out} out, {} in)",
        sim.received_bytes
    );
    // A foreign caller to a user with nothing registered: one 480, never retransmitted.
    sim.received_bytes = 0;
    sim.recv(
        VICTIM,
        &format!(
            "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {VICTIM};branch=z9hG4bKrefl2
Max-Forwards: 70
From: <sip:mallory@example.net>;tag=a2
To: <sip:bob@localhost>
Call-ID: refl2
CSeq: 1 INVITE
Content-Length: 0

"
        ),
    );
    sim.advance(Duration::from_secs(64));
    let sent = sim.take();
    assert_eq!(
        answers(&sent, VICTIM)
            .iter()
            .map(|a| a.0)
            .collect::<Vec<_>>(),
        [480]
    );
}

#[test]
fn known_and_unknown_users_get_the_same_answers() {
    let mut sim = Sim::new();
    let mut seen = Vec::new();
    for from in ["mallory@example.net", "alice@localhost"] {
        for method in ["INVITE", "OPTIONS", "MESSAGE"] {
            let mut classes = Vec::new();
            for user in ["bob", "nobody"] {
                sim.recv(
                    ATTACKER,
                    &format!(
                        "{method} sip:{user}@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bK{method}{user}{}
Max-Forwards: 70
From: <sip:{from}>;tag=e1
To: <sip:{user}@localhost>
Call-ID: enum-{method}-{user}-{}
CSeq: 1 {method}
Content-Length: 0

",
                        from.len(),
                        from.len()
                    ),
                );
                classes.push(answers(&sim.take(), ATTACKER));
            }
            assert_eq!(classes[0], classes[1], "{method} from {from}");
            seen.push((from, method, classes[0].clone()));
        }
    }
    assert!(
        seen.iter()
            .all(|(f, _, a)| a.len() == 1 && (a[0].0 == 480) == f.ends_with("example.net")),
        "{seen:?}"
    );
}

#[test]
fn junk_registers_do_not_lock_alice_out() {
    let mut sim = Sim::new();
    let register = |n: u32, auth: &str| {
        let contact = format!("<sip:alice@{DESK}>");
        register(
            Transport::Udp,
            DESK,
            n,
            "alice",
            &format!("junk-{n}"),
            &contact,
            auth,
        )
    };
    // Spoofable junk from alice's own address: made-up nonces, 20 of them.
    for n in 0..20 {
        let junk = format!(
            "Authorization: Digest username=\"alice\", realm=\"localhost\", nonce=\"{n:064x}\", uri=\"sip:localhost\", response=\"{n:032x}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\n"
        );
        sim.recv(DESK, &register(n, &junk));
        assert_eq!(
            answers(&sim.take(), DESK)[0].0,
            401,
            "junk {n} is just challenged"
        );
    }
    // Nonces we never issued are not failed logins: a fresh stale=true challenge each.
    assert_eq!(sim.proxy.stats(sim.now).auth_failures, 0);
    // alice's own REGISTER still goes through.
    sim.recv(DESK, &register(100, ""));
    let sent = sim.take();
    let challenge = sent
        .iter()
        .find_map(|s| s.response().filter(|r| r.status == 401))
        .expect("a 401");
    let digest = answer_challenge(
        &challenge,
        "alice",
        "a-long-password",
        Algorithm::Md5,
        "REGISTER",
        "sip:localhost",
    );
    let auth = format!("Authorization: {digest}\n");
    sim.recv(DESK, &register(101, &auth));
    assert_eq!(answers(&sim.take(), DESK), [(200, "OK".to_owned())]);
}

/// Call `flood-{i}` from the attacker to bob.
fn flood(i: u32) -> String {
    format!(
        "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKflood{i}
Max-Forwards: 70
From: <sip:m@example.net>;tag=f{i}
To: <sip:bob@localhost>
Call-ID: flood-{i}
CSeq: 1 INVITE
Content-Length: 0

"
    )
}

/// R30: one 40 KB INVITE writes a short record, and a flood of unanswered calls from one
/// unauthenticated source writes a bounded number of records (the rest are counted).
#[test]
fn unauthenticated_calls_write_bounded_records() {
    let mut sim = Sim::new();
    let huge = "x".repeat(20_000);
    sim.recv(
        ATTACKER,
        &format!(
            "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKbig
Max-Forwards: 70
From: <sip:{huge}@example.net>;tag=big
To: <sip:alice@localhost>
Call-ID: big-{}
CSeq: 1 INVITE
Contact: <sip:m@{ATTACKER}>
Content-Length: 0

",
            &huge[..20_000]
        ),
    );
    // The desk refuses: the call ends unanswered.
    let sent = sim.take();
    let inv = sent
        .iter()
        .find_map(|s| s.request().filter(|_| s.to == addr(DESK)))
        .unwrap_or_else(|| panic!("not forked: {:?}", answers(&sent, ATTACKER)));
    let busy = sip_core::message::Response::to_request(&inv, 486, "Busy Here", Some("d"));
    sim.recv_raw(DESK, &busy.to_bytes());
    assert_eq!(sim.call_records().len(), 1);
    let records = sim.call_records();
    let r = &records[0];
    for f in [&r.call_id, &r.caller, &r.called, &r.release_cause] {
        assert!(f.len() <= sip_core::proxy::MAX_RECORD_FIELD, "{}", f.len());
    }
    assert!(r.branches.iter().all(|b| b.contact.len() <= 256));

    // 100 calls to bob (nothing registered) from one source, in one go.
    sim.events.clear();
    for i in 0..100 {
        sim.recv(ATTACKER, &flood(i));
    }
    // The big call above took one of the source's tokens.
    let burst = sip_core::proxy::UNVERIFIED_RECORDS_BURST as usize - 1;
    assert_eq!(sim.call_records().len(), burst);
    assert_eq!(sim.proxy.stats(sim.now).cdrs_shed, (100 - burst) as u64);
    // The source earns records back over time (one a second).
    sim.now += Duration::from_secs(5);
    sim.events.clear();
    for i in 100..110 {
        sim.recv(ATTACKER, &flood(i));
    }
    assert_eq!(sim.call_records().len(), 5);
}
