//! Noise levels of an affine forward process and the coefficients of every operation.
//!
//! A noise level is a pair (alpha, sigma) with x_t = alpha * x0 + sigma * eps. This module is the
//! one place where the formulas of SPEC §4 live: every backend (f64 reference, CPU, CUDA) gets
//! its per-row scalars `a`, `b`, `c` and per-mode weights `w` from here, or, for the CUDA
//! kernels, evaluates exactly these expressions on the device.
//!
//! With s_k = sqrt(alpha^2 lambda_k + sigma^2) and s_perp = sqrt(alpha^2 lambda_perp + sigma^2):
//!
//! | operation | c | a | b | w_k |
//! |---|---|---|---|---|
//! | skip s -> t | alpha_s | alpha_t | g_perp | g_k - g_perp |
//! | denoise at t | alpha | 1 | h_perp | h_k - h_perp |
//! | x0 along the jump s -> t | alpha_s | 1 | h_perp(t) g_perp | h_k(t) g_k - h_perp(t) g_perp |
//!
//! with g_k = s_k(t) / s_k(s) and h_k = alpha lambda_k / s_k^2 (0 where s_k = 0).

use crate::error::{Error, Result};

/// One noise level of an affine forward process: `x_t = alpha * x0 + sigma * eps`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Noise {
    /// Signal scale, `alpha >= 0`.
    pub alpha: f64,
    /// Noise scale, `sigma >= 0`.
    pub sigma: f64,
}

impl Noise {
    /// A level given directly by its two scales.
    pub const fn new(alpha: f64, sigma: f64) -> Self {
        Noise { alpha, sigma }
    }

    /// EDM / variance-exploding level (k-diffusion, Karras et al.): alpha = 1.
    pub const fn edm(sigma: f64) -> Self {
        Noise { alpha: 1.0, sigma }
    }

    /// Variance-preserving level (DDPM, DDIM, DPM-Solver) from the cumulative product
    /// alpha_bar: alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar).
    pub fn vp(alpha_bar: f64) -> Self {
        Noise {
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).sqrt(),
        }
    }

    /// Rectified-flow / flow-matching level (SD3, Flux): alpha = 1 - t, sigma = t.
    pub fn flow(t: f64) -> Self {
        Noise {
            alpha: 1.0 - t,
            sigma: t,
        }
    }

    /// The equivalent EDM noise level sigma / alpha (infinite for pure noise).
    pub fn edm_sigma(&self) -> f64 {
        self.sigma / self.alpha
    }

    /// Checks that alpha and sigma are finite, non-negative and not both zero.
    ///
    /// # Errors
    /// `InvalidNoise` naming `arg` otherwise.
    pub fn validate(&self, arg: &'static str) -> Result<()> {
        let bad = |reason| Error::InvalidNoise {
            arg,
            alpha: self.alpha,
            sigma: self.sigma,
            reason,
        };
        if !self.alpha.is_finite() || !self.sigma.is_finite() {
            return Err(bad("alpha and sigma must be finite"));
        }
        if self.alpha < 0.0 || self.sigma < 0.0 {
            return Err(bad("alpha and sigma must be >= 0"));
        }
        if self.alpha == 0.0 && self.sigma == 0.0 {
            return Err(bad("alpha and sigma cannot both be 0"));
        }
        Ok(())
    }

    /// Checks a level the skip (or trajectory) starts from: valid and sigma > 0, so that every
    /// mode has a positive marginal standard deviation to divide by.
    ///
    /// # Errors
    /// `InvalidNoise` naming `arg` otherwise.
    pub fn validate_source(&self, arg: &'static str) -> Result<()> {
        self.validate(arg)?;
        if self.sigma <= 0.0 {
            return Err(Error::InvalidNoise {
                arg,
                alpha: self.alpha,
                sigma: self.sigma,
                reason: "a skip must start from sigma > 0",
            });
        }
        Ok(())
    }

    /// Marginal standard deviation along a direction of data variance `lambda`:
    /// sqrt(alpha^2 lambda + sigma^2).
    pub fn marginal_std(&self, lambda: f64) -> f64 {
        (self.alpha * self.alpha * lambda + self.sigma * self.sigma).sqrt()
    }

    /// Posterior-mean gain of a direction of variance `lambda`: alpha lambda / s^2 (0 where the
    /// marginal variance is 0, i.e. the direction carries no data variance and no noise).
    pub fn denoise_gain(&self, lambda: f64) -> f64 {
        let s2 = self.alpha * self.alpha * lambda + self.sigma * self.sigma;
        if s2 > 0.0 {
            self.alpha * lambda / s2
        } else {
            0.0
        }
    }

    /// Fraction of its final x0 coefficient that a mode of variance `lambda` holds at this
    /// level: rho = sqrt(alpha^2 lambda / s^2). Half committed by power where sigma/alpha = sqrt(lambda).
    pub fn commitment(&self, lambda: f64) -> f64 {
        let s2 = self.alpha * self.alpha * lambda + self.sigma * self.sigma;
        if s2 > 0.0 {
            (self.alpha * self.alpha * lambda / s2).sqrt()
        } else {
            0.0
        }
    }
}

/// The Karras et al. (EDM) sigma schedule with `steps` levels from `sigma_max` down to
/// `sigma_min` (exponent `rho`, usually 7), followed by a final 0: `steps + 1` values.
///
/// # Errors
/// `InvalidArgument` for `steps == 0`, non-positive or reversed bounds, or `rho <= 0`.
pub fn karras_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(Error::arg("steps", "must be at least 1"));
    }
    if !(sigma_min > 0.0 && sigma_max >= sigma_min && sigma_max.is_finite()) {
        return Err(Error::arg(
            "sigma_min/sigma_max",
            format!("need 0 < sigma_min <= sigma_max < inf, got {sigma_min} and {sigma_max}"),
        ));
    }
    if !(rho > 0.0 && rho.is_finite()) {
        return Err(Error::arg("rho", format!("must be > 0, got {rho}")));
    }
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let mut out: Vec<f64> = (0..steps)
        .map(|i| {
            let f = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (hi + f * (lo - hi)).powf(rho)
        })
        .collect();
    out.push(0.0);
    Ok(out)
}

/// Per-row scalars and per-mode weights of one output slab: `out = a mu + b y + U (w .* U^T y)`.
#[derive(Clone, Debug, Default)]
pub struct SlabCoeffs {
    /// Per row: coefficient of the mean.
    pub a: Vec<f64>,
    /// Per row: coefficient of y off the subspace.
    pub b: Vec<f64>,
    /// Row-major `rows x rank`: weight of each mode's projection.
    pub w: Vec<f64>,
}

/// Everything a backend needs to evaluate an operation on `rows` inputs: the input shift `c`
/// per row (y = x - c mu) and one or more output slabs sharing the projection U^T y.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Number of input rows.
    pub rows: usize,
    /// Number of modes (model rank).
    pub rank: usize,
    /// Per row: the multiple of the mean removed from x.
    pub c: Vec<f64>,
    /// Output slabs, written one after another (`slabs.len() * rows` output rows).
    pub slabs: Vec<SlabCoeffs>,
}

/// Noise levels given once for a whole batch or once per row.
#[derive(Clone, Copy, Debug)]
pub enum Levels<'a> {
    /// The same level for every row.
    One(Noise),
    /// One level per row (length must equal the batch).
    PerRow(&'a [Noise]),
}

impl<'a> Levels<'a> {
    fn get(&self, row: usize) -> Noise {
        match self {
            Levels::One(n) => *n,
            Levels::PerRow(v) => v[row],
        }
    }

    fn check(&self, arg: &'static str, rows: usize, source: bool) -> Result<()> {
        let check_one = |n: &Noise| {
            if source {
                n.validate_source(arg)
            } else {
                n.validate(arg)
            }
        };
        match self {
            Levels::One(n) => check_one(n),
            Levels::PerRow(v) => {
                if v.len() != rows {
                    return Err(Error::shape(
                        arg,
                        format!("{rows} levels (one per row)"),
                        v.len(),
                    ));
                }
                v.iter().try_for_each(check_one)
            }
        }
    }
}

impl<'a> From<Noise> for Levels<'a> {
    fn from(n: Noise) -> Self {
        Levels::One(n)
    }
}

impl<'a> From<&'a [Noise]> for Levels<'a> {
    fn from(v: &'a [Noise]) -> Self {
        Levels::PerRow(v)
    }
}

/// An operation of SPEC §4, with its noise levels.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// Exact PF-ODE map from level `from` to level `to`.
    Skip { from: Levels<'a>, to: Levels<'a> },
    /// Posterior mean E[x0 | x_t] at level `at`.
    Denoise { at: Levels<'a> },
    /// The state along the exact path from `from` at each of `levels` (one output slab each).
    SkipTrajectory {
        from: Levels<'a>,
        levels: &'a [Noise],
    },
    /// The x0-prediction along the exact path from `from` at each of `levels`.
    X0Trajectory {
        from: Levels<'a>,
        levels: &'a [Noise],
    },
}

impl<'a> Op<'a> {
    /// Number of output slabs (rows of output = slabs * batch).
    pub fn slabs(&self) -> usize {
        match self {
            Op::Skip { .. } | Op::Denoise { .. } => 1,
            Op::SkipTrajectory { levels, .. } | Op::X0Trajectory { levels, .. } => levels.len(),
        }
    }

    /// Validates the levels for a batch of `rows`.
    ///
    /// # Errors
    /// `InvalidNoise` or `ShapeMismatch` for levels the operation cannot use.
    pub fn validate(&self, rows: usize) -> Result<()> {
        match self {
            Op::Skip { from, to } => {
                from.check("from", rows, true)?;
                to.check("to", rows, false)
            }
            Op::Denoise { at } => at.check("at", rows, false),
            Op::SkipTrajectory { from, levels } | Op::X0Trajectory { from, levels } => {
                from.check("from", rows, true)?;
                if levels.is_empty() {
                    return Err(Error::arg("levels", "need at least one level"));
                }
                levels.iter().try_for_each(|n| n.validate("levels"))
            }
        }
    }

    /// The per-row shift and output coefficients for a model with mode variances `eigvals`
    /// and off-subspace variance `residual_var`.
    ///
    /// # Errors
    /// As [`Op::validate`].
    pub fn plan(&self, eigvals: &[f64], residual_var: f64, rows: usize) -> Result<Plan> {
        self.validate(rows)?;
        let rank = eigvals.len();
        let mut plan = Plan {
            rows,
            rank,
            c: Vec::with_capacity(rows),
            slabs: Vec::new(),
        };
        let targets: Vec<(Levels<'_>, bool)> = match *self {
            Op::Skip { to, .. } => vec![(to, false)],
            Op::Denoise { at } => vec![(at, true)],
            Op::SkipTrajectory { levels, .. } => {
                levels.iter().map(|&n| (Levels::One(n), false)).collect()
            }
            Op::X0Trajectory { levels, .. } => {
                levels.iter().map(|&n| (Levels::One(n), true)).collect()
            }
        };
        for row in 0..rows {
            let c = match self {
                Op::Denoise { at } => at.get(row).alpha,
                Op::Skip { from, .. }
                | Op::SkipTrajectory { from, .. }
                | Op::X0Trajectory { from, .. } => from.get(row).alpha,
            };
            plan.c.push(c);
        }
        for (to, x0) in targets {
            let mut slab = SlabCoeffs {
                a: Vec::with_capacity(rows),
                b: Vec::with_capacity(rows),
                w: Vec::with_capacity(rows * rank),
            };
            for row in 0..rows {
                let t = to.get(row);
                let (a, b) = match self {
                    Op::Denoise { .. } => {
                        let hp = t.denoise_gain(residual_var);
                        slab.w
                            .extend(eigvals.iter().map(|&l| t.denoise_gain(l) - hp));
                        (1.0, hp)
                    }
                    Op::Skip { from, .. }
                    | Op::SkipTrajectory { from, .. }
                    | Op::X0Trajectory { from, .. } => {
                        let s = from.get(row);
                        let gain = |l: f64| {
                            let g = t.marginal_std(l) / s.marginal_std(l);
                            if x0 {
                                t.denoise_gain(l) * g
                            } else {
                                g
                            }
                        };
                        let gp = gain(residual_var);
                        slab.w.extend(eigvals.iter().map(|&l| gain(l) - gp));
                        (if x0 { 1.0 } else { t.alpha }, gp)
                    }
                };
                slab.a.push(a);
                slab.b.push(b);
            }
            plan.slabs.push(slab);
        }
        Ok(plan)
    }
}

/// epsilon-prediction from a denoised estimate: (x - alpha D) / sigma.
///
/// # Errors
/// `InvalidNoise` for sigma = 0 (no noise to predict); `ShapeMismatch` for unequal lengths.
pub fn eps_from_denoised(x: &[f64], denoised: &[f64], at: Noise) -> Result<Vec<f64>> {
    at.validate("at")?;
    if at.sigma <= 0.0 {
        return Err(Error::InvalidNoise {
            arg: "at",
            alpha: at.alpha,
            sigma: at.sigma,
            reason: "epsilon and score need sigma > 0",
        });
    }
    if x.len() != denoised.len() {
        return Err(Error::shape("denoised", x.len(), denoised.len()));
    }
    Ok(x.iter()
        .zip(denoised)
        .map(|(&xi, &di)| (xi - at.alpha * di) / at.sigma)
        .collect())
}

/// Score of the noisy marginal from a denoised estimate: -(x - alpha D) / sigma^2.
///
/// # Errors
/// As [`eps_from_denoised`].
pub fn score_from_denoised(x: &[f64], denoised: &[f64], at: Noise) -> Result<Vec<f64>> {
    let mut e = eps_from_denoised(x, denoised, at)?;
    e.iter_mut().for_each(|v| *v = -*v / at.sigma);
    Ok(e)
}
