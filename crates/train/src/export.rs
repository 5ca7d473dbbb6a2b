//! `visual-search export`: the embedder of a checkpoint as a self-contained model folder
//! (see `visual_search_inference::model_dir`), optionally with its ONNX graph.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use visual_search_inference::Preprocessing;
pub use visual_search_inference::model_dir::ExportOptions;
use visual_search_inference::model_dir::{ExportedModel, ModelDirInfo, export_embedder};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, ModelSpec, lookup};

use crate::checkpoint::{TrainState, load_module, read_state, resolve_checkpoint};
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
    let embedder = CheckpointEmbedder::load(checkpoint, device)?;
    Ok(export_embedder(&embedder.exported(), out, options)?)
}

/// The embedder of a checkpoint, with what a model folder records about it.
pub struct CheckpointEmbedder {
    /// The checkpoint folder it came from.
    pub dir: PathBuf,
    pub state: TrainState,
    pub spec: ModelSpec,
    pub model: EmbeddingModel,
}

impl CheckpointEmbedder {
    /// Loads the embedder of a checkpoint folder, or of a run folder's best checkpoint.
    pub fn load(checkpoint: &Path, device: &Device) -> Result<Self, TrainError> {
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
        Ok(CheckpointEmbedder {
            dir,
            state,
            spec,
            model,
        })
    }

    /// What [`export_embedder`] writes for it.
    pub fn exported(&self) -> ExportedModel<'_> {
        ExportedModel {
            model: &self.model,
            spec: &self.spec,
            size: self.state.image_size,
            neck_dim: self.state.neck_dim,
            gem: self.state.gem,
            source: self.dir.display().to_string(),
        }
    }

    /// How its input is prepared.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            size: self.state.image_size,
            mean: self.spec.mean,
            std: self.spec.std,
        }
    }
}
