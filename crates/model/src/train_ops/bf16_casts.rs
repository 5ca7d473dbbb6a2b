//! bf16 mixed precision on the backends that run burn's own operations (tch, cuda, wgpu): while
//! it is on, each convolution and matmul of the backbones casts its f32 inputs to bf16 and its
//! result back to f32 — PyTorch autocast's rule for these ops — so weights, optimizer state,
//! norms, softmax, losses and the ArcFace/XBM heads stay f32. Autodiff's backward of a cast is
//! the opposite cast, so the gradient products run in bf16 too and arrive in f32.
//!
//! flex does not come here: there bf16 products run inside our f32 kernels on AMX tiles
//! ([`super::gemm_views`]), which is faster than flex's bf16 tensors (computed through f32).
//! Casting at each product keeps the rest of the model untouched, at the price of a cast pass
//! over each product's inputs and output; libtorch's own autocast keeps activations in bf16
//! between ops instead, which this cannot do without bf16 norms.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

static CAST_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Turns the casts on or off for this process (every model on a non-flex device); through
/// [`super::set_training_precision_for`].
pub(super) fn set_enabled(on: bool) {
    CAST_PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether [`set_enabled`] turned the casts on.
pub(super) fn enabled() -> bool {
    CAST_PRODUCTS.load(Ordering::Relaxed)
}

/// `conv2d(x, weight) + bias` with bf16 inputs and output, as f32 tensors.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    burn::tensor::module::conv2d(
        x.cast(DType::BF16),
        weight.cast(DType::BF16),
        bias.map(|b| b.cast(DType::BF16)),
        options,
    )
    .cast(DType::F32)
}

/// `a · b` with bf16 inputs and output, as f32 tensors.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    a.cast(DType::BF16)
        .matmul(b.cast(DType::BF16))
        .cast(DType::F32)
}

/// Whether a product of these f32 inputs takes the bf16 casts now.
pub(super) fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    enabled() && x.dtype() == DType::F32
}
