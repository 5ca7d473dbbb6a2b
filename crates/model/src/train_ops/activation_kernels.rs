//! The activations our convolutions apply in their output pass (ReLU, ReLU6), and the gradient
//! before the activation, computed from the output, for their backward pass.
//!
//! A frozen batch norm is folded into its convolution in training
//! ([`crate::layers::conv_bn_act`]), so the convolution's forward pass adds the bias and applies
//! the activation while its output is warm, and its backward pass starts here: one parallel,
//! branch-free, vectorised pass that masks the output gradient where the
//! activation did not pass — in place — and sums it per channel for the bias. Composed from
//! burn's operations the batch norm and activation were four full-size tensors forward (mul,
//! add, relu, clamp) and as many again backward; then one fused affine pass each way, which
//! still read and wrote every activation once more than this.
//!
//! The masking pass is written with explicit AVX-512 / AVX2 instructions ([`x86`]): compiled
//! for AVX-512 from portable code, the compiler kept it scalar (a masked scalar move per value)
//! and it took a fifth of a Lite0 bf16 train step on an AMX Xeon.

use rayon::prelude::*;

use half::bf16;

use super::stored::{self, Element, Stored, StoredMut};
use super::vectorized::Simd;

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
    mask_pre_activation_grad_stored(
        Stored::F32(z),
        StoredMut::F32(g),
        plane,
        channels,
        activation,
    )
}

/// [`mask_pre_activation_grad`] of an output and an output gradient each stored in f32 or
/// bf16 ([`super::stored`]): a bf16 output is widened as it is read (exactly), so the gradient
/// passes where the stored value lies inside the activation's range — as PyTorch's autocast,
/// whose ReLU6 backward reads its bf16 tensors; a bf16 gradient is masked in place (a kept
/// value is stored back unchanged), its sums taken in f32 as an f32 one's.
pub(super) fn mask_pre_activation_grad_stored(
    z: Stored<'_>,
    g: StoredMut<'_>,
    plane: usize,
    channels: usize,
    activation: Activation,
) -> Vec<f32> {
    assert_eq!(z.len(), g.len());
    if plane == 0 || channels == 0 {
        match g {
            StoredMut::F32(g) => g.fill(0.0),
            StoredMut::Bf16(g) => g.fill(bf16::ZERO),
        }
        return vec![0.0; channels];
    }
    let sums: Vec<f64> = match g {
        StoredMut::F32(g) => masked_planes(z, g, plane, activation),
        StoredMut::Bf16(g) => masked_planes(z, g, plane, activation),
    };
    let mut per_channel = vec![0.0f64; channels];
    for (p, sum) in sums.into_iter().enumerate() {
        per_channel[p % channels] += sum;
    }
    per_channel.into_iter().map(|v| v as f32).collect()
}

/// Each plane of `g` masked (in parallel), and its sum.
fn masked_planes<G: Element>(
    z: Stored<'_>,
    g: &mut [G],
    plane: usize,
    activation: Activation,
) -> Vec<f64> {
    let simd = Simd::detect();
    let mixed_vectors = stored::has_avx512_bf16();
    g.par_chunks_mut(plane)
        .enumerate()
        .map(|(p, g_p)| {
            let z_p = z.slice(p * plane, g_p.len());
            // f32 in and out: the plain AVX-512 or AVX2 pass.
            #[cfg(target_arch = "x86_64")]
            if let (Some(g_p), Stored::F32(z_p)) = (G::as_f32_mut(g_p), z_p) {
                match simd {
                    // SAFETY: the CPU has AVX-512F.
                    Simd::Avx512 => {
                        return unsafe { x86::masked_plane_avx512(g_p, z_p, activation) };
                    }
                    // SAFETY: the CPU has AVX2.
                    Simd::Avx2 => return unsafe { x86::masked_plane_avx2(g_p, z_p, activation) },
                    Simd::Portable => {}
                }
            }
            match z_p {
                // SAFETY: the CPU has AVX-512 F, BW, VL and BF16.
                #[cfg(target_arch = "x86_64")]
                Stored::F32(z_p) if mixed_vectors => unsafe {
                    x86::masked_plane_bf16_avx512(g_p, z_p, activation)
                },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Stored::Bf16(z_p) if mixed_vectors => unsafe {
                    x86::masked_plane_bf16_avx512(g_p, z_p, activation)
                },
                Stored::F32(z_p) => masked_plane(g_p, z_p, activation),
                Stored::Bf16(z_p) => masked_plane(g_p, z_p, activation),
            }
        })
        .collect()
}

/// One plane of [`mask_pre_activation_grad`]: masks `g` in place and returns its sum, in eight
/// running sums (one per SIMD lane) added up in f64.
fn masked_plane<Z: Element, G: Element>(g: &mut [G], z: &[Z], activation: Activation) -> f64 {
    let mut sum = [0.0f32; 8];
    let (g8, g_rest) = g.as_chunks_mut::<8>();
    let (z8, z_rest) = z.as_chunks::<8>();
    for (d, v) in g8.iter_mut().zip(z8) {
        for lane in 0..8 {
            let kept = masked(d[lane].to_f32(), activation.passes(v[lane].to_f32()));
            d[lane] = G::from_f32(kept);
            sum[lane] += kept;
        }
    }
    for (lane, (d, &v)) in g_rest.iter_mut().zip(z_rest).enumerate() {
        let kept = masked(d.to_f32(), activation.passes(v.to_f32()));
        *d = G::from_f32(kept);
        sum[lane] += kept;
    }
    sum.iter().map(|&v| v as f64).sum()
}

/// `g` where `keep`, else +0.0, as a bit mask rather than a branch (an `if` here compiled to a
/// compare-and-jump per element, which kept the loop scalar).
#[inline(always)]
fn masked(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}

/// [`masked_plane`] in AVX-512 and AVX2 registers: the same masks (ordered compares, so a NaN
/// output blocks the gradient as `passes` does) and the same +0.0 where blocked; the sum in 16
/// (AVX-512) or 8 (AVX2, as [`masked_plane`]) running f32 sums, added up in f64.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::stored::Element;
    use super::Activation;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn masked_plane_avx512(
        g: &mut [f32],
        z: &[f32],
        activation: Activation,
    ) -> f64 {
        // SAFETY: AVX-512F, which loading and storing f32 need.
        unsafe { masked_plane_16(g, z, activation) }
    }

    /// [`masked_plane_avx512`] with either side stored in bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn masked_plane_bf16_avx512<Z: Element, G: Element>(
        g: &mut [G],
        z: &[Z],
        activation: Activation,
    ) -> f64 {
        // SAFETY: AVX-512 F, BW, VL and BF16, which loading and storing bf16 need.
        unsafe { masked_plane_16(g, z, activation) }
    }

    /// The AVX-512 body, `z` and `g` loaded (and `g` stored) by their element types.
    ///
    /// # Safety
    /// The CPU has what `Z::load16`, `G::load16` and `G::store16` need.
    #[inline(always)]
    unsafe fn masked_plane_16<Z: Element, G: Element>(
        g: &mut [G],
        z: &[Z],
        activation: Activation,
    ) -> f64 {
        assert_eq!(g.len(), z.len());
        // SAFETY: AVX-512F (the caller's contract) for every intrinsic below; each chunk is
        // 16 values.
        unsafe {
            let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
            let mut acc = _mm512_setzero_ps();
            let (g16, g_rest) = g.as_chunks_mut::<16>();
            let (z16, z_rest) = z.as_chunks::<16>();
            for (d, v) in g16.iter_mut().zip(z16) {
                let gv = G::load16(d.as_ptr(), u16::MAX);
                let kept = match activation {
                    Activation::Identity => gv,
                    Activation::Relu | Activation::Relu6 => {
                        let zv = Z::load16(v.as_ptr(), u16::MAX);
                        let mut keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(zv, zero);
                        if activation == Activation::Relu6 {
                            keep &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(zv, six);
                        }
                        let kept = _mm512_maskz_mov_ps(keep, gv);
                        G::store16(d.as_mut_ptr(), u16::MAX, kept);
                        kept
                    }
                };
                acc = _mm512_add_ps(acc, kept);
            }
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
            finish(&mut lanes, g_rest, z_rest, activation)
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn masked_plane_avx2(
        g: &mut [f32],
        z: &[f32],
        activation: Activation,
    ) -> f64 {
        assert_eq!(g.len(), z.len());
        let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        let mut acc = _mm256_setzero_ps();
        let (g8, g_rest) = g.as_chunks_mut::<8>();
        let (z8, z_rest) = z.as_chunks::<8>();
        for (d, v) in g8.iter_mut().zip(z8) {
            // SAFETY: `d` and `v` are 8 floats each.
            let gv = unsafe { _mm256_loadu_ps(d.as_ptr()) };
            let kept = match activation {
                Activation::Identity => gv,
                Activation::Relu | Activation::Relu6 => {
                    let zv = unsafe { _mm256_loadu_ps(v.as_ptr()) };
                    let mut keep = _mm256_cmp_ps::<_CMP_GT_OQ>(zv, zero);
                    if activation == Activation::Relu6 {
                        keep = _mm256_and_ps(keep, _mm256_cmp_ps::<_CMP_LT_OQ>(zv, six));
                    }
                    let kept = _mm256_and_ps(keep, gv);
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(d.as_mut_ptr(), kept) };
                    kept
                }
            };
            acc = _mm256_add_ps(acc, kept);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        finish(&mut lanes, g_rest, z_rest, activation)
    }

    /// Masks the values past the last full register and adds them to the running sums (value
    /// `i` to sum `i`), then adds the sums up in f64.
    fn finish<Z: Element, G: Element>(
        lanes: &mut [f32],
        g: &mut [G],
        z: &[Z],
        activation: Activation,
    ) -> f64 {
        for (lane, (d, &v)) in lanes.iter_mut().zip(g.iter_mut().zip(z)) {
            let kept = super::masked(d.to_f32(), activation.passes(v.to_f32()));
            *d = G::from_f32(kept);
            *lane += kept;
        }
        lanes.iter().map(|&v| v as f64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::stored::{rounded, to_bf16};
    use super::*;

    /// The vector passes mask exactly as the portable one (NaN, ±0, both edges of ReLU6,
    /// every tail length) and sum to the same within f32 rounding.
    #[test]
    fn vector_passes_match_the_portable_one() {
        let specials = [
            f32::NAN,
            0.0,
            -0.0,
            6.0,
            5.999,
            1e-30,
            -1e-30,
            7.0,
            -3.0,
            2.5,
        ];
        for len in 0..70 {
            let z: Vec<f32> = (0..len)
                .map(|i| specials[(i * 7 + len) % specials.len()])
                .collect();
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            for activation in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                let mut want = g.clone();
                let want_sum = masked_plane(&mut want, &z, activation);
                let mut results = vec![("portable", want.clone(), want_sum)];
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        let mut got = g.clone();
                        // SAFETY: the CPU has AVX-512F.
                        let sum = unsafe { x86::masked_plane_avx512(&mut got, &z, activation) };
                        results.push(("avx512", got, sum));
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut got = g.clone();
                        // SAFETY: the CPU has AVX2.
                        let sum = unsafe { x86::masked_plane_avx2(&mut got, &z, activation) };
                        results.push(("avx2", got, sum));
                    }
                }
                // An output stored in bf16 masks as its widened values do (NaN, ±0 and 6.0
                // survive the rounding; 5.999 rounds to 6.0 and blocks).
                let (z_bf16, z_rounded) = (to_bf16(&z), rounded(&z));
                let mut from_rounded = g.clone();
                let rounded_sum = masked_plane(&mut from_rounded, &z_rounded, activation);
                let mut got = g.clone();
                let sum = masked_plane(&mut got, &z_bf16, activation);
                results.push(("portable bf16", got, sum));
                #[cfg(target_arch = "x86_64")]
                if stored::has_avx512_bf16() {
                    let mut got = g.clone();
                    // SAFETY: the CPU has AVX-512 F, BW, VL and BF16.
                    let sum =
                        unsafe { x86::masked_plane_bf16_avx512(&mut got, &z_bf16, activation) };
                    results.push(("avx512 bf16", got, sum));
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for (name, got, got_sum) in results {
                    let (want, want_sum) = if name.ends_with("bf16") {
                        (&from_rounded, rounded_sum)
                    } else {
                        (&want, want_sum)
                    };
                    assert_eq!(
                        bits(&got),
                        bits(want),
                        "{name}, {activation:?}, {len} values"
                    );
                    assert!(
                        (got_sum - want_sum).abs() <= 1e-5 * (1.0 + want_sum.abs()),
                        "{name}, {activation:?}, {len} values: sum {got_sum} vs {want_sum}"
                    );
                }
            }
        }
    }

    /// A gradient stored in bf16 is masked in place as its widened values are in f32 (the
    /// kept values stored back unchanged, +0.0 where blocked) and sums the same, whichever
    /// way its output is stored; planes of every tail length, in parallel.
    #[test]
    fn bf16_gradients_mask_in_place_as_f32() {
        let (plane, channels, images) = (37, 5, 3);
        let len = plane * channels * images;
        let z: Vec<f32> = (0..len)
            .map(|i| (i as f32 * 0.61).sin() * 4.0 + 2.0)
            .collect();
        let g = rounded(
            &(0..len)
                .map(|i| (i as f32 * 0.37).cos() * 3.0)
                .collect::<Vec<_>>(),
        );
        for activation in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            for z_bf16 in [false, true] {
                let z_values = if z_bf16 { rounded(&z) } else { z.clone() };
                let z16 = to_bf16(&z);
                let z_stored = if z_bf16 {
                    Stored::Bf16(&z16)
                } else {
                    Stored::F32(&z)
                };
                let mut want = g.clone();
                let want_sums =
                    mask_pre_activation_grad(&z_values, &mut want, plane, channels, activation);
                let mut got = to_bf16(&g);
                let sums = mask_pre_activation_grad_stored(
                    z_stored,
                    StoredMut::Bf16(&mut got),
                    plane,
                    channels,
                    activation,
                );
                assert_eq!(got, to_bf16(&want), "{activation:?}, bf16 output {z_bf16}");
                for (a, b) in sums.iter().zip(&want_sums) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{activation:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
