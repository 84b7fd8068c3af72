//! `gaussskip calibrate`: calibrate the hand-off on the ideal model of a dataset (see
//! `gaussskip::calibrate`), print the table, optionally store the result in a model file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use gaussskip::calibrate::{self, Options, Tolerance};
use gaussskip::demo::{self, Schedule};
use gaussskip::ideal::IdealDenoiser;
use gaussskip::noise::Noise;
use gaussskip::rng::Rng;
use gaussskip::sampler::Denoiser;
use gaussskip::{Context, Error, Model};
use indicatif::{ProgressBar, ProgressStyle};

use crate::demo::{DeviceArg, ScheduleArg};

/// Arguments of `gaussskip calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset whose ideal model (exact posterior mean) plays the network: CSV (optionally
    /// .gz), an image folder, .npy, .npz or .safetensors [default: the bundled 5,000 MNIST
    /// digits]
    #[arg(long, visible_alias = "dataset", value_name = "PATH")]
    data: Option<PathBuf>,
    /// Value map into [-1,1] for non-CSV data, FROM_LO,FROM_HI:TO_LO,TO_HI
    #[arg(long, allow_hyphen_values = true)]
    scale: Option<String>,
    /// Calibrate this model file (same [-1,1] space and dimension as the data) instead of a
    /// full-rank Gaussian fitted to the data
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Sampler and schedule (edm: Heun; vp: DDIM; flow: flow-matching Euler)
    #[arg(long, value_enum, default_value_t = ScheduleArg::Edm)]
    schedule: ScheduleArg,
    /// Sampler steps
    #[arg(long, default_value_t = 18)]
    steps: usize,
    /// Calibration noise draws
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed of the calibration noise
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fixed tolerance: the largest final-sample RMS change accepted, in [-1,1] units
    /// [default: at the hand-off, the jump's error at most 2^(p-1) times the sampler's own,
    /// p its order (Heun 2, Euler 1)]
    #[arg(long)]
    tolerance: Option<f64>,
    /// Largest k tried [default: every k that leaves one step]
    #[arg(long)]
    max_k: Option<usize>,
    /// Measure every k up to --max-k instead of stopping after the first beyond tolerance
    #[arg(long)]
    full_table: bool,
    /// Write the model with this calibration stored in its metadata here
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Where the Gaussian jump runs
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// The ideal model with a progress bar.
struct Counting<'a> {
    ideal: &'a IdealDenoiser<f32>,
    bar: &'a ProgressBar,
}

impl Denoiser<f32> for Counting<'_> {
    fn denoise(&mut self, x: &[f32], at: Noise, out: &mut [f32]) -> gaussskip::Result<()> {
        self.ideal.denoise(x, at, out)?;
        self.bar.inc(1);
        Ok(())
    }
}

/// Runs `gaussskip calibrate` and prints its table.
pub fn run(args: Args) -> gaussskip::Result<()> {
    let start = Instant::now();
    if args.batch == 0 {
        return Err(Error::arg("batch", "must be at least 1"));
    }
    let schedule = Schedule::from(args.schedule);
    let levels = schedule.levels(args.steps)?;
    let data_path = args
        .data
        .unwrap_or_else(|| PathBuf::from(demo::BUNDLED_DATA));
    let scale = args.scale.as_deref().map(str::parse).transpose()?;
    let data = demo::load_dataset(&data_path, scale)?;
    let model = match &args.model {
        Some(path) => {
            let m = Model::load(path)?;
            if m.dim() != data.dim {
                return Err(Error::shape(
                    "model",
                    format!("dimension {} (the data's)", data.dim),
                    format!("dimension {} in {}", m.dim(), path.display()),
                ));
            }
            m
        }
        None => demo::fit(&data)?,
    };
    let (ctx, device) = Context::for_host_data(args.device.into(), 0, &model)?;
    let ideal = IdealDenoiser::new(&data.rows, data.dim)?;
    let x_t: Vec<f32> = Rng::new(args.seed)
        .normals(args.batch * data.dim)
        .into_iter()
        .map(|e| (levels[0].sigma * e) as f32)
        .collect();
    let sampler = schedule.sampler();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(3 * sampler.nfe(&levels, 0) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("calibrating {pos} NFE ({per_sec}) {wide_bar}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let opts = Options {
        sampler,
        tolerance: match args.tolerance {
            Some(t) => Tolerance::Rms(t),
            None => Tolerance::StepCount,
        },
        max_k: args.max_k,
        full_table: args.full_table,
        reference: Some(&data.rows),
        final_samples: true,
    };
    let mut den = Counting {
        ideal: &ideal,
        bar: &bar,
    };
    let cal = calibrate::calibrate(&ctx, &model, &mut den, &levels, &x_t, &opts)?;
    bar.finish_and_clear();

    let source = if data_path == std::path::Path::new(demo::BUNDLED_DATA) {
        "the bundled MNIST digits".to_string()
    } else {
        data_path.display().to_string()
    };
    println!(
        "network: the ideal model (exact posterior mean) of {} items x {} values ({source})",
        data.items, data.dim
    );
    println!(
        "sampler: {} on {} steps of the {} schedule; {} calibration draws (seed {}); jump on {device}\n",
        sampler.name(),
        args.steps,
        schedule.name(),
        args.batch,
        args.seed
    );
    print!("{}", cal.table());
    println!();
    println!("{}", cal.summary());
    if schedule != Schedule::Edm {
        println!("(sigma at hand-off is sigma/alpha, the EDM-equivalent noise level)");
    }
    println!(
        "columns: hand-off error = RMS of the jumped state (jump) and of the run without a jump\n\
         (sampler) against the exact state at the hand-off, extrapolated from runs with 1x and 2x\n\
         the steps; ratio = jump / sampler, the default rule's test; final RMS change = final\n\
         samples against the run without a jump; denoiser gap = RMS of the network's minus the\n\
         Gaussian's x0-prediction at the hand-off; same nearest = final samples nearest the same\n\
         training item as without the jump"
    );
    if let Some(path) = &args.save {
        calibrate::with_calibration(&model, &cal)?.save(path)?;
        println!("wrote {} (the model with this calibration)", path.display());
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
