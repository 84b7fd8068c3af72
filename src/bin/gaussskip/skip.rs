//! `gaussskip skip`.

/// Arguments of `gaussskip skip`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `gaussskip skip`.
pub fn run(_args: Args) -> gaussskip::Result<()> {
    Err(gaussskip::Error::arg("command", "skip is not implemented yet"))
}
