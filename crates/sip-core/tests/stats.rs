//! The proxy's metrics counters in simulated time: each counter moves on the path it names
//! and only there, the gauges follow the state, and the branch INVITEs of a fork (and only
//! they) carry their fork's id for the driver's skew measurement.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::digest::{creds, nonce_of};
use common::msg::{answer, answer_with, call, cancel, in_call, register};
use common::setup::{binding, config, device, subscriber};
use common::sim::{Sim, final_to, requests_to};
use common::{CALLER, PROXY, addr};
use sip_core::auth::{Algorithm, DigestPolicy};
use sip_core::proxy::{
    CallOutcome, ProxyConfig, ProxyStats, SubscriberEntry, Transport, TrustGate, TrustRefusal,
};

const D1: &str = "127.0.0.1:6001";
const D2: &str = "127.0.0.1:6002";
const PHONE: &str = "127.0.0.1:6003";

/// A gate that challenges every phone branch and refuses every proof as `wrong-proof`.
struct Refusing;

impl TrustGate for Refusing {
    fn challenge(
        &mut self,
        _now: Instant,
        _device: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, TrustRefusal> {
        Ok(format!("c:{call_id}:{branch}"))
    }

    fn verify(
        &mut self,
        _now: Instant,
        _device: &str,
        _call_id: &str,
        _branch: &str,
        _proof: Option<&str>,
    ) -> Result<(), TrustRefusal> {
        Err(TrustRefusal {
            kind: "wrong-proof".into(),
            detail: String::new(),
        })
    }

    fn forget(&mut self, _device: &str, _call_id: &str, _branch: &str) {}
}

impl Sim {
    /// alice (password `alicepw`, ring timeout 5 s) with a binding at each of `devices`.
    fn new(devices: &[&str]) -> Self {
        // The clients here answer SHA-256 at once: offer it every time.
        let mut sim = Self::with_config(ProxyConfig {
            digest: DigestPolicy::Both,
            ..config()
        });
        let now = sim.now;
        sim.proxy.upsert_subscriber(SubscriberEntry {
            ring_timeout: Duration::from_secs(5),
            ..subscriber("alice", Some("alicepw"))
        });
        for d in devices {
            let b = binding("alice", d, None, now + Duration::from_secs(3600));
            sim.proxy.restore_binding("alice", b, now);
        }
        sim
    }

    fn stats(&self) -> ProxyStats {
        self.proxy.stats(self.now)
    }

    /// A new INVITE for alice from bob (a peer's caller: not challenged); returns its
    /// Call-ID.
    fn invite(&mut self) -> String {
        let n = self.next_n();
        self.recv(
            CALLER,
            &call(n, Transport::Udp, CALLER, "sip:alice@localhost"),
        );
        format!("call-{n}")
    }

    /// The caller's CANCEL of INVITE number `n`.
    fn cancel(&mut self, n: u32) {
        self.recv(CALLER, &cancel(n));
    }
}

/// Active calls, forks, server and client transactions.
fn gauges(s: &ProxyStats) -> (usize, usize, usize, usize) {
    (
        s.active_calls,
        s.forks,
        s.server_transactions,
        s.client_transactions,
    )
}

fn calls(s: &ProxyStats) -> BTreeMap<&'static str, u64> {
    CallOutcome::ALL
        .iter()
        .map(|o| (o.as_str(), s.calls_ended(*o)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn a_fresh_proxy_counts_nothing() {
    let sim = Sim::new(&[]);
    assert_eq!(sim.stats(), ProxyStats::default());
}

#[test]
fn unparsable_messages_are_counted_answered_or_not() {
    let mut sim = Sim::new(&[]);
    sim.recv_raw(CALLER, b"\x00\x01garbage that is not SIP");
    assert_eq!(sim.stats().parse_errors, 1);
    // A request whose start line parses but a header does not: answered 400, counted too.
    // (A garbage CSeq is answered as well, echoed as received, but such an answer is no
    // message this harness's parse accepts.)
    sim.recv(
        CALLER,
        "OPTIONS sip:localhost SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKbad1
From: <sip:bob@example.net>;tag=1
To: <sip:localhost>
Call-ID: bad-1
CSeq: 1 OPTIONS
Max-Forwards: lots
Content-Length: 0

",
    );
    assert_eq!(sim.stats().parse_errors, 2);
    // A good message moves nothing.
    sim.recv(
        CALLER,
        "OPTIONS sip:localhost SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKgood1
Max-Forwards: 70
From: <sip:bob@example.net>;tag=1
To: <sip:localhost>
Call-ID: good-1
CSeq: 1 OPTIONS
Content-Length: 0

",
    );
    let s = sim.stats();
    assert_eq!((s.parse_errors, s.auth_failures), (2, 0));
}

#[test]
fn registrations_gauge_counts_live_bindings_only() {
    let mut sim = Sim::new(&[D1, D2]);
    let soon = sim.now + Duration::from_secs(60);
    sim.proxy
        .restore_binding("alice", binding("alice", PHONE, None, soon), sim.now);
    assert_eq!(sim.stats().registrations, 3);
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.stats().registrations, 2, "the expired one is not live");
    sim.proxy.remove_subscriber("alice");
    assert_eq!(sim.stats().registrations, 0);
}

#[test]
fn fork_branches_are_tagged_and_an_answered_call_is_counted_at_its_bye() {
    let mut sim = Sim::new(&[D1, D2]);
    sim.invite();
    let sent = sim.take();
    // The 100 Trying is no branch; both INVITEs carry the same fork id.
    let tags: Vec<(SocketAddr, Option<u64>)> = sent.iter().map(|s| (s.to, s.fork)).collect();
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert_eq!(tags[0], (addr(CALLER), None));
    let fork = tags[1].1.expect("branch 1 tagged");
    assert_eq!(tags[2].1, Some(fork));
    assert_eq!(
        [tags[1].0, tags[2].0]
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        [addr(D1), addr(D2)].iter().collect()
    );
    assert_eq!(gauges(&sim.stats()), (1, 1, 1, 2));

    let b1 = requests_to(&sent, D1, "INVITE").pop().unwrap();
    let b2 = requests_to(&sent, D2, "INVITE").pop().unwrap();
    sim.recv(D2, &answer(&b2, 180, "t2", D2));
    sim.recv(D1, &answer(&b1, 200, "t1", D1));
    let sent = sim.take();
    // Responses and the CANCEL of the loser are not fork branches.
    assert!(sent.iter().all(|s| s.fork.is_none()), "{sent:?}");
    assert!(calls(&sim.stats()).is_empty(), "answered, not yet ended");
    assert_eq!(sim.stats().active_calls, 1);

    // The caller's BYE ends the call.
    let tag = sim.proxy.route_tag("call-1");
    sim.recv(
        CALLER,
        &in_call(
            "BYE",
            &format!("sip:alice@{D1}"),
            "bye1",
            2,
            "<sip:alice@localhost>;tag=t1",
            &format!("Route: <sip:{PROXY};lr;rr={tag}>\n"),
        ),
    );
    let sent = sim.take();
    assert!(
        sent.iter().any(|s| s.to == addr(D1)
            && s.request().is_some_and(|r| r.method.as_str() == "BYE")
            && s.fork.is_none()),
        "BYE forwarded untagged: {sent:?}"
    );
    let s = sim.stats();
    assert_eq!(calls(&s), BTreeMap::from([("answered", 1)]));
    assert_eq!(s.active_calls, 0);
}

#[test]
fn unanswered_calls_are_counted_by_outcome() {
    let mut sim = Sim::new(&[D1, D2]);
    // Both busy.
    sim.invite();
    let sent = sim.take();
    for (d, tag) in [(D1, "t1"), (D2, "t2")] {
        let b = requests_to(&sent, d, "INVITE").pop().unwrap();
        sim.recv(d, &answer(&b, 486, tag, d));
    }
    assert_eq!(calls(&sim.stats()), BTreeMap::from([("busy", 1)]));

    // The caller cancels.
    sim.invite();
    let sent = sim.take();
    for (d, tag) in [(D1, "t3"), (D2, "t4")] {
        let b = requests_to(&sent, d, "INVITE").pop().unwrap();
        sim.recv(d, &answer(&b, 180, tag, d));
    }
    sim.cancel(2);
    assert_eq!(
        calls(&sim.stats()),
        BTreeMap::from([("busy", 1)]),
        "still ringing"
    );
    // The devices answer the proxy's CANCELs with 487; the caller gets its final 487.
    for (d, tag) in [(D1, "t3"), (D2, "t4")] {
        let b = requests_to(&sent, d, "INVITE").pop().unwrap();
        sim.recv(d, &answer(&b, 487, tag, d));
    }
    assert_eq!(
        calls(&sim.stats()),
        BTreeMap::from([("busy", 1), ("cancelled", 1)])
    );

    // Nobody answers before the ring timeout (5 s).
    sim.invite();
    sim.advance(Duration::from_secs(6));
    assert_eq!(
        calls(&sim.stats()),
        BTreeMap::from([("busy", 1), ("cancelled", 1), ("no-answer", 1)])
    );

    // Nothing to ring.
    let mut empty = Sim::new(&[]);
    empty.invite();
    assert_eq!(calls(&empty.stats()), BTreeMap::from([("unreachable", 1)]));
    assert_eq!(empty.stats().active_calls, 0);

    // Every transaction and fork goes away in the end; the counters stay.
    sim.advance(Duration::from_secs(120));
    let s = sim.stats();
    assert_eq!(gauges(&s), (0, 0, 0, 0));
    assert_eq!(calls(&s).values().sum::<u64>(), 3);
}

/// alice's REGISTER number `n` from D1 with `auth` (an `Authorization` line or nothing).
fn register_d1(n: u32, auth: &str) -> String {
    let contact = format!("<sip:alice@{D1}>");
    let headers = format!(
        "{auth}Expires: 600
"
    );
    register(
        Transport::Udp,
        D1,
        n,
        "alice",
        "reg-call",
        &contact,
        &headers,
    )
}

#[test]
fn failed_authentications_are_counted_not_challenges_or_successes() {
    let mut sim = Sim::new(&[]);
    // A REGISTER without credentials is only challenged.
    sim.recv(D1, &register_d1(1, ""));
    assert_eq!(sim.stats().auth_failures, 0);
    let nonce = nonce_of(&final_to(&sim.take(), D1));
    // Wrong password.
    let bad = creds(
        "alice",
        "wrong",
        &nonce,
        "REGISTER",
        "sip:localhost",
        Algorithm::Sha256,
    );
    sim.recv(D1, &register_d1(2, &format!("Authorization: {bad}\n")));
    assert_eq!(sim.stats().auth_failures, 1);
    // The right one registers and counts nothing.
    let good = creds(
        "alice",
        "alicepw",
        &nonce,
        "REGISTER",
        "sip:localhost",
        Algorithm::Sha256,
    );
    sim.recv(D1, &register_d1(3, &format!("Authorization: {good}\n")));
    let s = sim.stats();
    assert_eq!((s.auth_failures, s.registrations), (1, 1));

    // A caller claiming to be alice with a wrong password.
    sim.take();
    let as_alice = |n: u32, auth: &str| {
        format!(
            "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv{n};rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=a1
To: <sip:alice@localhost>
Call-ID: inv-1
CSeq: {n} INVITE
Contact: <sip:alice@{CALLER}>
{auth}Content-Length: 0

"
        )
    };
    sim.recv(CALLER, &as_alice(1, ""));
    let nonce = nonce_of(&final_to(&sim.take(), CALLER));
    assert_eq!(
        sim.stats().auth_failures,
        1,
        "a 407 challenge is no failure"
    );
    let bad = creds(
        "alice",
        "nope",
        &nonce,
        "INVITE",
        "sip:alice@localhost",
        Algorithm::Sha256,
    );
    sim.recv(
        CALLER,
        &as_alice(2, &format!("Proxy-Authorization: {bad}\n")),
    );
    assert_eq!(sim.stats().auth_failures, 2);
}

#[test]
fn trust_failures_are_counted_by_kind() {
    let mut sim = Sim::new(&[D1]);
    sim.proxy.upsert_device(device("d-1", "alice", None));
    let far = sim.now + Duration::from_secs(3600);
    sim.proxy
        .restore_binding("alice", binding("alice", PHONE, Some("d-1"), far), sim.now);

    // No trust gate: the phone cannot be challenged and is not rung.
    sim.invite();
    let sent = sim.take();
    assert!(requests_to(&sent, PHONE, "INVITE").is_empty());
    assert_eq!(
        sim.stats().trust_failures,
        BTreeMap::from([("no-trust-gate".to_owned(), 1)])
    );

    // With a gate that refuses every proof: the phone's 200 is refused as `wrong-proof`.
    sim.proxy.set_trust_gate(Box::new(Refusing));
    sim.invite();
    let sent = sim.take();
    let b = requests_to(&sent, PHONE, "INVITE")
        .pop()
        .expect("phone rung");
    sim.recv(
        PHONE,
        &answer_with(&b, 200, "p1", PHONE, &[("Trust-Proof", "bogus")], false),
    );
    assert_eq!(
        sim.stats().trust_failures,
        BTreeMap::from([
            ("no-trust-gate".to_owned(), 1),
            ("wrong-proof".to_owned(), 1)
        ])
    );
}
