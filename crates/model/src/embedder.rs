//! The embedding model: backbone features, an optional linear neck, L2 normalisation.
//!
//! This is what ranking, evaluation and serving call; heads and losses (training) sit on top of
//! [`EmbeddingModel::features`].

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::backbones::Backbone;
use crate::registry::{BuildOptions, ModelSpec};
use crate::weights::{TensorFile, WeightError, load_weights};

/// Backbone + optional neck; `embed` returns unit-length rows.
#[derive(Module, Debug)]
pub struct EmbeddingModel {
    pub backbone: Backbone,
    pub neck: Option<Linear>,
}

impl EmbeddingModel {
    /// A model for `spec` with fresh weights; `neck_dim` adds a linear neck to that width.
    pub fn new(
        spec: &ModelSpec,
        options: &BuildOptions,
        neck_dim: Option<usize>,
        device: &Device,
    ) -> Self {
        let backbone = spec.build(options, device);
        let out = backbone.out_dim();
        EmbeddingModel {
            backbone,
            neck: neck_dim.map(|d| LinearConfig::new(out, d).init(device)),
        }
    }

    /// The same model prepared for `size` x `size` inputs (see [`Backbone::with_image_size`]).
    pub fn with_image_size(self, size: usize) -> Self {
        EmbeddingModel {
            backbone: self.backbone.with_image_size(size),
            neck: self.neck,
        }
    }

    /// Width of the embedding.
    pub fn dim(&self) -> usize {
        match &self.neck {
            Some(n) => n.weight.dims()[1],
            None => self.backbone.out_dim(),
        }
    }

    /// Un-normalised features `[B, dim]` (what a training head sees).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.backbone.forward(x);
        match &self.neck {
            Some(n) => n.forward(f),
            None => f,
        }
    }

    /// L2-normalised embeddings `[B, dim]`; NaN/inf features are zeroed first (SPEC ranking).
    pub fn embed(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.features(x);
        let bad = f.clone().is_nan().bool_or(f.clone().is_inf());
        l2_normalize(f.mask_fill(bad, 0.0))
    }

    /// Loads pretrained backbone weights (timm / OpenCLIP / efficientnet_pytorch names) from a
    /// safetensors or PyTorch file.
    pub fn load_pretrained_backbone(
        self,
        spec: &ModelSpec,
        options: &BuildOptions,
        path: &Path,
    ) -> Result<Self, WeightError> {
        let file = TensorFile::open(path)?;
        let mapping = spec.weight_mapping(options);
        let backbone = load_weights(self.backbone, &file, mapping.as_ref())?;
        Ok(EmbeddingModel {
            backbone,
            neck: self.neck,
        })
    }
}

/// Rows scaled to unit L2 norm (all-zero rows stay zero).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
}
