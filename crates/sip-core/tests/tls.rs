//! SIP over TLS in simulated time (RFC 3261 §26, RFC 5630): a contact registered over TLS is
//! reached over its connection and dropped with it, Via and Record-Route name our TLS
//! address (double record-routing between a TLS and a UDP side), in-dialog requests follow
//! them back over TLS, `sips:` requests stay on TLS. Nothing here touches a socket.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::msg::call;
use common::sim::{Sent, Sim, requests, responses};
use common::{CALLER, PROXY, REALM, addr, setup};
use sip_core::auth::DigestPolicy;
use sip_core::message::{HeaderName, Request, Response, Uri};
use sip_core::proxy::{
    Binding, ConnId, Event, Output, Proxy, ProxyConfig, Reach, Target, Transport,
};

const PROXY_TLS: &str = "127.0.0.1:5061";
/// Where alice's TLS connection comes from (an ephemeral port) ...
const ALICE_TLS_SRC: &str = "127.0.0.1:40001";
/// ... and what her Contact says (her own TLS listener, which the proxy never dials).
const ALICE_TLS_CONTACT: &str = "sip:alice@127.0.0.1:5071;transport=tls";
const ALICE_UDP: &str = "127.0.0.1:7001";
const TLS_CALLER: &str = "127.0.0.1:40002";
const ALICE_CONN: ConnId = ConnId(7);

impl Sim {
    fn new() -> Self {
        let mut cfg = ProxyConfig {
            digest: DigestPolicy::Md5,
            ..setup::config()
        };
        cfg.advertised_tls = Some(addr(PROXY_TLS));
        let mut sim = Self::with_config(cfg);
        sim.proxy
            .upsert_subscriber(setup::subscriber("alice", Some("alice-password")));
        sim
    }

    /// alice over TLS (connection 7) and over UDP, both registered.
    fn two_alices() -> Self {
        let mut sim = Self::new();
        let tls = (Transport::Tls, ALICE_TLS_SRC, Some(ALICE_CONN));
        let udp = (Transport::Udp, ALICE_UDP, None);
        for (at, contact) in [
            (tls, ALICE_TLS_CONTACT.to_owned()),
            (udp, format!("sip:alice@{ALICE_UDP}")),
        ] {
            let contact = format!("<{contact}>");
            let ok = sim.register_as(
                at,
                ("alice", "alice-password"),
                at.1,
                &contact,
                "Expires: 600\n",
            );
            assert_eq!(ok.status, 200);
        }
        sim
    }

    /// An INVITE for `uri` from a foreign caller over `transport`; returns what the proxy
    /// sent.
    fn invite(
        &mut self,
        transport: Transport,
        from: &str,
        conn: Option<ConnId>,
        uri: &str,
    ) -> Vec<Sent> {
        let n = self.next_n();
        self.recv_over(transport, from, conn, &call(n, transport, from, uri));
        self.take()
    }
}

fn all(r: &Request, name: HeaderName) -> Vec<String> {
    r.headers.get_all(&name).map(str::to_owned).collect()
}

#[test]
fn a_tls_registration_is_reached_over_its_connection_only() {
    let sim = Sim::two_alices();
    let bindings = sim.proxy.bindings("alice", sim.now);
    let tls = bindings
        .iter()
        .find(|b| b.contact == ALICE_TLS_CONTACT)
        .expect("the TLS binding");
    assert_eq!(tls.reach, Reach::Connection);
    assert_eq!(
        tls.target,
        Target {
            transport: Transport::Tls,
            addr: addr(ALICE_TLS_SRC),
            conn: Some(ALICE_CONN),
        },
        "over the REGISTER's connection, not at the Contact's address"
    );
    assert_eq!(tls.source.transport, Transport::Tls);
    // What the store is told: the transport is "TLS".
    let saved = sim
        .events
        .iter()
        .find_map(|e| match e {
            Event::BindingSaved { binding, .. } if binding.contact == ALICE_TLS_CONTACT => {
                Some(binding.source.transport.as_str())
            }
            _ => None,
        })
        .expect("saved");
    assert_eq!(saved, "TLS");
}

#[test]
fn a_forked_call_double_record_routes_between_tls_and_udp_and_the_bye_comes_back_over_tls() {
    let mut sim = Sim::two_alices();
    let sent = sim.invite(Transport::Udp, CALLER, None, "sip:alice@localhost");
    let invites = requests(&sent, "INVITE");
    assert_eq!(invites.len(), 2, "two branches");
    let (tls_at, tls_t, tls_conn, tls_inv) = invites
        .iter()
        .find(|i| i.1 == Transport::Tls)
        .expect("a TLS branch")
        .clone();
    assert_eq!((tls_at, tls_conn), (addr(ALICE_TLS_SRC), Some(ALICE_CONN)));
    assert_eq!(tls_t, Transport::Tls);
    assert_eq!(tls_inv.uri.to_string(), ALICE_TLS_CONTACT);
    let via = all(&tls_inv, HeaderName::Via);
    assert!(
        via[0].starts_with(&format!("SIP/2.0/TLS {PROXY_TLS};branch=")),
        "{via:?}"
    );
    let call_id = tls_inv.call_id().to_owned();
    let from = all(&tls_inv, HeaderName::From).remove(0);
    let tag = sim.proxy.route_tag(&call_id);
    let rr_tls = format!("<sip:{PROXY_TLS};transport=tls;lr;rr={tag}>");
    let rr_udp = format!("<sip:{PROXY};lr;rr={tag}>");
    assert_eq!(
        all(&tls_inv, HeaderName::RecordRoute),
        [rr_tls.clone(), rr_udp.clone()],
        "double record-routing: the TLS side's entry on top"
    );
    let (udp_at, _, udp_conn, udp_inv) = invites
        .iter()
        .find(|i| i.1 == Transport::Udp)
        .expect("a UDP branch")
        .clone();
    assert_eq!((udp_at, udp_conn), (addr(ALICE_UDP), None));
    assert!(all(&udp_inv, HeaderName::Via)[0].starts_with(&format!("SIP/2.0/UDP {PROXY};")));
    assert_eq!(
        all(&udp_inv, HeaderName::RecordRoute),
        std::slice::from_ref(&rr_udp)
    );

    // alice answers over TLS: the caller gets the 200, the UDP alice a CANCEL.
    let mut ok = Response::to_request(&tls_inv, 200, "OK", Some("a-tls"));
    for rr in all(&tls_inv, HeaderName::RecordRoute) {
        ok.headers.push(HeaderName::RecordRoute, rr);
    }
    ok.headers
        .push(HeaderName::Contact, format!("<{ALICE_TLS_CONTACT}>"));
    sim.recv_raw_over(
        Transport::Tls,
        ALICE_TLS_SRC,
        Some(ALICE_CONN),
        &ok.to_bytes(),
    );
    let sent = sim.take();
    let to_caller: Vec<_> = responses(&sent)
        .into_iter()
        .filter(|r| r.3.status == 200)
        .collect();
    assert_eq!(to_caller.len(), 1);
    assert_eq!(to_caller[0].0, addr(CALLER));
    assert_eq!(
        all_resp(&to_caller[0].3, HeaderName::RecordRoute),
        [rr_tls.clone(), rr_udp.clone()]
    );
    let cancels = requests(&sent, "CANCEL");
    assert_eq!(
        cancels.len(),
        0,
        "no CANCEL before a provisional response (§9.1)"
    );

    // The caller's BYE follows its route set (the Record-Route reversed) back to us; we
    // pop both of our entries and send it to alice over her TLS connection.
    sim.recv_over(
        Transport::Udp,
        CALLER,
        None,
        &format!(
            "BYE {ALICE_TLS_CONTACT} SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye1;rport
Route: {rr_udp}
Route: {rr_tls}
Max-Forwards: 70
From: {from}
To: <sip:alice@localhost>;tag=a-tls
Call-ID: {call_id}
CSeq: 2 BYE
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    let byes = requests(&sent, "BYE");
    assert_eq!(byes.len(), 1, "{sent:?}");
    let (at, t, conn, bye) = &byes[0];
    assert_eq!(
        (*at, *t, *conn),
        (addr(ALICE_TLS_SRC), Transport::Tls, Some(ALICE_CONN))
    );
    assert!(all(bye, HeaderName::Route).is_empty(), "our routes popped");
    assert!(all(bye, HeaderName::Via)[0].starts_with(&format!("SIP/2.0/TLS {PROXY_TLS};")));

    // alice's own BYE over TLS (her route set: the Record-Route in order) reaches the
    // caller over UDP.
    sim.recv_over(
        Transport::Tls,
        ALICE_TLS_SRC,
        Some(ALICE_CONN),
        &format!(
            "BYE sip:bob@{CALLER} SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bKbye2;rport
Route: {rr_tls}
Route: {rr_udp}
Max-Forwards: 70
From: <sip:alice@localhost>;tag=a-tls
To: {from}
Call-ID: {call_id}
CSeq: 9 BYE
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    let byes = requests(&sent, "BYE");
    assert_eq!(byes.len(), 1, "{sent:?}");
    assert_eq!((byes[0].0, byes[0].1), (addr(CALLER), Transport::Udp));
    assert!(all(&byes[0].3, HeaderName::Via)[0].starts_with(&format!("SIP/2.0/UDP {PROXY};")));
}

fn all_resp(r: &Response, name: HeaderName) -> Vec<String> {
    r.headers.get_all(&name).map(str::to_owned).collect()
}

#[test]
fn a_tls_binding_dies_with_its_connection() {
    let mut sim = Sim::two_alices();
    sim.events.clear();
    sim.proxy.connection_closed(ALICE_CONN);
    sim.drain();
    assert_eq!(
        sim.events,
        [Event::BindingRemoved {
            user: "alice".into(),
            contact: ALICE_TLS_CONTACT.into(),
        }]
    );
    let left: Vec<String> = sim
        .proxy
        .bindings("alice", sim.now)
        .into_iter()
        .map(|b| b.contact)
        .collect();
    assert_eq!(left, [format!("sip:alice@{ALICE_UDP}")]);
    // Only the UDP alice rings now.
    let sent = sim.invite(Transport::Udp, CALLER, None, "sip:alice@localhost");
    let invites = requests(&sent, "INVITE");
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0].1, Transport::Udp);
}

#[test]
fn sips_requests_need_tls_and_ring_only_tls_contacts() {
    let mut sim = Sim::two_alices();
    // Over UDP: refused, nobody rings.
    let sent = sim.invite(Transport::Udp, CALLER, None, "sips:alice@localhost");
    assert!(requests(&sent, "INVITE").is_empty());
    let statuses: Vec<u16> = responses(&sent).iter().map(|r| r.3.status).collect();
    assert_eq!(statuses, [416]);
    // Over TLS: only the TLS alice, record-routed with one sips: entry (TLS both sides).
    let sent = sim.invite(
        Transport::Tls,
        TLS_CALLER,
        Some(ConnId(9)),
        "sips:alice@localhost",
    );
    let invites = requests(&sent, "INVITE");
    assert_eq!(invites.len(), 1, "{sent:?}");
    let (at, t, conn, inv) = &invites[0];
    assert_eq!(
        (*at, *t, *conn),
        (addr(ALICE_TLS_SRC), Transport::Tls, Some(ALICE_CONN))
    );
    let call_id = inv.call_id().to_owned();
    let tag = sim.proxy.route_tag(&call_id);
    assert_eq!(
        all(inv, HeaderName::RecordRoute),
        [format!("<sips:{PROXY_TLS};lr;rr={tag}>")]
    );
    // The 100 Trying goes back over the caller's connection.
    let trying = responses(&sent);
    assert!(
        trying
            .iter()
            .any(|r| r.3.status == 100 && r.2 == Some(ConnId(9)) && r.1 == Transport::Tls),
        "{trying:?}"
    );
}

#[test]
fn our_tls_address_is_ours_for_loops_and_routes() {
    let mut sim = Sim::two_alices();
    // A request that already went through our TLS side: a loop.
    sim.recv_over(
        Transport::Udp,
        CALLER,
        None,
        &format!(
            "INVITE sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKloop;rport
Via: SIP/2.0/TLS {PROXY_TLS};branch=z9hG4bKearlier
Max-Forwards: 70
From: <sip:bob@example.net>;tag=l
To: <sip:alice@localhost>
Call-ID: loop-1
CSeq: 1 INVITE
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    assert!(requests(&sent, "INVITE").is_empty());
    assert_eq!(
        responses(&sent)
            .iter()
            .map(|r| r.3.status)
            .collect::<Vec<_>>(),
        [482]
    );
    // A Request-URI naming our TLS address is never a next hop.
    let tag = sim.proxy.route_tag("self-1");
    sim.recv_over(
        Transport::Udp,
        CALLER,
        None,
        &format!(
            "OPTIONS sip:x@{PROXY_TLS};transport=tls SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKself;rport
Route: <sip:{PROXY};lr;rr={tag}>
Max-Forwards: 70
From: <sip:bob@example.net>;tag=s
To: <sip:alice@localhost>;tag=t
Call-ID: self-1
CSeq: 1 OPTIONS
Content-Length: 0

"
        ),
    );
    let sent = sim.take();
    assert!(requests(&sent, "OPTIONS").is_empty(), "{sent:?}");
}

#[test]
fn tls_bindings_are_not_restored_after_a_restart() {
    let now = Instant::now();
    let mut cfg = ProxyConfig::new(REALM, addr(PROXY), [5; 32]);
    cfg.advertised_tls = Some(addr(PROXY_TLS));
    let mut proxy = Proxy::new(cfg, now);
    let stored = |contact: &str, transport: Transport, from: &str| {
        let source = Target {
            transport,
            addr: addr(from),
            conn: None,
        };
        Binding {
            contact: contact.into(),
            uri: Uri::parse(contact).unwrap(),
            target: source,
            source,
            call_id: "c".into(),
            cseq: 1,
            expires_at: now + Duration::from_secs(600),
            q: 1000,
            device: None,
            reach: Reach::Direct,
        }
    };
    assert!(!proxy.restore_binding(
        "alice",
        stored(ALICE_TLS_CONTACT, Transport::Tls, ALICE_TLS_SRC),
        now
    ));
    let udp = format!("sip:alice@{ALICE_UDP}");
    assert!(proxy.restore_binding("alice", stored(&udp, Transport::Udp, ALICE_UDP), now));
    let mut events = Vec::new();
    while let Some(o) = proxy.poll_output() {
        if let Output::Event(e) = o {
            events.push(*e);
        }
    }
    assert_eq!(
        events,
        [Event::BindingRemoved {
            user: "alice".into(),
            contact: ALICE_TLS_CONTACT.into(),
        }],
        "the store forgets the TLS registration"
    );
    let left: Vec<String> = proxy
        .bindings("alice", now)
        .into_iter()
        .map(|b| b.contact)
        .collect();
    assert_eq!(left, [udp]);
    assert_eq!(Transport::from_token("tls"), Some(Transport::Tls));
    assert_eq!(Transport::from_token("TCP"), Some(Transport::Tcp));
    assert_eq!(Transport::from_token("sctp"), None);
}
