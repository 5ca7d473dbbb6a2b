//! The f32 forward pass of a 2-D convolution (NCHW, contiguous) with its bias and activation
//! in the same pass: what an inference pass on flex runs once batch norm is folded into the
//! convolutions, and what a training pass on flex runs too (a frozen batch norm folded into the
//! convolution at each pass, [`crate::layers::conv_bn_act`]). Under bf16 products the input
//! and the output may be stored in bf16 ([`forward_stored`], [`super::stored`]).
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
//!   inference pass). Under bf16 products the AMX GEMM's store adds the bias (+ residual) and
//!   applies the activation as it writes each block: no pass of its own at all.
//!   Whole rounds of one image per thread run side by side; the images left over (fewer than
//!   the threads: a single photo, an odd batch) each split their im2col, GEMM and output pass
//!   across the threads.
//! - **depthwise** (groups = channels in = channels out): vectorised across channels, see
//!   [`super::depthwise_forward`].
//!
//! Other groupings return `None` and the caller runs burn's convolution.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use half::bf16;
use rayon::prelude::*;

use super::activation_kernels::Activation;
use super::conv_geometry::{ChannelOrder, ConvGeometry, im2col};
use super::depthwise_forward;
use super::gemm_views::{
    Epilogue, MatmulPrecision, MatrixRef, Operand, gemm_into_uninit, gemm_into_uninit_then,
    matmul_precision,
};
use super::stored::{Element, Storage, Stored, StoredVec};
use super::vectorized::vectorized;

/// [`forward`] of a depthwise convolution on a channels-last (NHWC) `x`, into a channels-last
/// result; `None` for any other grouping.
pub fn depthwise_channels_last(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Option<Vec<f32>> {
    if !g.is_depthwise() {
        return None;
    }
    assert_eq!(x.len(), g.batch * g.in_channels * g.in_plane());
    assert!(bias.is_none_or(|b| b.len() == g.out_channels));
    assert_eq!(weight.len(), g.out_channels * g.kernel_h * g.kernel_w);
    Some(depthwise_forward::forward_f32(
        Stored::F32(x),
        weight,
        bias,
        g,
        activation,
        ChannelOrder::Last,
    ))
}

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
    let y = forward_stored(
        Stored::F32(x),
        weight,
        bias,
        residual,
        g,
        activation,
        Storage::F32,
    )?;
    match y {
        StoredVec::F32(y) => Some(y),
        StoredVec::Bf16(_) => unreachable!("an f32 result was asked for"),
    }
}

/// [`forward`] from an input stored in f32 or bf16, into the storage asked for (see
/// [`super::stored`]): under bf16 products a 1×1 convolution reads a bf16 input as the AMX
/// packing's source and its store rounds a bf16 output, and a depthwise one widens and
/// rounds as it copies to and from its channel blocks.
pub(super) fn forward_stored(
    x: Stored<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
    storage: Storage,
) -> Option<StoredVec> {
    assert_eq!(x.len(), g.batch * g.in_channels * g.in_plane());
    assert!(bias.is_none_or(|b| b.len() == g.out_channels));
    assert!(residual.is_none_or(|r| r.len() == g.batch * g.out_channels * g.out_plane()));
    if g.is_depthwise() {
        if residual.is_some() {
            return None;
        }
        assert_eq!(weight.len(), g.out_channels * g.kernel_h * g.kernel_w);
        let order = ChannelOrder::First;
        Some(depthwise_forward::forward(
            x, weight, bias, g, activation, order, storage,
        ))
    } else if g.groups == 1 {
        assert_eq!(weight.len(), g.out_channels * g.col_rows());
        let bf16_products = matmul_precision() == MatmulPrecision::Bf16;
        Some(match (x, storage) {
            (Stored::F32(x), Storage::F32) if !bf16_products => {
                StoredVec::F32(dense_f32(x, weight, bias, residual, g, activation))
            }
            (Stored::F32(x), Storage::Bf16) if !bf16_products => {
                let y = dense_f32(x, weight, bias, residual, g, activation);
                StoredVec::Bf16(y.into_iter().map(bf16::from_f32).collect())
            }
            (Stored::Bf16(_), _) if !(bf16_products && g.is_plain_pointwise()) => {
                // Only a 1×1 convolution's bf16 products read bf16 as it lies; anything else
                // (never asked for by our models) widens it first.
                let x = x.widened();
                return forward_stored(
                    Stored::F32(&x),
                    weight,
                    bias,
                    residual,
                    g,
                    activation,
                    storage,
                );
            }
            // Only bf16 products get here.
            (_, Storage::F32) => {
                StoredVec::F32(dense_amx(x, weight, bias, residual, g, activation))
            }
            (_, Storage::Bf16) => {
                StoredVec::Bf16(dense_amx(x, weight, bias, residual, g, activation))
            }
        })
    } else {
        None
    }
}

/// An image split across the threads (see [`per_image`]) splits its GEMM too.
fn inner(split: bool) -> Parallelism {
    if split {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// A dense convolution with f32 products.
fn dense_f32(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Vec<f32> {
    let (rows, p, co) = (g.col_rows(), g.out_plane(), g.out_channels);
    let image_len = co * p;
    let residual_of = |n: usize| residual.map(|r| &r[n * image_len..][..image_len]);
    // Each image's GEMM writes its output (no fill before it), then one pass adds the bias
    // (and the residual) and applies the activation while the output is warm. Writing the
    // bias rows before the product was 6 % of a ResNet-50 inference pass, and the activation
    // a second pass after it.
    let weight = Operand::F32(MatrixRef::row_major(weight, co, rows));
    per_image(g.batch, image_len, |col, n, image, split| {
        let rhs = Operand::F32(MatrixRef::row_major(patches(x, n, g, col, split), rows, p));
        let y_n = gemm_into_uninit(image, co, p, &weight, &rhs, inner(split));
        let epilogue = Epilogue {
            row_bias: bias,
            addend: residual_of(n),
            activation,
        };
        if split {
            parallel_epilogue(y_n, p, epilogue);
        } else {
            vectorized(
                #[inline(always)]
                || epilogue.apply(y_n, p),
            );
        }
        y_n
    })
}

/// A dense convolution with bf16 products, into f32 or bf16 (`T`): the weight is shared by
/// every image and packed once here; the AMX store adds the bias (and the residual) and
/// applies the activation as each block of an image's output is written. A bf16 `x` must be a
/// plain pointwise convolution's (read as it lies, no im2col).
fn dense_amx<T: Element>(
    x: Stored<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Vec<T> {
    let (rows, p, co) = (g.col_rows(), g.out_plane(), g.out_channels);
    let image_len = co * p;
    let in_image = g.in_channels * g.in_plane();
    let weight = Operand::lhs(MatrixRef::row_major(weight, co, rows), true);
    per_image(g.batch, image_len, |col, n, image, split| {
        let x_n = match x {
            Stored::F32(x) => Stored::F32(patches(x, n, g, col, split)),
            Stored::Bf16(_) => {
                assert!(g.is_plain_pointwise(), "a bf16 input is read as it lies");
                x.slice(n * in_image, in_image)
            }
        };
        let rhs = Operand::stored_rows(x_n, rows, p);
        let epilogue = Epilogue {
            row_bias: bias,
            addend: residual.map(|r| &r[n * image_len..][..image_len]),
            activation,
        };
        gemm_into_uninit_then(image, co, p, &weight, &rhs, inner(split), epilogue)
    })
}

/// `batch` images of `image_len` values each: `write(col, n, image, split)` writes image `n` in
/// full and returns it, initialised (`col` is one scratch buffer per task). There is no zeroing
/// pass over the buffer first.
///
/// Whole rounds of one image per thread run side by side (`split` false); the images left over,
/// fewer than the threads, run one after another, each split across the threads (`split`
/// true). With every image its own task, a batch of 3 on 2 threads kept one thread idle for a
/// third of each convolution (Lite0 at batch 3 ran at 107 img/s, at batches 2 and 4 at 129–131).
fn per_image<T: Send>(
    batch: usize,
    image_len: usize,
    write: impl for<'a> Fn(&mut Vec<f32>, usize, &'a mut [MaybeUninit<T>], bool) -> &'a mut [T]
    + Sync
    + Send,
) -> Vec<T> {
    let len = batch * image_len;
    let mut y: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let run = |col: &mut Vec<f32>, n: usize, image: &mut [MaybeUninit<T>], split: bool| {
        let (start, size) = (image.as_ptr() as *const T, image.len());
        let written = write(col, n, image, split);
        // An initialised view of exactly this image's memory is what marks it written.
        assert!(written.as_ptr() == start && written.len() == size);
    };
    let together = batch - batch % rayon::current_num_threads().max(1);
    let (rounds, rest) = y.spare_capacity_mut()[..len].split_at_mut(together * image_len);
    rounds
        .par_chunks_mut(image_len)
        .enumerate()
        .for_each_init(Vec::new, |col, (n, image)| run(col, n, image, false));
    let mut col = Vec::new();
    for (i, image) in rest.chunks_mut(image_len).enumerate() {
        run(&mut col, together + i, image, true);
    }
    // SAFETY: every image's task got back an `&mut [f32]` over exactly that image's memory
    // (asserted), which exists only once its values are initialised; the images cover all
    // `len` elements, and `len` fits the capacity.
    unsafe { y.set_len(len) };
    y
}

/// Image `n`'s `[col_rows, out_plane]` patch matrix: the image itself for a plain pointwise
/// convolution, else its im2col in `col` (one buffer per task, see [`im2col`]; its channels in
/// parallel when `parallel`).
fn patches<'a>(
    x: &'a [f32],
    n: usize,
    g: &ConvGeometry,
    col: &'a mut Vec<f32>,
    parallel: bool,
) -> &'a [f32] {
    let in_image = g.in_channels * g.in_plane();
    let x_n = &x[n * in_image..][..in_image];
    if g.is_plain_pointwise() {
        x_n
    } else {
        im2col(x_n, g, col, parallel);
        col
    }
}

/// [`Epilogue::apply`] over blocks of rows in parallel: for an image split across the threads
/// (see [`per_image`]), so that its bias, residual and activation pass is not left to one
/// thread while the others wait (4 % of a batch-1 Lite0 pass ran so).
fn parallel_epilogue(y: &mut [f32], plane: usize, epilogue: Epilogue<'_>) {
    let Epilogue {
        row_bias,
        addend,
        activation,
    } = epilogue;
    if plane == 0 || (activation == Activation::Identity && row_bias.is_none() && addend.is_none())
    {
        return;
    }
    let rows = y.len() / plane;
    // A few blocks per thread, each at least 16k values (smaller ones cost more to hand out
    // than to run).
    let blocks = (rayon::current_num_threads() * 4).min((y.len() / 16_384).max(1));
    let block_rows = rows.div_ceil(blocks).max(1);
    y.par_chunks_mut(block_rows * plane)
        .enumerate()
        .for_each(|(i, block)| {
            let (first, count) = (i * block_rows, block.len() / plane);
            let epilogue = Epilogue {
                row_bias: row_bias.map(|b| &b[first..first + count]),
                addend: addend.map(|r| &r[first * plane..][..block.len()]),
                activation,
            };
            vectorized(
                #[inline(always)]
                || epilogue.apply(block, plane),
            );
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2) from a fixed sequence.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 252.25 - 2.0)
            .collect()
    }

    /// An image alone (its GEMM, im2col and epilogue split across the threads) gives the values
    /// it gets in a batch of one round of one image per thread and two images left over (split
    /// too): the epilogue's blocks of rows each take their own bias and residual rows, and the
    /// images left over their own image's.
    #[test]
    fn one_image_split_across_threads_matches_one_image_per_thread() {
        let threads = 4;
        let g = |batch| ConvGeometry {
            batch,
            in_channels: 8,
            in_h: 64,
            in_w: 64,
            out_channels: 24,
            kernel_h: 3,
            kernel_w: 3,
            out_h: 64,
            out_w: 64,
            stride: [1, 1],
            pad_begin: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let (one, all) = (g(1), g(threads + 2));
        let x = values(all.batch * all.in_channels * all.in_plane(), 1);
        let weight = values(all.out_channels * all.col_rows(), 2);
        let bias = values(all.out_channels, 3);
        let residual = values(all.batch * all.out_channels * all.out_plane(), 4);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            // Over 16k values an image, so that its epilogue runs in several blocks.
            assert!(all.out_channels * all.out_plane() >= 4 * 16_384);
            for activation in [Activation::Relu6, Activation::Identity] {
                let batched =
                    forward(&x, &weight, Some(&bias), Some(&residual), &all, activation).unwrap();
                let image = one.out_channels * one.out_plane();
                for n in 0..all.batch {
                    let x_n = &x[n * one.in_channels * one.in_plane()..]
                        [..one.in_channels * one.in_plane()];
                    let residual_n = &residual[n * image..][..image];
                    let alone = forward(
                        x_n,
                        &weight,
                        Some(&bias),
                        Some(residual_n),
                        &one,
                        activation,
                    )
                    .unwrap();
                    let want = &batched[n * image..][..image];
                    let worst = alone
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst <= 1e-3,
                        "image {n}, {activation:?}: differs by {worst}"
                    );
                }
            }
        });
    }
}
