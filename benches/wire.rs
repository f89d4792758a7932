//! Throughput of the QMP decoder on a real QEMU 7.2 server stream (`benches/data/`), against
//! `serde_json` parsing the same bytes as a stream of values.
use criterion::{Criterion, Throughput, black_box, criterion_main};
use qmptap::wire::{Decoder, Message};

const S2C: &[u8] = include_bytes!("data/qemu-7.2-s2c.bin");

fn decode(chunk: usize, classify: bool) -> usize {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    let mut n = 0;
    for c in S2C.chunks(chunk) {
        decoder.feed(c, &mut frames);
        for frame in frames.drain(..) {
            if classify {
                n += usize::from(Message::classify(&frame).value.is_some());
            } else {
                n += frame.bytes.len();
            }
        }
    }
    n + usize::from(decoder.finish().is_some())
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("s2c");
    group.throughput(Throughput::Bytes(S2C.len() as u64));
    for chunk in [4096, 65536] {
        group.bench_function(format!("decode+classify/{chunk}"), |b| {
            b.iter(|| decode(black_box(chunk), true));
        });
        group.bench_function(format!("decode/{chunk}"), |b| {
            b.iter(|| decode(black_box(chunk), false));
        });
    }
    group.bench_function("serde_json/stream", |b| {
        b.iter(|| {
            serde_json::Deserializer::from_slice(black_box(S2C))
                .into_iter::<serde_json::Value>()
                .map_while(Result::ok)
                .count()
        });
    });
    group.finish();
}

#[allow(missing_docs)] // criterion generates the entry points
mod entry {
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
use entry::benches;
criterion_main!(benches);
