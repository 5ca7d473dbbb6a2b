//! EfficientNet-Lite (Tan & Le; TF "lite" variants for mobile) with efficientnet_pytorch
//! parameter names (`_conv_stem`, `_blocks.N._depthwise_conv`, ...).
//!
//! Lite differs from EfficientNet: no squeeze-excitation, ReLU6 instead of swish, stem (32) and
//! head (1280) widths fixed, first and last stages' repeats not scaled. The weights come from
//! TensorFlow, so every convolution uses TF "same" padding (asymmetric at stride 2) and batch
//! norm eps is 1e-3. Reference: timm `tf_efficientnet_lite*`, which the fixtures are made with.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{
    conv_tf_same_bn_act, conv_tf_same_bn_act_stored, conv_tf_same_bn_add_act, drop_path,
    drop_path_applies,
};
use crate::pooling::{Pooling, PoolingKind};
use crate::train_ops::{Activation, Storage};
use crate::weights::WeightMapping;

/// Width/depth multipliers and sizes of one EfficientNet-Lite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetLiteConfig {
    pub width_multiplier: f64,
    pub depth_multiplier: f64,
    /// Stem output channels (fixed, not scaled, in Lite).
    pub stem_channels: usize,
    /// Head (pooled feature) channels (fixed in Lite).
    pub head_channels: usize,
    /// Stochastic depth rate of the last block (scaled linearly from 0 over the blocks).
    pub drop_connect_rate: f64,
    /// ImageNet classifier outputs, when the classifier is kept (`_fc`).
    pub num_classes: Option<usize>,
    pub pooling: PoolingKind,
}

/// B0's stages: (repeats, kernel, stride, expand ratio, output channels).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

impl EfficientNetLiteConfig {
    /// `lite0`..`lite4` with their published multipliers.
    pub fn lite(index: usize) -> Option<Self> {
        let (width, depth) = match index {
            0 => (1.0, 1.0),
            1 => (1.0, 1.1),
            2 => (1.1, 1.2),
            3 => (1.2, 1.4),
            4 => (1.4, 1.8),
            _ => return None,
        };
        Some(EfficientNetLiteConfig {
            width_multiplier: width,
            depth_multiplier: depth,
            stem_channels: 32,
            head_channels: 1280,
            drop_connect_rate: 0.2,
            num_classes: None,
            pooling: PoolingKind::Avg,
        })
    }

    /// A few-thousand-parameter variant for tests.
    pub fn tiny() -> Self {
        EfficientNetLiteConfig {
            width_multiplier: 0.1,
            depth_multiplier: 0.5,
            stem_channels: 8,
            head_channels: 32,
            drop_connect_rate: 0.0,
            num_classes: Some(5),
            pooling: PoolingKind::Avg,
        }
    }

    /// Channels after width scaling (rounded to a multiple of 8, as TF does).
    fn round_filters(&self, filters: usize) -> usize {
        let scaled = filters as f64 * self.width_multiplier;
        let divisor = 8.0;
        let mut rounded = ((scaled + divisor / 2.0) / divisor).floor() * divisor;
        rounded = rounded.max(divisor);
        if rounded < 0.9 * scaled {
            rounded += divisor;
        }
        rounded as usize
    }

    /// Per-block (kernel, stride, expand, in, out), after depth and width scaling.
    pub fn blocks(&self) -> Vec<(usize, usize, usize, usize, usize)> {
        let mut blocks = Vec::new();
        let mut in_ch = self.stem_channels;
        for (i, &(repeats, kernel, stride, expand, out)) in STAGES.iter().enumerate() {
            let fixed = i == 0 || i == STAGES.len() - 1;
            let repeats = if fixed {
                repeats
            } else {
                (repeats as f64 * self.depth_multiplier).ceil() as usize
            };
            let out = self.round_filters(out);
            for r in 0..repeats {
                blocks.push((kernel, if r == 0 { stride } else { 1 }, expand, in_ch, out));
                in_ch = out;
            }
        }
        blocks
    }

    pub fn init(&self, device: &Device) -> EfficientNetLite {
        let bn = |c: usize| {
            BatchNormConfig::new(c)
                .with_epsilon(1e-3)
                .with_momentum(0.01)
                .init(device)
        };
        let conv = |i: usize, o: usize, k: usize, s: usize, g: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_groups(g)
                .with_bias(false)
                .init(device)
        };
        let specs = self.blocks();
        let n = specs.len();
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(idx, &(k, s, e, i, o))| {
                let mid = i * e;
                MbConvBlock {
                    expand_conv: (e != 1).then(|| conv(i, mid, 1, 1, 1)),
                    bn0: (e != 1).then(|| bn(mid)),
                    depthwise_conv: conv(mid, mid, k, s, mid),
                    bn1: Some(bn(mid)),
                    project_conv: conv(mid, o, 1, 1, 1),
                    bn2: Some(bn(o)),
                    skip: s == 1 && i == o,
                    drop_connect_rate: self.drop_connect_rate * idx as f64 / n as f64,
                }
            })
            .collect();
        let last = specs.last().map_or(self.stem_channels, |b| b.4);
        EfficientNetLite {
            conv_stem: conv(3, self.stem_channels, 3, 2, 1),
            bn0: Some(bn(self.stem_channels)),
            blocks,
            conv_head: conv(last, self.head_channels, 1, 1, 1),
            bn1: Some(bn(self.head_channels)),
            pooling: Pooling::new(self.pooling, device),
            fc: self
                .num_classes
                .map(|c| LinearConfig::new(self.head_channels, c).init(device)),
        }
    }
}

/// Mobile inverted bottleneck without squeeze-excitation. A batch norm is `None` once folded
/// into its convolution for inference (`visual_search_inference`'s batch-norm folding).
#[derive(Module, Debug)]
pub struct MbConvBlock {
    pub expand_conv: Option<Conv2d>,
    pub bn0: Option<BatchNorm>,
    pub depthwise_conv: Conv2d,
    pub bn1: Option<BatchNorm>,
    pub project_conv: Conv2d,
    pub bn2: Option<BatchNorm>,
    pub skip: bool,
    pub drop_connect_rate: f64,
}

impl MbConvBlock {
    /// The expanded activations (the expansion's and the depthwise layer's outputs, six times
    /// the block's channels) feed only the next convolution: a pass on flex under bf16
    /// products (mixed-precision training, `--dtype bf16` inference) keeps them in bf16
    /// ([`Storage::Bf16`]), as PyTorch's autocast does.
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input.clone();
        let (relu6, inner) = (Activation::Relu6, Storage::Bf16);
        if let Some(conv) = &self.expand_conv {
            x = conv_tf_same_bn_act_stored(conv, &self.bn0, x, relu6, inner);
        }
        x = conv_tf_same_bn_act_stored(&self.depthwise_conv, &self.bn1, x, relu6, inner);
        if !self.skip {
            return conv_tf_same_bn_act(&self.project_conv, &self.bn2, x, Activation::Identity);
        }
        if drop_path_applies(&x, self.drop_connect_rate) {
            x = conv_tf_same_bn_act(&self.project_conv, &self.bn2, x, Activation::Identity);
            return drop_path(x, self.drop_connect_rate) + input;
        }
        // The shortcut added in the projection's output pass.
        conv_tf_same_bn_add_act(
            &self.project_conv,
            &self.bn2,
            x,
            input,
            Activation::Identity,
        )
    }
}

/// EfficientNet-Lite trunk, pooling and optional ImageNet classifier.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub conv_stem: Conv2d,
    pub bn0: Option<BatchNorm>,
    pub blocks: Vec<MbConvBlock>,
    pub conv_head: Conv2d,
    pub bn1: Option<BatchNorm>,
    pub pooling: Pooling,
    pub fc: Option<Linear>,
}

impl EfficientNetLite {
    /// Pooled features `[B, head_channels]` of normalised images `[B, 3, H, W]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = conv_tf_same_bn_act(&self.conv_stem, &self.bn0, x, Activation::Relu6);
        for block in &self.blocks {
            x = block.forward(x);
        }
        x = conv_tf_same_bn_act(&self.conv_head, &self.bn1, x, Activation::Relu6);
        self.pooling.forward(x)
    }

    /// Classifier logits, if the model keeps its classifier.
    pub fn classify(&self, features: Tensor<2>) -> Option<Tensor<2>> {
        self.fc.as_ref().map(|fc| fc.forward(features))
    }

    pub fn out_dim(&self) -> usize {
        self.conv_head.weight.dims()[0]
    }
}

/// efficientnet_pytorch names: every path segment carries a leading underscore.
pub struct EfficientNetLiteWeights {
    pub with_classifier: bool,
}

impl WeightMapping for EfficientNetLiteWeights {
    fn module_path(&self, name: &str) -> Option<String> {
        if name.ends_with("num_batches_tracked")
            || (!self.with_classifier && name.starts_with("_fc."))
        {
            return None;
        }
        Some(
            name.split('.')
                .map(|s| s.trim_start_matches('_'))
                .collect::<Vec<_>>()
                .join("."),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_block_layout() {
        let lite0 = EfficientNetLiteConfig::lite(0).unwrap().blocks();
        assert_eq!(lite0.len(), 16);
        assert_eq!(lite0[0], (3, 1, 1, 32, 16));
        assert_eq!(lite0[15], (3, 1, 6, 192, 320));
        let lite2 = EfficientNetLiteConfig::lite(2).unwrap().blocks();
        // Repeats 1, 3, 3, 4, 4, 5, 1; widths 16, 24, 48, 88, 120, 208, 352.
        assert_eq!(lite2.len(), 21);
        assert_eq!(
            lite2
                .iter()
                .map(|b| b.4)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![16, 24, 48, 88, 120, 208, 352]
        );
    }
}
