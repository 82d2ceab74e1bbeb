//! Per-frame costs of the media hot path: one 20 ms G.711 frame (160 samples) coded,
//! decoded and transcoded, and one RTP packet parsed.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trustring_media::{g711, rtp, tone};

fn frame_benches(c: &mut Criterion) {
    let samples = tone::sine(1000.0, 0.5, g711::FRAME_SAMPLES, g711::SAMPLE_RATE);
    let mut ulaw = Vec::new();
    g711::encode_frame(g711::Law::Pcmu, &samples, &mut ulaw);
    let mut packet = Vec::new();
    rtp::write(0, false, 1, 160, 0x1234_5678, &ulaw, &mut packet);

    let mut group = c.benchmark_group("frame_160");
    group.throughput(Throughput::Elements(g711::FRAME_SAMPLES as u64));
    let mut codes = Vec::with_capacity(g711::FRAME_SAMPLES);
    let mut linear = Vec::with_capacity(g711::FRAME_SAMPLES);
    group.bench_function("transcode_pcmu_to_pcma", |b| {
        b.iter(|| {
            codes.clear();
            g711::transcode(
                g711::Law::Pcmu,
                g711::Law::Pcma,
                black_box(&ulaw),
                &mut codes,
            );
            black_box(&codes);
        })
    });
    let mut in_place = ulaw.clone();
    group.bench_function("transcode_in_place", |b| {
        b.iter(|| {
            g711::transcode_in_place(g711::Law::Pcmu, g711::Law::Pcma, black_box(&mut in_place));
        })
    });
    for law in [g711::Law::Pcmu, g711::Law::Pcma] {
        group.bench_function(format!("encode_{law}"), |b| {
            b.iter(|| {
                codes.clear();
                g711::encode_frame(law, black_box(&samples), &mut codes);
                black_box(&codes);
            })
        });
        group.bench_function(format!("decode_{law}"), |b| {
            b.iter(|| {
                linear.clear();
                g711::decode_frame(law, black_box(&ulaw), &mut linear);
                black_box(&linear);
            })
        });
    }
    group.finish();

    c.bench_function("rtp_parse_172", |b| {
        b.iter(|| rtp::parse(black_box(&packet)))
    });
    let mut out = Vec::with_capacity(172);
    c.bench_function("rtp_write_172", |b| {
        b.iter(|| {
            out.clear();
            rtp::write(0, false, 1, 160, 0x1234_5678, black_box(&ulaw), &mut out);
            black_box(&out);
        })
    });
}

criterion_group!(benches, frame_benches);
criterion_main!(benches);
