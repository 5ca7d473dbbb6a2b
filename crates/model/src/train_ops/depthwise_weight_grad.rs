//! The f32 weight gradient of a depthwise 2-D convolution (NCHW or NHWC inputs, f32 or stored
//! in bf16: [`super::stored`]), vectorised across channels ([`depthwise_blocks`]' layout).
//!
//! `dw[c][tap] = Σ_n Σ_out gy[n][c][out] · x[n][c][in(out, tap)]`. Along a plane's rows this is
//! a dot product per tap and row, as short as 7 values on ConvNeXt's last stage and strided on
//! a stride-2 layer: ConvNeXt-tiny spent about a fifth of its training step in those loops and
//! the input gradient's. Here a block of [`LANES`] channels of one image is interleaved (its
//! input zero-padded, its output gradient as it is), and each output pixel feeds up to
//! [`TAPS_AT_ONCE`] taps of one kernel row at once: one output-gradient load, one input load and
//! one full-width multiply-add per tap, each tap its own running sum. Jobs of (channel block,
//! run of images) run in parallel, each summing into its own partial; the partials are added in
//! job order, so the result does not depend on the thread count's timing.

use std::ops::Range;

use rayon::prelude::*;

use super::conv_geometry::{ChannelOrder, ConvGeometry};
use super::depthwise_blocks::{self, BlockKernel, LANES, Lanes, PaddedInput, lanes};
use super::stored::Stored;
use super::vectorized::Simd;

/// Taps of one kernel row accumulated per pass over the output gradient (ConvNeXt's 7×7
/// kernel: a whole row).
const TAPS_AT_ONCE: usize = 8;

/// Jobs per thread to aim for, so that uneven jobs still even out.
const JOBS_PER_THREAD: usize = 4;

/// `dL/dweight` of a depthwise convolution (`g.is_depthwise()`), `[channels, 1, kh, kw]`, from
/// its input `x` and output gradient `gy` (each f32 or bf16), each laid out as its order says.
pub(super) fn weight_grad(
    x: (Stored<'_>, ChannelOrder),
    gy: (Stored<'_>, ChannelOrder),
    g: &ConvGeometry,
) -> Vec<f32> {
    weight_grad_on(Simd::detect(), x, gy, g)
}

fn weight_grad_on(
    simd: Simd,
    (x, x_order): (Stored<'_>, ChannelOrder),
    (gy, gy_order): (Stored<'_>, ChannelOrder),
    g: &ConvGeometry,
) -> Vec<f32> {
    let channels = g.out_channels;
    let taps = g.kernel_h * g.kernel_w;
    let mut dw = vec![0.0f32; channels * taps];
    if g.batch == 0 || g.out_plane() == 0 || taps == 0 {
        return dw;
    }
    let blocks = channels.div_ceil(LANES);
    let runs = (JOBS_PER_THREAD * rayon::current_num_threads())
        .div_ceil(blocks)
        .clamp(1, g.batch);
    let images_per_run = g.batch.div_ceil(runs);
    let jobs: Vec<(usize, Range<usize>)> = (0..blocks)
        .flat_map(|block| {
            (0..g.batch)
                .step_by(images_per_run)
                .map(move |n| (block, n..(n + images_per_run).min(g.batch)))
        })
        .collect();
    let padded = PaddedInput::new(g);
    let grad_layout = PaddedInput::unpadded(g.out_h, g.out_w);
    let partials: Vec<(usize, Vec<f32>)> = jobs
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(input, grad), (block, images)| {
                let c0 = block * LANES;
                let lanes = LANES.min(channels - c0);
                let mut sums = vec![0.0f32; taps * LANES];
                for n in images {
                    padded.fill_from(x, x_order, n, channels, c0, lanes, input);
                    grad_layout.fill_from(gy, gy_order, n, channels, c0, lanes, grad);
                    depthwise_blocks::run(
                        simd,
                        Accumulate {
                            input,
                            grad,
                            line_len: padded.width * LANES,
                            g,
                            sums: &mut sums,
                        },
                    );
                }
                (block, sums)
            },
        )
        .collect();
    for (block, sums) in partials {
        for (tap, tap_sums) in sums.chunks_exact(LANES).enumerate() {
            for (lane, &s) in tap_sums.iter().enumerate() {
                let c = block * LANES + lane;
                if c < channels {
                    dw[c * taps + tap] += s;
                }
            }
        }
    }
    dw
}

/// Adds one image's block to `sums` (`[tap][LANES]`).
struct Accumulate<'a> {
    /// The padded input, `[height][width][LANES]`, rows of `line_len` values.
    input: &'a [f32],
    /// The output gradient, `[out_h][out_w][LANES]`.
    grad: &'a [f32],
    line_len: usize,
    g: &'a ConvGeometry,
    sums: &'a mut [f32],
}

impl BlockKernel for Accumulate<'_> {
    type Output = ();

    #[inline(always)]
    fn run<V: Lanes>(mut self) {
        for kh in 0..self.g.kernel_h {
            let mut kw = 0;
            while kw < self.g.kernel_w {
                let count = (self.g.kernel_w - kw).min(TAPS_AT_ONCE);
                match count {
                    1 => self.taps::<V, 1>(kh, kw),
                    2 => self.taps::<V, 2>(kh, kw),
                    3 => self.taps::<V, 3>(kh, kw),
                    4 => self.taps::<V, 4>(kh, kw),
                    5 => self.taps::<V, 5>(kh, kw),
                    6 => self.taps::<V, 6>(kh, kw),
                    7 => self.taps::<V, 7>(kh, kw),
                    _ => self.taps::<V, TAPS_AT_ONCE>(kh, kw),
                }
                kw += count;
            }
        }
    }
}

impl Accumulate<'_> {
    /// Taps `kw0..kw0 + N` of kernel row `kh`, over every output pixel.
    #[inline(always)]
    fn taps<V: Lanes, const N: usize>(&mut self, kh: usize, kw0: usize) {
        let g = self.g;
        let zero = V::load(&[0.0; LANES]);
        let mut acc = [zero; N];
        let step = g.stride[1] * LANES;
        let tap_step = g.dilation[1] * LANES;
        let row_len = g.out_w * LANES;
        for oh in 0..g.out_h {
            let ih = oh * g.stride[0] + kh * g.dilation[0];
            let line = &self.input[ih * self.line_len..][..self.line_len];
            let grad_row = &self.grad[oh * row_len..][..row_len];
            for ow in 0..g.out_w {
                let gv = V::load(lanes(grad_row, ow * LANES));
                let first = ow * step + kw0 * tap_step;
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = a.mul_add(gv, V::load(lanes(line, first + j * tap_step)));
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let tap = kh * g.kernel_w + kw0 + j;
            let mut values = [0.0f32; LANES];
            a.store(&mut values);
            for (s, v) in self.sums[tap * LANES..][..LANES].iter_mut().zip(values) {
                *s += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::depthwise_blocks::nchw_to_nhwc;
    use super::super::stored;
    use super::*;

    /// Every instruction set this CPU has gives the definition's values (the parity test
    /// against PyTorch runs the widest one).
    #[test]
    fn every_instruction_set_matches_the_definition() {
        let g = ConvGeometry {
            batch: 3,
            in_channels: 37,
            in_h: 11,
            in_w: 13,
            out_channels: 37,
            kernel_h: 5,
            kernel_w: 3,
            out_h: 6,
            out_w: 6,
            stride: [2, 2],
            pad_begin: [2, 1],
            dilation: [1, 2],
            groups: 37,
        };
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let x: Vec<f32> = (0..3 * 37 * 11 * 13).map(value).collect();
        let gy: Vec<f32> = (0..3 * 37 * 36).map(|i| value(i + 5)).collect();
        let mut want = vec![0.0f64; 37 * 15];
        for n in 0..3 {
            for c in 0..37 {
                for (kh, kw) in (0..5).flat_map(|kh| (0..3).map(move |kw| (kh, kw))) {
                    for (oh, ow) in (0..6).flat_map(|oh| (0..6).map(move |ow| (oh, ow))) {
                        let ih = (oh * 2 + kh) as isize - 2;
                        let iw = (ow * 2 + kw * 2) as isize - 1;
                        if (0..11).contains(&ih) && (0..13).contains(&iw) {
                            let xv = x[((n * 37 + c) * 11 + ih as usize) * 13 + iw as usize];
                            let gv = gy[((n * 37 + c) * 6 + oh) * 6 + ow];
                            want[c * 15 + kh * 3 + kw] += f64::from(xv) * f64::from(gv);
                        }
                    }
                }
            }
        }
        #[allow(unused_mut)]
        let mut available = vec![Simd::Portable, Simd::detect()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            available.push(Simd::Avx2);
        }
        let (x_last, gy_last) = (
            nchw_to_nhwc(&x, 3, 37, 11 * 13),
            nchw_to_nhwc(&gy, 3, 37, 36),
        );
        for simd in available {
            let got = weight_grad_on(
                simd,
                (Stored::F32(&x), ChannelOrder::First),
                (Stored::F32(&gy), ChannelOrder::First),
                &g,
            );
            for (a, w) in got.iter().zip(&want) {
                assert!((f64::from(*a) - w).abs() <= 1e-4, "{simd:?}: {a} vs {w}");
            }
            // Either input channels-last: the same sums in the same order.
            for (xs, gys) in [
                (
                    (Stored::F32(&x_last), ChannelOrder::Last),
                    (Stored::F32(&gy), ChannelOrder::First),
                ),
                (
                    (Stored::F32(&x), ChannelOrder::First),
                    (Stored::F32(&gy_last), ChannelOrder::Last),
                ),
                (
                    (Stored::F32(&x_last), ChannelOrder::Last),
                    (Stored::F32(&gy_last), ChannelOrder::Last),
                ),
            ] {
                assert_eq!(weight_grad_on(simd, xs, gys, &g), got, "{simd:?}");
            }
            // An input and an output gradient stored in bf16: the sums of their widened
            // values, in the same order.
            let (x_bf16, x_rounded) = (stored::to_bf16(&x), stored::rounded(&x));
            let (gy_bf16, gy_rounded) = (stored::to_bf16(&gy), stored::rounded(&gy));
            let first = |v| (v, ChannelOrder::First);
            let bf16_stored = (Stored::Bf16(&x_bf16), Stored::Bf16(&gy_bf16));
            let rounded = (Stored::F32(&x_rounded), Stored::F32(&gy_rounded));
            assert_eq!(
                weight_grad_on(simd, first(bf16_stored.0), first(bf16_stored.1), &g),
                weight_grad_on(simd, first(rounded.0), first(rounded.1), &g),
                "{simd:?}, bf16 input and output gradient"
            );
        }
    }
}
