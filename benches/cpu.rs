//! Criterion benches of the CPU backend (`Context::cpu()`, f32 I/O): skip, denoise and a
//! 4-level skip trajectory at d = 784 and 3072, full rank and r = d/4, and d = 12288 at r = 1024
//! (the shapes of `scripts/cpu_bench.py`), batch 1, 16, 64, 256.
//!
//! Throughput is the bytes a call must move at the least: the eigenvectors once (r x d f32)
//! plus the input (batch x d) and the output (slabs x batch x d), so criterion reports GB/s
//! against memory bandwidth. Small batches are bound by streaming the eigenvectors; large
//! batches by the two GEMMs (2 x 2 x batch x r x d flops, plus the trajectory's extra slabs).
//!
//! `cargo bench --bench cpu` runs everything in a few minutes; pass a filter such as
//! `cargo bench --bench cpu -- 'skip/d784'` for a subset.

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use gaussskip::rng::Rng;
use gaussskip::{Context, Model, ModelMeta, Noise, Op};

/// `rank` rows of the orthonormal DCT-II basis of size `dim` (exact and cheap at any size;
/// the speed of a dense GEMM does not depend on which orthonormal rows it multiplies).
fn dct_rows(rank: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rank * dim);
    for k in 0..rank {
        let scale = (if k == 0 { 1.0 } else { 2.0 } / dim as f64).sqrt();
        out.extend((0..dim).map(|j| {
            let angle = std::f64::consts::PI * (j as f64 + 0.5) * k as f64 / dim as f64;
            (scale * angle.cos()) as f32
        }));
    }
    out
}

fn model(dim: usize, rank: usize, rng: &mut Rng) -> Model {
    let eigvals: Vec<f64> = (0..rank).map(|k| 10.0 / (1.0 + k as f64)).collect();
    let mean: Vec<f32> = rng.normals(dim).iter().map(|&v| 0.5 * v as f32).collect();
    let residual_var = if rank < dim { 0.01 } else { 0.0 };
    Model::from_parts(
        mean,
        eigvals,
        dct_rows(rank, dim),
        residual_var,
        ModelMeta::default(),
    )
    .expect("benchmark model")
}

fn cpu_benches(c: &mut Criterion) {
    let ctx = Context::cpu();
    let mut rng = Rng::new(11);
    let levels = [
        Noise::edm(40.0),
        Noise::edm(19.4),
        Noise::edm(5.0),
        Noise::edm(1.0),
    ];
    let (from, to) = (Noise::edm(80.0), Noise::edm(19.4));
    let ops = [
        (
            "skip",
            Op::Skip {
                from: from.into(),
                to: to.into(),
            },
        ),
        ("denoise", Op::Denoise { at: to.into() }),
        (
            "trajectory4",
            Op::SkipTrajectory {
                from: from.into(),
                levels: &levels,
            },
        ),
    ];
    let shapes = [
        (784usize, 784usize),
        (784, 196),
        (3072, 3072),
        (3072, 768),
        (12288, 1024),
    ];
    for &(dim, rank) in &shapes {
        let model = model(dim, rank, &mut rng);
        let inputs: Vec<(usize, Vec<f32>)> = [1usize, 16, 64, 256]
            .iter()
            .map(|&batch| {
                let x = rng
                    .normals(batch * dim)
                    .iter()
                    .map(|&v| (80.0 * v) as f32)
                    .collect();
                (batch, x)
            })
            .collect();
        for (name, op) in ops {
            let mut group = c.benchmark_group(name);
            // Flat sampling: the same iteration count in every sample, so the full-rank
            // d = 3072 calls at batch 256 (~10 GFLOP each) need 10 iterations, not 55.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            for (batch, x) in &inputs {
                let mut out = vec![0f32; op.slabs() * x.len()];
                let bytes = 4 * (rank * dim + x.len() + out.len());
                group.throughput(Throughput::Bytes(bytes as u64));
                let id = BenchmarkId::new(format!("d{dim}_r{rank}"), batch);
                group.bench_function(id, |b| {
                    b.iter(|| ctx.apply(&model, op, x, &mut out).expect("cpu apply"))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, cpu_benches);
criterion_main!(benches);
