//! `gaussskip demo`: the skip judged against the true PF-ODE of real data (see
//! `gaussskip::demo`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use gaussskip::demo::{self, Options, Schedule};
use gaussskip::Device;

/// Sampler family and schedule.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    /// EDM Heun on the Karras sigmas (80 -> 0.002, rho 7); 2 x steps - 1 NFE.
    Edm,
    /// Deterministic DDIM on the DDPM linear-beta VP schedule; 1 NFE per step.
    Vp,
    /// Flow-matching Euler (alpha = 1 - t, sigma = t, shift 3); 1 NFE per step.
    Flow,
}

impl From<ScheduleArg> for Schedule {
    fn from(s: ScheduleArg) -> Schedule {
        match s {
            ScheduleArg::Edm => Schedule::Edm,
            ScheduleArg::Vp => Schedule::Vp,
            ScheduleArg::Flow => Schedule::Flow,
        }
    }
}

/// Where the Gaussian operations run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    /// CUDA device 0 when present and its result agrees with the CPU path, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0 for the jump (the ideal model stays on the CPU).
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
}

/// Arguments of `gaussskip demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset for the ideal model and the fit: CSV (optionally .gz; one item per line,
    /// values 0-255, last field a label), an image folder, .npy, .npz or .safetensors
    /// [default: the bundled 5,000 MNIST digits]
    #[arg(long, visible_alias = "dataset", value_name = "PATH")]
    data: Option<PathBuf>,
    /// Value map into [-1,1] for non-CSV data, FROM_LO,FROM_HI:TO_LO,TO_HI (images default
    /// to 0,255:-1,1; arrays are used as stored)
    #[arg(long, allow_hyphen_values = true)]
    scale: Option<String>,
    /// Jump with this model file (same [-1,1] space and dimension as the data) instead of
    /// fitting a full-rank Gaussian to the data
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Sampler and schedule
    #[arg(long, value_enum, default_value_t = ScheduleArg::Edm)]
    schedule: ScheduleArg,
    /// Sampler steps (18 EDM Heun steps = 35 NFE)
    #[arg(long, default_value_t = 18)]
    steps: usize,
    /// Samples per run
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the starting noise
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Jump over k = 0, 1, ..., max-skip first steps
    #[arg(long, default_value_t = 10)]
    max_skip: usize,
    /// Folder for the pictures and the table
    #[arg(long, default_value = "demo-out", value_name = "DIR")]
    out: PathBuf,
    /// Where the Gaussian jump runs
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Noise draws (seed + 1) to calibrate the hand-off on, shown next to the table (0: no
    /// calibration)
    #[arg(long, default_value_t = 32)]
    calibration_batch: usize,
}

/// Runs `gaussskip demo` and prints its table.
pub fn run(args: Args) -> gaussskip::Result<()> {
    let start = Instant::now();
    let opts = Options {
        data: args
            .data
            .unwrap_or_else(|| PathBuf::from(demo::BUNDLED_DATA)),
        scale: args.scale.as_deref().map(str::parse).transpose()?,
        model: args.model,
        schedule: args.schedule.into(),
        steps: args.steps,
        batch: args.batch,
        seed: args.seed,
        max_skip: args.max_skip,
        out: args.out,
        device: args.device.into(),
        progress: std::io::stderr().is_terminal(),
        calibration_batch: args.calibration_batch,
    };
    let report = demo::run(&opts)?;
    println!("{}\n", report.summary());
    print!("{}", report.table());
    if opts.schedule != Schedule::Edm {
        println!("(sigma at hand-off is sigma/alpha, the EDM-equivalent noise level)");
    }
    println!();
    if let Some(cal) = &report.calibration {
        println!("calibrated on {} other draws: {}", cal.batch, cal.summary());
        println!("(gaussskip calibrate prints its table)\n");
    }
    println!(
        "Each run starts from the same noise; k > 0 jumps over the first k steps with the\n\
         Gaussian's exact PF-ODE map and resumes the sampler at step k."
    );
    if let Some(c) = &report.classes {
        println!();
        println!(
            "Class-conditional sampling ({} classes, sample i of class i mod {}; the ideal model of each\n\
             sample's class): jumping with one global Gaussian vs the Gaussian of each sample's class.",
            c.labels.len(),
            c.labels.len()
        );
        print!("{}", c.table());
    }
    if let Some(why) = &report.no_pictures {
        println!("no pictures: {why}");
    }
    let names: Vec<String> = report
        .files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    println!("wrote to {}/:", opts.out.display());
    println!("  table.txt            this table");
    if names.iter().any(|n| n == "outline_first.png") {
        println!(
            "  samples_k00.png .. samples_k{:02}.png  the {} final samples of each run",
            opts.max_skip, opts.batch
        );
        println!("  samples_by_k.png     one row per k: the first samples of each run");
        if report.classes.is_some() {
            println!("  classes_by_k.png     the same for the class-conditional runs (class Gaussian jumps)");
        }
        println!(
            "  outline_first.png    per sample: the Gaussian's x0-prediction along its exact path (top)\n\
             \x20                      and the ideal model's along its trajectory (bottom), noisiest level first"
        );
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
