//! Criterion benches of the CUDA backend (skip, denoise, a 16-level trajectory) on device
//! buffers and a caller stream, timed with CUDA events around each batch of iterations so that
//! the clock stops only when the device has finished. Throughput is the roofline byte count
//! (eigenvectors read twice in f16, input read and output written once). Without a usable GPU
//! every group prints why and measures nothing. scripts/gpu_bench.py prints the side-by-side
//! table with PyTorch; these benches track the library path itself.
#![cfg_attr(not(feature = "cuda"), allow(unused))]

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(feature = "cuda")]
fn cuda_benches(c: &mut Criterion) {
    use std::ffi::c_void;
    use std::time::Duration;

    use criterion::Throughput;
    use cudarc::driver::{result, sys};
    use gaussskip::rng::Rng;
    use gaussskip::{Context, Device, Dtype, Model, ModelMeta, Noise, Op};

    let ctx = match Context::new(Device::Cuda, 0) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("cuda benches skipped: no CUDA device ({e})");
            return;
        }
    };
    // The library restores the caller's current context after each call: make the device's
    // primary context current for this bench's own allocations.
    let primary = cudarc::driver::CudaContext::new(0).expect("primary context");
    primary.bind_to_thread().expect("bind");
    let stream = result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream");
    let mut rng = Rng::new(7);
    let levels: Vec<Noise> = (0..16)
        .map(|i| Noise::edm(80.0 * (1.0 - i as f64 / 16.0)))
        .collect();
    for &(dim, rank) in &[(3072usize, 3072usize), (12288, 1024)] {
        // Orthonormal rows from a DCT-II basis (exact, cheap to build at any size).
        let eigvecs: Vec<f32> = (0..rank * dim)
            .map(|i| {
                let (k, j) = (i / dim, i % dim);
                let s = if k == 0 {
                    1.0 / dim as f64
                } else {
                    2.0 / dim as f64
                }
                .sqrt();
                (s * (std::f64::consts::PI * (j as f64 + 0.5) * k as f64 / dim as f64).cos()) as f32
            })
            .collect();
        let eigvals: Vec<f64> = (0..rank).map(|k| 10.0 / (1.0 + k as f64)).collect();
        let mean: Vec<f32> = rng.normals(dim).iter().map(|&v| v as f32).collect();
        let model =
            Model::from_parts(mean, eigvals, eigvecs, 0.0, ModelMeta::default()).expect("model");
        for &batch in &[1usize, 16, 64] {
            let x: Vec<u8> = rng
                .normals(batch * dim)
                .iter()
                .flat_map(|&v| half::f16::from_f64(80.0 * v).to_le_bytes())
                .collect();
            let dx = unsafe { result::malloc_sync(x.len()) }.expect("alloc");
            unsafe { result::memcpy_htod_sync(dx, &x) }.expect("upload");
            let dout = unsafe { result::malloc_sync(16 * x.len()) }.expect("alloc");
            let ops = [
                (
                    "skip",
                    Op::Skip {
                        from: Noise::edm(80.0).into(),
                        to: Noise::edm(10.0).into(),
                    },
                ),
                (
                    "denoise",
                    Op::Denoise {
                        at: Noise::edm(10.0).into(),
                    },
                ),
                (
                    "trajectory16",
                    Op::SkipTrajectory {
                        from: Noise::edm(80.0).into(),
                        levels: &levels,
                    },
                ),
            ];
            let mut group = c.benchmark_group(format!("cuda_d{dim}_r{rank}_b{batch}"));
            group.measurement_time(Duration::from_secs(3));
            for (name, op) in ops {
                let bytes = 2 * dim * rank * 2 + (1 + op.slabs()) * batch * dim * 2;
                group.throughput(Throughput::Bytes(bytes as u64));
                let call = || unsafe {
                    ctx.apply_raw(
                        &model,
                        op,
                        Dtype::F16,
                        dx as *const c_void,
                        dout as *mut c_void,
                        batch,
                        stream as *mut c_void,
                    )
                    .expect("call")
                };
                call();
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        let start =
                            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
                        let end =
                            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
                        unsafe { result::event::record(start, stream) }.unwrap();
                        for _ in 0..iters {
                            call();
                        }
                        unsafe { result::event::record(end, stream) }.unwrap();
                        unsafe { result::event::synchronize(end) }.unwrap();
                        let ms = unsafe { result::event::elapsed(start, end) }.unwrap();
                        unsafe {
                            result::event::destroy(start).unwrap();
                            result::event::destroy(end).unwrap();
                        }
                        Duration::from_secs_f64(ms as f64 * 1e-3)
                    })
                });
            }
            group.finish();
            unsafe {
                result::stream::synchronize(stream).unwrap();
                result::free_sync(dx).unwrap();
                result::free_sync(dout).unwrap();
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_benches(_: &mut Criterion) {
    eprintln!("cuda benches skipped: built without the `cuda` feature");
}

criterion_group!(benches, cuda_benches);
criterion_main!(benches);
