//! Parse and serialize a realistic INVITE (2 Via, Record-Route, Contact, Authorization, SDP).
//!
//! Run: `cargo bench -p sip-core --bench parse -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sip_core::message::{Message, parse};

/// A 900-byte INVITE as a desktop softphone sends it through one proxy.
const INVITE: &[u8] = b"INVITE sip:alice@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy1.example.net;branch=z9hG4bK2d4790.1\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;rport=5060;branch=z9hG4bK74bf9a3c\r\n\
Record-Route: <sip:proxy1.example.net;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Bob\" <sip:bob@example.net>;tag=9fxced76sl\r\n\
To: <sip:alice@example.com>\r\n\
Call-ID: 3848276298220188511@192.0.2.101\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.101:5060;transport=udp>\r\n\
Authorization: Digest username=\"bob\", realm=\"example.net\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"sip:alice@example.com\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 158\r\n\
\r\n\
v=0\r\n\
o=bob 2890844526 2890844526 IN IP4 192.0.2.101\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n";

/// A hand loop splitting CRLF and colons, allocating nothing: the lower bound of any parser.
fn floor(buf: &[u8]) -> usize {
    let mut n = 0;
    for line in buf.split(|&c| c == b'\n') {
        if line.len() <= 1 {
            break;
        }
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            n += colon + line.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let parsed = match parse(INVITE) {
        Ok(Message::Request(r)) => r,
        other => panic!("bench INVITE must parse: {other:?}"),
    };
    assert_eq!(
        parsed.to_bytes(),
        INVITE,
        "the bench INVITE is in canonical form"
    );
    let mut group = c.benchmark_group("invite");
    group.throughput(Throughput::Bytes(INVITE.len() as u64));
    group.bench_function("parse", |b| b.iter(|| parse(black_box(INVITE))));
    // The floor CRATES.md quotes: split the header section into lines and names/values.
    group.bench_function("floor", |b| b.iter(|| floor(black_box(INVITE))));
    group.bench_function("serialize", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter(|| {
            out.clear();
            black_box(&parsed).write_to(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
