//! The f32 input gradient of a depthwise 2-D convolution (NCHW), vectorised across channels
//! ([`depthwise_blocks`]' layout); the output gradient read and the input gradient written
//! may be stored in bf16 ([`super::stored`]).
//!
//! `dx[i] = Σ_tap w[tap] · gy[o]` over the output pixels `o` whose tap reads input pixel `i`.
//! Looping over a plane's rows, as this did, left runs of 7–14 multiply-adds per setup on
//! ConvNeXt's and EfficientNet's small planes (a strided row touches every other value). Two
//! channel-blocked forms instead:
//! - **stride 1**: a correlation of the output gradient with the flipped kernel, padded by
//!   `dilation·(kernel − 1) − pad` — the forward kernel ([`depthwise_forward`]) computes it,
//!   with every sum in registers; NCHW or NHWC, in and out, as the forward kernel.
//! - **any other stride**: each block's output gradient is interleaved, and every output pixel
//!   adds `w[tap] · gy[o]` into a zero-padded `[h][w][LANES]` input-gradient buffer (one
//!   full-width multiply-add per tap, no bounds tests), whose interior is then copied back to
//!   the block's NCHW planes. Jobs of (image, channel block) run in parallel. NCHW only.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::activation_kernels::Activation;
use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::depthwise_blocks::{
    self, BlockKernel, LANES, Lanes, PaddedInput, PlaneElement, lanes, lanes_mut,
};
use super::depthwise_forward;
use super::stored::{Storage, Stored, StoredVec};
use super::vectorized::Simd;

/// `dL/dx` of a depthwise convolution (`g.is_depthwise()`), `[batch, channels, in_h, in_w]`
/// laid out as `gy` (`order`) and stored as `storage` says (NCHW only; a channels-last result
/// is f32); `weight` is `[channels, 1, kernel_h, kernel_w]`, `gy` f32 or bf16. `None` for a
/// channels-last `gy` of a strided convolution (the scatter form is NCHW only).
pub(super) fn input_grad(
    weight: &[f32],
    gy: Stored<'_>,
    g: &ConvGeometry,
    order: ChannelOrder,
    storage: Storage,
) -> Option<StoredVec> {
    match (flipped_correlation(g), order) {
        (Some(flipped), _) => Some(depthwise_forward::forward(
            gy,
            &flip_taps(weight, g.kernel_h * g.kernel_w),
            None,
            &flipped,
            Activation::Identity,
            order,
            storage,
        )),
        (None, ChannelOrder::First) => Some(match storage {
            Storage::F32 => StoredVec::F32(scattered(Simd::detect(), weight, gy, g)),
            Storage::Bf16 => StoredVec::Bf16(scattered(Simd::detect(), weight, gy, g)),
        }),
        (None, ChannelOrder::Last) => None,
    }
}

/// For a stride-1 depthwise convolution `g`, the geometry under which its input gradient is a
/// depthwise convolution of the output gradient with the flipped kernel: `dx[i] = Σ_k w[k] ·
/// gy[i + pad − k·d]`, a correlation with padding `d·(kernel − 1) − pad` (which must not be
/// negative). `None` for a stride above 1.
fn flipped_correlation(g: &ConvGeometry) -> Option<ConvGeometry> {
    if g.stride != [1, 1] {
        return None;
    }
    let pad =
        |dim: usize, kernel: usize| (g.dilation[dim] * (kernel - 1)).checked_sub(g.pad_begin[dim]);
    Some(ConvGeometry {
        in_h: g.out_h,
        in_w: g.out_w,
        out_h: g.in_h,
        out_w: g.in_w,
        pad_begin: [pad(0, g.kernel_h)?, pad(1, g.kernel_w)?],
        ..*g
    })
}

/// Each channel's kernel taps in reverse order (the kernel rotated by 180°).
fn flip_taps(weight: &[f32], taps: usize) -> Vec<f32> {
    weight
        .chunks_exact(taps)
        .flat_map(|w| w.iter().rev().copied())
        .collect()
}

/// The scatter form, for any stride (the tests run it on stride-1 geometries too), into f32
/// or bf16 (`T`).
fn scattered<T: PlaneElement>(
    simd: Simd,
    weight: &[f32],
    gy: Stored<'_>,
    g: &ConvGeometry,
) -> Vec<T> {
    let channels = g.in_channels;
    let taps = g.kernel_h * g.kernel_w;
    let block_weights = depthwise_blocks::block_weights(weight, channels, taps);
    let padded = PaddedInput::new(g);
    let grad_layout = PaddedInput::unpadded(g.out_h, g.out_w);
    let in_plane = g.in_plane();
    let len = g.batch * channels * in_plane;
    let mut dx: Vec<T> = Vec::with_capacity(len);
    let jobs =
        depthwise_blocks::plane_blocks(&mut dx.spare_capacity_mut()[..len], channels, in_plane);
    jobs.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(grad, sums), (n, block, planes)| {
            let lanes = planes.len() / in_plane;
            let c0 = block * LANES;
            grad_layout.fill_from(gy, ChannelOrder::First, n, channels, c0, lanes, grad);
            sums.clear();
            sums.resize(padded.height * padded.width * LANES, 0.0);
            depthwise_blocks::run(
                simd,
                Scatter {
                    grad,
                    w: &block_weights[block * taps * LANES..][..taps * LANES],
                    line_len: padded.width * LANES,
                    g,
                    sums,
                },
            );
            write_interior(sums, &padded, g, planes);
        },
    );
    // SAFETY: the jobs cover the buffer's `len` elements exactly once (every image, every
    // block of its planes), and `write_interior` wrote every element of each job's planes.
    unsafe { dx.set_len(len) };
    dx
}

/// Adds every output pixel's `w[tap] · gy` of one block into the padded buffer `sums`.
struct Scatter<'a> {
    /// The output gradient, `[out_h][out_w][LANES]`.
    grad: &'a [f32],
    /// The block's weights, `[tap][LANES]`.
    w: &'a [f32],
    line_len: usize,
    g: &'a ConvGeometry,
    /// `[height][width][LANES]`, the input gradient with its padding.
    sums: &'a mut [f32],
}

impl BlockKernel for Scatter<'_> {
    type Output = ();

    #[inline(always)]
    fn run<V: Lanes>(self) {
        let g = self.g;
        let step = g.stride[1] * LANES;
        let tap_step = g.dilation[1] * LANES;
        let row_len = g.out_w * LANES;
        for oh in 0..g.out_h {
            let grad_row = &self.grad[oh * row_len..][..row_len];
            for kh in 0..g.kernel_h {
                let ih = oh * g.stride[0] + kh * g.dilation[0];
                let line = &mut self.sums[ih * self.line_len..][..self.line_len];
                for kw in 0..g.kernel_w {
                    let wv = V::load(lanes(self.w, (kh * g.kernel_w + kw) * LANES));
                    let first = kw * tap_step;
                    for ow in 0..g.out_w {
                        let gv = V::load(lanes(grad_row, ow * LANES));
                        let at = first + ow * step;
                        let sum = V::load(lanes(line, at)).mul_add(wv, gv);
                        sum.store(lanes_mut(line, at));
                    }
                }
            }
        }
    }
}

/// Copies the input positions of the padded buffer `sums` to the block's NCHW `planes` (f32,
/// or rounded to bf16), and zeros where no tap reaches (input rows or columns past the padded
/// buffer's reach).
fn write_interior<T: PlaneElement>(
    sums: &[f32],
    padded: &PaddedInput,
    g: &ConvGeometry,
    planes: &mut [MaybeUninit<T>],
) {
    let (top, left) = (g.pad_begin[0], g.pad_begin[1]);
    let in_plane = g.in_plane();
    let zero = T::from_f32(0.0);
    if planes.len() == LANES * in_plane {
        // Whole rows through the transposes; zeros where no tap reached.
        let cols = g.in_w.min(padded.width.saturating_sub(left));
        for ih in 0..g.in_h {
            let (py, start) = (ih + top, ih * g.in_w);
            let mut written = 0;
            if py < padded.height {
                let line = &sums[(py * padded.width + left) * LANES..][..cols * LANES];
                T::deinterleave(line, planes, in_plane, start);
                written = cols;
            }
            for plane in planes.chunks_mut(in_plane) {
                for out in &mut plane[start + written..start + g.in_w] {
                    out.write(zero);
                }
            }
        }
        return;
    }
    for (lane, plane) in planes.chunks_mut(g.in_plane()).enumerate() {
        for (ih, row) in plane.chunks_mut(g.in_w).enumerate() {
            let py = ih + top;
            for (iw, out) in row.iter_mut().enumerate() {
                let px = iw + left;
                let v = if py < padded.height && px < padded.width {
                    sums[(py * padded.width + px) * LANES + lane]
                } else {
                    0.0
                };
                out.write(T::from_f32(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::depthwise_blocks::nchw_to_nhwc;
    use super::super::stored;
    use super::*;

    /// The scatter form on every instruction set this CPU has, against the definition, on a
    /// strided, dilated geometry whose last input row and column no tap reaches, and on a
    /// stride-1 one (where the production path is the flipped correlation, compared too).
    #[test]
    fn scatter_form_matches_the_definition() {
        let strided = ConvGeometry {
            batch: 2,
            in_channels: 19,
            in_h: 12,
            in_w: 11,
            out_channels: 19,
            kernel_h: 3,
            kernel_w: 3,
            out_h: 5,
            out_w: 5,
            stride: [2, 2],
            pad_begin: [1, 0],
            dilation: [1, 2],
            groups: 19,
        };
        let unit = ConvGeometry {
            in_h: 7,
            in_w: 9,
            kernel_h: 5,
            kernel_w: 3,
            out_h: 7,
            out_w: 9,
            stride: [1, 1],
            pad_begin: [2, 1],
            dilation: [1, 1],
            ..strided
        };
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        for g in [strided, unit] {
            let taps = g.kernel_h * g.kernel_w;
            let w: Vec<f32> = (0..g.in_channels * taps).map(|i| value(i + 3)).collect();
            let gy: Vec<f32> = (0..g.batch * g.in_channels * g.out_plane())
                .map(value)
                .collect();
            let mut want = vec![0.0f64; g.batch * g.in_channels * g.in_plane()];
            for plane in 0..g.batch * g.in_channels {
                let c = plane % g.in_channels;
                for (kh, kw) in
                    (0..g.kernel_h).flat_map(|kh| (0..g.kernel_w).map(move |kw| (kh, kw)))
                {
                    for (oh, ow) in (0..g.out_h).flat_map(|oh| (0..g.out_w).map(move |ow| (oh, ow)))
                    {
                        let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize
                            - g.pad_begin[0] as isize;
                        let iw = (ow * g.stride[1] + kw * g.dilation[1]) as isize
                            - g.pad_begin[1] as isize;
                        if (0..g.in_h as isize).contains(&ih) && (0..g.in_w as isize).contains(&iw)
                        {
                            let at = plane * g.in_plane() + ih as usize * g.in_w + iw as usize;
                            want[at] += f64::from(w[c * taps + kh * g.kernel_w + kw])
                                * f64::from(gy[(plane * g.out_h + oh) * g.out_w + ow]);
                        }
                    }
                }
            }
            #[allow(unused_mut)]
            let mut available = vec![Simd::Portable, Simd::detect()];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                available.push(Simd::Avx2);
            }
            let mut results: Vec<(String, Vec<f32>)> = available
                .into_iter()
                .map(|simd| {
                    let got: Vec<f32> = scattered(simd, &w, Stored::F32(&gy), &g);
                    (format!("{simd:?}"), got)
                })
                .collect();
            let f32_grad = |gy: &[f32], order| {
                input_grad(&w, Stored::F32(gy), &g, order, Storage::F32).map(StoredVec::into_f32)
            };
            let production = f32_grad(&gy, ChannelOrder::First).unwrap();
            // Channels-last: the same values, transposed (stride 1), or not covered.
            let gy_last = nchw_to_nhwc(&gy, g.batch, g.in_channels, g.out_plane());
            match f32_grad(&gy_last, ChannelOrder::Last) {
                Some(last) => assert_eq!(
                    last,
                    nchw_to_nhwc(&production, g.batch, g.in_channels, g.in_plane())
                ),
                None => assert_ne!(g.stride, [1, 1]),
            }
            // A bf16 output gradient, into bf16: the f32 path on its widened values, each
            // result rounded (either form).
            let gy_bf16 = stored::to_bf16(&gy);
            let from_rounded = f32_grad(&stored::rounded(&gy), ChannelOrder::First).unwrap();
            let bf16_grad = input_grad(
                &w,
                Stored::Bf16(&gy_bf16),
                &g,
                ChannelOrder::First,
                Storage::Bf16,
            );
            assert_eq!(
                bf16_grad,
                Some(StoredVec::Bf16(stored::to_bf16(&from_rounded)))
            );
            results.push(("production path".into(), production));
            for (name, got) in results {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(&want) {
                    assert!((f64::from(*a) - b).abs() <= 1e-4, "{name}: {a} vs {b}");
                }
            }
        }
    }
}
