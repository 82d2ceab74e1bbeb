//! The gateway's trunk-side user agent in simulated time: byte strings in, byte strings and
//! events out, `Instant`s advanced by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sip_core::message::{HeaderName, Message, Method, NameAddr, Request, Response, parse};
use sip_core::transaction::Timers;
use trustring_gateway::trunk_ua::{CallId, EndReason, TrunkUa, UaConfig, UaError, UaEvent};

const CALL_ID: &str = "abc123@caller.example.com";
const FROM: &str = "\"Alice\" <sip:+15550001111@example.com>;tag=caller1";
const TO: &str = "<sip:+15551234567@example.com>";
const INVITE_URI: &str = "sip:+15551234567@127.0.0.1:5070;user=phone";
const BRANCH: &str = "z9hG4bKproxy1";
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
const ANSWER: &str = "v=0\r\no=gw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 50000 RTP/AVP 0\r\na=sendrecv\r\n";
const REASON_BUSY: &str = "Q.850;cause=17;text=\"User busy\"";

fn proxy() -> SocketAddr {
    "127.0.0.1:5060".parse().expect("addr")
}

fn gw() -> SocketAddr {
    "127.0.0.1:5070".parse().expect("addr")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A request as the proxy forwards it: its Via on top of the caller's.
fn request(
    method: &str,
    uri: &str,
    branch: &str,
    cseq: u32,
    to_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let to = match to_tag {
        Some(t) => format!("{TO};tag={t}"),
        None => TO.to_owned(),
    };
    format!(
        "{method} {uri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcaller;rport=5090\r\n\
Max-Forwards: 69\r\nFrom: {FROM}\r\nTo: {to}\r\nCall-ID: {CALL_ID}\r\nCSeq: {cseq} {method}\r\n\
{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn invite() -> String {
    request(
        "INVITE",
        INVITE_URI,
        BRANCH,
        1,
        None,
        "Record-Route: <sip:127.0.0.1:5060;lr>\r\nContact: <sip:alice@127.0.0.1:5090>\r\n\
Trust-Challenge: v=1;c=abcd\r\nTrunk-Auth: mac=0011\r\nContent-Type: application/sdp\r\n",
        SDP,
    )
}

/// An in-dialog request from the caller's side, to our Contact.
fn in_dialog(method: &str, cseq: u32, branch: &str, tag: &str, extra: &str) -> String {
    request(
        method,
        "sip:127.0.0.1:5070",
        branch,
        cseq,
        Some(tag),
        extra,
        "",
    )
}

/// The simulated world around one UA.
struct Sim {
    ua: TrunkUa,
    now: Instant,
    t0: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with_tls(false)
    }

    /// A UA on a SIP over TLS trunk (`tls`) or a UDP one.
    fn with_tls(tls: bool) -> Self {
        let t0 = Instant::now();
        let cfg = UaConfig {
            local: gw(),
            tls,
            timers: Timers::default(),
            user_agent: "trustring-gateway/test".into(),
        };
        Self {
            ua: TrunkUa::new(cfg, t0),
            now: t0,
            t0,
        }
    }

    fn send(&mut self, data: &str) {
        self.ua.handle_datagram(self.now, proxy(), data.as_bytes());
    }

    fn out(&mut self) -> Vec<(SocketAddr, Message)> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|(to, b)| (to, parse(&b).expect("the UA sends valid SIP")))
            .collect()
    }

    fn events(&mut self) -> Vec<UaEvent> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }

    /// Runs the timers up to `t` (every deadline on the way, in order).
    fn advance_to(&mut self, t: Instant) {
        while let Some(d) = self.ua.poll_timeout().filter(|d| *d <= t) {
            self.now = d.max(self.now);
            self.ua.handle_timeout(self.now);
        }
        self.now = t;
    }

    /// The INVITE arrives: expects 100 and Incoming, returns the call.
    fn incoming(&mut self) -> CallId {
        self.send(&invite());
        let out = self.out();
        assert_eq!(out.len(), 1, "just 100 Trying");
        assert_eq!(status(&out[0].1), 100);
        match self.events().as_slice() {
            [UaEvent::Incoming { call, .. }] => *call,
            other => panic!("expected Incoming, got {other:?}"),
        }
    }

    /// Ring, answer, ACK: returns the call and our To tag.
    fn confirmed(&mut self) -> (CallId, String) {
        let call = self.incoming();
        self.ua.ring(call, self.now, &[]).expect("ring");
        let ringing = self.out();
        let tag = to_tag(response(&ringing[0].1));
        self.ua
            .answer(call, self.now, Bytes::from_static(ANSWER.as_bytes()), &[])
            .expect("answer");
        self.out();
        self.send(&in_dialog("ACK", 1, "z9hG4bKack1", &tag, ""));
        assert_eq!(self.events(), [UaEvent::Confirmed { call }]);
        assert!(self.out().is_empty(), "nothing answers an ACK");
        (call, tag)
    }
}

fn response(m: &Message) -> &Response {
    match m {
        Message::Response(r) => r,
        Message::Request(r) => panic!("expected a response, got {} {}", r.method, r.uri),
    }
}

fn req(m: &Message) -> &Request {
    match m {
        Message::Request(r) => r,
        Message::Response(r) => panic!("expected a request, got {}", r.status),
    }
}

fn status(m: &Message) -> u16 {
    response(m).status
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers().get(&HeaderName::from_wire(name))
}

fn to_tag(r: &Response) -> String {
    r.to()
        .and_then(|t| t.tag().map(str::to_owned))
        .expect("To tag")
}

fn branch_of(r: &Request) -> String {
    r.top_via()
        .and_then(|v| v.branch().map(str::to_owned))
        .expect("branch")
}

/// The far end's answer to one of our requests.
fn answer_to(r: &Request, status: u16, body: &str) -> String {
    let mut resp = Response::to_request(r, status, "X", None);
    if !body.is_empty() {
        resp.headers
            .push(HeaderName::Contact, "<sip:alice@127.0.0.1:5090>");
        resp.headers
            .push(HeaderName::ContentType, "application/sdp");
        resp.body = Bytes::copy_from_slice(body.as_bytes());
    }
    // Lossy: a request the UA echoes may carry the non-UTF-8 bytes a mutated message gave
    // it (sip-core keeps raw bytes as received); the mutation test only needs some message.
    String::from_utf8_lossy(&resp.to_bytes()).into_owned()
}

#[test]
fn incoming_ring_answer_retransmit_until_ack() {
    let mut s = Sim::new();
    s.send(&invite());
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, proxy(), "responses go where the INVITE came from");
    assert_eq!(status(&out[0].1), 100);
    assert!(
        response(&out[0].1)
            .to()
            .and_then(|t| t.tag().map(str::to_owned))
            .is_none()
    );
    let events = s.events();
    let [
        UaEvent::Incoming {
            call,
            source,
            request_uri,
            called_user,
            from,
            calling_user,
            sip_call_id,
            branch,
            headers,
            offer,
        },
    ] = events.as_slice()
    else {
        panic!("expected Incoming, got {events:?}")
    };
    let call = *call;
    assert_eq!(*source, proxy());
    assert_eq!(request_uri, INVITE_URI);
    assert_eq!(called_user, "+15551234567");
    assert_eq!(from, "sip:+15550001111@example.com");
    assert_eq!(calling_user.as_deref(), Some("+15550001111"));
    assert_eq!(sip_call_id, CALL_ID);
    assert_eq!(branch, BRANCH);
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(find("Trust-Challenge"), Some("v=1;c=abcd"));
    assert_eq!(find("Trunk-Auth"), Some("mac=0011"));
    assert_eq!(offer.as_deref(), Some(SDP.as_bytes()));

    s.ua.ring(call, s.now, &[("Trust-Proof", "proof-1")])
        .expect("ring");
    let out = s.out();
    let ringing = &out[0].1;
    assert_eq!(status(ringing), 180);
    let tag = to_tag(response(ringing));
    assert!(tag.len() >= 8, "a To tag with enough entropy");
    assert_eq!(header(ringing, "Trust-Proof"), Some("proof-1"));
    assert_eq!(
        header(ringing, "Record-Route"),
        Some("<sip:127.0.0.1:5060;lr>")
    );
    assert_eq!(header(ringing, "Contact"), Some("<sip:127.0.0.1:5070>"));

    s.now += ms(3000);
    s.ua.answer(
        call,
        s.now,
        Bytes::from_static(ANSWER.as_bytes()),
        &[("Trust-Proof", "proof-2")],
    )
    .expect("answer");
    let answered_at = s.now;
    let out = s.out();
    let ok = &out[0].1;
    assert_eq!(status(ok), 200);
    assert_eq!(to_tag(response(ok)), tag, "same dialog as the 180");
    assert_eq!(header(ok, "Content-Type"), Some("application/sdp"));
    assert_eq!(header(ok, "Record-Route"), Some("<sip:127.0.0.1:5060;lr>"));
    assert_eq!(header(ok, "Trust-Proof"), Some("proof-2"));
    assert!(header(ok, "Contact").is_some());
    assert_eq!(&response(ok).body[..], ANSWER.as_bytes());
    assert_eq!(
        s.ua.answer(call, s.now, Bytes::new(), &[]),
        Err(UaError::InvalidState { call, op: "answer" })
    );

    // §13.3.1.4: retransmitted at T1, then doubling up to T2.
    let mut sent_at = Vec::new();
    while sent_at.len() < 6 {
        let d = s.ua.poll_timeout().expect("2xx timer");
        s.advance_to(d);
        for (to, m) in s.out() {
            assert_eq!(to, proxy());
            assert_eq!(status(&m), 200);
            sent_at.push(s.now - answered_at);
        }
    }
    assert_eq!(sent_at, [500, 1500, 3500, 7500, 11500, 15500].map(ms));

    s.send(&in_dialog("ACK", 1, "z9hG4bKack1", &tag, ""));
    assert_eq!(s.events(), [UaEvent::Confirmed { call }]);
    s.advance_to(s.now + ms(20_000));
    assert!(s.out().is_empty(), "no retransmission after the ACK");
    assert!(s.events().is_empty());
}

#[test]
fn invite_retransmissions_are_absorbed() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.send(&invite());
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 100, "the last response again");
    assert!(s.events().is_empty(), "one call, one Incoming");
    s.ua.ring(call, s.now, &[]).expect("ring");
    s.out();
    s.send(&invite());
    assert_eq!(status(&s.out()[0].1), 180);
    s.ua.answer(call, s.now, Bytes::from_static(ANSWER.as_bytes()), &[])
        .expect("answer");
    s.out();
    s.send(&invite());
    assert_eq!(status(&s.out()[0].1), 200);
    assert!(s.events().is_empty());
}

#[test]
fn remote_bye_is_answered_and_ends_the_call() {
    let mut s = Sim::new();
    let (call, tag) = s.confirmed();
    let bye = in_dialog("BYE", 2, "z9hG4bKbye1", &tag, "Reason: Q.850;cause=16\r\n");
    s.send(&bye);
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 200);
    assert_eq!(header(&out[0].1, "CSeq"), Some("2 BYE"));
    assert_eq!(
        s.events(),
        [
            UaEvent::RemoteBye {
                call,
                reason: Some("Q.850;cause=16".into())
            },
            UaEvent::Ended {
                call,
                reason: EndReason::RemoteBye
            }
        ]
    );
    s.send(&bye);
    assert_eq!(status(&s.out()[0].1), 200, "retransmitted BYE absorbed");
    assert!(s.events().is_empty());
    assert_eq!(
        s.ua.hangup(call, s.now, None),
        Err(UaError::UnknownCall(call))
    );
    s.advance_to(s.now + ms(40_000));
    assert_eq!(s.ua.call_count(), 0, "state freed after the timers");
}

#[test]
fn local_hangup_sends_bye_along_the_route_set() {
    let mut s = Sim::new();
    let (call, tag) = s.confirmed();
    s.ua.hangup(
        call,
        s.now,
        Some("Q.850;cause=16;text=\"Normal call clearing\""),
    )
    .expect("hangup");
    let out = s.out();
    assert_eq!(out.len(), 1);
    let (to, bye) = &out[0];
    assert_eq!(*to, proxy(), "loose routing: to the first Route");
    let bye = req(bye);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(
        bye.uri.to_string(),
        "sip:alice@127.0.0.1:5090",
        "the remote target"
    );
    assert_eq!(
        bye.headers.get(&HeaderName::Route),
        Some("<sip:127.0.0.1:5060;lr>")
    );
    assert_eq!(bye.call_id(), CALL_ID);
    assert_eq!(
        bye.from().and_then(|f| f.tag().map(str::to_owned)),
        Some(tag)
    );
    assert_eq!(
        bye.to().and_then(|t| t.tag().map(str::to_owned)).as_deref(),
        Some("caller1")
    );
    assert!(bye.cseq().seq >= 1 && bye.cseq().method == Method::Bye);
    assert_eq!(
        bye.headers.get(&HeaderName::Reason),
        Some("Q.850;cause=16;text=\"Normal call clearing\"")
    );
    assert_eq!(bye.headers.get(&HeaderName::MaxForwards), Some("70"));
    assert_eq!(
        bye.headers.get(&HeaderName::UserAgent),
        Some("trustring-gateway/test")
    );
    assert!(branch_of(bye).starts_with("z9hG4bK"));
    assert!(s.events().is_empty(), "Ended waits for the BYE's answer");

    // Retransmitted (non-INVITE timer E) until answered.
    s.advance_to(s.now + ms(500));
    let again = s.out();
    assert_eq!(again.len(), 1);
    assert_eq!(req(&again[0].1).cseq(), bye.cseq());

    s.send(&answer_to(bye, 200, ""));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::LocalBye { status: Some(200) }
        }]
    );
    s.advance_to(s.now + ms(60_000));
    assert!(s.out().is_empty());
    assert_eq!(s.ua.call_count(), 0);
}

#[test]
fn route_naming_a_host_goes_back_to_the_sender() {
    // The gateway does no DNS: a Record-Route (or Contact) with a host name sends the BYE
    // to where the INVITE came from.
    let mut s = Sim::new();
    s.send(&request(
        "INVITE",
        INVITE_URI,
        BRANCH,
        1,
        None,
        "Record-Route: <sip:proxy.example.com;lr>\r\nContact: <sip:alice@127.0.0.1:5090>\r\n",
        "",
    ));
    let call = match s.events().as_slice() {
        [UaEvent::Incoming { call, .. }] => *call,
        other => panic!("expected Incoming, got {other:?}"),
    };
    s.ua.answer(call, s.now, Bytes::from_static(ANSWER.as_bytes()), &[])
        .expect("answer");
    let out = s.out();
    let ok = out.last().map(|(_, m)| response(m)).expect("200");
    let tag = to_tag(ok);
    s.send(&in_dialog("ACK", 1, "z9hG4bKack1", &tag, ""));
    s.ua.hangup(call, s.now, None).expect("hangup");
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, proxy(), "the INVITE's sender");
    assert_eq!(
        req(&out[0].1).headers.get(&HeaderName::Route),
        Some("<sip:proxy.example.com;lr>")
    );
}

#[test]
fn cancel_while_ringing() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.ua.ring(call, s.now, &[]).expect("ring");
    let tag = to_tag(response(&s.out()[0].1));
    let reason = "SIP;cause=200;text=\"Call completed elsewhere\"";
    let cancel = request(
        "CANCEL",
        INVITE_URI,
        BRANCH,
        1,
        None,
        &format!("Reason: {reason}\r\n"),
        "",
    );
    s.send(&cancel);
    let out = s.out();
    assert_eq!(out.len(), 2);
    assert_eq!(status(&out[0].1), 200, "the CANCEL's answer first");
    assert_eq!(header(&out[0].1, "CSeq"), Some("1 CANCEL"));
    assert_eq!(status(&out[1].1), 487);
    assert_eq!(header(&out[1].1, "CSeq"), Some("1 INVITE"));
    assert_eq!(to_tag(response(&out[1].1)), tag);
    assert_eq!(
        s.events(),
        [
            UaEvent::Cancelled {
                call,
                reason: Some(reason.into())
            },
            UaEvent::Ended {
                call,
                reason: EndReason::Cancelled
            }
        ]
    );
    // The 487 is retransmitted until its ACK (timer G), which is absorbed.
    s.advance_to(s.now + ms(500));
    assert_eq!(status(&s.out()[0].1), 487);
    s.send(&request("ACK", INVITE_URI, BRANCH, 1, Some(&tag), "", ""));
    assert!(s.out().is_empty());
    assert!(s.events().is_empty());
    s.advance_to(s.now + ms(10_000));
    assert!(s.out().is_empty(), "no 487 after the ACK");
    assert_eq!(s.ua.call_count(), 0);
    // Late copies: the INVITE is absorbed, the CANCEL is a retransmission.
    s.send(&invite());
    assert!(s.out().is_empty());
    s.send(&cancel);
    assert_eq!(status(&s.out()[0].1), 200);
    assert!(s.events().is_empty());
}

#[test]
fn reject_with_reason() {
    let mut s = Sim::new();
    let call = s.incoming();
    assert_eq!(
        s.ua.reject(call, s.now, 200, None),
        Err(UaError::InvalidStatus(200))
    );
    s.ua.reject(call, s.now, 486, Some(REASON_BUSY))
        .expect("reject");
    let out = s.out();
    assert_eq!(out.len(), 1);
    let busy = &out[0].1;
    assert_eq!(status(busy), 486);
    assert_eq!(header(busy, "Reason"), Some(REASON_BUSY));
    let tag = to_tag(response(busy));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::Rejected { status: 486 }
        }]
    );
    s.send(&invite());
    assert_eq!(
        status(&s.out()[0].1),
        486,
        "a retransmitted INVITE gets it again"
    );
    s.send(&request("ACK", INVITE_URI, BRANCH, 1, Some(&tag), "", ""));
    s.advance_to(s.now + ms(6_000));
    assert!(s.out().is_empty());
    assert_eq!(s.ua.call_count(), 0);
    assert_eq!(s.ua.ring(call, s.now, &[]), Err(UaError::UnknownCall(call)));
}

#[test]
fn hold_with_reinvite_then_hangup() {
    let mut s = Sim::new();
    let (call, tag) = s.confirmed();
    let hold = ANSWER.replace("sendrecv", "sendonly");
    s.ua.reinvite(call, s.now, Bytes::from(hold.clone()))
        .expect("reinvite");
    assert!(
        s.ua.reinvite(call, s.now, Bytes::new()).is_err(),
        "one INVITE at a time (§14.1)"
    );
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, proxy());
    let inv = req(&out[0].1).clone();
    assert_eq!(inv.method, Method::Invite);
    assert_eq!(inv.uri.to_string(), "sip:alice@127.0.0.1:5090");
    assert_eq!(
        inv.headers.get(&HeaderName::Route),
        Some("<sip:127.0.0.1:5060;lr>")
    );
    assert_eq!(
        inv.headers.get(&HeaderName::ContentType),
        Some("application/sdp")
    );
    assert_eq!(&inv.body[..], hold.as_bytes());
    assert_eq!(inv.call_id(), CALL_ID);
    assert_eq!(
        inv.from().and_then(|f| f.tag().map(str::to_owned)),
        Some(tag.clone())
    );
    assert!(inv.headers.get(&HeaderName::Contact).is_some());
    let seq = inv.cseq().seq;

    s.send(&answer_to(&inv, 100, ""));
    s.send(&answer_to(&inv, 200, SDP));
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, proxy());
    let ack = req(&out[0].1).clone();
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.cseq().seq, seq, "ACK carries the INVITE's CSeq number");
    assert_ne!(
        branch_of(&ack),
        branch_of(&inv),
        "2xx ACK is a new transaction"
    );
    assert_eq!(
        ack.headers.get(&HeaderName::Route),
        Some("<sip:127.0.0.1:5060;lr>")
    );
    assert_eq!(
        s.events(),
        [UaEvent::ReinviteDone {
            call,
            status: 200,
            answer: Some(Bytes::from_static(SDP.as_bytes()))
        }]
    );
    // A retransmitted 2xx gets the same ACK, and no second event.
    s.send(&answer_to(&inv, 200, SDP));
    let again = s.out();
    assert_eq!(req(&again[0].1).cseq(), ack.cseq());
    assert!(s.events().is_empty());

    s.ua.hangup(call, s.now, None).expect("hangup");
    let bye = req(&s.out()[0].1).clone();
    assert_eq!(bye.cseq().seq, seq + 1, "local CSeq increments");
    s.send(&answer_to(&bye, 200, ""));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::LocalBye { status: Some(200) }
        }]
    );
}

#[test]
fn reinvite_glare_is_reported_and_acked() {
    let mut s = Sim::new();
    let (call, _) = s.confirmed();
    s.ua.reinvite(call, s.now, Bytes::from_static(ANSWER.as_bytes()))
        .expect("reinvite");
    let inv = req(&s.out()[0].1).clone();
    let pending = answer_to(&inv, 491, "");
    s.send(&pending);
    let out = s.out();
    let ack = req(&out[0].1);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        branch_of(ack),
        branch_of(&inv),
        "non-2xx ACK: same transaction"
    );
    assert_eq!(ack.cseq().seq, inv.cseq().seq);
    assert_eq!(
        s.events(),
        [UaEvent::ReinviteDone {
            call,
            status: 491,
            answer: None
        }]
    );
    s.send(&pending);
    assert_eq!(
        req(&s.out()[0].1).method,
        Method::Ack,
        "ACK again for a retransmission"
    );
    assert!(s.events().is_empty());
    // The call goes on: a new re-INVITE is allowed.
    s.ua.reinvite(call, s.now, Bytes::from_static(ANSWER.as_bytes()))
        .expect("retry after glare");
}

#[test]
fn remote_reinvite_is_answered_by_the_exchange() {
    let mut s = Sim::new();
    let (call, tag) = s.confirmed();
    let reinvite = request(
        "INVITE",
        "sip:127.0.0.1:5070",
        "z9hG4bKre1",
        2,
        Some(&tag),
        "Contact: <sip:alice@127.0.0.1:5091>\r\nContent-Type: application/sdp\r\n",
        SDP,
    );
    s.send(&reinvite);
    assert_eq!(status(&s.out()[0].1), 100);
    assert_eq!(
        s.events(),
        [UaEvent::RemoteReinvite {
            call,
            offer: Some(Bytes::from_static(SDP.as_bytes()))
        }]
    );
    // Another one before ours is answered: 500 with Retry-After (§14.2).
    let overlapping = request(
        "INVITE",
        "sip:127.0.0.1:5070",
        "z9hG4bKre2",
        3,
        Some(&tag),
        "Contact: <sip:alice@127.0.0.1:5091>\r\n",
        "",
    );
    s.send(&overlapping);
    let out = s.out();
    assert_eq!(status(&out[0].1), 500);
    assert!(header(&out[0].1, "Retry-After").is_some());
    s.send(&reinvite);
    assert_eq!(
        status(&s.out()[0].1),
        100,
        "a retransmission gets the 100 again"
    );
    assert!(s.events().is_empty());
    s.ua.answer_reinvite(call, s.now, Bytes::from_static(ANSWER.as_bytes()))
        .expect("answer re-INVITE");
    let ok = &s.out()[0].1;
    assert_eq!(status(ok), 200);
    assert_eq!(header(ok, "CSeq"), Some("2 INVITE"));
    assert_eq!(to_tag(response(ok)), tag);
    s.advance_to(s.now + ms(500));
    assert_eq!(status(&s.out()[0].1), 200, "retransmitted until ACK");
    s.send(&in_dialog("ACK", 2, "z9hG4bKack2", &tag, ""));
    s.advance_to(s.now + ms(5_000));
    assert!(s.out().is_empty());
    // The remote target moved with the re-INVITE's Contact.
    s.ua.hangup(call, s.now, None).expect("hangup");
    assert_eq!(
        req(&s.out()[0].1).uri.to_string(),
        "sip:alice@127.0.0.1:5091"
    );
}

#[test]
fn reinvite_without_final_ends_the_dialog() {
    let mut s = Sim::new();
    let (call, tag) = s.confirmed();
    s.ua.reinvite(call, s.now, Bytes::from_static(ANSWER.as_bytes()))
        .expect("reinvite");
    let inv = req(&s.out()[0].1).clone();
    s.send(&answer_to(&inv, 100, ""));
    // Meanwhile the far end's own re-INVITE is glare: 491.
    let theirs = request(
        "INVITE",
        "sip:127.0.0.1:5070",
        "z9hG4bKre9",
        2,
        Some(&tag),
        "Contact: <sip:alice@127.0.0.1:5090>\r\n",
        "",
    );
    s.send(&theirs);
    assert_eq!(status(&s.out()[0].1), 491);
    assert!(s.events().is_empty());
    s.advance_to(s.now + ms(32_000));
    let events = s.events();
    assert_eq!(
        events,
        [UaEvent::ReinviteDone {
            call,
            status: 408,
            answer: None
        }]
    );
    let bye = s
        .out()
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Request(r) if r.method == Method::Bye => Some(r),
            _ => None,
        })
        .expect("BYE after 408 (§12.2.1.2)");
    s.send(&answer_to(&bye, 200, ""));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::DialogFailed { status: 408 }
        }]
    );
}

#[test]
fn no_ack_sends_bye_and_ends() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.ua.answer(call, s.now, Bytes::from_static(ANSWER.as_bytes()), &[])
        .expect("answer");
    s.out();
    let answered = s.now;
    let mut oks = 0;
    let mut bye = None;
    while bye.is_none() {
        let d = s.ua.poll_timeout().expect("timer");
        assert!(d <= answered + ms(32_000), "gives up by 64*T1");
        s.advance_to(d);
        for (to, m) in s.out() {
            match m {
                Message::Response(r) if r.status == 200 => oks += 1,
                Message::Request(r) if r.method == Method::Bye => {
                    assert_eq!(to, proxy());
                    bye = Some(r);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(s.now - answered, ms(32_000));
    assert!(oks >= 7, "{oks} retransmissions");
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::NoAck
        }]
    );
    let bye = bye.expect("BYE");
    s.send(&answer_to(&bye, 200, ""));
    assert!(s.events().is_empty(), "Ended was already reported");
    s.advance_to(s.now + ms(60_000));
    assert_eq!(s.ua.call_count(), 0);
}

#[test]
fn hangup_before_ack_waits_for_it() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.ua.ring(call, s.now, &[]).expect("ring");
    let tag = to_tag(response(&s.out()[0].1));
    s.ua.answer(call, s.now, Bytes::from_static(ANSWER.as_bytes()), &[])
        .expect("answer");
    s.out();
    s.ua.hangup(call, s.now, None).expect("hangup");
    assert!(s.out().is_empty(), "no BYE before the ACK (§15)");
    s.send(&in_dialog("ACK", 1, "z9hG4bKack1", &tag, ""));
    assert_eq!(s.events(), [UaEvent::Confirmed { call }]);
    assert_eq!(req(&s.out()[0].1).method, Method::Bye);
}

#[test]
fn hangup_while_ringing_is_a_480() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.ua.hangup(call, s.now, Some(REASON_BUSY)).expect("hangup");
    let out = s.out();
    assert_eq!(status(&out[0].1), 480);
    assert_eq!(header(&out[0].1, "Reason"), Some(REASON_BUSY));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::Rejected { status: 480 }
        }]
    );
}

#[test]
fn ringing_is_refreshed_every_minute_and_bounded() {
    let mut s = Sim::new();
    let call = s.incoming();
    s.ua.ring(call, s.now, &[]).expect("ring");
    s.out();
    s.advance_to(s.t0 + Duration::from_secs(60));
    assert_eq!(status(&s.out()[0].1), 180, "§13.3.1.1");
    s.advance_to(s.t0 + Duration::from_secs(300));
    let statuses: Vec<u16> = s.out().iter().map(|(_, m)| status(m)).collect();
    assert_eq!(statuses.last(), Some(&480));
    assert_eq!(
        s.events(),
        [UaEvent::Ended {
            call,
            reason: EndReason::RingTimeout
        }]
    );
}

#[test]
fn requests_outside_calls() {
    let mut s = Sim::new();
    // OPTIONS: 200 with Allow.
    s.send(&request(
        "OPTIONS",
        "sip:127.0.0.1:5070",
        "z9hG4bKo1",
        1,
        None,
        "",
        "",
    ));
    let out = s.out();
    assert_eq!(status(&out[0].1), 200);
    assert!(header(&out[0].1, "Allow").is_some_and(|a| a.contains("INVITE")));
    assert!(to_tag(response(&out[0].1)).len() >= 8);
    // Unknown method: 405 with Allow.
    s.send(&request(
        "PUBLISH",
        "sip:127.0.0.1:5070",
        "z9hG4bKp1",
        1,
        None,
        "",
        "",
    ));
    let out = s.out();
    assert_eq!(status(&out[0].1), 405);
    assert!(header(&out[0].1, "Allow").is_some());
    // BYE, re-INVITE and OPTIONS for a dialog we do not have: 481.
    s.send(&in_dialog("BYE", 2, "z9hG4bKb1", "nosuch", ""));
    assert_eq!(status(&s.out()[0].1), 481);
    s.send(&request(
        "INVITE",
        "sip:127.0.0.1:5070",
        "z9hG4bKi9",
        2,
        Some("nosuch"),
        "Contact: <sip:a@127.0.0.1:5090>\r\n",
        "",
    ));
    assert_eq!(status(&s.out()[0].1), 481);
    s.send(&in_dialog("OPTIONS", 3, "z9hG4bKo2", "nosuch", ""));
    assert_eq!(status(&s.out()[0].1), 481);
    // CANCEL for no transaction: 481.
    s.send(&request(
        "CANCEL",
        INVITE_URI,
        "z9hG4bKnone",
        1,
        None,
        "",
        "",
    ));
    assert_eq!(status(&s.out()[0].1), 481);
    // A stray ACK and a response to nothing: dropped.
    s.send(&in_dialog("ACK", 1, "z9hG4bKa9", "nosuch", ""));
    s.send(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKzz\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n",
    );
    assert!(s.out().is_empty());
    assert!(s.events().is_empty());
    assert_eq!(s.ua.call_count(), 0);
}

#[test]
fn bad_invites_are_refused() {
    let mut s = Sim::new();
    // Missing Contact: 400 (§8.1.1.8).
    s.send(&request("INVITE", INVITE_URI, "z9hG4bKn1", 1, None, "", ""));
    let out = s.out();
    assert_eq!(status(&out[0].1), 400);
    assert!(to_tag(response(&out[0].1)).len() >= 8);
    // Missing Call-ID but a usable Via: 400 from the parser's error.
    s.send(
        "INVITE sip:+1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKn2\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 INVITE\r\n\r\n",
    );
    assert!(s.out().is_empty(), "no Call-ID: cannot even answer");
    s.send(
        "INVITE sip:+1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKn3\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: q\r\nCSeq: 1 INVITE\r\nMax-Forwards: x\r\n\r\n",
    );
    assert_eq!(status(&s.out()[0].1), 400);
    // Unsupported extension: 420 with Unsupported.
    s.send(&request(
        "INVITE",
        INVITE_URI,
        "z9hG4bKn4",
        1,
        None,
        "Contact: <sip:a@127.0.0.1:5090>\r\nRequire: 100rel\r\n",
        "",
    ));
    let out = s.out();
    assert_eq!(status(&out[0].1), 420);
    assert_eq!(header(&out[0].1, "Unsupported"), Some("100rel"));
    // A body that is not SDP: 415.
    s.send(&request(
        "INVITE",
        INVITE_URI,
        "z9hG4bKn5",
        1,
        None,
        "Contact: <sip:a@127.0.0.1:5090>\r\nContent-Type: text/plain\r\n",
        "hello",
    ));
    assert_eq!(status(&s.out()[0].1), 415);
    // A URI scheme we cannot serve: 416.
    s.send(&request(
        "INVITE",
        "urn:service:sos",
        "z9hG4bKn6",
        1,
        None,
        "Contact: <sip:a@127.0.0.1:5090>\r\n",
        "",
    ));
    assert_eq!(status(&s.out()[0].1), 416);
    assert!(s.events().is_empty());
    assert_eq!(s.ua.call_count(), 0);
}

#[test]
fn garbage_is_dropped() {
    let mut s = Sim::new();
    for junk in [
        &b""[..],
        b"\r\n\r\n",
        b"hello world",
        b"INVITE",
        b"SIP/2.0 200 OK\r\n\r\n",
        &[0xff, 0xfe, 0x00, 0x80],
        &invite().as_bytes()[..200],
    ] {
        s.ua.handle_datagram(s.now, proxy(), junk);
    }
    assert!(s.out().is_empty());
    assert!(s.events().is_empty());
    assert_eq!(s.ua.call_count(), 0);
}

#[test]
fn call_limit_gives_503() {
    let mut s = Sim::new();
    s.ua.set_max_calls(1);
    s.incoming();
    let second = invite()
        .replace(BRANCH, "z9hG4bKother")
        .replace(CALL_ID, "other-call");
    s.send(&second);
    let out = s.out();
    assert_eq!(status(&out[0].1), 503);
    assert!(header(&out[0].1, "Retry-After").is_some());
    assert!(s.events().is_empty());
}

#[test]
fn extra_headers_are_checked() {
    let mut s = Sim::new();
    let call = s.incoming();
    assert!(matches!(
        s.ua.ring(call, s.now, &[("Via", "SIP/2.0/UDP evil")]),
        Err(UaError::InvalidHeader { .. })
    ));
    assert!(matches!(
        s.ua.ring(call, s.now, &[("X-A", "a\r\nX-B: b")]),
        Err(UaError::InvalidHeader { .. })
    ));
    assert!(s.out().is_empty());
    assert_eq!(
        s.ua.ring(CallId(999), s.now, &[]),
        Err(UaError::UnknownCall(CallId(999)))
    );
}

#[test]
fn two_lines_on_one_gateway_are_two_calls() {
    let mut s = Sim::new();
    let a = s.incoming();
    let second = invite()
        .replace(BRANCH, "z9hG4bKproxy2")
        .replace("+15551234567@127.0.0.1", "+15559876543@127.0.0.1");
    s.send(&second);
    assert_eq!(status(&s.out()[0].1), 100);
    let events = s.events();
    let [
        UaEvent::Incoming {
            call: b,
            called_user,
            ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_ne!(a, *b);
    assert_eq!(called_user, "+15559876543");
    // Each rings with its own tag; a BYE reaches the right one.
    s.ua.ring(a, s.now, &[]).expect("ring a");
    s.ua.ring(*b, s.now, &[]).expect("ring b");
    let out = s.out();
    let (ta, tb) = (to_tag(response(&out[0].1)), to_tag(response(&out[1].1)));
    assert_ne!(ta, tb);
    s.send(&in_dialog("BYE", 2, "z9hG4bKbb", &tb, ""));
    let events = s.events();
    assert!(matches!(events.first(), Some(UaEvent::RemoteBye { call, .. }) if call == b));
    let name = NameAddr::parse(header(&s.out()[1].1, "To").expect("To")).expect("To");
    assert_eq!(name.tag(), Some(tb.as_str()));
}

/// Seeds for the mutation property: the far end's side of a call flow. `tag` is the
/// latest To tag the UA sent, `ours` the latest request the UA sent.
fn seed(n: usize, tag: &str, ours: Option<&Request>) -> String {
    match (n, ours) {
        (0, _) => invite(),
        (1, _) => request("CANCEL", INVITE_URI, BRANCH, 1, None, "", ""),
        (2, _) => in_dialog("ACK", 1, "z9hG4bKa", tag, ""),
        (3, _) => in_dialog("BYE", 2, "z9hG4bKb", tag, ""),
        (4, _) => request(
            "INVITE",
            "sip:127.0.0.1:5070",
            "z9hG4bKr",
            3,
            Some(tag),
            "Contact: <sip:a@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\n",
            SDP,
        ),
        (5, _) => in_dialog("ACK", 3, "z9hG4bKa3", tag, ""),
        (6, Some(r)) => answer_to(r, 200, SDP),
        (7, Some(r)) => answer_to(r, 491, ""),
        _ => request("OPTIONS", "sip:127.0.0.1:5070", "z9hG4bKo", 1, None, "", ""),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the UA.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut s = Sim::new();
        s.ua.handle_datagram(s.now, proxy(), &data);
        s.out();
        s.events();
        s.advance_to(s.now + Duration::from_secs(600));
    }

    /// Mutated call flows, interleaved with commands and time, never panic; every Incoming
    /// gets exactly one Ended, and all state is freed once the calls are hung up and time
    /// has run out.
    #[test]
    fn mutated_flows_never_panic(
        steps in proptest::collection::vec(
            (0usize..9, proptest::collection::vec((any::<u16>(), any::<u8>()), 0..2),
             any::<u16>(), 0u8..10, 0u64..3000),
            1..60,
        )
    ) {
        let mut s = Sim::new();
        let mut tag = "t".to_owned();
        let mut ours: Option<Request> = None;
        let mut started = Vec::new();
        let mut ended = Vec::new();
        let drain = |s: &mut Sim, tag: &mut String, ours: &mut Option<Request>,
                     started: &mut Vec<CallId>, ended: &mut Vec<CallId>| {
            while let Some((_, bytes)) = s.ua.poll_transmit() {
                // A 400 echoes the request's headers as received, even malformed ones.
                let Ok(m) = parse(&bytes) else {
                    assert!(bytes.starts_with(b"SIP/2.0 400 "), "{bytes:?}");
                    continue;
                };
                match m {
                    Message::Response(r) => {
                        if let Some(t) = r.to().and_then(|t| t.tag().map(str::to_owned)) {
                            *tag = t;
                        }
                    }
                    Message::Request(r) => *ours = Some(r),
                }
            }
            for e in s.events() {
                match e {
                    UaEvent::Incoming { call, .. } => started.push(call),
                    UaEvent::Ended { call, .. } => ended.push(call),
                    _ => {}
                }
            }
        };
        for (n, edits, cut, command, wait) in steps {
            let mut bytes = seed(n, &tag, ours.as_ref()).into_bytes();
            for (at, b) in edits {
                let at = usize::from(at) % bytes.len();
                bytes[at] = b;
            }
            if cut % 8 == 0 {
                bytes.truncate(usize::from(cut) % (bytes.len() + 1));
            }
            s.ua.handle_datagram(s.now, proxy(), &bytes);
            if let Some(&call) = started.last() {
                let now = s.now;
                let sdp = Bytes::from_static(ANSWER.as_bytes());
                let _ = match command {
                    0 => s.ua.ring(call, now, &[("Trust-Proof", "p")]),
                    1 => s.ua.answer(call, now, sdp, &[]),
                    2 => s.ua.reject(call, now, 486, Some(REASON_BUSY)),
                    3 => s.ua.hangup(call, now, None),
                    4 => s.ua.reinvite(call, now, sdp),
                    5 => s.ua.answer_reinvite(call, now, sdp),
                    6 => s.ua.reject_reinvite(call, now, 488),
                    _ => Ok(()),
                };
            }
            s.advance_to(s.now + ms(wait));
            drain(&mut s, &mut tag, &mut ours, &mut started, &mut ended);
        }
        for &call in &started {
            let _ = s.ua.hangup(call, s.now, None);
        }
        s.advance_to(s.now + Duration::from_secs(3600));
        drain(&mut s, &mut tag, &mut ours, &mut started, &mut ended);
        let mut unique = ended.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), ended.len(), "one Ended per call");
        prop_assert_eq!(unique, started);
        prop_assert_eq!(s.ua.call_count(), 0);
    }
}

/// On the TLS trunk the UA says so: its Contact names `transport=tls` (the proxy's
/// in-dialog requests come over TLS too) and its own requests' Via is `SIP/2.0/TLS`.
#[test]
fn a_tls_trunk_says_tls_in_contact_and_via() {
    let mut s = Sim::with_tls(true);
    let (call, _) = s.confirmed();
    s.ua.hangup(call, s.now, None).expect("hangup");
    let out = s.out();
    let bye = req(&out[0].1);
    assert_eq!(bye.method.as_str(), "BYE");
    let via = bye.headers.get(&HeaderName::Via).expect("Via");
    assert!(via.starts_with("SIP/2.0/TLS 127.0.0.1:5070;"), "{via}");

    let mut s = Sim::with_tls(true);
    let call = s.incoming();
    s.ua.ring(call, s.now, &[]).expect("ring");
    let out = s.out();
    assert_eq!(
        header(&out[0].1, "Contact"),
        Some("<sip:127.0.0.1:5070;transport=tls>")
    );
}

/// Over TLS the transactions are reliable (RFC 3261 §17.1.2.2, §17.2.2): a BYE is sent once
/// and waits for its answer (Timer F), it is not retransmitted as over UDP; the 2xx to the
/// INVITE is still repeated until the ACK (§13.3.1.4, end to end, whatever the hop).
#[test]
fn a_tls_trunk_does_not_retransmit_requests() {
    let mut s = Sim::with_tls(true);
    let call = s.incoming();
    s.ua.ring(call, s.now, &[]).expect("ring");
    let tag = to_tag(response(&s.out()[0].1));
    s.ua.answer(call, s.now, Bytes::from_static(ANSWER.as_bytes()), &[])
        .expect("answer");
    assert_eq!(status(&s.out()[0].1), 200);
    s.advance_to(s.now + ms(600));
    assert!(
        s.out().iter().any(|(_, m)| status(m) == 200),
        "the 2xx is repeated until the ACK"
    );
    s.send(&in_dialog("ACK", 1, "z9hG4bKack1", &tag, ""));
    s.events();
    s.ua.hangup(call, s.now, None).expect("hangup");
    let bye = s.out();
    assert_eq!(bye.len(), 1, "one BYE");
    s.advance_to(s.now + ms(10_000));
    assert!(s.out().is_empty(), "no BYE retransmission over TLS");
    // Timer F (64*T1) still ends a BYE nobody answers.
    s.advance_to(s.now + ms(30_000));
    assert!(
        s.events()
            .iter()
            .any(|e| matches!(e, UaEvent::Ended { call: c, .. } if *c == call)),
        "the call ends when the BYE times out"
    );
}
