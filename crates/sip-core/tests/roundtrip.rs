//! Property tests of the parser and serializer.
//!
//! - Structured round trip: generated requests and responses serialize, parse back equal,
//!   and parse the same however the wire spells them (compact or long names, any case, LWS
//!   around the colon, folded lines, Via lists on one line, Content-Length with zeros).
//! - Never panics: random bytes and mutated valid messages go through `parse` and
//!   `frame_stream`; whatever parses also round-trips.
//! - Raw bytes: a header value that is not UTF-8 (or holds plane-16 chars) parses, and the
//!   message serializes to exactly the bytes received.

use std::path::PathBuf;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use sip_core::message::{
    Frame, Header, HeaderName, Headers, MAX_MESSAGE_SIZE, Message, Method, Request, Response, Uri,
    frame_stream, parse,
};

fn to_bytes(m: &Message) -> Vec<u8> {
    match m {
        Message::Request(r) => r.to_bytes(),
        Message::Response(r) => r.to_bytes(),
    }
}

/// If `bytes` parses, its serialization parses back to the same message.
fn assert_roundtrip_if_parses(bytes: &[u8]) {
    let Ok(m) = parse(bytes) else { return };
    let wire = to_bytes(&m);
    if wire.len() > MAX_MESSAGE_SIZE {
        return; // long names and split lists may grow a message past the limit
    }
    match parse(&wire) {
        Ok(again) => assert_eq!(again, m, "{}", String::from_utf8_lossy(&wire)),
        Err(e) => panic!(
            "serialized message does not reparse: {e:?}\n{}",
            String::from_utf8_lossy(&wire)
        ),
    }
}

// ---- Generators -------------------------------------------------------------------------

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "REGISTER",
            "OPTIONS",
            "PRACK",
            "UPDATE",
            "INFO",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "MESSAGE",
            "PUBLISH",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9.!%*_+`'~-]{1,12}",
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        "\\[2001:db8::[0-9a-f]{1,4}\\]",
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop::option::of(1u16..).prop_map(|p| p.map(|p| format!(":{p}")).unwrap_or_default())
}

fn sip_uri() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["sip", "sips"]),
        prop::option::of("[a-zA-Z0-9_.!~*'()&=+$,;?/-]{1,12}"),
        host(),
        port(),
        "(;[a-z]{1,6}(=[a-z0-9.]{1,6})?){0,3}",
    )
        .prop_map(|(scheme, user, host, port, params)| {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            format!("{scheme}:{user}{host}{port}{params}")
        })
}

fn request_uri() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => sip_uri(),
        1 => "(tel:\\+[0-9]{4,12}|urn:service:sos|x-unk:[a-z0-9/.]{1,10})",
    ]
}

fn via() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["UDP", "TCP", "TLS", "SCTP", "WS"]),
        host(),
        port(),
        "[a-zA-Z0-9.-]{1,16}",
        prop::sample::select(vec!["", ";rport", ";received=192.0.2.1", ";rport=5060;x=y"]),
    )
        .prop_map(|(t, h, p, b, extra)| format!("SIP/2.0/{t} {h}{p};branch=z9hG4bK{b}{extra}"))
}

fn name_addr() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(String::new()),
            "[A-Za-z][A-Za-z0-9.]{0,8}( [A-Za-z0-9.]{1,8}){0,2} ",
            "\"[A-Za-z ,:;<>@]{0,12}(\\\\\")?\" ",
        ],
        sip_uri(),
        prop::option::of("[a-z0-9]{1,10}"),
    )
        .prop_map(|(display, uri, tag)| {
            let tag = tag.map(|t| format!(";tag={t}")).unwrap_or_default();
            format!("{display}<{uri}>{tag}")
        })
}

/// Unknown headers: a safe value (no CR/LF; no SP/HT at either end; single inner spaces).
fn other_header() -> impl Strategy<Value = Header> {
    (
        "X-[A-Za-z0-9-]{1,10}",
        prop_oneof![
            Just(String::new()),
            "[!-~\u{a0}-\u{17f}]{1,8}( [!-~\u{a0}-\u{17f}]{1,8}){0,4}",
        ],
    )
        .prop_map(|(name, value)| Header {
            name: HeaderName::Other(name),
            value,
        })
}

fn common_headers(cseq_method: String) -> impl Strategy<Value = Vec<Header>> {
    (
        vec(via(), 1..4),
        name_addr(),
        name_addr(),
        "[A-Za-z0-9.+_-]{1,20}(@[a-z0-9.]{1,10})?",
        0u32..(1 << 31),
        prop::option::of(0u8..=255),
        vec(name_addr(), 0..3),
        vec(
            "<sip:[a-z0-9.]{1,10}(;lr)?>".prop_map(|v| Header {
                name: HeaderName::RecordRoute,
                value: v,
            }),
            0..3,
        ),
        vec(other_header(), 0..5),
    )
        .prop_map(
            move |(vias, from, to, call_id, seq, mf, contacts, rr, others)| {
                let h = |name, value: String| Header { name, value };
                let mut out: Vec<Header> =
                    vias.into_iter().map(|v| h(HeaderName::Via, v)).collect();
                out.push(h(HeaderName::From, from));
                out.push(h(HeaderName::To, to));
                out.push(h(HeaderName::CallId, call_id));
                out.push(h(HeaderName::CSeq, format!("{seq} {cseq_method}")));
                if let Some(mf) = mf {
                    out.push(h(HeaderName::MaxForwards, mf.to_string()));
                }
                out.extend(contacts.into_iter().map(|c| h(HeaderName::Contact, c)));
                out.extend(rr);
                out.extend(others);
                out
            },
        )
}

fn body() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn request() -> impl Strategy<Value = Request> {
    (method(), request_uri())
        .prop_flat_map(|(m, uri)| (Just(m.clone()), Just(uri), common_headers(m), body()))
        .prop_map(|(m, uri, headers, body)| Request {
            method: Method::from_token(&m),
            uri: Uri::parse(&uri).unwrap_or_else(|e| panic!("generated URI {uri}: {e}")),
            headers: Headers(headers),
            body,
        })
}

fn response() -> impl Strategy<Value = Response> {
    (
        100u16..=699,
        "[ -~\u{a0}-\u{17f}]{0,20}",
        method().prop_flat_map(common_headers),
        body(),
    )
        .prop_map(|(status, reason, headers, body)| Response {
            status,
            reason,
            headers: Headers(headers),
            body,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        request().prop_map(Message::Request),
        response().prop_map(Message::Response),
    ]
}

// ---- Alternative spellings --------------------------------------------------------------

/// How to spell one header line on the wire.
#[derive(Debug, Clone)]
struct Spelling {
    compact: bool,
    case: u8,
    before_colon: &'static str,
    after_colon: &'static str,
    fold: bool,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (
        any::<bool>(),
        0u8..3,
        prop::sample::select(vec!["", "", " ", "\t", "  "]),
        prop::sample::select(vec!["", " ", " ", "\t", "   "]),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(compact, case, before_colon, after_colon, fold)| Spelling {
                compact,
                case,
                before_colon,
                after_colon,
                fold,
            },
        )
}

fn spell_name(name: &HeaderName, s: &Spelling) -> String {
    let compact = match name {
        HeaderName::Via => Some("v"),
        HeaderName::From => Some("f"),
        HeaderName::To => Some("t"),
        HeaderName::CallId => Some("i"),
        HeaderName::Contact => Some("m"),
        _ => None,
    };
    let n = match compact {
        Some(c) if s.compact => c.to_owned(),
        _ => name.as_str().to_owned(),
    };
    match s.case {
        0 => n,
        1 => n.to_ascii_uppercase(),
        _ => n.to_ascii_lowercase(),
    }
}

/// Folds a value at a single space (between two non-blank characters).
fn fold(value: &str) -> String {
    let b = value.as_bytes();
    let at = (1..b.len().saturating_sub(1)).find(|&i| {
        b[i] == b' ' && !matches!(b[i - 1], b' ' | b'\t') && !matches!(b[i + 1], b' ' | b'\t')
    });
    match at {
        Some(i) => format!("{}\r\n {}", &value[..i], &value[i + 1..]),
        None => value.to_owned(),
    }
}

fn respell(m: &Message, spellings: &[Spelling], one_via_line: bool, cl_zeros: usize) -> Vec<u8> {
    let (start, headers, body) = match m {
        Message::Request(r) => (
            format!("{} {} SIP/2.0", r.method, r.uri),
            &r.headers,
            &r.body,
        ),
        Message::Response(r) => (
            format!("SIP/2.0 {} {}", r.status, r.reason),
            &r.headers,
            &r.body,
        ),
    };
    let mut out = format!("{start}\r\n");
    let vias: Vec<&str> = headers.get_all(&HeaderName::Via).collect();
    for (i, h) in headers.0.iter().enumerate() {
        let s = &spellings[i % spellings.len()];
        let value = if h.name == HeaderName::Via && one_via_line {
            if h.value != vias[0] {
                continue;
            }
            vias.join(" ,\r\n\t")
        } else {
            h.value.clone()
        };
        let value = if s.fold { fold(&value) } else { value };
        let name = spell_name(&h.name, s);
        out.push_str(&format!(
            "{name}{}:{}{value}\r\n",
            s.before_colon, s.after_colon
        ));
    }
    out.push_str(&format!(
        "l: {}{}\r\n\r\n",
        "0".repeat(cl_zeros),
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

// ---- Mutations --------------------------------------------------------------------------

fn seeds() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc4475");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
    InsertText(usize, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        b'\r', b'\n', b' ', b'\t', b':', b';', b',', b'"', b'<', b'>', b'\\', b'%', b'@', b'=', 0,
        0x80, 0xff,
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (any::<usize>(), interesting).prop_map(|(p, b)| Mutation::Insert(p, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..64).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "\r\n",
                "\r\n ",
                "\r\n\r\n",
                ",",
                ";;",
                "Content-Length: 99999\r\n",
                "l: 5\r\n",
                "Via: SIP/2.0/UDP [::1]\r\n",
                "\"",
                "<sip:",
                "%",
                "SIP/2.0 ",
            ])
        )
            .prop_map(|(p, t)| Mutation::InsertText(p, t)),
    ]
}

fn mutate(mut data: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = data.len();
        let at = |p: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *m {
            Mutation::Set(p, b) if len > 0 => data[p % len] = b,
            Mutation::Insert(p, b) => data.insert(at(p), b),
            Mutation::Remove(p) if len > 0 => {
                data.remove(p % len);
            }
            Mutation::Truncate(p) => data.truncate(at(p)),
            Mutation::Duplicate(p, n) => {
                let s = at(p);
                let e = (s + n).min(len);
                let piece = data[s..e].to_vec();
                data.splice(s..s, piece);
            }
            Mutation::InsertText(p, t) => {
                let s = at(p);
                data.splice(s..s, t.bytes());
            }
            _ => {}
        }
    }
    data
}

fn check_frame(bytes: &[u8]) {
    match frame_stream(bytes) {
        Ok(Frame::Message(n)) => assert!(n > 0 && n <= bytes.len()),
        Ok(Frame::KeepAlive(n)) => assert!(n > 0 && n <= bytes.len()),
        Ok(Frame::Incomplete) | Err(_) => {}
    }
}

// ---- Properties -------------------------------------------------------------------------

/// 512 cases per property; `PROPTEST_CASES=100000` for a longer run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn structured_roundtrip(m in message()) {
        let wire = to_bytes(&m);
        let parsed = parse(&wire);
        prop_assert_eq!(parsed.as_ref(), Ok(&m), "{}", String::from_utf8_lossy(&wire));
        prop_assert_eq!(frame_stream(&wire), Ok(Frame::Message(wire.len())));
    }

    #[test]
    fn spelling_does_not_matter(
        m in message(),
        spellings in vec(spelling(), 1..8),
        one_via_line in any::<bool>(),
        cl_zeros in 0usize..3,
    ) {
        let wire = respell(&m, &spellings, one_via_line, cl_zeros);
        let parsed = parse(&wire);
        prop_assert_eq!(parsed.as_ref(), Ok(&m), "{}", String::from_utf8_lossy(&wire));
        prop_assert_eq!(frame_stream(&wire), Ok(Frame::Message(wire.len())));
    }

    #[test]
    fn raw_header_bytes_go_out_as_received(
        m in message(),
        raw in vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40),
        plane_16 in any::<bool>(),
    ) {
        // A Subject of any bytes but CR and LF (no LWS at its ends, which would be trimmed)
        // as the first header of a message in canonical form.
        let wire = to_bytes(&m);
        let at = wire.iter().position(|&c| c == b'\n').map_or(0, |i| i + 1);
        let mut subject = b"Subject: a".to_vec();
        subject.extend_from_slice(&raw);
        if plane_16 {
            subject.extend_from_slice("\u{10ff80}\u{10ffff}".as_bytes());
        }
        subject.extend_from_slice(b"z\r\n");
        let mut input = wire[..at].to_vec();
        input.extend_from_slice(&subject);
        input.extend_from_slice(&wire[at..]);
        let Ok(parsed) = parse(&input) else {
            return Err(TestCaseError::fail(format!(
                "refused: {}",
                String::from_utf8_lossy(&input)
            )));
        };
        prop_assert_eq!(to_bytes(&parsed), input);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..2048)) {
        assert_roundtrip_if_parses(&data);
        check_frame(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        seed in any::<prop::sample::Index>(),
        generated in message(),
        use_generated in any::<bool>(),
        ms in vec(mutation(), 1..6),
    ) {
        let data = if use_generated {
            to_bytes(&generated)
        } else {
            let seeds = seeds();
            prop_assume!(!seeds.is_empty());
            seeds[seed.index(seeds.len())].clone()
        };
        let data = mutate(data, &ms);
        assert_roundtrip_if_parses(&data);
        check_frame(&data);
    }
}
