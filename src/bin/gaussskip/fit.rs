//! `gaussskip fit`: stream a dataset into moments and eigendecompose, or into a low-rank
//! sketch over one or more passes; save a model file.

use std::path::PathBuf;
use std::time::Instant;

use gaussskip::fit::{
    classes_from_path, fit_classes, fit_path, FitOptions, InputOptions, LabelSource,
    PathFitOptions, Rank, Residual, Scale,
};
use gaussskip::{npy, Error, FitMethod, ModelMeta, Result};

use crate::num;

/// Arguments of `gaussskip fit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A folder of PNG/JPEG images (same shape, grey or RGB), a .npy or .npz array
    /// (items first), a .safetensors file, or a CSV like the bundled MNIST file (.csv or
    /// .csv.gz: pixel values 0-255 then a label per line).
    input: PathBuf,
    /// Where to write the model (safetensors; written atomically).
    #[arg(short, long, default_value = "model.safetensors")]
    output: PathBuf,
    /// Keep the top N eigenvectors (default: all of them).
    #[arg(long, conflicts_with = "explained")]
    rank: Option<usize>,
    /// `exact` (eigendecomposition of the dim x dim covariance) or `sketch` (randomized
    /// low-rank sketch, memory O(dim x rank), needs --rank). Default: exact, or the sketch when
    /// --rank is given and the dim x dim matrices would not fit in memory.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Reads of the data for the sketch: 1 for data that can be read only once (least
    /// accurate), more for accuracy.
    #[arg(long, default_value_t = gaussskip::fit::DEFAULT_PASSES)]
    passes: u32,
    /// Sketch columns beyond the rank (default: the rank itself, at least 10).
    #[arg(long)]
    oversampling: Option<usize>,
    /// Seed of the sketch's random test matrix.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the sketch's products run: `cpu`, or `cuda` (device 0, through cuBLAS).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Keep the fewest top eigenvectors that explain this fraction of the variance, e.g. 0.99.
    #[arg(long)]
    explained: Option<f64>,
    /// Variance of the discarded directions: `zero` (the papers) or `mean` of the discarded
    /// eigenvalues (keeps the total variance).
    #[arg(long, value_enum, default_value_t = ResidualArg::Zero)]
    residual: ResidualArg,
    /// Value map FROM_LO,FROM_HI:TO_LO,TO_HI applied to every value (images and CSV default
    /// to 0,255:-1,1; arrays default to values as stored).
    #[arg(long, allow_hyphen_values = true)]
    scale: Option<String>,
    /// Name of the array (.npz) or tensor (.safetensors) when the file holds several.
    #[arg(long)]
    key: Option<String>,
    /// Free text recorded as the model's source (default: the input path).
    #[arg(long)]
    source: Option<String>,
    /// Fit one Gaussian per class (a model of one component per class). Without a value the
    /// labels are the CSV's last column or the image folder's class subfolders; a value names
    /// the label array of a .npz/.safetensors input (with --key for the data), or a .npy file
    /// of one integer label per item. Exact fit only.
    #[arg(long, num_args = 0..=1, default_missing_value = "auto", value_name = "SOURCE")]
    labels: Option<String>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ResidualArg {
    Zero,
    Mean,
}

impl From<ResidualArg> for Residual {
    fn from(r: ResidualArg) -> Residual {
        match r {
            ResidualArg::Zero => Residual::Zero,
            ResidualArg::Mean => Residual::Mean,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum MethodArg {
    Exact,
    Sketch,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceArg {
    Cpu,
    Cuda,
}

/// Runs `gaussskip fit`.
pub fn run(args: Args) -> Result<()> {
    let rank = match (args.rank, args.explained) {
        (Some(r), _) => Rank::Fixed(r),
        (None, Some(f)) => Rank::Explained(f),
        (None, None) => Rank::Full,
    };
    // Checked again by the fit; here so a bad fraction fails before a long read.
    if let Rank::Explained(f) = rank {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::arg(
                "explained",
                format!("must be in (0, 1], got {f}"),
            ));
        }
    }
    let method = args.method.map(|m| match m {
        MethodArg::Exact => FitMethod::Exact,
        MethodArg::Sketch => FitMethod::Sketch,
    });
    if method == Some(FitMethod::Exact) && args.device == DeviceArg::Cuda {
        return Err(Error::arg(
            "device",
            "the exact fit runs on the CPU; --device cuda applies to --method sketch",
        ));
    }
    let scale = args.scale.as_deref().map(str::parse::<Scale>).transpose()?;
    if let Some(source) = &args.labels {
        if method == Some(FitMethod::Sketch) || args.device == DeviceArg::Cuda {
            return Err(Error::arg(
                "labels",
                "fitting by class uses the exact fit on the CPU (drop --method sketch / --device cuda)",
            ));
        }
        return run_classes(&args, rank, scale, LabelSource::parse(Some(source)));
    }
    let start = Instant::now();
    let fitted = fit_path(
        &args.input,
        &PathFitOptions {
            input: InputOptions {
                scale,
                key: args.key,
                progress: !args.no_progress,
            },
            method,
            rank,
            residual: args.residual.into(),
            passes: args.passes,
            oversampling: args.oversampling,
            seed: args.seed,
            cuda_device: (args.device == DeviceArg::Cuda).then_some(0),
            source: args
                .source
                .unwrap_or_else(|| args.input.display().to_string()),
            memory_budget: None,
        },
    )?;
    let model = &fitted.model;
    let spectrum = &fitted.spectrum;
    let meta = model.meta();
    let info = meta.fit.as_ref().expect("fitted models record their fit");
    let how = match fitted.method {
        FitMethod::Exact => "exact eigendecomposition".to_string(),
        FitMethod::Sketch => format!(
            "low-rank sketch, {} pass{}, width {}{}",
            info.passes,
            if info.passes == 1 { "" } else { "es" },
            info.sketch_width.unwrap_or(0),
            info.captured_estimate.map_or(String::new(), |c| format!(
                ", captured variance estimate {:.4}%",
                100.0 * c
            ))
        ),
    };
    model.save(&args.output)?;
    let top = spectrum.eigvals.first().copied().unwrap_or(0.0);
    println!(
        "wrote {}: {} items of shape {}, dim {}, rank {}, {:.2}% of the variance, largest eigenvalue {}, residual variance {}, value space {}; {how} in {:.1} s; method: {} ({})",
        args.output.display(),
        meta.sample_count,
        npy::show_shape(&meta.item_shape),
        model.dim(),
        model.rank(),
        100.0 * spectrum.explained,
        num(top),
        num(spectrum.residual_var),
        meta.value_space,
        start.elapsed().as_secs_f64(),
        fitted.method.name(),
        fitted.reason
    );
    Ok(())
}

/// `gaussskip fit --labels`: one exact fit per class, one report line once written.
fn run_classes(args: &Args, rank: Rank, scale: Option<Scale>, labels: LabelSource) -> Result<()> {
    let start = Instant::now();
    let loaded = classes_from_path(
        &args.input,
        &InputOptions {
            scale,
            key: args.key.clone(),
            progress: !args.no_progress,
        },
        &labels,
    )?;
    let opts = FitOptions {
        rank,
        residual: args.residual.into(),
        meta: ModelMeta {
            item_shape: loaded.item_shape.clone(),
            value_space: loaded.value_space.clone(),
            sample_count: 0,
            source: args
                .source
                .clone()
                .unwrap_or_else(|| args.input.display().to_string()),
            ..ModelMeta::default()
        },
    };
    let model = fit_classes(&loaded, &opts)?;
    model.save(&args.output)?;
    let ranks: Vec<usize> = (0..model.n_components())
        .map(|k| model.component(k).map(|c| c.rank()))
        .collect::<Result<_>>()?;
    println!(
        "wrote {}: {} items of shape {} in {} classes ({}), dim {}, ranks {}..{}, value space {}; exact fit per class in {:.1} s",
        args.output.display(),
        model.meta().sample_count,
        npy::show_shape(&model.meta().item_shape),
        model.n_components(),
        model.labels().join(", "),
        model.dim(),
        ranks.iter().min().copied().unwrap_or(0),
        ranks.iter().max().copied().unwrap_or(0),
        model.meta().value_space,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
