//! `gaussskip info`.

/// Arguments of `gaussskip info`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `gaussskip info`.
pub fn run(_args: Args) -> gaussskip::Result<()> {
    Err(gaussskip::Error::arg("command", "info is not implemented yet"))
}
