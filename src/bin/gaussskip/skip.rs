//! `gaussskip skip`: jump a batch of samples stored in a .npy file from one noise level to
//! another with the exact PF-ODE map of the model.

use std::path::PathBuf;
use std::time::Instant;

use gaussskip::{npy, Context, Device, Error, Model, Noise, Result};

use crate::num;

/// Arguments of `gaussskip skip`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (safetensors, as written by `gaussskip fit`).
    #[arg(long)]
    model: PathBuf,
    /// Samples at the `--from` level: a .npy of shape [batch, dim] or [batch, *item_shape]
    /// (any numeric dtype).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the samples at the `--to` level: f32 .npy with the input's shape,
    /// written atomically (nothing is written on error).
    #[arg(long)]
    output: PathBuf,
    /// Noise level the input is at (in the units of `--schedule`).
    #[arg(long, allow_hyphen_values = true)]
    from: f64,
    /// Noise level to jump to (in the units of `--schedule`).
    #[arg(long, allow_hyphen_values = true)]
    to: f64,
    /// How `--from`/`--to` are given: `edm` sigma (x_t = x0 + sigma eps), `vp` alpha_bar
    /// (x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps), or `flow` t
    /// (x_t = (1 - t) x0 + t eps).
    #[arg(long, value_enum, default_value_t = Schedule::Edm)]
    schedule: Schedule,
    /// Where to compute: `cpu`, `cuda` (device 0, eigenvectors in f16: relative error
    /// <= 2e-3), or `auto`: CUDA device 0 when it is present and agrees with the CPU on a
    /// trial batch, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Schedule {
    Edm,
    Vp,
    Flow,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl Schedule {
    /// The (alpha, sigma) pair of a level given in this schedule's units; `arg` names the flag.
    fn level(self, value: f64, arg: &'static str) -> Result<Noise> {
        let unit = |range_ok: bool, what: &str| {
            if range_ok {
                Ok(())
            } else {
                Err(Error::arg(arg, format!("{what}, got {}", num(value))))
            }
        };
        match self {
            Schedule::Edm => {
                unit(
                    value.is_finite() && value >= 0.0,
                    "an EDM sigma must be finite and >= 0",
                )?;
                Ok(Noise::edm(value))
            }
            Schedule::Vp => {
                unit(
                    (0.0..=1.0).contains(&value),
                    "a VP alpha_bar must be in [0, 1]",
                )?;
                Ok(Noise::vp(value))
            }
            Schedule::Flow => {
                unit(
                    (0.0..=1.0).contains(&value),
                    "a flow time t must be in [0, 1]",
                )?;
                Ok(Noise::flow(value))
            }
        }
    }
}

/// Runs `gaussskip skip`.
///
/// # Errors
/// `InvalidArgument`/`InvalidNoise` for levels outside their schedule's range or a source
/// level without noise; `Io`/`FileFormat` for unreadable or invalid model and input files;
/// `ShapeMismatch` when the input's items do not have the model's dimension; `NonFinite`
/// naming the item for NaN/Inf in the input; `NoCuda`/`Cuda` for an unusable GPU.
pub fn run(args: Args) -> Result<()> {
    let from = args.schedule.level(args.from, "from")?;
    let to = args.schedule.level(args.to, "to")?;
    from.validate_source("from")?;
    to.validate("to")?;

    let model = Model::load(&args.model)?;
    let (shape, x) = npy::read_f32(&args.input)?;
    let batch = batch_of(&shape, &model).map_err(|expected| {
        Error::shape(
            "input",
            format!("{expected} for {}", args.model.display()),
            format!("{} in {}", npy::show_shape(&shape), args.input.display()),
        )
    })?;
    if batch == 0 {
        return Err(Error::arg(
            "input",
            format!(
                "{} holds no samples (shape {})",
                args.input.display(),
                npy::show_shape(&shape)
            ),
        ));
    }
    let dim = model.dim();
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(
            "input",
            format!(
                "{}: sample {} holds NaN or Inf (value {} of {dim})",
                args.input.display(),
                i / dim,
                i % dim
            ),
        ));
    }

    let device = match args.device {
        DeviceArg::Auto => Device::Auto,
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::Cuda,
    };
    // `auto` keeps a GPU only when it reproduces the CPU path on this model.
    let (ctx, place) = Context::for_host_data(device, 0, &model)?;
    let start = Instant::now();
    let mut out = vec![0f32; x.len()];
    ctx.skip(&model, &x, &mut out, from, to)?;
    let seconds = start.elapsed().as_secs_f64();
    npy::write_f32(&args.output, &shape, &out)?;
    let (a, b) = (num(args.from), num(args.to));
    let (ea, eb) = (num(from.edm_sigma()), num(to.edm_sigma()));
    let levels = match args.schedule {
        Schedule::Edm => format!("sigma {a} to {b} (EDM)"),
        Schedule::Vp => format!("alpha_bar {a} to {b} (VP; EDM sigma {ea} to {eb})"),
        Schedule::Flow => format!("t {a} to {b} (flow; EDM sigma {ea} to {eb})"),
    };
    println!(
        "wrote {}: {batch} samples of dim {dim} from {levels} on {place} in {:.1} ms",
        args.output.display(),
        seconds * 1e3
    );
    Ok(())
}

/// The batch size of an input of `shape` for `model`: the first axis, when the rest is
/// `[dim]`, the model's item shape, or (item shape unknown) anything with `dim` elements;
/// a single item of shape `[dim]` is a batch of one. Otherwise the shapes that would fit.
fn batch_of(shape: &[usize], model: &Model) -> std::result::Result<usize, String> {
    let dim = model.dim();
    let item = &model.meta().item_shape;
    match shape {
        [d] if *d == dim => return Ok(1),
        [batch, rest @ ..] if !rest.is_empty() => {
            let fits = rest == [dim]
                || rest == item.as_slice()
                || (item.is_empty() && npy::element_count(rest) == Some(dim));
            if fits {
                return Ok(*batch);
            }
        }
        _ => {}
    }
    let mut want = format!("[batch, {dim}]");
    if !item.is_empty() && item.as_slice() != [dim] {
        let dims: Vec<String> = item.iter().map(usize::to_string).collect();
        want.push_str(&format!(" or [batch, {}]", dims.join(", ")));
    }
    Err(want)
}
