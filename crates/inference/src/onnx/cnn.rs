//! EfficientNet-Lite and ResNet as ONNX: every convolution carries its batch norm folded in,
//! activations are plain `Clip`/`Relu`, pooling is global average (or GeM).
//!
//! The graph is laid out for one input size (TF "same" padding depends on it); the batch
//! axis stays free.

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use visual_search_model::backbones::efficientnet_lite::EfficientNetLite;
use visual_search_model::backbones::resnet::ResNet;
use visual_search_model::layers::tf_same_padding;
use visual_search_model::pooling::Pooling;

use super::graph::{GraphBuilder, attr_ints};
use super::params::{self, conv_out, conv_pads, values};

/// A value and its spatial size.
#[derive(Clone)]
pub struct Feature {
    pub name: String,
    pub h: usize,
    pub w: usize,
}

/// Emits `conv` (+ folded `bn`) with explicit `pads`.
fn conv_with_pads(
    g: &mut GraphBuilder,
    x: &Feature,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
    pads: [usize; 4],
) -> Feature {
    let cw = params::conv(conv, bn);
    let w = g.weight("conv_w", &cw.dims, &cw.weight);
    let b = cw.bias.map(|b| g.weight("conv_b", &[b.len()], &b));
    let [k0, k1] = conv.kernel_size;
    let [s0, s1] = conv.stride;
    let name = g.conv(
        &x.name,
        &w,
        b.as_deref(),
        [k0, k1],
        [s0, s1],
        pads,
        conv.groups,
    );
    Feature {
        name,
        h: conv_out(x.h, k0, s0, pads[0], pads[2]),
        w: conv_out(x.w, k1, s1, pads[1], pads[3]),
    }
}

/// A convolution with the padding its module declares.
pub fn conv_bn(
    g: &mut GraphBuilder,
    x: &Feature,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
) -> Feature {
    let pads = conv_pads(conv, x.h, x.w);
    conv_with_pads(g, x, conv, bn, pads)
}

/// A convolution with TensorFlow "same" padding for this input size.
fn conv_bn_tf_same(
    g: &mut GraphBuilder,
    x: &Feature,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
) -> Feature {
    let (t, b) = tf_same_padding(x.h, conv.kernel_size[0], conv.stride[0], conv.dilation[0]);
    let (l, r) = tf_same_padding(x.w, conv.kernel_size[1], conv.stride[1], conv.dilation[1]);
    conv_with_pads(g, x, conv, bn, [t, l, b, r])
}

fn map(x: Feature, name: String) -> Feature {
    Feature { name, ..x }
}

/// Global pooling to `[B, C]`: average, or GeM `(mean(max(x, ε)^p))^(1/p)`.
pub fn pool(g: &mut GraphBuilder, x: &Feature, pooling: &Pooling) -> String {
    match &pooling.gem {
        None => g.global_avg_pool(&x.name),
        Some(gem) => {
            let p = values(gem.p.val())[0];
            let eps = g.scalar(gem.eps as f32);
            let pw = g.scalar(p);
            let inv = g.scalar(1.0 / p);
            let c = g.op("Max", &[&x.name, &eps], vec![]);
            let c = g.op("Pow", &[&c, &pw], vec![]);
            let m = g.global_avg_pool(&c);
            g.op("Pow", &[&m, &inv], vec![])
        }
    }
}

pub fn efficientnet_lite(g: &mut GraphBuilder, m: &EfficientNetLite, x: Feature) -> String {
    let x = conv_bn_tf_same(g, &x, &m.conv_stem, m.bn0.as_ref());
    let mut x = map(x.clone(), g.relu6(&x.name));
    for block in &m.blocks {
        let input = x.clone();
        let mut y = x;
        if let Some(conv) = &block.expand_conv {
            let c = conv_bn_tf_same(g, &y, conv, block.bn0.as_ref());
            y = map(c.clone(), g.relu6(&c.name));
        }
        let c = conv_bn_tf_same(g, &y, &block.depthwise_conv, block.bn1.as_ref());
        y = map(c.clone(), g.relu6(&c.name));
        y = conv_bn_tf_same(g, &y, &block.project_conv, block.bn2.as_ref());
        if block.skip {
            let sum = g.op("Add", &[&y.name, &input.name], vec![]);
            y = map(y, sum);
        }
        x = y;
    }
    let c = conv_bn_tf_same(g, &x, &m.conv_head, m.bn1.as_ref());
    let x = map(c.clone(), g.relu6(&c.name));
    pool(g, &x, &m.pooling)
}

pub fn resnet(g: &mut GraphBuilder, m: &ResNet, x: Feature) -> String {
    let c = conv_bn(g, &x, &m.conv1, m.bn1.as_ref());
    let r = g.op("Relu", &[&c.name], vec![]);
    // timm's stem max pool: 3x3, stride 2, padding 1.
    let p = g.op(
        "MaxPool",
        &[&r],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let mut x = Feature {
        name: p,
        h: conv_out(c.h, 3, 2, 1, 1),
        w: conv_out(c.w, 3, 2, 1, 1),
    };
    for block in m.layers.iter().flatten() {
        let c1 = conv_bn(g, &x, &block.conv1, block.bn1.as_ref());
        let y = map(c1.clone(), g.op("Relu", &[&c1.name], vec![]));
        let mut y = conv_bn(g, &y, &block.conv2, block.bn2.as_ref());
        if let Some(conv3) = &block.conv3 {
            let r = map(y.clone(), g.op("Relu", &[&y.name], vec![]));
            y = conv_bn(g, &r, conv3, block.bn3.as_ref());
        }
        let shortcut = match &block.downsample {
            Some(d) => conv_bn(g, &x, &d.conv, d.bn.as_ref()).name,
            None => x.name.clone(),
        };
        let sum = g.op("Add", &[&y.name, &shortcut], vec![]);
        let out = g.op("Relu", &[&sum], vec![]);
        x = map(y, out);
    }
    pool(g, &x, &m.pooling)
}
