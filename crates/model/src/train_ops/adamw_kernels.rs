//! One AdamW step over a parameter tensor, in one parallel pass: the new parameter, first and
//! second moments from the old ones and the gradient (times the clipping factor, when the
//! gradients are clipped by their global norm).
//!
//! burn's AdamW is a dozen element-wise tensor operations per parameter, each a full pass and,
//! on flex, each on one thread. Here each element is updated once, in parallel chunks, with
//! exactly burn's arithmetic in burn's order (every operation rounded to f32 as burn's separate
//! operations round), so the result is bit-for-bit burn's `AdamW` (AMSGrad and cautious decay
//! off) — given the gradient multiplied by `grad_scale` first, as a separate f32 pass would —
//! and its state stays burn's `AdamWState` record.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::vectorized::vectorized;

/// The scalars of one step, as burn computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - beta_1^t`.
    pub bias_correction_1: f32,
    /// `1 - beta_2^t`.
    pub bias_correction_2: f32,
    /// `1 - lr · weight_decay`.
    pub decay: f32,
    pub lr: f32,
    /// The factor the gradient is multiplied by before the step (global-norm clipping); 1
    /// leaves it as it is.
    pub grad_scale: f32,
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The new parameter and moments.
pub struct AdamWOutput {
    pub param: Vec<f32>,
    pub moment_1: Vec<f32>,
    pub moment_2: Vec<f32>,
}

/// One step for parameter `param`, gradient `grad` and moments `m`, `v` (zeros before the
/// first step).
pub fn step(param: &[f32], grad: &[f32], m: &[f32], v: &[f32], s: &AdamWScalars) -> AdamWOutput {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n);
    let (mut p_out, mut m_out, mut v_out) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    let spare = |v: &mut Vec<f32>| -> *mut [MaybeUninit<f32>] { &mut v.spare_capacity_mut()[..n] };
    // SAFETY: three distinct buffers of capacity ≥ n.
    let (p_o, m_o, v_o) = unsafe {
        (
            &mut *spare(&mut p_out),
            &mut *spare(&mut m_out),
            &mut *spare(&mut v_out),
        )
    };
    p_o.par_chunks_mut(CHUNK)
        .zip(m_o.par_chunks_mut(CHUNK))
        .zip(v_o.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(chunk, ((p_o, m_o), v_o))| {
            let start = chunk * CHUNK;
            let end = start + p_o.len();
            let (p, g, m, v) = (
                &param[start..end],
                &grad[start..end],
                &m[start..end],
                &v[start..end],
            );
            vectorized(
                #[inline(always)]
                || {
                    for i in 0..p_o.len() {
                        let g = g[i] * s.grad_scale;
                        let m1 = m[i] * s.beta_1 + g * f1;
                        let m2 = v[i] * s.beta_2 + (g * g) * f2;
                        let delta = (m1 / s.bias_correction_1)
                            / ((m2 / s.bias_correction_2).sqrt() + s.epsilon);
                        p_o[i].write(p[i] * s.decay - delta * s.lr);
                        m_o[i].write(m1);
                        v_o[i].write(m2);
                    }
                },
            )
        });
    // SAFETY: the chunks cover 0..n of each buffer, and every element was written.
    unsafe {
        p_out.set_len(n);
        m_out.set_len(n);
        v_out.set_len(n);
    }
    AdamWOutput {
        param: p_out,
        moment_1: m_out,
        moment_2: v_out,
    }
}
