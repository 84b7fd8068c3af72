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

    /// An `InvalidNoise` error for this level, naming `arg`.
    pub(crate) fn invalid(&self, arg: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidNoise {
            arg,
            alpha: self.alpha,
            sigma: self.sigma,
            reason: reason.into(),
        }
    }

    /// Checks that alpha and sigma are finite, non-negative and not both zero.
    ///
    /// # Errors
    /// `InvalidNoise` naming `arg` otherwise.
    pub fn validate(&self, arg: &'static str) -> Result<()> {
        if !self.alpha.is_finite() || !self.sigma.is_finite() {
            return Err(self.invalid(arg, "alpha and sigma must be finite"));
        }
        if self.alpha < 0.0 || self.sigma < 0.0 {
            return Err(self.invalid(arg, "alpha and sigma must be >= 0"));
        }
        if self.alpha == 0.0 && self.sigma == 0.0 {
            return Err(self.invalid(arg, "alpha and sigma cannot both be 0"));
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
            return Err(self.invalid(arg, "a skip must start from sigma > 0"));
        }
        Ok(())
    }

    /// Marginal variance along a direction of data variance `lambda`: alpha^2 lambda +
    /// sigma^2 (inf or 0 where it overflows or underflows).
    fn marginal_var(&self, lambda: f64) -> f64 {
        self.alpha * self.alpha * lambda + self.sigma * self.sigma
    }

    /// Marginal standard deviation along a direction of data variance `lambda`:
    /// sqrt(alpha^2 lambda + sigma^2).
    pub fn marginal_std(&self, lambda: f64) -> f64 {
        let s2 = self.marginal_var(lambda);
        if plain_var(s2) {
            s2.sqrt()
        } else {
            // Extreme (alpha, sigma): hypot, whose squares neither overflow nor underflow.
            (self.alpha * lambda.sqrt()).hypot(self.sigma)
        }
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
/// When the levels are the same for every row, one set serves all rows (see
/// [`SlabCoeffs::index`]).
#[derive(Clone, Debug, Default)]
pub struct SlabCoeffs {
    /// Per row (or one for all): coefficient of the mean.
    pub a: Vec<f64>,
    /// Per row (or one for all): coefficient of y off the subspace.
    pub b: Vec<f64>,
    /// Row-major `rows x rank` (or `1 x rank`): weight of each mode's projection.
    pub w: Vec<f64>,
    /// Per row (or one for all): the level the slab is computed for (named in errors).
    pub level: Vec<Noise>,
}

impl SlabCoeffs {
    /// Where row `row`'s coefficients are: `row`, or 0 when one set serves every row.
    pub fn index(&self, row: usize) -> usize {
        if self.a.len() == 1 {
            0
        } else {
            row
        }
    }
}

/// Everything a backend needs to evaluate an operation on `rows` inputs: the input shift `c`
/// per row (y = x - c mu) and one or more output slabs sharing the projection U^T y.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Number of input rows.
    pub rows: usize,
    /// Number of modes (model rank).
    pub rank: usize,
    /// Per row (or one for all rows): the multiple of the mean removed from x.
    pub c: Vec<f64>,
    /// Output slabs, written one after another (`slabs.len() * rows` output rows).
    pub slabs: Vec<SlabCoeffs>,
    /// How the coefficients amplify rounding; see [`Conditioning`].
    pub conditioning: Conditioning,
    /// Name of the argument holding the slabs' levels (`to`, `at` or `levels`).
    pub target_arg: &'static str,
}

/// Largest coefficient magnitude the fast paths accept: they compute in f32.
pub const COEFF_MAX: f64 = f32::MAX as f64;

/// Smallest output gain (largest of a row's `a`, `b` and mode gains) accepted when it is not
/// 0: below it the output of a row falls under f32's normal range and loses its digits.
pub const GAIN_MIN: f64 = 1.0e-30;

/// Cancellation factor above which the CPU path starts in f64 rather than try f32 first.
pub const F32_CANCELLATION_MAX: f64 = 8.0;

/// How much an operation's coefficients can amplify rounding, from the levels and the spectrum
/// alone (the CPU path refines this with the data; see `backend::cpu`).
///
/// Every operation computes `b y + U (w .* U^T y)` with `w_k = gain_k - b`. Along mode k the
/// result is `gain_k p_k`, but it is formed as `b p_k + (gain_k - b) p_k`: where the residual
/// gain `b` exceeds a mode's gain the two terms cancel and rounding of size `b` lands on a
/// result of size `gain_k`. Their largest ratio `b / gain_k` (over rows, slabs and modes of
/// positive gain; 1 when `b` exceeds no gain) is the cancellation factor. It exceeds 1 for
/// inversions (a target noisier than the source: `b` is then the largest gain) and for models
/// whose residual variance exceeds their smallest eigenvalue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditioning {
    /// Largest ratio of the residual gain `b` to a positive mode gain below it (1 if none).
    pub cancellation: f64,
}

impl Plan {
    /// The argument name and level of output slab `slab`, row `row`, for error messages.
    pub fn target(&self, slab: usize, row: usize) -> (&'static str, Noise) {
        let s = &self.slabs[slab];
        (self.target_arg, s.level[s.index(row)])
    }

    /// The input shift of row `row`.
    pub fn c(&self, row: usize) -> f64 {
        self.c[if self.c.len() == 1 { 0 } else { row }]
    }
}

impl Default for Conditioning {
    fn default() -> Self {
        Conditioning { cancellation: 1.0 }
    }
}

impl Conditioning {
    /// True when f32 arithmetic cannot meet the precision contract whatever the data.
    pub fn needs_f64(&self) -> bool {
        self.cancellation > F32_CANCELLATION_MAX
    }
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

    /// Checks that the operation's coefficients for a model with mode variances `eigvals`
    /// (non-increasing) and off-subspace variance `residual_var` can be evaluated within the
    /// precision contract, and says how they amplify rounding. Every backend calls this
    /// before any work; it costs O(rows x slabs), not O(rank): every gain is monotone in the
    /// variance (see [`RowGains`]), so its extremes over the modes are at the first and last.
    ///
    /// # Errors
    /// Those of [`Op::validate`]; `InvalidNoise` with the reason when a coefficient is not
    /// finite or beyond [`COEFF_MAX`] (e.g. sigma_to / sigma_from above 3.4e38, alpha = 1e200), or
    /// when a row's largest gain is below [`GAIN_MIN`].
    pub fn check(&self, eigvals: &[f64], residual_var: f64, rows: usize) -> Result<Conditioning> {
        self.validate(rows)?;
        let (first, last) = match (eigvals.first(), eigvals.last()) {
            (Some(&f), Some(&l)) => (f, l),
            _ => return Err(Error::InvalidModel("a model has at least one mode".into())),
        };
        // A gain is 0 only for a variance of 0 (at a valid level): the smallest positive
        // variance has the smallest positive gain.
        let positive = eigvals.partition_point(|&l| l > 0.0);
        let spectrum = Spectrum {
            first,
            last,
            last_positive: positive.checked_sub(1).map(|k| eigvals[k]),
            residual_var,
        };
        let mut cond = Conditioning::default();
        // Rows with the same levels have the same coefficients: check each set once.
        let distinct = match self.per_row() {
            (false, false) => 1.min(rows),
            _ => rows,
        };
        for slab in 0..self.slabs() {
            for row in 0..distinct {
                let g = self.row_gains(slab, row);
                let c = g.check(&spectrum, self.target_arg())?;
                cond.cancellation = cond.cancellation.max(c.cancellation);
            }
        }
        Ok(cond)
    }

    /// The per-row shift and output coefficients for a model with mode variances `eigvals`
    /// and off-subspace variance `residual_var`, after [`Op::check`].
    ///
    /// # Errors
    /// As [`Op::check`]; `OutOfMemory` when the coefficient tables cannot be allocated.
    pub fn plan(&self, eigvals: &[f64], residual_var: f64, rows: usize) -> Result<Plan> {
        let conditioning = self.check(eigvals, residual_var, rows)?;
        let rank = eigvals.len();
        let table = |n: usize| crate::error::try_vec(n, 0.0, "coefficient table");
        // Levels given once for all rows give one set of coefficients for all rows.
        let (source_rows, target_rows) = self.per_row();
        let c_rows = if source_rows { rows } else { 1 };
        let mut plan = Plan {
            rows,
            rank,
            c: table(c_rows)?,
            slabs: Vec::new(),
            conditioning,
            target_arg: self.target_arg(),
        };
        for (row, c) in plan.c.iter_mut().enumerate() {
            *c = self.row_gains(0, row).c();
        }
        let n = if source_rows || target_rows { rows } else { 1 };
        let weights = n
            .checked_mul(rank)
            .ok_or_else(|| Error::arg("batch", "rows x rank overflows"))?;
        for slab in 0..self.slabs() {
            let mut coeffs = SlabCoeffs {
                a: table(n)?,
                b: table(n)?,
                w: table(weights)?,
                level: crate::error::try_vec(n, Noise::new(0.0, 0.0), "level table")?,
            };
            for row in 0..n {
                let g = self.row_gains(slab, row);
                let gp = g.gain(residual_var);
                coeffs.a[row] = g.a();
                coeffs.b[row] = gp;
                coeffs.level[row] = g.target();
                g.weights(eigvals, gp, &mut coeffs.w[row * rank..(row + 1) * rank]);
            }
            plan.slabs.push(coeffs);
        }
        Ok(plan)
    }

    /// Whether the source and the target levels are given per row.
    fn per_row(&self) -> (bool, bool) {
        let rows = |l: &Levels<'_>| matches!(l, Levels::PerRow(_));
        match self {
            Op::Skip { from, to } => (rows(from), rows(to)),
            Op::Denoise { at } => (rows(at), rows(at)),
            Op::SkipTrajectory { from, .. } | Op::X0Trajectory { from, .. } => (rows(from), false),
        }
    }

    /// The name of the argument holding the output levels (`to`, `at` or `levels`).
    fn target_arg(&self) -> &'static str {
        match self {
            Op::Skip { .. } => "to",
            Op::Denoise { .. } => "at",
            Op::SkipTrajectory { .. } | Op::X0Trajectory { .. } => "levels",
        }
    }

    /// The levels that define output slab `slab` of row `row`.
    fn row_gains(&self, slab: usize, row: usize) -> RowGains {
        match *self {
            Op::Skip { from, to } => RowGains::Skip {
                from: from.get(row),
                to: to.get(row),
            },
            Op::Denoise { at } => RowGains::Denoise { at: at.get(row) },
            Op::SkipTrajectory { from, levels } => RowGains::Skip {
                from: from.get(row),
                to: levels[slab],
            },
            Op::X0Trajectory { from, levels } => RowGains::X0 {
                from: from.get(row),
                to: levels[slab],
            },
        }
    }
}

/// Whether a marginal variance is computed without overflow or loss to underflow: its
/// square root and ratios with others like it need no rescaling.
fn plain_var(s2: f64) -> bool {
    s2.is_finite() && s2 > 1e-280
}

/// The skip gain s_t / s_s of a direction of variance `lambda`: sqrt(s_t^2 / s_s^2) (one
/// rounding fewer than the ratio of the roots) where both variances are plain, otherwise the
/// ratio of the rescaled roots.
fn skip_gain(from: Noise, to: Noise, lambda: f64) -> f64 {
    let (num, den) = (to.marginal_var(lambda), from.marginal_var(lambda));
    if plain_var(num) && plain_var(den) {
        (num / den).sqrt()
    } else {
        to.marginal_std(lambda) / from.marginal_std(lambda)
    }
}

/// The variances that bound every coefficient of an operation (see [`RowGains::check`]).
struct Spectrum {
    first: f64,
    last: f64,
    last_positive: Option<f64>,
    residual_var: f64,
}

/// The coefficients of one output row as functions of a direction's variance lambda: the
/// table of SPEC §4. Every gain is non-negative and monotone in lambda: the skip gain
/// sqrt((alpha_t^2 l + sigma_t^2) / (alpha_s^2 l + sigma_s^2)) is a ratio of linear functions
/// under a root, the denoiser gain alpha l / (alpha^2 l + sigma^2) increases, and their
/// product alpha_t l / sqrt(s_t^2 s_s^2) increases (its log-derivative is a sum of
/// non-negative terms).
#[derive(Clone, Copy, Debug)]
enum RowGains {
    Skip { from: Noise, to: Noise },
    Denoise { at: Noise },
    X0 { from: Noise, to: Noise },
}

impl RowGains {
    /// Gain of a direction of variance `lambda`.
    fn gain(&self, lambda: f64) -> f64 {
        match *self {
            RowGains::Skip { from, to } => skip_gain(from, to, lambda),
            RowGains::Denoise { at } => at.denoise_gain(lambda),
            RowGains::X0 { from, to } => to.denoise_gain(lambda) * skip_gain(from, to, lambda),
        }
    }

    /// `out[k] = gain(eigvals[k]) - shift` for variances sorted in non-increasing order
    /// (non-negative, finite). A skip whose marginal variances are plain at both ends of the
    /// spectrum has them plain at every mode (each is monotone in lambda, and so is its
    /// rounding): its loop has no branch, so the compiler vectorises its divisions and roots.
    fn weights(&self, eigvals: &[f64], shift: f64, out: &mut [f64]) {
        if let RowGains::Skip { from, to } = *self {
            let plain_at =
                |l: f64| plain_var(to.marginal_var(l)) && plain_var(from.marginal_var(l));
            let ends = eigvals.first().zip(eigvals.last());
            if ends.is_some_and(|(&first, &last)| plain_at(first) && plain_at(last)) {
                return crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (w, &l) in out.iter_mut().zip(eigvals) {
                            *w = (to.marginal_var(l) / from.marginal_var(l)).sqrt() - shift;
                        }
                    },
                );
            }
        }
        for (w, &l) in out.iter_mut().zip(eigvals) {
            *w = self.gain(l) - shift;
        }
    }

    /// Coefficient of the mean in the output.
    fn a(&self) -> f64 {
        match *self {
            RowGains::Skip { to, .. } => to.alpha,
            RowGains::Denoise { .. } | RowGains::X0 { .. } => 1.0,
        }
    }

    /// Multiple of the mean removed from the input.
    fn c(&self) -> f64 {
        match *self {
            RowGains::Skip { from, .. } | RowGains::X0 { from, .. } => from.alpha,
            RowGains::Denoise { at } => at.alpha,
        }
    }

    /// The level the output is computed for.
    fn target(&self) -> Noise {
        match *self {
            RowGains::Skip { to, .. } | RowGains::X0 { to, .. } => to,
            RowGains::Denoise { at } => at,
        }
    }

    /// The level an error about the input shift names.
    fn source(&self) -> (&'static str, Noise) {
        match *self {
            RowGains::Skip { from, .. } | RowGains::X0 { from, .. } => ("from", from),
            RowGains::Denoise { at } => ("at", at),
        }
    }

    /// Checks this row's coefficients for the modes and residual variance of `spec` (see
    /// [`Op::check`]); errors about the output name `arg`.
    fn check(&self, spec: &Spectrum, arg: &'static str) -> Result<Conditioning> {
        let (gf, gl, gp) = (
            self.gain(spec.first),
            self.gain(spec.last),
            self.gain(spec.residual_var),
        );
        let (lo, hi) = (gf.min(gl), gf.max(gl));
        let lo_positive = match spec.last_positive {
            Some(l) => gf.min(self.gain(l)),
            None => 0.0,
        };
        let (c, a) = (self.c(), self.a());
        let (src_arg, src) = self.source();
        if c.is_nan() || c.abs() > COEFF_MAX {
            return Err(src.invalid(
                src_arg,
                format!("alpha is beyond the f32 range ({COEFF_MAX:e}) the computation runs in"),
            ));
        }
        let level = self.target();
        let what = match *self {
            RowGains::Skip { from, .. } | RowGains::X0 { from, .. } => {
                format!(" (from alpha = {:?}, sigma = {:?})", from.alpha, from.sigma)
            }
            RowGains::Denoise { .. } => String::new(),
        };
        let coeffs = [a, gp, hi, hi - gp, lo - gp];
        if !coeffs.iter().all(|v| v.abs() <= COEFF_MAX) {
            let worst = coeffs
                .iter()
                .map(|v| if v.is_nan() { f64::INFINITY } else { v.abs() })
                .fold(0.0, f64::max);
            return Err(level.invalid(
                arg,
                format!(
                    "a coefficient of this operation{what} is {worst:e}, beyond the f32 range ({COEFF_MAX:e}) the computation runs in; the output would overflow"
                ),
            ));
        }
        let largest = a.max(gp).max(hi);
        if largest > 0.0 && largest < GAIN_MIN {
            return Err(level.invalid(
                arg,
                format!(
                    "every gain of this operation{what} is below {GAIN_MIN:e} (largest {largest:e}); the output would underflow f32"
                ),
            ));
        }
        let mut cond = Conditioning::default();
        if lo_positive > 0.0 && gp > lo_positive {
            cond.cancellation = gp / lo_positive;
        }
        Ok(cond)
    }
}

/// epsilon-prediction from a denoised estimate: (x - alpha D) / sigma.
///
/// # Errors
/// `InvalidNoise` for sigma = 0 (no noise to predict); `ShapeMismatch` for unequal lengths.
pub fn eps_from_denoised(x: &[f64], denoised: &[f64], at: Noise) -> Result<Vec<f64>> {
    at.validate("at")?;
    if at.sigma <= 0.0 {
        return Err(at.invalid("at", "epsilon and score need sigma > 0"));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The skip weights of a whole spectrum: where both ends are plain, the branch-free loop
    /// gives the bits of the gain mode by mode; at levels whose variances overflow or
    /// underflow (1e-200, 1e200) it falls back to the rescaled roots, finite and within a few
    /// roundings of the ratio computed in logarithms.
    #[test]
    fn skip_weights_match_the_gain_of_each_mode() {
        let eigvals: Vec<f64> = (0..37)
            .map(|k| 10f64.powf(3.0 - k as f64 * 0.4))
            .chain([0.0])
            .collect();
        let levels = [
            (Noise::new(1.0, 80.0), Noise::new(1.0, 19.4)),
            (Noise::new(0.3, 0.95), Noise::new(0.9, 0.43)),
            (Noise::new(1.0, 1e-6), Noise::new(1.0, 1e6)),
            (Noise::new(1.0, 1e-200), Noise::new(1.0, 10.0)),
            (Noise::new(1e-150, 1e200), Noise::new(1.0, 1e-3)),
        ];
        for (from, to) in levels {
            let g = RowGains::Skip { from, to };
            let mut w = vec![f64::NAN; eigvals.len()];
            g.weights(&eigvals, 0.25, &mut w);
            for (&wk, &l) in w.iter().zip(&eigvals) {
                assert_eq!(wk, g.gain(l) - 0.25, "{from:?} -> {to:?} at {l}");
                let log_var = |n: Noise| {
                    let (a, b) = (2.0 * n.alpha.ln() + l.ln(), 2.0 * n.sigma.ln());
                    a.max(b) + (a.min(b) - a.max(b)).exp().ln_1p()
                };
                let want = (0.5 * (log_var(to) - log_var(from))).exp();
                let got = g.gain(l);
                assert!(
                    got.is_finite() && (got - want).abs() <= 1e-13 * want,
                    "{from:?} -> {to:?} at {l}: {got} vs {want}"
                );
            }
        }
    }
}
