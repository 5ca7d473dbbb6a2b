//! The f32 gradient kernels of a 2-D convolution (NCHW, contiguous), on plain slices; an
//! input or output gradient may be stored in bf16 ([`super::stored`]), widened as it is read.
//!
//! Two families, which are what our backbones train:
//! - **groups = 1** (pointwise 1×1, stems, patchify, ResNet's k×k): per image, an im2col matrix
//!   (skipped for a 1×1 stride-1 unpadded convolution, where the image already is that matrix)
//!   and one GEMM on the `gemm` crate (the GEMM burn-flex itself uses). The weight gradient
//!   accumulates over the batch in one partial per thread, the input gradient is independent per
//!   image, so both keep every core busy whatever the layer.
//! - **depthwise** (groups = channels in = channels out): vectorised across channels, 16 at a
//!   time, in `depthwise_weight_grad` and `depthwise_input_grad`.
//!
//! Other groupings return `None`, and the caller falls back to burn's composition.
//!
//! The bias's gradient (`bias_grad`) is the output gradient's channel sums, whatever the grouping.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use half::bf16;
use rayon::prelude::*;

use super::activation_kernels::Activation;
use super::conv_geometry::im2col;
pub use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::gemm_views::{
    Epilogue, MatmulPrecision, Matrix, MatrixRef, Operand, gemm, gemm_into_uninit_then,
    matmul_precision,
};
use super::stored::{Element, Storage, Stored, StoredVec};
use super::vectorized::{sum_f64, vectorized};
use super::{depthwise_input_grad, depthwise_weight_grad};

/// `dL/dweight`, shape `[out_channels, in_channels / groups, kernel_h, kernel_w]`, or `None` for
/// a grouping these kernels do not cover.
pub fn weight_grad(x: &[f32], gy: &[f32], g: &ConvGeometry) -> Option<Vec<f32>> {
    weight_grad_in((x, ChannelOrder::First), (gy, ChannelOrder::First), g)
}

/// [`weight_grad`] from an input and an output gradient each laid out as its order says;
/// `None` also for a channels-last operand of a non-depthwise convolution.
pub fn weight_grad_in(
    (x, x_order): (&[f32], ChannelOrder),
    (gy, gy_order): (&[f32], ChannelOrder),
    g: &ConvGeometry,
) -> Option<Vec<f32>> {
    weight_grad_stored((Stored::F32(x), x_order), (Stored::F32(gy), gy_order), g)
}

/// [`weight_grad_in`] from an input and an output gradient each stored in f32 or bf16
/// ([`super::stored`]).
pub(super) fn weight_grad_stored(
    x: (Stored<'_>, ChannelOrder),
    gy: (Stored<'_>, ChannelOrder),
    g: &ConvGeometry,
) -> Option<Vec<f32>> {
    let nchw = x.1 == ChannelOrder::First && gy.1 == ChannelOrder::First;
    if g.is_depthwise() {
        Some(depthwise_weight_grad::weight_grad(x, gy, g))
    } else if g.groups == 1 && nchw {
        Some(dense_weight_grad(x.0, gy.0, g))
    } else {
        None
    }
}

/// `dL/dx`, shape `[batch, in_channels, in_h, in_w]`, or `None` for a grouping these kernels do
/// not cover.
pub fn input_grad(weight: &[f32], gy: &[f32], g: &ConvGeometry) -> Option<Vec<f32>> {
    input_grad_in(weight, (gy, ChannelOrder::First), g)
}

/// [`input_grad`] from an output gradient laid out as its order says, in the same order;
/// `None` also for a channels-last one the kernels do not cover (only a stride-1 depthwise
/// convolution's is).
pub fn input_grad_in(
    weight: &[f32],
    (gy, order): (&[f32], ChannelOrder),
    g: &ConvGeometry,
) -> Option<Vec<f32>> {
    let dx = input_grad_stored(weight, (Stored::F32(gy), order), g, Storage::F32)?;
    Some(dx.into_f32())
}

/// [`input_grad_in`] from an output gradient stored in f32 or bf16, into the storage asked
/// for (a bf16-stored input's gradient is bf16, see [`super::stored`]).
pub(super) fn input_grad_stored(
    weight: &[f32],
    (gy, order): (Stored<'_>, ChannelOrder),
    g: &ConvGeometry,
    storage: Storage,
) -> Option<StoredVec> {
    if g.is_depthwise() {
        depthwise_input_grad::input_grad(weight, gy, g, order, storage)
    } else if g.groups == 1 && order == ChannelOrder::First {
        Some(dense_input_grad(weight, gy, g, storage))
    } else {
        None
    }
}

fn dense_weight_grad(x: Stored<'_>, gy: Stored<'_>, g: &ConvGeometry) -> Vec<f32> {
    // Only a 1×1 convolution's bf16 products read a bf16 input as it lies, and only bf16
    // products a bf16 output gradient; anything else (never asked for by our models) widens
    // them first.
    let (mut x_widened, mut gy_widened) = (Vec::new(), Vec::new());
    let x = match x {
        Stored::Bf16(_) if !(bf16_products() && g.is_plain_pointwise()) => {
            Stored::F32(x.f32_values(&mut x_widened))
        }
        x => x,
    };
    let gy = match gy {
        Stored::Bf16(_) if !bf16_products() => Stored::F32(gy.f32_values(&mut gy_widened)),
        gy => gy,
    };
    let rows = g.col_rows();
    let size = g.out_channels * rows;
    let chunks = g.batch.min(rayon::current_num_threads()).max(1);
    let per_chunk = g.batch.div_ceil(chunks);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0.0f32; size];
            let mut col = Vec::new();
            let images = chunk * per_chunk..((chunk + 1) * per_chunk).min(g.batch);
            for n in images {
                let x_n = x.slice(
                    n * g.in_channels * g.in_plane(),
                    g.in_channels * g.in_plane(),
                );
                let gy_n = gy.slice(
                    n * g.out_channels * g.out_plane(),
                    g.out_channels * g.out_plane(),
                );
                let col_n = match x_n {
                    Stored::F32(x_n) if g.is_plain_pointwise() => {
                        Operand::F32(MatrixRef::transposed(x_n, g.out_plane(), rows))
                    }
                    Stored::F32(x_n) => {
                        im2col(x_n, g, &mut col, false);
                        Operand::F32(MatrixRef::transposed(&col, g.out_plane(), rows))
                    }
                    Stored::Bf16(x_n) => {
                        Operand::Bf16View(MatrixRef::transposed(x_n, g.out_plane(), rows))
                    }
                };
                // dw[co, r] += Σ_p gy[co, p] · col[r, p]
                gemm(
                    Matrix::row_major(&mut dw, g.out_channels, rows),
                    true,
                    &Operand::stored_rows(gy_n, g.out_channels, g.out_plane()),
                    &col_n,
                    Parallelism::None,
                );
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0.0; size]);
    for partial in partials {
        for (a, b) in dw.iter_mut().zip(partial) {
            *a += b;
        }
    }
    dw
}

/// Whether the products are bf16 now (a bf16 input is read as it lies only then).
fn bf16_products() -> bool {
    matmul_precision() == MatmulPrecision::Bf16
}

/// The input gradient of a dense convolution, stored as `storage` says: a bf16 output
/// gradient read as it lies and a bf16 result written by the AMX store under bf16 products;
/// without them (never asked for by our models) through f32.
fn dense_input_grad(
    weight: &[f32],
    gy: Stored<'_>,
    g: &ConvGeometry,
    storage: Storage,
) -> StoredVec {
    if !bf16_products() {
        let mut widened = Vec::new();
        let gy = Stored::F32(gy.f32_values(&mut widened));
        let dx: Vec<f32> = dense_input_grad_into(weight, gy, g);
        return match storage {
            Storage::F32 => StoredVec::F32(dx),
            Storage::Bf16 => StoredVec::Bf16(dx.into_iter().map(bf16::from_f32).collect()),
        };
    }
    match storage {
        Storage::F32 => StoredVec::F32(dense_input_grad_into(weight, gy, g)),
        Storage::Bf16 => StoredVec::Bf16(dense_input_grad_into(weight, gy, g)),
    }
}

/// [`dense_input_grad`] into `T` (bf16 only under bf16 products).
fn dense_input_grad_into<T: Element>(weight: &[f32], gy: Stored<'_>, g: &ConvGeometry) -> Vec<T> {
    let rows = g.col_rows();
    let image = g.in_channels * g.in_plane();
    let len = g.batch * image;
    let mut dx: Vec<T> = Vec::with_capacity(len);
    // Parallel over images when there are enough of them, else inside each GEMM.
    let across_images = g.batch >= rayon::current_num_threads();
    let inner = if across_images {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    };
    // col[r, p] = Σ_co weight[co, r] · gy[co, p]; the weight is shared by every image.
    let w_t = Operand::lhs(MatrixRef::transposed(weight, rows, g.out_channels), true);
    // `col` is one patch-matrix buffer per thread, overwritten by each image's GEMM.
    let run = |col: &mut Vec<f32>, (n, dx_n): (usize, &mut [MaybeUninit<T>])| {
        let gy_n = gy.slice(
            n * g.out_channels * g.out_plane(),
            g.out_channels * g.out_plane(),
        );
        let gy_m = Operand::stored_rows(gy_n, g.out_channels, g.out_plane());
        if g.is_plain_pointwise() {
            // The product is the image's whole gradient: written, never zeroed first.
            let identity = Epilogue::activation(Activation::Identity);
            gemm_into_uninit_then(dx_n, rows, g.out_plane(), &w_t, &gy_m, inner, identity);
        } else {
            col.resize(rows * g.out_plane(), 0.0);
            gemm(
                Matrix::row_major(col, rows, g.out_plane()),
                false,
                &w_t,
                &gy_m,
                inner,
            );
            for v in dx_n.iter_mut() {
                v.write(T::from_f32(0.0));
            }
            // SAFETY: every element was just written, and `MaybeUninit<T>` has the layout of
            // `T`.
            let dx_n = unsafe { &mut *(dx_n as *mut [MaybeUninit<T>] as *mut [T]) };
            match T::as_f32_mut(dx_n) {
                Some(dx_n) => col2im_add(col, g, dx_n),
                None => {
                    let mut sums = vec![0.0f32; image];
                    col2im_add(col, g, &mut sums);
                    for (d, v) in dx_n.iter_mut().zip(sums) {
                        *d = T::from_f32(v);
                    }
                }
            }
        }
    };
    let out = &mut dx.spare_capacity_mut()[..len];
    if image > 0 {
        if across_images {
            out.par_chunks_mut(image)
                .enumerate()
                .for_each_init(Vec::new, run);
        } else {
            let mut col = Vec::new();
            out.chunks_mut(image)
                .enumerate()
                .for_each(|item| run(&mut col, item));
        }
    }
    // SAFETY: the images' chunks cover all `len` elements (none when `image` is 0), and `run`
    // wrote every element of each.
    unsafe { dx.set_len(len) };
    dx
}

/// Adds the patch-matrix gradient `col` back onto image gradient `dx_n` (im2col's adjoint).
fn col2im_add(col: &[f32], g: &ConvGeometry, dx_n: &mut [f32]) {
    let (p, taps) = (g.out_plane(), g.kernel_h * g.kernel_w);
    for c in 0..g.in_channels {
        let dx_plane = &mut dx_n[c * g.in_plane()..][..g.in_plane()];
        let col_c = &col[c * taps * p..(c + 1) * taps * p];
        g.for_each_tap_row(|row| {
            let src = &col_c[row.tap * p..(row.tap + 1) * p][row.out];
            for (d, &v) in dx_plane[row.input..]
                .iter_mut()
                .step_by(g.stride[1])
                .zip(src)
            {
                *d += v;
            }
        });
    }
}

/// The gradient of `conv2d(x, weight) + bias` with respect to `bias` for an NCHW output
/// gradient: each channel's sum over every image's plane, in f64 per plane (planes in
/// parallel), then over the images.
pub fn bias_grad(gy: &[f32], batch: usize, channels: usize, plane: usize) -> Vec<f32> {
    assert_eq!(gy.len(), batch * channels * plane);
    let mut sums = vec![0.0f64; channels];
    if plane > 0 {
        let plane_sums: Vec<f64> = gy
            .par_chunks(plane)
            .with_min_len((16_384 / plane).max(1))
            .map(|values| {
                vectorized(
                    #[inline(always)]
                    || sum_f64(values, |v| v as f64),
                )
            })
            .collect();
        for (i, sum) in plane_sums.into_iter().enumerate() {
            sums[i % channels] += sum;
        }
    }
    sums.into_iter().map(|v| v as f32).collect()
}
