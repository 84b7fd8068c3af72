//! `gaussskip fit`.

/// Arguments of `gaussskip fit`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `gaussskip fit`.
pub fn run(_args: Args) -> gaussskip::Result<()> {
    Err(gaussskip::Error::arg("command", "fit is not implemented yet"))
}
