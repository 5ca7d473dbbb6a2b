//! The f32 forward pass of a depthwise 2-D convolution (NCHW), with its bias and activation,
//! vectorised across channels.
//!
//! EfficientNet's depthwise layers run on planes as small as 7×7 (1,152 channels): a loop along
//! the width of such a plane does 7 multiply-adds per setup, and a stride-2 layer reads every
//! other value. Here the channels are taken [`LANES`] at a time (the `nChw16c` blocking oneDNN
//! uses): each block's input is copied once into a zero-padded `[h][w][LANES]` buffer, so every
//! kernel tap of every output pixel is one full-width vector multiply-add with no bounds tests
//! whatever the stride, padding or plane size, and each finished output row is activated and
//! copied back to the block's NCHW planes while it is in L1. Blocks of (image, channels) run in
//! parallel. The multiply-adds are explicit AVX-512 or AVX2 + FMA instructions, picked at run
//! time (with a plain-array fallback): written as array loops, the compiler kept the
//! accumulators on the stack and ran them 2.5x slower.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::affine_kernels::Activation;
use super::conv_geometry::ConvGeometry;
use super::vectorized::Simd;

/// Channels per block: one AVX-512 register of f32.
const LANES: usize = 16;

/// Output pixels accumulated together (independent multiply-add chains per tap).
const PIXELS: usize = 4;

/// `activation(depthwise_conv2d(x, weight) + bias)` for `g.is_depthwise()`; `weight` is
/// `[channels, 1, kernel_h, kernel_w]`.
pub(super) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Vec<f32> {
    forward_on(Simd::detect(), x, weight, bias, g, activation)
}

fn forward_on(
    simd: Simd,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
) -> Vec<f32> {
    let channels = g.out_channels;
    let taps = g.kernel_h * g.kernel_w;
    let blocks = channels.div_ceil(LANES);
    // Weights as [block][tap][lane] and biases as [block][lane], zero past the last channel.
    let mut block_weights = vec![0.0f32; blocks * taps * LANES];
    let mut block_bias = vec![0.0f32; blocks * LANES];
    for c in 0..channels {
        let (block, lane) = (c / LANES, c % LANES);
        for tap in 0..taps {
            block_weights[(block * taps + tap) * LANES + lane] = weight[c * taps + tap];
        }
        block_bias[block * LANES + lane] = bias.map_or(0.0, |b| b[c]);
    }
    let padded = PaddedInput::new(g);
    let (out_plane, out_image) = (g.out_plane(), channels * g.out_plane());
    let len = g.batch * out_image;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let mut jobs: Vec<(usize, usize, &mut [MaybeUninit<f32>])> = Vec::new();
    if out_plane > 0 {
        for (n, image) in y.spare_capacity_mut()[..len]
            .chunks_mut(out_image)
            .enumerate()
        {
            for (block, planes) in image.chunks_mut(LANES * out_plane).enumerate() {
                jobs.push((n, block, planes));
            }
        }
    }
    jobs.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(input, row), (n, block, planes)| {
            let c0 = block * LANES;
            let lanes = planes.len() / out_plane;
            let x_block = &x[(n * channels + c0) * g.in_plane()..][..lanes * g.in_plane()];
            let w = &block_weights[block * taps * LANES..][..taps * LANES];
            let b = &block_bias[block * LANES..][..LANES];
            let block = Block {
                x_block,
                lanes,
                w,
                b,
                padded: &padded,
                g,
                activation,
            };
            block.run(simd, input, row, planes);
        },
    );
    // SAFETY: the jobs cover the buffer's `len` elements exactly once (every image, every
    // block of its planes), and each job wrote every element of its planes: each of its lanes'
    // planes, row `oh` for every `oh < out_h`, all `out_w` values of the row.
    unsafe { y.set_len(len) };
    y
}

/// One block of [`LANES`] channels of one image.
struct Block<'a> {
    x_block: &'a [f32],
    lanes: usize,
    w: &'a [f32],
    b: &'a [f32],
    padded: &'a PaddedInput,
    g: &'a ConvGeometry,
    activation: Activation,
}

impl Block<'_> {
    /// Computes the block into `planes` (its `lanes` output planes) with `simd` (which the CPU
    /// has: [`Simd::detect`] or below); `input` and `row` are scratch buffers.
    fn run(
        &self,
        simd: Simd,
        input: &mut Vec<f32>,
        row: &mut Vec<f32>,
        planes: &mut [MaybeUninit<f32>],
    ) {
        match simd {
            // SAFETY: `simd` is one the CPU has.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.run_avx512(input, row, planes) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.run_avx2(input, row, planes) },
            Simd::Portable => self.run_with::<[f32; LANES]>(input, row, planes),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        input: &mut Vec<f32>,
        row: &mut Vec<f32>,
        planes: &mut [MaybeUninit<f32>],
    ) {
        self.run_with::<x86::Avx512>(input, row, planes)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        input: &mut Vec<f32>,
        row: &mut Vec<f32>,
        planes: &mut [MaybeUninit<f32>],
    ) {
        self.run_with::<x86::Avx2>(input, row, planes)
    }

    #[inline(always)]
    fn run_with<V: Lanes>(
        &self,
        input: &mut Vec<f32>,
        row: &mut Vec<f32>,
        planes: &mut [MaybeUninit<f32>],
    ) {
        let g = self.g;
        let out_plane = g.out_plane();
        self.padded.fill(self.x_block, self.lanes, input);
        for oh in 0..g.out_h {
            output_row::<V>(input, self.padded, self.w, self.b, oh, g, row);
            self.activation.apply(row);
            for (lane, plane) in planes.chunks_mut(out_plane).enumerate() {
                let out = &mut plane[oh * g.out_w..][..g.out_w];
                for (o, pixel) in out.iter_mut().zip(row.chunks_exact(LANES)) {
                    o.write(pixel[lane]);
                }
            }
        }
    }
}

/// One output row `oh` of a block, `[out_w][LANES]`, bias included, into `row`: [`PIXELS`]
/// pixels at a time, then one at a time.
#[inline(always)]
fn output_row<V: Lanes>(
    input: &[f32],
    padded: &PaddedInput,
    w: &[f32],
    b: &[f32],
    oh: usize,
    g: &ConvGeometry,
    row: &mut Vec<f32>,
) {
    row.clear();
    row.resize(g.out_w * LANES, 0.0);
    let bias = V::load(lanes(b, 0));
    let step = g.stride[1] * LANES;
    let line_len = padded.width * LANES;
    let mut ow = 0;
    while ow < g.out_w {
        let pixels = PIXELS.min(g.out_w - ow);
        let mut acc = [bias; PIXELS];
        for kh in 0..g.kernel_h {
            let ih = oh * g.stride[0] + kh * g.dilation[0];
            let line = &input[ih * line_len..][..line_len];
            for kw in 0..g.kernel_w {
                let wv = V::load(lanes(w, (kh * g.kernel_w + kw) * LANES));
                let first = (ow * g.stride[1] + kw * g.dilation[1]) * LANES;
                if pixels == PIXELS {
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = a.mul_add(wv, V::load(lanes(line, first + p * step)));
                    }
                } else {
                    acc[0] = acc[0].mul_add(wv, V::load(lanes(line, first)));
                }
            }
        }
        let done = if pixels == PIXELS { PIXELS } else { 1 };
        for (p, a) in acc.iter().enumerate().take(done) {
            a.store(lanes_mut(row, (ow + p) * LANES));
        }
        ow += done;
    }
}

/// `values[start..start + LANES]` as an array.
#[inline(always)]
fn lanes(values: &[f32], start: usize) -> &[f32; LANES] {
    values[start..start + LANES]
        .try_into()
        .expect("a slice of LANES values")
}

/// `values[start..start + LANES]` as a mutable array.
#[inline(always)]
fn lanes_mut(values: &mut [f32], start: usize) -> &mut [f32; LANES] {
    (&mut values[start..start + LANES])
        .try_into()
        .expect("a slice of LANES values")
}

/// [`LANES`] f32 values in registers: one AVX-512 register, two AVX2 registers, or an array.
trait Lanes: Copy {
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
/// with the input at row `pad_top`, column `pad_left`, and zeros wherever a tap reaches past the
/// input (padding, or lanes past the last channel).
struct PaddedInput {
    height: usize,
    width: usize,
    top: usize,
    left: usize,
    in_h: usize,
    in_w: usize,
}

impl PaddedInput {
    fn new(g: &ConvGeometry) -> Self {
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

    /// Copies the `lanes` planes of `x_block` into `buffer`.
    #[inline(always)]
    fn fill(&self, x_block: &[f32], lanes: usize, buffer: &mut Vec<f32>) {
        buffer.clear();
        buffer.resize(self.height * self.width * LANES, 0.0);
        let plane = self.in_h * self.in_w;
        let rows = self.in_h.min(self.height.saturating_sub(self.top));
        let cols = self.in_w.min(self.width.saturating_sub(self.left));
        for ih in 0..rows {
            let line =
                &mut buffer[((ih + self.top) * self.width + self.left) * LANES..][..cols * LANES];
            for lane in 0..lanes {
                let source = &x_block[lane * plane + ih * self.in_w..][..cols];
                for (pixel, &v) in line.chunks_exact_mut(LANES).zip(source) {
                    pixel[lane] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU has gives the portable version's values (the parity test
    /// against PyTorch runs the widest one).
    #[test]
    fn every_instruction_set_agrees() {
        let g = ConvGeometry {
            batch: 2,
            in_channels: 37,
            in_h: 11,
            in_w: 13,
            out_channels: 37,
            kernel_h: 5,
            kernel_w: 3,
            out_h: 6,
            out_w: 7,
            stride: [2, 2],
            pad_begin: [2, 1],
            dilation: [1, 1],
            groups: 37,
        };
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let x: Vec<f32> = (0..2 * 37 * 11 * 13).map(value).collect();
        let w: Vec<f32> = (0..37 * 15).map(|i| value(i + 3)).collect();
        let b: Vec<f32> = (0..37).map(|i| value(i + 11)).collect();
        let portable = forward_on(Simd::Portable, &x, &w, Some(&b), &g, Activation::Relu6);
        let detected = Simd::detect();
        #[allow(unused_mut)]
        let mut available = vec![detected];
        #[cfg(target_arch = "x86_64")]
        if detected == Simd::Avx512
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            available.push(Simd::Avx2);
        }
        for simd in available {
            let got = forward_on(simd, &x, &w, Some(&b), &g, Activation::Relu6);
            for (a, p) in got.iter().zip(&portable) {
                assert!((a - p).abs() <= 1e-5, "{simd:?}: {a} vs {p}");
            }
        }
    }
}
