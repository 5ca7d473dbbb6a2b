//! `visual-search export`: a checkpoint → a self-contained inference model folder.

use std::path::PathBuf;

use visual_search_model::device::parse_device;
use visual_search_train::export::{ExportOptions, export_model_dir};

/// Writes OUT/model.safetensors (embedder weights, f32 or f16) and OUT/model.json (model name,
/// input size, mean/std, embedding width) from a checkpoint folder or a run folder (its best
/// checkpoint). `embed`, `rank` and `eval` take the folder with --model-dir.
#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint folder, or a run folder (its `best`, else `last`).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Store weights as f16 (norm layers stay f32).
    #[arg(long)]
    f16: bool,
    /// Also write OUT/model.onnx (opset 17, dynamic batch axis, batch norm folded into the
    /// convolutions, L2-normalised `embedding` output) for `--device ort` and any ONNX runtime.
    #[arg(long)]
    onnx: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device("flex").or_else(|_| parse_device("auto"))?;
    let options = ExportOptions {
        half: args.f16,
        onnx: args.onnx,
    };
    let info = export_model_dir(&args.checkpoint, &args.out, options, &device)?;
    println!(
        "exported {} ({} px, {}-d embeddings, {}) from {} to {}",
        info.model,
        info.input_size,
        info.embedding_dim,
        info.dtype,
        info.source,
        args.out.display()
    );
    Ok(())
}
