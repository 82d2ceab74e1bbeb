//! RFC 4475 torture messages (testdata/rfc4475, see its README): one test per message.
//!
//! - 3.1.1 valid: must parse and round-trip (serialize, reparse, equal).
//! - 3.1.2 invalid: `parse` rejects them; where a response can be formed the error carries
//!   it (400, or 505 for badvers).
//! - 3.2 / 3.3 / 3.4: parse; the comment says what the application must answer. Three 3.3
//!   messages (insuf, multi01, mcl01) break the header guarantees `parse` gives the rest of
//!   the core, and the RFC's answer for them is a 400, so `parse` gives that 400 itself.

use std::path::PathBuf;

use sip_core::message::{HeaderName, Message, Method, frame_stream, parse};

fn load(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/rfc4475")
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn to_bytes(m: &Message) -> Vec<u8> {
    match m {
        Message::Request(r) => r.to_bytes(),
        Message::Response(r) => r.to_bytes(),
    }
}

/// Parses, checks the round trip, and returns the message.
fn valid(name: &str) -> Message {
    let raw = load(name);
    let m = parse(&raw).unwrap_or_else(|e| panic!("{name} must parse: {e:?}"));
    let wire = to_bytes(&m);
    let again = parse(&wire).unwrap_or_else(|e| {
        panic!(
            "{name} serialized must reparse: {e:?}\n{}",
            String::from_utf8_lossy(&wire)
        )
    });
    assert_eq!(m, again, "{name} round trip");
    assert_eq!(to_bytes(&again), wire, "{name} serialization is stable");
    m
}

fn request(name: &str) -> sip_core::message::Request {
    match valid(name) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("{name} is a request"),
    }
}

/// Checks rejection and the status of the error response (`None`: dropped silently).
fn invalid(name: &str, response: Option<u16>) {
    let raw = load(name);
    let err = match parse(&raw) {
        Ok(m) => panic!("{name} must be rejected, parsed as {m:?}"),
        Err(e) => e,
    };
    let resp = err.response();
    assert_eq!(
        resp.as_ref().map(|r| r.status),
        response,
        "{name}: {}",
        err.reason
    );
    if let Some(resp) = resp {
        // The response is well formed enough to go back: it names the transaction.
        assert!(resp.headers.get(&HeaderName::Via).is_some(), "{name}");
        assert!(resp.headers.get(&HeaderName::CSeq).is_some(), "{name}");
        let wire = resp.to_bytes();
        assert!(wire.starts_with(format!("SIP/2.0 {} ", resp.status).as_bytes()));
    }
}

// ---- 3.1.1 Valid messages -------------------------------------------------------------

#[test]
fn wsinv() {
    let r = request("wsinv");
    assert_eq!(r.headers.get_all(&HeaderName::Via).count(), 3);
    let vias: Vec<_> = r
        .headers
        .get_all(&HeaderName::Via)
        .filter_map(|v| sip_core::message::Via::parse(v).ok())
        .collect();
    assert_eq!(vias[0].host, "192.0.2.2");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].host, "192.168.255.111");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(r.cseq().seq, 9);
    assert_eq!(
        r.from().and_then(|f| f.tag().map(str::to_owned)),
        Some("98asjd8".into())
    );
    assert_eq!(
        r.from().and_then(|f| f.display),
        Some("J Rosenberg \\\"".into())
    );
    assert_eq!(
        r.to().and_then(|t| t.tag().map(str::to_owned)),
        Some("1918181833n".into())
    );
    assert_eq!(r.headers.get(&HeaderName::Subject), Some(""));
    assert_eq!(
        r.headers.get(&HeaderName::Other("NewFangledHeader".into())),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(r.headers.get(&HeaderName::MaxForwards), Some("0068"));
    assert_eq!(r.body.len(), 150);
}

#[test]
fn intmeth() {
    let r = request("intmeth");
    assert_eq!(
        r.method,
        Method::Extension("!interesting-Method0123456789_*+`.%indeed'~".into())
    );
    assert_eq!(r.cseq().method, r.method);
    assert_eq!(
        r.uri.user.as_deref(),
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        r.uri.password.as_deref(),
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(r.uri.host, "example.com");
    assert_eq!(r.call_id(), "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
    let to = r.to().expect("To");
    assert_eq!(to.display.as_deref(), Some("BEL:\x07 NUL:\0 DEL:\x7f"));
    assert_eq!(
        r.from().and_then(|f| f.display),
        Some("token1~` token2'+_ token3*%!.-".into())
    );
    assert!(
        r.headers
            .get(&HeaderName::Other("extensionHeader-!.%*+_`'~".into()))
            .is_some()
    );
}

#[test]
fn esc01() {
    let r = request("esc01");
    // The escaped user is not a SIPS URI: it stays escaped.
    assert_eq!(r.uri.user.as_deref(), Some("sips%3Auser%40example.com"));
    assert_eq!(
        r.uri.user_unescaped().as_deref(),
        Some("sips:user@example.com")
    );
    assert_eq!(
        r.to().and_then(|t| t.uri.user_unescaped()),
        Some("user".into())
    );
    let contact = r.headers.get(&HeaderName::Contact).expect("folded Contact");
    assert!(contact.starts_with("<sip:cal%6Cer@host5.example.net;%6C%72"));
}

#[test]
fn escnull() {
    let r = request("escnull");
    assert_eq!(r.headers.get_all(&HeaderName::Contact).count(), 2);
    assert_eq!(
        r.to().and_then(|t| t.uri.user_unescaped()),
        Some("null-\0-null".into())
    );
}

#[test]
fn esc02() {
    let r = request("esc02");
    // RE%47IST%45R is not REGISTER, and C%6Fntact is not Contact.
    assert_eq!(r.method, Method::Extension("RE%47IST%45R".into()));
    assert_eq!(r.headers.get_all(&HeaderName::Contact).count(), 2);
    assert!(
        r.headers
            .get(&HeaderName::Other("C%6Fntact".into()))
            .is_some()
    );
    assert_eq!(r.to().and_then(|t| t.display), Some("%Z%45".into()));
}

#[test]
fn lwsdisp() {
    let r = request("lwsdisp");
    assert_eq!(r.from().and_then(|f| f.display), Some("caller".into()));
}

#[test]
fn longreq() {
    let r = request("longreq");
    assert_eq!(r.headers.get_all(&HeaderName::Via).count(), 34);
    assert!(r.top_via().is_some_and(|v| v.host == "sip33.example.com"));
    assert_eq!(r.body.len(), 150);
}

#[test]
fn dblreq() {
    // Over UDP the bytes after Content-Length are ignored: only the REGISTER is seen.
    let r = request("dblreq");
    assert_eq!(r.method, Method::Register);
    assert!(r.body.is_empty());
    // Over TCP the second message is framed after the first.
    let raw = load("dblreq");
    let Ok(sip_core::message::Frame::Message(n)) = frame_stream(&raw) else {
        panic!("dblreq frames")
    };
    let mut rest = &raw[n..];
    while let Ok(sip_core::message::Frame::KeepAlive(k)) = frame_stream(rest) {
        rest = &rest[k..];
    }
    let Ok(Message::Request(second)) = parse(rest) else {
        panic!("second dblreq message parses")
    };
    assert_eq!(second.method, Method::Invite);
}

#[test]
fn semiuri() {
    let r = request("semiuri");
    assert_eq!(r.uri.user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(r.uri.host, "example.com");
    assert!(r.uri.params.is_empty());
}

#[test]
fn transports() {
    let r = request("transports");
    let transports: Vec<_> = r
        .headers
        .get_all(&HeaderName::Via)
        .filter_map(|v| sip_core::message::Via::parse(v).ok())
        .map(|v| v.transport)
        .collect();
    assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

#[test]
fn mpart01() {
    let r = request("mpart01");
    assert_eq!(r.body.len(), 553);
    assert!(
        std::str::from_utf8(&r.body).is_err(),
        "binary body kept as bytes"
    );
}

#[test]
fn unreason() {
    let Message::Response(r) = valid("unreason") else {
        panic!("unreason is a response")
    };
    assert_eq!(r.status, 200);
    assert!(r.reason.starts_with("= 2**3 * 5**2 "));
}

#[test]
fn noreason() {
    let Message::Response(r) = valid("noreason") else {
        panic!("noreason is a response")
    };
    assert_eq!((r.status, r.reason.as_str()), (100, ""));
}

// ---- 3.1.2 Invalid messages -----------------------------------------------------------

#[test]
fn badinv01() {
    invalid("badinv01", Some(400));
}

#[test]
fn clerr() {
    invalid("clerr", Some(400));
}

#[test]
fn scalar02() {
    invalid("scalar02", Some(400));
}

#[test]
fn scalarlg() {
    invalid("scalarlg", None); // a response: discarded
}

#[test]
fn quotbal() {
    invalid("quotbal", Some(400));
}

#[test]
fn ltgtruri() {
    invalid("ltgtruri", Some(400));
}

#[test]
fn lwsruri() {
    invalid("lwsruri", Some(400));
}

#[test]
fn lwsstart() {
    invalid("lwsstart", Some(400));
}

#[test]
fn trws() {
    invalid("trws", Some(400));
}

#[test]
fn escruri() {
    invalid("escruri", Some(400));
}

#[test]
fn baddate() {
    invalid("baddate", Some(400));
}

#[test]
fn regbadct() {
    invalid("regbadct", Some(400));
}

#[test]
fn badaspec() {
    invalid("badaspec", Some(400));
}

#[test]
fn baddn() {
    invalid("baddn", Some(400));
}

#[test]
fn badvers() {
    invalid("badvers", Some(505));
}

#[test]
fn mismatch01() {
    invalid("mismatch01", Some(400));
}

#[test]
fn mismatch02() {
    invalid("mismatch02", Some(400));
}

#[test]
fn bigcode() {
    invalid("bigcode", None); // a response: discarded
}

#[test]
fn ncl() {
    invalid("ncl", Some(400));
}

// ---- 3.2 Transaction layer ------------------------------------------------------------

#[test]
fn badbranch() {
    // Branch is only the magic cookie: the transaction layer must fall back to RFC 2543
    // matching (or answer 400 statelessly).
    let r = request("badbranch");
    assert_eq!(
        r.top_via().and_then(|v| v.branch().map(str::to_owned)),
        Some("z9hG4bK".into())
    );
}

// ---- 3.3 Application layer ------------------------------------------------------------

#[test]
fn insuf() {
    // RFC: 400. Without From, To and Call-ID no response can be formed (RFC 3261 §8.2.6.2
    // copies them), so the request is dropped.
    invalid("insuf", None);
}

#[test]
fn unkscm() {
    // Application: 416 Unsupported URI Scheme.
    let r = request("unkscm");
    assert!(!r.uri.is_sip());
    assert_eq!(r.uri.scheme, "nobodyknowsthisscheme");
}

#[test]
fn novelsc() {
    // Application: 416 (or 404 if some soap.beep URIs were served).
    let r = request("novelsc");
    assert_eq!(r.uri.scheme, "soap.beep");
}

#[test]
fn unksm2() {
    // Application: a proxy routes it as any request; a registrar answers 400 (the To of a
    // REGISTER must be a SIP or SIPS AOR).
    let r = request("unksm2");
    assert_eq!(r.to().map(|t| t.uri.scheme), Some("isbn".into()));
    assert_eq!(r.from().map(|t| t.uri.scheme), Some("http".into()));
}

#[test]
fn bext01() {
    // Application: 420 Bad Extension with Unsupported listing the Require (UAS) or
    // Proxy-Require (proxy) option tags.
    let r = request("bext01");
    assert!(
        r.headers
            .has_token(&HeaderName::ProxyRequire, "noProxiesSupportThis")
    );
}

#[test]
fn invut() {
    // Application (UAS): 415 Unsupported Media Type with Accept; a proxy forwards it.
    let r = request("invut");
    assert_eq!(r.body.len(), 40);
}

#[test]
fn regaut01() {
    // Application: a registrar that authenticates answers 401 with a challenge in a scheme it
    // knows; the proxy forwards the Authorization unchanged.
    request("regaut01");
}

#[test]
fn multi01() {
    // RFC: 400 (several Call-ID, CSeq, From, To). The parser answers it.
    invalid("multi01", Some(400));
}

#[test]
fn mcl01() {
    // RFC: "MUST respond with an error" (400); over TCP the framing is lost and the
    // connection SHOULD be closed: the framing error carries the 400 to send before.
    invalid("mcl01", Some(400));
    let e = frame_stream(&load("mcl01")).expect_err("unframeable");
    let resp = e.response().expect("answered before the close");
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (400, "Conflicting Content-Length")
    );
    assert_eq!(resp.headers.get(&HeaderName::CSeq), Some("15932 OPTIONS"));
}

#[test]
fn bcast() {
    // Application: a proxy must not forward this response to the broadcast address of the
    // second Via.
    let Message::Response(r) = valid("bcast") else {
        panic!("bcast is a response")
    };
    assert_eq!(r.headers.get_all(&HeaderName::Via).count(), 2);
}

#[test]
fn zeromf() {
    // Application: a proxy answers 483 Too Many Hops (an OPTIONS may be answered 200 by the
    // element itself).
    let r = request("zeromf");
    assert_eq!(r.headers.get(&HeaderName::MaxForwards), Some("0"));
}

#[test]
fn cparam01() {
    // Application: registrar 200; `unknownparam` is a Contact header parameter, not part of
    // the bound URI.
    let r = request("cparam01");
    let c = sip_core::message::NameAddr::parse(r.headers.get(&HeaderName::Contact).unwrap_or(""))
        .expect("Contact");
    assert!(c.uri.params.is_empty());
    assert_eq!(c.param("unknownparam"), Some(None));
}

#[test]
fn cparam02() {
    // Application: registrar 200; `unknownparam` is a URI parameter, kept in the binding.
    let r = request("cparam02");
    let c = sip_core::message::NameAddr::parse(r.headers.get(&HeaderName::Contact).unwrap_or(""))
        .expect("Contact");
    assert_eq!(c.uri.param("unknownparam"), Some(None));
}

#[test]
fn regescrt() {
    // Application: registrar 200, binding the URI with its escaped Route header; a request
    // sent to that contact carries `Route: <sip:sip.example.com>`.
    let r = request("regescrt");
    let c = sip_core::message::NameAddr::parse(r.headers.get(&HeaderName::Contact).unwrap_or(""))
        .expect("Contact");
    assert_eq!(
        c.uri.headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
}

#[test]
fn sdp01() {
    // Application (UAS): 406 Not Acceptable (Accept lacks application/sdp), or 400.
    request("sdp01");
}

// ---- 3.4 Backward compatibility -------------------------------------------------------

#[test]
fn inv2543() {
    // RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length (body = rest of the
    // datagram). Application: accept; the transaction layer matches it RFC 2543 style.
    let r = request("inv2543");
    assert!(r.top_via().is_some_and(|v| v.branch().is_none()));
    assert!(!r.body.is_empty());
}

// ---- The corpus as a whole ------------------------------------------------------------

#[test]
fn every_file_is_covered_and_frames() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc4475");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("testdata")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".dat").map(str::to_owned))
        .collect();
    names.sort();
    let this = include_str!("rfc4475.rs");
    for name in &names {
        assert!(this.contains(&format!("fn {name}()")), "no test for {name}");
        // Framing never panics and, with a Content-Length, finds a message or an error.
        let raw = load(name);
        let _ = frame_stream(&raw);
        for cut in 0..raw.len() {
            let _ = parse(&raw[..cut]);
            let _ = frame_stream(&raw[..cut]);
        }
    }
    assert_eq!(names.len(), 49);
}
