//! `gaussskip fit`: stream a dataset into moments, eigendecompose, save a model file.

use std::path::PathBuf;
use std::time::Instant;

use gaussskip::fit::{
    fit_model_with_spectrum, moments_from_path, FitOptions, InputOptions, Rank, Residual, Scale,
};
use gaussskip::{npy, Error, ModelMeta, Result};

use crate::num;
use indicatif::ProgressBar;

/// Arguments of `gaussskip fit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A folder of PNG/JPEG images (same shape, grey or RGB), a .npy or .npz array
    /// (items first), a .safetensors file, or a CSV like the bundled MNIST file (.csv or
    /// .csv.gz: pixel values 0-255 then a label per line; the label is not used yet).
    input: PathBuf,
    /// Where to write the model (safetensors; written atomically).
    #[arg(short, long, default_value = "model.safetensors")]
    output: PathBuf,
    /// Keep the top N eigenvectors (default: all of them).
    #[arg(long, conflicts_with = "explained")]
    rank: Option<usize>,
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
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ResidualArg {
    Zero,
    Mean,
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
    let scale = args.scale.as_deref().map(str::parse::<Scale>).transpose()?;
    let progress = !args.no_progress;
    let start = Instant::now();
    let loaded = moments_from_path(
        &args.input,
        &InputOptions {
            scale,
            key: args.key,
            progress,
        },
    )?;
    let read_s = start.elapsed().as_secs_f64();
    let m = &loaded.moments;

    let spinner = if progress {
        let pb = ProgressBar::new_spinner();
        pb.set_message(format!("eigendecomposing a {0}x{0} covariance", m.dim()));
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        pb
    } else {
        ProgressBar::hidden()
    };
    let eig_start = Instant::now();
    let opts = FitOptions {
        rank,
        residual: match args.residual {
            ResidualArg::Zero => Residual::Zero,
            ResidualArg::Mean => Residual::Mean,
        },
        meta: ModelMeta {
            item_shape: loaded.item_shape.clone(),
            value_space: loaded.value_space.clone(),
            sample_count: m.count(),
            source: args
                .source
                .unwrap_or_else(|| args.input.display().to_string()),
        },
    };
    let result = fit_model_with_spectrum(m, &opts);
    spinner.finish_and_clear();
    let (model, spectrum) = result?;
    model.save(&args.output)?;
    let top = spectrum.eigvals.first().copied().unwrap_or(0.0);
    let nonzero = spectrum.eigvals.iter().filter(|&&l| l > 0.0).count();
    // One report, after the model is written: an error leaves only its own line.
    println!(
        "wrote {}: {} items of shape {}, dim {}, rank {} of {} ({} nonzero), {:.2}% of the variance, largest eigenvalue {}, residual variance {}, value space {} ({:.1} s reading, {:.1} s eigendecomposition)",
        args.output.display(),
        m.count(),
        npy::show_shape(&loaded.item_shape),
        model.dim(),
        model.rank(),
        model.dim(),
        nonzero,
        100.0 * spectrum.explained,
        num(top),
        num(spectrum.residual_var),
        loaded.value_space,
        read_s,
        eig_start.elapsed().as_secs_f64()
    );
    Ok(())
}
