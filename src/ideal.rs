//! The exact optimal denoiser of a finite dataset: the "ideal model".
//!
//! For the empirical distribution of n items x0_i, the posterior mean at level (alpha, sigma) is
//!
//!   D(x) = sum_i w_i x0_i,   w = softmax_i( -‖x − alpha x0_i‖² / (2 sigma²) ).
//!
//! It is a perfect diffusion model with no weights: sampling with it follows the true PF-ODE
//! of the data (and ends on a training item), so a jump can be judged against the real thing.
//!
//! Computation, per block of rows: the term ‖x‖² is the same for every item and cancels in
//! the softmax, so the logits are (alpha x·x0_i − alpha²‖x0_i‖²/2) / sigma², with all the
//! dot products from one GEMM. Data and inputs are first centred on the data mean (x0_i − m
//! and x − alpha m): the same distances, smaller norms, less cancellation. The softmax is
//! taken with the row maximum subtracted (log-sum-exp), in f64; a second GEMM forms the
//! weighted sums. At sigma = 0 the weights are one-hot on the nearest item (the limit of the
//! softmax; ties go to the lowest index). At alpha = 0 every item weighs the same and D is the
//! data mean.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::noise::Noise;
use crate::sampler::{Denoiser, Real};

/// Scratch budget per block of rows: rows x items logits stay under this many elements.
const BLOCK_ELEMS: usize = 1 << 22;

/// The exact posterior-mean denoiser of a finite dataset, in `f32` or `f64`.
#[derive(Clone, Debug)]
pub struct IdealDenoiser<T: Real = f32> {
    items: usize,
    dim: usize,
    /// Data mean, the centre every computation is shifted to.
    mean: Vec<f64>,
    /// Items minus the mean, row-major `items x dim`.
    centred: Vec<T>,
    /// ‖x0_i − mean‖², accumulated in f64.
    sq_norms: Vec<f64>,
}

impl<T: Real> IdealDenoiser<T> {
    /// A denoiser over the `data.len() / dim` items of `data` (row-major `items x dim`).
    ///
    /// # Errors
    /// `InvalidArgument` for `dim == 0`; `ShapeMismatch` for data that is empty or not a
    /// multiple of `dim`; `NonFinite` for NaN/Inf.
    pub fn new(data: &[T], dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::arg("dim", "must be at least 1"));
        }
        if data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(Error::shape(
                "data",
                format!("a positive multiple of dim = {dim}"),
                data.len(),
            ));
        }
        if let Some(index) = data.iter().position(|v| !v.to_f64().is_finite()) {
            return Err(Error::NonFinite { arg: "data", index });
        }
        let items = data.len() / dim;
        let mut mean = vec![0f64; dim];
        for row in data.chunks_exact(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += v.to_f64());
        }
        mean.iter_mut().for_each(|m| *m /= items as f64);
        let centred: Vec<T> = data
            .chunks_exact(dim)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .map(|(&v, &m)| T::from_f64(v.to_f64() - m))
            })
            .collect();
        let sq_norms = centred
            .par_chunks_exact(dim)
            .map(|row| row.iter().map(|v| v.to_f64() * v.to_f64()).sum())
            .collect();
        Ok(IdealDenoiser {
            items,
            dim,
            mean,
            centred,
            sq_norms,
        })
    }

    /// Number of data items n.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The data mean (the posterior mean at alpha = 0, or as sigma grows without bound).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Posterior mean E[x0 | x_t = x] of every row of `x` (row-major `batch x dim`) at level
    /// `at`, written to `out` (same length).
    ///
    /// # Errors
    /// `ShapeMismatch` for `x` not a positive multiple of `dim` or `out` of another length,
    /// `NonFinite` for NaN/Inf in `x`, `InvalidNoise` for an invalid level. `out` is untouched
    /// on error.
    pub fn denoise(&self, x: &[T], at: Noise, out: &mut [T]) -> Result<()> {
        let rows = self.check_rows(x)?;
        at.validate("at")?;
        if out.len() != x.len() {
            return Err(Error::shape("out", x.len(), out.len()));
        }
        let block = (BLOCK_ELEMS / self.items).clamp(1, rows);
        for (xb, ob) in x
            .chunks(block * self.dim)
            .zip(out.chunks_mut(block * self.dim))
        {
            let weights = self.weights(xb, at);
            let b = xb.len() / self.dim;
            let wm = MatRef::from_row_major_slice(&weights, b, self.items);
            let cm = MatRef::from_row_major_slice(&self.centred, self.items, self.dim);
            let om = MatMut::from_row_major_slice_mut(ob, b, self.dim);
            matmul(
                om,
                Accum::Replace,
                wm,
                cm,
                T::from_f64(1.0),
                faer::get_global_parallelism(),
            );
            ob.par_chunks_mut(self.dim).for_each(|row| {
                for (o, &m) in row.iter_mut().zip(&self.mean) {
                    *o = T::from_f64(o.to_f64() + m);
                }
            });
        }
        Ok(())
    }

    /// Index of the nearest data item (Euclidean distance) for every row of `x`
    /// (row-major `batch x dim`); ties go to the lowest index.
    ///
    /// # Errors
    /// `ShapeMismatch` for `x` not a positive multiple of `dim`, `NonFinite` for NaN/Inf.
    pub fn nearest(&self, x: &[T]) -> Result<Vec<usize>> {
        let rows = self.check_rows(x)?;
        let block = (BLOCK_ELEMS / self.items).clamp(1, rows);
        let mut out = Vec::with_capacity(rows);
        for xb in x.chunks(block * self.dim) {
            let scores = self.scores(xb, 1.0);
            let best: Vec<usize> = scores.par_chunks(self.items).map(argmax).collect();
            out.extend(best);
        }
        Ok(out)
    }

    fn check_rows(&self, x: &[T]) -> Result<usize> {
        if x.is_empty() || !x.len().is_multiple_of(self.dim) {
            return Err(Error::shape(
                "x",
                format!("a positive multiple of dim = {}", self.dim),
                x.len(),
            ));
        }
        if let Some(index) = x.iter().position(|v| !v.to_f64().is_finite()) {
            return Err(Error::NonFinite { arg: "x", index });
        }
        Ok(x.len() / self.dim)
    }

    /// Per row and item: alpha x'·c_i − alpha² ‖c_i‖² / 2 with x' = x − alpha m, which is
    /// −‖x − alpha x0_i‖²/2 up to a constant per row. Row-major `rows x items`, in f64.
    fn scores(&self, x: &[T], alpha: f64) -> Vec<f64> {
        let (d, n) = (self.dim, self.items);
        let rows = x.len() / d;
        let shifted: Vec<T> = x
            .par_chunks(d)
            .flat_map_iter(|row| {
                row.iter()
                    .zip(&self.mean)
                    .map(move |(&v, &m)| T::from_f64(v.to_f64() - alpha * m))
            })
            .collect();
        let mut dots = vec![T::from_f64(0.0); rows * n];
        matmul(
            MatMut::from_row_major_slice_mut(&mut dots, rows, n),
            Accum::Replace,
            MatRef::from_row_major_slice(&shifted, rows, d),
            MatRef::from_row_major_slice(&self.centred, n, d).transpose(),
            T::from_f64(1.0),
            faer::get_global_parallelism(),
        );
        dots.par_chunks(n)
            .flat_map_iter(|row| {
                row.iter()
                    .zip(&self.sq_norms)
                    .map(move |(&g, &q)| alpha * g.to_f64() - 0.5 * alpha * alpha * q)
            })
            .collect()
    }

    /// Posterior weights of every item for every row, row-major `rows x items`.
    fn weights(&self, x: &[T], at: Noise) -> Vec<T> {
        let n = self.items;
        let scores = self.scores(x, at.alpha);
        let inv_var = if at.sigma > 0.0 {
            1.0 / (at.sigma * at.sigma)
        } else {
            f64::INFINITY
        };
        let mut weights = vec![T::from_f64(0.0); scores.len()];
        weights
            .par_chunks_mut(n)
            .zip(scores.par_chunks(n))
            .for_each(|(w, s)| {
                let best = argmax(s);
                // sigma = 0: the limit of the softmax, one-hot on the best item.
                if !inv_var.is_finite() {
                    w[best] = T::from_f64(1.0);
                    return;
                }
                let top = s[best];
                let mut total = 0.0;
                let mut e = vec![0f64; n];
                for (ei, &si) in e.iter_mut().zip(s) {
                    *ei = ((si - top) * inv_var).exp();
                    total += *ei;
                }
                for (wi, &ei) in w.iter_mut().zip(&e) {
                    *wi = T::from_f64(ei / total);
                }
            });
        weights
    }
}

impl<T: Real> Denoiser<T> for IdealDenoiser<T> {
    fn denoise(&mut self, x: &[T], at: Noise, out: &mut [T]) -> Result<()> {
        IdealDenoiser::denoise(self, x, at, out)
    }
}

/// Index of the largest value (the first of equals).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &s) in v.iter().enumerate() {
        if s > v[best] {
            best = i;
        }
    }
    best
}
