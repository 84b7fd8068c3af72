//! Fitting a model straight from a dataset on disk: the exact fit, or the sketch with one read
//! of the data per pass (chosen by memory when not given), with a progress bar on every pass.

use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;

use super::input::stream;
use super::{
    fit_model_with_spectrum, FitOptions, InputOptions, Moments, Rank, Residual, Sketch,
    SketchOptions, Spectrum, DEFAULT_PASSES,
};
use crate::error::{Error, Result};
use crate::model::{FitMethod, Model, ModelMeta};

/// Options of [`fit_path`].
#[derive(Clone, Debug)]
pub struct PathFitOptions {
    /// How to read the data (scale, key, progress bars).
    pub input: InputOptions,
    /// `Some` to insist on a method; `None` chooses: the sketch when a rank is fixed and the
    /// exact fit would not fit in `memory_budget`, else the exact fit.
    pub method: Option<FitMethod>,
    /// Modes kept. The sketch needs `Rank::Fixed`.
    pub rank: Rank,
    /// λ⊥ for the directions not kept.
    pub residual: Residual,
    /// Reads of the data for the sketch (the exact fit reads once).
    pub passes: u32,
    /// Sketch columns beyond the rank (`None`: the default of [`SketchOptions`]).
    pub oversampling: Option<usize>,
    /// Seed of the sketch's test matrix.
    pub seed: u64,
    /// Compute the sketch's products on this CUDA device (host batches are uploaded).
    pub cuda_device: Option<usize>,
    /// Free text recorded as the model's source.
    pub source: String,
    /// Bytes the exact fit may use; `None`: the memory available now (`MemAvailable` of
    /// /proc/meminfo, or 8 GiB where that cannot be read).
    pub memory_budget: Option<u64>,
}

impl Default for PathFitOptions {
    fn default() -> Self {
        PathFitOptions {
            input: InputOptions::default(),
            method: None,
            rank: Rank::Full,
            residual: Residual::Zero,
            passes: DEFAULT_PASSES,
            oversampling: None,
            seed: 0,
            cuda_device: None,
            source: String::new(),
            memory_budget: None,
        }
    }
}

/// What [`fit_path`] produced.
#[derive(Debug)]
pub struct PathFit {
    /// The model (its metadata records the item shape, value space and how it was fitted).
    pub model: Model,
    /// The spectrum found.
    pub spectrum: Spectrum,
    /// The method used.
    pub method: FitMethod,
    /// Why that method, in words (e.g. the memory the exact fit would need).
    pub reason: String,
}

/// Bytes the exact fit of `dim`-vectors needs at its peak, about four `dim x dim` f64
/// matrices (the scatter, the covariance, and the eigensolver's copy and eigenvectors).
pub fn exact_fit_bytes(dim: usize) -> u64 {
    (dim as u64).saturating_mul(dim as u64).saturating_mul(32)
}

fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

enum Accumulator {
    Exact(Moments),
    Sketch(Box<Sketch>),
}

fn spinner(show: bool, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(message);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Streams the dataset at `path` (any input of [`super::moments_from_path`]) and fits a model:
/// the exact fit in one read, or a [`Sketch`] in `passes` reads.
///
/// # Errors
/// Those of the readers; `InvalidArgument` for zero passes, a sketch without a fixed rank or a
/// rank out of range; `OutOfMemory` when the exact fit was asked for (or no rank was given) and its
/// dim x dim matrices would not fit in the budget; `Dataset` when a later pass reads
/// different data; those of [`fit_model_with_spectrum`] and [`Sketch::fit`].
pub fn fit_path(path: &Path, opts: &PathFitOptions) -> Result<PathFit> {
    if opts.passes == 0 {
        return Err(Error::arg("passes", "must be at least 1"));
    }
    if opts.method == Some(FitMethod::Sketch) {
        // Refused before any reading.
        choose_method(1, opts.method, opts.rank, Some(0))?;
    }
    let show = opts.input.progress;
    let mut acc: Option<Accumulator> = None;
    let mut reason = String::new();
    let first_label = match opts.method {
        Some(FitMethod::Sketch) => format!("pass 1/{}", opts.passes),
        _ => "reading".to_string(),
    };
    let (item_shape, value_space) = stream(path, &opts.input, &first_label, &mut |rows, dim| {
        if acc.is_none() {
            let (made, why) = accumulator(dim, opts)?;
            acc = Some(made);
            reason = why;
        }
        match acc.as_mut().expect("created above") {
            Accumulator::Exact(m) => m.add_rows_f64(rows),
            Accumulator::Sketch(s) => s.add_rows_f64(rows),
        }
    })?;
    let meta = ModelMeta {
        item_shape: item_shape.clone(),
        value_space,
        sample_count: 0,
        source: opts.source.clone(),
        fit: None,
        calibrations: Default::default(),
    };
    let fit_opts = FitOptions {
        rank: opts.rank,
        residual: opts.residual,
        meta,
    };
    match acc.expect("a dataset has at least one item") {
        Accumulator::Exact(m) => {
            let pb = spinner(
                show,
                format!("eigendecomposing a {0}x{0} covariance", m.dim()),
            );
            let result = fit_model_with_spectrum(&m, &fit_opts);
            pb.finish_and_clear();
            let (model, spectrum) = result?;
            Ok(PathFit {
                model,
                spectrum,
                method: FitMethod::Exact,
                reason,
            })
        }
        Accumulator::Sketch(mut s) => {
            let passes = s.options().passes;
            while s.pass() < passes {
                let pb = spinner(
                    show,
                    format!(
                        "pass {}/{passes} read: orthonormalising the {}x{} sketch",
                        s.pass(),
                        s.dim(),
                        s.width()
                    ),
                );
                let ended = s.next_pass();
                pb.finish_and_clear();
                ended?;
                let label = format!("pass {}/{passes}", s.pass());
                let (shape, _) = stream(path, &opts.input, &label, &mut |rows, dim| {
                    if dim != s.dim() {
                        return Err(Error::Dataset(format!(
                            "pass {} read items of {dim} values, pass 1 of {}",
                            s.pass(),
                            s.dim()
                        )));
                    }
                    s.add_rows_f64(rows)
                })?;
                if shape != item_shape {
                    return Err(Error::Dataset(format!(
                        "pass {} read items of shape {shape:?}, pass 1 of {item_shape:?}",
                        s.pass()
                    )));
                }
            }
            let pb = spinner(
                show,
                format!("eigenpairs of the {}x{} sketch", s.dim(), s.width()),
            );
            let result = s.fit(&fit_opts);
            pb.finish_and_clear();
            let (model, spectrum) = result?;
            Ok(PathFit {
                model,
                spectrum,
                method: FitMethod::Sketch,
                reason,
            })
        }
    }
}

/// The method [`fit_path`] uses for `dim`-vectors, and why: `method` when given (the exact fit
/// only if its matrices fit in `memory_budget`), otherwise the sketch when `rank` is fixed and
/// the exact fit would not fit, else the exact fit. `memory_budget` `None`: the memory
/// available now.
///
/// # Errors
/// `OutOfMemory` when the exact fit is needed (asked for, or no fixed rank) but does not fit;
/// `InvalidArgument` for the sketch without a fixed rank.
pub fn choose_method(
    dim: usize,
    method: Option<FitMethod>,
    rank: Rank,
    memory_budget: Option<u64>,
) -> Result<(FitMethod, String)> {
    let budget = memory_budget.unwrap_or_else(available_memory);
    let need = exact_fit_bytes(dim);
    let fits = need <= budget;
    let memory = format!(
        "the exact fit of {dim}-value items needs about {} ({dim}x{dim} f64 matrices), {} {} available",
        gib(need),
        if fits { "of" } else { "but only" },
        gib(budget),
    );
    match (method, rank) {
        (Some(FitMethod::Sketch), Rank::Fixed(_)) => Ok((FitMethod::Sketch, "asked for".into())),
        (Some(FitMethod::Sketch), _) => Err(Error::arg(
            "rank",
            "the sketch needs a fixed rank (--rank N); --explained and full rank need the exact fit",
        )),
        (Some(FitMethod::Exact), _) | (None, Rank::Full | Rank::Explained(_)) if !fits => {
            let hint = if method.is_none() {
                "; give --rank N to fit a low-rank sketch instead"
            } else {
                "; fit a low-rank sketch instead (--method sketch --rank N)"
            };
            Err(Error::OutOfMemory(format!("{memory}{hint}")))
        }
        (Some(FitMethod::Exact), _) => Ok((FitMethod::Exact, "asked for".into())),
        (None, Rank::Fixed(_)) if !fits => Ok((FitMethod::Sketch, memory)),
        (None, _) => Ok((FitMethod::Exact, memory)),
    }
}

/// The accumulator for `dim`-vectors, and why it was chosen.
fn accumulator(dim: usize, opts: &PathFitOptions) -> Result<(Accumulator, String)> {
    let (method, why) = choose_method(dim, opts.method, opts.rank, opts.memory_budget)?;
    if method == FitMethod::Exact {
        return Ok((Accumulator::Exact(Moments::new(dim)), why));
    }
    let Rank::Fixed(rank) = opts.rank else {
        unreachable!("choose_method picks the sketch only for a fixed rank")
    };
    let mut sketch = Sketch::new(
        dim,
        &SketchOptions {
            rank,
            oversampling: opts.oversampling,
            passes: opts.passes,
            seed: opts.seed,
        },
    )?;
    if let Some(ordinal) = opts.cuda_device {
        sketch.use_cuda(ordinal)?;
    }
    Ok((Accumulator::Sketch(Box::new(sketch)), why))
}
