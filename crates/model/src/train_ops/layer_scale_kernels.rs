//! ConvNeXt's layer scale and residual sum, `residual + gamma[c] · x`, both ways in parallel
//! passes: the MLP's output `x` comes channels-last (`[n, h, w, c]` rows), the block's input
//! `residual` channels-last in memory (the stream after the first block of a stage) or NCHW
//! (what a downsampling convolution leaves), and the sum is written channels-last for the next
//! block's depthwise convolution and LayerNorm.
//!
//! burn ran these as a broadcast multiplication and an addition of two tensors in different
//! layouts, each a pass on one thread (and back again: the gradient's product, a reduction for
//! `gamma`): 5 % of ConvNeXt-tiny's train step with both cores otherwise busy, as `bench
//! train`'s split by operation showed, and as much in inference.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv_geometry::ChannelOrder;
use super::vectorized::vectorized;

/// Values per parallel task.
const TASK_VALUES: usize = 1 << 15;

/// Pixels per tile when the residual is NCHW: each channel's run of this many values is one
/// cache line or more, and the tile's output (`TILE × channels`) stays in L1/L2.
const TILE: usize = 16;

/// `residual + gamma[c] · x` as `[n, h, w, c]` rows, for `x` in those rows and `residual` in
/// `order` (`plane = h · w` values per channel when NCHW).
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    residual: (&[f32], ChannelOrder),
    plane: usize,
) -> Vec<f32> {
    let (channels, len) = (gamma.len(), x.len());
    assert_eq!(residual.0.len(), len);
    if channels == 0 || len == 0 {
        return Vec::new();
    }
    assert!(len.is_multiple_of(channels));
    let mut y = Vec::with_capacity(len);
    let out = &mut y.spare_capacity_mut()[..len];
    match residual {
        (r, ChannelOrder::Last) => {
            let rows = (TASK_VALUES / channels).max(1);
            out.par_chunks_mut(rows * channels)
                .zip(
                    x.par_chunks(rows * channels)
                        .zip(r.par_chunks(rows * channels)),
                )
                .for_each(|(out, (x, r))| {
                    vectorized(
                        #[inline(always)]
                        || scale_add_rows(out, x, r, gamma),
                    )
                });
        }
        (r, ChannelOrder::First) => {
            assert!(plane > 0 && len.is_multiple_of(plane * channels));
            let image = plane * channels;
            // One task per image and tile of pixels; each reads its channels' runs of the
            // NCHW residual and writes its rows of the output.
            out.par_chunks_mut(image)
                .zip(x.par_chunks(image).zip(r.par_chunks(image)))
                .for_each(|(out, (x, r))| {
                    out.par_chunks_mut(TILE * channels)
                        .zip(x.par_chunks(TILE * channels))
                        .enumerate()
                        .for_each(|(t, (out, x))| {
                            let first = t * TILE;
                            vectorized(
                                #[inline(always)]
                                || scale_add_tile(out, x, r, gamma, first, plane),
                            )
                        });
                });
        }
    }
    // SAFETY: the chunks cover the first `len` values, and every one was written above.
    unsafe { y.set_len(len) };
    y
}

/// Rows of `r + gamma · x`, all channels-last.
#[inline(always)]
fn scale_add_rows(out: &mut [MaybeUninit<f32>], x: &[f32], r: &[f32], gamma: &[f32]) {
    let channels = gamma.len();
    for ((out, x), r) in out
        .chunks_exact_mut(channels)
        .zip(x.chunks_exact(channels))
        .zip(r.chunks_exact(channels))
    {
        for (((o, &x), &r), &g) in out.iter_mut().zip(x).zip(r).zip(gamma) {
            o.write(r + g * x);
        }
    }
}

/// The rows of pixels `first..` of one image (`out` and `x` hold as many rows as the tile has)
/// from that image's NCHW residual `r`.
#[inline(always)]
fn scale_add_tile(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    r: &[f32],
    gamma: &[f32],
    first: usize,
    plane: usize,
) {
    let channels = gamma.len();
    let pixels = out.len() / channels;
    for (c, &g) in gamma.iter().enumerate() {
        let run = &r[c * plane + first..][..pixels];
        for (p, &r) in run.iter().enumerate() {
            out[p * channels + c].write(r + g * x[p * channels + c]);
        }
    }
}

/// Gradients of [`forward`] with respect to `x` (rows as `x`) and `gamma`, for the output
/// gradient `gy` as `[n, h, w, c]` rows; the residual's is `gy` itself.
pub struct LayerScaleGrads {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
}

pub fn backward(x: &[f32], gamma: &[f32], gy: &[f32]) -> LayerScaleGrads {
    let (channels, len) = (gamma.len(), x.len());
    assert_eq!(gy.len(), len);
    if channels == 0 || len == 0 {
        return LayerScaleGrads {
            x: Vec::new(),
            gamma: vec![0.0; channels],
        };
    }
    assert!(len.is_multiple_of(channels));
    let block = (TASK_VALUES / channels).max(1) * channels;
    let mut dx = Vec::with_capacity(len);
    let sums = dx.spare_capacity_mut()[..len]
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(gy.par_chunks(block)))
        .map(|(dx, (x, gy))| {
            let mut sums = vec![0.0f64; channels];
            vectorized(
                #[inline(always)]
                || {
                    for ((dx, x), gy) in dx
                        .chunks_exact_mut(channels)
                        .zip(x.chunks_exact(channels))
                        .zip(gy.chunks_exact(channels))
                    {
                        for ((((d, &x), &gy), &g), s) in
                            dx.iter_mut().zip(x).zip(gy).zip(gamma).zip(sums.iter_mut())
                        {
                            d.write(gy * g);
                            *s += f64::from(gy * x);
                        }
                    }
                },
            );
            sums
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; channels]);
    // SAFETY: the blocks cover the first `len` values, and every one was written above.
    unsafe { dx.set_len(len) };
    LayerScaleGrads {
        x: dx,
        gamma: sums.into_iter().map(|s| s as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both residual layouts give `r + g · x` at every position, over several tasks and tiles
    /// (and a last tile that is not full).
    #[test]
    fn both_residual_layouts_give_the_same_sum() {
        let (n, plane, channels) = (2, 37, 5);
        let len = n * plane * channels;
        let x: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
        let r_last: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.5).collect();
        let gamma = [0.5, -1.0, 2.0, 0.25, 3.0];
        let mut r_first = vec![0.0; len];
        for b in 0..n {
            for p in 0..plane {
                for c in 0..channels {
                    r_first[(b * channels + c) * plane + p] =
                        r_last[(b * plane + p) * channels + c];
                }
            }
        }
        let want: Vec<f32> = (0..len)
            .map(|i| r_last[i] + gamma[i % channels] * x[i])
            .collect();
        let last = forward(&x, &gamma, (&r_last, ChannelOrder::Last), plane);
        let first = forward(&x, &gamma, (&r_first, ChannelOrder::First), plane);
        assert_eq!(last, want);
        assert_eq!(first, want);
    }

    /// Over many parallel tasks: the sum, and the gradients against sums in f64 by definition.
    #[test]
    fn many_tasks_give_the_sums_of_one() {
        let (n, plane, channels) = (3, 31 * 33, 48);
        let len = n * plane * channels;
        assert!(len > 4 * TASK_VALUES);
        let value = |i: usize, m: usize| ((i * 7919) % m) as f32 / m as f32 - 0.5;
        let x: Vec<f32> = (0..len).map(|i| value(i, 101)).collect();
        let r: Vec<f32> = (0..len).map(|i| value(i, 53)).collect();
        let gy: Vec<f32> = (0..len).map(|i| value(i, 97)).collect();
        let gamma: Vec<f32> = (0..channels).map(|c| value(c, 17) * 4.0).collect();
        let y = forward(&x, &gamma, (&r, ChannelOrder::Last), plane);
        for i in (0..len).step_by(331) {
            assert_eq!(y[i], r[i] + gamma[i % channels] * x[i], "y[{i}]");
        }
        let g = backward(&x, &gamma, &gy);
        for i in (0..len).step_by(331) {
            assert_eq!(g.x[i], gy[i] * gamma[i % channels], "dx[{i}]");
        }
        for c in 0..channels {
            let want: f64 = (c..len)
                .step_by(channels)
                .map(|i| f64::from(gy[i] * x[i]))
                .sum();
            assert!(
                (f64::from(g.gamma[c]) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "dgamma[{c}]: {} vs {want}",
                g.gamma[c]
            );
        }
    }
}
