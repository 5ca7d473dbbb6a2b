//! What the batch loops need from a model: its width and "embed these `n` images". Both a
//! loaded [`InferenceModel`] and a bare burn model (training's validation, on the training
//! device) provide it, and both end in [`finish_rows`].

use burn::tensor::Device;
use visual_search_model::embedder::EmbeddingModel;

use crate::error::Result;
use crate::model::{InferenceModel, burn_features, finish_rows};

pub trait BatchEmbedder {
    fn dim(&self) -> usize;
    /// Square input side.
    fn input_size(&self) -> usize;
    /// `n × dim` L2-normalised rows of `n` images (`n × 3 × size × size` floats).
    fn embed_batch(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>>;
}

impl BatchEmbedder for InferenceModel {
    fn dim(&self) -> usize {
        self.dim
    }
    fn input_size(&self) -> usize {
        self.preprocessing.size
    }
    fn embed_batch(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        self.embed(pixels, n)
    }
}

/// A burn model on a device, as it is (no loading, no folding).
pub struct BurnEmbedder<'a> {
    pub model: &'a EmbeddingModel,
    pub device: &'a Device,
    pub size: usize,
}

impl BatchEmbedder for BurnEmbedder<'_> {
    fn dim(&self) -> usize {
        self.model.dim()
    }
    fn input_size(&self) -> usize {
        self.size
    }
    fn embed_batch(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let mut rows = burn_features(self.model, self.device, pixels, n, self.size);
        finish_rows(&mut rows, self.model.dim());
        Ok(rows)
    }
}
