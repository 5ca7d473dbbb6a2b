//! The f32 forward pass of a depthwise 2-D convolution (NCHW, or NHWC in and out), with its bias
//! and activation, vectorised across channels ([`depthwise_blocks`]' layout); an NCHW input
//! or result may be stored in bf16 ([`super::stored`]), widened and rounded at the copies.
//!
//! EfficientNet's depthwise layers run on planes as small as 7×7 (1,152 channels): a loop along
//! the width of such a plane does 7 multiply-adds per setup, and a stride-2 layer reads every
//! other value. Here each block of channels' input is copied once into the zero-padded
//! channel-interleaved buffer, every kernel tap of every output pixel is one full-width vector
//! multiply-add, and each finished output row is activated and copied back to the block's NCHW
//! planes (or its channels of each NHWC pixel) while it is in L1. Blocks of (image, channels)
//! run in parallel.
//!
//! The same kernel computes the input gradient of a stride-1 depthwise convolution
//! (`depthwise_input_grad`): a correlation of the output gradient with the flipped kernel.

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

use super::activation_kernels::Activation;
use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::depthwise_blocks::{self, BlockKernel, LANES, Lanes, PaddedInput, lanes, lanes_mut};
use super::stored::{Storage, Stored, StoredVec};
use super::vectorized::Simd;

/// Output pixels accumulated together (independent multiply-add chains per tap).
const PIXELS: usize = 4;

/// `activation(depthwise_conv2d(x, weight) + bias)` for `g.is_depthwise()`; `weight` is
/// `[channels, 1, kernel_h, kernel_w]`; `x` and the result are laid out as `order` says, the
/// result stored as `storage` says (bf16 for NCHW only: a channels-last result is f32).
pub(super) fn forward(
    x: Stored<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
    order: ChannelOrder,
    storage: Storage,
) -> StoredVec {
    forward_on(
        Simd::detect(),
        x,
        weight,
        bias,
        g,
        activation,
        order,
        storage,
    )
}

/// [`forward`] into f32, in either layout.
pub(super) fn forward_f32(
    x: Stored<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
    order: ChannelOrder,
) -> Vec<f32> {
    match forward(x, weight, bias, g, activation, order, Storage::F32) {
        StoredVec::F32(y) => y,
        StoredVec::Bf16(_) => unreachable!("an f32 result was asked for"),
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_on(
    simd: Simd,
    x: Stored<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    activation: Activation,
    order: ChannelOrder,
    storage: Storage,
) -> StoredVec {
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
    let run_block = |input: &mut Vec<f32>, row: &mut Vec<f32>, n, block, dest: Destination<'_>| {
        let c0 = block * LANES;
        let block = Block {
            x,
            order,
            n,
            c0,
            lanes: LANES.min(channels - c0),
            w: &block_weights[block * taps * LANES..][..taps * LANES],
            b: &block_bias[block * LANES..][..LANES],
            padded: &padded,
            g,
            activation,
        };
        let run = BlockRun {
            block: &block,
            input,
            row,
            dest,
        };
        depthwise_blocks::run(simd, run);
    };
    match (order, storage) {
        (ChannelOrder::First, Storage::F32) => StoredVec::F32(per_plane_block(
            len,
            channels,
            out_plane,
            |input, row, n, block, planes| {
                run_block(input, row, n, block, Destination::Planes(planes))
            },
        )),
        (ChannelOrder::First, Storage::Bf16) => StoredVec::Bf16(per_plane_block(
            len,
            channels,
            out_plane,
            |input, row, n, block, planes| {
                run_block(input, row, n, block, Destination::Bf16Planes(planes))
            },
        )),
        (ChannelOrder::Last, _) => {
            let mut y: Vec<f32> = Vec::with_capacity(len);
            let out = SharedOut(y.as_mut_ptr());
            let blocks = channels.div_ceil(LANES);
            let jobs: Vec<(usize, usize)> = (0..g.batch)
                .flat_map(|n| (0..blocks).map(move |block| (n, block)))
                .collect();
            jobs.into_par_iter().for_each_init(
                || (Vec::new(), Vec::new()),
                |(input, row), (n, block)| {
                    let dest = Destination::ChannelsLast {
                        // SAFETY: image `n`'s `out_plane · channels` values lie inside `y`'s
                        // capacity of `len` (`n < batch`).
                        image: unsafe { out.get().add(n * out_plane * channels) },
                        channels,
                    };
                    run_block(input, row, n, block, dest);
                },
            );
            // SAFETY: the jobs cover the buffer's `len` elements exactly once (every image,
            // every block of its channels), and each job wrote every element of its block:
            // each of its lanes' values at row `oh` for every `oh < out_h`, all `out_w` pixels
            // of the row.
            unsafe { y.set_len(len) };
            StoredVec::F32(y)
        }
    }
}

/// An NCHW result of `len` values: `run(input, row, n, block, planes)` writes every value of
/// the planes of image `n`'s channel block `block`, with scratch buffers of its task; blocks
/// run in parallel.
fn per_plane_block<T: Send>(
    len: usize,
    channels: usize,
    out_plane: usize,
    run: impl Fn(&mut Vec<f32>, &mut Vec<f32>, usize, usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut y: Vec<T> = Vec::with_capacity(len);
    let jobs =
        depthwise_blocks::plane_blocks(&mut y.spare_capacity_mut()[..len], channels, out_plane);
    jobs.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(input, row), (n, block, planes)| run(input, row, n, block, planes),
    );
    // SAFETY: the jobs cover the buffer's `len` elements exactly once (every image, every
    // block of its channels), and each job wrote every element of its block: each of its lanes'
    // values at row `oh` for every `oh < out_h`, all `out_w` pixels of the row.
    unsafe { y.set_len(len) };
    y
}

/// The result's pointer, shared by the jobs of an NHWC result, each writing its own channels.
struct SharedOut(*mut f32);
// SAFETY: the jobs write disjoint elements through it (their own image and channel block).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Where a block's output rows go.
enum Destination<'a> {
    /// The block's `lanes` NCHW planes.
    Planes(&'a mut [MaybeUninit<f32>]),
    /// The same, rounded to bf16.
    Bf16Planes(&'a mut [MaybeUninit<bf16>]),
    /// Its image's NHWC values, from the first; the block writes its channels of every pixel.
    ChannelsLast { image: *mut f32, channels: usize },
}

/// One block of [`LANES`] channels of one image.
struct Block<'a> {
    x: Stored<'a>,
    order: ChannelOrder,
    n: usize,
    /// First channel of the block.
    c0: usize,
    lanes: usize,
    w: &'a [f32],
    b: &'a [f32],
    padded: &'a PaddedInput,
    g: &'a ConvGeometry,
    activation: Activation,
}

/// [`Block`] computed into `dest`, with scratch buffers.
struct BlockRun<'a, 'b> {
    block: &'a Block<'a>,
    input: &'b mut Vec<f32>,
    row: &'b mut Vec<f32>,
    dest: Destination<'b>,
}

impl BlockKernel for BlockRun<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<V: Lanes>(self) {
        let Self {
            block,
            input,
            row,
            mut dest,
        } = self;
        let g = block.g;
        let out_plane = g.out_plane();
        let channels = g.in_channels;
        let (c0, lanes) = (block.c0, block.lanes);
        block
            .padded
            .fill_from(block.x, block.order, block.n, channels, c0, lanes, input);
        for oh in 0..g.out_h {
            output_row::<V>(input, block.padded, block.w, block.b, oh, g, row);
            block.activation.apply(row);
            match &mut dest {
                Destination::Planes(planes) if lanes == LANES => {
                    depthwise_blocks::deinterleave(row, planes, out_plane, oh * g.out_w);
                }
                Destination::Planes(planes) => {
                    for (lane, plane) in planes.chunks_mut(out_plane).enumerate() {
                        let out = &mut plane[oh * g.out_w..][..g.out_w];
                        for (o, pixel) in out.iter_mut().zip(row.chunks_exact(LANES)) {
                            o.write(pixel[lane]);
                        }
                    }
                }
                Destination::Bf16Planes(planes) if lanes == LANES => {
                    depthwise_blocks::deinterleave_bf16(row, planes, out_plane, oh * g.out_w);
                }
                Destination::Bf16Planes(planes) => {
                    for (lane, plane) in planes.chunks_mut(out_plane).enumerate() {
                        let out = &mut plane[oh * g.out_w..][..g.out_w];
                        for (o, pixel) in out.iter_mut().zip(row.chunks_exact(LANES)) {
                            o.write(bf16::from_f32(pixel[lane]));
                        }
                    }
                }
                Destination::ChannelsLast { image, channels } => {
                    for (ow, pixel) in row.chunks_exact(LANES).enumerate() {
                        // SAFETY: pixel `(oh, ow)`'s channels `c0..c0 + lanes` lie inside the
                        // image (`c0 + lanes <= channels`), no other job writes them, and
                        // `pixel` is our own buffer.
                        unsafe {
                            let to = image.add((oh * g.out_w + ow) * *channels + c0);
                            if lanes == LANES {
                                // A fixed-size copy, not a `memcpy` call per pixel.
                                to.cast::<[f32; LANES]>()
                                    .write_unaligned(*depthwise_blocks::lanes(pixel, 0));
                            } else {
                                std::ptr::copy_nonoverlapping(pixel.as_ptr(), to, lanes);
                            }
                        }
                    }
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
    use super::super::depthwise_blocks::nchw_to_nhwc;
    use super::super::stored;
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
        let run = |simd, x: &[f32], order| {
            let y = forward_on(
                simd,
                Stored::F32(x),
                &w,
                Some(&b),
                &g,
                Activation::Relu6,
                order,
                Storage::F32,
            );
            y.into_f32()
        };
        let portable = run(Simd::Portable, &x, ChannelOrder::First);
        let detected = Simd::detect();
        #[allow(unused_mut)]
        let mut available = vec![detected, Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if detected == Simd::Avx512
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            available.push(Simd::Avx2);
        }
        for simd in available {
            let got = run(simd, &x, ChannelOrder::First);
            for (a, p) in got.iter().zip(&portable) {
                assert!((a - p).abs() <= 1e-5, "{simd:?}: {a} vs {p}");
            }
            // Channels-last in and out: the same values, transposed.
            let got_last = run(simd, &nchw_to_nhwc(&x, 2, 37, 11 * 13), ChannelOrder::Last);
            assert_eq!(got_last, nchw_to_nhwc(&got, 2, 37, 6 * 7), "{simd:?}");
            // Stored in bf16 in and out: the f32 pass over the widened input, each output
            // rounded (the full blocks through the vector stores, the partial one scalar).
            let x_bf16 = stored::to_bf16(&x);
            let from_rounded = run(simd, &stored::rounded(&x), ChannelOrder::First);
            for storage in [Storage::F32, Storage::Bf16] {
                let got = forward_on(
                    simd,
                    Stored::Bf16(&x_bf16),
                    &w,
                    Some(&b),
                    &g,
                    Activation::Relu6,
                    ChannelOrder::First,
                    storage,
                );
                let want = match storage {
                    Storage::F32 => StoredVec::F32(from_rounded.clone()),
                    Storage::Bf16 => StoredVec::Bf16(stored::to_bf16(&from_rounded)),
                };
                assert_eq!(got, want, "{simd:?}, {storage:?}");
            }
        }
    }
}
