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

use half::bf16;

use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::stored::{self, Stored};
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
pub(super) fn plane_blocks<T>(
    result: &mut [MaybeUninit<T>],
    channels: usize,
    plane: usize,
) -> Vec<(usize, usize, &mut [MaybeUninit<T>])> {
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

/// `line[p·LANES + l] = planes[l·plane + start + p]` for every pixel `p < line.len() / LANES`
/// and lane `l`: one row of [`LANES`] NCHW planes interleaved pixel by pixel, widened to f32
/// from bf16 planes (8×8 register transposes where the CPU has AVX2; written as loops, these
/// were scalar moves 64 bytes apart, about 40 % of the depthwise forward's samples in `perf`).
#[inline]
pub(super) fn interleave(planes: Stored<'_>, plane: usize, start: usize, line: &mut [f32]) {
    let cols = line.len() / LANES;
    assert!(start + cols <= plane && planes.len() >= LANES * plane);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the bounds are asserted above.
        return unsafe {
            match planes {
                Stored::F32(planes) => x86::interleave(planes, plane, start, line, cols),
                Stored::Bf16(planes) => x86::interleave_bf16(planes, plane, start, line, cols),
            }
        };
    }
    for p in 0..cols {
        for l in 0..LANES {
            line[p * LANES + l] = planes.get(l * plane + start + p);
        }
    }
}

/// The inverse of [`interleave`]: `planes[l·plane + start + p] = line[p·LANES + l]`.
#[inline]
pub(super) fn deinterleave(
    line: &[f32],
    planes: &mut [MaybeUninit<f32>],
    plane: usize,
    start: usize,
) {
    let cols = line.len() / LANES;
    assert!(start + cols <= plane && planes.len() >= LANES * plane);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vl") {
        // SAFETY: the CPU has AVX-512 VL (and so AVX2); bounds as in `interleave`.
        return unsafe { x86::deinterleave_avx512(line, planes, plane, start, cols) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: as in `interleave`.
        return unsafe { x86::deinterleave(line, planes, plane, start, cols) };
    }
    for p in 0..cols {
        for l in 0..LANES {
            planes[l * plane + start + p].write(line[p * LANES + l]);
        }
    }
}

/// [`deinterleave`] into bf16 planes, each value rounded to nearest even.
#[inline]
pub(super) fn deinterleave_bf16(
    line: &[f32],
    planes: &mut [MaybeUninit<bf16>],
    plane: usize,
    start: usize,
) {
    let cols = line.len() / LANES;
    assert!(start + cols <= plane && planes.len() >= LANES * plane);
    #[cfg(target_arch = "x86_64")]
    if stored::has_avx512_bf16() {
        // SAFETY: the CPU has AVX-512 BF16, BW and VL (and so AVX2); bounds as in
        // `interleave`.
        return unsafe { x86::deinterleave_bf16_avx512(line, planes, plane, start, cols) };
    }
    for p in 0..cols {
        for l in 0..LANES {
            planes[l * plane + start + p].write(bf16::from_f32(line[p * LANES + l]));
        }
    }
}

/// An element type block rows are copied back to NCHW planes in: f32 ([`deinterleave`]) or
/// bf16 ([`deinterleave_bf16`]).
pub(super) trait PlaneElement: stored::Element {
    fn deinterleave(line: &[f32], planes: &mut [MaybeUninit<Self>], plane: usize, start: usize);
}

impl PlaneElement for f32 {
    #[inline]
    fn deinterleave(line: &[f32], planes: &mut [MaybeUninit<Self>], plane: usize, start: usize) {
        deinterleave(line, planes, plane, start)
    }
}

impl PlaneElement for bf16 {
    #[inline]
    fn deinterleave(line: &[f32], planes: &mut [MaybeUninit<Self>], plane: usize, start: usize) {
        deinterleave_bf16(line, planes, plane, start)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{LANES, Lanes};

    /// 8 rows of 8 values transposed: `out[j][i] = rows[i][j]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// A mask of the first `count` (≤ 8) lanes, for `maskload`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes(count: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(count as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// [`super::interleave`] of f32 planes: eight pixels of eight channels per transpose, the
    /// last pixels (fewer than eight) through masked loads.
    ///
    /// # Safety
    /// The CPU has AVX2; `start + cols <= plane`, `planes` holds `LANES` planes of `plane`
    /// values and `line` at least `cols · LANES`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave(
        planes: &[f32],
        plane: usize,
        start: usize,
        line: &mut [f32],
        cols: usize,
    ) {
        let src = planes.as_ptr();
        // SAFETY: the caller's contract; `load` reads `count` values from `offset`, or eight
        // when they lie inside `planes` (`interleave_with`).
        unsafe {
            interleave_with(
                planes.len(),
                plane,
                start,
                line,
                cols,
                |offset, count, whole| {
                    if whole {
                        _mm256_loadu_ps(src.add(offset))
                    } else {
                        _mm256_maskload_ps(src.add(offset), first_lanes(count))
                    }
                },
            )
        }
    }

    /// [`super::interleave`] of bf16 planes, each value widened to f32 (exact: bf16 is the
    /// upper half of an f32).
    ///
    /// # Safety
    /// As [`interleave`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave_bf16(
        planes: &[bf16],
        plane: usize,
        start: usize,
        line: &mut [f32],
        cols: usize,
    ) {
        let src = planes.as_ptr().cast::<u16>();
        // SAFETY: as in `interleave`.
        unsafe {
            interleave_with(
                planes.len(),
                plane,
                start,
                line,
                cols,
                |offset, count, whole| {
                    let halves = if whole {
                        _mm_loadu_si128(src.add(offset).cast())
                    } else {
                        let mut first = [0u16; 8];
                        std::ptr::copy_nonoverlapping(src.add(offset), first.as_mut_ptr(), count);
                        _mm_loadu_si128(first.as_ptr().cast())
                    };
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
                },
            )
        }
    }

    /// The body of the two [`interleave`]s over planes of `len` values; `load(offset, count,
    /// whole)` returns the values from `offset` as f32, reading only the first `count` unless
    /// `whole` says eight lie inside the planes.
    ///
    /// # Safety
    /// As [`interleave`]; `load` reads nothing past `offset + count` when not `whole`.
    #[inline(always)]
    unsafe fn interleave_with(
        len: usize,
        plane: usize,
        start: usize,
        line: &mut [f32],
        cols: usize,
        load: impl Fn(usize, usize, bool) -> __m256,
    ) {
        let dst = line.as_mut_ptr();
        for p in (0..cols).step_by(8) {
            let count = (cols - p).min(8);
            // Eight values from every row's first pixel stay inside the planes (the values
            // past `count`, if any, belong to later pixels and are not stored), except near
            // their end, where only the first `count` are loaded.
            let whole = (LANES - 1) * plane + start + p + 8 <= len;
            for half in 0..LANES / 8 {
                let rows =
                    std::array::from_fn(|i| load((half * 8 + i) * plane + start + p, count, whole));
                // SAFETY: AVX2 (the caller's contract); pixels `p .. p + count` lie inside
                // `line` (the caller's bounds).
                unsafe {
                    for (j, v) in transpose8(rows).into_iter().take(count).enumerate() {
                        _mm256_storeu_ps(dst.add((p + j) * LANES + half * 8), v);
                    }
                }
            }
        }
    }

    /// [`super::deinterleave`]; the last pixels (fewer than eight) go through a copy on the
    /// stack (AMD's AVX2 masked stores cost a dozen cycles each).
    ///
    /// # Safety
    /// As [`interleave`], with `line` read and `planes` written.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave(
        line: &[f32],
        planes: &mut [std::mem::MaybeUninit<f32>],
        plane: usize,
        start: usize,
        cols: usize,
    ) {
        let dst = planes.as_mut_ptr().cast::<f32>();
        // SAFETY: the caller's contract; `store` writes `count` values from `offset`.
        unsafe {
            deinterleave_with(line, plane, start, cols, |offset, v, count| {
                if count == 8 {
                    _mm256_storeu_ps(dst.add(offset), v);
                } else {
                    let mut values = [0.0f32; 8];
                    _mm256_storeu_ps(values.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(values.as_ptr(), dst.add(offset), count);
                }
            })
        }
    }

    /// [`deinterleave`] with AVX-512's masked stores for the last pixels: on planes 7, 14 or
    /// 28 wide (EfficientNet's last stages) most rows end in such a tail, and the copy through
    /// the stack was a `memmove` call per lane, 5.7 % of a Lite0 bf16 training step in `perf`.
    ///
    /// # Safety
    /// As [`deinterleave`], on a CPU with AVX-512 VL.
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) unsafe fn deinterleave_avx512(
        line: &[f32],
        planes: &mut [std::mem::MaybeUninit<f32>],
        plane: usize,
        start: usize,
        cols: usize,
    ) {
        let dst = planes.as_mut_ptr().cast::<f32>();
        // SAFETY: the caller's contract; the mask covers the first `count` values only.
        unsafe {
            deinterleave_with(line, plane, start, cols, |offset, v, count| {
                _mm256_mask_storeu_ps(dst.add(offset), ((1u32 << count) - 1) as __mmask8, v)
            })
        }
    }

    /// [`super::deinterleave_bf16`]: as [`deinterleave_avx512`], each group of eight values
    /// rounded to bf16 in one instruction.
    ///
    /// # Safety
    /// As [`deinterleave`], on a CPU with AVX-512 BF16, BW and VL.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,avx512bf16")]
    pub(super) unsafe fn deinterleave_bf16_avx512(
        line: &[f32],
        planes: &mut [std::mem::MaybeUninit<bf16>],
        plane: usize,
        start: usize,
        cols: usize,
    ) {
        let dst = planes.as_mut_ptr().cast::<u16>();
        // SAFETY: the caller's contract; the mask covers the first `count` values only.
        unsafe {
            deinterleave_with(line, plane, start, cols, |offset, v, count| {
                let rounded: __m128i = std::mem::transmute(_mm256_cvtneps_pbh(v));
                let mask = ((1u32 << count) - 1) as __mmask8;
                _mm_mask_storeu_epi16(dst.add(offset).cast(), mask, rounded)
            })
        }
    }

    /// The body of the [`deinterleave`]s; `store(offset, v, count)` writes the first `count`
    /// (≤ 8) values of `v` from element `offset` of the planes.
    ///
    /// # Safety
    /// As [`deinterleave`]; `store` writes nothing past `offset + count`.
    #[inline(always)]
    unsafe fn deinterleave_with(
        line: &[f32],
        plane: usize,
        start: usize,
        cols: usize,
        store: impl Fn(usize, __m256, usize),
    ) {
        let src = line.as_ptr();
        for p in (0..cols).step_by(8) {
            let count = (cols - p).min(8);
            for half in 0..LANES / 8 {
                // SAFETY: AVX2 (the caller's contract); the mirror of `interleave`'s accesses,
                // inside the caller's bounds: pixels past `count` are neither read from `line`
                // nor written.
                unsafe {
                    let pixels = std::array::from_fn(|j| {
                        if j < count {
                            _mm256_loadu_ps(src.add((p + j) * LANES + half * 8))
                        } else {
                            _mm256_setzero_ps()
                        }
                    });
                    for (i, v) in transpose8(pixels).into_iter().enumerate() {
                        store((half * 8 + i) * plane + start + p, v, count);
                    }
                }
            }
        }
    }

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
    ///
    /// `buffer` must be empty or hold an earlier fill of this same layout (the callers keep one
    /// buffer per task and layout): the positions outside the input are never written, so a
    /// buffer of the right length is zeroed again only when some lanes stay unfilled.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_from(
        &self,
        x: Stored<'_>,
        order: ChannelOrder,
        n: usize,
        channels: usize,
        c0: usize,
        lanes: usize,
        buffer: &mut Vec<f32>,
    ) {
        let size = self.height * self.width * LANES;
        if buffer.len() != size || lanes < LANES {
            buffer.clear();
            buffer.resize(size, 0.0);
        }
        let plane = self.in_h * self.in_w;
        let rows = self.in_h.min(self.height.saturating_sub(self.top));
        let cols = self.in_w.min(self.width.saturating_sub(self.left));
        for ih in 0..rows {
            let line =
                &mut buffer[((ih + self.top) * self.width + self.left) * LANES..][..cols * LANES];
            match (order, x) {
                (ChannelOrder::First, _) if lanes == LANES => {
                    let block = x.slice((n * channels + c0) * plane, LANES * plane);
                    interleave(block, plane, ih * self.in_w, line);
                }
                (ChannelOrder::First, _) => {
                    let block = x.slice((n * channels + c0) * plane, lanes * plane);
                    for lane in 0..lanes {
                        let first = lane * plane + ih * self.in_w;
                        for (p, pixel) in line.chunks_exact_mut(LANES).enumerate() {
                            pixel[lane] = block.get(first + p);
                        }
                    }
                }
                (ChannelOrder::Last, Stored::F32(x)) => {
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
                (ChannelOrder::Last, Stored::Bf16(_)) => {
                    let first = (n * plane + ih * self.in_w) * channels + c0;
                    for (p, pixel) in line.chunks_exact_mut(LANES).enumerate() {
                        for (lane, v) in pixel[..lanes].iter_mut().enumerate() {
                            *v = x.get(first + p * channels + lane);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposes against their definition: two groups of eight pixels and a remainder of
    /// every length, from an offset inside the planes and up to their very end, and back
    /// through every deinterleaving variant the CPU runs.
    #[test]
    fn interleave_and_back() {
        // Remainders of every length (17..=24 pixels); 16 + 24 ends at the planes' end.
        for start in [3, 16] {
            for cols in 17..=24 {
                interleave_and_back_from(start, cols);
            }
        }
    }

    fn interleave_and_back_from(start: usize, cols: usize) {
        let plane = 40;
        let planes: Vec<f32> = (0..LANES * plane).map(|i| i as f32).collect();
        let mut line = vec![-1.0; cols * LANES];
        interleave(Stored::F32(&planes), plane, start, &mut line);
        for p in 0..cols {
            for l in 0..LANES {
                assert_eq!(
                    line[p * LANES + l],
                    planes[l * plane + start + p],
                    "{p}, {l}"
                );
            }
        }
        for (name, deinterleave) in deinterleavers() {
            let mut back = vec![MaybeUninit::new(-1.0f32); LANES * plane];
            deinterleave(&line, &mut back, plane, start);
            for (i, v) in back.iter().enumerate() {
                // SAFETY: every element was initialised by `vec!` and maybe overwritten since.
                let v = unsafe { v.assume_init() };
                let inside = (start..start + cols).contains(&(i % plane));
                assert_eq!(v, if inside { planes[i] } else { -1.0 }, "{name}: {i}");
            }
        }
    }

    /// bf16 planes widen exactly into the interleaved line (the f32 line of the same values),
    /// and a line rounds into bf16 planes as `half` rounds each value (to nearest even): every
    /// remainder length, up to the planes' very end, values that round up, down and to even.
    #[test]
    fn bf16_planes_widen_and_round_exactly() {
        let plane = 40;
        let values: Vec<f32> = (0..LANES * plane)
            .map(|i| (i as f32 * 0.731).sin() * 3.0 + (i % 7) as f32 * 1e-3)
            .collect();
        let rounded = stored::rounded(&values);
        let as_bf16 = stored::to_bf16(&values);
        for start in [3, 16] {
            for cols in 17..=24 {
                let mut want = vec![-1.0; cols * LANES];
                interleave(Stored::F32(&rounded), plane, start, &mut want);
                let mut got = vec![-1.0; cols * LANES];
                interleave(Stored::Bf16(&as_bf16), plane, start, &mut got);
                assert_eq!(got, want, "interleave from {start}, {cols} pixels");

                let line: Vec<f32> = (0..cols * LANES)
                    .map(|i| values[i % values.len()])
                    .collect();
                let mut back = vec![MaybeUninit::new(bf16::from_f32(-1.0)); LANES * plane];
                deinterleave_bf16(&line, &mut back, plane, start);
                for (i, v) in back.iter().enumerate() {
                    // SAFETY: every element was initialised by `vec!`.
                    let v = unsafe { v.assume_init() };
                    let (l, p) = (i / plane, i % plane);
                    let want = if (start..start + cols).contains(&p) {
                        bf16::from_f32(line[(p - start) * LANES + l])
                    } else {
                        bf16::from_f32(-1.0)
                    };
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "deinterleave {start}, {cols}: {i}"
                    );
                }
            }
        }
    }

    type Deinterleave = fn(&[f32], &mut [MaybeUninit<f32>], usize, usize);

    /// The dispatching [`deinterleave`] and every x86 variant this CPU runs.
    fn deinterleavers() -> Vec<(&'static str, Deinterleave)> {
        #[allow(unused_mut)]
        let mut all: Vec<(&'static str, Deinterleave)> = vec![("dispatch", deinterleave)];
        #[cfg(target_arch = "x86_64")]
        {
            fn cols(line: &[f32]) -> usize {
                line.len() / LANES
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(("avx2", |line, planes, plane, start| {
                    // SAFETY: the CPU has AVX2; the test's bounds hold.
                    unsafe { x86::deinterleave(line, planes, plane, start, cols(line)) }
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512vl") {
                all.push(("avx512", |line, planes, plane, start| {
                    // SAFETY: the CPU has AVX-512 VL; the test's bounds hold.
                    unsafe { x86::deinterleave_avx512(line, planes, plane, start, cols(line)) }
                }));
            }
        }
        all
    }

    /// One buffer refilled for other blocks of the same layout (a partial block after full
    /// ones, then full ones again) holds exactly the zero-padded interleaved copy.
    #[test]
    fn reused_buffers_hold_the_padded_block() {
        let g = ConvGeometry {
            batch: 2,
            in_channels: 37,
            in_h: 9,
            in_w: 11,
            out_channels: 37,
            kernel_h: 3,
            kernel_w: 3,
            out_h: 9,
            out_w: 11,
            stride: [1, 1],
            pad_begin: [1, 1],
            dilation: [1, 1],
            groups: 37,
        };
        let plane = g.in_plane();
        let x: Vec<f32> = (0..2 * 37 * plane).map(|i| i as f32 + 1.0).collect();
        let padded = PaddedInput::new(&g);
        let mut buffer = Vec::new();
        for (n, c0, lanes) in [(0, 0, 16), (1, 32, 5), (1, 16, 16), (0, 32, 5), (0, 0, 16)] {
            padded.fill_from(
                Stored::F32(&x),
                ChannelOrder::First,
                n,
                37,
                c0,
                lanes,
                &mut buffer,
            );
            assert_eq!(buffer.len(), padded.height * padded.width * LANES);
            for (i, &v) in buffer.iter().enumerate() {
                let (pixel, l) = (i / LANES, i % LANES);
                let (py, px) = (pixel / padded.width, pixel % padded.width);
                let want = match (py.checked_sub(1), px.checked_sub(1)) {
                    (Some(ih), Some(iw)) if ih < g.in_h && iw < g.in_w && l < lanes => {
                        x[((n * 37 + c0 + l) * g.in_h + ih) * g.in_w + iw]
                    }
                    _ => 0.0,
                };
                assert_eq!(v, want, "block ({n}, {c0}), pixel ({py}, {px}), lane {l}");
            }
        }
    }
}
