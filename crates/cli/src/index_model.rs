//! The model an index stores (`meta.json` → `model`, a [`ModelRef`]), so `index add`, `search`
//! and `serve` embed new images exactly as the catalogue was embedded: the same registry model
//! and weights, or the same exported model folder, at the same input size — on whatever
//! device the user picks now.

use anyhow::{Context, bail};
use visual_search_inference::{InferenceModel, ModelRef, ModelSource};
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::{IndexMeta, Preprocessing};

use crate::args::model::DeviceArgs;
use crate::args::postgres::{PgArgs, open_catalogue};

/// Reads a model reference back from an index's metadata.
pub fn model_ref_from_json(value: &serde_json::Value) -> anyhow::Result<ModelRef> {
    serde_json::from_value(value.clone()).context("the index's model reference is damaged")
}

/// The index's record of what a query image must go through.
pub fn preprocessing(loaded: &InferenceModel) -> Preprocessing {
    let p = loaded.preprocessing;
    Preprocessing {
        size: p.size,
        mean: p.mean,
        std: p.std,
    }
}

/// Opens an index (a folder or a `postgres://` URL) and loads the model that made it, on
/// `device`.
pub fn open_with_model(
    location: &str,
    pg: &PgArgs,
    device: &DeviceArgs,
) -> anyhow::Result<(Box<dyn Catalogue>, InferenceModel)> {
    let index = open_catalogue(location, pg)?;
    let loaded = load_index_model(index.meta(), device)?;
    Ok((index, loaded))
}

/// Loads the model an index's metadata names, checking that its width matches the index
/// (weights replaced since would not).
pub fn load_index_model(meta: &IndexMeta, device: &DeviceArgs) -> anyhow::Result<InferenceModel> {
    load_index_model_at(meta, device, None)
}

/// [`load_index_model`] at input side `size` instead of the index's own (`--auto-box`'s
/// windows).
pub fn load_index_model_at(
    meta: &IndexMeta,
    device: &DeviceArgs,
    size: Option<usize>,
) -> anyhow::Result<InferenceModel> {
    let reference = model_ref_from_json(&meta.model)?;
    let source = ModelSource::from_ref(&reference)?;
    let mut options = device.options(Some(size.unwrap_or(reference.size)))?;
    options.quiet = true;
    let loaded = InferenceModel::load(&source, &options).context("loading the index's model")?;
    if loaded.dim != meta.dim {
        bail!(
            "the index's model gives {}-d embeddings, the index holds {}-d",
            loaded.dim,
            meta.dim
        );
    }
    Ok(loaded)
}
