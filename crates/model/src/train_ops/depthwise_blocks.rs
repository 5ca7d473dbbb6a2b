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

/// `line[p·LANES + l] = planes[l·plane + start + p]` for every pixel `p < line.len() / LANES`
/// and lane `l`: one row of [`LANES`] NCHW planes interleaved pixel by pixel (8×8 register
/// transposes where the CPU has AVX2; written as loops, these were scalar moves 64 bytes apart,
/// about 40 % of the depthwise forward's samples in `perf`).
#[inline]
pub(super) fn interleave(planes: &[f32], plane: usize, start: usize, line: &mut [f32]) {
    let cols = line.len() / LANES;
    assert!(start + cols <= plane && planes.len() >= LANES * plane);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the bounds are asserted above.
        return unsafe { x86::interleave(planes, plane, start, line, cols) };
    }
    for p in 0..cols {
        for l in 0..LANES {
            line[p * LANES + l] = planes[l * plane + start + p];
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

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

    /// [`super::interleave`]: eight pixels of eight channels per transpose, the last pixels
    /// (fewer than eight) through masked loads.
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
        let (src, dst) = (planes.as_ptr(), line.as_mut_ptr());
        for p in (0..cols).step_by(8) {
            let count = (cols - p).min(8);
            // Eight values from every row's first pixel stay inside `planes` (the values past
            // `count`, if any, belong to later pixels and are not stored), except near its end,
            // where only the first `count` are loaded.
            let whole = (LANES - 1) * plane + start + p + 8 <= planes.len();
            let mask = first_lanes(count);
            for half in 0..LANES / 8 {
                // SAFETY: rows `half·8 + i` of the planes from pixel `start + p`, eight values
                // if `whole`, else `count`, lie inside `planes` (above), and pixels
                // `p .. p + count` inside `line` (the caller's bounds).
                unsafe {
                    let rows = std::array::from_fn(|i| {
                        let from = src.add((half * 8 + i) * plane + start + p);
                        if whole {
                            _mm256_loadu_ps(from)
                        } else {
                            _mm256_maskload_ps(from, mask)
                        }
                    });
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
        // SAFETY: the caller's contract.
        unsafe {
            deinterleave_with(line, planes, plane, start, cols, |to, v, count| {
                let mut values = [0.0f32; 8];
                _mm256_storeu_ps(values.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(values.as_ptr(), to, count);
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
        // SAFETY: the caller's contract; the mask covers the first `count` values only.
        unsafe {
            deinterleave_with(line, planes, plane, start, cols, |to, v, count| {
                _mm256_mask_storeu_ps(to, ((1u32 << count) - 1) as __mmask8, v)
            })
        }
    }

    /// The body of the two [`deinterleave`]s; `store_first(to, v, count)` writes the first
    /// `count` (< 8) values of `v` at `to`.
    ///
    /// # Safety
    /// As [`deinterleave`]; `store_first` writes nothing past `to + count`.
    #[inline(always)]
    unsafe fn deinterleave_with(
        line: &[f32],
        planes: &mut [std::mem::MaybeUninit<f32>],
        plane: usize,
        start: usize,
        cols: usize,
        store_first: impl Fn(*mut f32, __m256, usize),
    ) {
        let (src, dst) = (line.as_ptr(), planes.as_mut_ptr().cast::<f32>());
        for p in (0..cols).step_by(8) {
            let count = (cols - p).min(8);
            for half in 0..LANES / 8 {
                // SAFETY: the mirror of `interleave`'s accesses, inside the caller's bounds:
                // pixels past `count` are neither read from `line` nor written.
                unsafe {
                    let pixels = std::array::from_fn(|j| {
                        if j < count {
                            _mm256_loadu_ps(src.add((p + j) * LANES + half * 8))
                        } else {
                            _mm256_setzero_ps()
                        }
                    });
                    for (i, v) in transpose8(pixels).into_iter().enumerate() {
                        let to = dst.add((half * 8 + i) * plane + start + p);
                        if count == 8 {
                            _mm256_storeu_ps(to, v);
                        } else {
                            store_first(to, v, count);
                        }
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
        x: &[f32],
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
            match order {
                ChannelOrder::First if lanes == LANES => {
                    let block = &x[(n * channels + c0) * plane..][..LANES * plane];
                    interleave(block, plane, ih * self.in_w, line);
                }
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
        interleave(&planes, plane, start, &mut line);
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
            padded.fill_from(&x, ChannelOrder::First, n, 37, c0, lanes, &mut buffer);
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
