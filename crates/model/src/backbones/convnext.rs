//! ConvNeXt (Liu et al. 2022) with timm parameter names, and the OpenCLIP ConvNeXt visual tower
//! (a timm trunk plus a linear projection without bias) — the challenge solution's backbone.
//!
//! timm's "conv_mlp" variants (atto … nano) compute LayerNorm2d + 1x1 convolutions where the
//! others permute to NHWC and use LayerNorm + Linear; the two are the same arithmetic, so one
//! NHWC implementation serves both and the 1x1 conv weights load into the Linear layers.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{
    conv, drop_path, drop_path_applies, layer_norm, layer_norm_2d, linear, linear_gelu,
};
use crate::pooling::{Pooling, PoolingKind};
use crate::train_ops::layer_scale_residual;
use crate::weights::WeightMapping;

/// Sizes of one ConvNeXt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvNextConfig {
    pub depths: [usize; 4],
    pub dims: [usize; 4],
    /// LayerNorm epsilon (timm: 1e-6, 1e-5 for xxlarge).
    pub norm_eps: f64,
    /// Layer-scale init (timm 1e-6).
    pub ls_init: f64,
    pub drop_path_rate: f64,
    /// ImageNet classifier (`head.fc`), when kept.
    pub num_classes: Option<usize>,
    /// OpenCLIP projection width (`head.proj`, no bias), for the CLIP visual tower.
    pub clip_embed_dim: Option<usize>,
    pub pooling: PoolingKind,
}

impl ConvNextConfig {
    /// timm's named sizes: atto, femto, pico, nano, tiny, small, base, large, xlarge, xxlarge.
    pub fn named(size: &str) -> Option<Self> {
        let (depths, dims) = match size {
            "atto" => ([2, 2, 6, 2], [40, 80, 160, 320]),
            "femto" => ([2, 2, 6, 2], [48, 96, 192, 384]),
            "pico" => ([2, 2, 6, 2], [64, 128, 256, 512]),
            "nano" => ([2, 2, 8, 2], [80, 160, 320, 640]),
            "tiny" => ([3, 3, 9, 3], [96, 192, 384, 768]),
            "small" => ([3, 3, 27, 3], [96, 192, 384, 768]),
            "base" => ([3, 3, 27, 3], [128, 256, 512, 1024]),
            "large" => ([3, 3, 27, 3], [192, 384, 768, 1536]),
            "xlarge" => ([3, 3, 27, 3], [256, 512, 1024, 2048]),
            "xxlarge" => ([3, 4, 30, 3], [384, 768, 1536, 3072]),
            _ => return None,
        };
        Some(ConvNextConfig {
            depths,
            dims,
            norm_eps: if size == "xxlarge" { 1e-5 } else { 1e-6 },
            ls_init: 1e-6,
            drop_path_rate: 0.0,
            num_classes: None,
            clip_embed_dim: None,
            pooling: PoolingKind::Avg,
        })
    }

    /// A tiny ConvNeXt for tests.
    pub fn tiny_test() -> Self {
        ConvNextConfig {
            depths: [1, 1, 2, 1],
            dims: [8, 16, 24, 32],
            norm_eps: 1e-6,
            ls_init: 1e-6,
            drop_path_rate: 0.0,
            num_classes: None,
            clip_embed_dim: None,
            pooling: PoolingKind::Avg,
        }
    }

    pub fn init(&self, device: &Device) -> ConvNext {
        let norm = |d: usize| {
            LayerNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let total: usize = self.depths.iter().sum();
        let mut block_index = 0;
        let stages = (0..4)
            .map(|i| {
                let (in_dim, out_dim) = (
                    if i == 0 {
                        self.dims[0]
                    } else {
                        self.dims[i - 1]
                    },
                    self.dims[i],
                );
                let downsample = i > 0;
                ConvNextStage {
                    norm_eps: self.norm_eps,
                    downsample_norm: downsample.then(|| norm(in_dim)),
                    downsample_conv: downsample.then(|| {
                        Conv2dConfig::new([in_dim, out_dim], [2, 2])
                            .with_stride([2, 2])
                            .init(device)
                    }),
                    blocks: (0..self.depths[i])
                        .map(|_| {
                            // timm: stochastic depth rate grows linearly over all blocks.
                            let rate = if total > 1 {
                                self.drop_path_rate * block_index as f64 / (total - 1) as f64
                            } else {
                                0.0
                            };
                            block_index += 1;
                            ConvNextBlock {
                                conv_dw: Conv2dConfig::new([out_dim, out_dim], [7, 7])
                                    .with_groups(out_dim)
                                    .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                                    .init(device),
                                norm: norm(out_dim),
                                mlp: Mlp {
                                    fc1: LinearConfig::new(out_dim, 4 * out_dim).init(device),
                                    fc2: LinearConfig::new(4 * out_dim, out_dim).init(device),
                                },
                                gamma: Param::from_tensor(Tensor::full(
                                    [out_dim],
                                    self.ls_init,
                                    device,
                                )),
                                drop_path: rate,
                                norm_eps: self.norm_eps,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let last = self.dims[3];
        ConvNext {
            stem_conv: Conv2dConfig::new([3, self.dims[0]], [4, 4])
                .with_stride([4, 4])
                .init(device),
            stem_norm: norm(self.dims[0]),
            norm_eps: self.norm_eps,
            stages,
            pooling: Pooling::new(self.pooling, device),
            head_norm: norm(last),
            head_fc: self
                .num_classes
                .map(|c| LinearConfig::new(last, c).init(device)),
            proj: self
                .clip_embed_dim
                .map(|d| LinearConfig::new(last, d).with_bias(false).init(device)),
        }
    }
}

/// Two-layer GELU MLP (`mlp.fc1`, `mlp.fc2`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// depthwise 7x7 → LayerNorm → MLP → layer scale, plus the residual.
#[derive(Module, Debug)]
pub struct ConvNextBlock {
    pub conv_dw: Conv2d,
    pub norm: LayerNorm,
    pub mlp: Mlp,
    pub gamma: Param<Tensor<1>>,
    pub drop_path: f64,
    /// `norm`'s epsilon (burn keeps it private).
    pub norm_eps: f64,
}

impl ConvNextBlock {
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = conv(&self.conv_dw, input.clone()).permute([0, 2, 3, 1]);
        let x = layer_norm(&self.norm, x, self.norm_eps);
        let x = linear(&self.mlp.fc2, linear_gelu(&self.mlp.fc1, x));
        if !drop_path_applies(&x, self.drop_path) {
            return layer_scale_residual(x, self.gamma.val(), input);
        }
        let x = x
            .mul(self.gamma.val().reshape([1, 1, 1, -1]))
            .permute([0, 3, 1, 2]);
        drop_path(x, self.drop_path) + input
    }
}

/// Optional downsampling (LayerNorm2d + 2x2 stride-2 conv) then blocks.
#[derive(Module, Debug)]
pub struct ConvNextStage {
    pub downsample_norm: Option<LayerNorm>,
    /// `downsample_norm`'s epsilon.
    pub norm_eps: f64,
    pub downsample_conv: Option<Conv2d>,
    pub blocks: Vec<ConvNextBlock>,
}

/// A ConvNeXt trunk with timm's head (pool → LayerNorm), an optional classifier and an optional
/// OpenCLIP projection.
#[derive(Module, Debug)]
pub struct ConvNext {
    pub stem_conv: Conv2d,
    pub stem_norm: LayerNorm,
    /// `stem_norm`'s and `head_norm`'s epsilon.
    pub norm_eps: f64,
    pub stages: Vec<ConvNextStage>,
    pub pooling: Pooling,
    pub head_norm: LayerNorm,
    pub head_fc: Option<Linear>,
    pub proj: Option<Linear>,
}

impl ConvNext {
    /// Pooled, normalised (and, for CLIP towers, projected) features.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = layer_norm_2d(&self.stem_norm, conv(&self.stem_conv, x), self.norm_eps);
        for stage in &self.stages {
            if let (Some(norm), Some(down)) = (&stage.downsample_norm, &stage.downsample_conv) {
                x = conv(down, layer_norm_2d(norm, x, stage.norm_eps));
            }
            for block in &stage.blocks {
                x = block.forward(x);
            }
        }
        let pooled = layer_norm(&self.head_norm, self.pooling.forward(x), self.norm_eps);
        match &self.proj {
            Some(proj) => proj.forward(pooled),
            None => pooled,
        }
    }

    pub fn classify(&self, features: Tensor<2>) -> Option<Tensor<2>> {
        self.head_fc.as_ref().map(|fc| fc.forward(features))
    }

    pub fn out_dim(&self) -> usize {
        match &self.proj {
            Some(p) => p.weight.dims()[1],
            None => self.head_norm.gamma.dims()[0],
        }
    }
}

/// timm names (`stem.0`, `stages.N.downsample.1`, `head.norm`, `head.fc`), or OpenCLIP's
/// (`trunk.` + timm names, `head.proj`).
pub struct ConvNextWeights {
    pub with_classifier: bool,
}

impl WeightMapping for ConvNextWeights {
    fn module_path(&self, name: &str) -> Option<String> {
        if let Some(rest) = name.strip_prefix("head.proj.") {
            return Some(format!("proj.{rest}"));
        }
        let name = name.strip_prefix("trunk.").unwrap_or(name);
        if name.starts_with("head.fc.") {
            return self
                .with_classifier
                .then(|| name.replacen("head.fc.", "head_fc.", 1));
        }
        let mapped = name
            .replacen("stem.0.", "stem_conv.", 1)
            .replacen("stem.1.", "stem_norm.", 1)
            .replacen("head.norm.", "head_norm.", 1)
            .replace(".downsample.0.", ".downsample_norm.")
            .replace(".downsample.1.", ".downsample_conv.");
        Some(mapped)
    }
}
