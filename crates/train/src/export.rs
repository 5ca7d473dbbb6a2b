//! Self-contained inference model folders: `model.safetensors` (the embedder's weights, f32 or
//! f16 — norms stay f32) and `model.json` (registry name, input size, pixel statistics, neck,
//! pooling), so `embed`, `rank`, `eval` and `serve` need only the folder.

use std::path::{Path, PathBuf};

use burn::store::{FloatCastAdapter, HalfPrecisionAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, lookup};

use crate::checkpoint::{load_module, read_state, resolve_checkpoint};
use crate::error::TrainError;

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDirInfo {
    pub format_version: u32,
    /// Registry name of the architecture.
    pub model: String,
    /// Input side the model was trained at (and should be fed).
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub embedding_dim: usize,
    pub neck_dim: Option<usize>,
    pub gem: bool,
    /// Stored precision of the weights: `f32` or `f16`.
    pub dtype: String,
    /// The checkpoint it was exported from.
    pub source: String,
}

pub const FORMAT_VERSION: u32 = 1;

fn bad(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Exports the embedder of a checkpoint (or of a run's best checkpoint) into `out`.
pub fn export_model_dir(
    checkpoint: &Path,
    out: &Path,
    half: bool,
    device: &Device,
) -> Result<ModelDirInfo, TrainError> {
    let dir = resolve_checkpoint(checkpoint)?;
    let state = read_state(&dir)?;
    let spec = lookup(&state.model_name).map_err(|e| bad(&dir, e.to_string()))?;
    let options = BuildOptions {
        image_size: state.image_size,
        gem: state.gem,
        ..spec.default_options()
    };
    let model = load_module(
        EmbeddingModel::new(&spec, &options, state.neck_dim, device),
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
        dtype: if half { "f16" } else { "f32" }.to_string(),
        source: dir.display().to_string(),
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".export.")
        .tempdir_in(parent)
        .map_err(|e| TrainError::io(parent, e))?;
    let mut store = SafetensorsStore::from_file(tmp.path().join("model.safetensors"));
    if half {
        store = store.with_to_adapter(HalfPrecisionAdapter::new());
    }
    model
        .save_into(&mut store)
        .map_err(|e| bad(out, format!("writing weights: {e}")))?;
    let json = serde_json::to_vec_pretty(&info).map_err(|e| bad(out, e.to_string()))?;
    std::fs::write(tmp.path().join("model.json"), json)
        .map_err(|e| TrainError::io(tmp.path(), e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    let kept: PathBuf = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| TrainError::io(out, e))?;
    Ok(info)
}

/// Loads a model folder; `image_size` overrides the size it was trained at (ViT position
/// embeddings are resampled).
pub fn load_model_dir(
    dir: &Path,
    image_size: Option<usize>,
    device: &Device,
) -> Result<(EmbeddingModel, ModelDirInfo), TrainError> {
    let json_path = dir.join("model.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| TrainError::io(&json_path, e))?;
    let info: ModelDirInfo = serde_json::from_str(&text)
        .map_err(|e| bad(&json_path, format!("invalid model.json: {e}")))?;
    if info.format_version != FORMAT_VERSION {
        return Err(bad(
            &json_path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                info.format_version
            ),
        ));
    }
    let spec = lookup(&info.model).map_err(|e| bad(&json_path, e.to_string()))?;
    let options = BuildOptions {
        image_size: info.input_size,
        gem: info.gem,
        ..spec.default_options()
    };
    let mut model = EmbeddingModel::new(&spec, &options, info.neck_dim, device);
    let weights = dir.join("model.safetensors");
    let mut store =
        SafetensorsStore::from_file(&weights).with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = model.load_from(&mut store).map_err(|e| {
        bad(
            &weights,
            format!("cannot read (damaged or truncated?): {e}"),
        )
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(bad(
            &weights,
            format!("weights do not fit {}: {result}", info.model),
        ));
    }
    if let Some(size) = image_size {
        model = model.with_image_size(size);
    }
    Ok((model, info))
}
