//! The f32 forward pass of a depthwise 2-D convolution (NCHW), with its bias and activation,
//! vectorised across channels ([`depthwise_blocks`]' layout).
//!
//! EfficientNet's depthwise layers run on planes as small as 7×7 (1,152 channels): a loop along
//! the width of such a plane does 7 multiply-adds per setup, and a stride-2 layer reads every
//! other value. Here each block of channels' input is copied once into the zero-padded
//! channel-interleaved buffer, every kernel tap of every output pixel is one full-width vector
//! multiply-add, and each finished output row is activated and copied back to the block's NCHW
//! planes while it is in L1. Blocks of (image, channels) run in parallel.
//!
//! The same kernel computes the input gradient of a stride-1 depthwise convolution
//! (`depthwise_input_grad`): a correlation of the output gradient with the flipped kernel.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::affine_kernels::Activation;
use super::conv_geometry::ConvGeometry;
use super::depthwise_blocks::{self, BlockKernel, LANES, Lanes, PaddedInput, lanes, lanes_mut};
use super::vectorized::Simd;

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
    let block_weights = depthwise_blocks::block_weights(weight, channels, taps);
    // Biases as [block][lane], zero past the last channel.
    let mut block_bias = vec![0.0f32; channels.div_ceil(LANES) * LANES];
    if let Some(bias) = bias {
        block_bias[..channels].copy_from_slice(&bias[..channels]);
    }
    let padded = PaddedInput::new(g);
    let out_plane = g.out_plane();
    let len = g.batch * channels * out_plane;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let jobs =
        depthwise_blocks::plane_blocks(&mut y.spare_capacity_mut()[..len], channels, out_plane);
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
            depthwise_blocks::run(
                simd,
                BlockRun {
                    block: &block,
                    input,
                    row,
                    planes,
                },
            );
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

/// [`Block`] computed into `planes` (its `lanes` output planes), with scratch buffers.
struct BlockRun<'a, 'b> {
    block: &'a Block<'a>,
    input: &'b mut Vec<f32>,
    row: &'b mut Vec<f32>,
    planes: &'b mut [MaybeUninit<f32>],
}

impl BlockKernel for BlockRun<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<V: Lanes>(self) {
        let Self {
            block,
            input,
            row,
            planes,
        } = self;
        let g = block.g;
        let out_plane = g.out_plane();
        block.padded.fill(block.x_block, block.lanes, input);
        for oh in 0..g.out_h {
            output_row::<V>(input, block.padded, block.w, block.b, oh, g, row);
            block.activation.apply(row);
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
