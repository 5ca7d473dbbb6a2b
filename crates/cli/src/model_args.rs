//! The model-choosing flags shared by `embed`, `rank`, `eval` and friends, and turning them into
//! a loaded model on a device.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Device, FloatDType};
use visual_search_data::image::Normalization;
use visual_search_model::device::parse_device;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, ModelSpec, lookup};
use visual_search_train::export::load_model_dir;

/// Which model, which weights, which device.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Registered model name (`visual-search models` lists them), e.g. efficientnet_lite0.
    #[arg(
        long,
        required_unless_present = "model_dir",
        conflicts_with = "model_dir"
    )]
    pub model: Option<String>,
    /// An exported model folder (`visual-search export`) instead of --model/--weights.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Pretrained weights (safetensors or PyTorch .pth/.pt, timm/OpenCLIP/efficientnet_pytorch names).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input side in pixels [default: the model's training size].
    #[arg(long)]
    pub size: Option<usize>,
    /// Compute device: flex (CPU), tch, tch-cuda:N, cuda:N, wgpu or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Float precision of the model: f32, or f16/bf16 where the device supports it.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
}

/// Model precision.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

/// A ready model and how to feed it.
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub model: EmbeddingModel,
    pub device: Device,
    pub image_size: usize,
    pub normalization: Normalization,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let mut device = parse_device(&self.device)?;
        let float = match self.dtype {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        };
        if float != FloatDType::F32 {
            device.configure(float).with_context(|| {
                format!("device {} cannot compute in {:?}", self.device, self.dtype)
            })?;
        }
        if let Some(dir) = &self.model_dir {
            let (model, info) = load_model_dir(dir, self.size, &device)
                .with_context(|| format!("loading the model folder {}", dir.display()))?;
            return Ok(LoadedModel {
                normalization: Normalization {
                    mean: info.mean,
                    std: info.std,
                },
                spec: lookup(&info.model)?,
                model,
                device,
                image_size: self.size.unwrap_or(info.input_size),
            });
        }
        let spec = lookup(self.model.as_deref().unwrap_or_default())?;
        let image_size = self.size.unwrap_or(spec.input_size);
        let options = BuildOptions {
            image_size,
            ..spec.default_options()
        };
        let mut model = EmbeddingModel::new(&spec, &options, None, &device);
        match &self.weights {
            Some(path) => {
                model = model
                    .load_pretrained_backbone(&spec, &options, path)
                    .with_context(|| format!("loading {} weights", spec.name))?;
            }
            None => eprintln!(
                "warning: no --weights given; {} has random weights (fine for testing the pipeline only)",
                spec.name
            ),
        }
        Ok(LoadedModel {
            normalization: Normalization {
                mean: spec.mean,
                std: spec.std,
            },
            spec,
            model,
            device,
            image_size,
        })
    }
}
