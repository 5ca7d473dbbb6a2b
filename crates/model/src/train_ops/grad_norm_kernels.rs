//! The sum of squares of a gradient, for clipping by the global norm (PyTorch's
//! `clip_grad_norm_`) before the optimizer step.
//!
//! burn's `powi_scalar(2).sum()` is two single-threaded passes on flex and allocates a squared
//! copy of every gradient; on ViT-B/32's 88 M parameters that and the separate scaling pass
//! took a fifth of a second per step while the second core waited. Here one parallel pass
//! reads each gradient once, summing in f64 (eight running sums per task, so the loop
//! vectorises); the scaling itself happens inside the AdamW pass
//! ([`super::adamw_kernels::AdamWScalars::grad_scale`]).

use rayon::prelude::*;

use super::vectorized::{sum_f64, vectorized};

/// Values per parallel task.
const CHUNK: usize = 1 << 15;

/// `Σ v²` over `values`, in f64.
pub fn sum_of_squares(values: &[f32]) -> f64 {
    values
        .par_chunks(CHUNK)
        .map(|chunk| {
            vectorized(
                #[inline(always)]
                || sum_f64(chunk, |v| v as f64 * v as f64),
            )
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_squares_over_ragged_chunks() {
        let values: Vec<f32> = (0..3 * CHUNK + 13)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let want: f64 = values.iter().map(|&v| v as f64 * v as f64).sum();
        let got = sum_of_squares(&values);
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        assert_eq!(sum_of_squares(&[]), 0.0);
        assert_eq!(sum_of_squares(&[3.0]), 9.0);
    }
}
