//! What call tracing costs the SIP loop: the 20 messages of a forked call (the caller's
//! INVITE, 100, two branch INVITEs, the 180s, the phone's 200 with its trust proof, the
//! desktop's CANCEL/200/487/ACK, the ACKs, BYE and 200) recorded into a [`TraceSink`] with
//! the default budget, one new Call-ID per call, so past [`MAX_CALLS`] every call evicts the
//! oldest as it does in production. Throughput is per message.
//!
//! Run: `cargo bench -p sip-net --bench trace -- --warm-up-time 1 --measurement-time 3`.
//!
//! With `TRACE_BENCH_CALLS=N` in the environment the binary records N calls into a sink and
//! exits, without criterion: run it under `valgrind --tool=callgrind` (or `perf stat -e
//! instructions`) for N and 0 and divide the difference by 20 N for instructions per message,
//! a figure a busy machine does not blur.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group};
use sip_net::trace::{CallTrace, Direction, MAX_CALLS, TraceSink, Traces};

/// The Call-ID's placeholder in every message: 16 hex digits overwritten per call.
const ID: &str = "0000000000000000";

const SDP: &str = "v=0\r\no=- 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/SAVP 0 8 101\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

/// A request as the server receives or sends it.
fn request(method: &str, uri: &str, cseq: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-proxy-{cseq}\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;rport=5060;branch=z9hG4bK74bf9a3c\r\n\
         Max-Forwards: 69\r\n\
         From: \"Bob\" <sip:bob@example.net>;tag=9fxced76sl\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: {ID}@192.0.2.10\r\n\
         CSeq: {cseq}\r\n\
         Contact: <sip:bob@192.0.2.10:5060;transport=udp>\r\n\
         Record-Route: <sip:192.0.2.1:5060;lr>\r\n\
         User-Agent: softphone/1.2\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response to the caller's INVITE (or a branch's).
fn response(status: &str, cseq: &str, extra: &str, body: &str) -> String {
    format!(
        "SIP/2.0 {status}\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;rport=5060;branch=z9hG4bK74bf9a3c\r\n\
         From: \"Bob\" <sip:bob@example.net>;tag=9fxced76sl\r\n\
         To: <sip:alice@example.com>;tag=a6c85cf\r\n\
         Call-ID: {ID}@192.0.2.10\r\n\
         CSeq: {cseq}\r\n\
         Contact: <sip:alice@192.0.2.20:5060>\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The messages of one forked call, in the order the server passes them.
fn forked_call() -> Vec<(Direction, SocketAddr, Vec<u8>)> {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|_| unreachable!());
    let (caller, desk, gw) = (
        addr("192.0.2.10:5060"),
        addr("192.0.2.20:5060"),
        addr("192.0.2.30:5070"),
    );
    let (inv, trying, ringing) = ("1 INVITE", "100 Trying", "180 Ringing");
    let challenge = "Trust-Challenge: nonce=\"q8FhJ2l1c2t5\", zone=\"a1b2c3d4\"\r\n";
    let proof = "Trust-Proof: sig=\"MEUCIQDd3x9T0cB1\", key=\"a1b2c3d4\"\r\n";
    let reason = "Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n";
    let pai = "P-Asserted-Identity: <sip:+15551230001@example.com>\r\n";
    let m = [
        (
            Direction::In,
            caller,
            request("INVITE", "sip:alice@example.com", inv, "", SDP),
        ),
        (Direction::Out, caller, response(trying, inv, "", "")),
        (
            Direction::Out,
            desk,
            request("INVITE", "sip:alice@192.0.2.20:5060", inv, "", SDP),
        ),
        (
            Direction::Out,
            gw,
            request(
                "INVITE",
                "sip:+15551230001@192.0.2.30:5070",
                inv,
                &format!("{challenge}{pai}"),
                SDP,
            ),
        ),
        (Direction::In, desk, response(ringing, inv, "", "")),
        (Direction::Out, caller, response(ringing, inv, "", "")),
        (Direction::In, gw, response(ringing, inv, "", "")),
        (Direction::Out, caller, response(ringing, inv, "", "")),
        (Direction::In, gw, response("200 OK", inv, proof, SDP)),
        (
            Direction::Out,
            desk,
            request(
                "CANCEL",
                "sip:alice@192.0.2.20:5060",
                "1 CANCEL",
                reason,
                "",
            ),
        ),
        (Direction::Out, caller, response("200 OK", inv, "", SDP)),
        (Direction::In, desk, response("200 OK", "1 CANCEL", "", "")),
        (
            Direction::In,
            desk,
            response("487 Request Terminated", inv, "", ""),
        ),
        (
            Direction::Out,
            desk,
            request("ACK", "sip:alice@192.0.2.20:5060", "1 ACK", "", ""),
        ),
        (
            Direction::In,
            caller,
            request("ACK", "sip:alice@192.0.2.20:5060", "1 ACK", "", ""),
        ),
        (
            Direction::Out,
            gw,
            request("ACK", "sip:+15551230001@192.0.2.30:5070", "1 ACK", "", ""),
        ),
        (
            Direction::In,
            caller,
            request("BYE", "sip:alice@192.0.2.20:5060", "2 BYE", "", ""),
        ),
        (
            Direction::Out,
            gw,
            request("BYE", "sip:+15551230001@192.0.2.30:5070", "2 BYE", "", ""),
        ),
        (Direction::In, gw, response("200 OK", "2 BYE", "", "")),
        (Direction::Out, caller, response("200 OK", "2 BYE", "", "")),
    ];
    m.into_iter()
        .map(|(d, p, s)| (d, p, s.into_bytes()))
        .collect()
}

/// The messages of a call, each with the offset of its Call-ID's placeholder, renamed per
/// call in place (so the bench times recording, not building the messages).
struct Calls {
    msgs: Vec<(Direction, SocketAddr, Vec<u8>, usize)>,
    next: u64,
}

impl Calls {
    fn new() -> Self {
        let msgs = forked_call()
            .into_iter()
            .map(|(d, p, m)| {
                let at = m
                    .windows(ID.len())
                    .position(|w| w == ID.as_bytes())
                    .unwrap_or_else(|| unreachable!("every message has a Call-ID"));
                (d, p, m, at)
            })
            .collect();
        Self { msgs, next: 0 }
    }

    /// Renames the messages for the next call.
    fn advance(&mut self) {
        self.next += 1;
        let id = format!("{:016x}", self.next);
        for (_, _, m, at) in &mut self.msgs {
            m[*at..*at + ID.len()].copy_from_slice(id.as_bytes());
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut calls = Calls::new();
    let n = calls.msgs.len() as u64;
    let mut group = c.benchmark_group("trace");
    group.throughput(Throughput::Elements(n));
    // What the SIP loop pays: the sink (its lock, nobody on the live feed) with the default
    // budget, a new call every iteration, the oldest evicted once MAX_CALLS are kept.
    let sink = TraceSink::new();
    group.bench_function("sink_forked_call", |b| {
        b.iter(|| {
            calls.advance();
            for (dir, peer, m, _) in &calls.msgs {
                sink.record(*dir, "UDP", *peer, black_box(m));
            }
        })
    });
    // The store alone (no lock).
    let mut traces = Traces::default();
    group.bench_function("store_forked_call", |b| {
        b.iter(|| {
            calls.advance();
            for (dir, peer, m, _) in &calls.msgs {
                traces.record(*dir, "UDP", *peer, black_box(m));
            }
        })
    });
    // What a reader pays instead (the API building a call's messages): one kept call of
    // the store above, formatted.
    let id = traces
        .calls()
        .next_back()
        .map(|c| c.call_id().to_owned())
        .unwrap_or_default();
    group.bench_function("read_forked_call", |b| {
        b.iter(|| traces.call(black_box(&id)).map(CallTrace::entries))
    });
    group.finish();
    assert!(
        traces.calls().count() == MAX_CALLS,
        "the bench ran past MAX_CALLS, so it measured eviction too"
    );
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("TRACE_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        let mut calls = Calls::new();
        let sink = TraceSink::new();
        for _ in 0..n {
            calls.advance();
            for (dir, peer, m, _) in &calls.msgs {
                sink.record(*dir, "UDP", *peer, black_box(m));
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
