//! Reference samplers of the probability-flow ODE that can start at any step.
//!
//! Every sampler takes a [`Denoiser`] (a batch of rows and a noise level in, the x0-prediction
//! out), the state `x` (row-major `batch x dim`, overwritten with the result), a schedule of
//! noise levels from noisiest to cleanest, and a start index `k`. It runs steps `k..` to the
//! end and returns the number of denoiser evaluations (NFE). This is exactly how a sampler is
//! resumed after a jump: `Context::skip` the pure noise from level 0 to level `k`, then call the
//! sampler with `start = k`.
//!
//! | sampler | schedule | one step from level i to i + 1 |
//! |---|---|---|
//! | [`edm_heun`] | EDM sigmas (alpha = 1), e.g. [`karras_sigmas`] | Karras et al. Algorithm 1 without churn: Heun, Euler on the last step to sigma = 0 |
//! | [`edm_euler`] | EDM sigmas | Euler on dx/dsigma = (x - D) / sigma |
//! | [`ddim`] | any (alpha, sigma) levels, e.g. [`ddim_levels`] | deterministic DDIM: x' = alpha' D + sigma' (x - alpha D) / sigma |
//! | [`flow_euler`] | flow times t (alpha = 1 - t, sigma = t) | Euler on the velocity: x' = x + (t' - t) (x - D) / t |
//!
//! DDIM on any levels is Euler in the EDM variables x / alpha and sigma / alpha, and
//! flow-matching Euler is DDIM on flow levels; the tests check both identities.
//!
//! Arithmetic is in f64 per element; the state is stored in the caller's precision.
//!
//! [`karras_sigmas`]: crate::noise::karras_sigmas

use crate::error::{Error, Result};
use crate::noise::Noise;

/// A real scalar the samplers and the ideal denoiser work in: `f32` or `f64`.
pub trait Real: faer::traits::RealField + Copy + Send + Sync + 'static {
    /// Widens to f64.
    fn to_f64(self) -> f64;
    /// Rounds from f64.
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// What a sampler reports once per step, before it moves: the state on the step's level and
/// the denoiser's x0-prediction there.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a, T> {
    /// Index of the level in the schedule (the step goes from `index` to `index + 1`).
    pub index: usize,
    /// The level.
    pub at: Noise,
    /// The state, row-major `batch x dim`.
    pub x: &'a [T],
    /// The x0-prediction `D(x, at)`, same layout.
    pub denoised: &'a [T],
}

/// The model a sampler calls: the x0-prediction `D(x, at) = E[x0 | x_t = x]` of a batch.
///
/// Closures `FnMut(&[T], Noise, &mut [T]) -> Result<()>` implement it.
pub trait Denoiser<T: Real> {
    /// Writes the x0-prediction of every row of `x` (row-major `batch x dim`) at level `at`
    /// into `out` (same length).
    ///
    /// # Errors
    /// Whatever the model reports (sizes, levels); the sampler stops and returns it.
    fn denoise(&mut self, x: &[T], at: Noise, out: &mut [T]) -> Result<()>;

    /// Called once per step with the state and its x0-prediction on the step's level (the
    /// first evaluation of the step). Does nothing unless overridden; recorders use it.
    fn observe(&mut self, step: Step<'_, T>) {
        let _ = step;
    }
}

impl<T: Real, F: FnMut(&[T], Noise, &mut [T]) -> Result<()>> Denoiser<T> for F {
    fn denoise(&mut self, x: &[T], at: Noise, out: &mut [T]) -> Result<()> {
        self(x, at, out)
    }
}

/// Heun's method on the EDM sigma schedule `sigmas` (noisiest first, usually ending in 0),
/// from level `start` to the end: Karras et al. (2022) Algorithm 1 with no churn. Each step
/// takes an Euler step and corrects it with the slope at its end; the last step, to sigma = 0,
/// stays Euler. A full run of N levels plus the final 0 costs 2N - 1 evaluations (18 steps: 35).
///
/// # Errors
/// `InvalidArgument` for an empty `x`, a schedule that is not strictly decreasing and
/// non-negative with only the last value 0, or `start` past the last level; any error of
/// the denoiser.
pub fn edm_heun<T: Real, D: Denoiser<T> + ?Sized>(
    den: &mut D,
    x: &mut [T],
    sigmas: &[f64],
    start: usize,
) -> Result<usize> {
    edm_run(den, x, sigmas, start, true)
}

/// Euler's method on the EDM sigma schedule `sigmas`, from level `start` to the end: one
/// evaluation per step.
///
/// # Errors
/// As [`edm_heun`].
pub fn edm_euler<T: Real, D: Denoiser<T> + ?Sized>(
    den: &mut D,
    x: &mut [T],
    sigmas: &[f64],
    start: usize,
) -> Result<usize> {
    edm_run(den, x, sigmas, start, false)
}

fn edm_run<T: Real, D: Denoiser<T> + ?Sized>(
    den: &mut D,
    x: &mut [T],
    sigmas: &[f64],
    start: usize,
    heun: bool,
) -> Result<usize> {
    let levels: Vec<Noise> = sigmas.iter().map(|&s| Noise::edm(s)).collect();
    check_run(x, &levels, start)?;
    let n = x.len();
    let mut den_out = vec![T::from_f64(0.0); n];
    let mut x_next = vec![T::from_f64(0.0); n];
    let mut slope = vec![0f64; n];
    let mut nfe = 0;
    for i in start..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let h = s_next - s;
        den.denoise(x, Noise::edm(s), &mut den_out)?;
        nfe += 1;
        den.observe(Step {
            index: i,
            at: Noise::edm(s),
            x,
            denoised: &den_out,
        });
        for ((d, xn), (&xv, &dv)) in slope
            .iter_mut()
            .zip(x_next.iter_mut())
            .zip(x.iter().zip(den_out.iter()))
        {
            *d = (xv.to_f64() - dv.to_f64()) / s;
            *xn = T::from_f64(xv.to_f64() + h * *d);
        }
        if heun && s_next > 0.0 {
            den.denoise(&x_next, Noise::edm(s_next), &mut den_out)?;
            nfe += 1;
            for (((xv, &d), &xn), &dv) in x.iter_mut().zip(&slope).zip(&x_next).zip(&den_out) {
                let d2 = (xn.to_f64() - dv.to_f64()) / s_next;
                *xv = T::from_f64(xv.to_f64() + h * 0.5 * (d + d2));
            }
        } else {
            x.copy_from_slice(&x_next);
        }
    }
    Ok(nfe)
}

/// Deterministic DDIM (eta = 0) on any affine levels (noisiest first), from level `start` to
/// the end: x' = alpha' D + sigma' eps_hat with eps_hat = (x - alpha D) / sigma. One
/// evaluation per step. Every level but the last needs sigma > 0; the last may be (1, 0),
/// which returns the x0-prediction itself (as `set_alpha_to_one`).
///
/// # Errors
/// `InvalidArgument` for an empty `x`, invalid levels, levels whose EDM sigma
/// (sigma / alpha) does not strictly decrease, or `start` past the last level; any error of
/// the denoiser.
pub fn ddim<T: Real, D: Denoiser<T> + ?Sized>(
    den: &mut D,
    x: &mut [T],
    levels: &[Noise],
    start: usize,
) -> Result<usize> {
    check_run(x, levels, start)?;
    let mut den_out = vec![T::from_f64(0.0); x.len()];
    let mut nfe = 0;
    for i in start..levels.len() - 1 {
        let (at, next) = (levels[i], levels[i + 1]);
        den.denoise(x, at, &mut den_out)?;
        nfe += 1;
        den.observe(Step {
            index: i,
            at,
            x,
            denoised: &den_out,
        });
        for (xv, &dv) in x.iter_mut().zip(&den_out) {
            let d = dv.to_f64();
            let eps = (xv.to_f64() - at.alpha * d) / at.sigma;
            *xv = T::from_f64(next.alpha * d + next.sigma * eps);
        }
    }
    Ok(nfe)
}

/// Flow-matching Euler on times `ts` from 1 (pure noise) towards 0 (alpha = 1 - t,
/// sigma = t), from level `start` to the end: x' = x + (t' - t) v with the velocity
/// v = (x - D) / t. One evaluation per step.
///
/// # Errors
/// `InvalidArgument` for an empty `x`, times outside [0, 1] or not strictly decreasing, or
/// `start` past the last level; any error of the denoiser.
pub fn flow_euler<T: Real, D: Denoiser<T> + ?Sized>(
    den: &mut D,
    x: &mut [T],
    ts: &[f64],
    start: usize,
) -> Result<usize> {
    if let Some(&t) = ts.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::arg(
            "ts",
            format!("flow times lie in [0, 1], got {t}"),
        ));
    }
    let levels: Vec<Noise> = ts.iter().map(|&t| Noise::flow(t)).collect();
    check_run(x, &levels, start)?;
    let mut den_out = vec![T::from_f64(0.0); x.len()];
    let mut nfe = 0;
    for i in start..ts.len() - 1 {
        let (t, h) = (ts[i], ts[i + 1] - ts[i]);
        den.denoise(x, levels[i], &mut den_out)?;
        nfe += 1;
        den.observe(Step {
            index: i,
            at: levels[i],
            x,
            denoised: &den_out,
        });
        for (xv, &dv) in x.iter_mut().zip(&den_out) {
            let v = (xv.to_f64() - dv.to_f64()) / t;
            *xv = T::from_f64(xv.to_f64() + h * v);
        }
    }
    Ok(nfe)
}

/// The cumulative products alpha_bar_t = prod (1 - beta_s) of the DDPM linear-beta schedule:
/// `train_steps` betas evenly spaced from `beta_start` to `beta_end` (Ho et al.: 1000,
/// 1e-4, 0.02).
///
/// # Errors
/// `InvalidArgument` for `train_steps < 2` or betas outside (0, 1) or reversed.
pub fn ddpm_alpha_bars(train_steps: usize, beta_start: f64, beta_end: f64) -> Result<Vec<f64>> {
    if train_steps < 2 {
        return Err(Error::arg("train_steps", "need at least 2"));
    }
    if !(beta_start > 0.0 && beta_start <= beta_end && beta_end < 1.0) {
        return Err(Error::arg(
            "beta_start/beta_end",
            format!("need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"),
        ));
    }
    let mut prod = 1.0;
    Ok((0..train_steps)
        .map(|i| {
            let f = i as f64 / (train_steps - 1) as f64;
            prod *= 1.0 - (beta_start + f * (beta_end - beta_start));
            prod
        })
        .collect())
}

/// DDIM sampling levels: `steps` training timesteps chosen with "trailing" spacing (the first
/// is the last training step, so sampling starts from almost pure noise), noisiest first,
/// followed by the clean level (1, 0): `steps + 1` levels.
///
/// # Errors
/// `InvalidArgument` for `steps == 0`, more steps than training steps, or `alpha_bars` not
/// strictly decreasing inside (0, 1].
pub fn ddim_levels(alpha_bars: &[f64], steps: usize) -> Result<Vec<Noise>> {
    let train = alpha_bars.len();
    if steps == 0 || steps > train {
        return Err(Error::arg(
            "steps",
            format!("need 1..={train} (the training steps), got {steps}"),
        ));
    }
    if alpha_bars.iter().any(|&a| !(a > 0.0 && a <= 1.0))
        || alpha_bars.windows(2).any(|w| w[1] >= w[0])
    {
        return Err(Error::arg(
            "alpha_bars",
            "must lie in (0, 1] and strictly decrease with the timestep",
        ));
    }
    let ratio = train as f64 / steps as f64;
    let mut levels: Vec<Noise> = (0..steps)
        .map(|i| {
            let t = (train as f64 - i as f64 * ratio).round() as usize - 1;
            Noise::vp(alpha_bars[t])
        })
        .collect();
    levels.push(Noise::new(1.0, 0.0));
    Ok(levels)
}

/// Flow-matching times 1, 1 - 1/steps, ..., 0 (`steps + 1` values), warped by the timestep
/// shift of SD3 and Flux, t -> shift t / (1 + (shift - 1) t) (1 keeps them uniform; larger
/// values spend more steps at high noise).
///
/// # Errors
/// `InvalidArgument` for `steps == 0` or a shift that is not positive and finite.
pub fn flow_times(steps: usize, shift: f64) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(Error::arg("steps", "must be at least 1"));
    }
    if !(shift > 0.0 && shift.is_finite()) {
        return Err(Error::arg("shift", format!("must be > 0, got {shift}")));
    }
    Ok((0..=steps)
        .map(|i| {
            let t = 1.0 - i as f64 / steps as f64;
            shift * t / (1.0 + (shift - 1.0) * t)
        })
        .collect())
}

/// Checks a run over `levels` from `start`: a non-empty state, valid levels with sigma > 0
/// before the last, strictly decreasing EDM sigma, and a start inside the schedule.
fn check_run<T>(x: &[T], levels: &[Noise], start: usize) -> Result<()> {
    if x.is_empty() {
        return Err(Error::arg("x", "the state is empty"));
    }
    if levels.len() < 2 {
        return Err(Error::arg(
            "schedule",
            "needs at least two levels (one step)",
        ));
    }
    for (i, n) in levels.iter().enumerate() {
        n.validate("schedule")?;
        if i + 1 < levels.len() && n.sigma <= 0.0 {
            return Err(Error::arg(
                "schedule",
                format!(
                    "level {i} has sigma = {}; only the last level may be noise-free",
                    n.sigma
                ),
            ));
        }
    }
    if let Some(i) = (1..levels.len()).find(|&i| {
        // sigma/alpha compared as sigma_i alpha_{i-1} < sigma_{i-1} alpha_i, which stays
        // finite at alpha = 0 (pure noise).
        let (p, c) = (levels[i - 1], levels[i]);
        c.sigma * p.alpha >= p.sigma * c.alpha
    }) {
        return Err(Error::arg(
            "schedule",
            format!(
                "noise must strictly decrease, but level {i} ({:?}) is not below level {} ({:?})",
                levels[i],
                i - 1,
                levels[i - 1]
            ),
        ));
    }
    if start >= levels.len() {
        return Err(Error::arg(
            "start",
            format!(
                "must be at most {} (the last level), got {start}",
                levels.len() - 1
            ),
        ));
    }
    Ok(())
}
