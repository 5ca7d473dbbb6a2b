//! The f32 forward pass of a linear layer, `activation(x · weight + bias)` over the rows of a
//! 2-D `x`, in one pass per block of rows: what inference on flex runs for every `Linear`
//! (ConvNeXt's and ViT's MLPs, ViT's attention projections).
//!
//! burn's `matmul` then `add` then `gelu` is three passes over an output as large as
//! `[32·56·56, 384·4]` floats (ConvNeXt's first MLP layer): a zero-filled matmul output, a
//! broadcast bias addition and the activation. Here each block of rows starts as the bias rows,
//! the GEMM (`gemm` crate) accumulates onto them, and the activation runs while the block is in
//! cache. Blocks run in parallel; a product with fewer blocks than threads splits its GEMM
//! instead.
//!
//! Training runs the same forward pass (without the activation, which is its own tracked
//! operation) and its three gradients: [`matmul_input_grad`] and [`matmul_weight_grad`] through
//! the same GEMM entry point, so that bf16 products (`set_matmul_precision`) reach the backward
//! pass too, and [`bias_grad`]'s column sums. burn's broadcast bias addition and its gradient
//! (a reduction over rows) were single-threaded passes over every linear output of ViT-B/32.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::gelu_kernels;
use super::gemm_views::{
    MatmulPrecision, Matrix, MatrixRef, Operand, gemm, gemm_into_uninit, matmul_precision,
};
use super::vectorized::vectorized;

/// What follows the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearActivation {
    Identity,
    /// Exact (erf) GELU.
    Gelu,
}

/// Output values per block of rows: a block's output stays in L2 for its activation.
const BLOCK_VALUES: usize = 1 << 16;

/// The fewest rows per block: each block's GEMM packs the whole weight again, which for ViT's
/// `[768, 3072]` MLP weight at 21 rows per block cost more than the block's product
/// (ViT-B/32 embed 22.2 → 17.5 img/s).
const MIN_BLOCK_ROWS: usize = 256;

/// The fewest rows per block, where there are enough rows, when the `gemm` crate multiplies
/// in f32 by a weight of at least [`LARGE_WEIGHT_VALUES`] (and so packs it again for every
/// block; bf16 products pack it once per layer): on an AVX-512 Xeon, ViT-B/32's linear layers
/// at 1,600 rows ran 3–14 % faster in two blocks of 800 than in six of 267.
const MIN_F32_BLOCK_ROWS: usize = 768;

/// Weights this large (4 MiB of f32: ViT-B/32's qkv and MLP weights, ConvNeXt-tiny's last
/// stage) take [`MIN_F32_BLOCK_ROWS`]. Smaller ones keep blocks that stay in L2: with every
/// layer in large blocks, ConvNeXt-tiny's f32 training step (100,352 rows in its first stage)
/// lost about 7 %.
const LARGE_WEIGHT_VALUES: usize = 1 << 20;

/// A linear layer's `[d_in, d_out]` weight, as its values lie in memory.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    /// Row-major `[d_in, d_out]` (burn's `Linear`).
    RowMajor(&'a [f32]),
    /// A row-major `[d_out, d_in]` seen transposed: PyTorch's layout, which ViT's packed
    /// attention projection keeps (copying it to row-major cost a pass over 21 M weights in
    /// every forward and backward pass of ViT-B/32).
    Transposed(&'a [f32]),
}

impl<'a> Weight<'a> {
    fn view(self, d_in: usize, d_out: usize) -> MatrixRef<'a> {
        match self {
            Weight::RowMajor(w) => MatrixRef::row_major(w, d_in, d_out),
            Weight::Transposed(w) => MatrixRef::transposed(w, d_in, d_out),
        }
    }

    fn len(self) -> usize {
        match self {
            Weight::RowMajor(w) | Weight::Transposed(w) => w.len(),
        }
    }
}

/// `activation(x · weight + bias)`: `x` is `[rows, d_in]`, `weight` `[d_in, d_out]`, `bias`
/// `[d_out]`; the result is `[rows, d_out]`.
pub fn forward(
    x: &[f32],
    weight: Weight<'_>,
    bias: &[f32],
    rows: usize,
    activation: LinearActivation,
) -> Vec<f32> {
    let block_rows = rows_per_block(weight, rows, bias.len());
    forward_blocks(x, weight, bias, None, rows, activation, block_rows)
}

/// `residual + (x · weight + bias)`, `residual` shaped as the result: a transformer block's
/// projection back onto its residual stream. Each block of rows starts as `residual + bias`
/// and the product accumulates onto it — no separate pass over the sum (24 such passes over
/// `[1600, 768]` in a ViT-B/32 batch of 32, 2 % of its forward time).
pub fn forward_onto(
    x: &[f32],
    weight: Weight<'_>,
    bias: &[f32],
    residual: &[f32],
    rows: usize,
) -> Vec<f32> {
    assert_eq!(residual.len(), rows * bias.len());
    let block_rows = rows_per_block(weight, rows, bias.len());
    forward_blocks(
        x,
        weight,
        bias,
        Some(residual),
        rows,
        LinearActivation::Identity,
        block_rows,
    )
}

/// The block size [`forward`] picks for this product.
fn rows_per_block(weight: Weight<'_>, rows: usize, d_out: usize) -> usize {
    let threads = rayon::current_num_threads();
    let repacked_large_weight =
        matmul_precision() == MatmulPrecision::F32 && weight.len() >= LARGE_WEIGHT_VALUES;
    match repacked_large_weight {
        true => f32_block_rows(rows, d_out, threads),
        false => block_rows(rows, d_out, threads, MIN_BLOCK_ROWS),
    }
}

/// [`block_rows`] for f32 products: blocks of at least [`MIN_F32_BLOCK_ROWS`] when there are
/// rows enough for one per thread, else as for bf16 (two blocks of 200 rows beat one block of
/// 400 split inside the GEMM: a ViT-B/32 pass of 8 images).
fn f32_block_rows(rows: usize, d_out: usize, threads: usize) -> usize {
    let large = block_rows(rows, d_out, threads, MIN_F32_BLOCK_ROWS);
    if rows.div_ceil(large) >= threads {
        large
    } else {
        block_rows(rows, d_out, threads, MIN_BLOCK_ROWS)
    }
}

/// Rows per block: about [`BLOCK_VALUES`] outputs, at least `min_rows` rows, and, when there
/// are at least as many blocks as `threads`, a multiple of `threads` blocks of equal size, so
/// that no thread gets one more block than another (ViT-B/32 at batch 32 has 1,600 rows:
/// 256-row blocks made seven, four on one thread and three on the other).
fn block_rows(rows: usize, d_out: usize, threads: usize, min_rows: usize) -> usize {
    let target = (BLOCK_VALUES / d_out.max(1)).max(min_rows);
    let blocks = rows.div_ceil(target.max(1));
    let threads = threads.max(1);
    if blocks < threads {
        return target;
    }
    let blocks = (blocks / threads) * threads;
    rows.div_ceil(blocks)
}

/// [`forward`] with `block_rows` rows per block.
pub fn forward_in_blocks(
    x: &[f32],
    weight: Weight<'_>,
    bias: &[f32],
    rows: usize,
    activation: LinearActivation,
    block_rows: usize,
) -> Vec<f32> {
    forward_blocks(x, weight, bias, None, rows, activation, block_rows)
}

/// [`forward`], or [`forward_onto`] with a `residual`, in blocks of `block_rows` rows.
fn forward_blocks(
    x: &[f32],
    weight: Weight<'_>,
    bias: &[f32],
    residual: Option<&[f32]>,
    rows: usize,
    activation: LinearActivation,
    block_rows: usize,
) -> Vec<f32> {
    assert!(block_rows > 0);
    let d_out = bias.len();
    let d_in = x.len().checked_div(rows).unwrap_or(0);
    assert_eq!(x.len(), rows * d_in);
    assert_eq!(weight.len(), d_in * d_out);
    let len = rows * d_out;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let blocks = rows.div_ceil(block_rows);
    let split_gemm = blocks < rayon::current_num_threads();
    let parallelism = if split_gemm {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // The weight is shared by every block: under bf16 products it is packed once here.
    let weight = Operand::rhs(weight.view(d_in, d_out), true);
    let run = |(index, block): (usize, &mut [MaybeUninit<f32>])| {
        match residual {
            None => {
                for row in block.chunks_mut(d_out) {
                    for (v, &b) in row.iter_mut().zip(bias) {
                        v.write(b);
                    }
                }
            }
            Some(residual) => {
                let residual = &residual[index * block_rows * d_out..][..block.len()];
                for (row, residual) in block.chunks_mut(d_out).zip(residual.chunks(d_out)) {
                    for ((v, &b), &r) in row.iter_mut().zip(bias).zip(residual) {
                        v.write(r + b);
                    }
                }
            }
        }
        // SAFETY: every element of `block` was just written, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        let block = unsafe { &mut *(block as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let block_len = block.len() / d_out;
        let x_block = &x[index * block_rows * d_in..][..block_len * d_in];
        gemm(
            Matrix::row_major(block, block_len, d_out),
            true,
            &Operand::F32(MatrixRef::row_major(x_block, block_len, d_in)),
            &weight,
            parallelism,
        );
        if activation == LinearActivation::Gelu {
            gelu_kernels::in_place(block);
        }
    };
    let out = &mut y.spare_capacity_mut()[..len];
    if split_gemm {
        out.chunks_mut(block_rows * d_out).enumerate().for_each(run);
    } else {
        out.par_chunks_mut(block_rows * d_out)
            .enumerate()
            .for_each(run);
    }
    // SAFETY: the blocks cover all `len` elements, and each block was written in full.
    unsafe { y.set_len(len) };
    y
}

/// The gradient of `x · weight` with respect to `x`: `gy · weightᵀ`, `[rows, d_in]`.
pub fn matmul_input_grad(
    gy: &[f32],
    weight: Weight<'_>,
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    product(
        MatrixRef::row_major(gy, rows, d_out),
        weight.view(d_in, d_out).t(),
    )
}

/// The gradient of `x · weight` with respect to `weight`, laid out as the weight is: `xᵀ · gy`
/// (`[d_in, d_out]`) for a row-major weight, `gyᵀ · x` (`[d_out, d_in]`) for a transposed one.
pub fn matmul_weight_grad(
    x: &[f32],
    gy: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    layout: WeightLayout,
) -> Vec<f32> {
    let (x, gy) = (
        MatrixRef::row_major(x, rows, d_in),
        MatrixRef::row_major(gy, rows, d_out),
    );
    match layout {
        WeightLayout::RowMajor => product(x.t(), gy),
        WeightLayout::Transposed => product(gy.t(), x),
    }
}

/// Which of [`Weight`]'s layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    RowMajor,
    Transposed,
}

/// The gradient of `x · weight + bias` with respect to `bias`: the column sums of `gy`
/// (`[rows, d_out]`), in f64 per parallel block of rows, then over the blocks.
pub fn bias_grad(gy: &[f32], d_out: usize) -> Vec<f32> {
    if d_out == 0 {
        return Vec::new();
    }
    let block = (BLOCK_VALUES / d_out).max(1) * d_out;
    let sums = gy
        .par_chunks(block)
        .map(|rows| {
            let mut sums = vec![0.0f64; d_out];
            vectorized(
                #[inline(always)]
                || {
                    for row in rows.chunks_exact(d_out) {
                        for (s, &v) in sums.iter_mut().zip(row) {
                            *s += v as f64;
                        }
                    }
                },
            );
            sums
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; d_out]);
    sums.into_iter().map(|v| v as f32).collect()
}

/// `lhs · rhs` into a new row-major matrix, the GEMM split across threads, written straight
/// into memory not zeroed first (a parallel zero-fill before it was a pass over every weight
/// gradient and input gradient of a ViT step; on the calling thread alone, before that, the
/// main thread's largest cost while the workers waited).
fn product(lhs: MatrixRef<'_>, rhs: MatrixRef<'_>) -> Vec<f32> {
    let (rows, cols) = (lhs.rows, rhs.cols);
    let len = rows * cols;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    gemm_into_uninit(
        &mut y.spare_capacity_mut()[..len],
        rows,
        cols,
        &Operand::F32(lhs),
        &Operand::F32(rhs),
        Parallelism::Rayon(0),
    );
    // SAFETY: `gemm_into_uninit` wrote all `len` elements.
    unsafe { y.set_len(len) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_even_per_thread() {
        // ViT-B/32 at batch 32: 1,600 rows of 3,072 → six blocks of 267 rows on two threads.
        assert_eq!(block_rows(1600, 3072, 2, MIN_BLOCK_ROWS), 267);
        assert_eq!(
            1600usize.div_ceil(block_rows(1600, 3072, 2, MIN_BLOCK_ROWS)) % 2,
            0
        );
        // Fewer blocks than threads: one block of the target size (the GEMM splits instead).
        assert_eq!(block_rows(50, 3072, 2, MIN_BLOCK_ROWS), MIN_BLOCK_ROWS);
        // Narrow outputs: about BLOCK_VALUES values per block (1,024 rows), rounded to 96
        // blocks for four threads.
        assert_eq!(block_rows(100_000, 64, 4, MIN_BLOCK_ROWS), 1042);
        assert_eq!(block_rows(10, 64, 1, MIN_BLOCK_ROWS), 10);
    }

    #[test]
    fn f32_blocks_are_large_where_rows_allow() {
        // ViT-B/32 at batch 32: one block of 800 rows per thread.
        assert_eq!(f32_block_rows(1600, 3072, 2), 800);
        assert_eq!(f32_block_rows(1600, 768, 2), 800);
        // A pass of 8 images (400 rows): two blocks of 200, as before.
        assert_eq!(f32_block_rows(400, 768, 2), 200);
        // One image (50 rows): the GEMM splits across threads, as before.
        assert_eq!(f32_block_rows(50, 3072, 2), MIN_BLOCK_ROWS);
        // Many rows: blocks of about 768 rows, an even number of them.
        assert_eq!(f32_block_rows(25_088, 1536, 2), 784);
    }

    /// `len` values in [-1, 1), spread by `multiplier`.
    fn pattern(len: usize, multiplier: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * multiplier) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// However the rows are blocked, each output is the same sum in the same order: the f32
    /// products give the same bits for every blocking the rules above make (the `gemm` crate's
    /// depth blocking depends on the inner dimension only once the output is wider than 64;
    /// a single row would take its matrix-vector path instead).
    #[test]
    fn f32_outputs_do_not_depend_on_the_blocking() {
        let (rows, d_in, d_out) = (1000, 600, 130);
        let (x, w) = (pattern(rows * d_in, 7919), pattern(d_in * d_out, 104_729));
        let bias: Vec<f32> = (0..d_out).map(|i| i as f32 / 100.0).collect();
        for (layout, weight) in [
            ("row-major", Weight::RowMajor(&w)),
            ("transposed", Weight::Transposed(&w)),
        ] {
            for activation in [LinearActivation::Identity, LinearActivation::Gelu] {
                let one = forward_in_blocks(&x, weight, &bias, rows, activation, rows);
                // Every blocking leaves at least two rows in its last block.
                for block in [7, 200, 256, 334, 500, 998] {
                    let blocked = forward_in_blocks(&x, weight, &bias, rows, activation, block);
                    assert!(
                        one.iter()
                            .zip(&blocked)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{layout} {activation:?}: blocks of {block} rows differ"
                    );
                }
            }
        }
    }

    /// `forward_onto` is `residual + forward(...)`, up to the rounding of where the residual
    /// joins the sum (first here, last there), over several blockings.
    #[test]
    fn forward_onto_adds_the_residual() {
        let (rows, d_in, d_out) = (900, 300, 96);
        let (x, w) = (pattern(rows * d_in, 7919), pattern(d_in * d_out, 104_729));
        let bias: Vec<f32> = (0..d_out).map(|i| i as f32 / 10.0 - 3.0).collect();
        let residual: Vec<f32> = (0..rows * d_out)
            .map(|i| ((i * 31) % 997) as f32 / 99.0 - 5.0)
            .collect();
        let weight = Weight::RowMajor(&w);
        let plain = forward(&x, weight, &bias, rows, LinearActivation::Identity);
        let onto = forward_onto(&x, weight, &bias, &residual, rows);
        for block in [rows, 64, 301] {
            let blocked = forward_blocks(
                &x,
                weight,
                &bias,
                Some(&residual),
                rows,
                LinearActivation::Identity,
                block,
            );
            assert_eq!(blocked, onto, "blocks of {block} rows");
        }
        for ((&p, &r), &o) in plain.iter().zip(&residual).zip(&onto) {
            let want = p + r;
            assert!(
                (o - want).abs() <= 1e-5 * (1.0 + p.abs() + r.abs()),
                "{o} vs {want}"
            );
        }
    }

    #[test]
    fn bias_grad_sums_columns_over_blocks() {
        let (rows, d_out) = (300, 1000);
        let gy: Vec<f32> = (0..rows * d_out)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let got = bias_grad(&gy, d_out);
        for (c, &g) in got.iter().enumerate() {
            let want: f64 = (0..rows).map(|r| gy[r * d_out + c] as f64).sum();
            assert!((g as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{c}");
        }
        assert_eq!(bias_grad(&[], 3), vec![0.0; 3]);
    }
}
