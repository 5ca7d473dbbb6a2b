//! The channel-blocked layout the depthwise kernels share (forward pass and gradients).
//!
//! A depthwise convolution's planes can be as small as 7×7 (EfficientNet's last stages,
//! ConvNeXt's fourth stage), and rows that short leave a loop along the width with a few
//! multiply-adds per setup. The kernels take the channels [`LANES`] at a time instead (the
//! `nChw16c` blocking oneDNN uses): a block of planes is copied into a zero-padded
//! `[h][w][LANES]` buffer ([`PaddedInput`]), where every kernel tap of every pixel is one
//! full-width vector operation with no bounds tests whatever the stride, padding or plane size.
//! The vector operations are explicit AVX-512 or AVX2 + FMA instructions behind [`Lanes`],
//! picked at run time by [`run`]; written as array loops, the compiler kept the accumulators on
//! the stack and ran them 2.5x slower.

use std::mem::MaybeUninit;

use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::vectorized::Simd;

/// Channels per block: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

/// A computation over channel blocks, generic over the vector type it runs on.
pub(super) trait BlockKernel {
    type Output;
    fn run<V: Lanes>(self) -> Self::Output;
}

/// Runs `kernel` on `simd`'s vectors, which the CPU must have ([`Simd::detect`] or below).
pub(super) fn run<K: BlockKernel>(simd: Simd, kernel: K) -> K::Output {
    match simd {
        // SAFETY: `simd` is one the CPU has.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { run_avx512(kernel) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { run_avx2(kernel) },
        Simd::Portable => kernel.run::<[f32; LANES]>(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<K: BlockKernel>(kernel: K) -> K::Output {
    kernel.run::<x86::Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: BlockKernel>(kernel: K) -> K::Output {
    kernel.run::<x86::Avx2>()
}

/// A depthwise kernel's `[channels, 1, kh, kw]` weights as `[block][tap][lane]`, zero past the
/// last channel.
pub(super) fn block_weights(weight: &[f32], channels: usize, taps: usize) -> Vec<f32> {
    let mut blocked = vec![0.0f32; channels.div_ceil(LANES) * taps * LANES];
    for c in 0..channels {
        let (block, lane) = (c / LANES, c % LANES);
        for tap in 0..taps {
            blocked[(block * taps + tap) * LANES + lane] = weight[c * taps + tap];
        }
    }
    blocked
}

/// The jobs of an NCHW result `[images][channels][plane]`: one per image and block of
/// [`LANES`] channels, as `(image, block, its planes)` (the last block of an image may hold
/// fewer planes).
pub(super) fn plane_blocks(
    result: &mut [MaybeUninit<f32>],
    channels: usize,
    plane: usize,
) -> Vec<(usize, usize, &mut [MaybeUninit<f32>])> {
    let mut jobs = Vec::new();
    if plane == 0 || channels == 0 {
        return jobs;
    }
    for (n, image) in result.chunks_mut(channels * plane).enumerate() {
        for (block, planes) in image.chunks_mut(LANES * plane).enumerate() {
            jobs.push((n, block, planes));
        }
    }
    jobs
}

/// `[n][c][plane]` values as `[n][plane][c]` (the tests' channels-last copies).
#[cfg(test)]
pub(super) fn nchw_to_nhwc(values: &[f32], n: usize, c: usize, plane: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..plane {
                out[(i * plane + p) * c + ch] = values[(i * c + ch) * plane + p];
            }
        }
    }
    out
}

/// `values[start..start + LANES]` as an array.
#[inline(always)]
pub(super) fn lanes(values: &[f32], start: usize) -> &[f32; LANES] {
    values[start..start + LANES]
        .try_into()
        .expect("a slice of LANES values")
}

/// `values[start..start + LANES]` as a mutable array.
#[inline(always)]
pub(super) fn lanes_mut(values: &mut [f32], start: usize) -> &mut [f32; LANES] {
    (&mut values[start..start + LANES])
        .try_into()
        .expect("a slice of LANES values")
}

/// [`LANES`] f32 values in registers: one AVX-512 register, two AVX2 registers, or an array.
pub(super) trait Lanes: Copy {
    fn load(values: &[f32; LANES]) -> Self;
    fn store(self, values: &mut [f32; LANES]);
    /// `self + w · v`.
    fn mul_add(self, w: Self, v: Self) -> Self;
}

impl Lanes for [f32; LANES] {
    #[inline(always)]
    fn load(values: &[f32; LANES]) -> Self {
        *values
    }
    #[inline(always)]
    fn store(self, values: &mut [f32; LANES]) {
        *values = self;
    }
    #[inline(always)]
    fn mul_add(mut self, w: Self, v: Self) -> Self {
        for l in 0..LANES {
            self[l] += w[l] * v[l];
        }
        self
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{LANES, Lanes};

    /// Only ever constructed inside `#[target_feature(enable = "avx512f")]` code.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Lanes for Avx512 {
        #[inline(always)]
        fn load(values: &[f32; LANES]) -> Self {
            // SAFETY: 16 readable f32s; callers run on a CPU with AVX-512F (see the type).
            Self(unsafe { _mm512_loadu_ps(values.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, values: &mut [f32; LANES]) {
            // SAFETY: 16 writable f32s; AVX-512F as above.
            unsafe { _mm512_storeu_ps(values.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn mul_add(self, w: Self, v: Self) -> Self {
            // SAFETY: AVX-512F as above.
            Self(unsafe { _mm512_fmadd_ps(w.0, v.0, self.0) })
        }
    }

    /// Only ever constructed inside `#[target_feature(enable = "avx2,fma")]` code.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2([__m256; 2]);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn load(values: &[f32; LANES]) -> Self {
            // SAFETY: 16 readable f32s; callers run on a CPU with AVX2 and FMA (see the type).
            unsafe {
                Self([
                    _mm256_loadu_ps(values.as_ptr()),
                    _mm256_loadu_ps(values.as_ptr().add(8)),
                ])
            }
        }
        #[inline(always)]
        fn store(self, values: &mut [f32; LANES]) {
            // SAFETY: 16 writable f32s; AVX2 as above.
            unsafe {
                _mm256_storeu_ps(values.as_mut_ptr(), self.0[0]);
                _mm256_storeu_ps(values.as_mut_ptr().add(8), self.0[1]);
            }
        }
        #[inline(always)]
        fn mul_add(self, w: Self, v: Self) -> Self {
            // SAFETY: AVX2 and FMA as above.
            unsafe {
                Self([
                    _mm256_fmadd_ps(w.0[0], v.0[0], self.0[0]),
                    _mm256_fmadd_ps(w.0[1], v.0[1], self.0[1]),
                ])
            }
        }
    }
}

/// The zero-padded, channel-interleaved copy of one block's input: `[height][width][LANES]`,
/// with the input at row `top`, column `left`, and zeros wherever a tap reaches past the input
/// (padding, or lanes past the last channel).
pub(super) struct PaddedInput {
    pub height: usize,
    pub width: usize,
    top: usize,
    left: usize,
    in_h: usize,
    in_w: usize,
}

impl PaddedInput {
    /// The buffer every tap of `g`'s output pixels reads from.
    pub(super) fn new(g: &ConvGeometry) -> Self {
        // Every row/column a tap of an output pixel reaches, from the first padded one.
        let reach = |out: usize, dim: usize, kernel: usize| {
            (out.max(1) - 1) * g.stride[dim] + (kernel - 1) * g.dilation[dim] + 1
        };
        Self {
            height: reach(g.out_h, 0, g.kernel_h),
            width: reach(g.out_w, 1, g.kernel_w),
            top: g.pad_begin[0],
            left: g.pad_begin[1],
            in_h: g.in_h,
            in_w: g.in_w,
        }
    }

    /// An `h × w` plane interleaved as it is, without padding.
    pub(super) fn unpadded(h: usize, w: usize) -> Self {
        Self {
            height: h,
            width: w,
            top: 0,
            left: 0,
            in_h: h,
            in_w: w,
        }
    }

    /// Copies channels `c0..c0 + lanes` of image `n` of `x` (`channels` channels, laid out as
    /// `order` says) into `buffer`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_from(
        &self,
        x: &[f32],
        order: ChannelOrder,
        n: usize,
        channels: usize,
        c0: usize,
        lanes: usize,
        buffer: &mut Vec<f32>,
    ) {
        buffer.clear();
        buffer.resize(self.height * self.width * LANES, 0.0);
        let plane = self.in_h * self.in_w;
        let rows = self.in_h.min(self.height.saturating_sub(self.top));
        let cols = self.in_w.min(self.width.saturating_sub(self.left));
        for ih in 0..rows {
            let line =
                &mut buffer[((ih + self.top) * self.width + self.left) * LANES..][..cols * LANES];
            match order {
                ChannelOrder::First => {
                    let block = &x[(n * channels + c0) * plane..][..lanes * plane];
                    for lane in 0..lanes {
                        let source = &block[lane * plane + ih * self.in_w..][..cols];
                        for (pixel, &v) in line.chunks_exact_mut(LANES).zip(source) {
                            pixel[lane] = v;
                        }
                    }
                }
                ChannelOrder::Last => {
                    let source = &x[(n * plane + ih * self.in_w) * channels..][..cols * channels];
                    let pixels = line
                        .chunks_exact_mut(LANES)
                        .zip(source.chunks_exact(channels));
                    if lanes == LANES {
                        // A fixed-size copy: a few vector moves, not a `memcpy` call.
                        for (pixel, values) in pixels {
                            *lanes_mut(pixel, 0) = *self::lanes(values, c0);
                        }
                    } else {
                        for (pixel, values) in pixels {
                            pixel[..lanes].copy_from_slice(&values[c0..c0 + lanes]);
                        }
                    }
                }
            }
        }
    }
}
