//! Hostile-network moves against the proxy in simulated time (R30, R26; SECURITY threats 4,
//! 14, 16): the in-dialog relay, loops, reflection and user enumeration. Each test performs
//! the attack and shows it fail; nothing here touches a socket.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::auth::{Algorithm, ha1};
use sip_core::message::{Message, parse};
use sip_core::proxy::{
    Binding, Output, Proxy, ProxyConfig, Reach, SubscriberEntry, Target, Transport,
};

const PROXY: &str = "127.0.0.1:5060";
const ATTACKER: &str = "127.0.0.1:6666";
const VICTIM: &str = "127.0.0.1:9999";
const DESK: &str = "127.0.0.1:7001";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Sim {
    proxy: Proxy,
    now: Instant,
    /// Every datagram the proxy sent: (destination, bytes).
    sent: Vec<(SocketAddr, Vec<u8>)>,
    received_bytes: usize,
    records: Vec<sip_core::proxy::CallRecord>,
}

impl Sim {
    /// alice (registered at DESK) and bob (nothing registered) are subscribers.
    fn new() -> Self {
        let now = Instant::now();
        let mut proxy = Proxy::new(ProxyConfig::new("localhost", addr(PROXY), [9; 32]), now);
        for user in ["alice", "bob"] {
            proxy.upsert_subscriber(SubscriberEntry {
                user: user.into(),
                ha1_md5: ha1(Algorithm::Md5, user, "localhost", "a-long-password"),
                ha1_sha256: ha1(Algorithm::Sha256, user, "localhost", "a-long-password"),
                ring_timeout: Duration::from_secs(30),
                ring_delays: Vec::new(),
            });
        }
        let uri = format!("sip:alice@{DESK}");
        let t = Target {
            transport: Transport::Udp,
            addr: addr(DESK),
            conn: None,
        };
        proxy.restore_binding(
            "alice",
            Binding {
                contact: uri.clone(),
                uri: sip_core::message::Uri::parse(&uri).unwrap(),
                target: t,
                source: t,
                call_id: "reg".into(),
                cseq: 1,
                expires_at: now + Duration::from_secs(3600),
                q: 1000,
                device: None,
                reach: Reach::Direct,
            },
            now,
        );
        Self {
            proxy,
            now,
            sent: Vec::new(),
            received_bytes: 0,
            records: Vec::new(),
        }
    }

    fn recv(&mut self, from: &str, msg: &str) {
        let bytes = msg.replace('\n', "\r\n");
        self.received_bytes += bytes.len();
        self.proxy
            .handle_receive(self.now, Transport::Udp, addr(from), None, bytes.as_bytes());
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.proxy.poll_output() {
            match o {
                Output::Transmit(t) => self.sent.push((t.target.addr, t.payload.to_vec())),
                Output::Event(e) => {
                    if let sip_core::proxy::Event::CallEnded(r) = *e {
                        self.records.push(*r);
                    }
                }
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.proxy.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.proxy.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    fn take(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.sent)
    }
}

/// The status line of every response in `sent` to `to`.
fn answers(sent: &[(SocketAddr, Vec<u8>)], to: &str) -> Vec<(u16, String)> {
    sent.iter()
        .filter(|(a, _)| *a == addr(to))
        .filter_map(|(_, b)| match parse(b) {
            Ok(Message::Response(r)) => Some((r.status, r.reason)),
            _ => None,
        })
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
            .any(|(a, b)| *a == addr(DESK) && b.starts_with(b"OPTIONS ")),
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
    let out: usize = sent.iter().map(|(_, b)| b.len()).sum();
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
        format!(
            "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {DESK};branch=z9hG4bKjr{n};rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=j{n}
To: <sip:alice@localhost>
Call-ID: junk-{n}
CSeq: 1 REGISTER
Contact: <sip:alice@{DESK}>
{auth}Content-Length: 0

"
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
        .find_map(|(_, b)| match parse(b) {
            Ok(Message::Response(r)) if r.status == 401 => Some(r),
            _ => None,
        })
        .expect("a 401");
    let www = challenge
        .headers
        .get(&sip_core::message::HeaderName::WwwAuthenticate)
        .unwrap();
    let nonce = www
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let h = ha1(Algorithm::Md5, "alice", "localhost", "a-long-password");
    let r = sip_core::auth::response(
        Algorithm::Md5,
        &h,
        &sip_core::auth::ResponseInput {
            nonce,
            nc: "00000001",
            cnonce: "c",
            qop: "auth",
            method: "REGISTER",
            uri: "sip:localhost",
        },
    );
    let auth = format!(
        "Authorization: Digest username=\"alice\", realm=\"localhost\", nonce=\"{nonce}\", uri=\"sip:localhost\", response=\"{r}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\n"
    );
    sim.recv(DESK, &register(101, &auth));
    assert_eq!(answers(&sim.take(), DESK), [(200, "OK".to_owned())]);
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
        .find_map(|(a, b)| match parse(b) {
            Ok(Message::Request(r)) if *a == addr(DESK) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not forked: {:?}", answers(&sent, ATTACKER)));
    let busy = sip_core::message::Response::to_request(&inv, 486, "Busy Here", Some("d"));
    sim.proxy
        .handle_receive(sim.now, Transport::Udp, addr(DESK), None, &busy.to_bytes());
    sim.drain();
    assert_eq!(sim.records.len(), 1);
    let r = &sim.records[0];
    for f in [&r.call_id, &r.caller, &r.called, &r.release_cause] {
        assert!(f.len() <= sip_core::proxy::MAX_RECORD_FIELD, "{}", f.len());
    }
    assert!(r.branches.iter().all(|b| b.contact.len() <= 256));

    // 100 calls to bob (nothing registered) from one source, in one go.
    sim.records.clear();
    for i in 0..100 {
        sim.recv(
            ATTACKER,
            &format!(
                "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKflood{i}
Max-Forwards: 70
From: <sip:m@example.net>;tag=f{i}
To: <sip:bob@localhost>
Call-ID: flood-{i}
CSeq: 1 INVITE
Content-Length: 0

"
            ),
        );
    }
    // The big call above took one of the source's tokens.
    let burst = sip_core::proxy::UNVERIFIED_RECORDS_BURST as usize - 1;
    assert_eq!(sim.records.len(), burst);
    assert_eq!(sim.proxy.stats(sim.now).cdrs_shed, (100 - burst) as u64);
    // The source earns records back over time (one a second).
    sim.now += Duration::from_secs(5);
    sim.records.clear();
    for i in 100..110 {
        sim.recv(
            ATTACKER,
            &format!(
                "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {ATTACKER};branch=z9hG4bKflood{i}
Max-Forwards: 70
From: <sip:m@example.net>;tag=f{i}
To: <sip:bob@localhost>
Call-ID: flood-{i}
CSeq: 1 INVITE
Content-Length: 0

"
            ),
        );
    }
    assert_eq!(sim.records.len(), 5);
}
