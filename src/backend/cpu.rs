//! CPU backend: f32 arithmetic, or f64 for the calls whose rounding f32 cannot carry within
//! the precision contract.
//!
//! Two matrix products per call whatever the number of output slabs: P = Y E^T
//! (`rows x rank`), then all slabs at once, [P .* W_0; P .* W_1; ...] E (`slabs*rows x dim`),
//! followed by the element-wise epilogue a mean + b y. Each product is split along the
//! eigenvectors (blocks of modes, then blocks of columns) into a few sequential GEMMs per
//! pool thread (in f32 the AVX2/FMA kernels of `cpu_gemm`; in f64, or on a CPU without
//! them, faer's), so the eigenvectors are read once per product whatever the batch; a few
//! f32 rows of a large model go to the kernels of `cpu_small` instead, which compute both
//! products in one pass over the eigenvectors.
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

use super::cpu_rows::{centre_row, epilogue_row, weigh_row, RowNorms};
use super::cpu_small;
use crate::dtype::{Dtype, Element};
use crate::error::{try_vec, Error, Result};
use crate::model::Model;
use crate::noise::Plan;
use crate::sampler::Real;

/// Below this many multiply-adds a call runs on the calling thread: handing it to the thread
/// pool costs more than it saves (and a small call never touches the pool).
const PAR_FLOPS: usize = 1 << 21;

/// The same for calls of a few rows, whose kernels share their work from the calling thread
/// ([`crate::pool::share`]): no hand-over to wait for, so shorter calls gain from it.
const SHARE_FLOPS: usize = 1 << 18;

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
    let outs = plan.slabs.len() * plan.rows;
    let flops = (plan.slabs.len() + 1)
        .saturating_mul(plan.rows)
        .saturating_mul(model.dim())
        .saturating_mul(model.rank());
    let small = cpu_small::serves(plan.rows, outs, model.eigvecs().len());
    if flops < if small { SHARE_FLOPS } else { PAR_FLOPS } {
        run(model, plan, x, out, Par::Seq, false)
    } else if small {
        // A few rows: the calling thread runs the call and shares the kernels' blocks with the
        // pool (its short row passes stay on this thread).
        run(model, plan, x, out, Par::Seq, true)
    } else {
        crate::pool::install(|| run(model, plan, x, out, faer::get_global_parallelism(), false))
    }
}

/// The call in f32 when its estimated rounding allows, otherwise in f64. `par` splits the
/// passes and products (inside the pool); `share`: the small-batch kernels share their work
/// with the pool from the calling thread (see [`crate::pool::share`]).
fn run<T: Element>(
    model: &Model,
    plan: &Plan,
    x: &[T],
    out: &mut [T],
    par: Par,
    share: bool,
) -> Result<()> {
    if !plan.conditioning.needs_f64() {
        let f32_run = Projected::<f32>::new(model, plan, x, T::DTYPE, par, share)?;
        if f32_run.worst_estimate <= F32_ESTIMATE_MAX {
            return f32_run.finish(model, plan, out);
        }
    }
    if share {
        // No small-batch kernels in f64: its products split inside the pool.
        let par = faer::get_global_parallelism();
        return crate::pool::install(|| run_f64(model, plan, x, out, par));
    }
    run_f64(model, plan, x, out, par)
}

fn run_f64<T: Element>(model: &Model, plan: &Plan, x: &[T], out: &mut [T], par: Par) -> Result<()> {
    let f64_run = Projected::<f64>::new(model, plan, x, T::DTYPE, par, false)?;
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

/// A call computed up to the weighted projections, in precision `F`.
struct Projected<'a, F> {
    y: Vec<F>,
    q: Vec<F>,
    /// The back-projection `[P .* W] E`, when the small-batch kernels computed it with `P`.
    fused: Option<Vec<f32>>,
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
        share: bool,
    ) -> Result<Self> {
        let (rows, d, r) = (plan.rows, model.dim(), model.rank());
        let nslab = plan.slabs.len();
        let mean = model.mean();
        let zero = F::from_f64(0.0);

        let mut y = try_vec(rows * d, zero, "the centred rows")?;
        let mut norms = vec![RowNorms::default(); rows];
        let centre = |(i, (yr, nr)): (usize, (&mut [F], &mut RowNorms))| {
            let xr = &x[i * d..(i + 1) * d];
            *nr = centre_row(xr, mean, F::from_f64(plan.c(i)), yr);
            nr.bad = nr.bad.map(|j| i * d + j);
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
        let w_maxes = w_maxes(plan);
        check_range::<F>(model, plan, &norms, &w_maxes, dtype)?;

        let eigvecs = match same::<f32, F>(model.eigvecs()) {
            Some(e) => Eigvecs::Borrowed(e),
            None => Eigvecs::Owned(widen::<F>(model.eigvecs(), par)?),
        };
        let mut p = try_vec(rows * r, zero, "the projections")?;
        let fused = project_fused(
            model,
            plan,
            eigvecs.get(),
            &y,
            &mut p,
            share || par != Par::Seq,
        )?;
        if fused.is_none() {
            project(eigvecs.get(), d, &y, rows, &mut p, par)?;
        }

        // Weigh the projections of every slab, and estimate each output row's rounding.
        let mean_l2 = model.mean_norms().0;
        let unit = F::epsilon_impl().to_f64() / 2.0 * ROUNDING_FACTOR;
        // One slab weighs the projections in place; more copy them first.
        let mut q = if nslab == 1 {
            std::mem::take(&mut p)
        } else {
            try_vec(nslab * rows * r, zero, "the weighted projections")?
        };
        let mut estimates = vec![0f64; nslab * rows];
        let weigh = |(row, (qr, est)): (usize, (&mut [F], &mut f64))| {
            let (s, i) = (row / rows, row % rows);
            let slab = &plan.slabs[s];
            let k = slab.index(i);
            let (a, b) = (slab.a[k], slab.b[k]);
            let w = &slab.w[k * r..(k + 1) * r];
            if nslab > 1 {
                qr.copy_from_slice(&p[i * r..(i + 1) * r]);
            }
            let (on, p2) = weigh_row(qr, w, b);
            let w_max = w_maxes[s][k];
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
            fused,
            eigvecs,
            par,
            worst_estimate: worst,
            worst_at: (at / rows, at % rows),
        })
    }

    /// The second GEMM and the epilogue, into `out`.
    fn finish<T: Element>(self, model: &Model, plan: &Plan, out: &mut [T]) -> Result<()> {
        let (rows, d) = (plan.rows, model.dim());
        let nslab = plan.slabs.len();
        let n_out = out.len();
        let mean = model.mean();
        let (e, q) = (self.eigvecs.get(), &self.q);
        let y = &self.y;
        let epilogue = |row: usize, dst: &mut [F]| {
            let (s, i) = (row / rows, row % rows);
            let slab = &plan.slabs[s];
            let k = slab.index(i);
            let (a, b) = (F::from_f64(slab.a[k]), F::from_f64(slab.b[k]));
            epilogue_row(dst, &y[i * d..(i + 1) * d], mean, a, b);
        };

        let fused = self.fused.as_deref().and_then(same::<f32, F>);
        if let Some(direct) = same_mut::<T, F>(out) {
            // f32 in, f32 out: the product writes the caller's buffer (check_range bounded it).
            match fused {
                Some(product) => direct.copy_from_slice(product),
                None => back_project(e, d, q, nslab * rows, direct, self.par)?,
            }
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
        match fused {
            Some(product) => tmp.copy_from_slice(product),
            None => back_project(e, d, q, nslab * rows, &mut tmp, self.par)?,
        }
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

/// max |w_k| of each row of weights of each slab (one row per slab when the levels are
/// shared), for the overflow bounds and the rounding estimate.
fn w_maxes(plan: &Plan) -> Vec<Vec<f64>> {
    let max_abs = |w: &[f64]| w.iter().fold(0f64, |m, &v| m.max(v.abs()));
    plan.slabs
        .iter()
        .map(|slab| slab.w.chunks(plan.rank).map(max_abs).collect())
        .collect()
}

/// Refuses a call whose intermediates could overflow `F`, or whose f32 output could overflow,
/// from the row norms and the coefficients (see the module documentation).
fn check_range<F: Real>(
    model: &Model,
    plan: &Plan,
    norms: &[RowNorms],
    w_maxes: &[Vec<f64>],
    dtype: Dtype,
) -> Result<()> {
    let f_max = F::max_positive_impl().to_f64() / 2.0;
    let mean_max = model.mean_norms().1;
    for (s, (slab, w_max)) in plan.slabs.iter().zip(w_maxes).enumerate() {
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

/// Both products by the small-batch kernels of `cpu_small` when they serve this call (f32,
/// a few rows of a large model): fills `p` and returns the back-projection of every output
/// row, with the weights rounded to `F` as `weigh` rounds them.
fn project_fused<F: Real>(
    model: &Model,
    plan: &Plan,
    e: &[F],
    y: &[F],
    p: &mut [F],
    threads: bool,
) -> Result<Option<Vec<f32>>> {
    let (rows, r, d) = (plan.rows, model.rank(), model.dim());
    let outs = plan.slabs.len() * rows;
    let (Some(e), Some(y), Some(p)) = (same::<F, f32>(e), same::<F, f32>(y), same_mut(p)) else {
        return Ok(None);
    };
    if !cpu_small::serves(rows, outs, e.len()) {
        return Ok(None);
    }
    let mut w = Vec::with_capacity(outs * r);
    let mut src = Vec::with_capacity(outs);
    for slab in &plan.slabs {
        for i in 0..rows {
            let k = slab.index(i);
            w.extend(slab.w[k * r..(k + 1) * r].iter().map(|&v| v as f32));
            src.push(i);
        }
    }
    let mut acc = try_vec(outs * d, 0f32, "the output")?;
    let run = cpu_small::Run::new(threads);
    cpu_small::project_back(e, d, y, rows, &w, &src, p, &mut acc, run)?;
    Ok(Some(acc))
}

/// `p = y e^T` (`rows x r`) for row-major `e` (`r x d`) and `y` (`rows x d`): by the kernels
/// of `cpu_gemm` in f32 where the CPU has them, otherwise by faer GEMMs on blocks of modes.
fn project<F: Real>(e: &[F], d: usize, y: &[F], rows: usize, p: &mut [F], par: Par) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_gemm::available() {
        if let (Some(e), Some(y), Some(p)) = (same(e), same(y), same_mut(p)) {
            return super::cpu_gemm::project(e, d, y, rows, p, par);
        }
    }
    let r = e.len() / d;
    let em = MatRef::from_row_major_slice(e, r, d);
    let ym = MatRef::from_row_major_slice(y, rows, d);
    let pm = MatMut::from_row_major_slice_mut(p, rows, r);
    column_blocks(pm, MIN_MODES, par, |k0, dst| {
        let modes = em.subrows(k0, dst.ncols());
        matmul(
            dst,
            Accum::Replace,
            ym,
            modes.transpose(),
            F::from_f64(1.0),
            Par::Seq,
        );
    });
    Ok(())
}

/// `out = q e` (`rows x d`) for row-major `q` (`rows x r`): as [`project`], faer GEMMs on
/// blocks of columns.
fn back_project<F: Real>(
    e: &[F],
    d: usize,
    q: &[F],
    rows: usize,
    out: &mut [F],
    par: Par,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_gemm::available() {
        if let (Some(e), Some(q), Some(out)) = (same(e), same(q), same_mut(out)) {
            return super::cpu_gemm::back_project(e, d, q, rows, out, par);
        }
    }
    let r = e.len() / d;
    let em = MatRef::from_row_major_slice(e, r, d);
    let qm = MatRef::from_row_major_slice(q, rows, r);
    let om = MatMut::from_row_major_slice_mut(out, rows, d);
    column_blocks(om, MIN_COLUMNS, par, |i0, dst| {
        let cols = em.subcols(i0, dst.ncols());
        matmul(dst, Accum::Replace, qm, cols, F::from_f64(1.0), Par::Seq);
    });
    Ok(())
}

/// Narrowest block of modes (projection) or columns (back-projection) of one parallel task:
/// narrower GEMMs pay more for packing their other operand than they gain.
const MIN_MODES: usize = 32;
const MIN_COLUMNS: usize = 128;

/// Blocks per pool thread. Each block is one sequential GEMM; with several per thread a
/// thread that the machine delays (other processes) leaves its remaining blocks to the
/// others instead of holding up the call, which a GEMM split into one part per thread
/// and joined at every step cannot do.
const BLOCKS_PER_THREAD: usize = 4;

/// Runs `f(first_column, block)` on blocks of the columns of `m`, in parallel under `par`.
/// Block widths are multiples of 16 (aligned rows and whole SIMD registers) and at least
/// `min_width`; each output element is written by one block, whatever the thread count.
fn column_blocks<F: Real>(
    m: MatMut<'_, F>,
    min_width: usize,
    par: Par,
    f: impl Fn(usize, MatMut<'_, F>) + Sync,
) {
    let n = m.ncols();
    let blocks = match par {
        Par::Seq => 1,
        Par::Rayon(threads) => threads.get() * BLOCKS_PER_THREAD,
    };
    let width = n.div_ceil(blocks).max(min_width).next_multiple_of(16);
    if width >= n {
        return f(0, m);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(width));
    let (mut rest, mut start) = (m, 0);
    while rest.ncols() > width {
        let (head, tail) = rest.split_at_col_mut(width);
        parts.push((start, head));
        (rest, start) = (tail, start + width);
    }
    parts.push((start, rest));
    parts
        .into_par_iter()
        .for_each(|(start, block)| f(start, block));
}

/// `v` as a slice of `B` when `A` and `B` are the same type.
fn same<A: 'static, B: 'static>(v: &[A]) -> Option<&[B]> {
    (std::any::TypeId::of::<A>() == std::any::TypeId::of::<B>()).then(|| {
        // SAFETY: A and B are the same type: same layout and lifetime.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const B, v.len()) }
    })
}

/// `v` as a mutable slice of `B` when `A` and `B` are the same type.
fn same_mut<A: 'static, B: 'static>(v: &mut [A]) -> Option<&mut [B]> {
    (std::any::TypeId::of::<A>() == std::any::TypeId::of::<B>()).then(|| {
        // SAFETY: A and B are the same type: same layout and lifetime.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut B, v.len()) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn normals<F: Real>(rng: &mut Rng, n: usize) -> Vec<F> {
        rng.normals(n).iter().map(|&v| F::from_f64(v)).collect()
    }

    /// Both products against f64 sums: `p = y e^T` and `out = q e`, every element, with a
    /// bound of a few roundings per term.
    fn check_products<F: Real>(d: usize, r: usize, rows: usize, par: Par, seed: u64) {
        let mut rng = Rng::new(seed);
        let e = normals::<F>(&mut rng, r * d);
        let y = normals::<F>(&mut rng, rows * d);
        let q = normals::<F>(&mut rng, rows * r);
        let mut p = vec![F::from_f64(f64::NAN); rows * r];
        let mut out = vec![F::from_f64(f64::NAN); rows * d];
        project(&e, d, &y, rows, &mut p, par).unwrap();
        back_project(&e, d, &q, rows, &mut out, par).unwrap();
        let unit = F::epsilon_impl().to_f64();
        let close = |got: F, terms: &mut dyn Iterator<Item = (F, F)>, n: usize, what: &str| {
            let (mut want, mut size) = (0f64, 0f64);
            for (a, b) in terms {
                want += a.to_f64() * b.to_f64();
                size += (a.to_f64() * b.to_f64()).abs();
            }
            let tol = 2.0 * unit * n as f64 * size;
            assert!(
                (got.to_f64() - want).abs() <= tol,
                "{what} d {d} r {r} rows {rows} {par:?}: {} vs {want}",
                got.to_f64()
            );
        };
        for b in 0..rows {
            for k in 0..r {
                let mut terms = (0..d).map(|i| (y[b * d + i], e[k * d + i]));
                close(p[b * r + k], &mut terms, d, "p");
            }
            for i in 0..d {
                let mut terms = (0..r).map(|k| (q[b * r + k], e[k * d + i]));
                close(out[b * d + i], &mut terms, r, "out");
            }
        }
    }

    fn pars() -> Vec<Par> {
        vec![Par::Seq, Par::rayon(2), Par::rayon(3)]
    }

    /// The GEMM path by blocks: sizes that are and are not multiples of the block widths and
    /// of 16, one row and many, f32 and f64.
    #[test]
    fn blocked_products_match_f64_sums() {
        for (d, r) in [(1, 1), (7, 1), (33, 5), (130, 129), (515, 77), (97, 300)] {
            for rows in [1, 2, 5, 17] {
                for par in pars() {
                    crate::pool::install(|| {
                        check_products::<f32>(d, r, rows, par, 1);
                        check_products::<f64>(d, r, rows, par, 2);
                    });
                }
            }
        }
    }

    /// Shapes that cross the block boundaries of the f32 kernels (`cpu_gemm`): several blocks
    /// of dim (projection) and of modes (back-projection), more rows than one chunk of row
    /// panels, ragged last strips and panels, and an output large enough to be taken a strip
    /// at a time; then the same bits whatever the number of threads.
    #[test]
    fn large_products_match_f64_sums_and_do_not_depend_on_threads() {
        let shapes = [
            (1100, 40, 9),
            (2100, 7, 5),
            (300, 600, 13),
            (515, 300, 100),
            (600, 70, 130),
        ];
        for (d, r, rows) in shapes {
            for par in pars() {
                crate::pool::install(|| check_products::<f32>(d, r, rows, par, 3));
            }
            let mut rng = Rng::new(4);
            let e = normals::<f32>(&mut rng, r * d);
            let y = normals::<f32>(&mut rng, rows * d);
            let q = normals::<f32>(&mut rng, rows * r);
            let run = |par: Par| {
                let mut p = vec![0f32; rows * r];
                let mut out = vec![0f32; rows * d];
                crate::pool::install(|| {
                    project(&e, d, &y, rows, &mut p, par).unwrap();
                    back_project(&e, d, &q, rows, &mut out, par).unwrap();
                });
                (p, out)
            };
            let serial = run(Par::Seq);
            for threads in [2, 3, 7] {
                assert!(
                    run(Par::rayon(threads)) == serial,
                    "d {d} r {r} rows {rows} {threads} threads"
                );
            }
        }
    }

    /// Every column in exactly one block, blocks in order, widths multiples of 16 and at
    /// least the minimum (but the last), one block without parallelism.
    #[test]
    fn column_blocks_cover_every_column_once() {
        for n in [1, 15, 16, 17, 100, 128, 129, 1000, 3072] {
            for par in [Par::Seq, Par::rayon(1), Par::rayon(2), Par::rayon(16)] {
                for min in [1, 32, 128] {
                    let mut data = vec![0f32; 3 * n];
                    let m = MatMut::from_row_major_slice_mut(&mut data, 3, n);
                    let seen = std::sync::Mutex::new(Vec::new());
                    crate::pool::install(|| {
                        column_blocks(m, min, par, |start, mut block| {
                            for j in 0..block.ncols() {
                                for i in 0..3 {
                                    block[(i, j)] += (start + j) as f32 + 1.0;
                                }
                            }
                            seen.lock().unwrap().push((start, block.ncols()));
                        })
                    });
                    let want: Vec<f32> = (0..3 * n).map(|i| (i % n) as f32 + 1.0).collect();
                    assert_eq!(data, want, "n {n} {par:?} min {min}");
                    let mut seen = seen.into_inner().unwrap();
                    seen.sort_unstable();
                    if par == Par::Seq {
                        assert_eq!(seen, [(0, n)]);
                    }
                    for (i, &(start, width)) in seen.iter().enumerate() {
                        if i + 1 < seen.len() {
                            assert_eq!(width % 16, 0, "n {n} {par:?} min {min}");
                            assert!(width >= min, "n {n} {par:?} min {min}");
                            assert_eq!(seen[i + 1].0, start + width);
                        }
                    }
                }
            }
        }
    }
}
