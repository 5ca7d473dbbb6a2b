//! `--model/--weights | --model-dir`, `--size`, `--device`, `--dtype`: which model runs where,
//! turned into a loaded [`InferenceModel`].

use std::path::PathBuf;

use anyhow::Context;
use visual_search_inference::{
    DeviceChoice, InferenceModel, LoadOptions, ModelSource, Precision as LibPrecision,
};

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
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `--device` and `--dtype`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: ort (ONNX Runtime, CPU), ort-cuda:N, flex (pure-Rust CPU), tch,
    /// tch-cuda:N, cuda:N, wgpu, or auto: a compiled GPU backend, else ONNX Runtime when its
    /// library is found (tools/install_onnxruntime.sh), else flex — and flex for a ViT or a
    /// ConvNeXt in f32 on a CPU with AVX-512, where it is the faster of the two. Registry
    /// models and folders without model.onnx are exported to ONNX once, into
    /// ~/.cache/visual-search/onnx.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision of the model: f32; bf16 (on flex with AMX: f32 tensors with the
    /// convolutions' and linear layers' products in bf16 and EfficientNet-Lite's expanded
    /// activations stored in bf16, the fastest CPU path; elsewhere bf16 tensors, on flex
    /// without AMX several times slower than f32); f16 on burn devices that support it; int8
    /// on ONNX Runtime from a folder's gated model.int8.onnx (export --onnx --int8).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "auto".into(),
            dtype: Precision::F32,
        }
    }
}

/// Model precision.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
    Int8,
}

impl Precision {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl From<Precision> for LibPrecision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => LibPrecision::F32,
            Precision::F16 => LibPrecision::F16,
            Precision::Bf16 => LibPrecision::Bf16,
            Precision::Int8 => LibPrecision::Int8,
        }
    }
}

impl DeviceArgs {
    pub fn options(&self, size: Option<usize>) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            size,
            device: self.device.parse::<DeviceChoice>()?,
            precision: self.dtype.into(),
            ..LoadOptions::default()
        })
    }
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model_dir {
            Some(dir) => ModelSource::Dir(dir.clone()),
            None => ModelSource::Registry {
                name: self.model.clone().unwrap_or_default(),
                weights: self.weights.clone(),
            },
        }
    }

    /// A registry model without `--weights`: its weights are drawn afresh by every load.
    pub fn random_weights(&self) -> bool {
        matches!(self.source(), ModelSource::Registry { weights: None, .. })
    }

    /// Refuses a registry model without `--weights` in a worker of a sharded job: each worker
    /// would draw its own random weights, and the merge would join embeddings of different
    /// models under one name.
    pub fn require_weights_for_workers(&self) -> anyhow::Result<()> {
        if self.random_weights() {
            anyhow::bail!(
                "{} has no --weights: workers (--shard) and --merge-parts need the same \
                 weights in every process; pass --weights FILE or an exported model folder",
                self.model.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }

    pub fn load(&self) -> anyhow::Result<InferenceModel> {
        let source = self.source();
        let what = match &source {
            ModelSource::Dir(d) => format!("the model folder {}", d.display()),
            ModelSource::Registry { name, .. } => name.clone(),
        };
        InferenceModel::load(&source, &self.device.options(self.size)?)
            .with_context(|| format!("loading {what}"))
    }
}
