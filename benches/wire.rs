//! Batch encoder and decoder: one segment of 10 000 events, zstd-compressed (as the
//! transmitter sends it) and plain; the decoder also fed in 64 KB chunks as the server reads
//! a body.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgteleport::wire::{self, SegmentReader};

mod common;

const EVENTS: usize = 10_000;
const LIMIT: usize = 256 << 20;

fn encode_decode(c: &mut Criterion) {
    let batch = common::batch(EVENTS);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(EVENTS as u64));
    for compress in [true, false] {
        let label = if compress { "zstd" } else { "plain" };
        g.bench_function(format!("encode/{label}"), |b| {
            b.iter(|| wire::encode(&batch, compress).expect("encodes"))
        });
        let body = wire::encode(&batch, compress).expect("encodes");
        g.bench_function(format!("decode/{label}"), |b| {
            b.iter(|| wire::decode(&body, compress, LIMIT).expect("decodes"))
        });
        g.bench_function(format!("decode_streamed/{label}"), |b| {
            b.iter(|| {
                let mut reader = SegmentReader::new(compress, LIMIT).expect("reader");
                let mut n = 0;
                for chunk in body.chunks(64 << 10) {
                    reader.feed(bytes::Bytes::copy_from_slice(chunk));
                    while let Some(seg) = reader.next_segment().expect("decodes") {
                        n += seg.events.len();
                    }
                }
                reader.finish().expect("complete");
                assert_eq!(n, EVENTS);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode_decode);
criterion_main!(benches);
