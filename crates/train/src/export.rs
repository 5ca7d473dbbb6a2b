//! `visual-search export`: the embedder of a checkpoint as a self-contained model folder
//! (see `visual_search_inference::model_dir`), optionally with its ONNX graph.

use std::path::Path;

use burn::tensor::Device;
pub use visual_search_inference::model_dir::ExportOptions;
use visual_search_inference::model_dir::{ExportedModel, ModelDirInfo, export_embedder};
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
    let exported = ExportedModel {
        model: &model,
        spec: &spec,
        size: state.image_size,
        neck_dim: state.neck_dim,
        gem: state.gem,
        source: dir.display().to_string(),
    };
    Ok(export_embedder(&exported, out, options)?)
}
