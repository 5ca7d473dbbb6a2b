//! The model reference an index stores (`meta.json` → `model`), so `index add` and `serve`
//! embed new images exactly as the catalogue was embedded: the same registry model and
//! weights, or the same exported model folder, at the same input size.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::{IndexMeta, Preprocessing};

use crate::model_args::{LoadedModel, ModelArgs, Precision};
use crate::pg_args::{PgArgs, open_catalogue};

/// Which model made an index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRef {
    pub model: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub weights: Option<PathBuf>,
    pub size: usize,
}

fn absolute(p: &Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    p.as_ref()
        .map(|p| std::path::absolute(p).with_context(|| format!("resolving {}", p.display())))
        .transpose()
}

impl ModelRef {
    /// The reference of a model loaded from `args` (paths made absolute).
    pub fn from_args(args: &ModelArgs, loaded: &LoadedModel) -> anyhow::Result<Self> {
        Ok(ModelRef {
            model: args.model.clone(),
            model_dir: absolute(&args.model_dir)?,
            weights: absolute(&args.weights)?,
            size: loaded.image_size,
        })
    }

    /// Reads it back from an index's metadata.
    pub fn from_json(value: &serde_json::Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("the index's model reference is damaged")
    }

    /// Loads the model on `device`.
    pub fn load(&self, device: &str) -> anyhow::Result<LoadedModel> {
        ModelArgs {
            model: self.model.clone(),
            model_dir: self.model_dir.clone(),
            weights: self.weights.clone(),
            size: Some(self.size),
            device: device.to_string(),
            dtype: Precision::F32,
        }
        .load()
    }
}

/// What a query image must go through, from a loaded model.
pub fn preprocessing(loaded: &LoadedModel) -> Preprocessing {
    Preprocessing {
        size: loaded.image_size,
        mean: loaded.normalization.mean,
        std: loaded.normalization.std,
    }
}

/// L2-normalised embeddings (`n × dim`, NaN/inf → 0) of `n` prepared images
/// (`n × 3 × size × size` floats).
pub fn embed_pixels(loaded: &LoadedModel, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, String> {
    let s = loaded.image_size;
    if pixels.len() != n * 3 * s * s {
        return Err(format!(
            "{} input values for {n} images of {s} px",
            pixels.len()
        ));
    }
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, s, s]), &loaded.device)
        .cast(loaded.device.settings().float_dtype);
    Ok(loaded
        .model
        .embed(x)
        .into_data()
        .iter::<f32>()
        .map(|v| if v.is_finite() { v } else { 0.0 })
        .collect())
}

/// Opens an index (a folder or a `postgres://` URL) and loads the model that made it, on
/// `device`; a model whose width no longer matches the index (weights replaced since) is an
/// error.
pub fn open_with_model(
    location: &str,
    pg: &PgArgs,
    device: &str,
) -> anyhow::Result<(Box<dyn Catalogue>, LoadedModel)> {
    let index = open_catalogue(location, pg)?;
    let loaded = load_index_model(index.meta(), device)?;
    Ok((index, loaded))
}

/// Loads the model an index's metadata names, checking that its width matches the index
/// (weights replaced since would not).
pub fn load_index_model(meta: &IndexMeta, device: &str) -> anyhow::Result<LoadedModel> {
    let loaded = ModelRef::from_json(&meta.model)?.load(device)?;
    if loaded.model.dim() != meta.dim {
        bail!(
            "the index's model gives {}-d embeddings, the index holds {}-d",
            loaded.model.dim(),
            meta.dim
        );
    }
    Ok(loaded)
}
