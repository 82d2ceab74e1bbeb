//! The SRTP cost per 20 ms G.711 frame on the gateway's hot path: one 172-byte RTP packet
//! (160 bytes of voice) protected as the bridge sends it and unprotected as it receives one,
//! for both suites, in place (what the bridge does) and copying.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trustring_media::srtp::{MasterKey, SrtpContext, Suite};
use trustring_media::{g711, rtp, tone};

fn srtp_benches(c: &mut Criterion) {
    let samples = tone::sine(1000.0, 0.5, g711::FRAME_SAMPLES, g711::SAMPLE_RATE);
    let mut ulaw = Vec::new();
    g711::encode_frame(g711::Law::Pcmu, &samples, &mut ulaw);
    let master = MasterKey::from_bytes(&[0x2b; 30]);

    let mut group = c.benchmark_group("srtp_frame_160");
    group.throughput(Throughput::Elements(1));
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        let name = suite.name();
        // Protect then unprotect the next packet of a stream: a frame's full SRTP cost at
        // one end of a call (each side does one of the two per frame and direction).
        let mut tx = SrtpContext::new(suite, &master);
        let mut rx = SrtpContext::new(suite, &master);
        let mut seq: u16 = 0;
        let mut packet = Vec::with_capacity(rtp::HEADER_LEN + 160 + 10);
        group.bench_function(format!("protect_unprotect_in_place_{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                packet.clear();
                rtp::write(
                    0,
                    false,
                    seq,
                    u32::from(seq) * 160,
                    0x1234_5678,
                    &ulaw,
                    &mut packet,
                );
                tx.protect_in_place(black_box(&mut packet))
                    .expect("protects");
                rx.unprotect_in_place(black_box(&mut packet))
                    .expect("opens");
                black_box(&packet);
            })
        });
        let mut tx = SrtpContext::new(suite, &master);
        let mut seq: u16 = 0;
        group.bench_function(format!("protect_in_place_{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                packet.clear();
                rtp::write(
                    0,
                    false,
                    seq,
                    u32::from(seq) * 160,
                    0x1234_5678,
                    &ulaw,
                    &mut packet,
                );
                tx.protect_in_place(black_box(&mut packet))
                    .expect("protects");
                black_box(&packet);
            })
        });
        let mut tx = SrtpContext::new(suite, &master);
        let mut rx = SrtpContext::new(suite, &master);
        let mut seq: u16 = 0;
        group.bench_function(format!("protect_unprotect_copying_{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                packet.clear();
                rtp::write(
                    0,
                    false,
                    seq,
                    u32::from(seq) * 160,
                    0x1234_5678,
                    &ulaw,
                    &mut packet,
                );
                let sealed = tx.protect(black_box(&packet)).expect("protects");
                black_box(rx.unprotect(black_box(&sealed)).expect("opens"));
            })
        });
    }
    // The baseline the bridge paid before SRTP: writing the clear packet.
    let mut seq: u16 = 0;
    let mut packet = Vec::with_capacity(rtp::HEADER_LEN + 160);
    group.bench_function("rtp_write_only", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            packet.clear();
            rtp::write(
                0,
                false,
                seq,
                u32::from(seq) * 160,
                0x1234_5678,
                &ulaw,
                &mut packet,
            );
            black_box(&packet);
        })
    });
    group.finish();
}

criterion_group!(benches, srtp_benches);
criterion_main!(benches);
