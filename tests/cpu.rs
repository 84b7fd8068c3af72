//! The CPU fast path (`Context::cpu()`, f32 arithmetic) against the f64 reference
//! (`gaussskip::reference::Gaussian`): relative error ≤ 1e-5 (SPEC §5) for every operation,
//! at odd and real sizes (d = 97, 784, 3072; r < d and r = d), batches 1, 3, 17, 257, one
//! level per batch and one per row. Outputs are poisoned with NaN first, so any element the
//! call fails to write fails the check. Then f16/bf16 I/O, and bad calls: the right error and
//! an untouched output buffer.

use std::ffi::c_void;

use gaussskip::reference::{rel_error, Gaussian};
use gaussskip::rng::Rng;
use gaussskip::{Context, Dtype, Element, Error, Levels, Model, ModelMeta, Noise, Op};
use half::{bf16, f16};

/// SPEC §5: ‖out − ref‖ / ‖ref‖ for the f32 CPU path.
const TOL_F32: f64 = 1e-5;

// ---------------------------------------------------------------------------------------------
// Models.

/// `n` orthonormal rows of length `n`: Gram–Schmidt (twice) on random normals.
fn orthogonal(rng: &mut Rng, n: usize) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(n);
    while out.len() < n {
        let mut v = rng.normals(n);
        for _ in 0..2 {
            for u in &out {
                let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        out.push(v.iter().map(|x| x / norm).collect());
    }
    out
}

/// `r` random orthonormal rows of length `d`, row-major, in f32.
///
/// Small d: rows of a Gram–Schmidt orthogonal matrix. Large d = a·b: rows of the Kronecker
/// product A ⊗ B of two random orthogonal matrices, with columns permuted and signs flipped at
/// random. That is an exactly orthonormal, dense, unstructured-looking basis built in O(d²)
/// instead of the O(d³) of Gram–Schmidt at d = 3072.
fn orthonormal_rows(rng: &mut Rng, r: usize, d: usize) -> Vec<f32> {
    let a = (8..=d / 8)
        .filter(|a| d.is_multiple_of(*a))
        .min_by_key(|&a| (a as f64 - (d as f64).sqrt()).abs() as usize);
    let full: Box<dyn Fn(usize, usize) -> f64> = match a {
        Some(a) if d > 128 => {
            let b = d / a;
            let (ma, mb) = (orthogonal(rng, a), orthogonal(rng, b));
            Box::new(move |row, col| ma[row / b][col / b] * mb[row % b][col % b])
        }
        _ => {
            let m = orthogonal(rng, d);
            Box::new(move |row, col| m[row][col])
        }
    };
    let perm = |rng: &mut Rng| {
        let mut p: Vec<usize> = (0..d).collect();
        for i in (1..d).rev() {
            p.swap(i, rng.below(i + 1));
        }
        p
    };
    let (cols, rows) = (perm(rng), perm(rng));
    let signs: Vec<f64> = (0..d)
        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    let mut out = Vec::with_capacity(r * d);
    for &row in &rows[..r] {
        out.extend((0..d).map(|j| (signs[j] * full(row, cols[j])) as f32));
    }
    out
}

fn model(seed: u64, d: usize, r: usize, residual_var: f64) -> Model {
    let mut rng = Rng::new(seed);
    let eigvecs = orthonormal_rows(&mut rng, r, d);
    // A decaying spectrum like image data: a few large modes, a long tail.
    let eigvals: Vec<f64> = (0..r).map(|k| 20.0 / (1.0 + k as f64).powf(1.3)).collect();
    let mean = rng.normals(d).iter().map(|&v| (0.5 * v) as f32).collect();
    Model::from_parts(mean, eigvals, eigvecs, residual_var, ModelMeta::default()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Levels and inputs.

/// Source levels, one per row in turn: EDM, VP, flow, pure noise, a generic scaled level.
const FROM: [Noise; 6] = [
    Noise::edm(80.0),
    Noise::new(0.1, 0.99498743710662),
    Noise::new(0.05, 0.95),
    Noise::new(0.0, 1.0),
    Noise::edm(2.5),
    Noise::new(0.7, 0.4),
];
/// Target levels: forward, to σ = 0, and backwards (noisier than the source).
const TO: [Noise; 6] = [
    Noise::edm(0.5),
    Noise::new(0.9486832980505138, 0.31622776601683794),
    Noise::new(0.9, 0.1),
    Noise::new(1.0, 0.0),
    Noise::edm(20.0),
    Noise::new(1.2, 0.05),
];
const TRAJECTORY: [Noise; 3] = [Noise::edm(40.0), Noise::new(0.6, 0.8), Noise::new(1.0, 0.0)];

fn per_row(levels: &[Noise], rows: usize, shift: usize) -> Vec<Noise> {
    (0..rows)
        .map(|i| levels[(i + shift) % levels.len()])
        .collect()
}

/// Row i drawn at its level: α (μ + data-scale noise) + σ ε.
fn inputs(rng: &mut Rng, model: &Model, from: &[Noise]) -> Vec<f32> {
    let mut x = Vec::with_capacity(from.len() * model.dim());
    for n in from {
        x.extend(
            model.mean().iter().map(|&m| {
                (n.alpha * (m as f64 + 2.0 * rng.normal()) + n.sigma * rng.normal()) as f32
            }),
        );
    }
    x
}

/// Runs `op` on the CPU into a NaN-poisoned buffer and checks every output row against the
/// reference (row-wise, stricter than the whole-call measure of SPEC §5).
fn check<T: Element>(
    ctx: &Context,
    model: &Model,
    g: &Gaussian,
    op: Op<'_>,
    x: &[T],
    tol: f64,
    what: &str,
) {
    let d = model.dim();
    let rows = x.len() / d;
    let mut out = vec![T::from_f32(f32::NAN); op.slabs() * x.len()];
    ctx.apply(model, op, x, &mut out)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let x64: Vec<f64> = x.iter().map(|v| v.to_f32() as f64).collect();
    let want = g.apply(op, &x64, rows).unwrap();
    let got: Vec<f64> = out.iter().map(|v| v.to_f32() as f64).collect();
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: output element {i} not written (or not finite): {}",
            got[i]
        );
    }
    for (row, (o, w)) in got.chunks_exact(d).zip(want.chunks_exact(d)).enumerate() {
        let err = rel_error(o, w);
        assert!(
            err <= tol,
            "{what}: output row {row} (slab {}, row {}): rel error {err:.3e} > {tol:.1e}",
            row / rows,
            row % rows
        );
    }
}

/// Every operation at every batch size on one model.
fn sweep(model: &Model, batches: &[usize], seed: u64) {
    let ctx = Context::cpu();
    let g = Gaussian::from_model(model);
    let mut rng = Rng::new(seed);
    let (d, r) = (model.dim(), model.rank());
    for &rows in batches {
        let from = per_row(&FROM, rows, rows);
        let to = per_row(&TO, rows, 0);
        let x = inputs(&mut rng, model, &from);
        let tag = |op: &str| format!("d {d} r {r} batch {rows} {op}");
        let ops = [
            (
                "skip per row",
                Op::Skip {
                    from: Levels::PerRow(&from),
                    to: Levels::PerRow(&to),
                },
            ),
            (
                "denoise per row",
                Op::Denoise {
                    at: Levels::PerRow(&from),
                },
            ),
            (
                "skip trajectory",
                Op::SkipTrajectory {
                    from: Levels::PerRow(&from),
                    levels: &TRAJECTORY,
                },
            ),
            (
                "x0 trajectory",
                Op::X0Trajectory {
                    from: Levels::PerRow(&from),
                    levels: &TRAJECTORY,
                },
            ),
        ];
        for (name, op) in ops {
            check(&ctx, model, &g, op, &x, TOL_F32, &tag(name));
        }
        // One level for the whole batch, through the convenience methods' Levels::One.
        let x1 = inputs(&mut rng, model, &vec![Noise::edm(80.0); rows]);
        let one = Op::Skip {
            from: Noise::edm(80.0).into(),
            to: Noise::edm(1.0).into(),
        };
        check(&ctx, model, &g, one, &x1, TOL_F32, &tag("skip one level"));
        let one = Op::Denoise {
            at: Noise::edm(80.0).into(),
        };
        check(
            &ctx,
            model,
            &g,
            one,
            &x1,
            TOL_F32,
            &tag("denoise one level"),
        );
    }
}

const BATCHES: [usize; 4] = [1, 3, 17, 257];

#[test]
fn d97_full_rank() {
    sweep(&model(1, 97, 97, 0.0), &BATCHES, 101);
}

#[test]
fn d97_low_rank_with_residual() {
    sweep(&model(2, 97, 13, 0.02), &BATCHES, 102);
}

#[test]
fn d784_full_rank() {
    sweep(&model(3, 784, 784, 0.0), &BATCHES, 103);
}

#[test]
fn d784_low_rank_residual_zero() {
    sweep(&model(4, 784, 100, 0.0), &BATCHES, 104);
}

#[test]
fn d3072_low_rank_with_residual() {
    sweep(&model(5, 3072, 768, 0.005), &BATCHES, 105);
}

#[test]
fn d3072_full_rank() {
    // Batch 257 is left out here only because the f64 reference would need ~10 s for it
    // at r = d; batch 257 at d = 3072 runs with r = 768 above.
    sweep(&model(6, 3072, 3072, 0.0), &[1, 3, 17], 106);
}

#[test]
fn convenience_methods_match_apply() {
    let model = model(7, 97, 20, 0.1);
    let ctx = Context::cpu();
    let mut rng = Rng::new(107);
    let x = inputs(&mut rng, &model, &[Noise::edm(30.0); 5]);
    let n = x.len();
    let run = |op: Op<'_>, slabs: usize| {
        let mut out = vec![f32::NAN; slabs * n];
        ctx.apply(&model, op, &x, &mut out).unwrap();
        out
    };
    let (s, t) = (Noise::edm(30.0), Noise::edm(3.0));
    let mut out = vec![f32::NAN; n];
    ctx.skip(&model, &x, &mut out, s, t).unwrap();
    assert_eq!(
        out,
        run(
            Op::Skip {
                from: s.into(),
                to: t.into()
            },
            1
        )
    );
    ctx.denoise(&model, &x, &mut out, s).unwrap();
    assert_eq!(out, run(Op::Denoise { at: s.into() }, 1));
    let mut out3 = vec![f32::NAN; 3 * n];
    ctx.skip_trajectory(&model, &x, &mut out3, s, &TRAJECTORY)
        .unwrap();
    let want = run(
        Op::SkipTrajectory {
            from: s.into(),
            levels: &TRAJECTORY,
        },
        3,
    );
    assert_eq!(out3, want);
    ctx.x0_trajectory(&model, &x, &mut out3, s, &TRAJECTORY)
        .unwrap();
    let want = run(
        Op::X0Trajectory {
            from: s.into(),
            levels: &TRAJECTORY,
        },
        3,
    );
    assert_eq!(out3, want);
    // The raw-pointer path (what the C ABI calls) gives the same bits.
    let mut raw = vec![f32::NAN; n];
    // SAFETY: x holds 5 rows of dim elements and raw as many; they do not overlap.
    unsafe {
        ctx.apply_raw(
            &model,
            Op::Skip {
                from: s.into(),
                to: t.into(),
            },
            Dtype::F32,
            x.as_ptr() as *const c_void,
            raw.as_mut_ptr() as *mut c_void,
            5,
            std::ptr::null_mut(),
        )
        .unwrap();
    }
    assert_eq!(
        raw,
        run(
            Op::Skip {
                from: s.into(),
                to: t.into()
            },
            1
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Half-precision I/O.

/// Checks f16 and bf16 I/O. The reference runs on the exact values of the half-precision
/// input (widening is exact), so input rounding is no error of the library; the output is
/// rounded once to the format, at most half an ulp, i.e. relative 2^-11 (f16) or 2^-8 (bf16)
/// per element and so also in norm, on top of the f32 computation's 1e-5. (Subnormal f16
/// outputs carry an absolute error of at most 2^-25, negligible against rows of norm ≥ 1.)
fn half_io<T: Element>(unit_roundoff: f64, seed: u64) {
    let model = model(8, 784, 100, 0.01);
    let g = Gaussian::from_model(&model);
    let ctx = Context::cpu();
    let mut rng = Rng::new(seed);
    let tol = unit_roundoff + TOL_F32;
    for &rows in &[1usize, 17] {
        let from = per_row(&FROM, rows, 1);
        let to = per_row(&TO, rows, 2);
        let x: Vec<T> = inputs(&mut rng, &model, &from)
            .iter()
            .map(|&v| T::from_f32(v))
            .collect();
        let ops = [
            Op::Skip {
                from: Levels::PerRow(&from),
                to: Levels::PerRow(&to),
            },
            Op::Denoise {
                at: Levels::PerRow(&from),
            },
            Op::SkipTrajectory {
                from: Levels::PerRow(&from),
                levels: &TRAJECTORY,
            },
            Op::X0Trajectory {
                from: Levels::PerRow(&from),
                levels: &TRAJECTORY,
            },
        ];
        for op in ops {
            let what = format!("{:?} batch {rows} {op:?}", T::DTYPE);
            check(&ctx, &model, &g, op, &x, tol, &what);
        }
    }
}

#[test]
fn f16_io() {
    half_io::<f16>(2f64.powi(-11), 201);
}

#[test]
fn bf16_io() {
    half_io::<bf16>(2f64.powi(-8), 202);
}

// ---------------------------------------------------------------------------------------------
// Bad calls: the right error, and the output buffer exactly as it was.

/// Runs a call that must fail on a buffer of recognisable values and checks it is untouched.
fn fails<T: Element + PartialEq + std::fmt::Debug>(
    out_len: usize,
    call: impl FnOnce(&mut [T]) -> gaussskip::Result<()>,
) -> Error {
    let sentinel: Vec<T> = (0..out_len)
        .map(|i| T::from_f32(0.25 * i as f32 - 3.0))
        .collect();
    let mut out = sentinel.clone();
    let err = call(&mut out).expect_err("the call should fail");
    assert!(
        out == sentinel,
        "output was written by a failing call ({err})"
    );
    err
}

#[test]
fn bad_inputs_give_their_error_and_leave_the_output_alone() {
    let model = model(9, 97, 10, 0.05);
    let ctx = Context::cpu();
    let d = model.dim();
    let mut rng = Rng::new(301);
    let x = inputs(&mut rng, &model, &[Noise::edm(10.0); 3]);
    let n = x.len();
    let (s, t) = (Noise::edm(10.0), Noise::edm(1.0));

    let shape = |e: Error, want: &str| match e {
        Error::ShapeMismatch { arg, .. } => assert_eq!(arg, want, "{e}"),
        other => panic!("expected ShapeMismatch for `{want}`, got {other:?}"),
    };
    // Sizes.
    shape(fails(n, |o| ctx.skip(&model, &x[..n - 1], o, s, t)), "x");
    shape(fails(n, |o| ctx.skip(&model, &x[..0], o, s, t)), "x");
    shape(fails(n - 1, |o| ctx.skip(&model, &x, o, s, t)), "out");
    shape(fails(n + d, |o| ctx.denoise(&model, &x, o, s)), "out");
    // A trajectory needs one slab per level: a one-slab buffer is too small.
    shape(
        fails(n, |o| ctx.skip_trajectory(&model, &x, o, s, &TRAJECTORY)),
        "out",
    );
    // Per-row levels for a different number of rows.
    let two = [s, s];
    shape(fails(n, |o| ctx.skip(&model, &x, o, &two[..], t)), "from");
    shape(fails(n, |o| ctx.denoise(&model, &x, o, &two[..])), "at");

    // Non-finite input values, reported with their index, in f32 and f16.
    for (index, bad) in [
        (5, f32::NAN),
        (n - 1, f32::INFINITY),
        (d + 2, f32::NEG_INFINITY),
    ] {
        let mut xb = x.clone();
        xb[index] = bad;
        match fails(n, |o| ctx.skip(&model, &xb, o, s, t)) {
            Error::NonFinite { arg: "x", index: i } => assert_eq!(i, index),
            other => panic!("expected NonFinite at {index}, got {other:?}"),
        }
    }
    let mut xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    xh[7] = f16::NAN;
    match fails::<f16>(n, |o| ctx.denoise(&model, &xh, o, s)) {
        Error::NonFinite { arg: "x", index: 7 } => {}
        other => panic!("expected NonFinite at 7, got {other:?}"),
    }

    // Noise levels.
    let noise = |e: Error, want_arg: &str, want_reason: &str| match e {
        Error::InvalidNoise { arg, reason, .. } => {
            assert_eq!(arg, want_arg, "{reason}");
            assert!(
                reason.contains(want_reason),
                "`{reason}` lacks `{want_reason}`"
            );
        }
        other => panic!("expected InvalidNoise for `{want_arg}`, got {other:?}"),
    };
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, s, Noise::edm(-1.0))),
        "to",
        ">= 0",
    );
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, Noise::new(-0.5, 1.0), t)),
        "from",
        ">= 0",
    );
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, Noise::new(1.0, 0.0), t)),
        "from",
        "sigma > 0",
    );
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, s, Noise::edm(f64::NAN))),
        "to",
        "finite",
    );
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, Noise::edm(f64::INFINITY), t)),
        "from",
        "finite",
    );
    noise(
        fails(n, |o| ctx.denoise(&model, &x, o, Noise::new(0.0, 0.0))),
        "at",
        "both be 0",
    );
    noise(
        fails(n, |o| ctx.denoise(&model, &x, o, Noise::edm(-0.1))),
        "at",
        ">= 0",
    );
    // One bad row among good ones.
    let rows = [s, Noise::edm(-2.0), s];
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, s, &rows[..])),
        "to",
        ">= 0",
    );
    let rows = [s, s, Noise::new(1.0, 0.0)];
    noise(
        fails(n, |o| ctx.skip(&model, &x, o, &rows[..], t)),
        "from",
        "sigma > 0",
    );
    // Trajectories: an invalid level, and no level at all.
    let levels = [Noise::edm(5.0), Noise::new(f64::NAN, 1.0)];
    noise(
        fails(2 * n, |o| ctx.x0_trajectory(&model, &x, o, s, &levels)),
        "levels",
        "finite",
    );
    match fails(n, |o| ctx.skip_trajectory(&model, &x, o, s, &[])) {
        // With no levels the expected output is empty, so the size check speaks first.
        Error::ShapeMismatch { arg: "out", .. } => {}
        other => panic!("expected ShapeMismatch for `out`, got {other:?}"),
    }
    match fails::<f32>(0, |o| ctx.skip_trajectory(&model, &x, o, s, &[])) {
        Error::InvalidArgument { arg: "levels", .. } => {}
        other => panic!("expected InvalidArgument for `levels`, got {other:?}"),
    }
}

#[test]
fn bad_raw_calls_give_their_error_and_leave_the_output_alone() {
    let model = model(10, 97, 10, 0.05);
    let ctx = Context::cpu();
    let mut rng = Rng::new(302);
    let x = inputs(&mut rng, &model, &[Noise::edm(10.0); 2]);
    let n = x.len();
    let op = Op::Skip {
        from: Noise::edm(10.0).into(),
        to: Noise::edm(1.0).into(),
    };
    let raw = |xp: *const f32, op_: *mut f32, batch: usize| {
        // SAFETY: every pointer is NULL or points into a buffer of at least `batch` rows
        // (the overlap case reads and writes inside one buffer of 2 n elements).
        unsafe {
            ctx.apply_raw(
                &model,
                op,
                Dtype::F32,
                xp as *const c_void,
                op_ as *mut c_void,
                batch,
                std::ptr::null_mut(),
            )
        }
    };
    match fails::<f32>(n, |o| raw(std::ptr::null(), o.as_mut_ptr(), 2)) {
        Error::NullPointer { arg: "x" } => {}
        other => panic!("expected NullPointer for `x`, got {other:?}"),
    }
    match fails::<f32>(n, |_| raw(x.as_ptr(), std::ptr::null_mut(), 2)) {
        Error::NullPointer { arg: "out" } => {}
        other => panic!("expected NullPointer for `out`, got {other:?}"),
    }
    match fails::<f32>(n, |o| raw(x.as_ptr(), o.as_mut_ptr(), 0)) {
        Error::InvalidArgument { arg: "batch", .. } => {}
        other => panic!("expected InvalidArgument for `batch`, got {other:?}"),
    }
    // x and out overlapping by one row inside one buffer.
    let mut buf: Vec<f32> = x.iter().chain(x.iter()).copied().collect();
    let before = buf.clone();
    let d = model.dim();
    let p = buf.as_mut_ptr();
    // SAFETY: both views lie inside `buf` (2 n elements): x = [0, n), out = [d, d + n).
    let err = raw(p as *const f32, unsafe { p.add(d) }, 2).expect_err("overlap must fail");
    assert!(
        matches!(err, Error::InvalidArgument { arg: "out", .. }),
        "{err:?}"
    );
    assert!(buf == before, "overlapping call wrote to the buffer");
}
