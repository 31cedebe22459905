//! The `msloss` command-line tool.

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

fn main() -> ExitCode {
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
