//! Reading a burn module's weights as plain `f32` arrays for the exporter, and folding an
//! inference-mode batch norm into the convolution before it:
//! `w' = w · γ/√(σ²+ε)` per output channel, `b' = β + (b − μ) · γ/√(σ²+ε)`.

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;

/// A tensor's values, row-major.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// A linear layer's `[in, out]` weight, its dims and bias.
pub struct LinearWeights {
    pub weight: Vec<f32>,
    pub dims: [usize; 2],
    pub bias: Option<Vec<f32>>,
}

pub fn linear(l: &Linear) -> LinearWeights {
    let w = l.weight.val();
    let [i, o] = w.dims();
    LinearWeights {
        weight: values(w),
        dims: [i, o],
        bias: l.bias.as_ref().map(|b| values(b.val())),
    }
}

/// A layer norm's scale and shift.
pub fn layer_norm(n: &LayerNorm) -> (Vec<f32>, Option<Vec<f32>>) {
    (
        values(n.gamma.val()),
        n.beta.as_ref().map(|b| values(b.val())),
    )
}

/// A convolution's weights with any following batch norm folded in.
pub struct ConvWeights {
    /// `[out, in / groups, kh, kw]`.
    pub weight: Vec<f32>,
    pub dims: [usize; 4],
    pub bias: Option<Vec<f32>>,
}

/// Per-channel `(scale, shift)` of an inference-mode batch norm.
pub fn batch_norm_affine(bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let gamma = values(bn.gamma.val());
    let beta = values(bn.beta.val());
    let mean = values(bn.running_mean.value());
    let var = values(bn.running_var.value());
    let eps = bn.epsilon;
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b - m * s)
        .collect();
    (scale, shift)
}

pub fn conv(conv: &Conv2d, bn: Option<&BatchNorm>) -> ConvWeights {
    let w = conv.weight.val();
    let dims = w.dims();
    let mut weight = values(w);
    let mut bias = conv.bias.as_ref().map(|b| values(b.val()));
    if let Some(bn) = bn {
        let (scale, shift) = batch_norm_affine(bn);
        let per_out = weight.len() / dims[0];
        for (o, chunk) in weight.chunks_mut(per_out).enumerate() {
            chunk.iter_mut().for_each(|v| *v *= scale[o]);
        }
        let b0 = bias.unwrap_or_else(|| vec![0.0; dims[0]]);
        bias = Some(
            b0.iter()
                .zip(scale.iter().zip(&shift))
                .map(|(&b, (&s, &t))| b * s + t)
                .collect(),
        );
    }
    ConvWeights { weight, dims, bias }
}

/// ONNX `pads` ([top, left, bottom, right]) of a convolution with explicit or no padding, for
/// an `h × w` input.
pub fn conv_pads(conv: &Conv2d, h: usize, w: usize) -> [usize; 4] {
    match conv.padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Same => {
            let (t, b) = same(h, conv.kernel_size[0], conv.stride[0]);
            let (l, r) = same(w, conv.kernel_size[1], conv.stride[1]);
            [t, l, b, r]
        }
    }
}

fn same(n: usize, k: usize, s: usize) -> (usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// Output side of a convolution.
pub fn conv_out(n: usize, k: usize, s: usize, pad_before: usize, pad_after: usize) -> usize {
    (n + pad_before + pad_after - k) / s + 1
}
