//! Subcommand groups; one file per command.

mod bench_embed;
mod bench_index;
mod bench_mine;
mod bench_preprocess;
mod bench_rank;
mod bench_topk;
mod bench_train;
mod data_check;
mod data_import;
pub mod embed;
pub mod eval;
pub mod export;
pub mod index;
mod index_calibrate;
pub mod mine;
pub mod rank;
pub mod search;
pub mod serve;
pub mod soup;
pub mod train;
mod weights_inspect;

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
    /// Model embedding throughput per engine vs PyTorch eager, folded and ONNX Runtime.
    Embed(bench_embed::Args),
    /// The whole dev-set ranker vs Python rankers (PyTorch folded, ONNX Runtime).
    Rank(bench_rank::Args),
    /// Exact top-k search vs faiss IndexFlatIP and NumPy.
    Topk(bench_topk::Args),
    /// Embedded index vs PostgreSQL + pgvector: build time, latency, HNSW recall.
    Index(bench_index::Args),
    /// Mining throughput (`mine pairs` reviews/s, `mine features` images/s) vs plain Python.
    Mine(bench_mine::Args),
    /// Train-step throughput per model and backend vs PyTorch eager f32 and bf16 autocast.
    Train(bench_train::Args),
}

impl BenchCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            BenchCommand::Preprocess(a) => bench_preprocess::run(a),
            BenchCommand::Embed(a) => bench_embed::run(a),
            BenchCommand::Rank(a) => bench_rank::run(a),
            BenchCommand::Topk(a) => bench_topk::run(a),
            BenchCommand::Mine(a) => bench_mine::run(a),
            BenchCommand::Index(a) => bench_index::run(a),
            BenchCommand::Train(a) => bench_train::run(a),
        }
    }
}

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// List the tensors of a weight file.
    Inspect(weights_inspect::Args),
}

impl WeightsCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            WeightsCommand::Inspect(a) => weights_inspect::run(a),
        }
    }
}

/// Lists the registered models with their input size and embedding width.
pub fn list_models() -> anyhow::Result<()> {
    use visual_search_model::registry::{Architecture, lookup, model_names};
    let mut rows = Vec::new();
    for name in model_names() {
        let spec = lookup(&name)?;
        let family = match &spec.architecture {
            Architecture::EfficientNetLite(_) => "EfficientNet-Lite",
            Architecture::ConvNext(_) => "ConvNeXt",
            Architecture::Vit(_) => "OpenCLIP ViT",
            Architecture::ResNet(_) => "ResNet",
        };
        rows.push(vec![name, family.to_string(), spec.input_size.to_string()]);
    }
    print!(
        "{}",
        crate::table::render(&["model", "family", "input"], &rows)
    );
    Ok(())
}
