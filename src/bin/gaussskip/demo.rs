//! `gaussskip demo`.

/// Arguments of `gaussskip demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `gaussskip demo`.
pub fn run(_args: Args) -> gaussskip::Result<()> {
    Err(gaussskip::Error::arg("command", "demo is not implemented yet"))
}
