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
//! In training, the product `x · weight` and its two gradients ([`matmul`],
//! [`matmul_input_grad`], [`matmul_weight_grad`]) run through the same GEMM entry point, so
//! that bf16 products (`set_matmul_precision`) reach the linear layers' backward pass too.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::gelu_kernels;
use super::gemm_views::{Matrix, MatrixRef, Operand, gemm};

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

/// `activation(x · weight + bias)`: `x` is `[rows, d_in]`, `weight` `[d_in, d_out]`, `bias`
/// `[d_out]`; the result is `[rows, d_out]`.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    activation: LinearActivation,
) -> Vec<f32> {
    let block_rows = (BLOCK_VALUES / bias.len().max(1)).max(MIN_BLOCK_ROWS);
    forward_in_blocks(x, weight, bias, rows, activation, block_rows)
}

/// [`forward`] with `block_rows` rows per block.
pub fn forward_in_blocks(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
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
    let weight = Operand::rhs(MatrixRef::row_major(weight, d_in, d_out), true);
    let run = |(index, block): (usize, &mut [MaybeUninit<f32>])| {
        for row in block.chunks_mut(d_out) {
            for (v, &b) in row.iter_mut().zip(bias) {
                v.write(b);
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

/// `x · weight`: `x` is `[rows, d_in]`, `weight` `[d_in, d_out]`.
pub fn matmul(x: &[f32], weight: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    product(
        MatrixRef::row_major(x, rows, d_in),
        MatrixRef::row_major(weight, d_in, d_out),
    )
}

/// The gradient of [`matmul`] with respect to `x`: `gy · weightᵀ`, `[rows, d_in]`.
pub fn matmul_input_grad(
    gy: &[f32],
    weight: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    product(
        MatrixRef::row_major(gy, rows, d_out),
        MatrixRef::transposed(weight, d_out, d_in),
    )
}

/// The gradient of [`matmul`] with respect to `weight`: `xᵀ · gy`, `[d_in, d_out]`.
pub fn matmul_weight_grad(
    x: &[f32],
    gy: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    product(
        MatrixRef::transposed(x, d_in, rows),
        MatrixRef::row_major(gy, rows, d_out),
    )
}

/// `lhs · rhs` into a new row-major matrix, the GEMM split across threads.
fn product(lhs: MatrixRef<'_>, rhs: MatrixRef<'_>) -> Vec<f32> {
    let (rows, cols) = (lhs.rows, rhs.cols);
    let mut y = vec![0.0; rows * cols];
    gemm(
        Matrix::row_major(&mut y, rows, cols),
        false,
        &Operand::F32(lhs),
        &Operand::F32(rhs),
        Parallelism::Rayon(0),
    );
    y
}
