//! A per-channel affine map followed by an activation — `act(x · scale[c] + shift[c])` over an
//! NCHW tensor — and its gradients, in one pass each, on plain f32 slices.
//!
//! This is a frozen batch norm and the ReLU/ReLU6 after it, as our CNNs train them. Composed from
//! burn's operations it is four full-size tensors forward (mul, add, relu, clamp) and as many
//! again backward, each a separate sweep over memory (and the broadcast reductions of the scale
//! and shift gradients on top); here the forward is one sweep and the backward one, parallel over
//! (image, channel) planes. The activation's derivative comes from recomputing `x · scale +
//! shift` (bit-identical to the forward's), so only `x` is kept for the backward.

use rayon::prelude::*;

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
    #[inline]
    fn passes(self, z: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => z > 0.0,
            Activation::Relu6 => z > 0.0 && z < 6.0,
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
    let channels = scale.len();
    let mut y = vec![0.0f32; x.len()];
    if plane == 0 || channels == 0 {
        return y;
    }
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(p, (y_p, x_p))| {
            let (s, t) = (scale[p % channels], shift[p % channels]);
            for (o, &v) in y_p.iter_mut().zip(x_p) {
                *o = activation.of(v * s + t);
            }
        });
    y
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
    let channels = scale.len();
    let mut dx = vec![0.0f32; x.len()];
    if plane == 0 || channels == 0 {
        return AffineGrads {
            x: dx,
            scale: vec![0.0; channels],
            shift: vec![0.0; channels],
        };
    }
    // Per plane: (Σ g'·x, Σ g'), then summed over the images of each channel.
    let sums: Vec<(f64, f64)> = dx
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane).zip(gy.par_chunks(plane)))
        .enumerate()
        .map(|(p, (dx_p, (x_p, gy_p)))| {
            let (s, t) = (scale[p % channels], shift[p % channels]);
            let (mut sum_gx, mut sum_g) = (Lanes::default(), Lanes::default());
            for (i, ((d, &v), &g)) in dx_p.iter_mut().zip(x_p).zip(gy_p).enumerate() {
                let g = if activation.passes(v * s + t) { g } else { 0.0 };
                *d = g * s;
                sum_gx.0[i % 8] += g * v;
                sum_g.0[i % 8] += g;
            }
            (sum_gx.sum(), sum_g.sum())
        })
        .collect();
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

/// Eight running sums (one per SIMD lane), added up in f64 at the end.
#[derive(Default)]
struct Lanes([f32; 8]);

impl Lanes {
    fn sum(&self) -> f64 {
        self.0.iter().map(|&v| v as f64).sum()
    }
}
