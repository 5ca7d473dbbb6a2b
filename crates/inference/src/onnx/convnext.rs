//! ConvNeXt (timm trunk, optionally with the OpenCLIP projection) as ONNX, written the way
//! PyTorch exports timm's model: depthwise convolution in NCHW, then the block's LayerNorm and
//! MLP channels-last between two transposes — with the layer scale folded into the MLP's last
//! projection.

use visual_search_model::backbones::convnext::ConvNext;

use super::cnn::{Feature, conv_bn, pool};
use super::graph::GraphBuilder;
use super::params::{layer_norm, linear};

/// LayerNorm over the channels of an NCHW value (timm's `LayerNorm2d`).
fn layer_norm_2d(g: &mut GraphBuilder, x: &str, norm: &burn::nn::LayerNorm, eps: f64) -> String {
    let (gamma, beta) = layer_norm(norm);
    let t = g.transpose(x, &[0, 2, 3, 1]);
    let n = g.layer_norm(&t, &gamma, beta.as_deref(), eps);
    g.transpose(&n, &[0, 3, 1, 2])
}

/// A burn `Linear` applied over the last axis.
pub(super) fn linear_layer(g: &mut GraphBuilder, x: &str, l: &burn::nn::Linear) -> String {
    let w = linear(l);
    g.linear(x, &w.weight, w.dims, w.bias.as_deref())
}

/// `gamma ⊙ (x · W + b)` as one linear layer, `W·diag(gamma)` and `gamma ⊙ b`: the block's
/// layer scale folded into its last projection (one pass fewer over every block's output).
fn layer_scaled_linear(
    g: &mut GraphBuilder,
    x: &str,
    l: &burn::nn::Linear,
    gamma: &burn::tensor::Tensor<1>,
) -> String {
    let mut w = linear(l);
    let gamma = super::params::values(gamma.clone());
    assert_eq!(gamma.len(), w.dims[1], "layer scale width");
    for row in w.weight.chunks_mut(w.dims[1]) {
        for (v, s) in row.iter_mut().zip(&gamma) {
            *v *= s;
        }
    }
    if let Some(b) = w.bias.as_mut() {
        for (v, s) in b.iter_mut().zip(&gamma) {
            *v *= s;
        }
    }
    g.linear(x, &w.weight, w.dims, w.bias.as_deref())
}

pub fn convnext(g: &mut GraphBuilder, m: &ConvNext, x: Feature, eps: f64) -> String {
    let stem = conv_bn(g, &x, &m.stem_conv, None);
    let mut x = Feature {
        name: layer_norm_2d(g, &stem.name, &m.stem_norm, eps),
        ..stem
    };
    for stage in &m.stages {
        if let (Some(norm), Some(conv)) = (&stage.downsample_norm, &stage.downsample_conv) {
            let n = Feature {
                name: layer_norm_2d(g, &x.name, norm, eps),
                ..x
            };
            x = conv_bn(g, &n, conv, None);
        }
        for block in &stage.blocks {
            let dw = conv_bn(g, &x, &block.conv_dw, None);
            let t = g.transpose(&dw.name, &[0, 2, 3, 1]);
            let (gamma, beta) = layer_norm(&block.norm);
            let n = g.layer_norm(&t, &gamma, beta.as_deref(), eps);
            // The MLP stays 4-D: on 2-D `[batch·h·w, channels]` rows ONNX Runtime makes each
            // MatMul + Add a Gemm, as for ViT, but then no longer fuses the first one's bias
            // with the GELU, and ConvNeXt-tiny ran 6 % slower.
            let h = linear_layer(g, &n, &block.mlp.fc1);
            let h = g.gelu(&h);
            let h = layer_scaled_linear(g, &h, &block.mlp.fc2, &block.gamma.val());
            let h = g.transpose(&h, &[0, 3, 1, 2]);
            let sum = g.op("Add", &[&h, &x.name], vec![]);
            x = Feature { name: sum, ..x };
        }
    }
    let pooled = pool(g, &x, &m.pooling);
    let (gamma, beta) = layer_norm(&m.head_norm);
    let pooled = g.layer_norm(&pooled, &gamma, beta.as_deref(), eps);
    match &m.proj {
        Some(p) => linear_layer(g, &pooled, p),
        None => pooled,
    }
}
