//! GPU tests of the CUDA backend against the f64 reference (`gaussskip::reference::Gaussian`).
//!
//! Every operation (skip, denoise, both with uniform and per-row levels, skip trajectory,
//! x0 trajectory with more levels than fit in the kernel arguments) at odd sizes (dim not a
//! multiple of 16/32/64, rank < dim and rank = dim, batch 1, 3, 17, 257), f32/f16/bf16 I/O,
//! f16 and f32 eigenvector storage, on fresh random inputs with NaN-poisoned outputs. The
//! contract (SPEC §5): ‖out − ref‖/‖ref‖ ≤ 2e-3 with f16 eigenvectors, ≤ 1e-5 with f32, plus
//! the unit roundoff of the output type (2^-11 for f16, 2^-8 for bf16, 0 for f32), since an
//! f16/bf16 output cannot hold the exact value. Also: a call captured in a CUDA graph and
//! replayed on new inputs, two streams in flight, bad pointers and sizes.
//!
//! Run single-threaded on a GPU (`--test-threads=1`): the graph test captures in global mode,
//! where another thread's allocation would invalidate the capture.
//!
//! Without a usable GPU every test prints "skipped: no CUDA device (reason)" and passes; set
//! GAUSSSKIP_REQUIRE_CUDA=1 to make that a failure (scripts/device_build.sh's run_gpu.sh does).
#![cfg(feature = "cuda")]

use std::ffi::c_void;

use cudarc::driver::{result, sys};
use gaussskip::context::EigvecStorage;
use gaussskip::reference::Gaussian;
use gaussskip::rng::Rng;
use gaussskip::{Context, Device, Dtype, Error, Levels, Model, ModelMeta, Noise, Op};
use half::{bf16, f16};

/// A CUDA context, or None after printing why the test is skipped.
fn cuda(storage: EigvecStorage) -> Option<Context> {
    match Context::cuda(0, storage) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            assert!(
                std::env::var_os("GAUSSSKIP_REQUIRE_CUDA").is_none(),
                "GAUSSSKIP_REQUIRE_CUDA is set but CUDA is unusable: {e}"
            );
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Device memory for a test, freed on drop. The context is current on the test's thread
/// (Context creation binds it).
struct DevMem {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DevMem {
    fn new(bytes: usize) -> DevMem {
        let ptr = unsafe { result::malloc_sync(bytes) }.expect("cuMemAlloc");
        DevMem { ptr, bytes }
    }
    fn upload(bytes: &[u8]) -> DevMem {
        let m = DevMem::new(bytes.len());
        unsafe { result::memcpy_htod_sync(m.ptr, bytes) }.expect("upload");
        m
    }
    fn poison(&self) {
        // 0xFF bytes are NaN in f32, f16 and bf16.
        unsafe { result::memset_d8_sync(self.ptr, 0xFF, self.bytes) }.expect("memset");
    }
    fn download(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.bytes];
        unsafe { result::memcpy_dtoh_sync(&mut v, self.ptr) }.expect("download");
        v
    }
    fn cptr(&self) -> *const c_void {
        self.ptr as *const c_void
    }
    fn mptr(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A dense orthonormal basis: DCT-II rows with shuffled columns and random signs, scaled
/// eigenvalues decaying over the rank, and a random mean.
fn random_model(dim: usize, rank: usize, rng: &mut Rng) -> Model {
    let mut perm: Vec<usize> = (0..dim).collect();
    for i in (1..dim).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let signs: Vec<f64> = (0..dim)
        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    let mut eigvecs = vec![0f32; rank * dim];
    for k in 0..rank {
        let scale = if k == 0 {
            (1.0 / dim as f64).sqrt()
        } else {
            (2.0 / dim as f64).sqrt()
        };
        for j in 0..dim {
            let v = scale * (std::f64::consts::PI * (j as f64 + 0.5) * k as f64 / dim as f64).cos();
            eigvecs[k * dim + perm[j]] = (v * signs[j]) as f32;
        }
    }
    let eigvals: Vec<f64> = (0..rank)
        .map(|k| 20.0 * (-(k as f64) / (rank as f64 / 6.0)).exp() + 0.01)
        .collect();
    let mean: Vec<f32> = rng.normals(dim).iter().map(|v| (0.5 * v) as f32).collect();
    let residual_var = if rank < dim { 0.005 } else { 0.0 };
    Model::from_parts(mean, eigvals, eigvecs, residual_var, ModelMeta::default())
        .expect("valid model")
}

/// Host values of `dtype` as bytes, and the exact f64 values they hold.
fn encode(values: &[f64], dtype: Dtype) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = Vec::with_capacity(values.len() * dtype.size());
    let mut exact = Vec::with_capacity(values.len());
    for &v in values {
        match dtype {
            Dtype::F32 => {
                let h = v as f32;
                bytes.extend(h.to_le_bytes());
                exact.push(h as f64);
            }
            Dtype::F16 => {
                let h = f16::from_f64(v);
                bytes.extend(h.to_le_bytes());
                exact.push(h.to_f64());
            }
            Dtype::BF16 => {
                let h = bf16::from_f64(v);
                bytes.extend(h.to_le_bytes());
                exact.push(h.to_f64());
            }
        }
    }
    (bytes, exact)
}

fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f64> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
    }
}

/// SPEC §5 bound for a storage, plus the output type's unit roundoff.
fn tolerance(storage: EigvecStorage, dtype: Dtype) -> f64 {
    let compute = match storage {
        EigvecStorage::F16 => 2e-3,
        EigvecStorage::F32 => 1e-5,
    };
    let io = match dtype {
        Dtype::F32 => 0.0,
        Dtype::F16 => 2f64.powi(-11),
        Dtype::BF16 => 2f64.powi(-8),
    };
    compute + io
}

/// ‖out − ref‖/‖ref‖, failing on any non-finite output with its index.
fn rel_err(out: &[f64], reference: &[f64], what: &str) -> f64 {
    assert_eq!(out.len(), reference.len(), "{what}: output length");
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        panic!("{what}: output[{i}] = {} (unwritten or overflowed)", out[i]);
    }
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// Names the first element whose error is far above the average, to locate indexing bugs.
fn worst(out: &[f64], reference: &[f64], dim: usize) -> String {
    let (i, e) = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    format!(
        "max |err| {e:.3e} at row {} col {} (out {}, ref {})",
        i / dim,
        i % dim,
        out[i],
        reference[i]
    )
}

/// The operations every configuration runs: (label, op). Per-row levels borrow from `rows`.
fn operations<'a>(
    from_rows: &'a [Noise],
    to_rows: &'a [Noise],
    traj: &'a [Noise],
    long: &'a [Noise],
) -> Vec<(&'static str, Op<'a>)> {
    vec![
        (
            "skip edm 80->10",
            Op::Skip {
                from: Noise::edm(80.0).into(),
                to: Noise::edm(10.0).into(),
            },
        ),
        (
            "skip flow 1->0.3",
            Op::Skip {
                from: Noise::flow(1.0).into(),
                to: Noise::flow(0.3).into(),
            },
        ),
        (
            "skip per-row",
            Op::Skip {
                from: Levels::PerRow(from_rows),
                to: Levels::PerRow(to_rows),
            },
        ),
        (
            "denoise vp",
            Op::Denoise {
                at: Noise::vp(0.4).into(),
            },
        ),
        (
            "denoise per-row",
            Op::Denoise {
                at: Levels::PerRow(to_rows),
            },
        ),
        (
            "skip trajectory",
            Op::SkipTrajectory {
                from: Noise::edm(80.0).into(),
                levels: traj,
            },
        ),
        (
            "x0 trajectory (table)",
            Op::X0Trajectory {
                from: Levels::PerRow(from_rows),
                levels: long,
            },
        ),
    ]
}

#[test]
fn every_operation_matches_the_f64_reference() {
    let cases: &[(usize, usize, &[usize])] = &[
        (97, 97, &[1, 3, 17, 257]),
        (97, 33, &[1, 3, 17, 257]),
        (784, 784, &[1, 17]),
        (784, 100, &[1, 3, 17, 257]),
        (3073, 257, &[1, 3, 17]),
        (3073, 3073, &[1, 3]),
    ];
    let contexts: Vec<(EigvecStorage, Context)> =
        match (cuda(EigvecStorage::F16), cuda(EigvecStorage::F32)) {
            (Some(a), Some(b)) => vec![(EigvecStorage::F16, a), (EigvecStorage::F32, b)],
            _ => return,
        };
    let mut rng = Rng::new(0x5eed_c0da);
    let traj = [Noise::edm(40.0), Noise::edm(5.0), Noise::edm(0.0)];
    let long: Vec<Noise> = (0..20)
        .map(|i| Noise::edm(60.0 * (1.0 - i as f64 / 20.0)))
        .collect();
    let stream = result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream");
    let mut worst_seen: Vec<String> = Vec::new();
    for &(dim, rank, batches) in cases {
        let model = random_model(dim, rank, &mut rng);
        let g = Gaussian::from_model(&model);
        for &batch in batches {
            let from_rows: Vec<Noise> = (0..batch)
                .map(|_| Noise::edm(5.0 + 75.0 * rng.uniform()))
                .collect();
            let to_rows: Vec<Noise> = (0..batch)
                .map(|_| Noise::new(0.5 + rng.uniform(), 3.0 * rng.uniform()))
                .collect();
            let raw: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 30.0 * v).collect();
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let (xbytes, xexact) = encode(&raw, dtype);
                let dx = DevMem::upload(&xbytes);
                for (label, op) in operations(&from_rows, &to_rows, &traj, &long) {
                    let reference = g.apply(op, &xexact, batch).expect("reference");
                    for (storage, ctx) in &contexts {
                        let dout = DevMem::new(op.slabs() * batch * dim * dtype.size());
                        dout.poison();
                        unsafe {
                            ctx.apply_raw(
                                &model,
                                op,
                                dtype,
                                dx.cptr(),
                                dout.mptr(),
                                batch,
                                stream as *mut c_void,
                            )
                        }
                        .unwrap_or_else(|e| {
                            panic!("{label} d={dim} r={rank} b={batch} {dtype:?} {storage:?}: {e}")
                        });
                        unsafe { result::stream::synchronize(stream) }.expect("kernels ran");
                        let out = decode(&dout.download(), dtype);
                        let what = format!("{label} d={dim} r={rank} batch={batch} io={dtype:?} eigvecs={storage:?}");
                        let err = rel_err(&out, &reference, &what);
                        let tol = tolerance(*storage, dtype);
                        assert!(
                            err <= tol,
                            "{what}: relative error {err:.3e} > {tol:.1e}; {}",
                            worst(&out, &reference, dim)
                        );
                        worst_seen.push(format!("{what}: {err:.2e}"));
                    }
                }
            }
        }
    }
    eprintln!(
        "{} configurations within tolerance; last: {}",
        worst_seen.len(),
        worst_seen.last().unwrap()
    );
}

#[test]
fn host_buffers_on_a_cuda_context_match_the_cpu_context() {
    let Some(ctx) = cuda(EigvecStorage::F32) else {
        return;
    };
    let mut rng = Rng::new(11);
    let (dim, rank, batch) = (300, 77, 5);
    let model = random_model(dim, rank, &mut rng);
    let x: Vec<f32> = rng
        .normals(batch * dim)
        .iter()
        .map(|v| (20.0 * v) as f32)
        .collect();
    let mut gpu = vec![f32::NAN; batch * dim];
    let mut cpu = vec![f32::NAN; batch * dim];
    ctx.skip(&model, &x, &mut gpu, Noise::edm(20.0), Noise::edm(1.0))
        .expect("gpu");
    Context::cpu()
        .skip(&model, &x, &mut cpu, Noise::edm(20.0), Noise::edm(1.0))
        .expect("cpu");
    let a: Vec<f64> = gpu.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = cpu.iter().map(|&v| v as f64).collect();
    let err = rel_err(&a, &b, "host path");
    assert!(err <= 2e-5, "host path vs CPU: {err:.3e}");
}

#[test]
fn a_call_captured_in_a_cuda_graph_replays_on_new_inputs() {
    let Some(ctx) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(21);
    let (dim, rank, batch) = (1000, 200, 16);
    let model = random_model(dim, rank, &mut rng);
    let g = Gaussian::from_model(&model);
    let (from, to) = (Noise::edm(80.0), Noise::edm(8.0));
    let op = Op::Skip {
        from: from.into(),
        to: to.into(),
    };
    let stream = result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream");
    let s = stream as *mut c_void;
    let dx = DevMem::new(batch * dim * 4);
    let dout = DevMem::new(batch * dim * 4);

    // Before any warm-up the model is not on the device: capture must refuse cleanly.
    unsafe {
        result::stream::begin_capture(
            stream,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
        )
    }
    .unwrap();
    let refused =
        unsafe { ctx.apply_raw(&model, op, Dtype::F32, dx.cptr(), dout.mptr(), batch, s) };
    let graph = unsafe { result::stream::end_capture(stream) }
        .expect("capture stays valid after a refused call");
    unsafe { result::graph::destroy(graph) }.unwrap();
    assert!(
        matches!(refused, Err(Error::InvalidArgument { .. })),
        "got {refused:?}"
    );

    unsafe { ctx.prepare(&model, batch, 1, s) }.expect("prepare");
    unsafe {
        result::stream::begin_capture(
            stream,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
        )
    }
    .unwrap();
    unsafe { ctx.apply_raw(&model, op, Dtype::F32, dx.cptr(), dout.mptr(), batch, s) }
        .expect("captured call");
    let graph = unsafe { result::stream::end_capture(stream) }.expect("end capture");
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
        .expect("instantiate");
    for round in 0..3 {
        let raw: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 80.0 * v).collect();
        let (bytes, exact) = encode(&raw, Dtype::F32);
        unsafe { result::memcpy_htod_sync(dx.ptr, &bytes) }.unwrap();
        dout.poison();
        unsafe { result::graph::launch(exec, stream) }.expect("replay");
        unsafe { result::stream::synchronize(stream) }.expect("replay ran");
        let out = decode(&dout.download(), Dtype::F32);
        let reference = g.apply(op, &exact, batch).unwrap();
        let err = rel_err(&out, &reference, "graph replay");
        assert!(err <= 2e-3, "replay {round}: relative error {err:.3e}");
    }
    unsafe {
        result::graph::exec_destroy(exec).unwrap();
        result::graph::destroy(graph).unwrap();
    }
}

#[test]
fn two_streams_in_flight_do_not_share_scratch() {
    let Some(ctx) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(31);
    let (dim, rank, batch) = (2049, 512, 3);
    let model = random_model(dim, rank, &mut rng);
    let g = Gaussian::from_model(&model);
    let streams = [
        result::stream::create(result::stream::StreamKind::NonBlocking).unwrap(),
        result::stream::create(result::stream::StreamKind::NonBlocking).unwrap(),
    ];
    let ops = [
        Op::Skip {
            from: Noise::edm(80.0).into(),
            to: Noise::edm(2.0).into(),
        },
        Op::Denoise {
            at: Noise::flow(0.6).into(),
        },
    ];
    let inputs: Vec<(DevMem, Vec<f64>)> = (0..2)
        .map(|_| {
            let raw: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 50.0 * v).collect();
            let (bytes, exact) = encode(&raw, Dtype::F32);
            (DevMem::upload(&bytes), exact)
        })
        .collect();
    let outs: Vec<DevMem> = (0..2).map(|_| DevMem::new(batch * dim * 4)).collect();
    for (i, s) in streams.iter().enumerate() {
        unsafe { ctx.prepare(&model, batch, 1, *s as *mut c_void) }.unwrap();
        outs[i].poison();
    }
    // Interleave many calls on both streams without waiting: each stream's last call wins.
    for _ in 0..50 {
        for i in 0..2 {
            unsafe {
                ctx.apply_raw(
                    &model,
                    ops[i],
                    Dtype::F32,
                    inputs[i].0.cptr(),
                    outs[i].mptr(),
                    batch,
                    streams[i] as *mut c_void,
                )
            }
            .expect("call");
        }
    }
    for (i, s) in streams.iter().enumerate() {
        unsafe { result::stream::synchronize(*s) }.unwrap();
        let out = decode(&outs[i].download(), Dtype::F32);
        let reference = g.apply(ops[i], &inputs[i].1, batch).unwrap();
        let err = rel_err(&out, &reference, "two streams");
        assert!(err <= 2e-3, "stream {i}: relative error {err:.3e}");
    }
}

#[test]
fn bad_pointers_and_sizes_are_clear_errors_and_write_nothing() {
    let Some(ctx) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(41);
    let (dim, rank, batch) = (128, 16, 4);
    let model = random_model(dim, rank, &mut rng);
    let op = Op::Skip {
        from: Noise::edm(10.0).into(),
        to: Noise::edm(1.0).into(),
    };
    let dx = DevMem::upload(&encode(&rng.normals(batch * dim), Dtype::F32).0);
    let dout = DevMem::new(batch * dim * 4);
    dout.poison();
    let host = vec![0f32; batch * dim];
    let e = unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            host.as_ptr() as *const c_void,
            dout.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    };
    assert!(
        matches!(e, Err(Error::InvalidArgument { arg: "x", .. })),
        "host x: {e:?}"
    );
    let small = DevMem::new(batch * dim * 4 / 2);
    let e = unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            dx.cptr(),
            small.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    };
    assert!(
        matches!(e, Err(Error::ShapeMismatch { arg: "out", .. })),
        "short out: {e:?}"
    );
    let bad = Op::Skip {
        from: Noise::edm(0.0).into(),
        to: Noise::edm(1.0).into(),
    };
    let e = unsafe {
        ctx.apply_raw(
            &model,
            bad,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    };
    assert!(
        matches!(e, Err(Error::InvalidNoise { .. })),
        "sigma_s = 0: {e:?}"
    );
    assert!(
        decode(&dout.download(), Dtype::F32)
            .iter()
            .all(|v| v.is_nan()),
        "out was written on error"
    );
    let e = Context::new(Device::Cuda, 4096).expect_err("no such device");
    assert!(matches!(e, Error::NoCuda(_)), "{e:?}");
}

#[test]
fn cuda_is_reported_clearly_and_auto_stays_on_the_cpu() {
    assert_eq!(Context::new(Device::Auto, 0).unwrap().device(), Device::Cpu);
    match Context::new(Device::Cuda, 0) {
        Ok(ctx) => {
            assert_eq!(ctx.device(), Device::Cuda);
            assert!(ctx.device_name().is_some_and(|n| !n.is_empty()));
        }
        Err(Error::NoCuda(msg)) => {
            assert!(!msg.is_empty());
            eprintln!("skipped: no CUDA device ({msg})");
        }
        Err(other) => panic!("a missing GPU must be NoCuda, got {other:?}"),
    }
}
