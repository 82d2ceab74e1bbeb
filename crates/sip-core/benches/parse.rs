//! Parse and serialize a realistic INVITE (2 Via, Record-Route, Contact, Authorization, SDP).
//!
//! Run: `cargo bench -p sip-core --bench parse -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sip_core::message::{Message, parse};

/// A ~900-byte INVITE as a desktop softphone sends it through one proxy.
const INVITE: &[u8] = b"INVITE sip:alice@example.com;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy1.example.net:5060;branch=z9hG4bK2d4790.1;received=192.0.2.10\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;rport=5060;branch=z9hG4bK74bf9a3c81f\r\n\
Record-Route: <sip:proxy1.example.net;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Bob Smith\" <sip:bob@example.net>;tag=9fxced76sl\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
Call-ID: 3848276298220188511@192.0.2.101\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.101:5060;transport=udp>;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\"\r\n\
Authorization: Digest username=\"bob\", realm=\"example.net\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"sip:alice@example.com\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: ExamplePhone/4.2\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 222\r\n\
\r\n\
v=0\r\n\
o=bob 2890844526 2890844526 IN IP4 192.0.2.101\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n";

fn bench(c: &mut Criterion) {
    let parsed = match parse(INVITE) {
        Ok(Message::Request(r)) => r,
        other => panic!("bench INVITE must parse: {other:?}"),
    };
    let mut group = c.benchmark_group("invite");
    group.throughput(Throughput::Bytes(INVITE.len() as u64));
    group.bench_function("parse", |b| b.iter(|| parse(black_box(INVITE))));
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
