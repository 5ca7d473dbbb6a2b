//! Small functional pieces shared by the backbone families: convolution (burn's and TF "same"
//! padding), channels-first LayerNorm, stochastic depth, global average pooling and QuickGELU.
//!
//! They are functions over burn's own layers (not wrapper modules) so that module paths stay
//! exactly the PyTorch parameter names.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

use crate::train_ops::{
    Activation, LinearActivation, Storage, conv2d_act, conv2d_stored, linear_2d, linear_2d_add,
    scale_out_channels,
};

/// TensorFlow "same" padding for one dimension: `(before, after)`.
pub fn tf_same_padding(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let needed = ((out - 1) * stride + (kernel - 1) * dilation + 1).saturating_sub(input);
    (needed / 2, needed - needed / 2)
}

/// `activation(batch_norm(conv(x)))` with TF "same" padding computed for this input
/// (asymmetric when stride > 1), as TF-trained weights (EfficientNet-Lite) expect. Once the
/// batch norm is folded into the convolution — at load for inference (`bn` is `None`), at each
/// training pass when its statistics are frozen (`frozen_batch_norm_folded`) — convolution,
/// bias and activation are one operation ([`crate::train_ops::conv2d_act`]).
pub fn conv_tf_same_bn_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    activation: Activation,
) -> Tensor<4> {
    conv_tf_same_bn_act_stored(conv, bn, x, activation, Storage::F32)
}

/// [`conv_tf_same_bn_act`] whose output a pass on flex keeps as `storage` says (bf16 under
/// bf16 products, for an output only our convolutions read; see
/// [`crate::train_ops::stored`]).
pub fn conv_tf_same_bn_act_stored(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    activation: Activation,
    storage: Storage,
) -> Tensor<4> {
    let padding = tf_same_conv_padding(conv, &x);
    conv_padded_bn_act(conv, bn, x, padding, None, activation, storage)
}

/// `activation(batch_norm(conv(x)) + residual)` with TF "same" padding: an inverted-residual
/// block's projection and its shortcut, one operation on flex (see [`conv_bn_add_act`]).
pub fn conv_tf_same_bn_add_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    residual: Tensor<4>,
    activation: Activation,
) -> Tensor<4> {
    let padding = tf_same_conv_padding(conv, &x);
    conv_padded_bn_act(
        conv,
        bn,
        x,
        padding,
        Some(residual),
        activation,
        Storage::F32,
    )
}

/// The `(before, after)` TF "same" padding per spatial dimension of `conv` over `x`.
fn tf_same_conv_padding(conv: &Conv2d, x: &Tensor<4>) -> [(usize, usize); 2] {
    let [_, _, h, w] = x.dims();
    [
        tf_same_padding(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0]),
        tf_same_padding(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1]),
    ]
}

/// `activation(batch_norm(conv(x)))` with burn's padding rules; see [`conv_tf_same_bn_act`].
pub fn conv_bn_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    activation: Activation,
) -> Tensor<4> {
    let padding = burn_padding(conv, &x);
    conv_padded_bn_act(conv, bn, x, padding, None, activation, Storage::F32)
}

/// `activation(batch_norm(conv(x)) + residual)` with burn's padding rules: a residual block's
/// last convolution, its shortcut and the activation after their sum. With the batch norm
/// folded (a BN-folded model in inference, a frozen batch norm in training) one operation on
/// flex, the residual added in the convolution's output pass.
pub fn conv_bn_add_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    residual: Tensor<4>,
    activation: Activation,
) -> Tensor<4> {
    let padding = burn_padding(conv, &x);
    conv_padded_bn_act(
        conv,
        bn,
        x,
        padding,
        Some(residual),
        activation,
        Storage::F32,
    )
}

/// `conv.forward(x)` (burn's padding rules), through [`crate::train_ops::conv2d`] so that flex
/// runs our kernels.
pub fn conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_bn_act(conv, &None, x, Activation::Identity)
}

/// The `(before, after)` padding per spatial dimension that `conv.forward(x)` would use.
fn burn_padding(conv: &Conv2d, x: &Tensor<4>) -> [(usize, usize); 2] {
    let [_, _, h, w] = x.dims();
    let (pad_h, pad_w) = match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        // burn's `Same` is TF's rule without the dilation.
        PaddingConfig2d::Same => (
            tf_same_padding(h, conv.kernel_size[0], conv.stride[0], 1),
            tf_same_padding(w, conv.kernel_size[1], conv.stride[1], 1),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    };
    [pad_h, pad_w]
}

/// `conv`'s weights and options with this `(before, after)` padding per spatial dimension, then
/// the batch norm, the residual (when there is one) and the activation.
fn conv_padded_bn_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    padding: [(usize, usize); 2],
    residual: Option<Tensor<4>>,
    activation: Activation,
    storage: Storage,
) -> Tensor<4> {
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let (weight, bias) = match frozen_batch_norm_folded(conv, bn, &x) {
        Some((weight, bias)) => (weight, Some(bias)),
        None if bn.is_some() => {
            // A batch norm of its own: batch statistics in training, or a model not yet folded.
            let (weight, bias) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
            let y = conv2d_act(x, weight, bias, options, Activation::Identity);
            return match residual {
                Some(r) => activate(batch_norm_act(bn, y, Activation::Identity) + r, activation),
                None => batch_norm_act(bn, y, activation),
            };
        }
        None => (conv.weight.val(), conv.bias.as_ref().map(|b| b.val())),
    };
    conv2d_stored(x, weight, bias, residual, options, activation, storage)
}

/// In a training pass with frozen batch-norm statistics (the recipe's `freeze_batchnorm`), the
/// batch norm after `conv` folded into it: `bn(conv(x)) = conv(x, weight · s) + (bias · s + t)`
/// per output channel, `s = gamma / sqrt(var + eps)` and `t = beta - mean · s`, computed from the
/// parameters as tracked operations, so that gamma, beta and the convolution's weight and bias
/// still get their gradients (through the `[C]`-sized scaling, not the activations). The batch
/// norm then costs no pass over the convolution's output either way: the convolution adds the
/// bias and applies the activation in its output pass, and its backward masks the output
/// gradient by its output (on flex, [`crate::train_ops::conv2d_act`]). `None` in inference (a
/// BN-folded model has no batch norm), with batch statistics, or without a batch norm.
fn frozen_batch_norm_folded(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: &Tensor<4>,
) -> Option<(Tensor<4>, Tensor<1>)> {
    let bn = bn.as_ref()?;
    if !is_training(x) || bn.training.is_enabled() {
        return None;
    }
    let device = x.device();
    let mean = bn.running_mean.value().to_device(&device);
    let var = bn.running_var.value().to_device(&device);
    let scale = bn.gamma.val().div(var.add_scalar(bn.epsilon).sqrt());
    let shift = bn.beta.val().sub(mean.mul(scale.clone()));
    let bias = match &conv.bias {
        Some(bias) => shift.add(bias.val().mul(scale.clone())),
        None => shift,
    };
    Some((scale_out_channels(conv.weight.val(), scale), bias))
}

/// `linear.forward(x)`, through [`matmul_rows`].
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_act(linear, x, LinearActivation::Identity)
}

/// `gelu(linear.forward(x))`, one pass in inference on flex.
pub fn linear_gelu<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_act(linear, x, LinearActivation::Gelu)
}

fn linear_act<const D: usize>(
    linear: &Linear,
    x: Tensor<D>,
    activation: LinearActivation,
) -> Tensor<D> {
    matmul_rows_act(
        x,
        linear.weight.val(),
        linear.bias.as_ref().map(|b| b.val()),
        activation,
    )
}

/// `residual + linear.forward(x)` (`residual` shaped as the result), one pass in inference on
/// flex: a transformer block's projection back onto its residual stream.
pub fn linear_add<const D: usize>(linear: &Linear, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
    let dims = residual.dims();
    let [d_in, d_out] = linear.weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = linear_2d_add(
        x.reshape([rows, d_in]),
        linear.weight.val(),
        linear.bias.as_ref().map(|b| b.val()),
        residual.reshape([rows, d_out]),
    );
    y.reshape(dims)
}

/// `x · weight (+ bias)` over the last dimension of `x` (`weight` is `[d_in, d_out]`), with
/// every leading dimension folded into the rows of one 2-D matmul. burn's `linear` or a
/// broadcast `matmul` on a 3-D/4-D input (ConvNeXt's `[N, H, W, C]`, ViT's `[N, tokens, C]`)
/// runs a batched matmul: on flex, ConvNeXt's first MLP layer at batch 32 took 2.9x the time of
/// the same product as one `[N·H·W, C] × [C, 4C]` matmul, and its backward likewise.
pub fn matmul_rows<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    matmul_rows_act(x, weight, bias, LinearActivation::Identity)
}

/// [`matmul_rows`], then the activation ([`crate::train_ops::linear_2d`]).
fn matmul_rows_act<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    activation: LinearActivation,
) -> Tensor<D> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = linear_2d(x.reshape([rows, d_in]), weight, bias, activation);
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// `activation(batch_norm(x))` with burn's batch norm: in inference on a model whose batch norm
/// is not folded, or in training with batch statistics (a frozen one is folded into its
/// convolution instead).
fn batch_norm_act(bn: &Option<BatchNorm>, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    let x = match bn {
        Some(bn) => bn.forward(x),
        None => x,
    };
    activate(x, activation)
}

/// `activation(x)`.
pub fn activate(x: Tensor<4>, activation: Activation) -> Tensor<4> {
    match activation {
        Activation::Identity => x,
        Activation::Relu => burn::tensor::activation::relu(x),
        Activation::Relu6 => relu6(x),
    }
}

/// ReLU6 (`min(max(x, 0), 6)`). In a training pass it is `relu` (a dedicated autodiff op) then
/// `clamp_max`: burn's `clamp(0, 6)` records two compare-and-fill steps and differentiates each
/// with a full-size fill, and the clamp backward was 13 % of a Lite0 train step's
/// instructions. Same values; the gradient is zero at exactly 0 and 6, as PyTorch's
/// `hardtanh_backward` has it.
pub fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if is_training(&x) {
        burn::tensor::activation::relu(x).clamp_max(6.0)
    } else {
        burn::tensor::activation::relu6(x)
    }
}

/// `norm.forward(x)`, through [`crate::train_ops::layer_norm`] (our kernels in a training pass
/// on flex). burn keeps a `LayerNorm`'s epsilon private, so the model passes its own.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    crate::train_ops::layer_norm(norm, x, epsilon)
}

/// LayerNorm over the channels of an NCHW tensor (timm's `LayerNorm2d`), through
/// [`crate::train_ops::layer_norm_2d`] (our kernels on flex, in the tensor's own layout).
pub fn layer_norm_2d(norm: &LayerNorm, x: Tensor<4>, epsilon: f64) -> Tensor<4> {
    crate::train_ops::layer_norm_2d(norm, x, epsilon)
}

/// Whether a forward pass is a training pass (gradients are being recorded).
pub fn is_training<const D: usize>(x: &Tensor<D>) -> bool {
    x.device().is_autodiff()
}

/// Stochastic depth: during training, zeroes whole samples of a residual branch with
/// probability `rate` and scales the rest by `1 / (1 - rate)`; identity otherwise.
pub fn drop_path<const D: usize>(x: Tensor<D>, rate: f64) -> Tensor<D> {
    if !drop_path_applies(&x, rate) {
        return x;
    }
    let keep = 1.0 - rate;
    let mut shape = [1usize; D];
    shape[0] = x.dims()[0];
    let mask = Tensor::<D>::random(shape, Distribution::Bernoulli(keep), &x.device());
    x.mul(mask).div_scalar(keep)
}

/// Whether [`drop_path`] at `rate` changes `x`: only in a training pass, at a positive rate.
pub fn drop_path_applies<const D: usize>(x: &Tensor<D>, rate: f64) -> bool {
    rate > 0.0 && is_training(x)
}

/// Mean over H and W: `[B, C, H, W]` → `[B, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c])
}

/// OpenAI CLIP's `x * sigmoid(1.702 x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().mul(sigmoid(x.mul_scalar(1.702)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Flag, Param, RunningState};
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, TensorData};

    /// A frozen batch norm folded into its convolution (with each activation after it) gives
    /// burn's batch norm (running statistics) after the convolution, and the same gradients for
    /// the input, the convolution's weight, gamma and beta — a channel of tiny variance (a
    /// scale of -200 folded into its weights) included.
    #[test]
    fn folded_frozen_batch_norm_matches_burns_with_its_gradients() {
        for activation in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            folded_frozen_batch_norm_matches(activation);
        }
    }

    fn folded_frozen_batch_norm_matches(activation: Activation) {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex().autodiff();
        let c = 3;
        let floats = |n: usize, f: fn(usize) -> f32| -> Vec<f32> { (0..n).map(f).collect() };
        let tensor1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
        let mut bn = BatchNormConfig::new(c).init(&device);
        bn.gamma = Param::from_tensor(tensor1(vec![0.5, 1.5, -2.0]));
        bn.beta = Param::from_tensor(tensor1(vec![0.1, -0.3, 0.7]));
        bn.running_mean = RunningState::new(tensor1(vec![0.2, -1.0, 3.0]));
        bn.running_var = RunningState::new(tensor1(vec![0.25, 4.0, 1e-4]));
        bn.training = Param::initialized(bn.training.id, Flag::new(false));
        let mut conv = Conv2dConfig::new([c, c], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(
                floats(c * c * 9, |i| ((i * 5 % 11) as f32 - 5.0) / 7.0),
                [c, c, 3, 3],
            ),
            &device,
        ));
        let x_data = TensorData::new(
            floats(2 * c * 4 * 5, |i| ((i * 37 % 23) as f32 - 11.0) / 1.3),
            [2, c, 4, 5],
        );
        let weights = Tensor::<4>::from_data(
            TensorData::new(
                floats(2 * c * 4 * 5, |i| ((i % 7) as f32) - 3.0),
                [2, c, 4, 5],
            ),
            &device,
        );
        let run = |folded: bool| {
            let x = Tensor::<4>::from_data(x_data.clone(), &device).require_grad();
            let frozen = Some(bn.clone());
            let y = if folded {
                conv_bn_act(&conv, &frozen, x.clone(), activation)
            } else {
                batch_norm_act(&frozen, super::conv(&conv, x.clone()), activation)
            };
            let grads = y.clone().mul(weights.clone()).sum().backward();
            let vec = |t: Option<Tensor<4>>| t.unwrap().into_data().try_to_vec::<f32>().unwrap();
            let vec1 = |t: Option<Tensor<1>>| t.unwrap().into_data().try_to_vec::<f32>().unwrap();
            (
                y.into_data().try_to_vec::<f32>().unwrap(),
                vec(x.grad(&grads)),
                vec(conv.weight.val().grad(&grads)),
                vec1(bn.gamma.val().grad(&grads)),
                vec1(bn.beta.val().grad(&grads)),
            )
        };
        let (a, b) = (run(true), run(false));
        let close = |p: &[f32], q: &[f32], what: &str| {
            let scale = q.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (u, v) in p.iter().zip(q) {
                assert!(
                    (u - v).abs() <= 1e-5 * scale,
                    "{activation:?} {what}: {u} vs {v}"
                );
            }
        };
        close(&a.0, &b.0, "output");
        close(&a.1, &b.1, "input gradient");
        close(&a.2, &b.2, "weight gradient");
        close(&a.3, &b.3, "gamma gradient");
        close(&a.4, &b.4, "beta gradient");
    }

    /// The training form of ReLU6 gives burn's values and, away from the kinks, its gradient.
    #[test]
    fn training_relu6_matches_clamp() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..40).map(|i| i as f32 * 0.37 - 4.1).collect();
        let run = |ours: bool| {
            let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [40]), &device)
                .require_grad();
            let y = if ours {
                relu6(x.clone())
            } else {
                burn::tensor::activation::relu6(x.clone())
            };
            let g = y.clone().mul_scalar(2.0).sum().backward();
            (
                y.into_data().try_to_vec::<f32>().unwrap(),
                x.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap(),
            )
        };
        let (ours, burns) = (run(true), run(false));
        assert_eq!(ours.0, burns.0);
        for (i, v) in values.iter().enumerate() {
            if *v != 0.0 && *v != 6.0 {
                assert_eq!(ours.1[i], burns.1[i], "gradient at {v}");
            }
        }
        assert!(ours.1.iter().all(|&g| g == 0.0 || g == 2.0));
    }

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        assert_eq!(tf_same_padding(224, 3, 2, 1), (0, 1));
        assert_eq!(tf_same_padding(112, 3, 1, 1), (1, 1));
        assert_eq!(tf_same_padding(113, 5, 2, 1), (2, 2));
        assert_eq!(tf_same_padding(7, 1, 1, 1), (0, 0));
    }
}
