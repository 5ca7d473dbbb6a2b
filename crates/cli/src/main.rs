//! `visual-search`: the command-line edge of the system. Each subcommand lives in its own file
//! under `commands/`, wires the library crates together and owns the user-facing output; this
//! is the only place a compute backend is chosen.

mod allocator;
mod args;
mod auto_box_run;
mod broken_pipe;
mod commands;
mod dev_set_run;
mod embedding_run;
mod error_report;
mod holdout;
mod index_model;
mod list_metadata;
mod progress;
mod sample_lists;
mod sharded_embedding;
mod table;

use clap::{Parser, Subcommand};

/// Visual product recognition: find the same product in a catalogue from a photo.
///
/// Train image-embedding models with metric-learning heads, evaluate them with the challenge
/// metric (mAP@1000), rank galleries fast and serve search. Data is read in the formats of the
/// Visual Product Recognition Challenge 2023 (Product10K lists, dev-set gallery/queries CSVs).
#[derive(Parser)]
#[command(name = "visual-search", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, validate and import datasets.
    #[command(subcommand)]
    Data(commands::DataCommand),
    /// Train a model (one phase of the recipe) from a YAML config; --resume continues a run.
    Train(commands::train::Args),
    /// Export a checkpoint as a self-contained inference model folder.
    Export(commands::export::Args),
    /// Average checkpoints of one architecture into one model folder (uniform or greedy soup).
    Soup(commands::soup::Args),
    /// Embed every image of a challenge CSV with a model.
    Embed(commands::embed::Args),
    /// Rank a dev set's gallery for its queries (the submission): top-k indices as .npy + CSV.
    Rank(commands::rank::Args),
    /// Score a model (or precomputed embeddings) on a dev set: mAP@1000, R@1, mAP@R.
    Eval(commands::eval::Args),
    /// Build, extend and inspect the on-disk search index of a catalogue.
    #[command(subcommand)]
    Index(commands::index::IndexCommand),
    /// Mine training pairs from Amazon reviews: pairs → features → filter → download → merge.
    #[command(subcommand)]
    Mine(commands::mine::MineCommand),
    /// Search an index with photos from the command line.
    Search(commands::search::Args),
    /// Serve an index over HTTP: JSON search API, thumbnails, metrics and a web page.
    Serve(commands::serve::Args),
    /// Inspect weight files.
    #[command(subcommand)]
    Weights(commands::WeightsCommand),
    /// List the registered models.
    Models,
    /// Measure throughput against a PyTorch baseline run in the same process tree.
    #[command(subcommand)]
    Bench(commands::BenchCommand),
}

fn main() -> std::process::ExitCode {
    allocator::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    // The collective libraries log every peer that disconnects, which each
                    // does when a data-parallel run ends; their failures reach the user as
                    // errors of `train` (RUST_LOG shows the logs).
                    "warn,burn_collective=off,burn_communication=off",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        broken_pipe::exit_quietly_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Data(c) => c.run(),
        Command::Train(a) => commands::train::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Soup(a) => commands::soup::run(a),
        Command::Embed(a) => commands::embed::run(a),
        Command::Rank(a) => commands::rank::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Index(c) => c.run(),
        Command::Mine(c) => c.run(),
        Command::Search(a) => commands::search::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Weights(c) => c.run(),
        Command::Models => commands::list_models(),
        Command::Bench(c) => c.run(),
    };
    if let Some(summary) = visual_search_data::transform::unusable_query_boxes_summary() {
        eprintln!("warning: {summary}");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_report::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
