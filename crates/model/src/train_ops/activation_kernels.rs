//! The activations our convolutions apply in their output pass (ReLU, ReLU6), and the gradient
//! before the activation, computed from the output, for their backward pass.
//!
//! A frozen batch norm is folded into its convolution in training
//! ([`crate::layers::conv_bn_act`]), so the convolution's forward pass adds the bias and applies
//! the activation while its output is warm, and its backward pass starts here: one parallel,
//! branch-free, vectorised pass (`super::vectorized`) that masks the output gradient where the
//! activation did not pass — in place — and sums it per channel for the bias. Composed from
//! burn's operations the batch norm and activation were four full-size tensors forward (mul,
//! add, relu, clamp) and as many again backward; then one fused affine pass each way, which
//! still read and wrote every activation once more than this.

use rayon::prelude::*;

use super::vectorized::vectorized;

/// The activation after a convolution (and the batch norm folded into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    /// `min(max(z, 0), 6)`.
    Relu6,
}

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    pub fn of(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// The activation, in place.
    pub fn apply(self, y: &mut [f32]) {
        if self != Activation::Identity {
            y.iter_mut().for_each(|v| *v = self.of(*v));
        }
    }

    /// Whether the gradient passes at output `z`, as PyTorch has it: ReLU where the output is
    /// positive (`threshold_backward`), ReLU6 where its input is strictly inside (0, 6)
    /// (`hardtanh_backward`) — exactly where the output is.
    #[inline(always)]
    fn passes(self, z: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => z > 0.0,
            Activation::Relu6 => (z > 0.0) & (z < 6.0),
        }
    }
}

/// Turns the output gradient `g` of `z = act(y)` into the gradient before the activation, in
/// place, and returns its sum over each channel: the backward of a convolution whose bias and
/// activation ran in its output pass (with a batch norm folded into it, in training). Planes of
/// `plane` values, channel `p % channels` for plane `p`. `z` tells where the activation passed:
/// ReLU's `z > 0` exactly where `y > 0`, ReLU6's `0 < z < 6` exactly where `0 < y < 6` —
/// PyTorch's rules, which read `y`. In place because the output gradient
/// is usually the caller's alone: rewriting it costs no new buffer and no second stream of
/// writes.
pub fn mask_pre_activation_grad(
    z: &[f32],
    g: &mut [f32],
    plane: usize,
    channels: usize,
    activation: Activation,
) -> Vec<f32> {
    assert_eq!(z.len(), g.len());
    if plane == 0 || channels == 0 {
        g.fill(0.0);
        return vec![0.0; channels];
    }
    let sums: Vec<f64> = g
        .par_chunks_mut(plane)
        .zip(z.par_chunks(plane))
        .map(|(g_p, z_p)| {
            vectorized(
                #[inline(always)]
                || match activation {
                    Activation::Identity => masked_plane(g_p, z_p, Activation::Identity),
                    Activation::Relu => masked_plane(g_p, z_p, Activation::Relu),
                    Activation::Relu6 => masked_plane(g_p, z_p, Activation::Relu6),
                },
            )
        })
        .collect();
    let mut per_channel = vec![0.0f64; channels];
    for (p, sum) in sums.into_iter().enumerate() {
        per_channel[p % channels] += sum;
    }
    per_channel.into_iter().map(|v| v as f32).collect()
}

/// One plane of [`mask_pre_activation_grad`]: masks `g` in place and returns its sum, in eight
/// running sums (one per SIMD lane) added up in f64.
#[inline(always)]
fn masked_plane(g: &mut [f32], z: &[f32], activation: Activation) -> f64 {
    let mut sum = [0.0f32; 8];
    let (g8, g_rest) = g.as_chunks_mut::<8>();
    let (z8, z_rest) = z.as_chunks::<8>();
    for (d, v) in g8.iter_mut().zip(z8) {
        for lane in 0..8 {
            d[lane] = masked(d[lane], activation.passes(v[lane]));
            sum[lane] += d[lane];
        }
    }
    for (lane, (d, &v)) in g_rest.iter_mut().zip(z_rest).enumerate() {
        *d = masked(*d, activation.passes(v));
        sum[lane] += *d;
    }
    sum.iter().map(|&v| v as f64).sum()
}

/// `g` where `keep`, else +0.0, as a bit mask rather than a branch (an `if` here compiled to a
/// compare-and-jump per element, which kept the loop scalar).
#[inline(always)]
fn masked(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}
