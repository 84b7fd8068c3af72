//! The demo: the skip judged against the true PF-ODE of real data.
//!
//! 1. Load a dataset (by default the bundled 5,000 MNIST digits) and scale it to [-1, 1].
//! 2. Fit a full-rank Gaussian to it (or load a model file).
//! 3. Sample a fixed batch from fixed noise with the *ideal model* — the exact posterior mean
//!    of the dataset ([`crate::ideal`]), a perfect diffusion model — once with the whole
//!    schedule, then for k = 1, 2, … jumping over the first k steps with the Gaussian's exact
//!    PF-ODE map ([`Context::skip`]) and resuming the sampler at step k.
//! 4. Report per k: the level at hand-off, NFE and NFE saved, the RMS distance of the final
//!    images to the run without a jump, and how many final images are nearest the same
//!    training image as without the jump (the ideal model ends on training items, so this
//!    says whether the jump kept each sample's identity).
//! 5. Write pictures: the final samples per k, and the "outline first, details later" strip.
//! 6. Calibrate the hand-off on a separate batch of noise ([`crate::calibrate`], the ideal
//!    model playing the user's network) and show the calibrated k next to the table.

pub mod classes;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::calibrate::{self, Calibration, Sampler};
use crate::context::{Context, Device};
use crate::error::{Error, Result};
use crate::fit::{
    csv_item_shape, fit_model, read_csv, rows_from_path, FitOptions, InputOptions, Moments, Rank,
    Residual, Scale,
};
use crate::ideal::IdealDenoiser;
use crate::model::{write_atomic, Model, ModelMeta};
use crate::noise::{karras_sigmas, Noise};
use crate::rng::Rng;
use crate::sampler::{
    ddim, ddim_levels, ddpm_alpha_bars, edm_heun, flow_euler, flow_times, Denoiser, Step,
};

/// The bundled dataset: 5,000 MNIST digits, 784 pixels 0–255 then the label on each line.
pub const BUNDLED_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist_5k.csv.gz");

/// Number of samples drawn along the "outline first, details later" strip.
const STRIP_SAMPLES: usize = 4;
/// Samples per row of the overview picture (one row per k).
const OVERVIEW_SAMPLES: usize = 16;
/// Pixels per data pixel in the pictures.
const ZOOM: usize = 2;

/// Sampler family and schedule of a demo run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// EDM: Heun (Karras et al. Algorithm 1, no churn) on the Karras sigmas (0.002 to 80,
    /// rho = 7); `steps` levels cost 2·steps − 1 NFE (18 steps: 35).
    Edm,
    /// VP: deterministic DDIM on the DDPM linear-beta schedule (1000 training steps,
    /// beta 1e-4 to 0.02), trailing timesteps; one NFE per step.
    Vp,
    /// Rectified flow: Euler on the velocity, alpha = 1 − t, sigma = t, times shifted by 3
    /// (as SD3); one NFE per step.
    Flow,
}

impl Schedule {
    /// Name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Edm => "edm",
            Schedule::Vp => "vp",
            Schedule::Flow => "flow",
        }
    }

    fn describe(self, steps: usize) -> String {
        match self {
            Schedule::Edm => format!("EDM Heun, {steps} Karras steps (sigma 80 -> 0.002 -> 0)"),
            Schedule::Vp => format!("DDIM, {steps} steps of the linear-beta VP schedule"),
            Schedule::Flow => format!("flow-matching Euler, {steps} steps (shift 3)"),
        }
    }

    /// The sampler of this schedule as [`crate::calibrate`] names it: Heun for EDM, Euler
    /// (which is DDIM and flow-matching Euler on those levels) for VP and flow.
    pub fn sampler(self) -> Sampler {
        match self {
            Schedule::Edm => Sampler::Heun,
            Schedule::Vp | Schedule::Flow => Sampler::Euler,
        }
    }

    /// The schedule's levels, noisiest first, ending on the clean level.
    ///
    /// # Errors
    /// `InvalidArgument` for `steps` out of the schedule's range.
    pub fn levels(self, steps: usize) -> Result<Vec<Noise>> {
        match self {
            Schedule::Edm => Ok(karras_sigmas(steps, 0.002, 80.0, 7.0)?
                .into_iter()
                .map(Noise::edm)
                .collect()),
            Schedule::Vp => ddim_levels(&ddpm_alpha_bars(1000, 1e-4, 0.02)?, steps),
            Schedule::Flow => Ok(flow_times(steps, 3.0)?
                .into_iter()
                .map(Noise::flow)
                .collect()),
        }
    }

    /// Runs this schedule's sampler over `levels` from `start`; returns the NFE.
    fn sample<D: Denoiser<f32>>(
        self,
        den: &mut D,
        x: &mut [f32],
        levels: &[Noise],
        start: usize,
    ) -> Result<usize> {
        match self {
            Schedule::Edm => {
                let sigmas: Vec<f64> = levels.iter().map(|n| n.sigma).collect();
                edm_heun(den, x, &sigmas, start)
            }
            Schedule::Vp => ddim(den, x, levels, start),
            Schedule::Flow => {
                let ts: Vec<f64> = levels.iter().map(|n| n.sigma).collect();
                flow_euler(den, x, &ts, start)
            }
        }
    }
}

/// Everything a demo run can be told; [`Options::default`] is `gaussskip demo` with no
/// arguments.
#[derive(Clone, Debug)]
pub struct Options {
    /// Dataset for the ideal model (and for the fit when no model is given): a CSV file,
    /// optionally gzip-compressed, one item per line, values 0–255, the last field a label;
    /// or an image folder, `.npy`, `.npz` or `.safetensors` (see [`load_dataset`]).
    pub data: PathBuf,
    /// Value map for non-CSV data (the demo works in [-1, 1]).
    pub scale: Option<Scale>,
    /// A model file to jump with instead of fitting one to `data`; it must live in the same
    /// [-1, 1] space and dimension.
    pub model: Option<PathBuf>,
    /// Sampler and schedule.
    pub schedule: Schedule,
    /// Number of sampler steps (levels before the clean one).
    pub steps: usize,
    /// Number of samples.
    pub batch: usize,
    /// Seed of the starting noise.
    pub seed: u64,
    /// Largest number of skipped steps; runs k = 0..=max_skip.
    pub max_skip: usize,
    /// Folder for the pictures and the table (created when missing).
    pub out: PathBuf,
    /// Where the Gaussian operations run (the ideal model runs on the CPU).
    pub device: Device,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Calibration draws (0: no calibration); the calibration noise is drawn with seed
    /// `seed + 1`, apart from the table's.
    pub calibration_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data: PathBuf::from(BUNDLED_DATA),
            scale: None,
            model: None,
            schedule: Schedule::Edm,
            steps: 18,
            batch: 64,
            seed: 0,
            max_skip: 10,
            out: PathBuf::from("demo-out"),
            device: Device::Auto,
            progress: true,
            calibration_batch: 32,
        }
    }
}

/// A dataset held in memory, scaled to [-1, 1].
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Row-major `items x dim`, in [-1, 1].
    pub rows: Vec<f32>,
    /// Number of items.
    pub items: usize,
    /// Values per item.
    pub dim: usize,
    /// Shape of one item: for CSV data (channels, height, width) when the dimension is a
    /// square (grey) or three squares (RGB, channel-major), `[dim]` otherwise.
    pub item_shape: Vec<usize>,
    /// The last field of every line (the class label).
    pub labels: Vec<i64>,
}

/// Reads a CSV dataset in the bundled file's layout (see [`crate::fit::read_csv`]), its values
/// mapped from [0, 255] to [-1, 1], with its labels.
///
/// # Errors
/// Those of [`crate::fit::read_csv`].
pub fn load_csv(path: &Path) -> Result<Dataset> {
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let dim = read_csv(path, Scale::PIXELS, None, &mut |chunk, _, chunk_labels| {
        rows.extend(chunk.iter().map(|&v| v as f32));
        labels.extend_from_slice(chunk_labels);
        Ok(())
    })?;
    Ok(Dataset {
        items: labels.len(),
        dim,
        item_shape: csv_item_shape(dim),
        rows,
        labels,
    })
}

/// Reads the demo's dataset: a CSV file like the bundled one (see [`load_csv`]; `.csv` or
/// `.gz`), or any input of [`crate::fit::moments_from_path`] (an image folder, `.npy`,
/// `.npz`, `.safetensors`) mapped into [-1, 1] by `scale` (images default to
/// [0, 255] → [-1, 1]; arrays are taken as stored when `scale` is `None`). Those have no
/// labels.
///
/// # Errors
/// Those of [`load_csv`] and [`crate::fit::rows_from_path`].
pub fn load_dataset(path: &Path, scale: Option<Scale>) -> Result<Dataset> {
    if path.is_file() && crate::fit::is_csv(path) {
        return load_csv(path);
    }
    let read = rows_from_path(
        path,
        &InputOptions {
            scale,
            key: None,
            progress: false,
        },
    )?;
    let dim: usize = read.item_shape.iter().product();
    let item_shape = match read.item_shape.as_slice() {
        [h, w] => vec![1, *h, *w],
        _ => read.item_shape.clone(),
    };
    Ok(Dataset {
        items: read.rows.len() / dim,
        dim,
        item_shape,
        rows: read.rows,
        labels: Vec::new(),
    })
}

/// One line of the demo table: the run that jumps over the first `k` steps.
#[derive(Clone, Debug)]
pub struct SkipRow {
    /// Number of skipped steps (0: the full run every other row is compared to).
    pub k: usize,
    /// The level the sampler starts from (level 0 for k = 0).
    pub handoff: Noise,
    /// Denoiser evaluations of the run.
    pub nfe: usize,
    /// Evaluations saved against the full run.
    pub nfe_saved: usize,
    /// Root-mean-square distance of the final images to the full run's, per pixel, in
    /// [-1, 1] units.
    pub rms_to_full: f64,
    /// Samples whose final image is nearest the same training item as in the full run.
    pub same_nearest: usize,
}

/// What a demo run measured and wrote.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// Items and dimension of the dataset.
    pub items: usize,
    /// Values per item.
    pub dim: usize,
    /// Rank of the Gaussian model and how many of its modes carry variance.
    pub rank: usize,
    /// Modes with a non-zero variance.
    pub nonzero_modes: usize,
    /// Where the jump ran, and why there.
    pub device: String,
    /// The largest mode variance, in [-1, 1] units.
    pub top_eigval: f64,
    /// One row per k.
    pub rows: Vec<SkipRow>,
    /// The hand-off calibrated on `calibration_batch` other draws (None when 0).
    pub calibration: Option<Calibration>,
    /// Files written (pictures and the table).
    pub files: Vec<PathBuf>,
    /// Why pictures were not drawn, if they were not.
    pub no_pictures: Option<String>,
    /// Time to load the data and fit (or load) the model.
    pub prepare_time: Duration,
    /// Time for all sampling runs.
    pub sample_time: Duration,
    /// The class-conditional section, when the data has labels.
    pub classes: Option<classes::ClassTable>,
}

impl Report {
    /// The table, one row per k, as printed by `gaussskip demo`.
    pub fn table(&self) -> String {
        let batch = self.options.batch;
        let mut s = String::new();
        s.push_str(
            "   k  sigma at hand-off  NFE  NFE saved  RMS to k=0  same nearest training image\n",
        );
        let calibrated = self.calibration.as_ref().map(|c| c.k);
        for r in &self.rows {
            let sigma = r.handoff.edm_sigma();
            let saved = format!(
                "{} ({:.0}%)",
                r.nfe_saved,
                100.0 * r.nfe_saved as f64 / self.rows[0].nfe as f64
            );
            let rms = if r.rms_to_full > 0.0 && r.rms_to_full < 1e-3 {
                format!("{:.1e}", r.rms_to_full)
            } else {
                format!("{:.4}", r.rms_to_full)
            };
            let mark = if calibrated == Some(r.k) {
                "  <- calibrated k"
            } else {
                ""
            };
            s.push_str(&format!(
                "{:>4}  {:>17}  {:>3}  {:>9}  {:>10}  {:>5}/{} ({:.0}%){mark}\n",
                r.k,
                format_sigma(sigma),
                r.nfe,
                saved,
                rms,
                r.same_nearest,
                batch,
                100.0 * r.same_nearest as f64 / batch as f64
            ));
        }
        s
    }

    /// A few lines on what ran: data, model, schedule, timings.
    pub fn summary(&self) -> String {
        let o = &self.options;
        let model = match &o.model {
            Some(p) => format!("model {}", p.display()),
            None => "full-rank Gaussian fitted to the data".to_string(),
        };
        let data = if o.data == Path::new(BUNDLED_DATA) {
            "the bundled MNIST digits".to_string()
        } else {
            o.data.display().to_string()
        };
        format!(
            "data: {} items x {} values ({data})\n\
             jump: {model}, {} modes with variance above round-off of {} (largest {:.3}), on {}\n\
             sampler: ideal model (exact posterior mean of the data), {}, batch {}, seed {}\n\
             time: {:.2} s to load and fit, {:.2} s to sample",
            self.items,
            self.dim,
            self.nonzero_modes,
            self.rank,
            self.top_eigval,
            self.device,
            o.schedule.describe(o.steps),
            o.batch,
            o.seed,
            self.prepare_time.as_secs_f64(),
            self.sample_time.as_secs_f64()
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

/// The ideal model with a progress bar and, optionally, a record of the x0-predictions
/// of the first rows at every step.
struct Ideal<'a> {
    ideal: &'a IdealDenoiser<f32>,
    bar: &'a ProgressBar,
    record_rows: usize,
    record: Vec<Vec<f32>>,
}

impl Denoiser<f32> for Ideal<'_> {
    fn denoise(&mut self, x: &[f32], at: Noise, out: &mut [f32]) -> Result<()> {
        self.ideal.denoise(x, at, out)?;
        self.bar.inc(1);
        Ok(())
    }

    fn observe(&mut self, step: Step<'_, f32>) {
        if self.record_rows > 0 {
            let n = self.record_rows * self.ideal.dim();
            self.record.push(step.denoised[..n].to_vec());
        }
    }
}

/// Runs the demo.
///
/// # Errors
/// `InvalidArgument` for options out of range (checked before anything is written);
/// the errors of [`load_dataset`], [`Model::load`] and the fit; `ShapeMismatch` for a model
/// whose dimension is not the data's; `NoCuda` for `Device::Cuda` without a GPU; `Io` when
/// the output folder or a file in it cannot be written.
pub fn run(opts: &Options) -> Result<Report> {
    if opts.batch == 0 {
        return Err(Error::arg("batch", "must be at least 1"));
    }
    if opts.steps < 2 {
        return Err(Error::arg("steps", "must be at least 2"));
    }
    if opts.max_skip >= opts.steps {
        return Err(Error::arg(
            "max-skip",
            format!(
                "must be below the number of steps ({}), got {}",
                opts.steps, opts.max_skip
            ),
        ));
    }
    let levels = opts.schedule.levels(opts.steps)?;

    let t0 = Instant::now();
    let data = load_dataset(&opts.data, opts.scale)?;
    let d = data.dim;
    let model = match &opts.model {
        Some(path) => {
            let m = Model::load(path)?;
            if m.dim() != d {
                return Err(Error::shape(
                    "model",
                    format!("dimension {d} (the data's)"),
                    format!("dimension {} in {}", m.dim(), path.display()),
                ));
            }
            m
        }
        None => fit(&data)?,
    };
    let (ctx, device) = Context::for_host_data(opts.device, 0, &model)?;
    let ideal = IdealDenoiser::new(&data.rows, d)?;
    let prepare_time = t0.elapsed();
    let item_shape = if model.meta().item_shape.is_empty() {
        data.item_shape.clone()
    } else {
        model.meta().item_shape.clone()
    };

    let t1 = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let noise: Vec<f32> = rng
        .normals(opts.batch * d)
        .into_iter()
        .map(|e| (levels[0].sigma * e) as f32)
        .collect();
    let nfe_of = |k| run_nfe(opts.schedule, opts.steps, k);
    let mut total_nfe: usize = (0..=opts.max_skip).map(nfe_of).sum();
    if !data.labels.is_empty() {
        total_nfe += nfe_of(0) + 2 * (1..=opts.max_skip).map(nfe_of).sum::<usize>();
    }
    let bar = if opts.progress {
        ProgressBar::new(total_nfe as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} NFE ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );

    let strip_rows = STRIP_SAMPLES.min(opts.batch);
    let mut finals: Vec<Vec<f32>> = Vec::new();
    let mut rows: Vec<SkipRow> = Vec::new();
    let mut ideal_strip = Vec::new();
    let mut base_nearest = Vec::new();
    for k in 0..=opts.max_skip {
        bar.set_message(format!("k = {k}"));
        let mut x = noise.clone();
        if k > 0 {
            ctx.skip(&model, &noise, &mut x, levels[0], levels[k])?;
        }
        let mut den = Ideal {
            ideal: &ideal,
            bar: &bar,
            record_rows: if k == 0 { strip_rows } else { 0 },
            record: Vec::new(),
        };
        let nfe = opts.schedule.sample(&mut den, &mut x, &levels, k)?;
        let nearest = ideal.nearest(&x)?;
        if k == 0 {
            ideal_strip = den.record;
            base_nearest = nearest.clone();
        }
        let base = finals.first().unwrap_or(&x);
        let sq: f64 = x
            .iter()
            .zip(base)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        rows.push(SkipRow {
            k,
            handoff: levels[k],
            nfe,
            nfe_saved: rows.first().map_or(0, |r: &SkipRow| r.nfe - nfe),
            rms_to_full: (sq / x.len() as f64).sqrt(),
            same_nearest: nearest
                .iter()
                .zip(&base_nearest)
                .filter(|(a, b)| a == b)
                .count(),
        });
        finals.push(x);
    }
    let calibration = if opts.calibration_batch > 0 {
        bar.set_message("calibrating");
        // Reference, step check (about twice the steps) and a few candidates: an estimate,
        // as the candidates stop at the first beyond the tolerance.
        let sampler = opts.schedule.sampler();
        let estimate = 3 * sampler.nfe(&levels, 0)
            + (1..=opts.max_skip.min(6))
                .map(|k| sampler.nfe(&levels, k))
                .sum::<usize>();
        bar.inc_length(estimate as u64);
        let mut den = Ideal {
            ideal: &ideal,
            bar: &bar,
            record_rows: 0,
            record: Vec::new(),
        };
        Some(calibrate_ideal(
            &ctx,
            &model,
            &mut den,
            &levels,
            opts.schedule.sampler(),
            opts.calibration_batch,
            opts.seed.wrapping_add(1),
            &data.rows,
        )?)
    } else {
        None
    };
    bar.set_message("classes");
    let class_table = classes::run(opts, &data, &model, &ctx, &levels, &noise, &ideal, &bar)?;
    bar.finish_and_clear();
    let sample_time = t1.elapsed();

    let mut report = Report {
        options: opts.clone(),
        items: data.items,
        dim: d,
        rank: model.rank(),
        // Eigenvalues below 1e-12 of the largest are round-off of exactly constant pixels.
        nonzero_modes: model
            .eigvals()
            .iter()
            .filter(|&&l| l > 1e-12 * model.eigvals()[0])
            .count(),
        top_eigval: model.eigvals()[0],
        device,
        rows,
        calibration,
        files: Vec::new(),
        no_pictures: None,
        prepare_time,
        sample_time,
        classes: class_table,
    };

    fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let table_path = opts.out.join("table.txt");
    let class_text = report
        .classes
        .as_ref()
        .map_or(String::new(), |c| format!("\n{}", c.table()));
    write_atomic(
        &table_path,
        format!("{}\n\n{}{class_text}", report.summary(), report.table()).as_bytes(),
    )?;
    report.files.push(table_path);

    let Some(tile) = Tile::from_shape(&item_shape, d) else {
        report.no_pictures = Some(format!(
            "item shape {item_shape:?} is not a picture (need C x H x W with C = 1 or 3)"
        ));
        return Ok(report);
    };
    for (k, x) in finals.iter().enumerate() {
        let cols = (opts.batch as f64).sqrt().ceil() as usize;
        let tiles: Vec<&[f32]> = x.chunks(d).collect();
        let path = opts.out.join(format!("samples_k{k:02}.png"));
        write_grid(&path, &tile, &tiles, cols, &[])?;
        report.files.push(path);
    }
    let per_row = OVERVIEW_SAMPLES.min(opts.batch);
    let overview: Vec<&[f32]> = finals
        .iter()
        .flat_map(|x| x.chunks(d).take(per_row))
        .collect();
    let path = opts.out.join("samples_by_k.png");
    write_grid(&path, &tile, &overview, per_row, &[])?;
    report.files.push(path);
    if let Some(c) = &report.classes {
        let overview: Vec<&[f32]> = c
            .finals
            .iter()
            .flat_map(|x| x.chunks(d).take(per_row))
            .collect();
        let path = opts.out.join("classes_by_k.png");
        write_grid(&path, &tile, &overview, per_row, &[])?;
        report.files.push(path);
    }

    // Outline strip: per sample, the Gaussian's x0-prediction along its exact path (top) and
    // the ideal model's x0-prediction along the true trajectory (bottom), at every level.
    let mut gauss = vec![0f32; levels.len() * strip_rows * d];
    ctx.x0_trajectory(
        &model,
        &noise[..strip_rows * d],
        &mut gauss,
        levels[0],
        &levels,
    )?;
    let cols = levels.len();
    let mut strip: Vec<&[f32]> = Vec::new();
    for s in 0..strip_rows {
        for l in 0..cols {
            let at = (l * strip_rows + s) * d;
            strip.push(&gauss[at..at + d]);
        }
        for rec in &ideal_strip {
            strip.push(&rec[s * d..(s + 1) * d]);
        }
        strip.push(&finals[0][s * d..(s + 1) * d]);
    }
    let breaks: Vec<usize> = (1..strip_rows).map(|s| 2 * s).collect();
    let path = opts.out.join("outline_first.png");
    write_grid(&path, &tile, &strip, cols, &breaks)?;
    report.files.push(path);
    Ok(report)
}

/// Calibrates the hand-off of `sampler` on `levels` with `den` (the ideal model of
/// `reference`, the dataset, or any denoiser) from `batch` noise draws of seed `seed`, with
/// the default tolerance, reporting same-nearest against `reference`.
///
/// # Errors
/// Those of [`crate::calibrate::calibrate`].
#[allow(clippy::too_many_arguments)]
pub fn calibrate_ideal<D: Denoiser<f32>>(
    ctx: &Context,
    model: &Model,
    den: &mut D,
    levels: &[Noise],
    sampler: Sampler,
    batch: usize,
    seed: u64,
    reference: &[f32],
) -> Result<Calibration> {
    let x_t: Vec<f32> = Rng::new(seed)
        .normals(batch * model.dim())
        .into_iter()
        .map(|e| (levels[0].sigma * e) as f32)
        .collect();
    calibrate::calibrate(
        ctx,
        model,
        den,
        levels,
        &x_t,
        &calibrate::Options {
            sampler,
            reference: Some(reference),
            ..calibrate::Options::default()
        },
    )
}

/// NFE of a run of `steps` steps that starts at step `k`.
fn run_nfe(schedule: Schedule, steps: usize, k: usize) -> usize {
    match schedule {
        Schedule::Edm => 2 * (steps - k) - 1,
        Schedule::Vp | Schedule::Flow => steps - k,
    }
}

/// Fits the full-rank Gaussian of the demo (the papers' setting: every eigenvalue kept,
/// nothing off the subspace).
///
/// # Errors
/// Those of [`crate::fit::fit_model`].
pub fn fit(data: &Dataset) -> Result<Model> {
    let mut moments = Moments::new(data.dim);
    moments.add_rows(&data.rows)?;
    fit_model(
        &moments,
        &FitOptions {
            rank: Rank::Full,
            residual: Residual::Zero,
            meta: ModelMeta {
                item_shape: data.item_shape.clone(),
                value_space: "[-1,1]".to_string(),
                sample_count: data.items as u64,
                source: "gaussskip demo".to_string(),
                fit: None,
                calibrations: Default::default(),
            },
        },
    )
}

/// How one item becomes a picture tile.
struct Tile {
    channels: usize,
    height: usize,
    width: usize,
}

impl Tile {
    fn from_shape(shape: &[usize], dim: usize) -> Option<Tile> {
        let (channels, height, width) = match *shape {
            [h, w] => (1, h, w),
            [c, h, w] if c == 1 || c == 3 => (c, h, w),
            _ => return None,
        };
        (channels * height * width == dim).then_some(Tile {
            channels,
            height,
            width,
        })
    }
}

/// Writes `tiles` (items in [-1, 1], channel-major) as a PNG grid with `cols` tiles per row,
/// a thin grey gap between tiles and a wider one before each row listed in `breaks`.
fn write_grid(
    path: &Path,
    tile: &Tile,
    tiles: &[&[f32]],
    cols: usize,
    breaks: &[usize],
) -> Result<()> {
    const GAP: usize = 2;
    const BREAK: usize = 8;
    let rows = tiles.len().div_ceil(cols);
    let (th, tw) = (tile.height * ZOOM, tile.width * ZOOM);
    let width = cols * tw + (cols + 1) * GAP;
    let extra = breaks.len() * (BREAK - GAP);
    let height = rows * th + (rows + 1) * GAP + extra;
    let c = tile.channels;
    let mut img = vec![96u8; width * height * c];
    let plane = tile.height * tile.width;
    for (i, item) in tiles.iter().enumerate() {
        let (r, col) = (i / cols, i % cols);
        let y0 = GAP + r * (th + GAP) + breaks.iter().filter(|&&b| b <= r).count() * (BREAK - GAP);
        let x0 = GAP + col * (tw + GAP);
        for y in 0..th {
            for x in 0..tw {
                let src = (y / ZOOM) * tile.width + x / ZOOM;
                for ch in 0..c {
                    let v = item[ch * plane + src];
                    let byte = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    img[((y0 + y) * width + x0 + x) * c + ch] = byte;
                }
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(if c == 3 {
            png::ColorType::Rgb
        } else {
            png::ColorType::Grayscale
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
        w.write_image_data(&img)
            .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    }
    write_atomic(path, &bytes)
}
