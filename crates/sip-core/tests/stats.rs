//! The proxy's metrics counters in simulated time: each counter moves on the path it names
//! and only there, the gauges follow the state, and the branch INVITEs of a fork (and only
//! they) carry their fork's id for the driver's skew measurement.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::auth::{Algorithm, ResponseInput, ha1, response};
use sip_core::message::{HeaderName, Message, Request, Response, Uri, parse};
use sip_core::proxy::{
    Binding, CallOutcome, DeviceEntry, Output, Proxy, ProxyConfig, ProxyStats, SubscriberEntry,
    Target, Transport, TrustGate, TrustRefusal,
};

const PROXY: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:6000";
const D1: &str = "127.0.0.1:6001";
const D2: &str = "127.0.0.1:6002";
const PHONE: &str = "127.0.0.1:6003";
const REALM: &str = "localhost";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

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

struct Sim {
    proxy: Proxy,
    now: Instant,
    /// Everything sent: (destination, message, fork tag).
    sent: Vec<(SocketAddr, Message, Option<u64>)>,
    seq: u32,
}

fn binding(d: &str, device: Option<&str>, expires_at: Instant) -> Binding {
    let uri = format!("sip:alice@{d}");
    let target = Target {
        transport: Transport::Udp,
        addr: addr(d),
        conn: None,
    };
    Binding {
        contact: uri.clone(),
        uri: Uri::parse(&uri).unwrap(),
        target,
        source: target,
        call_id: format!("reg-{d}"),
        cseq: 1,
        expires_at,
        q: 1000,
        device: device.map(str::to_owned),
        reach: sip_core::proxy::Reach::Direct,
    }
}

impl Sim {
    /// alice (password `alicepw`, ring timeout 5 s) with a binding at each of `devices`.
    fn new(devices: &[&str]) -> Self {
        let now = Instant::now();
        // The clients here answer SHA-256 at once: offer it every time.
        let cfg = ProxyConfig {
            digest: sip_core::auth::DigestPolicy::Both,
            ..ProxyConfig::new(REALM, addr(PROXY), [7; 32])
        };
        let mut proxy = Proxy::new(cfg, now);
        proxy.upsert_subscriber(SubscriberEntry {
            user: "alice".into(),
            ha1_md5: ha1(Algorithm::Md5, "alice", REALM, "alicepw"),
            ha1_sha256: ha1(Algorithm::Sha256, "alice", REALM, "alicepw"),
            ring_timeout: Duration::from_secs(5),
            ring_delays: Vec::new(),
        });
        for d in devices {
            proxy.restore_binding(
                "alice",
                binding(d, None, now + Duration::from_secs(3600)),
                now,
            );
        }
        Self {
            proxy,
            now,
            sent: Vec::new(),
            seq: 0,
        }
    }

    fn stats(&self) -> ProxyStats {
        self.proxy.stats(self.now)
    }

    fn recv(&mut self, from: &str, msg: &str) {
        let bytes = msg.replace('\n', "\r\n");
        self.recv_raw(from, bytes.as_bytes());
    }

    fn recv_raw(&mut self, from: &str, bytes: &[u8]) {
        self.proxy
            .handle_receive(self.now, Transport::Udp, addr(from), None, bytes);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.proxy.poll_output() {
            if let Output::Transmit(t) = o {
                let m = parse(&t.payload).expect("proxy output parses");
                self.sent.push((t.target.addr, m, t.fork));
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.proxy.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.proxy.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    fn take(&mut self) -> Vec<(SocketAddr, Message, Option<u64>)> {
        std::mem::take(&mut self.sent)
    }

    /// A new INVITE for alice from bob (a peer's caller: not challenged); returns its
    /// Call-ID.
    fn invite(&mut self) -> String {
        self.seq += 1;
        let n = self.seq;
        self.recv(
            CALLER,
            &format!(
                "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKcaller{n};rport
Max-Forwards: 70
From: <sip:bob@example.net>;tag=bobtag{n}
To: <sip:alice@localhost>
Call-ID: call-{n}
CSeq: 1 INVITE
Contact: <sip:bob@{CALLER}>
Content-Length: 0

"
            ),
        );
        format!("call-{n}")
    }

    /// The caller's CANCEL of INVITE number `n`.
    fn cancel(&mut self, n: u32) {
        self.recv(
            CALLER,
            &format!(
                "CANCEL sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKcaller{n};rport
Max-Forwards: 70
From: <sip:bob@example.net>;tag=bobtag{n}
To: <sip:alice@localhost>
Call-ID: call-{n}
CSeq: 1 CANCEL
Content-Length: 0

"
            ),
        );
    }
}

/// The branch INVITEs sent to `to`.
fn invites_to(sent: &[(SocketAddr, Message, Option<u64>)], to: &str) -> Vec<Request> {
    sent.iter()
        .filter(|(a, _, _)| *a == addr(to))
        .filter_map(|(_, m, _)| match m {
            Message::Request(r) if r.method.as_str() == "INVITE" => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A device's response to its branch INVITE `req`.
fn answer(req: &Request, status: u16, tag: &str, dev: &str, extra: Option<(&str, &str)>) -> String {
    let mut resp = Response::to_request(req, status, "X", Some(tag));
    for rr in req.headers.get_all(&HeaderName::RecordRoute) {
        resp.headers.push(HeaderName::RecordRoute, rr);
    }
    resp.headers
        .push(HeaderName::Contact, format!("<sip:alice@{dev}>"));
    if let Some((name, value)) = extra {
        resp.headers.push(HeaderName::Other(name.into()), value);
    }
    String::from_utf8(resp.to_bytes())
        .unwrap()
        .replace("\r\n", "\n")
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
        .restore_binding("alice", binding(PHONE, None, soon), sim.now);
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
    let tags: Vec<(SocketAddr, Option<u64>)> = sent.iter().map(|(a, _, f)| (*a, *f)).collect();
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
    let s = sim.stats();
    assert_eq!(
        (
            s.active_calls,
            s.forks,
            s.server_transactions,
            s.client_transactions
        ),
        (1, 1, 1, 2)
    );

    let b1 = invites_to(&sent, D1).pop().unwrap();
    let b2 = invites_to(&sent, D2).pop().unwrap();
    sim.recv(D2, &answer(&b2, 180, "t2", D2, None));
    sim.recv(D1, &answer(&b1, 200, "t1", D1, None));
    let sent = sim.take();
    // Responses and the CANCEL of the loser are not fork branches.
    assert!(sent.iter().all(|(_, _, f)| f.is_none()), "{sent:?}");
    assert!(calls(&sim.stats()).is_empty(), "answered, not yet ended");
    assert_eq!(sim.stats().active_calls, 1);

    // The caller's BYE ends the call.
    let tag = sim.proxy.route_tag("call-1");
    sim.recv(
        CALLER,
        &format!(
            "BYE sip:alice@{D1} SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye1;rport
Max-Forwards: 70
Route: <sip:{PROXY};lr;rr={tag}>
From: <sip:bob@example.net>;tag=bobtag1
To: <sip:alice@localhost>;tag=t1
Call-ID: call-1
CSeq: 2 BYE
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    assert!(
        sent.iter().any(|(a, m, f)| *a == addr(D1)
            && matches!(m, Message::Request(r) if r.method.as_str() == "BYE")
            && f.is_none()),
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
        let b = invites_to(&sent, d).pop().unwrap();
        sim.recv(d, &answer(&b, 486, tag, d, None));
    }
    assert_eq!(calls(&sim.stats()), BTreeMap::from([("busy", 1)]));

    // The caller cancels.
    sim.invite();
    let sent = sim.take();
    for (d, tag) in [(D1, "t3"), (D2, "t4")] {
        let b = invites_to(&sent, d).pop().unwrap();
        sim.recv(d, &answer(&b, 180, tag, d, None));
    }
    sim.cancel(2);
    assert_eq!(
        calls(&sim.stats()),
        BTreeMap::from([("busy", 1)]),
        "still ringing"
    );
    // The devices answer the proxy's CANCELs with 487; the caller gets its final 487.
    for (d, tag) in [(D1, "t3"), (D2, "t4")] {
        let b = invites_to(&sent, d).pop().unwrap();
        sim.recv(d, &answer(&b, 487, tag, d, None));
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
    assert_eq!(
        (
            s.active_calls,
            s.forks,
            s.server_transactions,
            s.client_transactions
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(calls(&s).values().sum::<u64>(), 3);
}

/// Digest credentials (`qop=auth`, nc 1) of `user`/`pw` for `method` on `uri`.
fn creds(user: &str, pw: &str, nonce: &str, method: &str, uri: &str) -> String {
    let h = ha1(Algorithm::Sha256, user, REALM, pw);
    let r = response(
        Algorithm::Sha256,
        &h,
        &ResponseInput {
            nonce,
            nc: "00000001",
            cnonce: "c0ffee",
            qop: "auth",
            method,
            uri,
        },
    );
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    )
}

fn nonce_of(sent: &[(SocketAddr, Message, Option<u64>)], header: &HeaderName) -> String {
    let value = sent
        .iter()
        .find_map(|(_, m, _)| match m {
            Message::Response(r) => r.headers.get(header).map(str::to_owned),
            Message::Request(_) => None,
        })
        .expect("a challenge");
    value
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

fn register(n: u32, auth: &str) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {D1};branch=z9hG4bKreg{n};rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=r{n}
To: <sip:alice@localhost>
Call-ID: reg-call
CSeq: {n} REGISTER
Contact: <sip:alice@{D1}>
{auth}Expires: 600
Content-Length: 0

"
    )
}

#[test]
fn failed_authentications_are_counted_not_challenges_or_successes() {
    let mut sim = Sim::new(&[]);
    // A REGISTER without credentials is only challenged.
    sim.recv(D1, &register(1, ""));
    assert_eq!(sim.stats().auth_failures, 0);
    let nonce = nonce_of(&sim.take(), &HeaderName::WwwAuthenticate);
    // Wrong password.
    let bad = creds("alice", "wrong", &nonce, "REGISTER", "sip:localhost");
    sim.recv(D1, &register(2, &format!("Authorization: {bad}\n")));
    assert_eq!(sim.stats().auth_failures, 1);
    // The right one registers and counts nothing.
    let good = creds("alice", "alicepw", &nonce, "REGISTER", "sip:localhost");
    sim.recv(D1, &register(3, &format!("Authorization: {good}\n")));
    let s = sim.stats();
    assert_eq!((s.auth_failures, s.registrations), (1, 1));

    // A caller claiming to be alice with a wrong password.
    sim.take();
    sim.recv(
        CALLER,
        &format!(
            "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=a1
To: <sip:alice@localhost>
Call-ID: inv-1
CSeq: 1 INVITE
Contact: <sip:alice@{CALLER}>
Content-Length: 0

"
        ),
    );
    let nonce = nonce_of(&sim.take(), &HeaderName::ProxyAuthenticate);
    assert_eq!(
        sim.stats().auth_failures,
        1,
        "a 407 challenge is no failure"
    );
    let bad = creds("alice", "nope", &nonce, "INVITE", "sip:alice@localhost");
    sim.recv(
        CALLER,
        &format!(
            "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv2;rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=a1
To: <sip:alice@localhost>
Call-ID: inv-1
CSeq: 2 INVITE
Contact: <sip:alice@{CALLER}>
Proxy-Authorization: {bad}
Content-Length: 0

"
        ),
    );
    assert_eq!(sim.stats().auth_failures, 2);
}

#[test]
fn trust_failures_are_counted_by_kind() {
    let mut sim = Sim::new(&[D1]);
    sim.proxy.upsert_device(DeviceEntry {
        id: "d-1".into(),
        user: "alice".into(),
        ha1_md5: String::new(),
        ha1_sha256: String::new(),
        service_on: true,
        number: None,
    });
    let far = sim.now + Duration::from_secs(3600);
    sim.proxy
        .restore_binding("alice", binding(PHONE, Some("d-1"), far), sim.now);

    // No trust gate: the phone cannot be challenged and is not rung.
    sim.invite();
    let sent = sim.take();
    assert!(invites_to(&sent, PHONE).is_empty());
    assert_eq!(
        sim.stats().trust_failures,
        BTreeMap::from([("no-trust-gate".to_owned(), 1)])
    );

    // With a gate that refuses every proof: the phone's 200 is refused as `wrong-proof`.
    sim.proxy.set_trust_gate(Box::new(Refusing));
    sim.invite();
    let sent = sim.take();
    let b = invites_to(&sent, PHONE).pop().expect("phone rung");
    sim.recv(
        PHONE,
        &answer(&b, 200, "p1", PHONE, Some(("Trust-Proof", "bogus"))),
    );
    assert_eq!(
        sim.stats().trust_failures,
        BTreeMap::from([
            ("no-trust-gate".to_owned(), 1),
            ("wrong-proof".to_owned(), 1)
        ])
    );
}
