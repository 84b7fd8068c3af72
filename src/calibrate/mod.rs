//! Calibration of the hand-off on the user's own network: how many steps may the jump replace?
//!
//! Given a model, the user's denoiser (an x0-predictor `D(x, level)`, as k-diffusion wraps
//! every network), the sampler and its schedule of noise levels (EDM sigmas, or VP or flow
//! levels), and a small batch of calibration noise `x_T` at the first level, [`calibrate`]
//! runs:
//!
//! 1. the reference: the whole schedule without a jump. Each step's first evaluation is
//!    compared with the Gaussian's denoiser at the same state (no extra network call): the
//!    *denoiser gap* RMS(D_net − D_gauss) at every sigma, the quantity the jump neglects;
//! 2. the step check (default tolerance): the same sampler on the schedule refined by the
//!    midpoint of every step but a last one to sigma = 0 (see [`refined`]; twice the steps),
//!    also recorded. At every level of the schedule the two runs give, by Richardson
//!    extrapolation, the exact trajectory's state and the sampler's own error there; the RMS
//!    between the two runs' final samples is reported as the sampler's step-count error;
//! 3. for k = 1, 2, …: the jump from `levels[0]` to `levels[k]` (no network call) and its
//!    error against the exact state at `levels[k]`, then the sampler's remaining steps: the
//!    RMS of its final samples against the reference's (and, with a reference set, how many
//!    end nearest the same reference item). Candidates stop after the first one beyond the
//!    tolerance, unless a full table is asked for.
//!
//! The default criterion is decided at the hand-off, where the jump's effect is a continuous
//! state error: candidate k is within when the jump lands no further from the exact state
//! than [`Sampler::handoff_factor`] times the sampler's own error there, which is half the
//! error the same sampler makes there with half the steps (Euler/DDIM: 1, Heun: 2). The
//! sampler after the hand-off is the same for both states, so a jump within this bound
//! moves the final samples, roughly, half as far from the exact ones as running the skipped
//! steps at half the step count would (measured, not assumed: the final-sample change is in
//! the table). Both errors are RMS over every draw and coordinate, so 8 to 32 draws measure them
//! to a few percent. The final-sample change is not used for the default choice: a network
//! whose samples change all or nothing per draw (a memorising one, or the bundled ideal
//! model) switches a few percent of its samples when the jump goes too far, which 32 draws
//! cannot see reliably (the README has the measurements).
//!
//! The chosen k is the largest with every candidate up to it within the tolerance. The
//! network evaluations of all runs are counted and reported.
//!
//! Samplers: [`Sampler::Heun`] is [`crate::sampler::edm_heun`] (Karras et al. Algorithm 1, no
//! churn; EDM levels, alpha = 1), [`Sampler::Euler`] is [`crate::sampler::ddim`], which is
//! Euler on EDM levels, deterministic DDIM on VP levels and flow-matching Euler on flow
//! levels (the sampler tests check these identities).

mod handoff;
pub mod store;

pub use store::{schedule_key, Calibrations};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ideal::IdealDenoiser;
use crate::model::Model;
use crate::noise::Noise;
use crate::sampler::{ddim, edm_heun, Denoiser, Step};

/// The sampler whose hand-off is calibrated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// Euler on dx/dsigma = (x − D) / sigma in EDM variables: one evaluation per step; on VP
    /// levels this is deterministic DDIM, on flow levels flow-matching Euler.
    Euler,
    /// Heun (Karras et al. Algorithm 1, no churn) on EDM levels: two evaluations per step,
    /// one on the last step to sigma = 0.
    Heun,
}

impl Sampler {
    /// The name stored in model files and taken by the command line: `euler` or `heun`.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Euler => "euler",
            Sampler::Heun => "heun",
        }
    }

    /// The sampler of a name given by [`Sampler::name`].
    ///
    /// # Errors
    /// `InvalidArgument` for any other name.
    pub fn from_name(name: &str) -> Result<Sampler> {
        match name {
            "euler" => Ok(Sampler::Euler),
            "heun" => Ok(Sampler::Heun),
            other => Err(Error::arg(
                "sampler",
                format!("{other:?} is not \"euler\" or \"heun\""),
            )),
        }
    }

    /// Runs this sampler on `levels` from level `start`; returns the NFE.
    fn run<D: Denoiser<f32> + ?Sized>(
        self,
        den: &mut D,
        x: &mut [f32],
        levels: &[Noise],
        start: usize,
    ) -> Result<usize> {
        match self {
            Sampler::Euler => ddim(den, x, levels, start),
            Sampler::Heun => {
                let sigmas: Vec<f64> = levels.iter().map(|n| n.sigma).collect();
                edm_heun(den, x, &sigmas, start)
            }
        }
    }

    /// The order of accuracy of the sampler: 1 for Euler (and DDIM), 2 for Heun.
    pub fn order(self) -> i32 {
        match self {
            Sampler::Euler => 1,
            Sampler::Heun => 2,
        }
    }

    /// The default tolerance at the hand-off: the largest accepted ratio of the jump's error
    /// to the sampler's own error at the hand-off level. A sampler of order p with half the
    /// steps makes 2^p times its error; half of that, 2^(p − 1), is the bound (1 for Euler,
    /// 2 for Heun).
    pub fn handoff_factor(self) -> f64 {
        2f64.powi(self.order() - 1)
    }

    /// Network evaluations of a run on `levels` from level `start`.
    pub fn nfe(self, levels: &[Noise], start: usize) -> usize {
        let steps = levels.len().saturating_sub(1).saturating_sub(start);
        match self {
            Sampler::Euler => steps,
            Sampler::Heun => {
                let last_to_zero = levels.last().is_some_and(|n| n.sigma == 0.0);
                (2 * steps).saturating_sub(usize::from(last_to_zero && steps > 0))
            }
        }
    }
}

/// How far the final samples may move before a jump is rejected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// Decided at the hand-off against the sampler's own step-count error there: the jump's
    /// error against the exact state (extrapolated from the reference and a run with twice
    /// the steps) at most [`Sampler::handoff_factor`] times the reference's (costs one run
    /// of about twice the reference's evaluations). The default.
    StepCount,
    /// A fixed RMS, in the data's units (e.g. 1/255 of [-1, 1] images is below an 8-bit
    /// level's half-width).
    Rms(f64),
}

/// Options of [`calibrate`]; [`Options::default`] is Heun, step-count tolerance, candidates
/// until the first beyond tolerance, no reference set.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The sampler the user runs.
    pub sampler: Sampler,
    /// The tolerance on the final-sample RMS change.
    pub tolerance: Tolerance,
    /// Largest candidate k (`None`: every k that leaves one step, `levels.len() − 2`).
    pub max_k: Option<usize>,
    /// Measure every candidate up to `max_k` instead of stopping after the first beyond the
    /// tolerance.
    pub full_table: bool,
    /// Reference items (row-major `items x dim`, e.g. a sample of the training set): each
    /// candidate also reports how many final samples are nearest the same item as without
    /// the jump.
    pub reference: Option<&'a [f32]>,
    /// Run every candidate's remaining steps to measure its final samples (`rms_change`,
    /// `same_nearest`). Off, only the hand-off is measured: the default rule needs nothing
    /// more, and the calibration costs the reference and the step check alone. A fixed
    /// tolerance needs it on.
    pub final_samples: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            sampler: Sampler::Heun,
            tolerance: Tolerance::StepCount,
            max_k: None,
            full_table: false,
            reference: None,
            final_samples: true,
        }
    }
}

/// One candidate hand-off: the run that jumps over the first `k` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Steps jumped over.
    pub k: usize,
    /// The EDM sigma (sigma / alpha) of the level the sampler resumes at, `levels[k]`.
    pub sigma: f64,
    /// Network evaluations the jump saves per sample batch.
    pub nfe_saved: usize,
    /// RMS of the final samples against the reference's (data units); `None` when
    /// [`Options::final_samples`] is off.
    pub rms_change: Option<f64>,
    /// RMS of the jumped state against the reference trajectory's state at `levels[k]`.
    pub state_change: f64,
    /// RMS of the jumped state against the exact state at `levels[k]` (extrapolated from
    /// the reference and the refined run; with the step check only).
    pub jump_error: Option<f64>,
    /// RMS of the reference trajectory's state against the exact state at `levels[k]`: the
    /// sampler's own error there (with the step check only).
    pub sampler_error: Option<f64>,
    /// RMS(D_net − D_gauss) on the reference trajectory at `levels[k]`: how far the network
    /// is from the Gaussian where it takes over.
    pub denoiser_gap: f64,
    /// With a reference set: final samples nearest the same reference item as without the
    /// jump.
    pub same_nearest: Option<usize>,
    /// Within the tolerance: `jump_error` at most `tolerance` times `sampler_error` (the
    /// default rule), or `rms_change` at most `tolerance` (a fixed RMS).
    pub within: bool,
}

/// What [`calibrate`] measured and chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The sampler calibrated.
    pub sampler: Sampler,
    /// Its schedule, noisiest first, ending at the clean level.
    pub levels: Vec<Noise>,
    /// The chosen hand-off: the largest k whose candidates 1..=k are all within the
    /// tolerance (0: do not jump).
    pub k: usize,
    /// The tolerance applied: with the rule `"hand-off"`, the largest ratio of the jump's
    /// error to the sampler's own at the hand-off ([`Sampler::handoff_factor`]); with
    /// `"fixed"`, the largest final-sample RMS change.
    pub tolerance: f64,
    /// How it was set: `"hand-off"` (the default) or `"fixed"`. Calibrations stored by
    /// earlier versions may say `"step-count"` (final-sample change against half the
    /// step-count error).
    pub tolerance_rule: String,
    /// The sampler's step-count error on the final samples: their RMS against those of the
    /// run with twice the steps (when the step check ran).
    pub step_error: Option<f64>,
    /// Calibration samples.
    pub batch: usize,
    /// Network evaluations of one run without a jump.
    pub nfe_full: usize,
    /// Network evaluations (per batch) the calibration spent in all, and in its parts.
    pub cost: Cost,
    /// RMS(D_net − D_gauss) along the reference trajectory, at every level but the last.
    pub denoiser_gap: Vec<f64>,
    /// One row per candidate measured, k = 1, 2, ….
    pub candidates: Vec<Candidate>,
}

/// Network evaluations spent by a calibration (each is one call on the whole batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cost {
    /// The reference run.
    pub reference: usize,
    /// The step check on the refined schedule (0 with a fixed tolerance).
    pub step_check: usize,
    /// All candidate runs.
    pub candidates: usize,
    /// The sum.
    pub total: usize,
}

impl Calibration {
    /// The table as `gaussskip calibrate` prints it: one row per candidate, the chosen k
    /// marked. "ok"/"beyond" follows the quantity the rule tests: the hand-off ratio (jump
    /// error / sampler error) by default, the final RMS change with a fixed tolerance.
    pub fn table(&self) -> String {
        let with_nearest = self.candidates.iter().any(|c| c.same_nearest.is_some());
        let fixed = self.tolerance_rule == "fixed";
        let mut s = String::from(
            "   k  sigma at hand-off  NFE saved  hand-off error: jump  sampler  ratio         \
             final RMS change  denoiser gap",
        );
        if with_nearest {
            s.push_str("  same nearest");
        }
        s.push('\n');
        let opt = |v: Option<f64>| v.map_or("-".to_string(), format_small);
        for c in &self.candidates {
            let mark = if c.k == self.k { "  <- k" } else { "" };
            let verdict = if c.within { "ok" } else { "beyond" };
            let ratio = match (c.jump_error, c.sampler_error) {
                (Some(j), Some(e)) if e > 0.0 => format!("{:.2}", j / e),
                _ => "-".to_string(),
            };
            let (ratio_verdict, final_verdict) = if fixed { ("", verdict) } else { (verdict, "") };
            s.push_str(&format!(
                "{:>4}  {:>17}  {:>9}  {:>20}  {:>7}  {:>5} {:>6}  {:>9} {:>6}  {:>12}",
                c.k,
                format_sigma(c.sigma),
                format!(
                    "{} ({:.0}%)",
                    c.nfe_saved,
                    100.0 * c.nfe_saved as f64 / self.nfe_full.max(1) as f64
                ),
                opt(c.jump_error),
                opt(c.sampler_error),
                ratio,
                ratio_verdict,
                opt(c.rms_change),
                final_verdict,
                format_small(c.denoiser_gap),
            ));
            if let Some(n) = c.same_nearest {
                s.push_str(&format!(
                    "  {:>5}/{} ({:.0}%)",
                    n,
                    self.batch,
                    100.0 * n as f64 / self.batch as f64
                ));
            }
            s.push_str(mark);
            s.push('\n');
        }
        s
    }

    /// One paragraph: the choice, the tolerance and the cost.
    pub fn summary(&self) -> String {
        let rule = match self.tolerance_rule.as_str() {
            "hand-off" => format!(
                "lands, at the hand-off, no further from the exact trajectory than {} times the \
                 sampler's own error there (exact states extrapolated from runs with 1x and 2x \
                 the steps; final-sample step-count error {})",
                self.tolerance,
                self.step_error.map_or("-".to_string(), format_small)
            ),
            "step-count" => format!(
                "moves the final samples by no more than {}",
                format_small(self.tolerance)
            ),
            _ => format!(
                "moves the final samples by no more than a fixed RMS {}",
                format_small(self.tolerance)
            ),
        };
        let saved = self
            .candidates
            .get(self.k.wrapping_sub(1))
            .map_or(0, |c| c.nfe_saved);
        format!(
            "calibrated k = {} (hand-off at sigma {}, saves {} of {} NFE): the largest jump that {rule}\n\
             cost: {} network evaluations on a batch of {} ({} reference, {} step check, {} candidates)",
            self.k,
            format_sigma(self.levels[self.k].edm_sigma()),
            saved,
            self.nfe_full,
            self.cost.total,
            self.batch,
            self.cost.reference,
            self.cost.step_check,
            self.cost.candidates,
        )
    }
}

fn format_sigma(sigma: f64) -> String {
    if sigma.is_infinite() {
        "inf".to_string()
    } else if sigma >= 10.0 {
        format!("{sigma:.2}")
    } else {
        format!("{sigma:.3}")
    }
}

fn format_small(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v < 1e-3 {
        format!("{v:.1e}")
    } else {
        format!("{v:.4}")
    }
}

/// One recorded step: the level, the state and the network's x0-prediction there.
type Recorded = (Noise, Vec<f32>, Vec<f32>);

/// The denoiser seen by the calibration: counts evaluations, rejects non-finite outputs, and
/// optionally records every step's state and x0-prediction (the reference trajectory).
struct Counted<'a, D: ?Sized> {
    inner: &'a mut D,
    calls: usize,
    record: Option<Vec<Recorded>>,
}

impl<D: Denoiser<f32> + ?Sized> Denoiser<f32> for Counted<'_, D> {
    fn denoise(&mut self, x: &[f32], at: Noise, out: &mut [f32]) -> Result<()> {
        self.inner.denoise(x, at, out)?;
        self.calls += 1;
        if let Some(index) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                arg: "denoiser output",
                index,
            });
        }
        Ok(())
    }

    fn observe(&mut self, step: Step<'_, f32>) {
        if let Some(rec) = &mut self.record {
            rec.push((step.at, step.x.to_vec(), step.denoised.to_vec()));
        }
        self.inner.observe(step);
    }
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&u, &v)| (u as f64 - v as f64).powi(2))
        .sum();
    (sq / a.len().max(1) as f64).sqrt()
}

/// The family of a schedule's levels, which says how to place a level between two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// alpha = 1: midpoints are geometric in sigma.
    Edm,
    /// alpha² + sigma² = 1: midpoints halve the angle atan2(sigma, alpha).
    Vp,
    /// alpha + sigma = 1: midpoints halve the time t = sigma.
    Flow,
}

fn family(levels: &[Noise]) -> Option<Family> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6;
    if levels.iter().all(|n| n.alpha == 1.0) {
        Some(Family::Edm)
    } else if levels.iter().all(|n| close(n.alpha.hypot(n.sigma), 1.0)) {
        Some(Family::Vp)
    } else if levels.iter().all(|n| close(n.alpha + n.sigma, 1.0)) {
        Some(Family::Flow)
    } else {
        None
    }
}

/// The schedule with a level inserted in the middle of every step but a last one to
/// sigma = 0 (the end of the data): twice the steps over the same range. The middle is the
/// geometric mean of EDM sigmas, the mean angle of VP levels, and the mean time of flow
/// levels.
///
/// # Errors
/// `InvalidArgument` for levels of no single family (EDM, VP or flow).
pub fn refined(levels: &[Noise]) -> Result<Vec<Noise>> {
    let fam = family(levels).ok_or_else(|| {
        Error::arg(
            "levels",
            "the step-count tolerance refines the schedule and needs EDM (alpha = 1), VP \
             (alpha^2 + sigma^2 = 1) or flow (alpha + sigma = 1) levels; give a fixed tolerance",
        )
    })?;
    let mut out = Vec::with_capacity(2 * levels.len());
    for w in levels.windows(2) {
        let (a, b) = (w[0], w[1]);
        out.push(a);
        if b.sigma > 0.0 {
            out.push(match fam {
                Family::Edm => Noise::edm((a.sigma * b.sigma).sqrt()),
                Family::Vp => {
                    let phi = 0.5 * (a.sigma.atan2(a.alpha) + b.sigma.atan2(b.alpha));
                    Noise::new(phi.cos(), phi.sin())
                }
                Family::Flow => Noise::flow(0.5 * (a.sigma + b.sigma)),
            });
        }
    }
    out.extend(levels.last());
    Ok(out)
}

/// Checks the schedule: valid levels, sigma / alpha strictly decreasing, sigma > 0 but for
/// the last, at least 3 levels (a jump of one step and one step after it), and EDM levels for
/// Heun.
pub(crate) fn check_levels(levels: &[Noise], sampler: Sampler) -> Result<()> {
    if levels.len() < 3 {
        return Err(Error::arg(
            "levels",
            format!(
                "need at least 3 levels (a jump of one step and one step after it), got {}",
                levels.len()
            ),
        ));
    }
    for (i, n) in levels.iter().enumerate() {
        n.validate("levels")?;
        if i + 1 < levels.len() && n.sigma <= 0.0 {
            return Err(Error::arg(
                "levels",
                format!("level {i} has sigma = {}; only the last may be 0", n.sigma),
            ));
        }
    }
    if levels[1].alpha <= 0.0 {
        return Err(Error::arg(
            "levels",
            "only the first level may be pure noise (alpha = 0)",
        ));
    }
    if let Some(i) = (1..levels.len()).find(|&i| {
        let (p, c) = (levels[i - 1], levels[i]);
        c.sigma * p.alpha >= p.sigma * c.alpha
    }) {
        return Err(Error::arg(
            "levels",
            format!(
                "noise must strictly decrease, but level {i} (sigma/alpha = {}) is not below level {} ({})",
                levels[i].edm_sigma(),
                i - 1,
                levels[i - 1].edm_sigma()
            ),
        ));
    }
    if sampler == Sampler::Heun && levels.iter().any(|n| n.alpha != 1.0) {
        return Err(Error::arg(
            "sampler",
            "Heun runs on EDM levels (alpha = 1); for VP or flow levels use Euler (DDIM and \
             flow-matching Euler are Euler there)",
        ));
    }
    Ok(())
}

/// Calibrates the hand-off of the sampler of `opts` on `levels` (noisiest first) for the
/// network `den` (see the module documentation). `x_t` is the calibration noise at
/// `levels[0]` (row-major `batch x model.dim()`, e.g. `sigma *` unit normals; 8 to 32 rows);
/// the jumps run on `ctx`. `den` is called with batches of `batch` rows and the schedule's
/// levels (and, for the step check, the levels between them).
///
/// # Errors
/// `InvalidArgument` for a schedule that [`check_levels`] rejects, or one of no single
/// family with the step-count tolerance; for `max_k` of 0 or past `levels.len() − 2`; for a
/// fixed tolerance that is negative or not finite. `InvalidNoise` for an invalid level. `ShapeMismatch` for `x_t` not a positive
/// multiple of the dimension, or a reference set that is not. `NonFinite` for NaN/Inf in
/// `x_t` or in the denoiser's output (`arg` "denoiser output"). Any error of the denoiser
/// (e.g. `Callback` from the C ABI), of the jump on `ctx`, unchanged.
pub fn calibrate<D: Denoiser<f32> + ?Sized>(
    ctx: &Context,
    model: &Model,
    den: &mut D,
    levels: &[Noise],
    x_t: &[f32],
    opts: &Options<'_>,
) -> Result<Calibration> {
    check_levels(levels, opts.sampler)?;
    let dim = model.dim();
    if x_t.is_empty() || !x_t.len().is_multiple_of(dim) {
        return Err(Error::shape(
            "x_t",
            format!("a positive multiple of the model dimension {dim}"),
            x_t.len(),
        ));
    }
    crate::error::check_finite("x_t", x_t)?;
    let batch = x_t.len() / dim;
    let last_k = levels.len() - 2;
    let max_k = opts.max_k.unwrap_or(last_k);
    if max_k == 0 || max_k > last_k {
        return Err(Error::arg(
            "max_k",
            format!("must be in 1..={last_k} (one step must remain), got {max_k}"),
        ));
    }
    if let Tolerance::Rms(t) = opts.tolerance {
        if !opts.final_samples {
            return Err(Error::arg(
                "final_samples",
                "a fixed tolerance is on the final samples, which final_samples = false skips",
            ));
        }
        if !(t >= 0.0 && t.is_finite()) {
            return Err(Error::arg(
                "tolerance",
                format!("must be a finite RMS >= 0, got {t}"),
            ));
        }
    }
    let nearest = match opts.reference {
        Some(items) => Some(IdealDenoiser::<f32>::new(items, dim).map_err(|e| match e {
            Error::ShapeMismatch { expected, got, .. } => Error::ShapeMismatch {
                arg: "reference",
                expected,
                got,
            },
            e => e,
        })?),
        None => None,
    };
    let sampler = opts.sampler;
    let mut cost = Cost::default();

    // 1. Reference run, recording the trajectory.
    let mut counted = Counted {
        inner: den,
        calls: 0,
        record: Some(Vec::new()),
    };
    let mut reference = x_t.to_vec();
    sampler.run(&mut counted, &mut reference, levels, 0)?;
    cost.reference = counted.calls;
    let trajectory = counted.record.take().unwrap_or_default();
    let mut denoiser_gap = Vec::with_capacity(trajectory.len());
    let mut gauss = vec![0f32; x_t.len()];
    for (at, x, d_net) in &trajectory {
        ctx.denoise(model, x, &mut gauss, *at)?;
        denoiser_gap.push(rms(d_net, &gauss));
    }
    let nearest_ref = match &nearest {
        Some(n) => Some(n.nearest(&reference)?),
        None => None,
    };

    // 2. The step check: the refined run, recorded (the schedule's level i is its level 2i).
    let (tolerance, rule, step_error, fine_trajectory) = match opts.tolerance {
        Tolerance::Rms(t) => (t, "fixed", None, Vec::new()),
        Tolerance::StepCount => {
            let fine = refined(levels)?;
            let mut x = x_t.to_vec();
            counted.calls = 0;
            counted.record = Some(Vec::new());
            sampler.run(&mut counted, &mut x, &fine, 0)?;
            cost.step_check = counted.calls;
            let recorded = counted.record.take().unwrap_or_default();
            (
                sampler.handoff_factor(),
                "hand-off",
                Some(rms(&x, &reference)),
                recorded,
            )
        }
    };

    // 3. Candidates.
    let nfe_full = sampler.nfe(levels, 0);
    let mut candidates = Vec::new();
    let mut chosen = 0;
    for k in 1..=max_k {
        let mut x = vec![0f32; x_t.len()];
        ctx.skip(model, x_t, &mut x, levels[0], levels[k])?;
        let state_change = rms(&x, &trajectory[k].1);
        let handoff = fine_trajectory
            .get(2 * k)
            .map(|(_, fine, _)| handoff::errors(&x, &trajectory[k].1, fine, sampler.order()));
        let (mut rms_change, mut same_nearest) = (None, None);
        if opts.final_samples {
            counted.calls = 0;
            sampler.run(&mut counted, &mut x, levels, k)?;
            cost.candidates += counted.calls;
            rms_change = Some(rms(&x, &reference));
            if let (Some(n), Some(r)) = (&nearest, &nearest_ref) {
                same_nearest = Some(n.nearest(&x)?.iter().zip(r).filter(|(a, b)| a == b).count());
            }
        }
        let within = match handoff {
            Some(e) => e.jump <= tolerance * e.sampler,
            None => rms_change.is_some_and(|r| r <= tolerance),
        };
        if within && chosen == k - 1 {
            chosen = k;
        }
        candidates.push(Candidate {
            k,
            sigma: levels[k].edm_sigma(),
            nfe_saved: nfe_full - sampler.nfe(levels, k),
            rms_change,
            state_change,
            jump_error: handoff.map(|e| e.jump),
            sampler_error: handoff.map(|e| e.sampler),
            denoiser_gap: denoiser_gap[k],
            same_nearest,
            within,
        });
        if !within && !opts.full_table {
            break;
        }
    }
    cost.total = cost.reference + cost.step_check + cost.candidates;
    Ok(Calibration {
        sampler,
        levels: levels.to_vec(),
        k: chosen,
        tolerance,
        tolerance_rule: rule.to_string(),
        step_error,
        batch,
        nfe_full,
        cost,
        denoiser_gap,
        candidates,
    })
}

/// A copy of `model` that also holds `calibration` in its metadata (replacing one for the
/// same sampler and schedule). The copy is a new model (device caches treat it as such).
///
/// # Errors
/// `InvalidArgument` when the calibration's schedule does not fit [`calibrate`]'s rules;
/// `OutOfMemory` when the copy cannot be allocated.
pub fn with_calibration(model: &Model, calibration: &Calibration) -> Result<Model> {
    check_levels(&calibration.levels, calibration.sampler)?;
    let mut meta = model.meta().clone();
    meta.calibrations.insert(calibration.clone());
    model.with_meta(meta)
}

/// The calibrated k that `model` holds for `sampler` on `levels` (compared to 1e-5
/// relative).
///
/// # Errors
/// `InvalidArgument` when the model holds no calibration for this sampler and schedule; the
/// message lists the schedules it holds.
pub fn calibrated_k(model: &Model, sampler: Sampler, levels: &[Noise]) -> Result<usize> {
    let held = &model.meta().calibrations;
    if let Some(c) = held.find(sampler, levels) {
        return Ok(c.k);
    }
    let list: Vec<String> = held
        .iter()
        .map(|c| format!("\"{}\"", schedule_key(c.sampler, &c.levels)))
        .collect();
    let holds = if list.is_empty() {
        "it holds none".to_string()
    } else {
        format!("it holds {}", list.join(", "))
    };
    Err(Error::arg(
        "k",
        format!(
            "k = \"auto\" needs a calibration of this model for \"{}\"; {holds}. \
             Run calibrate with this sampler and schedule first (and save the model to keep it)",
            schedule_key(sampler, levels)
        ),
    ))
}
