//! `gaussskip` command-line tool. With no subcommand it runs `demo`.

mod calibrate;
mod demo;
mod fit;
mod info;
mod num;
mod skip;

use num::num;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gaussskip",
    version,
    about = "Skip the first steps of diffusion sampling with the exact Gaussian PF-ODE map"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model file: dimension, rank, spectrum, commitment noise levels.
    Info(info::Args),
    /// Jump a batch of noisy samples (.npy) from one noise level to another.
    Skip(skip::Args),
    /// Fit a Gaussian model to a dataset (image folder, .npy/.npz, safetensors).
    Fit(fit::Args),
    /// The main job: fit MNIST, sample with the ideal model with and without jumps, report.
    Demo(demo::Args),
    /// Calibrate the hand-off (how many steps the jump may replace) on a dataset's ideal model.
    Calibrate(calibrate::Args),
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        // One line and status 1, like every other error; `--help` has the usage.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        let first = first.strip_prefix("error: ").unwrap_or(first);
        eprintln!("gaussskip: error: {first} (see gaussskip --help)");
        std::process::exit(1);
    });
    let command =
        cli.command
            .unwrap_or_else(|| match Cli::parse_from(["gaussskip", "demo"]).command {
                Some(c) => c,
                None => unreachable!("demo was given"),
            });
    let result = match command {
        Command::Info(a) => info::run(a),
        Command::Skip(a) => skip::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Calibrate(a) => calibrate::run(a),
    };
    if let Err(e) = result {
        eprintln!("gaussskip: error: {e}");
        std::process::exit(1);
    }
}
