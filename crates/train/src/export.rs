//! `visual-search export`: the embedder of a checkpoint as a self-contained model folder
//! (see `visual_search_inference::model_dir`), optionally with its ONNX graph.

use std::path::Path;

use burn::tensor::Device;
use visual_search_inference::model_dir::{
    FORMAT_VERSION, ModelDirInfo, ONNX_FILE, write_model_dir,
};
use visual_search_inference::onnx::{export_model, write_model};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, lookup};

use crate::checkpoint::{load_module, read_state, resolve_checkpoint};
use crate::error::TrainError;

fn bad(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What to write besides the weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Store the weights as f16.
    pub half: bool,
    /// Also write `model.onnx` (batch norm folded, L2-normalised output).
    pub onnx: bool,
}

/// Exports the embedder of a checkpoint (or of a run's best checkpoint) into `out`. `out` must
/// be absent, empty or an earlier export: nothing else is ever deleted.
pub fn export_model_dir(
    checkpoint: &Path,
    out: &Path,
    options: ExportOptions,
    device: &Device,
) -> Result<ModelDirInfo, TrainError> {
    visual_search_inference::model_dir::check_replaceable(out)?;
    let dir = resolve_checkpoint(checkpoint)?;
    let state = read_state(&dir)?;
    let spec = lookup(&state.model_name).map_err(|e| bad(&dir, e.to_string()))?;
    let build = BuildOptions {
        image_size: state.image_size,
        gem: state.gem,
        ..spec.default_options()
    };
    let model = load_module(
        EmbeddingModel::new(&spec, &build, state.neck_dim, device),
        &dir.join("embedder.bpk"),
    )?;
    let info = ModelDirInfo {
        format_version: FORMAT_VERSION,
        model: spec.name.clone(),
        input_size: state.image_size,
        mean: spec.mean,
        std: spec.std,
        embedding_dim: model.dim(),
        neck_dim: state.neck_dim,
        gem: state.gem,
        dtype: if options.half { "f16" } else { "f32" }.to_string(),
        source: dir.display().to_string(),
    };
    write_model_dir(&model, &info, out, options.half, |tmp| {
        if options.onnx {
            let proto = export_model(&model, &spec.architecture, state.image_size, &spec.name)?;
            write_model(&proto, &tmp.join(ONNX_FILE))?;
        }
        Ok(())
    })?;
    Ok(info)
}
