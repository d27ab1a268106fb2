//! Micro-benchmarks of the hot kernels: Hilbert scatter/gather, piece deflate/inflate,
//! checksums. Run with `cargo bench --bench kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flate2::Decompress;
use pixelrts::format::hilbert::{gather_tile, scatter_tile, TileTables};
use pixelrts::format::segment::{adler32, inflate_piece, PieceCompressor};

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

fn text(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; pixels along a hilbert curve\n"
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

fn hilbert(c: &mut Criterion) {
    let tables = TileTables::new(4096, 256);
    let place = tables.place_of(5);
    let positions = tables.positions(&place).to_vec();
    let payload = pseudo_random(4 * 256 * 256);
    let mut tile = vec![0u8; payload.len()];
    let mut g = c.benchmark_group("hilbert_tile_256");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("scatter", |b| {
        b.iter(|| scatter_tile(&positions, &payload, &mut tile))
    });
    let mut back = vec![0u8; payload.len()];
    g.bench_function("gather", |b| {
        b.iter(|| gather_tile(&positions, &tile, &mut back))
    });
    g.finish();
}

fn pieces(c: &mut Criterion) {
    let mut g = c.benchmark_group("piece_1KiB");
    for (name, data) in [
        ("random", pseudo_random(1024)),
        ("text", text(1024)),
        ("zeros", vec![0u8; 1024]),
    ] {
        g.throughput(Throughput::Bytes(1024));
        for level in [1u32, 6] {
            let mut compressor = PieceCompressor::new(level);
            let mut out = Vec::with_capacity(2048);
            g.bench_with_input(
                BenchmarkId::new(format!("deflate_l{level}"), name),
                &data,
                |b, d| {
                    b.iter(|| {
                        out.clear();
                        compressor.compress(d, &mut out)
                    })
                },
            );
        }
        let mut compressed = Vec::new();
        PieceCompressor::new(1).compress(&data, &mut compressed);
        let mut inflater = Decompress::new(false);
        let mut raw = vec![0u8; 1024];
        g.bench_with_input(BenchmarkId::new("inflate", name), &compressed, |b, p| {
            b.iter(|| inflate_piece(p, &mut raw, &mut inflater).unwrap())
        });
    }
    g.finish();
}

fn checksums(c: &mut Criterion) {
    let data = pseudo_random(1 << 20);
    let mut g = c.benchmark_group("checksums_1MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("crc32", |b| b.iter(|| crc32fast::hash(&data)));
    g.bench_function("adler32", |b| b.iter(|| adler32(&data)));
    g.bench_function("sha256", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(&data))
    });
    g.finish();
}

criterion_group!(benches, hilbert, pieces, checksums);
criterion_main!(benches);
