//! The `msloss` command-line tool as a library: the binary's `main` is [`run`], and [`check_args`]
//! parses and checks a command line without running it (the argument fuzzer's entry).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backends;
mod bench;
mod energy;
mod eval;
mod gradcheck;
mod npy;
mod params;
mod segment;
mod sys;

/// msloss: the multiphase Mumford–Shah segmentation loss, its exact gradient, and tools around it.
#[derive(Debug, Parser)]
#[command(name = "msloss", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Energy, centroids and gradient of arrays in .npy files (prints one JSON object).
    Energy(energy::Args),
    /// Check a backend's analytic gradient against central differences in f64.
    Gradcheck(gradcheck::Args),
    /// Time loss and gradient on seeded inputs (prints one JSON object).
    Bench(bench::Args),
    /// Segment an image or volume into K phases by minimising the energy (no network needed).
    Segment(segment::Args),
    /// Score a label map against a ground truth: per-class IoU, mean IoU, adapted Rand error (JSON).
    Eval(eval::Args),
}

/// Runs the command line of this process.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Energy(a) => energy::run(a).map(|()| true),
        Command::Gradcheck(a) => gradcheck::run(a),
        Command::Bench(a) => bench::run(a).map(|()| true),
        Command::Segment(a) => segment::run(a).map(|()| true),
        Command::Eval(a) => eval::run(a).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("msloss: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Parses `args` (the program name first) and checks what can be checked without reading files
/// or starting work: the loss parameters, the thread count, the gradient check's tolerance.
///
/// # Errors
/// clap's error for a command line that does not parse, else the first check that fails.
pub fn check_args<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let (params, backend) = match &cli.command {
        Command::Energy(a) => (Some(a.params()), Some(a.backend())),
        Command::Gradcheck(a) => (Some(a.params()), Some(a.backend())),
        Command::Bench(a) => (Some(a.params()), Some(a.backend())),
        Command::Segment(a) => (None, Some(a.backend())),
        Command::Eval(_) => (None, None),
    };
    if let Some(p) = params {
        p.params()?;
    }
    if let Some(b) = backend {
        b.check()?;
    }
    Ok(())
}
