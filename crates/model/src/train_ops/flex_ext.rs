//! Our training operations as a burn backend extension on flex (an extension is how burn lets a
//! model replace an operation and its backward without a fork):
//! - **convolution**: the forward pass, with its bias and activation fused when it has them
//!   (inference on a BN-folded model; a ResNet block's shortcut too), runs
//!   [`super::conv_forward_kernels`]; the backward pass (registered with burn's autodiff) runs
//!   [`super::conv_kernels`]; in training the bias, the shortcut and the activation (a frozen
//!   batch norm folded into the convolution, a residual block's shortcut, then ReLU/ReLU6) are
//!   in the forward pass too, and their gradients one in-place pass over the output gradient
//!   with the bias's channel sums ([`super::activation_kernels`]), the shortcut's being that
//!   gradient itself. Both fall back to burn's operations for what they do
//!   not cover (another dtype, a grouping other than 1 or depthwise). A depthwise layer whose
//!   input (or output gradient) is channels-last in memory — ConvNeXt's residual stream, NHWC
//!   between its LayerNorms and MLPs — is computed in that layout, in and out, with no NCHW
//!   copy. Under bf16 products a convolution asked to keep its output in bf16
//!   ([`super::stored`]) writes it so, and its gradient is bf16 too: the kernels read and
//!   write both as they lie;
//! - **max pool** (inference): without the indices burn-flex computes for a backward pass
//!   ([`super::max_pool_kernels`]); autodiff keeps burn's;
//! - **per-row weight scaling** (a frozen batch norm folded into its convolution in training):
//!   one parallel pass each way ([`super::row_scale_kernels`]);
//! - **GELU** (exact, erf): vectorised and parallel both ways ([`super::gelu_kernels`]); also
//!   used for inference on flex;
//! - **AdamW** (the optimizer step): one parallel pass per parameter ([`super::adamw_kernels`]),
//!   and the squared gradient norms for clipping before it ([`super::grad_norm_kernels`]);
//! - **LayerNorm** (training): one pass each way ([`super::layer_norm_kernels`]); over the
//!   channels of an NCHW tensor (ConvNeXt's `LayerNorm2d`, training and inference) in the
//!   layout the tensor has, NCHW or channels-last, with no transposing copy;
//! - **multi-head attention** (ViT): both ways from the packed QKV projection
//!   ([`super::attention_kernels`]);
//! - **layer scale + residual** (ConvNeXt): `residual + gamma · x` written channels-last,
//!   both ways in parallel passes ([`super::layer_scale_kernels`]);
//! - **linear**: in inference, product, bias and GELU in one pass per block of rows
//!   ([`super::linear_kernels`]); in training, the same product onto the bias rows and its
//!   three gradients (the same GEMM entry point, so bf16 products apply), then our GELU.
//!
//! burn's default convolution backward — the one every backend inherits — computes the weight
//! gradient as a forward convolution with the output gradient as its kernel, one batch-1
//! convolution per group for depthwise layers. It was 61 % of a Lite0 train step's
//! instructions (`tools/profile_train_step.sh`).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, TensorData};

use super::activation_kernels::{self, Activation};
use super::adamw_kernels::{self, AdamWScalars};
use super::attention_kernels::{self, AttentionShape};
use super::conv_forward_kernels;
use super::conv_kernels::{self as kernels, ChannelOrder, ConvGeometry};
use super::gelu_kernels;
use super::grad_norm_kernels;
use super::layer_norm_kernels;
use super::layer_scale_kernels;
use super::linear_kernels::{self, LinearActivation, Weight, WeightLayout};
use super::max_pool_kernels::{self, PoolGeometry};
use super::op_profile::{self, OpKind, Phase};
use super::row_scale_kernels;
use super::stored::{Storage, Stored, StoredMut, StoredVec};
use super::{MatmulPrecision, matmul_precision};

#[backend_extension(Flex, Autodiff)]
pub trait TrainOps: Backend {
    /// A bias-free 2-D convolution whose backward pass is ours.
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `activation(conv2d(x, weight) + bias)`, in one pass where our kernels cover it; in
    /// training one tracked operation whose backward pass is ours (the activation's and the
    /// bias's gradients from the output and the output gradient). The output is stored as
    /// `storage` asks where our kernels run with bf16 products, else in f32 ([`Storage`]).
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FloatTensor<Self>;

    /// `w[r, ..] · s[r]`: an f32 weight `[rows, ..]` scaled per row by `s` (`[rows]`).
    fn scale_rows(w: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Exact GELU of an f32 tensor.
    fn train_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// LayerNorm over the last dimension of an f32 tensor (biased variance, as PyTorch).
    fn train_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// One AdamW step of an f32 parameter (not tracked): the new parameter, first and second
    /// moments.
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `Σ x²` over an f32 tensor (not tracked), summed in f64: a one-element f64 tensor.
    fn sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Multi-head self-attention over the packed `[b, n, 3·d]` projection: `[b, n, d]`.
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;

    /// `activation(conv2d(x, weight) + bias + residual)`, in one pass where our kernels cover
    /// it; the residual has the output's shape; the output stored as in `fused_conv2d`.
    fn fused_conv2d_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FloatTensor<Self>;

    /// Max pooling of an NCHW tensor (symmetric padding, floor rounding), without indices.
    fn fused_max_pool2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> FloatTensor<Self>;

    /// `activation(x · weight + bias)` for a 2-D `x`, in one pass where our kernels cover it.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        activation: LinearActivation,
    ) -> FloatTensor<Self>;

    /// `residual + (x · weight + bias)` for a 2-D `x` and `residual` shaped as the result: the
    /// product accumulates onto `residual + bias` where our kernels cover it.
    fn fused_linear_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// LayerNorm over the channels (dimension 1) of an NCHW-shaped `x`, in `x`'s memory layout.
    fn train_layer_norm_2d(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `residual + gamma[c] · x` for a channels-last `x` (`[n, h, w, c]`) and an NCHW-shaped
    /// `residual`: NCHW-shaped, channels-last in memory.
    fn layer_scale_residual(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl TrainOps for Flex {
    fn train_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let identity = Activation::Identity;
        our_forward(&x, &weight, None, None, &options, identity, Storage::F32)
            .unwrap_or_else(|| Flex::conv2d(contiguous_f32(x), weight, None, options))
    }

    fn fused_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FlexTensor {
        flex_conv2d(x, weight, bias, None, options, activation, storage)
    }

    fn fused_conv2d_add(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FlexTensor {
        flex_conv2d(
            x,
            weight,
            bias,
            Some(residual),
            options,
            activation,
            storage,
        )
    }

    fn fused_max_pool2d(
        x: FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> FlexTensor {
        let [batch, channels, in_h, in_w] = x.shape().dims();
        let geometry = PoolGeometry {
            in_h,
            in_w,
            kernel,
            stride,
            padding,
            dilation,
        };
        if let (DType::F32, Some([out_h, out_w])) = (x.dtype(), geometry.out_size()) {
            let x = x.to_contiguous();
            let y = max_pool_kernels::forward(f32_slice(&x), batch * channels, &geometry);
            if let Some(y) = y {
                return FlexTensor::from_data(TensorData::new(y, [batch, channels, out_h, out_w]));
            }
        }
        Flex::max_pool2d(x, kernel, stride, padding, dilation, false)
    }

    fn scale_rows(w: FlexTensor, s: FlexTensor) -> FlexTensor {
        let shape = w.shape();
        let (w, s) = (w.to_contiguous(), s.to_contiguous());
        let y = row_scale_kernels::forward(f32_slice(&w), f32_slice(&s));
        FlexTensor::from_data(TensorData::new(y, shape))
    }

    fn train_gelu(x: FlexTensor) -> FlexTensor {
        let shape = x.shape();
        let x = x.to_contiguous();
        FlexTensor::from_data(TensorData::new(gelu_kernels::forward(f32_slice(&x)), shape))
    }

    fn train_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let shape = x.shape();
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let y = layer_norm_kernels::forward(
            f32_slice(&x),
            f32_slice(&gamma),
            f32_slice(&beta),
            epsilon,
        );
        FlexTensor::from_data(TensorData::new(y, shape))
    }

    fn adamw_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        scalars: AdamWScalars,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        op_profile::timed(OpKind::AdamW, Phase::Optimizer, || {
            let shape = param.shape();
            let [p, g, m, v] = [param, grad, moment_1, moment_2].map(|t| t.to_contiguous());
            let out = adamw_kernels::step(
                f32_slice(&p),
                f32_slice(&g),
                f32_slice(&m),
                f32_slice(&v),
                &scalars,
            );
            let tensor =
                |values: Vec<f32>| FlexTensor::from_data(TensorData::new(values, shape.clone()));
            (
                tensor(out.param),
                tensor(out.moment_1),
                tensor(out.moment_2),
            )
        })
    }

    fn sum_of_squares(x: FlexTensor) -> FlexTensor {
        op_profile::timed(OpKind::GradNorm, Phase::Optimizer, || {
            let x = x.to_contiguous();
            let sum = grad_norm_kernels::sum_of_squares(f32_slice(&x));
            FlexTensor::from_data(TensorData::new(vec![sum], [1]))
        })
    }

    fn fused_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        let dtype = qkv.dtype();
        let qkv = contiguous_f32(qkv);
        let shape = attention_shape(&qkv, heads);
        let y = attention_kernels::forward(f32_slice(&qkv), shape);
        let y = FlexTensor::from_data(TensorData::new(
            y,
            [shape.batch, shape.tokens, shape.heads * shape.head_dim],
        ));
        cast_from_f32(y, dtype)
    }

    fn fused_linear(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        activation: LinearActivation,
    ) -> FlexTensor {
        if [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3] {
            let [rows, _] = x.shape().dims();
            let [d_out] = bias.shape().dims();
            let (x, (weight, layout), bias) = (
                x.to_contiguous(),
                linear_weight(weight),
                bias.to_contiguous(),
            );
            let y = linear_kernels::forward(
                f32_slice(&x),
                weight_values(&weight, layout),
                f32_slice(&bias),
                rows,
                activation,
            );
            return FlexTensor::from_data(TensorData::new(y, [rows, d_out]));
        }
        let [d_out] = bias.shape().dims();
        let y = Flex::float_add(
            Flex::float_matmul(x, weight),
            Flex::float_reshape(bias, [1, d_out].into()),
        );
        match activation {
            LinearActivation::Identity => y,
            LinearActivation::Gelu => Flex::gelu(y),
        }
    }

    fn fused_linear_add(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
    ) -> FlexTensor {
        let [rows, _] = x.shape().dims();
        let [d_out] = bias.shape().dims();
        let dtypes = [x.dtype(), weight.dtype(), bias.dtype(), residual.dtype()];
        if dtypes != [DType::F32; 4] || residual.shape().dims() != [rows, d_out] {
            let y = Flex::fused_linear(x, weight, bias, LinearActivation::Identity);
            return Flex::float_add(y, residual);
        }
        let (x, (weight, layout), bias, residual) = (
            x.to_contiguous(),
            linear_weight(weight),
            bias.to_contiguous(),
            residual.to_contiguous(),
        );
        let y = linear_kernels::forward_onto(
            f32_slice(&x),
            weight_values(&weight, layout),
            f32_slice(&bias),
            f32_slice(&residual),
            rows,
        );
        FlexTensor::from_data(TensorData::new(y, [rows, d_out]))
    }

    fn train_layer_norm_2d(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let [n, c, h, w] = x.shape().dims();
        let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
        let (gamma, beta) = (f32_slice(&gamma), f32_slice(&beta));
        if let Some(x) = channels_last_values(&x) {
            let y = layer_norm_kernels::forward(x, gamma, beta, epsilon);
            return channels_last_tensor(y, [n, c, h, w]);
        }
        let x = x.to_contiguous();
        let y =
            layer_norm_kernels::forward_channels_first(f32_slice(&x), gamma, beta, epsilon, h * w);
        FlexTensor::from_data(TensorData::new(y, [n, c, h, w]))
    }

    fn layer_scale_residual(x: FlexTensor, gamma: FlexTensor, residual: FlexTensor) -> FlexTensor {
        let [n, h, w, c] = x.shape().dims();
        if [x.dtype(), gamma.dtype(), residual.dtype()] != [DType::F32; 3] {
            let scaled = Flex::float_mul(x, Flex::float_reshape(gamma, [1, 1, 1, c].into()));
            return Flex::float_add(scaled.permute(&[0, 3, 1, 2]), residual);
        }
        let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
        let (x, gamma) = (f32_slice(&x), f32_slice(&gamma));
        let y = match channels_last_values(&residual) {
            Some(r) => layer_scale_kernels::forward(x, gamma, (r, ChannelOrder::Last), h * w),
            None => {
                let r = residual.to_contiguous();
                layer_scale_kernels::forward(x, gamma, (f32_slice(&r), ChannelOrder::First), h * w)
            }
        };
        channels_last_tensor(y, [n, c, h, w])
    }
}

impl<C: CheckpointStrategy> TrainOps for Autodiff<Flex, C> {
    fn train_layer_norm_2d(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        tracked_layer_norm::<C, _>(
            LayerNorm2dBackward,
            [x, gamma, beta],
            epsilon,
            Flex::train_layer_norm_2d,
        )
    }

    fn layer_scale_residual(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        op_profile::timed(
            OpKind::LayerScale,
            Phase::Forward,
            || match LayerScaleBackward
                .prepare::<C>([x.node(), gamma.node(), residual.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let gamma_state = prep.checkpoint(&gamma);
                    let output = Flex::layer_scale_residual(
                        x.into_primitive(),
                        gamma.into_primitive(),
                        residual.into_primitive(),
                    );
                    prep.finish((x_state, gamma_state), output)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::layer_scale_residual(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    residual.into_primitive(),
                )),
            },
        )
    }

    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        op_profile::timed(
            OpKind::Attention,
            Phase::Forward,
            || match AttentionBackward
                .prepare::<C>([qkv.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let qkv_state = prep.checkpoint(&qkv);
                    let output = Flex::fused_attention(qkv.into_primitive(), heads);
                    prep.finish((qkv_state, heads), output)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(Flex::fused_attention(qkv.into_primitive(), heads))
                }
            },
        )
    }

    /// `x · weight + bias` as one tracked operation (flex's fused forward: the product
    /// accumulates onto the bias rows), then our GELU as a second one. Untracked, flex's
    /// forward with the GELU in its pass.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        activation: LinearActivation,
    ) -> FloatTensor<Self> {
        let prepared = LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let mut prep = match prepared {
            OpsKind::Tracked(prep) => prep,
            OpsKind::UnTracked(prep) => {
                return prep.finish(Flex::fused_linear(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    activation,
                ));
            }
        };
        let y = op_profile::timed(OpKind::Linear, Phase::Forward, || {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            let output = Flex::fused_linear(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                LinearActivation::Identity,
            );
            prep.finish((x_state, weight_state), output)
        });
        match activation {
            LinearActivation::Identity => y,
            LinearActivation::Gelu => Self::train_gelu(y),
        }
    }

    /// The linear layer then burn's addition (whose gradient passes through): inference
    /// takes flex's one pass (`train_ops::linear_2d_add` routes it there).
    fn fused_linear_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let y = Self::fused_linear(x, weight, bias, LinearActivation::Identity);
        Self::float_add(y, residual)
    }

    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kind = conv_kind(&x, &weight, options.groups);
        op_profile::timed(kind, Phase::Forward, || {
            match TrainConvBackward
                .prepare::<C>([x.node(), weight.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let weight_state = prep.checkpoint(&weight);
                    let output = Flex::train_conv2d(
                        x.into_primitive(),
                        weight.into_primitive(),
                        options.clone(),
                    );
                    prep.finish((x_state, weight_state, options), output)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::train_conv2d(
                    x.into_primitive(),
                    weight.into_primitive(),
                    options,
                )),
            }
        })
    }

    /// One tracked operation: our forward kernels (bias and activation in the output pass), and
    /// a backward pass that masks the output gradient by the output where the activation did not
    /// pass, sums it per channel for the bias and runs our convolution gradients on it.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FloatTensor<Self> {
        tracked_conv_bias::<C, _, 3>(
            TrainConvBiasBackward,
            [x, weight, bias],
            options,
            activation,
            |[x, weight, bias], options| {
                Flex::fused_conv2d(x, weight, bias, options, activation, storage)
            },
        )
    }

    /// As `fused_conv2d`, with the residual added in the same output pass (a ResNet block's
    /// tail, an inverted-residual block's projection): one tracked operation whose backward
    /// pass hands the residual the masked output gradient the convolution's gradients read.
    /// A residual of another shape than the output (a broadcast) takes burn's addition.
    fn fused_conv2d_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: Activation,
        storage: Storage,
    ) -> FloatTensor<Self> {
        let out_shape = conv_out_shape(&x.shape().dims(), &weight.shape().dims(), &options);
        if out_shape != Some(residual.shape().dims()) {
            let identity = Activation::Identity;
            let y = Self::fused_conv2d(x, weight, bias, options, identity, Storage::F32);
            return activate_tracked::<C>(Self::float_add(y, residual), activation);
        }
        tracked_conv_bias::<C, _, 4>(
            TrainConvResidualBackward,
            [x, weight, bias, residual],
            options,
            activation,
            |[x, weight, bias, residual], options| {
                Flex::fused_conv2d_add(x, weight, bias, residual, options, activation, storage)
            },
        )
    }

    /// burn's pooling (with the indices its backward pass needs).
    fn fused_max_pool2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> FloatTensor<Self> {
        Self::max_pool2d(x, kernel, stride, padding, dilation, false)
    }

    fn train_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        tracked_layer_norm::<C, _>(
            LayerNormBackward,
            [x, gamma, beta],
            epsilon,
            Flex::train_layer_norm,
        )
    }

    /// flex's step on the values: an optimizer step is never tracked.
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m1, m2) = Flex::adamw_update(
            param.into_primitive(),
            grad.into_primitive(),
            moment_1.into_primitive(),
            moment_2.into_primitive(),
            scalars,
        );
        (
            FloatTensor::<Self>::new(p),
            FloatTensor::<Self>::new(m1),
            FloatTensor::<Self>::new(m2),
        )
    }

    /// flex's sum on the values: gradient norms are never tracked.
    fn sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(Flex::sum_of_squares(x.into_primitive()))
    }

    fn scale_rows(w: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self> {
        match ScaleRowsBackward
            .prepare::<C>([w.node(), s.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let w_state = prep.checkpoint(&w);
                let s_state = prep.checkpoint(&s);
                let output = Flex::scale_rows(w.into_primitive(), s.into_primitive());
                prep.finish((w_state, s_state), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::scale_rows(w.into_primitive(), s.into_primitive()))
            }
        }
    }

    fn train_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        op_profile::timed(OpKind::Gelu, Phase::Forward, || {
            match GeluBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let output = Flex::train_gelu(x.into_primitive());
                    prep.finish(x_state, output)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::train_gelu(x.into_primitive())),
            }
        })
    }
}

/// The gradients of `x · weight + bias`: our GEMMs for `x` and `weight`, parallel column
/// sums for `bias`.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::Linear, Phase::Backward, || {
            let [node_x, node_weight, node_bias] = ops.parents;
            let gy = grads.consume::<Flex>(&ops.node);
            let (x_state, weight_state) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
            let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
            let ([rows, d_in], [_, d_out]) = (x.shape().dims(), weight.shape().dims());
            let f32s = [x.dtype(), weight.dtype(), gy.dtype()] == [DType::F32; 3];
            let (x, (weight, layout), gy) =
                (x.to_contiguous(), linear_weight(weight), gy.to_contiguous());
            if let Some(node) = node_bias {
                let grad = if f32s {
                    let db = linear_kernels::bias_grad(f32_slice(&gy), d_out);
                    FlexTensor::from_data(TensorData::new(db, [d_out]))
                } else {
                    Flex::float_reshape(Flex::float_sum_dim(gy.clone(), 0), [d_out].into())
                };
                grads.register::<Flex>(node.id, grad);
            }
            if let Some(node) = node_x {
                let grad = if f32s {
                    let dx = linear_kernels::matmul_input_grad(
                        f32_slice(&gy),
                        weight_values(&weight, layout),
                        rows,
                        d_in,
                        d_out,
                    );
                    FlexTensor::from_data(TensorData::new(dx, [rows, d_in]))
                } else {
                    Flex::float_matmul(gy.clone(), Flex::float_transpose(weight.clone()))
                };
                grads.register::<Flex>(node.id, grad);
            }
            if let Some(node) = node_weight {
                let grad = if f32s {
                    let dw = linear_kernels::matmul_weight_grad(
                        f32_slice(&x),
                        f32_slice(&gy),
                        rows,
                        d_in,
                        d_out,
                        layout,
                    );
                    // Laid out as the weight is, so that a transposed weight's gradient reaches its
                    // parameter (through the transpose's backward) without a copy.
                    match layout {
                        WeightLayout::RowMajor => {
                            FlexTensor::from_data(TensorData::new(dw, [d_in, d_out]))
                        }
                        WeightLayout::Transposed => Flex::float_transpose(FlexTensor::from_data(
                            TensorData::new(dw, [d_out, d_in]),
                        )),
                    }
                } else {
                    Flex::float_matmul(Flex::float_transpose(x), gy)
                };
                grads.register::<Flex>(node.id, grad);
            }
        })
    }
}

#[derive(Debug)]
struct TrainConvBackward;

impl Backward<Flex, 2> for TrainConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
        let ids = [node_x, node_weight].map(|node| node.map(|n| n.id));
        let kind = conv_kind(&x, &weight, options.groups);
        op_profile::timed(kind, Phase::Backward, || {
            register_conv_grads(ids, x, weight, gy, options, grads)
        });
    }
}

/// `forward` over `[x, weight, bias, …]` (the rest: a residual) as one tracked operation whose
/// state is a [`ConvBiasState`]: with an activation the output is kept, as it tells the
/// backward pass where the activation passed.
fn tracked_conv_bias<C, B, const N: usize>(
    backward: B,
    parents: [FloatTensor<Autodiff<Flex, C>>; N],
    options: ConvOptions<2>,
    activation: Activation,
    forward: impl FnOnce([FlexTensor; N], ConvOptions<2>) -> FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>>
where
    C: CheckpointStrategy,
    B: Backward<Flex, N, State = ConvBiasState>,
{
    let kind = conv_kind(&parents[0], &parents[1], options.groups);
    op_profile::timed(kind, Phase::Forward, || {
        match backward
            .prepare::<C>(parents.each_ref().map(|t| t.node()))
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&parents[0]);
                let weight_state = prep.checkpoint(&parents[1]);
                let output = forward(parents.map(|t| t.into_primitive()), options.clone());
                let activated =
                    (activation != Activation::Identity).then(|| (output.clone(), activation));
                prep.finish((x_state, weight_state, options, activated), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(parents.map(|t| t.into_primitive()), options))
            }
        }
    })
}

/// What [`TrainConvBiasBackward`] and [`TrainConvResidualBackward`] keep: the input's and the
/// weight's checkpoints, the options, and with an activation the output and the activation.
type ConvBiasState = (
    NodeId,
    NodeId,
    ConvOptions<2>,
    Option<(FlexTensor, Activation)>,
);

/// `activation(conv2d(x, weight) + bias)`'s backward: with an activation, the output gradient
/// masked where it did not pass (read from the output, kept in the state); the bias's gradient
/// as parallel channel sums of that gradient read as it lies (burn's broadcast addition summed
/// it on one thread, after copying ConvNeXt's channels-last gradients to NCHW); then
/// [`TrainConvBackward`]'s.
#[derive(Debug)]
struct TrainConvBiasBackward;

impl Backward<Flex, 3> for TrainConvBiasBackward {
    type State = ConvBiasState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let gy = grads.consume::<Flex>(&ops.node);
        let ids = ops.parents.map(|node| node.map(|n| n.id));
        conv_bias_backward(ids, None, ops.state, gy, grads, checkpointer);
    }
}

/// `activation(conv2d(x, weight) + bias + residual)`'s backward: [`TrainConvBiasBackward`]'s,
/// and the residual's gradient, which is the (masked) output gradient itself.
#[derive(Debug)]
struct TrainConvResidualBackward;

impl Backward<Flex, 4> for TrainConvResidualBackward {
    type State = ConvBiasState;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let gy = grads.consume::<Flex>(&ops.node);
        let [x, weight, bias, residual] = ops.parents.map(|node| node.map(|n| n.id));
        conv_bias_backward(
            [x, weight, bias],
            residual,
            ops.state,
            gy,
            grads,
            checkpointer,
        );
    }
}

/// The gradients of `activation(conv2d(x, weight) + bias [+ residual])` for the tracked parents
/// among `[x, weight, bias]` and `residual`.
fn conv_bias_backward(
    [node_x, node_weight, node_bias]: [Option<NodeId>; 3],
    node_residual: Option<NodeId>,
    (x_state, weight_state, options, activated): ConvBiasState,
    gy: FlexTensor,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
    let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
    let kind = conv_kind(&x, &weight, options.groups);
    op_profile::timed(kind, Phase::Backward, || {
        // The bias's gradient in the parameters' dtype (a bf16-stored output's gradient is
        // bf16, the bias f32).
        let params = weight.dtype();
        let (gy, bias_grad) = match activated {
            Some((output, activation)) => {
                let (gy, sums) = pre_activation_grad(&output, gy, activation, params);
                (gy, Some(sums))
            }
            None => {
                let bias_grad = node_bias.is_some().then(|| conv_bias_grad(&gy, params));
                (gy, bias_grad)
            }
        };
        if let (Some(id), Some(grad)) = (node_bias, bias_grad) {
            grads.register::<Flex>(id, grad);
        }
        // The residual's gradient is the output gradient's buffer itself (no copy), registered
        // once the convolution's gradients are done with it; where the residual already has a
        // gradient (a ResNet block's input also feeds its first convolution) burn adds the two.
        // (Our fused residual is f32: an output gradient stored in bf16 is widened for it.)
        let residual_grad = node_residual.map(|id| match gy.dtype() {
            DType::BF16 => (id, contiguous_f32(gy.clone())),
            _ => (id, gy.clone()),
        });
        register_conv_grads([node_x, node_weight], x, weight, gy, options, grads);
        if let Some((id, grad)) = residual_grad {
            grads.register::<Flex>(id, grad);
        }
    });
}

/// Registers the input's and the weight's gradients of a convolution (those that are tracked):
/// our kernels where they apply, burn's otherwise.
fn register_conv_grads(
    [node_x, node_weight]: [Option<NodeId>; 2],
    x: FlexTensor,
    weight: FlexTensor,
    gy: FlexTensor,
    options: ConvOptions<2>,
    grads: &mut Gradients,
) {
    // burn's gradients (where ours do not apply) take an f32 input, never a bf16-stored one.
    if let Some(id) = node_x {
        let grad = our_grad(ConvGrad::Input, &x, &weight, &gy, &options).unwrap_or_else(|| {
            let (x, gy) = (contiguous_f32(x.clone()), contiguous_f32(gy.clone()));
            Flex::conv2d_x_backward(x, weight.clone(), gy, options.clone())
        });
        grads.register::<Flex>(id, grad);
    }
    if let Some(id) = node_weight {
        let grad = our_grad(ConvGrad::Weight, &x, &weight, &gy, &options).unwrap_or_else(|| {
            Flex::conv2d_weight_backward(contiguous_f32(x), weight, contiguous_f32(gy), options)
        });
        grads.register::<Flex>(id, grad);
    }
}

/// The gradient of `conv2d(…) + bias` with respect to `bias`: the output gradient summed over
/// every image and position of each channel, from a channels-last gradient as it lies.
fn conv_bias_grad(gy: &FlexTensor, dtype: DType) -> FlexTensor {
    let [batch, channels, h, w] = gy.shape().dims();
    let sums = match channels_last_values(gy) {
        Some(values) => linear_kernels::bias_grad(values, channels),
        None => {
            let gy = contiguous_f32(gy.clone());
            kernels::bias_grad(f32_slice(&gy), batch, channels, h * w)
        }
    };
    cast_from_f32(
        FlexTensor::from_data(TensorData::new(sums, [channels])),
        dtype,
    )
}

/// The gradient before the activation of a convolution's `output` (NCHW) for the output
/// gradient `gy`, and its channel sums (the bias's gradient), in one pass — over `gy`'s own
/// memory when nothing else holds it (the usual case: it is the next layer's input gradient).
fn pre_activation_grad(
    output: &FlexTensor,
    gy: FlexTensor,
    activation: Activation,
    sums_dtype: DType,
) -> (FlexTensor, FlexTensor) {
    let (shape, dtype) = (output.shape(), gy.dtype());
    let [_, channels, _, _] = shape.dims();
    // The output and its gradient as they are stored (f32, or bf16 under mixed precision).
    let output = contiguous_stored(output.clone());
    let mut gy = owned_stored(gy);
    let sums = activation_kernels::mask_pre_activation_grad_stored(
        stored_values(&output).expect("a contiguous f32 or bf16 output"),
        owned_values(&mut gy),
        plane_size(&shape),
        channels,
        activation,
    );
    let sums = FlexTensor::from_data(TensorData::new(sums, [channels]));
    let gy = match gy.dtype() {
        DType::BF16 => gy,
        _ => cast_from_f32(gy, dtype),
    };
    (gy, cast_from_f32(sums, sums_dtype))
}

/// `t` contiguous, as f32 unless it is stored in bf16 (which our kernels read as it is).
fn contiguous_stored(t: FlexTensor) -> FlexTensor {
    match t.dtype() {
        DType::BF16 => t.to_contiguous(),
        _ => contiguous_f32(t),
    }
}

/// `t` as a contiguous f32 or bf16 tensor ([`contiguous_stored`]) whose values are its own to
/// overwrite (for a kernel that writes a gradient over the output gradient it reads,
/// [`pre_activation_grad`]): `t` itself when nothing else holds its values, else a copy.
fn owned_stored(t: FlexTensor) -> FlexTensor {
    let mut t = contiguous_stored(t);
    if unique_values_mut(&mut t).is_none() {
        t = match t.dtype() {
            DType::BF16 => {
                let values = t
                    .as_slice::<half::bf16>()
                    .expect("contiguous_stored returns a contiguous bf16 tensor")
                    .to_vec();
                FlexTensor::from_data(TensorData::new(values, t.shape()))
            }
            _ => FlexTensor::from_data(TensorData::new(f32_slice(&t).to_vec(), t.shape())),
        };
    }
    t
}

/// The values of a tensor from [`owned_stored`], to overwrite.
fn owned_values(t: &mut FlexTensor) -> StoredMut<'_> {
    unique_values_mut(t).expect("owned_stored returns a tensor that alone holds its values")
}

/// The values of a contiguous f32 or bf16 tensor to overwrite, when it is their only holder
/// and they are its whole buffer.
fn unique_values_mut(t: &mut FlexTensor) -> Option<StoredMut<'_>> {
    let len = t.shape().num_elements();
    if t.layout().contiguous_offsets() != Some((0, len)) {
        return None;
    }
    match t.dtype() {
        DType::F32 => t
            .try_storage_mut::<f32>()
            .filter(|values| values.len() == len)
            .map(StoredMut::F32),
        DType::BF16 => t
            .try_storage_mut::<half::bf16>()
            .filter(|values| values.len() == len)
            .map(StoredMut::Bf16),
        _ => None,
    }
}

/// The profile's kind of a convolution of `x` with `weight` in `groups` groups.
fn conv_kind(x: &impl TensorMetadata, weight: &impl TensorMetadata, groups: usize) -> OpKind {
    let [_, in_channels, _, _] = x.shape().dims();
    OpKind::of_conv(in_channels, weight.shape().dims(), groups)
}

/// Which gradient of the convolution.
#[derive(Clone, Copy)]
enum ConvGrad {
    Input,
    Weight,
}

/// That gradient from our kernels, or `None` where they do not apply.
fn our_grad(
    which: ConvGrad,
    x: &FlexTensor,
    weight: &FlexTensor,
    gy: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = geometry(x, weight, &gy.shape().dims(), options)?;
    // A channels-last output gradient (ConvNeXt's stream) is read as it lies where the kernels
    // take it: a depthwise layer's weight gradient, and its input gradient at stride 1 (which
    // comes out channels-last too).
    if geometry.is_depthwise()
        && let Some(gy_last) = channels_last_values(gy)
    {
        let grad = match which {
            ConvGrad::Input => {
                let weight_values = weight.to_contiguous();
                let weight_values = weight_values.as_slice::<f32>()?;
                kernels::input_grad_in(weight_values, (gy_last, ChannelOrder::Last), &geometry)
                    .map(|dx| channels_last_tensor(dx, x.shape().dims()))
            }
            ConvGrad::Weight => {
                let x_contiguous;
                let x_operand = match channels_last_values(x) {
                    Some(values) => (values, ChannelOrder::Last),
                    None => {
                        x_contiguous = x.to_contiguous();
                        (x_contiguous.as_slice::<f32>()?, ChannelOrder::First)
                    }
                };
                kernels::weight_grad_in(x_operand, (gy_last, ChannelOrder::Last), &geometry)
                    .map(|dw| FlexTensor::from_data(TensorData::new(dw, weight.shape())))
            }
        };
        if grad.is_some() {
            return grad;
        }
    }
    let gy = contiguous_stored(gy.clone());
    let gy = (stored_values(&gy)?, ChannelOrder::First);
    match which {
        ConvGrad::Input => {
            // The gradient of a bf16-stored input is stored in bf16 too.
            let storage = match x.dtype() {
                DType::BF16 => Storage::Bf16,
                _ => Storage::F32,
            };
            let weight_values = weight.to_contiguous();
            let weight_values = weight_values.as_slice::<f32>()?;
            let dx = kernels::input_grad_stored(weight_values, gy, &geometry, storage)?;
            Some(stored_tensor(dx, x.shape()))
        }
        ConvGrad::Weight => {
            let x_values = contiguous_stored(x.clone());
            let x_values = (stored_values(&x_values)?, ChannelOrder::First);
            let dw = kernels::weight_grad_stored(x_values, gy, &geometry)?;
            Some(FlexTensor::from_data(TensorData::new(dw, weight.shape())))
        }
    }
}

/// The NHWC values of a `[n, c, h, w]` f32 tensor whose memory is channels-last — an NHWC
/// tensor permuted to NCHW, as ConvNeXt's blocks leave their residual stream — or `None`.
fn channels_last_values(t: &FlexTensor) -> Option<&[f32]> {
    let layout = t.layout();
    if t.dtype() != DType::F32 || layout.num_dims() != 4 || layout.start_offset() != 0 {
        return None;
    }
    let [_, c, h, w] = layout.shape().dims::<4>();
    if layout.strides() != [(h * w * c) as isize, 1, (w * c) as isize, c as isize] {
        return None;
    }
    t.storage::<f32>().get(..layout.num_elements())
}

/// An NCHW-shaped tensor as a contiguous f32 `[n, h, w, c]` one: without a copy when its memory
/// is channels-last already (see [`channels_last_values`]).
fn channels_last_contiguous(t: FlexTensor) -> FlexTensor {
    contiguous_f32(t.permute(&[0, 2, 3, 1]))
}

/// `[n, c, h, w]` values stored NHWC as a tensor of that shape (an NHWC tensor permuted).
fn channels_last_tensor(values: Vec<f32>, [n, c, h, w]: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [n, h, w, c])).permute(&[0, 3, 1, 2])
}

/// Flex's fused convolution: our kernels, else burn's convolution, the residual addition and the
/// activation one after another.
fn flex_conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    residual: Option<FlexTensor>,
    options: ConvOptions<2>,
    activation: Activation,
    storage: Storage,
) -> FlexTensor {
    let ours = our_forward(
        &x,
        &weight,
        Some(&bias),
        residual.as_ref(),
        &options,
        activation,
        storage,
    );
    if let Some(y) = ours {
        return y;
    }
    // burn's convolution takes an f32 input, never a bf16-stored one.
    let y = Flex::conv2d(contiguous_f32(x), weight, Some(bias), options);
    let y = match residual {
        Some(r) => Flex::float_add(y, r),
        None => y,
    };
    match activation {
        Activation::Identity => y,
        Activation::Relu => Flex::relu(y),
        Activation::Relu6 => Flex::float_clamp(y, 0.0f32.into(), 6.0f32.into()),
    }
}

/// `activation(y)` as tracked operations.
fn activate_tracked<C: CheckpointStrategy>(
    y: FloatTensor<Autodiff<Flex, C>>,
    activation: Activation,
) -> FloatTensor<Autodiff<Flex, C>> {
    type Tracked<C> = Autodiff<Flex, C>;
    match activation {
        Activation::Identity => y,
        Activation::Relu => Tracked::<C>::relu(y),
        Activation::Relu6 => Tracked::<C>::float_clamp_max(Tracked::<C>::relu(y), 6.0f32.into()),
    }
}

/// The `[batch, out_channels, out_h, out_w]` of a convolution of an input `x_shape` by a
/// weight `weight_shape` (`None` when the kernel does not fit the padded input).
fn conv_out_shape(
    &[batch, _, in_h, in_w]: &[usize; 4],
    &[out_channels, _, kernel_h, kernel_w]: &[usize; 4],
    options: &ConvOptions<2>,
) -> Option<[usize; 4]> {
    let out_size = |dim: usize, size: usize, kernel: usize| {
        let padded = size + options.padding[dim].0 + options.padding[dim].1;
        let reach = options.dilation[dim] * (kernel - 1) + 1;
        padded
            .checked_sub(reach)
            .map(|d| d / options.stride[dim] + 1)
    };
    Some([
        batch,
        out_channels,
        out_size(0, in_h, kernel_h)?,
        out_size(1, in_w, kernel_w)?,
    ])
}

/// The convolution's output from our forward kernels, or `None` where they do not apply. The
/// output is stored in bf16 when `storage` asks for it and the products are bf16 (mixed
/// precision: see [`super::stored`]), else in f32; the input may be either.
fn our_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
    options: &ConvOptions<2>,
    activation: Activation,
    storage: Storage,
) -> Option<FlexTensor> {
    if bias.is_some_and(|b| b.dtype() != DType::F32) {
        return None;
    }
    let out_shape = conv_out_shape(&x.shape().dims(), &weight.shape().dims(), options)?;
    let geometry = geometry(x, weight, &out_shape, options)?;
    if residual.is_some_and(|r| r.dtype() != DType::F32 || r.shape().dims::<4>() != out_shape) {
        return None;
    }
    let weight = weight.to_contiguous();
    let weight = weight.as_slice::<f32>()?;
    let bias = bias.map(|b| b.to_contiguous());
    let bias = match &bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    // A channels-last input to a depthwise layer (ConvNeXt's stream) is read as it lies, and
    // the output is channels-last too, ready for the block's LayerNorm.
    if geometry.is_depthwise()
        && residual.is_none()
        && let Some(x_last) = channels_last_values(x)
    {
        let y = conv_forward_kernels::depthwise_channels_last(
            x_last, weight, bias, &geometry, activation,
        )?;
        return Some(channels_last_tensor(y, out_shape));
    }
    let x = x.to_contiguous();
    let residual = residual.map(|r| r.to_contiguous());
    let residual = match &residual {
        Some(r) => Some(r.as_slice::<f32>()?),
        None => None,
    };
    let storage = match storage {
        Storage::Bf16 if matmul_precision() == MatmulPrecision::Bf16 => Storage::Bf16,
        _ => Storage::F32,
    };
    let y = conv_forward_kernels::forward_stored(
        stored_values(&x)?,
        weight,
        bias,
        residual,
        &geometry,
        activation,
        storage,
    )?;
    Some(stored_tensor(y, out_shape))
}

/// A kernel's output as a tensor of `shape`, in the dtype it was stored in.
fn stored_tensor(values: StoredVec, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    match values {
        StoredVec::F32(v) => FlexTensor::from_data(TensorData::new(v, shape)),
        StoredVec::Bf16(v) => FlexTensor::from_data(TensorData::new(v, shape)),
    }
}

/// The values of a contiguous f32 or bf16 tensor as our kernels read them.
fn stored_values(t: &FlexTensor) -> Option<Stored<'_>> {
    match t.dtype() {
        DType::F32 => Some(Stored::F32(t.as_slice::<f32>()?)),
        DType::BF16 => Some(Stored::Bf16(t.as_slice::<half::bf16>()?)),
        _ => None,
    }
}

/// The kernels' view of this convolution (`out_shape` is the output's, or its gradient's), or
/// `None` when it is not an f32 one (its input may be stored in bf16, see [`super::stored`]).
fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    out_shape: &[usize; 4],
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    if !matches!(x.dtype(), DType::F32 | DType::BF16) || weight.dtype() != DType::F32 {
        return None;
    }
    let [batch, in_channels, in_h, in_w] = x.shape().dims();
    let [out_channels, _, kernel_h, kernel_w] = weight.shape().dims();
    let [_, _, out_h, out_w] = *out_shape;
    Some(ConvGeometry {
        batch,
        in_channels,
        in_h,
        in_w,
        out_channels,
        kernel_h,
        kernel_w,
        out_h,
        out_w,
        stride: options.stride,
        pad_begin: options.padding_begin(),
        dilation: options.dilation,
        groups: options.groups,
    })
}

/// A LayerNorm (`forward`, on the values) as one tracked operation whose backward pass is
/// `backward`, with the input and gamma checkpointed for it.
fn tracked_layer_norm<C, B>(
    backward: B,
    [x, gamma, beta]: [FloatTensor<Autodiff<Flex, C>>; 3],
    epsilon: f64,
    forward: fn(FlexTensor, FlexTensor, FlexTensor, f64) -> FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>>
where
    C: CheckpointStrategy,
    B: Backward<Flex, 3, State = (NodeId, NodeId, f64)>,
{
    op_profile::timed(OpKind::LayerNorm, Phase::Forward, || {
        match backward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let output = forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x_state, gamma_state, epsilon), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    })
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (NodeId, NodeId, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::LayerNorm, Phase::Backward, || {
            let gy = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_state, gamma_state, epsilon) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
            let gamma = checkpointer.retrieve_node_output::<FlexTensor>(gamma_state);
            let (x_shape, gamma_shape) = (x.shape(), gamma.shape());
            let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
            let g = layer_norm_kernels::backward(
                f32_slice(&x),
                f32_slice(&gamma),
                f32_slice(&gy),
                epsilon,
            );
            let values = (g.x, [g.gamma, g.beta]);
            let parents = ops.parents.map(|node| node.map(|n| n.id));
            register_input_and_channel_grads(grads, parents, values, gamma_shape, |dx| {
                FlexTensor::from_data(TensorData::new(dx, x_shape))
            });
        })
    }
}

/// Registers the gradients of an operation of an input and two per-channel parameters (a
/// LayerNorm's gamma and beta, in either layout) for those of its parents that are tracked:
/// the parameters' from their values, `dx` making the input's tensor from its values.
fn register_input_and_channel_grads(
    grads: &mut Gradients,
    [node_x, node_a, node_b]: [Option<NodeId>; 3],
    (dx_values, params): (Vec<f32>, [Vec<f32>; 2]),
    param_shape: burn::tensor::Shape,
    dx: impl FnOnce(Vec<f32>) -> FlexTensor,
) {
    if let Some(id) = node_x {
        grads.register::<Flex>(id, dx(dx_values));
    }
    for (node, values) in [node_a, node_b].into_iter().zip(params) {
        if let Some(id) = node {
            let grad = FlexTensor::from_data(TensorData::new(values, param_shape.clone()));
            grads.register::<Flex>(id, grad);
        }
    }
}

/// [`LayerNormBackward`] over the channels of an NCHW-shaped tensor: computed in the layout
/// its input has (the output gradient copied to that layout when it differs), the input's
/// gradient in that layout too.
#[derive(Debug)]
struct LayerNorm2dBackward;

impl Backward<Flex, 3> for LayerNorm2dBackward {
    type State = (NodeId, NodeId, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::LayerNorm, Phase::Backward, || {
            let gy = grads.consume::<Flex>(&ops.node);
            let (x_state, gamma_state, epsilon) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
            let gamma = checkpointer.retrieve_node_output::<FlexTensor>(gamma_state);
            let gamma_shape = gamma.shape();
            let gamma = gamma.to_contiguous();
            let [n, c, h, w] = x.shape().dims();
            let (g, channels_last) = match channels_last_values(&x) {
                Some(x_last) => {
                    let gy_last = channels_last_contiguous(gy);
                    let g = layer_norm_kernels::backward(
                        x_last,
                        f32_slice(&gamma),
                        f32_slice(&gy_last),
                        epsilon,
                    );
                    (g, true)
                }
                None => {
                    let (x, gy) = (x.to_contiguous(), gy.to_contiguous());
                    let g = layer_norm_kernels::backward_channels_first(
                        f32_slice(&x),
                        f32_slice(&gamma),
                        f32_slice(&gy),
                        epsilon,
                        h * w,
                    );
                    (g, false)
                }
            };
            let values = (g.x, [g.gamma, g.beta]);
            let parents = ops.parents.map(|node| node.map(|n| n.id));
            register_input_and_channel_grads(grads, parents, values, gamma_shape, |dx| {
                if channels_last {
                    channels_last_tensor(dx, [n, c, h, w])
                } else {
                    FlexTensor::from_data(TensorData::new(dx, [n, c, h, w]))
                }
            });
        })
    }
}

/// [`TrainOps::scale_rows`]'s backward: both gradients in one parallel pass.
#[derive(Debug)]
struct ScaleRowsBackward;

impl Backward<Flex, 2> for ScaleRowsBackward {
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_w, node_s] = ops.parents.map(|node| node.map(|n| n.id));
        let g = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (w_state, s_state) = ops.state;
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_state);
        let s = checkpointer.retrieve_node_output::<FlexTensor>(s_state);
        let (w_shape, s_shape) = (w.shape(), s.shape());
        let (w, s) = (w.to_contiguous(), s.to_contiguous());
        let (dw, ds) = row_scale_kernels::backward(f32_slice(&w), f32_slice(&s), f32_slice(&g));
        if let Some(id) = node_w {
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dw, w_shape)));
        }
        if let Some(id) = node_s {
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(ds, s_shape)));
        }
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::Gelu, Phase::Backward, || {
            let [node_x] = ops.parents;
            let gy = grads.consume::<Flex>(&ops.node).to_contiguous();
            let x = checkpointer.retrieve_node_output::<FlexTensor>(ops.state);
            if let Some(node) = node_x {
                let shape = x.shape();
                let x = x.to_contiguous();
                let dx = gelu_kernels::backward(f32_slice(&x), f32_slice(&gy));
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
            }
        })
    }
}

/// The gradients of `residual + gamma · x`: the output gradient for the residual as it lies,
/// and for `x` and `gamma` one parallel pass over it read channels-last (copied to that layout
/// first when it is not).
#[derive(Debug)]
struct LayerScaleBackward;

impl Backward<Flex, 3> for LayerScaleBackward {
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::LayerScale, Phase::Backward, || {
            let [node_x, node_gamma, node_residual] = ops.parents;
            let gy = grads.consume::<Flex>(&ops.node);
            let (x_state, gamma_state) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
            let gamma = checkpointer.retrieve_node_output::<FlexTensor>(gamma_state);
            if let Some(node) = node_residual {
                grads.register::<Flex>(node.id, gy.clone());
            }
            if node_x.is_none() && node_gamma.is_none() {
                return;
            }
            let (x_shape, gamma_shape) = (x.shape(), gamma.shape());
            let (x, gamma) = (contiguous_f32(x), contiguous_f32(gamma));
            let gy_last = channels_last_contiguous(gy);
            let g = layer_scale_kernels::backward(
                f32_slice(&x),
                f32_slice(&gamma),
                f32_slice(&gy_last),
            );
            if let Some(node) = node_x {
                let grad = FlexTensor::from_data(TensorData::new(g.x, x_shape));
                grads.register::<Flex>(node.id, grad);
            }
            if let Some(node) = node_gamma {
                let grad = FlexTensor::from_data(TensorData::new(g.gamma, gamma_shape));
                grads.register::<Flex>(node.id, grad);
            }
        })
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = (NodeId, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        op_profile::timed(OpKind::Attention, Phase::Backward, || {
            let [node_qkv] = ops.parents;
            let gy = grads.consume::<Flex>(&ops.node);
            let (qkv_state, heads) = ops.state;
            let qkv = checkpointer.retrieve_node_output::<FlexTensor>(qkv_state);
            if let Some(node) = node_qkv {
                let dtype = qkv.dtype();
                let (qkv, gy) = (contiguous_f32(qkv), contiguous_f32(gy));
                let shape = attention_shape(&qkv, heads);
                let g = attention_kernels::backward(f32_slice(&qkv), f32_slice(&gy), shape);
                let g = FlexTensor::from_data(TensorData::new(g, qkv.shape()));
                grads.register::<Flex>(node.id, cast_from_f32(g, dtype));
            }
        })
    }
}

/// `t` as a contiguous f32 tensor (cast when it is another float type).
fn contiguous_f32(t: FlexTensor) -> FlexTensor {
    match t.dtype() {
        DType::F32 => t.to_contiguous(),
        _ => Flex::float_cast(t, FloatDType::F32).to_contiguous(),
    }
}

/// An f32 result in the caller's `dtype`.
fn cast_from_f32(t: FlexTensor, dtype: DType) -> FlexTensor {
    match dtype {
        DType::F32 => t,
        other => Flex::float_cast(t, other.into()),
    }
}

/// The attention shape of a `[b, n, 3·heads·dh]` projection.
fn attention_shape(qkv: &FlexTensor, heads: usize) -> AttentionShape {
    let [batch, tokens, three_d] = qkv.shape().dims();
    assert!(
        heads > 0 && three_d % (3 * heads) == 0,
        "a packed QKV projection of width {three_d} does not split into 3 × {heads} heads"
    );
    AttentionShape {
        batch,
        tokens,
        heads,
        head_dim: three_d / (3 * heads),
    }
}

/// H·W of an NCHW shape.
fn plane_size(shape: &burn::tensor::Shape) -> usize {
    shape.dims::<4>()[2..].iter().product()
}

/// A 2-D weight as the linear kernels read it: as it is when row-major or (f32) the transpose
/// of a row-major matrix (ViT's packed attention projection), else a row-major copy.
fn linear_weight(w: FlexTensor) -> (FlexTensor, WeightLayout) {
    let [d_in, _] = w.shape().dims();
    if w.is_contiguous() {
        return (w, WeightLayout::RowMajor);
    }
    let layout = w.layout();
    if w.dtype() == DType::F32
        && layout.start_offset() == 0
        && layout.strides() == [1, d_in as isize]
        && w.storage::<f32>().len() == w.shape().num_elements()
    {
        return (w, WeightLayout::Transposed);
    }
    (w.to_contiguous(), WeightLayout::RowMajor)
}

/// The values of a weight from [`linear_weight`].
fn weight_values(w: &FlexTensor, layout: WeightLayout) -> Weight<'_> {
    match layout {
        WeightLayout::RowMajor => Weight::RowMajor(f32_slice(w)),
        WeightLayout::Transposed => Weight::Transposed(w.storage::<f32>()),
    }
}

/// The values of a contiguous f32 tensor. The public entry points ([`super::gelu`],
/// [`super::layer_norm`], [`super::adamw_update`]) only route f32 tensors here, and the others
/// make them so ([`contiguous_f32`]).
fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused operations are only called with contiguous f32 tensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output gradient another tensor still holds is copied before it is masked in place,
    /// in its own dtype (f32, or bf16 for a bf16-stored activation's); one held alone is
    /// taken as it is, without a copy.
    #[test]
    fn owned_stored_copies_only_shared_values_in_their_dtype() {
        let values = [1.0f32, -2.0, 3.5, 0.25];
        let bf16_values: Vec<half::bf16> =
            values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let tensors = [
            FlexTensor::from_data(TensorData::new(values.to_vec(), [2, 2])),
            FlexTensor::from_data(TensorData::new(bf16_values, [2, 2])),
        ];
        let widened = |t: &FlexTensor| match stored_values(t).unwrap() {
            Stored::F32(v) => v.to_vec(),
            Stored::Bf16(v) => v.iter().map(|b| b.to_f32()).collect(),
        };
        for t in tensors {
            let dtype = t.dtype();
            let held = t.clone();
            let mut owned = owned_stored(t);
            assert_eq!(owned.dtype(), dtype);
            match owned_values(&mut owned) {
                StoredMut::F32(v) => v.fill(0.0),
                StoredMut::Bf16(v) => v.fill(half::bf16::ZERO),
            }
            assert_eq!(widened(&held), values, "{dtype:?}: the held values changed");
            assert_eq!(widened(&owned), [0.0; 4], "{dtype:?}");

            let first = |t: &FlexTensor| match stored_values(t).unwrap() {
                Stored::F32(v) => v.as_ptr() as usize,
                Stored::Bf16(v) => v.as_ptr() as usize,
            };
            let at = first(&held);
            assert_eq!(
                first(&owned_stored(held)),
                at,
                "{dtype:?}: copied a lone tensor"
            );
        }
    }
}
