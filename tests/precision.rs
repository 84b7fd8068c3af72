//! The precision contract on hostile levels and spectra (SPEC §5): every call the CPU path
//! accepts is within 1e-5 of the f64 reference, and every call it refuses says why and leaves
//! the output untouched.
//!
//! A sweep over spectra from 1e6 down to 1e-12 (with and without an exact zero, residual
//! variance 0, tiny or large), full and truncated rank, EDM levels from 1e-39 to 1e39 in both
//! directions (inversions included), VP and flow levels, every operation, and inputs drawn
//! from the model's own marginal at the source level (data-like at small sigma, noise-like at
//! large sigma). Before the coefficient checks and the f64 path, inversions such as
//! 1e-6 -> 1 were percents off and extreme levels returned NaN/Inf as success.

use gaussskip::noise::{Conditioning, Levels, F32_CANCELLATION_MAX};
use gaussskip::reference::{rel_error, Gaussian};
use gaussskip::rng::Rng;
use gaussskip::{Context, Error, Model, ModelMeta, Noise, Op};

const DIM: usize = 24;
const BATCH: usize = 3;
const TOL: f64 = 1e-5;

fn orthonormal_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    while basis.len() < rows {
        let mut v = rng.normals(dim);
        for _ in 0..2 {
            for u in &basis {
                let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
            }
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        basis.push(v.iter().map(|a| a / n).collect());
    }
    basis.iter().flatten().map(|&v| v as f32).collect()
}

/// Spectra (top, bottom, exact zero at the end), ranks and residual variances.
fn models() -> Vec<(String, Model)> {
    let mut rng = Rng::new(0x9e37);
    let mut out = Vec::new();
    for (top, bottom, zero) in [
        (1e6f64, 1e-12f64, false),
        (10.0, 1e-3, false),
        (4.0, 0.5, true),
        (1.0, 1.0, false),
    ] {
        for rank in [DIM, DIM / 3] {
            let eigvals: Vec<f64> = (0..rank)
                .map(|k| {
                    if zero && k == rank - 1 {
                        0.0
                    } else {
                        let t = k as f64 / (rank - 1).max(1) as f64;
                        top * (bottom / top).powf(t)
                    }
                })
                .collect();
            let resid: &[f64] = if rank == DIM {
                &[0.0]
            } else {
                &[0.0, bottom * 0.5, top]
            };
            for &rv in resid {
                let mean: Vec<f32> = rng.normals(DIM).iter().map(|&v| v as f32).collect();
                let eigvecs = orthonormal_rows(&mut rng, rank, DIM);
                let model =
                    Model::from_parts(mean, eigvals.clone(), eigvecs, rv, ModelMeta::default())
                        .unwrap();
                out.push((
                    format!(
                        "lambda {top:e}..{bottom:e}{} rank {rank} lambda_perp {rv:e}",
                        if zero { " +0" } else { "" }
                    ),
                    model,
                ));
            }
        }
    }
    out
}

/// Rows drawn from the model's marginal at `level`: alpha (mean + sqrt(Sigma) z) + sigma e.
fn draw(model: &Model, level: Noise, rng: &mut Rng) -> Vec<f32> {
    let (d, r) = (model.dim(), model.rank());
    let g = Gaussian::from_model(model);
    let mut x = Vec::with_capacity(BATCH * d);
    for _ in 0..BATCH {
        let z = rng.normals(r);
        let off = rng.normals(d);
        let mut x0: Vec<f64> = g.mean.clone();
        for (k, u) in g.eigvecs.iter().enumerate() {
            let c = g.eigvals[k].sqrt() * z[k];
            x0.iter_mut().zip(u).for_each(|(v, &ui)| *v += c * ui);
        }
        // The part off the subspace, of variance residual_var per direction.
        let mut rest = off.clone();
        for u in &g.eigvecs {
            let p: f64 = u.iter().zip(&off).map(|(a, b)| a * b).sum();
            rest.iter_mut().zip(u).for_each(|(v, &ui)| *v -= p * ui);
        }
        let s = g.residual_var.sqrt();
        let e = rng.normals(d);
        for i in 0..d {
            x.push((level.alpha * (x0[i] + s * rest[i]) + level.sigma * e[i]) as f32);
        }
    }
    x
}

fn levels() -> Vec<Noise> {
    let mut v: Vec<Noise> = [
        1e-39, 1e-12, 1e-6, 1e-3, 0.1, 1.0, 19.4, 80.0, 1e3, 1e6, 1e12, 1e39,
    ]
    .iter()
    .map(|&s| Noise::edm(s))
    .collect();
    v.extend([
        Noise::vp(0.9999),
        Noise::vp(0.01),
        Noise::flow(0.999),
        Noise::flow(0.02),
    ]);
    v.push(Noise::new(1e200, 1.0));
    v.push(Noise::new(1e-40, 1e-40));
    v
}

#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    cancelling: usize,
    refused: usize,
    /// Refusals because even f64 would lose the precision (the rest: out of range).
    refused_for_precision: usize,
    worst: f64,
}

fn run_one(ctx: &Context, model: &Model, op: Op<'_>, x: &[f32], label: &str, tally: &mut Tally) {
    let d = model.dim();
    let n_out = op.slabs() * BATCH * d;
    let mut out = vec![f32::NAN; n_out];
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    match ctx.apply(model, op, x, &mut out) {
        Ok(()) => {
            let want = Gaussian::from_model(model).apply(op, &x64, BATCH).unwrap();
            let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
            // Slab by slab: each level must meet the contract on its own.
            for (s, (g, w)) in got
                .chunks(BATCH * d)
                .zip(want.chunks(BATCH * d))
                .enumerate()
            {
                let err = rel_error(g, w);
                assert!(
                    err <= TOL,
                    "{label} slab {s}: accepted with relative error {err:.3e} > {TOL:e} ({:?})",
                    op.check(model.eigvals(), model.residual_var(), BATCH)
                );
                tally.worst = tally.worst.max(err);
            }
            tally.accepted += 1;
            let cond: Conditioning = op
                .check(model.eigvals(), model.residual_var(), BATCH)
                .unwrap();
            if cond.needs_f64() {
                tally.cancelling += 1;
            }
        }
        Err(e) => {
            assert!(
                matches!(e, Error::InvalidNoise { .. }),
                "{label}: refused with {e:?}, expected InvalidNoise"
            );
            assert!(
                out.iter().all(|v| v.is_nan()),
                "{label}: a refused call wrote its output ({e})"
            );
            tally.refused += 1;
            if e.to_string().contains("lose its precision") {
                tally.refused_for_precision += 1;
            }
        }
    }
}

#[test]
fn every_accepted_call_meets_the_contract_and_every_refusal_writes_nothing() {
    let ctx = Context::cpu();
    let mut rng = Rng::new(7);
    let mut tally = Tally::default();
    let all = levels();
    for (name, model) in models() {
        for &from in &all {
            if from.sigma == 0.0 {
                continue;
            }
            let x = draw(&model, from, &mut rng);
            if x.iter().any(|v| !v.is_finite()) {
                continue; // not representable as an f32 input at all
            }
            for &to in &all {
                let label = format!("{name}: {from:?} -> {to:?}");
                let ops = [
                    Op::Skip {
                        from: from.into(),
                        to: to.into(),
                    },
                    Op::X0Trajectory {
                        from: from.into(),
                        levels: std::slice::from_ref(&to),
                    },
                ];
                for op in ops {
                    run_one(&ctx, &model, op, &x, &label, &mut tally);
                }
            }
            let label = format!("{name}: denoise at {from:?}");
            let op = Op::Denoise { at: from.into() };
            run_one(&ctx, &model, op, &x, &label, &mut tally);
        }
    }
    println!("{tally:?}");
    // The sweep must exercise every path: f32, f64 and refusal.
    assert!(tally.accepted > 1000, "{tally:?}");
    assert!(tally.cancelling > 50, "{tally:?}");
    assert!(tally.refused > 50, "{tally:?}");
}

/// The examples of the report: non-finite output returned as success.
#[test]
fn extreme_levels_are_refused_with_the_reason() {
    let model = Model::from_parts(
        vec![0.0, 0.0],
        vec![1.0],
        vec![1.0, 0.0],
        0.0,
        ModelMeta::default(),
    )
    .unwrap();
    let ctx = Context::cpu();
    let x = [0.5f32, 1e-3];
    for (from, to, want) in [
        (Noise::edm(1e-39), Noise::edm(1.0), "beyond the f32 range"),
        (Noise::edm(1e-200), Noise::edm(10.0), "beyond the f32 range"),
        (Noise::edm(1.0), Noise::edm(1e39), "beyond the f32 range"),
        (
            Noise::edm(1.0),
            Noise::new(1e200, 1.0),
            "beyond the f32 range",
        ),
        (Noise::new(1e200, 1.0), Noise::edm(1.0), "alpha is beyond"),
    ] {
        let mut out = [f32::NAN; 2];
        let e = ctx.skip(&model, &x, &mut out, from, to).unwrap_err();
        match &e {
            Error::InvalidNoise { reason, .. } => assert!(reason.contains(want), "{e}"),
            other => panic!("{from:?} -> {to:?}: expected InvalidNoise, got {other:?}"),
        }
        assert!(
            out.iter().all(|v| v.is_nan()),
            "{from:?} -> {to:?} wrote {out:?}"
        );
    }
    // Large but representable gains whose output would overflow f32 for these inputs.
    let big = [3e36f32, 1.0];
    let mut out = [f32::NAN; 2];
    let e = ctx
        .skip(&model, &big, &mut out, Noise::edm(1.0), Noise::edm(1e3))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidNoise { arg: "to", reason, .. } if reason.contains("overflow f32")),
        "{e}"
    );
    assert!(out.iter().all(|v| v.is_nan()));
    // The same for f16 outputs: checked exactly, before anything is written.
    let xh = [half::f16::from_f32(100.0), half::f16::from_f32(1.0)];
    let mut oh = [half::f16::NAN; 2];
    let e = ctx
        .skip(&model, &xh, &mut oh, Noise::edm(1.0), Noise::edm(1e3))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidNoise { reason, .. } if reason.contains("overflow f16")),
        "{e}"
    );
    assert!(oh.iter().all(|v| v.is_nan()));
    // A small gain in f16 is fine.
    ctx.skip(&model, &xh, &mut oh, Noise::edm(1.0), Noise::edm(3.0))
        .unwrap();
    assert!(oh.iter().all(|v| v.is_finite()));
}

/// The cancellation factor of the levels and spectrum, and the refusal of a call whose
/// rounding even f64 cannot keep within the contract.
#[test]
fn cancellation_factor_and_ill_conditioned_refusal() {
    let model = Model::from_parts(
        vec![0.0; 2],
        vec![1.0, 1e-4],
        vec![1.0, 0.0, 0.0, 1.0],
        0.0,
        ModelMeta::default(),
    )
    .unwrap();
    let skip = |from: f64, to: f64| Op::Skip {
        from: Noise::edm(from).into(),
        to: Noise::edm(to).into(),
    };
    let check = |from: f64, to: f64| {
        skip(from, to)
            .check(model.eigvals(), model.residual_var(), 1)
            .unwrap()
    };
    // A skip towards less noise never cancels.
    assert_eq!(check(80.0, 1.0).cancellation, 1.0);
    assert!(!check(80.0, 1.0).needs_f64());
    // 1e-3 -> 80 (full rank, residual 0): b = 8e4 over the top mode's gain sqrt(6401/1.000001).
    let c = check(1e-3, 80.0);
    assert!(c.needs_f64() && c.cancellation > F32_CANCELLATION_MAX);
    let want = 8e4 / (6401.0f64 / 1.000001).sqrt();
    assert!((c.cancellation - want).abs() < 1e-9 * want, "{c:?}");
    // ... computed in f64, within the contract.
    let ctx = Context::cpu();
    let x = [0.7f32, -0.01];
    let mut out = [f32::NAN; 2];
    ctx.apply(&model, skip(1e-3, 80.0), &x, &mut out).unwrap();
    let want = Gaussian::from_model(&model).skip(
        &[0.7, -0.01f32 as f64],
        Noise::edm(1e-3),
        Noise::edm(80.0),
    );
    let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
    assert!(rel_error(&got, &want) <= TOL, "{got:?} vs {want:?}");
    // 1e-12 -> 1e3: b = 1e15 against gains of 1e3 and 1e5: even f64 loses the result.
    let mut out = [f32::NAN; 2];
    let e = ctx
        .apply(&model, skip(1e-12, 1e3), &x, &mut out)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidNoise { arg: "to", reason, .. } if reason.contains("lose its precision")),
        "{e}"
    );
    assert!(out.iter().all(|v| v.is_nan()));
}

/// A model large enough for the CPU's small-batch kernels (rank x dim of 2^16 and more; both
/// products in one pass over the eigenvectors): every batch they take and one more (the GEMM
/// path), per-row levels, trajectories of one to three levels (up to 8 output rows, and
/// past), f32 and f16 I/O, and an inversion that runs in f64: every output slab within the
/// contract of the f64 reference. (That the threads do not change a bit is checked on the
/// kernels themselves, in `backend::cpu_small`.)
#[test]
fn small_batches_of_a_large_model_meet_the_contract() {
    let (d, r) = (1100, 1000);
    // Rows of the orthonormal DCT-II basis: cheap to build at this size.
    let mut eigvecs = Vec::with_capacity(r * d);
    for k in 0..r {
        let scale = if k == 0 {
            (1.0 / d as f64).sqrt()
        } else {
            (2.0 / d as f64).sqrt()
        };
        let f = std::f64::consts::PI * k as f64 / d as f64;
        eigvecs.extend((0..d).map(|i| (scale * (f * (i as f64 + 0.5)).cos()) as f32));
    }
    let eigvals: Vec<f64> = (0..r).map(|k| 4.0 * 0.995f64.powi(k as i32)).collect();
    let mut rng = Rng::new(31);
    let mean: Vec<f32> = rng.normals(d).iter().map(|&v| (0.3 * v) as f32).collect();
    let model = Model::from_parts(mean, eigvals, eigvecs, 0.01, ModelMeta::default()).unwrap();
    let reference = Gaussian::from_model(&model);
    let ctx = Context::cpu();
    let trajectory = [Noise::edm(40.0), Noise::edm(19.4), Noise::edm(2.0)];
    for rows in 1..=5 {
        let x: Vec<f32> = rng
            .normals(rows * d)
            .iter()
            .map(|&v| (80.0 * v) as f32)
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let from: Vec<Noise> = (0..rows).map(|i| Noise::edm(80.0 - i as f64)).collect();
        let ops = [
            Op::Skip {
                from: Levels::PerRow(&from),
                to: Noise::edm(19.4).into(),
            },
            Op::Denoise {
                at: Levels::PerRow(&from),
            },
            Op::SkipTrajectory {
                from: Levels::PerRow(&from),
                levels: &trajectory[..2],
            },
            Op::X0Trajectory {
                from: Levels::PerRow(&from),
                levels: &trajectory,
            },
        ];
        for op in ops {
            let want = reference.apply(op, &x64, rows).unwrap();
            let mut out = vec![f32::NAN; want.len()];
            ctx.apply(&model, op, &x, &mut out).unwrap();
            for (s, (g, w)) in out.chunks(rows * d).zip(want.chunks(rows * d)).enumerate() {
                let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
                let err = rel_error(&g, w);
                assert!(err <= TOL, "rows {rows} {op:?} slab {s}: {err:.3e}");
            }
            // f16 I/O: within the contract plus the rounding of the f16 input and output.
            let xh: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
            let xh64: Vec<f64> = xh.iter().map(|v| v.to_f64()).collect();
            let want_h = reference.apply(op, &xh64, rows).unwrap();
            let mut oh = vec![half::f16::NAN; want.len()];
            ctx.apply(&model, op, &xh, &mut oh).unwrap();
            let gh: Vec<f64> = oh.iter().map(|v| v.to_f64()).collect();
            let err = rel_error(&gh, &want_h);
            assert!(err <= 1e-3, "f16 rows {rows} {op:?}: {err:.3e}");
        }
    }
    // An inversion whose rounding f32 cannot carry: redone in f64, still within the contract.
    let x: Vec<f32> = rng
        .normals(2 * d)
        .iter()
        .map(|&v| (0.05 * v) as f32)
        .collect();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let op = Op::Skip {
        from: Noise::edm(0.05).into(),
        to: Noise::edm(80.0).into(),
    };
    let want = reference.apply(op, &x64, 2).unwrap();
    let mut out = vec![f32::NAN; want.len()];
    ctx.apply(&model, op, &x, &mut out).unwrap();
    let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
    assert!(rel_error(&got, &want) <= TOL);
}
