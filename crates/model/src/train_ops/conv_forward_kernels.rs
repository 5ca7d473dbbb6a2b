//! The f32 forward pass of a 2-D convolution (NCHW, contiguous) with its bias and activation
//! in the same pass: what an inference pass on flex runs once batch norm is folded into the
//! convolutions, and what a training pass on flex runs for a bias-free convolution.
//!
//! burn-flex's own convolution is correct but, on a BN-folded EfficientNet-Lite0 (batch 32),
//! spent more time around its GEMMs than in them: a separate bias pass and a separate ReLU6
//! pass (scalar, per element) over every output, zero-filled buffers, and a depthwise loop that
//! reads every other input value for a stride-2 layer. Here:
//! - **groups = 1**: per image, the GEMM (`gemm` crate) writes `weight · im2col(x)` (no im2col
//!   for a 1×1 stride-1 unpadded convolution), then one vectorised pass adds the bias — and the
//!   residual a ResNet block adds after its last convolution, when given — and applies the
//!   activation while the image's output is warm. The residual costs no pass of its own: it
//!   replaces a separate addition and ReLU over every block's output (5 % of a ResNet-50
//!   inference pass). Under bf16 products the output starts as the bias (+ residual) rows, the
//!   AMX GEMM accumulates onto them and applies the activation as each block is stored.
//!   Images run in parallel when there are at least as many as threads, else each GEMM is split.
//! - **depthwise** (groups = channels in = channels out): vectorised across channels, see
//!   [`super::depthwise_forward`].
//!
//! Other groupings return `None` and the caller runs burn's convolution.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::affine_kernels::Activation;
use super::conv_geometry::{ConvGeometry, im2col};
use super::depthwise_forward;
use super::gemm_views::{
    MatmulPrecision, Matrix, MatrixRef, Operand, f32_product_into, gemm_then, matmul_precision,
};
use super::vectorized::vectorized;

/// `activation(conv2d(x, weight) + bias + residual)`, shape `[batch, out_channels, out_h,
/// out_w]` (the residual's too), or `None` for a grouping these kernels do not cover (or a
/// residual on a depthwise convolution). `weight` is `[out_channels, in_channels / groups,
/// kernel_h, kernel_w]`, `bias` `[out_channels]`.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Option<Vec<f32>> {
    assert_eq!(x.len(), g.batch * g.in_channels * g.in_plane());
    assert!(bias.is_none_or(|b| b.len() == g.out_channels));
    assert!(residual.is_none_or(|r| r.len() == g.batch * g.out_channels * g.out_plane()));
    if g.is_depthwise() {
        if residual.is_some() {
            return None;
        }
        assert_eq!(weight.len(), g.out_channels * g.kernel_h * g.kernel_w);
        Some(depthwise_forward::forward(x, weight, bias, g, activation))
    } else if g.groups == 1 {
        assert_eq!(weight.len(), g.out_channels * g.col_rows());
        Some(dense(x, weight, bias, residual, g, activation))
    } else {
        None
    }
}

fn dense(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Vec<f32> {
    let (rows, p) = (g.col_rows(), g.out_plane());
    let across_images = g.batch >= rayon::current_num_threads();
    let inner = if across_images {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    };
    if matmul_precision() == MatmulPrecision::F32 {
        return product_then_epilogue(x, weight, bias, residual, g, activation, inner);
    }
    // The weight is shared by every image: under bf16 products it is packed once here.
    let weight = Operand::lhs(MatrixRef::row_major(weight, g.out_channels, rows), true);
    let run = |col: &mut Vec<f32>, n: usize, y_n: &mut [f32]| {
        let col_n = patches(x, n, g, col);
        gemm_then(
            Matrix::row_major(y_n, g.out_channels, p),
            bias.is_some() || residual.is_some(),
            &weight,
            &Operand::F32(MatrixRef::row_major(col_n, rows, p)),
            inner,
            activation,
        );
    };
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = vec![0.0; g.out_channels];
            &zeros
        }
    };
    images_from_bias(g.batch, p, bias, residual, run)
}

/// f32 products: each image's GEMM writes its output (no fill before it), then one pass adds
/// the bias (and the residual) and applies the activation while the image's output is warm.
/// Writing the bias rows before the product was 6 % of a ResNet-50 inference pass, and the
/// activation a second pass after it.
fn product_then_epilogue(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
    inner: Parallelism,
) -> Vec<f32> {
    let (rows, p, co) = (g.col_rows(), g.out_plane(), g.out_channels);
    let image_len = co * p;
    let weight = MatrixRef::row_major(weight, co, rows);
    let len = g.batch * image_len;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(image_len)
        .enumerate()
        .for_each_init(Vec::new, |col, (n, y_n)| {
            let rhs = patches(x, n, g, col);
            let y_n = f32_product_into(y_n, &weight, &MatrixRef::row_major(rhs, rows, p), inner);
            let residual_n = residual.map(|r| &r[n * image_len..][..image_len]);
            vectorized(
                #[inline(always)]
                || epilogue(y_n, p, bias, residual_n, activation),
            );
        });
    // SAFETY: each image's product wrote all of its `image_len` values, the images cover all
    // `len` elements, and `len` fits the capacity.
    unsafe { y.set_len(len) };
    y
}

/// Image `n`'s `[col_rows, out_plane]` patch matrix: the image itself for a plain pointwise
/// convolution, else its im2col in `col` (one buffer per task, see [`im2col`]).
fn patches<'a>(x: &'a [f32], n: usize, g: &ConvGeometry, col: &'a mut Vec<f32>) -> &'a [f32] {
    let in_image = g.in_channels * g.in_plane();
    let x_n = &x[n * in_image..][..in_image];
    if g.is_plain_pointwise() {
        x_n
    } else {
        im2col(x_n, g, col);
        col
    }
}

/// `y[r, i] = activation(y[r, i] + bias[r] + residual[r, i])` over rows of `plane` values.
#[inline(always)]
fn epilogue(
    y: &mut [f32],
    plane: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    activation: Activation,
) {
    match activation {
        Activation::Identity if bias.is_none() && residual.is_none() => {}
        Activation::Identity => epilogue_with(y, plane, bias, residual, |v| v),
        Activation::Relu => epilogue_with(y, plane, bias, residual, |v| v.max(0.0)),
        Activation::Relu6 => epilogue_with(y, plane, bias, residual, |v| v.clamp(0.0, 6.0)),
    }
}

#[inline(always)]
fn epilogue_with(
    y: &mut [f32],
    plane: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    f: impl Fn(f32) -> f32,
) {
    for (r, row) in y.chunks_mut(plane).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        match residual {
            Some(res) => {
                for (v, &s) in row.iter_mut().zip(&res[r * plane..][..plane]) {
                    *v = f(*v + b + s);
                }
            }
            None => {
                for v in row {
                    *v = f(*v + b);
                }
            }
        }
    }
}

/// A `[batch, bias.len(), plane]` buffer whose row `r` of each image starts as `bias[r]` (plus
/// the same values of `residual`, when given) when `op(col, n, image)` runs on image `n`; images
/// run in parallel, `col` is one scratch buffer per task. Each image is filled by the task that
/// then works on it, so there is no separate zeroing pass over the buffer.
fn images_from_bias(
    batch: usize,
    plane: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    op: impl Fn(&mut Vec<f32>, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let image_len = bias.len() * plane;
    let len = batch * image_len;
    let mut buffer: Vec<f32> = Vec::with_capacity(len);
    if image_len > 0 {
        buffer.spare_capacity_mut()[..len]
            .par_chunks_mut(image_len)
            .enumerate()
            .for_each_init(Vec::new, |col, (n, image)| {
                match residual {
                    None => {
                        for (values, &b) in image.chunks_mut(plane).zip(bias) {
                            for v in values {
                                v.write(b);
                            }
                        }
                    }
                    Some(residual) => {
                        let residual = &residual[n * image_len..][..image_len];
                        let rows = image.chunks_mut(plane).zip(residual.chunks(plane));
                        for ((values, r), &b) in rows.zip(bias) {
                            for (v, &r) in values.iter_mut().zip(r) {
                                v.write(r + b);
                            }
                        }
                    }
                }
                // SAFETY: every element of `image` was just written, and `MaybeUninit<f32>`
                // has the layout of `f32`.
                let image = unsafe { &mut *(image as *mut [MaybeUninit<f32>] as *mut [f32]) };
                op(col, n, image);
            });
    }
    // SAFETY: the loop above wrote all `len` elements (every image in full), and `len` fits the
    // capacity.
    unsafe { buffer.set_len(len) };
    buffer
}
