//! ResNet (He et al.) with timm parameter names (`conv1`, `layer1.0.conv2`, `downsample.0`, `fc`):
//! BasicBlock for 18/34, Bottleneck (stride on the 3x3, "v1.5") for 50/101/152.
//! Small and fast enough for CPU experiments; batch norm is frozen by default when fine-tuning.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{conv_bn_act, conv_bn_add_act, drop_path, drop_path_applies};
use crate::pooling::{Pooling, PoolingKind};
use crate::train_ops::Activation;
use crate::weights::WeightMapping;

/// Depth and width of one ResNet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub layers: [usize; 4],
    pub bottleneck: bool,
    /// Channels of the 7x7 stem (64, as timm's default stem).
    pub stem_width: usize,
    /// Channels of the first stage (64; smaller for tests).
    pub base_width: usize,
    pub drop_path_rate: f64,
    pub num_classes: Option<usize>,
    pub pooling: PoolingKind,
}

impl ResNetConfig {
    /// 18, 34, 50, 101 or 152.
    pub fn depth(depth: usize) -> Option<Self> {
        let (layers, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            _ => return None,
        };
        Some(ResNetConfig {
            layers,
            bottleneck,
            stem_width: 64,
            base_width: 64,
            drop_path_rate: 0.0,
            num_classes: None,
            pooling: PoolingKind::Avg,
        })
    }

    /// A tiny bottleneck ResNet for tests.
    pub fn tiny_test() -> Self {
        ResNetConfig {
            layers: [1, 1, 1, 1],
            bottleneck: true,
            stem_width: 64,
            base_width: 4,
            drop_path_rate: 0.0,
            num_classes: None,
            pooling: PoolingKind::Avg,
        }
    }

    fn expansion(&self) -> usize {
        if self.bottleneck { 4 } else { 1 }
    }

    pub fn init(&self, device: &Device) -> ResNet {
        let bn = |c: usize| BatchNormConfig::new(c).init(device);
        let conv = |i: usize, o: usize, k: usize, s: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(false)
                .init(device)
        };
        let total: usize = self.layers.iter().sum();
        let mut index = 0;
        let mut in_ch = self.stem_width;
        let layers = (0..4)
            .map(|stage| {
                let width = self.base_width << stage;
                let out = width * self.expansion();
                (0..self.layers[stage])
                    .map(|b| {
                        let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                        // timm: the rate grows linearly from 0 to drop_path_rate over the blocks.
                        let rate = self.drop_path_rate * index as f64 / (total.max(2) - 1) as f64;
                        index += 1;
                        let block = if self.bottleneck {
                            ResBlock {
                                conv1: conv(in_ch, width, 1, 1),
                                bn1: Some(bn(width)),
                                conv2: conv(width, width, 3, stride),
                                bn2: Some(bn(width)),
                                conv3: Some(conv(width, out, 1, 1)),
                                bn3: Some(bn(out)),
                                downsample: (stride != 1 || in_ch != out).then(|| Downsample {
                                    conv: conv(in_ch, out, 1, stride),
                                    bn: Some(bn(out)),
                                }),
                                drop_path: rate,
                            }
                        } else {
                            ResBlock {
                                conv1: conv(in_ch, width, 3, stride),
                                bn1: Some(bn(width)),
                                conv2: conv(width, width, 3, 1),
                                bn2: Some(bn(width)),
                                conv3: None,
                                bn3: None,
                                downsample: (stride != 1 || in_ch != out).then(|| Downsample {
                                    conv: conv(in_ch, out, 1, stride),
                                    bn: Some(bn(out)),
                                }),
                                drop_path: rate,
                            }
                        };
                        in_ch = out;
                        block
                    })
                    .collect()
            })
            .collect();
        ResNet {
            conv1: conv(3, self.stem_width, 7, 2),
            bn1: Some(bn(self.stem_width)),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layers,
            pooling: Pooling::new(self.pooling, device),
            fc: self
                .num_classes
                .map(|c| LinearConfig::new(in_ch, c).init(device)),
        }
    }
}

/// 1x1 (strided) projection of the shortcut.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
}

/// A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub bn1: Option<BatchNorm>,
    pub conv2: Conv2d,
    pub bn2: Option<BatchNorm>,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<Downsample>,
    pub drop_path: f64,
}

impl ResBlock {
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => conv_bn_act(&d.conv, &d.bn, input.clone(), Activation::Identity),
            None => input.clone(),
        };
        let mut x = conv_bn_act(&self.conv1, &self.bn1, input, Activation::Relu);
        // A bottleneck block has a ReLU between its second and third convolutions.
        let (middle, last) = match &self.conv3 {
            Some(conv3) => (Some((&self.conv2, &self.bn2)), (conv3, &self.bn3)),
            None => (None, (&self.conv2, &self.bn2)),
        };
        if let Some((conv, bn)) = middle {
            x = conv_bn_act(conv, bn, x, Activation::Relu);
        }
        let (conv, bn) = last;
        if drop_path_applies(&x, self.drop_path) {
            let x = conv_bn_act(conv, bn, x, Activation::Identity);
            return relu(drop_path(x, self.drop_path) + shortcut);
        }
        // The last convolution, the shortcut and the ReLU: one pass in inference on flex.
        conv_bn_add_act(conv, bn, x, shortcut, Activation::Relu)
    }
}

/// ResNet trunk, pooling and optional classifier.
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: Option<BatchNorm>,
    pub maxpool: MaxPool2d,
    pub layers: Vec<Vec<ResBlock>>,
    pub pooling: Pooling,
    pub fc: Option<Linear>,
}

impl ResNet {
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let stem = conv_bn_act(&self.conv1, &self.bn1, x, Activation::Relu);
        let mut x = crate::train_ops::max_pool2d(&self.maxpool, stem);
        for stage in &self.layers {
            for block in stage {
                x = block.forward(x);
            }
        }
        self.pooling.forward(x)
    }

    pub fn classify(&self, features: Tensor<2>) -> Option<Tensor<2>> {
        self.fc.as_ref().map(|fc| fc.forward(features))
    }

    pub fn out_dim(&self) -> usize {
        let last = self.layers.last().and_then(|s| s.last());
        match last {
            Some(b) => b.conv3.as_ref().unwrap_or(&b.conv2).weight.dims()[0],
            None => self.conv1.weight.dims()[0],
        }
    }
}

/// timm names: `layerK.` → `layers.(K-1).`, `downsample.0/1` → `downsample.conv/bn`.
pub struct ResNetWeights {
    pub with_classifier: bool,
}

impl WeightMapping for ResNetWeights {
    fn module_path(&self, name: &str) -> Option<String> {
        if name.ends_with("num_batches_tracked")
            || (!self.with_classifier && name.starts_with("fc."))
        {
            return None;
        }
        let mut name = name
            .replace(".downsample.0.", ".downsample.conv.")
            .replace(".downsample.1.", ".downsample.bn.");
        for k in 1..=4 {
            if let Some(rest) = name.strip_prefix(&format!("layer{k}.")) {
                name = format!("layers.{}.{rest}", k - 1);
                break;
            }
        }
        Some(name)
    }
}
