//! Operations that run our own kernels on flex: 2-D convolution (every backbone; forward with
//! its bias, activation and — for a ResNet block's last one — the shortcut fused, and
//! backward), ResNet's max pool in inference ([`max_pool_kernels`]), GELU and LayerNorm
//! (ConvNeXt, ViT), ViT's multi-head attention, and the linear layer.
//!
//! Other backends (tch, the GPU ones) run burn's operations, in bf16 where [`bf16_casts`] is
//! on (`optim.precision: bf16`, [`set_training_precision_for`]). On flex, through a burn
//! backend extension (`flex_ext`): every f32 convolution's forward pass runs
//! [`conv_forward_kernels`] (in inference with the bias and the activation in the same pass),
//! its backward pass [`conv_kernels`] instead of burn's default gradient composition; a
//! training pass runs [`layer_norm_kernels`] in place of burn's six-operation LayerNorm; GELU runs
//! [`gelu_kernels`] in place of flex's scalar-libm GELU; an inference `Linear` runs
//! [`linear_kernels`] (product, bias and GELU in one pass); and an AdamW step runs
//! [`adamw_kernels`] (one parallel pass per parameter, the clipping factor inside) after
//! [`grad_norm_kernels`]' global-norm sums. Only f32 tensors take these paths, except the
//! activations a convolution is asked to keep in bf16 under mixed precision ([`stored`]: an
//! inverted-residual block's expanded ones) and their gradients, which the convolution kernels
//! read and write. In a training pass a convolution's bias and activation, when it has them (a
//! frozen batch norm folded into it, then ReLU/ReLU6), run in the same operation: forward in
//! its output pass, backward as one in-place pass over the output gradient
//! ([`activation_kernels`]) with the bias's channel sums.
//! [`op_profile`] times these operations by kind, forward, backward
//! and in the optimiser step, when asked.

pub mod activation_kernels;
pub mod adamw_kernels;
mod amx_gemm;
#[cfg(target_arch = "x86_64")]
mod attention_head_avx512;
pub mod attention_kernels;
pub mod bf16_casts;
pub mod conv_forward_kernels;
mod conv_geometry;
pub mod conv_kernels;
mod depthwise_blocks;
mod depthwise_forward;
mod depthwise_input_grad;
mod depthwise_weight_grad;
#[cfg(feature = "flex")]
mod flex_ext;
pub mod gelu_kernels;
mod gemm_views;
pub mod grad_norm_kernels;
pub mod layer_norm_kernels;
pub mod layer_scale_kernels;
pub mod linear_kernels;
pub mod max_pool_kernels;
pub mod op_profile;
pub mod row_scale_kernels;
pub mod stored;
mod vectorized;

use burn::nn::LayerNorm;
use burn::nn::pool::MaxPool2d;
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

pub use activation_kernels::Activation;
pub use adamw_kernels::AdamWScalars;
pub use gemm_views::{
    MatmulPrecision, matmul_precision, native_bf16, set_matmul_precision, with_matmul_precision,
};
pub use linear_kernels::LinearActivation;
pub use stored::Storage;

#[cfg(feature = "flex")]
const F32: burn::tensor::DType = burn::tensor::DType::F32;

/// Puts `precision` in force for the products of models on `device` and returns the precision
/// now in force there: on flex, the process-wide [`set_matmul_precision`] (bf16 only where
/// [`native_bf16`]); any other device runs its own kernels, in f32 as far as this switch goes,
/// and the process-wide setting is left alone.
pub fn set_matmul_precision_for(
    device: &burn::tensor::Device,
    precision: MatmulPrecision,
) -> MatmulPrecision {
    if crate::device::is_flex(device) {
        set_matmul_precision(precision)
    } else {
        MatmulPrecision::F32
    }
}

/// Runs `f` with `precision` in force for the products of models on `device`: on flex as
/// [`with_matmul_precision`] (no other pass switches it meanwhile); elsewhere just `f`.
pub fn with_matmul_precision_for<R>(
    device: &burn::tensor::Device,
    precision: MatmulPrecision,
    f: impl FnOnce() -> R,
) -> R {
    if crate::device::is_flex(device) {
        with_matmul_precision(precision, f)
    } else {
        f()
    }
}

/// Puts `precision` in force for training (and its validations) on `device` and returns the
/// precision now in force there: on flex as [`set_matmul_precision_for`] (bf16 products on AMX
/// only); on any other device bf16 is always available, as [`bf16_casts`] around burn's
/// convolutions and matmuls.
pub fn set_training_precision_for(
    device: &burn::tensor::Device,
    precision: MatmulPrecision,
) -> MatmulPrecision {
    if crate::device::is_flex(device) {
        bf16_casts::set_enabled(false);
        set_matmul_precision(precision)
    } else {
        bf16_casts::set_enabled(precision == MatmulPrecision::Bf16);
        precision
    }
}

/// `conv2d(x, weight) + bias` — see the module docs for which kernels run.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    conv2d_act(x, weight, bias, options, Activation::Identity)
}

/// `activation(conv2d(x, weight) + bias)`: one pass in inference on flex.
pub fn conv2d_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    activation: Activation,
) -> Tensor<4> {
    conv2d_residual_act(x, weight, bias, None, options, activation, Storage::F32)
}

/// `activation(conv2d(x, weight) + bias + residual)` (a residual block's last convolution, the
/// shortcut and the ReLU after their sum): one pass on flex, in inference and in training (one
/// tracked operation there, its backward ours).
pub fn conv2d_add_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    residual: Tensor<4>,
    options: ConvOptions<2>,
    activation: Activation,
) -> Tensor<4> {
    conv2d_residual_act(
        x,
        weight,
        bias,
        Some(residual),
        options,
        activation,
        Storage::F32,
    )
}

/// [`conv2d_act`] (with a residual: [`conv2d_add_act`]) whose output a pass on flex keeps as
/// `storage` says: in bf16 under bf16 products (mixed-precision training, `--dtype bf16`
/// inference), where the output feeds only our convolutions — an inverted-residual block's
/// expanded activations. The tensor returned is then bf16; anywhere else (f32 products, other
/// backends) f32 as usual. See [`stored`].
pub fn conv2d_stored(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    residual: Option<Tensor<4>>,
    options: ConvOptions<2>,
    activation: Activation,
    storage: Storage,
) -> Tensor<4> {
    conv2d_residual_act(x, weight, bias, residual, options, activation, storage)
}

fn conv2d_residual_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    residual: Option<Tensor<4>>,
    options: ConvOptions<2>,
    activation: Activation,
    storage: Storage,
) -> Tensor<4> {
    // On flex, inference and a training pass with a residual are one fused operation; a
    // training pass without one goes through `conv2d_training` (a bias-free convolution with
    // no activation is its own tracked operation there).
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && (residual.is_some() || !x.device().is_autodiff()) {
        use burn::backend::Dispatch;
        let bias = bias.unwrap_or_else(|| zero_bias(weight.dims()[0], &weight));
        let (x, weight, bias) = (
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        );
        return Tensor::<4>::from_dispatch(match residual {
            Some(r) => <Dispatch as flex_ext::TrainOps>::fused_conv2d_add(
                x,
                weight,
                bias,
                r.into_dispatch(),
                options,
                activation,
                storage,
            ),
            None => <Dispatch as flex_ext::TrainOps>::fused_conv2d(
                x, weight, bias, options, activation, storage,
            ),
        });
    }
    match residual {
        Some(r) => {
            let y = conv2d_training(x, weight, bias, options, Activation::Identity, Storage::F32);
            crate::layers::activate(y + r, activation)
        }
        None => conv2d_training(x, weight, bias, options, activation, storage),
    }
}

/// `activation(conv2d(x, weight) + bias)` on autodiff flex (one tracked operation with our
/// kernels both ways, the activation in the convolution's output pass) or on another backend
/// (burn's operations).
fn conv2d_training(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    activation: Activation,
    storage: Storage,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex_autodiff(&x) {
        use burn::backend::Dispatch;
        return Tensor::<4>::from_dispatch(match (bias, activation, storage) {
            (None, Activation::Identity, Storage::F32) => {
                <Dispatch as flex_ext::TrainOps>::train_conv2d(
                    x.into_dispatch(),
                    weight.into_dispatch(),
                    options,
                )
            }
            (bias, activation, storage) => {
                let bias = bias.unwrap_or_else(|| zero_bias(weight.dims()[0], &weight));
                <Dispatch as flex_ext::TrainOps>::fused_conv2d(
                    x.into_dispatch(),
                    weight.into_dispatch(),
                    bias.into_dispatch(),
                    options,
                    activation,
                    storage,
                )
            }
        });
    }
    #[cfg(not(feature = "flex"))]
    let _ = storage;
    let y = if bf16_casts::applies(&x) {
        bf16_casts::conv2d(x, weight, bias, options)
    } else {
        burn::tensor::module::conv2d(x, weight, bias, options)
    };
    crate::layers::activate(y, activation)
}

/// `activation(x · weight + bias)` over the rows of `x` (`weight` is `[d_in, d_out]`): one pass
/// per block of rows in inference on flex; in training on flex, our product and gradients
/// (where bf16 products apply) with burn's bias addition and our GELU.
pub fn linear_2d(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    activation: LinearActivation,
) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) {
        use burn::backend::Dispatch;
        let bias = bias.unwrap_or_else(|| zero_bias(weight.dims()[1], &x));
        return Tensor::<2>::from_dispatch(<Dispatch as flex_ext::TrainOps>::fused_linear(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            activation,
        ));
    }
    let d_out = weight.dims()[1];
    let y = if bf16_casts::applies(&x) {
        bf16_casts::matmul(x, weight)
    } else {
        x.matmul(weight)
    };
    let y = match bias {
        Some(bias) => y.add(bias.reshape([1, d_out])),
        None => y,
    };
    match activation {
        LinearActivation::Identity => y,
        LinearActivation::Gelu => gelu(y),
    }
}

/// `residual + (x · weight + bias)` over the rows of `x` (`residual` shaped as the result): in
/// inference on flex the product accumulates onto `residual + bias` in one pass
/// ([`linear_kernels::forward_onto`]); otherwise [`linear_2d`] then an addition.
pub fn linear_2d_add(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    residual: Tensor<2>,
) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && !x.device().is_autodiff() {
        use burn::backend::Dispatch;
        let bias = bias.unwrap_or_else(|| zero_bias(weight.dims()[1], &x));
        return Tensor::<2>::from_dispatch(<Dispatch as flex_ext::TrainOps>::fused_linear_add(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            residual.into_dispatch(),
        ));
    }
    linear_2d(x, weight, bias, LinearActivation::Identity) + residual
}

/// Multi-head self-attention, `softmax(q·kᵀ/√dh)·v` per head, over the packed projection
/// `qkv` (`[b, n, 3·d]`, PyTorch `nn.MultiheadAttention`'s `in_proj` layout: q, k, v, each
/// `[heads, dh]`): `[b, n, d]`, heads side by side. Our kernels both ways on flex in f32
/// ([`attention_kernels`]), burn's composition otherwise.
pub fn multi_head_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&qkv) && qkv.dtype() == F32 {
        use burn::backend::Dispatch;
        return Tensor::<3>::from_dispatch(<Dispatch as flex_ext::TrainOps>::fused_attention(
            qkv.into_dispatch(),
            heads,
        ));
    }
    let [b, n, three_d] = qkv.dims();
    let d = three_d / 3;
    let dh = d / heads;
    // [b, n, 3, h, dh] → [3, b, h, n, dh]
    let qkv = qkv.reshape([b, n, 3, heads, dh]).permute([2, 0, 3, 1, 4]);
    let q = qkv.clone().narrow(0, 0, 1).reshape([b, heads, n, dh]);
    let k = qkv.clone().narrow(0, 1, 1).reshape([b, heads, n, dh]);
    let v = qkv.narrow(0, 2, 1).reshape([b, heads, n, dh]);
    let bf16 = bf16_casts::applies(&q);
    let matmul = |a: Tensor<4>, b: Tensor<4>| {
        if bf16 {
            bf16_casts::matmul(a, b)
        } else {
            a.matmul(b)
        }
    };
    // Under bf16 casts the products are bf16 and the softmax between them f32.
    let scores = matmul(q.mul_scalar((dh as f64).powf(-0.5)), k.swap_dims(2, 3));
    matmul(burn::tensor::activation::softmax(scores, 3), v)
        .swap_dims(1, 2)
        .reshape([b, n, d])
}

/// `norm.forward(x)` (LayerNorm over the last dimension, biased variance as PyTorch), with
/// `epsilon` the module's own: our kernels both ways in an f32 training pass on flex, burn's
/// `LayerNorm` otherwise (which widens f16/bf16 inputs for its statistics).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if x.device().is_autodiff() && runs_on_flex(&x) && x.dtype() == F32 {
        use burn::backend::Dispatch;
        if let Some((gamma, beta)) = f32_gamma_beta(norm) {
            return Tensor::<D>::from_dispatch(<Dispatch as flex_ext::TrainOps>::train_layer_norm(
                x.into_dispatch(),
                gamma.into_dispatch(),
                beta.into_dispatch(),
                epsilon,
            ));
        }
    }
    let _ = epsilon;
    norm.forward(x)
}

/// `residual + gamma[c] · x` for a channels-last `x` (`[n, h, w, c]`, ConvNeXt's MLP output)
/// and `residual` (`[n, c, h, w]`, the block's input): ConvNeXt's layer scale and residual sum,
/// `[n, c, h, w]`. On flex in f32 one parallel pass each way ([`layer_scale_kernels`]), the
/// result channels-last in memory; burn's multiplication, permutation and addition otherwise.
pub fn layer_scale_residual(x: Tensor<4>, gamma: Tensor<1>, residual: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && [x.dtype(), gamma.dtype(), residual.dtype()] == [F32; 3] {
        use burn::backend::Dispatch;
        return Tensor::<4>::from_dispatch(<Dispatch as flex_ext::TrainOps>::layer_scale_residual(
            x.into_dispatch(),
            gamma.into_dispatch(),
            residual.into_dispatch(),
        ));
    }
    let [channels] = gamma.dims();
    x.mul(gamma.reshape([1, 1, 1, channels]))
        .permute([0, 3, 1, 2])
        .add(residual)
}

/// `norm.forward` over the channels of an NCHW `x` (timm's `LayerNorm2d`), with `epsilon` the
/// module's own: on flex in f32 (training and inference) our kernels in the layout `x` has,
/// NCHW or channels-last in memory, the output in the same layout; elsewhere burn's `LayerNorm`
/// on `x` permuted channels-last.
pub fn layer_norm_2d(norm: &LayerNorm, x: Tensor<4>, epsilon: f64) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x)
        && x.dtype() == F32
        && let Some((gamma, beta)) = f32_gamma_beta(norm)
    {
        use burn::backend::Dispatch;
        return Tensor::<4>::from_dispatch(<Dispatch as flex_ext::TrainOps>::train_layer_norm_2d(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        ));
    }
    layer_norm(norm, x.permute([0, 2, 3, 1]), epsilon).permute([0, 3, 1, 2])
}

/// A LayerNorm's `gamma` and `beta` (zeros when it has none), for our kernels: `None` unless
/// `gamma` is f32.
#[cfg(feature = "flex")]
fn f32_gamma_beta(norm: &LayerNorm) -> Option<(Tensor<1>, Tensor<1>)> {
    let gamma = norm.gamma.val();
    if gamma.dtype() != F32 {
        return None;
    }
    let beta = match &norm.beta {
        Some(beta) => beta.val(),
        None => gamma.zeros_like(),
    };
    Some((gamma, beta))
}

/// One AdamW step of `param` (not tracked): the new parameter and first and second moments.
/// One parallel pass on flex in f32, burn's operations otherwise.
pub fn adamw_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    scalars: AdamWScalars,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    #[cfg(feature = "flex")]
    if runs_on_flex(&param)
        && [&param, &grad, &moment_1, &moment_2]
            .iter()
            .all(|t| t.dtype() == F32)
    {
        use burn::backend::Dispatch;
        let (p, m1, m2) = <Dispatch as flex_ext::TrainOps>::adamw_update(
            param.into_dispatch(),
            grad.into_dispatch(),
            moment_1.into_dispatch(),
            moment_2.into_dispatch(),
            scalars,
        );
        return (
            Tensor::from_dispatch(p),
            Tensor::from_dispatch(m1),
            Tensor::from_dispatch(m2),
        );
    }
    let s = scalars;
    let grad = if s.grad_scale == 1.0 {
        grad
    } else {
        grad.mul_scalar(s.grad_scale)
    };
    let m1 = moment_1
        .mul_scalar(s.beta_1)
        .add(grad.clone().mul_scalar(1.0 - s.beta_1));
    let m2 = moment_2
        .mul_scalar(s.beta_2)
        .add(grad.clone().mul(grad).mul_scalar(1.0 - s.beta_2));
    let delta = m1.clone().div_scalar(s.bias_correction_1).div(
        m2.clone()
            .div_scalar(s.bias_correction_2)
            .sqrt()
            .add_scalar(s.epsilon),
    );
    (
        param.mul_scalar(s.decay).sub(delta.mul_scalar(s.lr)),
        m1,
        m2,
    )
}

/// `Σ x²` over all of `x` as a one-element tensor, for clipping gradients by their global
/// norm: in f64 on flex for f32 `x` (one parallel pass, [`grad_norm_kernels`]), else burn's
/// `powi(2).sum()` in `x`'s dtype, left on its device until read.
pub fn sum_of_squares<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && x.dtype() == F32 {
        use burn::backend::Dispatch;
        return Tensor::<1>::from_dispatch(<Dispatch as flex_ext::TrainOps>::sum_of_squares(
            x.into_dispatch(),
        ));
    }
    x.powi_scalar(2).sum()
}

/// Exact (erf) GELU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && x.dtype() == F32 {
        use burn::backend::Dispatch;
        return Tensor::<D>::from_dispatch(<Dispatch as flex_ext::TrainOps>::train_gelu(
            x.into_dispatch(),
        ));
    }
    burn::tensor::activation::gelu(x)
}

/// `weight[c, ..] · scale[c]`: a convolution's weight scaled per output channel (a frozen batch
/// norm folded into it). One parallel op each way on flex in f32 ([`row_scale_kernels`]), burn's
/// broadcast multiplication otherwise.
pub fn scale_out_channels(weight: Tensor<4>, scale: Tensor<1>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&weight) && [weight.dtype(), scale.dtype()] == [F32; 2] {
        use burn::backend::Dispatch;
        return Tensor::<4>::from_dispatch(<Dispatch as flex_ext::TrainOps>::scale_rows(
            weight.into_dispatch(),
            scale.into_dispatch(),
        ));
    }
    let [channels] = scale.dims();
    weight.mul(scale.reshape([channels, 1, 1, 1]))
}

/// `pool.forward(x)`; on flex in inference our kernel, which skips the indices burn-flex
/// computes for a backward pass (symmetric padding and floor rounding only, else burn's).
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex(&x) && !x.device().is_autodiff() && !pool.ceil_mode {
        use burn::nn::PaddingConfig2d;
        let padding = match pool.padding {
            PaddingConfig2d::Valid => Some([0, 0]),
            PaddingConfig2d::Explicit(top, left, bottom, right)
                if top == bottom && left == right =>
            {
                Some([top, left])
            }
            _ => None,
        };
        if let Some(padding) = padding {
            use burn::backend::Dispatch;
            return Tensor::<4>::from_dispatch(<Dispatch as flex_ext::TrainOps>::fused_max_pool2d(
                x.into_dispatch(),
                pool.kernel_size,
                pool.stride,
                padding,
                pool.dilation,
            ));
        }
    }
    pool.forward(x)
}

/// A zero bias of `len` values in `like`'s dtype, for the fused operations, which always take
/// one.
#[cfg(feature = "flex")]
fn zero_bias<const D: usize>(len: usize, like: &Tensor<D>) -> Tensor<1> {
    Tensor::<1>::zeros([len], &like.device()).cast(like.dtype())
}

#[cfg(feature = "flex")]
fn runs_on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    matches!(
        x.device().as_dispatch().clone().inner(),
        DispatchDevice::Flex(_)
    )
}

#[cfg(feature = "flex")]
fn runs_on_flex_autodiff(x: &Tensor<4>) -> bool {
    x.device().is_autodiff() && runs_on_flex(x)
}
