//! GPU tests of the CUDA backend against the f64 reference (`gaussskip::reference::Gaussian`).
//!
//! Every operation (skip, denoise, both with uniform and per-row levels, skip trajectory,
//! x0 trajectory with more levels than fit in the kernel arguments) at odd sizes (dim not a
//! multiple of 16/32/64, rank < dim and rank = dim, batch 1, 3, 17, 257), f32/f16/bf16 I/O,
//! f16 and f32 eigenvector storage, a decaying and a flat spectrum, on fresh random inputs with
//! NaN-poisoned outputs and NaN-poisoned scratch. Checked per row, not per call: the row's
//! relative error within SPEC §5 (2e-3 with f16 eigenvectors, 1e-5 with f32, plus the output
//! type's rounding), and, for rank < dim, the row's correction out - (a mean + b y) within its
//! own bound (4e-3 / 2e-5 relative to itself), so a kernel that drops modes, a split or a row's
//! correction fails even where those carry little of the output.
//!
//! Also: graph capture the way PyTorch does it (warm-up on one stream, capture on another, no
//! other call), replays after a larger eager call, two graphs replayed concurrently; two streams
//! and per-thread default streams in flight; the caller's current context restored; virtual-
//! memory buffers crossing a mapping chunk; values near the f16 range; the precision bound;
//! device copies freed with their model; a model wider than 4.19 M dims; bad pointers and sizes.
//!
//! The comparisons run both kernel generations (version 1 and version 2, switched with
//! `Context::set_kernel_version`) on the same inputs.
//!
//! Run single-threaded on a GPU (`--test-threads=1`): the graph tests capture in global mode.
//!
//! Without a usable GPU every test prints "skipped: no CUDA device (reason)" and passes; set
//! GAUSSSKIP_REQUIRE_CUDA=1 to make that a failure (scripts/device_build.sh's run_gpu.sh does).
#![cfg(feature = "cuda")]

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use gaussskip::context::EigvecStorage;
use gaussskip::reference::Gaussian;
use gaussskip::rng::Rng;
use gaussskip::{
    Context, Device, Dtype, Error, KernelVersion, Levels, Model, ModelMeta, Noise, Op, Splits,
};
use half::{bf16, f16};

/// Both kernel generations, for the comparisons.
const VERSIONS: [KernelVersion; 2] = [KernelVersion::V1, KernelVersion::V2];

/// A CUDA context and the device's primary context made current on this thread (the tests'
/// own allocations need it), or None after printing why the test is skipped.
fn cuda(storage: EigvecStorage) -> Option<(Context, Arc<CudaContext>)> {
    match Context::cuda(0, storage) {
        Ok(ctx) => {
            let primary = CudaContext::new(0).expect("the primary context");
            primary.bind_to_thread().expect("bind");
            Some((ctx, primary))
        }
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

/// Device memory for a test, freed on drop (primary context current).
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

fn stream() -> sys::CUstream {
    result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream")
}

/// A dense orthonormal basis (DCT-II rows, shuffled columns, random signs), a random mean, and
/// eigenvalues decaying over the rank or flat (4 down to 2: every mode carries weight).
fn random_model(dim: usize, rank: usize, flat: bool, rng: &mut Rng) -> Model {
    let mut perm: Vec<usize> = (0..dim).collect();
    for i in (1..dim).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let signs: Vec<f64> = (0..dim)
        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    let mut eigvecs = vec![0f32; rank * dim];
    for k in 0..rank {
        let scale = (if k == 0 { 1.0 } else { 2.0 } / dim as f64).sqrt();
        for j in 0..dim {
            let v = scale * (std::f64::consts::PI * (j as f64 + 0.5) * k as f64 / dim as f64).cos();
            eigvecs[k * dim + perm[j]] = (v * signs[j]) as f32;
        }
    }
    let eigvals: Vec<f64> = (0..rank)
        .map(|k| {
            if flat {
                4.0 - 2.0 * k as f64 / rank as f64
            } else {
                20.0 * (-(k as f64) / (rank as f64 / 6.0)).exp() + 0.01
            }
        })
        .collect();
    let mean: Vec<f32> = rng.normals(dim).iter().map(|v| (0.5 * v) as f32).collect();
    let residual_var = match (rank < dim, flat) {
        (false, _) => 0.0,
        (true, false) => 0.005,
        (true, true) => 0.5,
    };
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

/// SPEC §5 bound of a storage, and the bound of the correction alone.
fn bounds(storage: EigvecStorage) -> (f64, f64) {
    match storage {
        EigvecStorage::F16 => (2e-3, 4e-3),
        EigvecStorage::F32 => (1e-5, 2e-5),
    }
}

/// Unit roundoff of an output type (0 for f32: the contract covers it).
fn io_unit(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 0.0,
        Dtype::F16 => 2f64.powi(-11),
        Dtype::BF16 => 2f64.powi(-8),
    }
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|a| a * a).sum::<f64>().sqrt()
}

/// Checks `out` row by row against the reference, and (with `plan`, for rank < dim) each row's
/// correction out - (a mean + b y) against U(w .* U^T y). Panics naming the first bad row.
#[allow(clippy::too_many_arguments)]
fn check_rows(
    what: &str,
    out: &[f64],
    reference: &[f64],
    x: &[f64],
    model: &Model,
    op: Op<'_>,
    batch: usize,
    storage: EigvecStorage,
    dtype: Dtype,
) -> f64 {
    let d = model.dim();
    assert_eq!(out.len(), reference.len(), "{what}: output length");
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: output[{i}] (row {}) = {} (unwritten or overflowed)",
            i / d,
            out[i]
        );
    }
    let (tol, tol_corr) = bounds(storage);
    let io = io_unit(dtype);
    let plan = (model.rank() < d).then(|| {
        op.plan(model.eigvals(), model.residual_var(), batch)
            .expect("plan")
    });
    let mean = model.mean();
    let mut worst = 0f64;
    for (row, (o, r)) in out.chunks(d).zip(reference.chunks(d)).enumerate() {
        let err = norm(o.iter().zip(r).map(|(a, b)| a - b)) / norm(r.iter().copied());
        assert!(
            err <= tol + io,
            "{what}: row {row} relative error {err:.3e} > {:.1e}",
            tol + io
        );
        worst = worst.max(err);
        if let Some(plan) = &plan {
            let (s, i) = (row / batch, row % batch);
            let (a, b, c) = (plan.slabs[s].a[i], plan.slabs[s].b[i], plan.c[i]);
            let base = |j: usize| {
                let m = f64::from(mean[j]);
                a * m + b * (x[i * d + j] - c * m)
            };
            let want = norm((0..d).map(|j| r[j] - base(j)));
            let miss = norm((0..d).map(|j| (o[j] - base(j)) - (r[j] - base(j))));
            let bound = tol_corr * want + io * norm(o.iter().copied());
            assert!(
                miss <= bound,
                "{what}: row {row} correction off by {:.3e} of itself (bound {:.1e})",
                miss / want,
                bound / want
            );
        }
    }
    worst
}

/// A skip and a denoise, for the tests that run two things at once.
fn two_ops() -> [Op<'static>; 2] {
    [
        Op::Skip {
            from: Noise::edm(80.0).into(),
            to: Noise::edm(2.0).into(),
        },
        Op::Denoise {
            at: Noise::flow(0.6).into(),
        },
    ]
}

/// Two f32 inputs of `n` values: bytes and exact values.
fn two_inputs(n: usize, rng: &mut Rng) -> Vec<(Vec<u8>, Vec<f64>)> {
    (0..2)
        .map(|_| {
            let raw: Vec<f64> = rng.normals(n).iter().map(|v| 50.0 * v).collect();
            encode(&raw, Dtype::F32)
        })
        .collect()
}

/// Waits for `streams[i]` and checks `outs[i]` (f32, f16 eigenvectors) against `ops[i]` on
/// `inputs[i]`, for each i.
fn check_streams(
    label: &str,
    streams: &[sys::CUstream],
    outs: &[DevMem],
    inputs: &[(Vec<u8>, Vec<f64>)],
    model: &Model,
    ops: &[Op<'_>],
    batch: usize,
) {
    let g = Gaussian::from_model(model);
    for i in 0..streams.len() {
        unsafe { result::stream::synchronize(streams[i]) }.unwrap();
        let out = decode(&outs[i].download(), Dtype::F32);
        let reference = g.apply(ops[i], &inputs[i].1, batch).unwrap();
        check_rows(
            &format!("{label} {i}"),
            &out,
            &reference,
            &inputs[i].1,
            model,
            ops[i],
            batch,
            EigvecStorage::F16,
            Dtype::F32,
        );
    }
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
fn every_operation_matches_the_f64_reference_row_by_row() {
    let cases: &[(usize, usize, bool, &[usize])] = &[
        (97, 97, false, &[1, 3, 17, 257]),
        (97, 33, false, &[1, 3, 17, 257]),
        (97, 33, true, &[1, 17, 257]),
        (784, 784, false, &[1, 17]),
        (784, 100, false, &[1, 3, 17, 257]),
        (784, 100, true, &[1, 257]),
        (3073, 257, false, &[1, 3, 17]),
        (3073, 257, true, &[3]),
        (3073, 3073, false, &[1, 3]),
    ];
    let Some((f16ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let f32ctx = Context::cuda(0, EigvecStorage::F32).expect("f32 context");
    let contexts = [(EigvecStorage::F16, f16ctx), (EigvecStorage::F32, f32ctx)];
    for (_, ctx) in &contexts {
        ctx.debug_poison_scratch(true);
    }
    let mut rng = Rng::new(0x5eed_c0da);
    let traj = [Noise::edm(40.0), Noise::edm(5.0), Noise::edm(0.0)];
    let long: Vec<Noise> = (0..20)
        .map(|i| Noise::edm(60.0 * (1.0 - i as f64 / 20.0)))
        .collect();
    let s = stream();
    let mut configurations = 0;
    for &(dim, rank, flat, batches) in cases {
        let model = random_model(dim, rank, flat, &mut rng);
        let g = Gaussian::from_model(&model);
        for &batch in batches {
            let from_rows: Vec<Noise> = (0..batch)
                .map(|_| Noise::edm(5.0 + 75.0 * rng.uniform()))
                .collect();
            let to_rows: Vec<Noise> = (0..batch)
                .map(|_| Noise::new(0.5 + rng.uniform(), 0.2 + 3.0 * rng.uniform()))
                .collect();
            let raw: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 30.0 * v).collect();
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let (xbytes, xexact) = encode(&raw, dtype);
                let dx = DevMem::upload(&xbytes);
                for (label, op) in operations(&from_rows, &to_rows, &traj, &long) {
                    let reference = g.apply(op, &xexact, batch).expect("reference");
                    for ((storage, ctx), version) in contexts
                        .iter()
                        .flat_map(|c| VERSIONS.iter().map(move |&v| (c, v)))
                    {
                        ctx.set_kernel_version(version);
                        let dout = DevMem::new(op.slabs() * batch * dim * dtype.size());
                        dout.poison();
                        let what = format!(
                            "{label} d={dim} r={rank}{} b={batch} io={dtype:?} eigvecs={storage:?} kernels={version:?}",
                            if flat { " flat" } else { "" }
                        );
                        let run = unsafe {
                            ctx.apply_raw(
                                &model,
                                op,
                                dtype,
                                dx.cptr(),
                                dout.mptr(),
                                batch,
                                s as *mut c_void,
                            )
                        };
                        match run {
                            Ok(()) => {}
                            // the precision bound may refuse a per-row inversion: that is the
                            // contract, tested on its own below
                            Err(Error::InvalidNoise { .. }) if label.contains("per-row") => {
                                continue
                            }
                            Err(e) => panic!("{what}: {e}"),
                        }
                        unsafe { result::stream::synchronize(s) }.expect("kernels ran");
                        let out = decode(&dout.download(), dtype);
                        check_rows(
                            &what, &out, &reference, &xexact, &model, op, batch, *storage, dtype,
                        );
                        configurations += 1;
                    }
                }
            }
        }
    }
    eprintln!("{configurations} configurations within tolerance, row by row");
}

/// Small shapes that reach every code path once (both storages, every tile height, split-K in
/// both launches, level tables, f16/bf16 rows), cheap enough for compute-sanitizer's memcheck,
/// racecheck and synccheck (`.carry/run_gpu.sh` runs it under each).
#[test]
fn small_shapes_for_the_sanitizers() {
    let Some((f16ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let f32ctx = Context::cuda(0, EigvecStorage::F32).expect("f32 context");
    let mut rng = Rng::new(7);
    let traj: Vec<Noise> = (0..18).map(|i| Noise::edm(60.0 - 3.0 * i as f64)).collect();
    for &(dim, rank, batch, dtype) in &[
        (97usize, 33usize, 3usize, Dtype::F32),
        (130, 130, 130, Dtype::F16),
        (200, 70, 65, Dtype::BF16),
    ] {
        let model = random_model(dim, rank, true, &mut rng);
        let g = Gaussian::from_model(&model);
        let rows: Vec<Noise> = (0..batch).map(|i| Noise::edm(20.0 + i as f64)).collect();
        let (bytes, exact) = encode(
            &rng.normals(batch * dim)
                .iter()
                .map(|v| 20.0 * v)
                .collect::<Vec<_>>(),
            dtype,
        );
        let dx = DevMem::upload(&bytes);
        let ops = [
            Op::Skip {
                from: Levels::PerRow(&rows),
                to: Noise::edm(2.0).into(),
            },
            Op::X0Trajectory {
                from: Noise::edm(80.0).into(),
                levels: &traj,
            },
        ];
        for (op, version) in ops
            .into_iter()
            .flat_map(|op| VERSIONS.map(move |v| (op, v)))
        {
            for (storage, ctx) in [(EigvecStorage::F16, &f16ctx), (EigvecStorage::F32, &f32ctx)] {
                ctx.set_kernel_version(version);
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
                        std::ptr::null_mut(),
                    )
                }
                .expect("call");
                unsafe { result::stream::synchronize(std::ptr::null_mut()) }.unwrap();
                let reference = g.apply(op, &exact, batch).unwrap();
                let what = format!(
                    "sanitizer shape d={dim} r={rank} b={batch} {dtype:?} {storage:?} {version:?}"
                );
                check_rows(
                    &what,
                    &decode(&dout.download(), dtype),
                    &reference,
                    &exact,
                    &model,
                    op,
                    batch,
                    storage,
                    dtype,
                );
            }
        }
    }
}

#[test]
fn host_buffers_on_a_cuda_context_match_the_cpu_context() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F32) else {
        return;
    };
    let mut rng = Rng::new(11);
    let (dim, rank, batch) = (300, 77, 5);
    let model = random_model(dim, rank, false, &mut rng);
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
    for (row, (a, b)) in gpu.chunks(dim).zip(cpu.chunks(dim)).enumerate() {
        let err = norm(a.iter().zip(b).map(|(p, q)| f64::from(p - q)))
            / norm(b.iter().map(|&v| f64::from(v)));
        assert!(err <= 2e-5, "host path row {row} vs CPU: {err:.3e}");
    }
}

/// Begins a global-mode capture on `s`.
fn begin(s: sys::CUstream) {
    unsafe {
        result::stream::begin_capture(s, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
    }
    .expect("begin capture");
}

/// Ends the capture on `s` and instantiates it.
fn end(s: sys::CUstream) -> (sys::CUgraph, sys::CUgraphExec) {
    let graph = unsafe { result::stream::end_capture(s) }.expect("end capture");
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
        .expect("instantiate");
    (graph, exec)
}

#[test]
fn pytorch_style_capture_needs_only_a_warm_up_and_survives_larger_eager_calls() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    ctx.debug_poison_scratch(true);
    let mut rng = Rng::new(21);
    let (dim, rank, batch) = (1000, 200, 16);
    let model = random_model(dim, rank, false, &mut rng);
    let g = Gaussian::from_model(&model);
    let op = Op::Skip {
        from: Noise::edm(80.0).into(),
        to: Noise::edm(8.0).into(),
    };
    let (warm, capture) = (stream(), stream());
    let dx = DevMem::new(batch * dim * 4);
    let dout = DevMem::new(batch * dim * 4);

    // Before any call the model is not on the device: capture refuses cleanly and stays valid.
    begin(capture);
    let refused = unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            capture as *mut c_void,
        )
    };
    let (graph, exec) = end(capture);
    unsafe {
        result::graph::exec_destroy(exec).unwrap();
        result::graph::destroy(graph).unwrap();
    }
    assert!(
        matches!(&refused, Err(Error::InvalidArgument { reason, .. }) if reason.contains("before capturing")),
        "got {refused:?}"
    );

    // PyTorch's recipe: warm up on a side stream, then capture on another one. No prepare.
    dx.poison();
    unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            warm as *mut c_void,
        )
    }
    .expect("warm-up");
    unsafe { result::stream::synchronize(warm) }.unwrap();
    begin(capture);
    unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            capture as *mut c_void,
        )
    }
    .expect("captured call");
    let (graph, exec) = end(capture);

    let replay_and_check = |round: usize, rng: &mut Rng| {
        let raw: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 80.0 * v).collect();
        let (bytes, exact) = encode(&raw, Dtype::F32);
        unsafe { result::memcpy_htod_sync(dx.ptr, &bytes) }.unwrap();
        dout.poison();
        unsafe { result::graph::launch(exec, capture) }.expect("replay");
        unsafe { result::stream::synchronize(capture) }.expect("replay ran");
        let out = decode(&dout.download(), Dtype::F32);
        let reference = g.apply(op, &exact, batch).unwrap();
        check_rows(
            &format!("replay {round}"),
            &out,
            &reference,
            &exact,
            &model,
            op,
            batch,
            EigvecStorage::F16,
            Dtype::F32,
        );
    };
    replay_and_check(0, &mut rng);
    // A much larger eager call in between must not disturb the graph's scratch.
    let big = 257;
    let bx = DevMem::upload(&encode(&rng.normals(big * dim), Dtype::F32).0);
    let bout = DevMem::new(20 * big * dim * 4);
    let long: Vec<Noise> = (0..20).map(|i| Noise::edm(60.0 - 3.0 * i as f64)).collect();
    let big_op = Op::SkipTrajectory {
        from: Noise::edm(80.0).into(),
        levels: &long,
    };
    unsafe {
        ctx.apply_raw(
            &model,
            big_op,
            Dtype::F32,
            bx.cptr(),
            bout.mptr(),
            big,
            warm as *mut c_void,
        )
    }
    .expect("large eager call");
    unsafe { result::stream::synchronize(warm) }.unwrap();
    for round in 1..4 {
        replay_and_check(round, &mut rng);
    }
    unsafe {
        result::graph::exec_destroy(exec).unwrap();
        result::graph::destroy(graph).unwrap();
    }
}

#[test]
fn two_graphs_replayed_concurrently_do_not_share_scratch() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(22);
    let (dim, rank, batch) = (2049, 512, 3);
    let model = random_model(dim, rank, true, &mut rng);
    let ops = two_ops();
    let streams = [stream(), stream()];
    let inputs = two_inputs(batch * dim, &mut rng);
    let dx: Vec<DevMem> = inputs.iter().map(|(b, _)| DevMem::upload(b)).collect();
    let outs: Vec<DevMem> = (0..2).map(|_| DevMem::new(batch * dim * 4)).collect();
    let mut execs = Vec::new();
    for i in 0..2 {
        unsafe { ctx.prepare(&model, batch, 1, streams[i] as *mut c_void) }.expect("prepare");
        begin(streams[i]);
        unsafe {
            ctx.apply_raw(
                &model,
                ops[i],
                Dtype::F32,
                dx[i].cptr(),
                outs[i].mptr(),
                batch,
                streams[i] as *mut c_void,
            )
        }
        .expect("captured");
        execs.push(end(streams[i]));
    }
    for o in &outs {
        o.poison();
    }
    for _ in 0..50 {
        for i in 0..2 {
            unsafe { result::graph::launch(execs[i].1, streams[i]) }.expect("replay");
        }
    }
    check_streams("graph", &streams, &outs, &inputs, &model, &ops, batch);
    for (graph, exec) in execs {
        unsafe {
            result::graph::exec_destroy(exec).unwrap();
            result::graph::destroy(graph).unwrap();
        }
    }
}

#[test]
fn streams_in_flight_and_per_thread_default_streams_do_not_share_scratch() {
    let Some((ctx, primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    ctx.debug_poison_scratch(true);
    let ctx = Arc::new(ctx);
    let mut rng = Rng::new(31);
    let (dim, rank, batch) = (2049, 512, 3);
    let model = Arc::new(random_model(dim, rank, true, &mut rng));
    let g = Gaussian::from_model(&model);
    let ops = two_ops();
    let inputs = two_inputs(batch * dim, &mut rng);
    // Two explicit streams, interleaved without waiting: each stream's last call wins.
    let streams = [stream(), stream()];
    let dx: Vec<DevMem> = inputs.iter().map(|(b, _)| DevMem::upload(b)).collect();
    let outs: Vec<DevMem> = (0..2).map(|_| DevMem::new(batch * dim * 4)).collect();
    for o in &outs {
        o.poison();
    }
    for _ in 0..50 {
        for i in 0..2 {
            unsafe {
                ctx.apply_raw(
                    &model,
                    ops[i],
                    Dtype::F32,
                    dx[i].cptr(),
                    outs[i].mptr(),
                    batch,
                    streams[i] as *mut c_void,
                )
            }
            .expect("call");
        }
    }
    check_streams("stream", &streams, &outs, &inputs, &model, &ops, batch);
    // Two threads on cudaStreamPerThread (the same handle, different streams).
    const PER_THREAD: usize = 2; // CU_STREAM_PER_THREAD
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (ctx, model, primary) = (ctx.clone(), model.clone(), primary.clone());
            let (bytes, exact) = inputs[i].clone();
            let op = ops[i];
            std::thread::spawn(move || {
                primary.bind_to_thread().unwrap();
                let dx = DevMem::upload(&bytes);
                let out = DevMem::new(batch * dim * 4);
                out.poison();
                for _ in 0..50 {
                    unsafe {
                        ctx.apply_raw(
                            &model,
                            op,
                            Dtype::F32,
                            dx.cptr(),
                            out.mptr(),
                            batch,
                            PER_THREAD as *mut c_void,
                        )
                    }
                    .expect("per-thread call");
                }
                unsafe { result::stream::synchronize(PER_THREAD as sys::CUstream) }.unwrap();
                (decode(&out.download(), Dtype::F32), exact)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (out, exact) = h.join().expect("thread");
        let reference = g.apply(ops[i], &exact, batch).unwrap();
        check_rows(
            &format!("per-thread stream {i}"),
            &out,
            &reference,
            &exact,
            &model,
            ops[i],
            batch,
            EigvecStorage::F16,
            Dtype::F32,
        );
    }
}

#[test]
fn the_callers_current_context_is_restored() {
    let Some((ctx, primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(51);
    let (dim, rank, batch) = (256, 32, 2);
    let model = random_model(dim, rank, false, &mut rng);
    let dx = DevMem::upload(&encode(&rng.normals(batch * dim), Dtype::F32).0);
    let dout = DevMem::new(batch * dim * 4);
    // Another context current on this thread, as a multi-GPU caller would have.
    let other = CudaContext::new_non_primary(0, 0).expect("a second context");
    other.bind_to_thread().unwrap();
    let current = || {
        let mut c: sys::CUcontext = std::ptr::null_mut();
        unsafe { sys::cuCtxGetCurrent(&mut c) };
        c
    };
    let before = current();
    assert_eq!(before, other.cu_ctx());
    unsafe {
        ctx.apply_raw(
            &model,
            Op::Denoise {
                at: Noise::edm(3.0).into(),
            },
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    }
    .expect("call");
    assert_eq!(current(), before, "the call changed the current context");
    unsafe { ctx.prepare(&model, batch, 1, std::ptr::null_mut()) }.unwrap();
    ctx.release_model(&model).unwrap();
    assert_eq!(
        current(),
        before,
        "prepare/release changed the current context"
    );
    primary.bind_to_thread().unwrap();
}

#[test]
fn buffers_crossing_virtual_memory_chunks_are_accepted() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F32) else {
        return;
    };
    // Two physical chunks mapped back to back, as PyTorch's expandable segments do.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    let mut gran = 0usize;
    unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut gran,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
        .result()
        .unwrap()
    };
    let mut base: sys::CUdeviceptr = 0;
    unsafe {
        sys::cuMemAddressReserve(&mut base, 2 * gran, 0, 0, 0)
            .result()
            .unwrap()
    };
    let mut handles = [0 as sys::CUmemGenericAllocationHandle; 2];
    for (i, h) in handles.iter_mut().enumerate() {
        unsafe {
            sys::cuMemCreate(h, gran, &prop, 0).result().unwrap();
            sys::cuMemMap(base + (i * gran) as u64, gran, 0, *h, 0)
                .result()
                .unwrap();
        }
    }
    let access = sys::CUmemAccessDesc {
        location: prop.location,
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    unsafe {
        sys::cuMemSetAccess(base, 2 * gran, &access, 1)
            .result()
            .unwrap()
    };

    let mut rng = Rng::new(61);
    let (dim, rank) = (1000, 50);
    let batch = gran / (dim * 4); // x fills the first chunk; out starts there and crosses into the second
    let model = random_model(dim, rank, false, &mut rng);
    let op = Op::Denoise {
        at: Noise::edm(2.0).into(),
    };
    let (bytes, exact) = encode(&rng.normals(batch * dim), Dtype::F32);
    let x = base;
    let out = base + (batch * dim * 4) as u64;
    assert!(
        out + (batch * dim * 4) as u64 > base + gran as u64,
        "out crosses the chunk boundary"
    );
    unsafe { result::memcpy_htod_sync(x, &bytes) }.unwrap();
    unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            x as *const c_void,
            out as *mut c_void,
            batch,
            std::ptr::null_mut(),
        )
    }
    .expect("a buffer across two mapped chunks is valid");
    let mut got = vec![0u8; batch * dim * 4];
    unsafe { result::stream::synchronize(std::ptr::null_mut()) }.unwrap();
    unsafe { result::memcpy_dtoh_sync(&mut got, out) }.unwrap();
    let reference = Gaussian::from_model(&model)
        .apply(op, &exact, batch)
        .unwrap();
    check_rows(
        "vmm",
        &decode(&got, Dtype::F32),
        &reference,
        &exact,
        &model,
        op,
        batch,
        EigvecStorage::F32,
        Dtype::F32,
    );
    // A buffer running past the mapping is still refused.
    let e = unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            x as *const c_void,
            (base + gran as u64) as *mut c_void,
            2 * batch,
            std::ptr::null_mut(),
        )
    };
    assert!(e.is_err(), "a buffer past the mapping was accepted");
    unsafe {
        sys::cuMemUnmap(base, 2 * gran);
        for h in handles {
            sys::cuMemRelease(h);
        }
        sys::cuMemAddressFree(base, 2 * gran);
    }
}

#[test]
fn values_near_the_f16_range_stay_finite_and_accurate() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(71);
    for (dim, rank, scale, dtype) in [
        (512, 512, 1e6, Dtype::F32),
        (512, 100, 1e6, Dtype::F32),
        (300, 300, 2e4, Dtype::F16),
    ] {
        let model = random_model(dim, rank, false, &mut rng);
        let batch = 3;
        // f16 rows as large as the type holds; f32 rows far beyond it
        let raw: Vec<f64> = rng
            .normals(batch * dim)
            .iter()
            .map(|v| {
                if dtype == Dtype::F16 {
                    (scale * v).clamp(-6e4, 6e4)
                } else {
                    scale * v
                }
            })
            .collect();
        let (bytes, exact) = encode(&raw, dtype);
        let dx = DevMem::upload(&bytes);
        // a forward jump from far away, and a full-rank inversion 0.002 -> 80 (gains up to 4e4)
        let ops = [
            Op::Skip {
                from: Noise::edm(80.0).into(),
                to: Noise::edm(5.0).into(),
            },
            Op::Skip {
                from: Noise::edm(0.002).into(),
                to: Noise::edm(80.0).into(),
            },
        ];
        for (op, version) in ops
            .into_iter()
            .flat_map(|op| VERSIONS.map(move |v| (op, v)))
        {
            ctx.set_kernel_version(version);
            let dout = DevMem::new(batch * dim * dtype.size());
            dout.poison();
            let r = unsafe {
                ctx.apply_raw(
                    &model,
                    op,
                    dtype,
                    dx.cptr(),
                    dout.mptr(),
                    batch,
                    std::ptr::null_mut(),
                )
            };
            if rank < dim && matches!(op, Op::Skip { to: Levels::One(n), .. } if n.sigma == 80.0) {
                assert!(
                    matches!(r, Err(Error::InvalidNoise { .. })),
                    "low-rank renoising must be refused on f16: {r:?}"
                );
                continue;
            }
            r.unwrap_or_else(|e| panic!("d={dim} r={rank} {op:?}: {e}"));
            unsafe { result::stream::synchronize(std::ptr::null_mut()) }.unwrap();
            let out = decode(&dout.download(), dtype);
            let reference = Gaussian::from_model(&model)
                .apply(op, &exact, batch)
                .unwrap();
            check_rows(
                &format!("range d={dim} r={rank} x~{scale:e} {op:?} {version:?}"),
                &out,
                &reference,
                &exact,
                &model,
                op,
                batch,
                EigvecStorage::F16,
                dtype,
            );
        }
    }
}

#[test]
fn the_precision_bound_refuses_what_the_arithmetic_cannot_carry() {
    let Some((f16ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let f32ctx = Context::cuda(0, EigvecStorage::F32).unwrap();
    let mut rng = Rng::new(81);
    let (dim, rank, batch) = (400, 100, 4);
    let model = random_model(dim, rank, false, &mut rng);
    let g = Gaussian::from_model(&model);
    let (bytes, exact) = encode(&rng.normals(batch * dim), Dtype::F32);
    let dx = DevMem::upload(&bytes);
    let dout = DevMem::new(batch * dim * 4);
    dout.poison();
    let renoise = Op::Skip {
        from: Noise::edm(0.002).into(),
        to: Noise::edm(80.0).into(),
    };
    for ctx in [&f16ctx, &f32ctx] {
        let e = unsafe {
            ctx.apply_raw(
                &model,
                renoise,
                Dtype::F32,
                dx.cptr(),
                dout.mptr(),
                batch,
                std::ptr::null_mut(),
            )
        };
        assert!(matches!(e, Err(Error::InvalidNoise { .. })), "{e:?}");
    }
    assert!(
        decode(&dout.download(), Dtype::F32)
            .iter()
            .all(|v| v.is_nan()),
        "out was written"
    );
    // a mild inversion: refused with f16 eigenvectors, accepted and within 1e-5 with f32
    let mild = Op::Skip {
        from: Noise::edm(0.5).into(),
        to: Noise::edm(10.0).into(),
    };
    let e = unsafe {
        f16ctx.apply_raw(
            &model,
            mild,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    };
    assert!(matches!(e, Err(Error::InvalidNoise { .. })), "{e:?}");
    unsafe {
        f32ctx.apply_raw(
            &model,
            mild,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            batch,
            std::ptr::null_mut(),
        )
    }
    .expect("accepted on f32");
    unsafe { result::stream::synchronize(std::ptr::null_mut()) }.unwrap();
    let reference = g.apply(mild, &exact, batch).unwrap();
    check_rows(
        "mild inversion f32",
        &decode(&dout.download(), Dtype::F32),
        &reference,
        &exact,
        &model,
        mild,
        batch,
        EigvecStorage::F32,
        Dtype::F32,
    );
}

#[test]
fn device_copies_are_freed_with_their_model() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(91);
    let (dim, batch) = (512, 2);
    let dx = DevMem::upload(&encode(&rng.normals(batch * dim), Dtype::F32).0);
    let dout = DevMem::new(batch * dim * 4);
    assert_eq!(ctx.models_on_device(), 0);
    let idle = ctx.device_bytes_in_use();
    for round in 0..3 {
        let model = random_model(dim, 256, false, &mut rng);
        unsafe {
            ctx.apply_raw(
                &model,
                Op::Denoise {
                    at: Noise::edm(1.0).into(),
                },
                Dtype::F32,
                dx.cptr(),
                dout.mptr(),
                batch,
                std::ptr::null_mut(),
            )
        }
        .expect("call");
        assert_eq!(ctx.models_on_device(), 1, "round {round}");
        assert!(
            ctx.device_bytes_in_use() >= idle + 256 * 512 * 2,
            "round {round}: the model is on the device"
        );
        drop(model);
        assert_eq!(
            ctx.models_on_device(),
            0,
            "round {round}: the device copy outlived its model"
        );
        unsafe { sys::cuCtxSynchronize() };
        assert_eq!(
            ctx.device_bytes_in_use(),
            idle,
            "round {round}: the model's memory was not freed"
        );
    }
    // release_model frees too, and the next call uploads again
    let model = random_model(dim, 64, false, &mut rng);
    unsafe { ctx.prepare(&model, batch, 1, std::ptr::null_mut()) }.unwrap();
    assert_eq!(ctx.models_on_device(), 1);
    ctx.release_model(&model).unwrap();
    assert_eq!(ctx.models_on_device(), 0);
    unsafe { sys::cuCtxSynchronize() };
    assert_eq!(ctx.device_bytes_in_use(), idle);
}

#[test]
fn a_model_wider_than_the_old_grid_limit_runs() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    // d = 4.3 M columns: 67,188 column tiles, beyond grid y's 65535.
    let dim = 4_300_000;
    let mut eigvecs = vec![0f32; 2 * dim];
    for j in 0..dim {
        let v = (1.0 / dim as f64).sqrt() as f32;
        eigvecs[j] = v;
        eigvecs[dim + j] = if j % 2 == 0 { v } else { -v };
    }
    let model = Model::from_parts(
        vec![0.1; dim],
        vec![9.0, 4.0],
        eigvecs,
        0.25,
        ModelMeta::default(),
    )
    .unwrap();
    let mut rng = Rng::new(101);
    let (bytes, exact) = encode(
        &rng.normals(dim)
            .iter()
            .map(|v| 10.0 * v)
            .collect::<Vec<_>>(),
        Dtype::F32,
    );
    let dx = DevMem::upload(&bytes);
    let dout = DevMem::new(dim * 4);
    let op = Op::Skip {
        from: Noise::edm(10.0).into(),
        to: Noise::edm(1.0).into(),
    };
    let reference = Gaussian::from_model(&model).apply(op, &exact, 1).unwrap();
    for version in VERSIONS {
        ctx.set_kernel_version(version);
        dout.poison();
        unsafe {
            ctx.apply_raw(
                &model,
                op,
                Dtype::F32,
                dx.cptr(),
                dout.mptr(),
                1,
                std::ptr::null_mut(),
            )
        }
        .expect("wide model");
        unsafe { result::stream::synchronize(std::ptr::null_mut()) }.unwrap();
        check_rows(
            &format!("d = 4.3M {version:?}"),
            &decode(&dout.download(), Dtype::F32),
            &reference,
            &exact,
            &model,
            op,
            1,
            EigvecStorage::F16,
            Dtype::F32,
        );
    }
}

#[test]
fn both_kernel_versions_are_selectable_and_v2_is_the_default() {
    assert_eq!(Context::cpu().kernel_version(), None);
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let expected = match std::env::var("GAUSSSKIP_KERNELS").as_deref() {
        Ok("v1") => KernelVersion::V1,
        _ => KernelVersion::V2,
    };
    assert_eq!(ctx.kernel_version(), Some(expected));
    for v in VERSIONS {
        ctx.set_kernel_version(v);
        assert_eq!(ctx.kernel_version(), Some(v));
    }
}

#[test]
fn launch_timings_report_the_shapes_and_honour_split_overrides() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(111);
    let (dim, rank, batch) = (3072, 3072, 1);
    let model = random_model(dim, rank, false, &mut rng);
    let dx = DevMem::upload(&encode(&rng.normals(dim), Dtype::F16).0);
    let dout = DevMem::new(dim * 2);
    let t = unsafe {
        ctx.time_skip_launches(
            &model,
            Dtype::F16,
            dx.cptr(),
            dout.mptr(),
            batch,
            Noise::edm(80.0),
            Noise::edm(10.0),
            Splits::default(),
            5,
            std::ptr::null_mut(),
        )
    }
    .expect("timings");
    assert!(t.ms.iter().all(|&m| m > 0.0 && m < 100.0), "{t:?}");
    assert_eq!(t.blocks, [48, 48]);
    let forced = Splits {
        project: Some(3),
        backproject: Some(5),
    };
    let t = unsafe {
        ctx.time_skip_launches(
            &model,
            Dtype::F16,
            dx.cptr(),
            dout.mptr(),
            batch,
            Noise::edm(80.0),
            Noise::edm(10.0),
            forced,
            5,
            std::ptr::null_mut(),
        )
    }
    .expect("timings");
    assert_eq!(t.splits, [3, 5]);
    assert!(t.waves[0] > 0.0 && t.blocks_per_sm[0] >= 1);
}

#[test]
fn bad_pointers_and_sizes_are_clear_errors_and_write_nothing() {
    let Some((ctx, _primary)) = cuda(EigvecStorage::F16) else {
        return;
    };
    let mut rng = Rng::new(41);
    let (dim, rank, batch) = (128, 16, 4);
    let model = random_model(dim, rank, false, &mut rng);
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
    let e = unsafe {
        ctx.apply_raw(
            &model,
            op,
            Dtype::F32,
            dx.cptr(),
            dout.mptr(),
            usize::MAX / 8,
            std::ptr::null_mut(),
        )
    };
    assert!(
        matches!(e, Err(Error::InvalidArgument { arg: "batch", .. })),
        "huge batch: {e:?}"
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

/// Rows of several components on device buffers: one launch pair over the groups; each row
/// matches the CPU's call on its own component, for f16 and f32 eigenvectors, per-row levels
/// and trajectories; a uniform batch stays capturable while a mixed one is refused in capture.
#[test]
fn rows_of_several_components_match_the_cpu_row_by_row() {
    for storage in [EigvecStorage::F32, EigvecStorage::F16] {
        let Some((ctx, _primary)) = cuda(storage) else {
            return;
        };
        let mut rng = Rng::new(23);
        let dim = 200;
        let parts: Vec<Model> = [(200, false), (40, true), (7, false)]
            .iter()
            .enumerate()
            .map(|(i, &(r, flat))| random_model(dim, r, flat, &mut rng).with_label(format!("c{i}")))
            .collect();
        let model = Model::from_components(parts, gaussskip::ModelMeta::default()).unwrap();
        let comp: Vec<u32> = (0..70).map(|i| [2u32, 0, 1, 1, 2, 0, 0][i % 7]).collect();
        let batch = comp.len();
        let x: Vec<f32> = rng
            .normals(batch * dim)
            .iter()
            .map(|v| (20.0 * v) as f32)
            .collect();
        let per_row: Vec<Noise> = (0..batch)
            .map(|i| Noise::edm(2.0 + i as f64 * 0.3))
            .collect();
        let traj = [Noise::edm(10.0), Noise::edm(1.0), Noise::edm(0.0)];
        let ops = [
            Op::Skip {
                from: Noise::edm(30.0).into(),
                to: Noise::edm(3.0).into(),
            },
            Op::Denoise {
                at: Levels::PerRow(&per_row),
            },
            Op::X0Trajectory {
                from: Noise::edm(30.0).into(),
                levels: &traj,
            },
        ];
        let tol = if storage == EigvecStorage::F16 {
            4e-3
        } else {
            2e-5
        };
        let xd = DevMem::upload(bytemuck_f32(&x));
        for (op, version) in ops
            .into_iter()
            .flat_map(|op| VERSIONS.map(move |v| (op, v)))
        {
            ctx.set_kernel_version(version);
            let n_out = op.slabs() * batch * dim;
            let od = DevMem::new(4 * n_out);
            od.poison();
            let s = stream();
            unsafe {
                ctx.apply_raw_components(
                    &model,
                    op,
                    Dtype::F32,
                    xd.cptr(),
                    od.mptr(),
                    batch,
                    s as *mut c_void,
                    Some(&comp),
                )
                .expect("grouped call");
                result::stream::synchronize(s).unwrap();
            }
            let got: Vec<f32> = od
                .download()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let mut want = vec![f32::NAN; n_out];
            Context::cpu()
                .apply_components(&model, op, &x, &mut want, Some(&comp))
                .unwrap();
            for (row, (a, b)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
                let err = norm(a.iter().zip(b).map(|(p, q)| f64::from(p - q)))
                    / norm(b.iter().map(|&v| f64::from(v)));
                assert!(
                    err <= tol,
                    "{storage:?} {version:?} {op:?} output row {row}: {err:.3e}"
                );
            }
        }
        // In capture: one component for all rows is fine after a warm-up, mixed rows are not.
        let s = stream();
        let od = DevMem::new(4 * batch * dim);
        let skip = Op::Skip {
            from: Noise::edm(30.0).into(),
            to: Noise::edm(3.0).into(),
        };
        let uniform = vec![1u32; batch];
        unsafe {
            ctx.apply_raw_components(
                &model,
                skip,
                Dtype::F32,
                xd.cptr(),
                od.mptr(),
                batch,
                s as *mut c_void,
                Some(&uniform),
            )
            .unwrap();
            result::stream::synchronize(s).unwrap();
            begin(s);
            ctx.apply_raw_components(
                &model,
                skip,
                Dtype::F32,
                xd.cptr(),
                od.mptr(),
                batch,
                s as *mut c_void,
                Some(&uniform),
            )
            .expect("a uniform batch is capturable");
            let e = ctx
                .apply_raw_components(
                    &model,
                    skip,
                    Dtype::F32,
                    xd.cptr(),
                    od.mptr(),
                    batch,
                    s as *mut c_void,
                    Some(&comp),
                )
                .unwrap_err();
            let _ = end(s);
            assert!(e.to_string().contains("cannot be captured"), "{e}");
        }
    }
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
