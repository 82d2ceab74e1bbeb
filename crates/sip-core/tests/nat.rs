//! Devices behind NAT in simulated time (R31): a private Contact registered from elsewhere
//! is reached at the REGISTER's source, NATed UDP bindings are pinged and dropped when they
//! stop answering, RFC 5626 flows (reg-id + instance) replace each other and die with their
//! connection, STUN keep-alives are answered. Nothing here touches a socket.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::msg::call;
use common::sim::{Sent, Sim, all_requests_to, requests};
use common::{CALLER, addr, setup};
use sip_core::auth::DigestPolicy;
use sip_core::message::{HeaderName, Request, Response};
use sip_core::proxy::{
    ConnId, Event, NatConfig, ProxyConfig, Reach, Transport, parse_ranges, stun_mapped_address,
};

const NAT_PUBLIC: &str = "127.0.0.1:40000";

impl Sim {
    fn new(nat: NatConfig) -> Self {
        let mut sim = Self::with_config(ProxyConfig {
            digest: DigestPolicy::Md5,
            nat,
            ..setup::config()
        });
        sim.proxy
            .upsert_subscriber(setup::subscriber("alice", Some("alice-password")));
        sim
    }

    /// Registers alice (challenge, then credentials) from `from` with Contact `contact`
    /// (a full header value) and `extra` header lines; returns the final response.
    fn register(
        &mut self,
        transport: Transport,
        from: &str,
        conn: Option<ConnId>,
        contact: &str,
        extra: &str,
    ) -> Response {
        self.register_as(
            (transport, from, conn),
            ("alice", "alice-password"),
            "192.168.1.20:5060",
            contact,
            &format!("{extra}Expires: 600\n"),
        )
    }

    /// An INVITE for alice from a foreign caller; returns where its branches went.
    fn invite(&mut self) -> Vec<(SocketAddr, Transport, Option<ConnId>)> {
        let n = self.next_n();
        let msg = call(n, Transport::Udp, CALLER, "sip:alice@localhost");
        self.recv(CALLER, &msg);
        requests(&self.take(), "INVITE")
            .into_iter()
            .map(|(a, t, c, _)| (a, t, c))
            .collect()
    }

    fn bindings(&self) -> Vec<(String, Reach)> {
        self.proxy
            .bindings("alice", self.now)
            .into_iter()
            .map(|b| (b.contact, b.reach))
            .collect()
    }
}

fn options_sent(sent: &[Sent]) -> Vec<Request> {
    requests(sent, "OPTIONS")
        .into_iter()
        .map(|(.., r)| r)
        .collect()
}

#[test]
fn private_contact_from_elsewhere_is_reached_at_the_source() {
    let mut sim = Sim::new(NatConfig::default());
    let ok = sim.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        "<sip:alice@192.168.1.20:5060>",
        "",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        sim.bindings(),
        [("sip:alice@192.168.1.20:5060".into(), Reach::Nat)]
    );
    let branches = sim.invite();
    assert_eq!(branches, [(addr(NAT_PUBLIC), Transport::Udp, None)]);
}

#[test]
fn public_contact_is_dialled_as_registered() {
    let mut sim = Sim::new(NatConfig::default());
    sim.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        "<sip:alice@127.0.0.1:7001>",
        "",
    );
    assert_eq!(
        sim.bindings(),
        [("sip:alice@127.0.0.1:7001".into(), Reach::Direct)]
    );
    assert_eq!(
        sim.invite(),
        [(addr("127.0.0.1:7001"), Transport::Udp, None)]
    );
}

#[test]
fn private_ranges_are_configurable() {
    let nat = NatConfig {
        private: parse_ranges("127.0.0.64/26").unwrap(),
        ..NatConfig::default()
    };
    let mut sim = Sim::new(nat);
    sim.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        "<sip:alice@127.0.0.70:5060>",
        "",
    );
    assert_eq!(sim.invite(), [(addr(NAT_PUBLIC), Transport::Udp, None)]);
    // Without the range, 127.0.0.70 is just another address.
    let mut plain = Sim::new(NatConfig::default());
    plain.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        "<sip:alice@127.0.0.70:5060>",
        "",
    );
    assert_eq!(
        plain.invite(),
        [(addr("127.0.0.70:5060"), Transport::Udp, None)]
    );
}

#[test]
fn nated_bindings_are_pinged_and_dropped_when_silent() {
    let mut sim = Sim::new(NatConfig::default());
    sim.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        "<sip:alice@10.0.0.5:5060>",
        "",
    );
    // A direct binding is never pinged.
    sim.register(
        Transport::Udp,
        "127.0.0.1:7001",
        None,
        "<sip:alice@127.0.0.1:7001>",
        "",
    );
    sim.advance(Duration::from_secs(25));
    let sent = sim.take();
    let pings = options_sent(&sent);
    assert_eq!(pings.len(), 1, "one ping per NATed binding");
    assert!(sent.iter().all(|s| s.to == addr(NAT_PUBLIC)));
    assert_eq!(pings[0].uri.to_string(), "sip:alice@10.0.0.5:5060");
    // The device answers: alive, and it keeps being pinged.
    let mut answer = Response::to_request(&pings[0], 200, "OK", Some("ka"));
    answer.headers.push(HeaderName::Server, "device");
    sim.recv_raw(NAT_PUBLIC, &answer.to_bytes());
    for _ in 0..5 {
        sim.advance(Duration::from_secs(25));
        let pings = options_sent(&sim.take());
        assert_eq!(pings.len(), 1);
        let answer = Response::to_request(&pings[0], 404, "Not Found", Some("ka"));
        sim.recv_raw(NAT_PUBLIC, &answer.to_bytes());
    }
    assert_eq!(sim.bindings().len(), 2, "any answer counts");
    // Then it goes silent: three missed pings, and the fourth round drops it.
    for _ in 0..3 {
        sim.advance(Duration::from_secs(25));
        assert_eq!(options_sent(&sim.take()).len(), 1);
    }
    assert_eq!(sim.bindings().len(), 2);
    sim.advance(Duration::from_secs(25));
    assert!(options_sent(&sim.take()).is_empty());
    assert_eq!(
        sim.bindings(),
        [("sip:alice@127.0.0.1:7001".into(), Reach::Direct)]
    );
    assert!(sim.events.iter().any(|e| matches!(e,
        Event::BindingRemoved { user, contact } if user == "alice" && contact == "sip:alice@10.0.0.5:5060")));
    // No NATed binding left: no more timers for pings.
    sim.advance(Duration::from_secs(100));
    assert!(options_sent(&sim.take()).is_empty());
    assert_eq!(
        sim.invite(),
        [(addr("127.0.0.1:7001"), Transport::Udp, None)]
    );
}

#[test]
fn outbound_flows_replace_each_other_and_die_with_their_connection() {
    let mut sim = Sim::new(NatConfig::default());
    let instance = "+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\"";
    let ok = sim.register(
        Transport::Tcp,
        NAT_PUBLIC,
        Some(ConnId(7)),
        &format!("<sip:alice@10.0.0.5:5060;transport=tcp;ob>;reg-id=1;{instance}"),
        "Supported: path, outbound\n",
    );
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("outbound"));
    assert_eq!(
        ok.headers.get(&HeaderName::from_wire("Flow-Timer")),
        Some("25")
    );
    assert_eq!(
        sim.invite(),
        [(addr(NAT_PUBLIC), Transport::Tcp, Some(ConnId(7)))],
        "over the REGISTER's connection"
    );
    // The client reconnects (new connection, new port, new contact): same flow, replaced.
    let ok = sim.register(
        Transport::Tcp,
        "127.0.0.1:40001",
        Some(ConnId(8)),
        &format!("<sip:alice@10.0.0.5:5062;transport=tcp;ob>;reg-id=1;{instance}"),
        "Supported: outbound\n",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(sim.bindings().len(), 1);
    assert!(sim.events.iter().any(|e| matches!(e,
        Event::BindingRemoved { contact, .. } if contact.contains(":5060"))));
    // Its connection closes: the flow is gone, nothing rings there any more.
    sim.proxy.connection_closed(ConnId(8));
    sim.drain();
    assert!(sim.bindings().is_empty());
    // Without `Supported: outbound` the 200 does not require it.
    let ok = sim.register(
        Transport::Udp,
        NAT_PUBLIC,
        None,
        &format!("<sip:alice@10.0.0.5:5060>;reg-id=1;{instance}"),
        "",
    );
    assert_eq!(ok.headers.get(&HeaderName::Require), None);
}

#[test]
fn stun_keepalives_are_answered_with_the_mapped_address() {
    let mut sim = Sim::new(NatConfig::default());
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[9; 12]);
    sim.recv_raw(NAT_PUBLIC, &req);
    let sent = sim.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, addr(NAT_PUBLIC));
    assert_eq!(stun_mapped_address(&sent[0].bytes), Some(addr(NAT_PUBLIC)));
    assert_eq!(sim.proxy.stats(sim.now).parse_errors, 0);
}

#[test]
fn a_caller_behind_nat_gets_its_contact_fixed() {
    let mut sim = Sim::new(NatConfig::default());
    sim.register(
        Transport::Udp,
        "127.0.0.1:7001",
        None,
        "<sip:alice@127.0.0.1:7001>",
        "",
    );
    for (contact, want) in [
        // Private and not the source: the source it is.
        (
            "\"J\\\"o\" <sip:bob@10.0.0.9:5062;transport=udp>;+sip.instance=\"<urn:x>\"",
            "\"J\\\"o\" <sip:bob@127.0.0.1:40000;transport=udp>;+sip.instance=\"<urn:x>\"",
        ),
        // A public address is left alone.
        ("<sip:bob@127.0.0.1:5999>", "<sip:bob@127.0.0.1:5999>"),
    ] {
        sim.n += 1;
        let n = sim.n;
        sim.recv_over(
            Transport::Udp,
            NAT_PUBLIC,
            None,
            &format!(
                "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bKnat{n};rport
Max-Forwards: 70
From: <sip:bob@example.net>;tag=n{n}
To: <sip:alice@localhost>
Call-ID: nat-{n}
CSeq: 1 INVITE
Contact: {contact}
Content-Length: 0

"
            ),
        );
        let fwd = all_requests_to(&sim.take(), "127.0.0.1:7001");
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[0].headers.get(&HeaderName::Contact), Some(want));
    }
}
