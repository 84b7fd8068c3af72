//! CPU backend on faer's multi-threaded GEMM: f32 arithmetic, or f64 for the calls whose
//! rounding f32 cannot carry within the precision contract.
//!
//! Two GEMMs per call whatever the number of output slabs: P = Y E^T (`rows x rank`), then
//! all slabs at once, [P .* W_0; P .* W_1; ...] E (`slabs*rows x dim`), followed by the
//! element-wise epilogue a mean + b y.
//!
//! Nothing is written to the output before these checks, made between the two GEMMs:
//! - the pass that forms y = x - c mean also finds NaN/Inf in x and measures every row;
//! - an output that could overflow its element type is refused: f32 outputs against the bound
//!   |a| max|mean| + |b| max|y| + max|w| ‖y‖, f16/bf16 outputs exactly, before narrowing;
//! - precision: the rounding of `a mean + b y + U (w .* p)` is at most about
//!   u (|b| ‖y‖ + max|w| ‖y‖ + |a| ‖mean‖) in each row (u the unit round-off), while the
//!   row's result has the norm N with N² = b² (‖y‖² − ‖p‖²) + Σ (w_k + b)² p_k² + a² ‖mean‖²
//!   (the parts on and off the modes are orthogonal). Where `ROUNDING_FACTOR` u times their
//!   ratio exceeds `F32_ESTIMATE_MAX`, typically an inversion (sigma_to > sigma_from) or
//!   gains spread over many orders of magnitude, the call is redone in f64; where even f64
//!   exceeds `ESTIMATE_MAX`, it is refused.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::dtype::{Dtype, Element};
use crate::error::{try_vec, Error, Result};
use crate::model::Model;
use crate::noise::Plan;
use crate::sampler::Real;

/// Below this many multiply-adds a call runs on the calling thread: handing it to the thread
/// pool costs more than it saves (and a small call never touches the pool).
const PAR_FLOPS: usize = 1 << 21;

/// In a parallel call, element-wise passes shorter than this still run on one thread.
const PAR_MIN: usize = 1 << 15;

/// Whether a pass over `len` elements is split across the pool.
fn split(par: Par, len: usize) -> bool {
    par != Par::Seq && len >= PAR_MIN
}

/// Slack on the overflow bound for rounding and the eigenvectors' norm tolerance.
const BOUND_SLACK: f64 = 1.01;

/// Multiple of the unit round-off in the rounding estimate, covering the accumulation in the
/// GEMMs. Calibrated with f32 runs against the f64 reference (dims 96, 784 and 3072; spectra
/// 5..0 and 1e6..1e-12; EDM levels 1e-6..1e6 both ways): the measured error stayed below
/// 0.73 times the estimate, and a typical skip (80 -> 19.4) estimates 1e-6.
pub const ROUNDING_FACTOR: f64 = 16.0;

/// Largest estimated relative error of a row computed in f32; above it the call runs in f64.
/// With the calibration above an accepted row is within 3e-6 of the reference.
pub const F32_ESTIMATE_MAX: f64 = 4e-6;

/// Largest estimated relative error of a row computed in f64; above it the call is refused.
pub const ESTIMATE_MAX: f64 = 4e-6;

/// Evaluates `plan` on `x` (`plan.rows x dim`) into `out` (`slabs * rows x dim`).
///
/// # Errors
/// `NonFinite` for NaN/Inf in `x`; `InvalidNoise` when the output would overflow its element
/// type or lose its precision even in f64; `OutOfMemory` when the scratch cannot be
/// allocated. `out` is untouched on error.
pub(crate) fn apply<T: Element>(model: &Model, plan: &Plan, x: &[T], out: &mut [T]) -> Result<()> {
    debug_assert_eq!(x.len(), plan.rows * model.dim());
    debug_assert_eq!(out.len(), plan.slabs.len() * plan.rows * model.dim());
    let flops = (plan.slabs.len() + 1)
        .saturating_mul(plan.rows)
        .saturating_mul(model.dim())
        .saturating_mul(model.rank());
    if flops >= PAR_FLOPS {
        crate::pool::install(|| run(model, plan, x, out, faer::get_global_parallelism()))
    } else {
        run(model, plan, x, out, Par::Seq)
    }
}

fn run<T: Element>(model: &Model, plan: &Plan, x: &[T], out: &mut [T], par: Par) -> Result<()> {
    if !plan.conditioning.needs_f64() {
        let f32_run = Projected::<f32>::new(model, plan, x, T::DTYPE, par)?;
        if f32_run.worst_estimate <= F32_ESTIMATE_MAX {
            return f32_run.finish(model, plan, out);
        }
    }
    let f64_run = Projected::<f64>::new(model, plan, x, T::DTYPE, par)?;
    if f64_run.worst_estimate > ESTIMATE_MAX {
        let (s, i) = f64_run.worst_at;
        let (arg, level) = plan.target(s, i);
        return Err(level.invalid(
            arg,
            format!(
                "the result would lose its precision: its rounding is estimated at {:.1e} of its size even in f64 (limit {ESTIMATE_MAX:e}); the gains of this operation span too many orders of magnitude for these input values",
                f64_run.worst_estimate
            ),
        ));
    }
    f64_run.finish(model, plan, out)
}

/// Per-row measures of y = x - c mean.
#[derive(Clone, Copy, Default)]
struct RowNorms {
    /// ‖y‖₂.
    l2: f64,
    /// max |y_i|.
    max: f64,
    /// First index of a NaN/Inf in the row of x.
    bad: Option<usize>,
}

/// A call computed up to the weighted projections, in precision `F`.
struct Projected<'a, F> {
    y: Vec<F>,
    q: Vec<F>,
    eigvecs: Eigvecs<'a, F>,
    par: Par,
    /// Largest estimated relative error over rows and slabs, and where.
    worst_estimate: f64,
    worst_at: (usize, usize),
}

/// The eigenvectors in the compute precision: the model's own (f32) or a widened copy.
enum Eigvecs<'a, F> {
    Borrowed(&'a [F]),
    Owned(Vec<F>),
}

impl<F> Eigvecs<'_, F> {
    fn get(&self) -> &[F] {
        match self {
            Eigvecs::Borrowed(v) => v,
            Eigvecs::Owned(v) => v,
        }
    }
}

impl<'a, F: Real> Projected<'a, F> {
    /// Centres and checks the rows, projects them, weighs the projections and estimates the
    /// rounding (see the module documentation).
    fn new<T: Element>(
        model: &'a Model,
        plan: &Plan,
        x: &[T],
        dtype: Dtype,
        par: Par,
    ) -> Result<Self> {
        let (rows, d, r) = (plan.rows, model.dim(), model.rank());
        let nslab = plan.slabs.len();
        let mean = model.mean();
        let zero = F::from_f64(0.0);

        let mut y = try_vec(rows * d, zero, "the centred rows")?;
        let mut norms = vec![RowNorms::default(); rows];
        let centre = |(i, (yr, nr)): (usize, (&mut [F], &mut RowNorms))| {
            let c = F::from_f64(plan.c(i));
            let (mut l2, mut max) = (0f64, 0f64);
            let xr = &x[i * d..(i + 1) * d];
            for (j, ((yv, xv), &m)) in yr.iter_mut().zip(xr).zip(mean).enumerate() {
                let v = xv.to_f32();
                if !v.is_finite() {
                    nr.bad = Some(i * d + j);
                    return;
                }
                *yv = F::from_f64(f64::from(v)) - c * F::from_f64(f64::from(m));
                let a = yv.to_f64().abs();
                l2 += a * a;
                max = max.max(a);
            }
            nr.l2 = l2.sqrt();
            nr.max = max;
        };
        if split(par, rows * d) {
            y.par_chunks_mut(d)
                .zip(norms.par_iter_mut())
                .enumerate()
                .for_each(centre);
        } else {
            y.chunks_mut(d)
                .zip(norms.iter_mut())
                .enumerate()
                .for_each(centre);
        }
        if let Some(index) = norms.iter().filter_map(|n| n.bad).min() {
            return Err(Error::NonFinite { arg: "x", index });
        }
        check_range::<F>(model, plan, &norms, dtype)?;

        let eigvecs = match as_compute::<F>(model.eigvecs()) {
            Some(e) => Eigvecs::Borrowed(e),
            None => Eigvecs::Owned(widen::<F>(model.eigvecs(), par)?),
        };
        let e = MatRef::from_row_major_slice(eigvecs.get(), r, d);
        let mut p = try_vec(rows * r, zero, "the projections")?;
        matmul(
            MatMut::from_row_major_slice_mut(&mut p, rows, r),
            Accum::Replace,
            MatRef::from_row_major_slice(&y, rows, d),
            e.transpose(),
            F::from_f64(1.0),
            par,
        );

        // Weigh the projections of every slab, and estimate each output row's rounding.
        let mean_l2 = mean
            .iter()
            .map(|&m| f64::from(m) * f64::from(m))
            .sum::<f64>()
            .sqrt();
        let unit = F::epsilon_impl().to_f64() / 2.0 * ROUNDING_FACTOR;
        let mut q = try_vec(nslab * rows * r, zero, "the weighted projections")?;
        let mut estimates = vec![0f64; nslab * rows];
        let weigh = |(row, (qr, est)): (usize, (&mut [F], &mut f64))| {
            let (s, i) = (row / rows, row % rows);
            let slab = &plan.slabs[s];
            let k = slab.index(i);
            let (a, b) = (slab.a[k], slab.b[k]);
            let w = &slab.w[k * r..(k + 1) * r];
            let (mut on, mut p2, mut w_max) = (0f64, 0f64, 0f64);
            for ((qv, &pv), &wv) in qr.iter_mut().zip(&p[i * r..(i + 1) * r]).zip(w) {
                *qv = pv * F::from_f64(wv);
                let pf = pv.to_f64();
                on += ((wv + b) * pf).powi(2);
                p2 += pf * pf;
                w_max = w_max.max(wv.abs());
            }
            // ‖y‖² − ‖p‖² is the part of y off the modes, up to the rounding of p: only what
            // stands above that rounding counts towards the result's size.
            let yn = norms[i].l2;
            let off = (yn * yn - p2 - unit * (r as f64).sqrt() * yn * yn).max(0.0);
            let size = (b * b * off + on + (a * mean_l2).powi(2)).sqrt();
            let rounding = unit * (b.abs() * yn + w_max * yn + a.abs() * mean_l2);
            *est = if rounding == 0.0 {
                0.0
            } else {
                rounding / size
            };
        };
        if split(par, q.len()) {
            q.par_chunks_mut(r)
                .zip(estimates.par_iter_mut())
                .enumerate()
                .for_each(weigh);
        } else {
            q.chunks_mut(r)
                .zip(estimates.iter_mut())
                .enumerate()
                .for_each(weigh);
        }
        let (at, worst) = estimates
            .iter()
            .map(|&v| if v.is_nan() { f64::INFINITY } else { v })
            .enumerate()
            .fold(
                (0, 0f64),
                |best, cur| if cur.1 > best.1 { cur } else { best },
            );
        Ok(Projected {
            y,
            q,
            eigvecs,
            par,
            worst_estimate: worst,
            worst_at: (at / rows, at % rows),
        })
    }

    /// The second GEMM and the epilogue, into `out`.
    fn finish<T: Element>(self, model: &Model, plan: &Plan, out: &mut [T]) -> Result<()> {
        let (rows, d, r) = (plan.rows, model.dim(), model.rank());
        let nslab = plan.slabs.len();
        let n_out = out.len();
        let mean = model.mean();
        let e = MatRef::from_row_major_slice(self.eigvecs.get(), r, d);
        let qm = MatRef::from_row_major_slice(&self.q, nslab * rows, r);
        let y = &self.y;
        let epilogue = |row: usize, dst: &mut [F]| {
            let (s, i) = (row / rows, row % rows);
            let slab = &plan.slabs[s];
            let k = slab.index(i);
            let (a, b) = (F::from_f64(slab.a[k]), F::from_f64(slab.b[k]));
            for ((o, &yv), &m) in dst.iter_mut().zip(&y[i * d..(i + 1) * d]).zip(mean) {
                *o += a * F::from_f64(f64::from(m)) + b * yv;
            }
        };

        if let Some(direct) = as_output::<F, T>(out) {
            // f32 in, f32 out: the GEMM writes the caller's buffer (check_range bounded it).
            matmul(
                MatMut::from_row_major_slice_mut(direct, nslab * rows, d),
                Accum::Replace,
                qm,
                e,
                F::from_f64(1.0),
                self.par,
            );
            if split(self.par, n_out) {
                direct
                    .par_chunks_mut(d)
                    .enumerate()
                    .for_each(|(row, dst)| epilogue(row, dst));
            } else {
                direct
                    .chunks_mut(d)
                    .enumerate()
                    .for_each(|(row, dst)| epilogue(row, dst));
            }
            return Ok(());
        }
        let mut tmp = try_vec(n_out, F::from_f64(0.0), "the output")?;
        matmul(
            MatMut::from_row_major_slice_mut(&mut tmp, nslab * rows, d),
            Accum::Replace,
            qm,
            e,
            F::from_f64(1.0),
            self.par,
        );
        // Finish every row and check it fits T before the first element of `out` is written.
        let limit = max_finite(T::DTYPE);
        let finish = |(row, src): (usize, &mut [F])| {
            epilogue(row, src);
            src.iter()
                .all(|v| f64::from(T::from_f32(v.to_f64() as f32).to_f32()).abs() <= limit)
        };
        let fits = if split(self.par, n_out) {
            tmp.par_chunks_mut(d).enumerate().all(finish)
        } else {
            tmp.chunks_mut(d).enumerate().all(finish)
        };
        if !fits {
            return Err(overflow(plan, (0, 0), T::DTYPE, "its result"));
        }
        let narrow = |(dst, src): (&mut [T], &[F])| {
            for (o, v) in dst.iter_mut().zip(src) {
                *o = T::from_f32(v.to_f64() as f32);
            }
        };
        if split(self.par, n_out) {
            out.par_chunks_mut(d)
                .zip(tmp.par_chunks(d))
                .for_each(narrow);
        } else {
            out.chunks_mut(d).zip(tmp.chunks(d)).for_each(narrow);
        }
        Ok(())
    }
}

/// Refuses a call whose intermediates could overflow `F`, or whose f32 output could overflow,
/// from the row norms and the coefficients (see the module documentation).
fn check_range<F: Real>(
    model: &Model,
    plan: &Plan,
    norms: &[RowNorms],
    dtype: Dtype,
) -> Result<()> {
    let f_max = F::max_positive_impl().to_f64() / 2.0;
    let mean_max = model
        .mean()
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let r = plan.rank;
    for (s, slab) in plan.slabs.iter().enumerate() {
        let w_max: Vec<f64> = slab
            .w
            .chunks(r)
            .map(|w| w.iter().fold(0f64, |m, &v| m.max(v.abs())))
            .collect();
        for (i, n) in norms.iter().enumerate() {
            let k = slab.index(i);
            // U^T y and U (w .* U^T y), and every partial sum of them, stay below these.
            let inner = n.l2 * BOUND_SLACK * w_max[k].max(1.0);
            let bound = slab.a[k].abs() * mean_max
                + slab.b[k].abs() * n.max
                + w_max[k] * n.l2 * BOUND_SLACK;
            if inner.is_nan() || inner > f_max {
                return Err(overflow(plan, (s, i), dtype, "its intermediate results"));
            }
            if dtype == Dtype::F32 && (bound.is_nan() || bound > f32::MAX as f64) {
                return Err(overflow(plan, (s, i), dtype, "its result"));
            }
        }
    }
    Ok(())
}

/// The refusal of an output that would overflow: an `InvalidNoise` naming the target level
/// of output slab `s`, row `i`.
fn overflow(plan: &Plan, (s, i): (usize, usize), dtype: Dtype, what: &str) -> Error {
    let (arg, level) = plan.target(s, i);
    level.invalid(
        arg,
        format!(
            "{what} would overflow {} (largest finite {:e}) for these input values: the gain to this level is too large",
            dtype_name(dtype),
            max_finite(dtype)
        ),
    )
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::BF16 => "bf16",
    }
}

/// Largest finite value of an element type.
fn max_finite(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => f32::MAX as f64,
        Dtype::F16 => half::f16::MAX.to_f64(),
        Dtype::BF16 => half::bf16::MAX.to_f64(),
    }
}

fn is_f32<F: 'static>() -> bool {
    std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
}

/// The model's f32 eigenvectors as the compute type when it is f32.
fn as_compute<F: Real>(v: &[f32]) -> Option<&[F]> {
    is_f32::<F>().then(|| {
        // SAFETY: F is f32 (checked above): same layout and lifetime.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const F, v.len()) }
    })
}

/// The eigenvectors converted to the compute type (f64), allocated fallibly.
fn widen<F: Real>(v: &[f32], par: Par) -> Result<Vec<F>> {
    let mut out = try_vec(v.len(), F::from_f64(0.0), "the f64 eigenvectors")?;
    let conv = |(o, &e): (&mut F, &f32)| *o = F::from_f64(f64::from(e));
    if split(par, v.len()) {
        out.par_iter_mut().zip(v.par_iter()).for_each(conv);
    } else {
        out.iter_mut().zip(v).for_each(conv);
    }
    Ok(out)
}

/// Views `out` as the compute type when both are f32, so the GEMM writes straight into the
/// caller's buffer.
fn as_output<F: Real, T: Element>(out: &mut [T]) -> Option<&mut [F]> {
    (is_f32::<F>() && T::DTYPE == Dtype::F32).then(|| {
        // SAFETY: T::DTYPE == F32 only for T = f32 (see the Element impls) and F is f32: the
        // cast is the identity on layout and lifetime.
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut F, out.len()) }
    })
}
