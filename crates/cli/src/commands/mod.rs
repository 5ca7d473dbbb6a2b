//! Subcommand groups; one file per command.

mod bench_preprocess;
mod data_check;
mod data_import;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Validate a dataset root: every CSV row, every image, counts per class.
    Check(data_check::Args),
    /// Import a public dataset into the challenge's formats.
    #[command(subcommand)]
    Import(data_import::ImportCommand),
}

impl DataCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            DataCommand::Check(a) => data_check::run(a),
            DataCommand::Import(c) => c.run(),
        }
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode + crop + resize + normalise throughput vs PIL + torchvision.
    Preprocess(bench_preprocess::Args),
}

impl BenchCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            BenchCommand::Preprocess(a) => bench_preprocess::run(a),
        }
    }
}
