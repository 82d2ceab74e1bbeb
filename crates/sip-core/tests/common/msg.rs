//! The messages the tests play: a caller's INVITE and CANCEL, a device's answer to its
//! branch, a REGISTER.

use sip_core::message::{HeaderName, Request, Response};
use sip_core::proxy::Transport;

use super::CALLER;

/// `bytes` as the tests write messages: lines ending in `\n` ([`super::sim::Sim::recv`]
/// sends them as CRLF).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec())
        .expect("UTF-8")
        .replace("\r\n", "\n")
}

/// Call `call-1` from bob (a foreign caller at [`CALLER`]) to alice, with `extra` header
/// lines and a small SDP body: [`call`] 1 with an offer.
pub fn invite(extra: &str) -> String {
    let offer = format!("{extra}Content-Type: application/sdp\nContent-Length: 4\n\nv=0\n");
    call(1, Transport::Udp, CALLER, "sip:alice@localhost").replace("Content-Length: 0\n\n", &offer)
}

/// bob's `method` in call `call-1` ([`invite`]) for `ruri`: Via branch `z9hG4bK{branch}`,
/// CSeq `cseq`, To `to` (a header value), with `headers` (lines ending in `\n`, e.g. a
/// Route).
pub fn in_call(
    method: &str,
    ruri: &str,
    branch: &str,
    cseq: u32,
    to: &str,
    headers: &str,
) -> String {
    format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK{branch};rport
Max-Forwards: 70
{headers}From: <sip:bob@example.net>;tag=bobtag1
To: {to}
Call-ID: call-1
CSeq: {cseq} {method}
Content-Length: 0

"
    )
}

/// Device `dev`'s response to its branch INVITE `req`: To tag `tag`, Contact
/// `sip:alice@dev`, the Record-Route copied back.
pub fn answer(req: &Request, status: u16, tag: &str, dev: &str) -> String {
    answer_with(req, status, tag, dev, &[], false)
}

/// [`answer`] with `headers` added and, when `sdp`, a small SDP body.
pub fn answer_with(
    req: &Request,
    status: u16,
    tag: &str,
    dev: &str,
    headers: &[(&str, &str)],
    sdp: bool,
) -> String {
    let mut resp = Response::to_request(req, status, "X", Some(tag));
    for rr in req.headers.get_all(&HeaderName::RecordRoute) {
        resp.headers.push(HeaderName::RecordRoute, rr);
    }
    resp.headers
        .push(HeaderName::Contact, format!("<sip:alice@{dev}>"));
    for (name, value) in headers {
        resp.headers.push(HeaderName::Other((*name).into()), *value);
    }
    if sdp {
        resp.headers
            .push(HeaderName::ContentType, "application/sdp");
        resp.body = bytes::Bytes::from_static(b"v=0\r\n");
    }
    text(&resp.to_bytes())
}

/// Call `call-{n}` from bob at `from` over `transport` for `ruri`, to alice: branch
/// `z9hG4bKcaller{n}`, From tag `bobtag{n}`, no body.
pub fn call(n: u32, transport: Transport, from: &str, ruri: &str) -> String {
    let proto = transport.as_str();
    format!(
        "INVITE {ruri} SIP/2.0
Via: SIP/2.0/{proto} {from};branch=z9hG4bKcaller{n};rport
Max-Forwards: 70
From: <sip:bob@example.net>;tag=bobtag{n}
To: <sip:alice@localhost>
Call-ID: call-{n}
CSeq: 1 INVITE
Contact: <sip:bob@{from}>
Content-Length: 0

"
    )
}

/// bob's CANCEL of [`call`] `n` from [`CALLER`] over UDP for `sip:alice@localhost`.
pub fn cancel(n: u32) -> String {
    format!(
        "CANCEL sip:alice@localhost SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKcaller{n};rport
Max-Forwards: 70
From: <sip:bob@example.net>;tag=bobtag{n}
To: <sip:alice@localhost>
Call-ID: call-{n}
CSeq: 1 CANCEL
Content-Length: 0

"
    )
}

/// REGISTER number `n` (branch `z9hG4bKreg{n}`, From tag and CSeq) of `user` over
/// `transport`, Via `via`, in Call-ID `call_id`, binding `contact` (a header value), with
/// `headers` (lines ending in `\n`).
pub fn register(
    transport: Transport,
    via: &str,
    n: u32,
    user: &str,
    call_id: &str,
    contact: &str,
    headers: &str,
) -> String {
    let proto = transport.as_str();
    format!(
        "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/{proto} {via};branch=z9hG4bKreg{n};rport
Max-Forwards: 70
From: <sip:{user}@localhost>;tag=r{n}
To: <sip:{user}@localhost>
Call-ID: {call_id}
CSeq: {n} REGISTER
Contact: {contact}
{headers}Content-Length: 0

"
    )
}
