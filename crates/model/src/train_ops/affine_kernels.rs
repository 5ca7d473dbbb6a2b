//! A per-channel affine map followed by an activation — `act(x · scale[c] + shift[c])` over an
//! NCHW tensor — and its gradients, in one pass each, on plain f32 slices.
//!
//! This is a frozen batch norm and the ReLU/ReLU6 after it, as our CNNs train them. Composed from
//! burn's operations it is four full-size tensors forward (mul, add, relu, clamp) and as many
//! again backward, each a separate sweep over memory (and the broadcast reductions of the scale
//! and shift gradients on top); here the forward is one sweep and the backward one, parallel over
//! (image, channel) planes. The activation's derivative comes from recomputing `x · scale +
//! shift` (bit-identical to the forward's), so only `x` is kept for the backward.
//!
//! Both loops are branch-free and compiled for the widest vector unit the CPU has
//! ([`super::vectorized`]), and write their outputs without zero-filling them first. The
//! backward used to compile to a scalar compare-and-jump per element; vectorised, Lite0's
//! train step (batch 32) spends 0.9–1.2 s in its backward phase instead of 1.4–1.5 s.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::vectorized::vectorized;

/// The activation after the affine map.
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
}

impl Activation {
    /// The derivative, as PyTorch takes it: ReLU passes where the output is positive
    /// (`threshold_backward`), ReLU6 strictly inside (0, 6) (`hardtanh_backward`).
    #[inline(always)]
    fn passes(self, z: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => z > 0.0,
            Activation::Relu6 => (z > 0.0) & (z < 6.0),
        }
    }
}

/// `act(x · scale[c] + shift[c])` for `x` of `planes` contiguous planes of `plane` values each,
/// channel `c = plane index % scale.len()`.
pub fn forward(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    plane: usize,
    activation: Activation,
) -> Vec<f32> {
    let (len, channels) = (x.len(), scale.len());
    if plane == 0 || channels == 0 {
        return vec![0.0; len];
    }
    let mut y: Vec<f32> = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(p, (y_p, x_p))| {
            let (s, t) = (scale[p % channels], shift[p % channels]);
            vectorized(
                #[inline(always)]
                || match activation {
                    Activation::Identity => forward_plane(y_p, x_p, s, t, Activation::Identity),
                    Activation::Relu => forward_plane(y_p, x_p, s, t, Activation::Relu),
                    Activation::Relu6 => forward_plane(y_p, x_p, s, t, Activation::Relu6),
                },
            )
        });
    // SAFETY: the planes cover `y`'s first `len` elements (as many as `x` has), and
    // `forward_plane` wrote every element of its plane.
    unsafe { y.set_len(len) };
    y
}

/// One plane of [`forward`]; `activation` is a constant at each call, so the loop has no
/// branch and vectorises.
#[inline(always)]
fn forward_plane(y: &mut [MaybeUninit<f32>], x: &[f32], s: f32, t: f32, activation: Activation) {
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(activation.of(v * s + t));
    }
}

/// Gradients of [`forward`] for the output gradient `gy`.
pub struct AffineGrads {
    pub x: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

pub fn backward(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    gy: &[f32],
    plane: usize,
    activation: Activation,
) -> AffineGrads {
    let (len, channels) = (x.len(), scale.len());
    if plane == 0 || channels == 0 {
        return AffineGrads {
            x: vec![0.0; len],
            scale: vec![0.0; channels],
            shift: vec![0.0; channels],
        };
    }
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    // Per plane: (Σ g'·x, Σ g'), then summed over the images of each channel.
    let sums: Vec<(f64, f64)> = dx.spare_capacity_mut()[..len]
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane).zip(gy.par_chunks(plane)))
        .enumerate()
        .map(|(p, (dx_p, (x_p, gy_p)))| {
            let (s, t) = (scale[p % channels], shift[p % channels]);
            vectorized(
                #[inline(always)]
                || match activation {
                    Activation::Identity => {
                        backward_plane(dx_p, x_p, gy_p, s, t, Activation::Identity)
                    }
                    Activation::Relu => backward_plane(dx_p, x_p, gy_p, s, t, Activation::Relu),
                    Activation::Relu6 => backward_plane(dx_p, x_p, gy_p, s, t, Activation::Relu6),
                },
            )
        })
        .collect();
    // SAFETY: the planes cover `dx`'s first `len` elements, and `backward_plane` wrote every
    // element of its plane.
    unsafe { dx.set_len(len) };
    let mut dscale = vec![0.0f64; channels];
    let mut dshift = vec![0.0f64; channels];
    for (p, (gx, g)) in sums.into_iter().enumerate() {
        dscale[p % channels] += gx;
        dshift[p % channels] += g;
    }
    AffineGrads {
        x: dx,
        scale: dscale.into_iter().map(|v| v as f32).collect(),
        shift: dshift.into_iter().map(|v| v as f32).collect(),
    }
}

/// One plane of [`backward`]: writes `dx` and returns (Σ g'·x, Σ g'). Element `i` goes to
/// running sum `i % 8`, eight per sum (one per SIMD lane), added up in f64 at the end.
#[inline(always)]
fn backward_plane(
    dx: &mut [MaybeUninit<f32>],
    x: &[f32],
    gy: &[f32],
    s: f32,
    t: f32,
    activation: Activation,
) -> (f64, f64) {
    let (mut sum_gx, mut sum_g) = ([0.0f32; 8], [0.0f32; 8]);
    let (dx8, dx_rest) = dx.as_chunks_mut::<8>();
    let (x8, x_rest) = x.as_chunks::<8>();
    let (gy8, gy_rest) = gy.as_chunks::<8>();
    for ((d, v), g) in dx8.iter_mut().zip(x8).zip(gy8) {
        for lane in 0..8 {
            let g = masked(g[lane], activation.passes(v[lane] * s + t));
            d[lane].write(g * s);
            sum_gx[lane] += g * v[lane];
            sum_g[lane] += g;
        }
    }
    for (lane, ((d, &v), &g)) in dx_rest.iter_mut().zip(x_rest).zip(gy_rest).enumerate() {
        let g = masked(g, activation.passes(v * s + t));
        d.write(g * s);
        sum_gx[lane] += g * v;
        sum_g[lane] += g;
    }
    let total = |lanes: [f32; 8]| lanes.iter().map(|&v| v as f64).sum::<f64>();
    (total(sum_gx), total(sum_g))
}

/// `g` where `keep`, else +0.0, as a bit mask rather than a branch (an `if` here compiled to a
/// compare-and-jump per element, which kept the loop scalar).
#[inline(always)]
fn masked(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}
