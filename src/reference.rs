//! The f64 reference implementation: the test oracle.
//!
//! Slow and obvious on purpose. It works one row at a time straight from the definitions:
//! project y = x - alpha_s mean onto every eigenvector, scale each coefficient by its own gain,
//! scale what is left off the subspace by the residual gain, and add the mean back. It does not
//! use the combined coefficients of [`crate::noise::Op::plan`], so it checks those too.
//!
//! Everything the fast paths promise (SPEC §5) is measured against this module as
//! `‖out − ref‖ / ‖ref‖`.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::{Levels, Noise, Op};

/// A Gaussian model held in f64.
#[derive(Clone, Debug)]
pub struct Gaussian {
    /// Mean, length d.
    pub mean: Vec<f64>,
    /// Mode variances, length r.
    pub eigvals: Vec<f64>,
    /// Eigenvectors, one `Vec` of length d per mode.
    pub eigvecs: Vec<Vec<f64>>,
    /// Variance off the span of the eigenvectors.
    pub residual_var: f64,
}

impl Gaussian {
    /// The exact f64 image of a model's stored values.
    pub fn from_model(model: &Model) -> Self {
        let d = model.dim();
        Gaussian {
            mean: model.mean().iter().map(|&v| v as f64).collect(),
            eigvals: model.eigvals().to_vec(),
            eigvecs: model
                .eigvecs()
                .chunks_exact(d)
                .map(|row| row.iter().map(|&v| v as f64).collect())
                .collect(),
            residual_var: model.residual_var(),
        }
    }

    /// Data dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Splits y into its eigen-coefficients and the part off the subspace.
    fn split(&self, y: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let coeffs: Vec<f64> = self.eigvecs.iter().map(|u| dot(u, y)).collect();
        let mut rest = y.to_vec();
        for (u, &p) in self.eigvecs.iter().zip(&coeffs) {
            axpy(-p, u, &mut rest);
        }
        (coeffs, rest)
    }

    /// Shared shape of every operation: y = x - c mean, then
    /// out = a mean + gain_perp * rest + sum_k gain(lambda_k) p_k u_k.
    fn map(&self, x: &[f64], c: f64, a: f64, gain: impl Fn(f64) -> f64) -> Vec<f64> {
        let y: Vec<f64> = x
            .iter()
            .zip(&self.mean)
            .map(|(&xi, &m)| xi - c * m)
            .collect();
        let (coeffs, rest) = self.split(&y);
        let gp = gain(self.residual_var);
        let mut out: Vec<f64> = self
            .mean
            .iter()
            .zip(&rest)
            .map(|(&m, &r)| a * m + gp * r)
            .collect();
        for ((u, &p), &l) in self.eigvecs.iter().zip(&coeffs).zip(&self.eigvals) {
            axpy(gain(l) * p, u, &mut out);
        }
        out
    }

    /// Exact PF-ODE map of one row from level `from` to level `to`.
    pub fn skip(&self, x: &[f64], from: Noise, to: Noise) -> Vec<f64> {
        self.map(x, from.alpha, to.alpha, |l| {
            to.marginal_std(l) / from.marginal_std(l)
        })
    }

    /// Posterior mean E[x0 | x_t = x] at level `at`.
    pub fn denoise(&self, x: &[f64], at: Noise) -> Vec<f64> {
        self.map(x, at.alpha, 1.0, |l| at.denoise_gain(l))
    }

    /// The x0-prediction at level `to` along the exact path that starts at `x` on level `from`
    /// (equal to `denoise(skip(x, from, to), to)`).
    pub fn x0_along_jump(&self, x: &[f64], from: Noise, to: Noise) -> Vec<f64> {
        self.map(x, from.alpha, 1.0, |l| {
            to.denoise_gain(l) * to.marginal_std(l) / from.marginal_std(l)
        })
    }

    /// epsilon-prediction (x - alpha D(x)) / sigma.
    ///
    /// # Errors
    /// `InvalidNoise` for sigma = 0.
    pub fn eps(&self, x: &[f64], at: Noise) -> Result<Vec<f64>> {
        crate::noise::eps_from_denoised(x, &self.denoise(x, at), at)
    }

    /// Score of the noisy marginal, -(x - alpha D(x)) / sigma^2.
    ///
    /// # Errors
    /// `InvalidNoise` for sigma = 0.
    pub fn score(&self, x: &[f64], at: Noise) -> Result<Vec<f64>> {
        crate::noise::score_from_denoised(x, &self.denoise(x, at), at)
    }

    /// Commitment of every mode at `at`: rho_k = sqrt(alpha^2 lambda_k / s_k^2).
    pub fn commitment(&self, at: Noise) -> Vec<f64> {
        self.eigvals.iter().map(|&l| at.commitment(l)).collect()
    }

    /// Applies any operation to a batch of rows (row-major `rows x dim`), with the same
    /// argument checks and output layout as the fast paths: slab after slab, each `rows x dim`.
    ///
    /// # Errors
    /// `ShapeMismatch` when `x` is not `rows x dim`, and the level errors of [`Op::validate`].
    pub fn apply(&self, op: Op<'_>, x: &[f64], rows: usize) -> Result<Vec<f64>> {
        let d = self.dim();
        if x.len() != rows * d {
            return Err(Error::shape("x", format!("{rows} x {d}"), x.len()));
        }
        op.validate(rows)?;
        let level = |l: &Levels<'_>, i: usize| match l {
            Levels::One(n) => *n,
            Levels::PerRow(v) => v[i],
        };
        let mut out = Vec::with_capacity(op.slabs() * rows * d);
        let row = |i: usize| &x[i * d..(i + 1) * d];
        match op {
            Op::Skip { from, to } => {
                for i in 0..rows {
                    out.extend(self.skip(row(i), level(&from, i), level(&to, i)));
                }
            }
            Op::Denoise { at } => {
                for i in 0..rows {
                    out.extend(self.denoise(row(i), level(&at, i)));
                }
            }
            Op::SkipTrajectory { from, levels } => {
                for &t in levels {
                    for i in 0..rows {
                        out.extend(self.skip(row(i), level(&from, i), t));
                    }
                }
            }
            Op::X0Trajectory { from, levels } => {
                for &t in levels {
                    for i in 0..rows {
                        out.extend(self.x0_along_jump(row(i), level(&from, i), t));
                    }
                }
            }
        }
        Ok(out)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(yi, &xi)| *yi += alpha * xi);
}

/// Relative error ‖a − b‖ / ‖b‖ in f64 (the precision measure of SPEC §5). NaN anywhere gives
/// infinity, so a NaN never passes a tolerance.
pub fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_error: lengths differ");
    let mut num = 0.0;
    let mut den = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}
