//! Runs a loop compiled for the widest vector unit the CPU has, chosen at run time: the
//! release build targets baseline x86-64 (SSE2), so without this the compiler vectorises our
//! element-wise loops 4 floats wide on a CPU that can do 16.
//!
//! The closure must be marked `#[inline(always)]` (and so must what it calls), so that its
//! body is compiled inside the `#[target_feature]` function rather than as a separate baseline
//! function.

/// The vector instructions a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Simd {
    /// The widest this CPU has: AVX-512F, else AVX2 + FMA, else the baseline.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// `f()`, compiled for the widest vector unit this CPU has ([`Simd::detect`]).
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    match Simd::detect() {
        // SAFETY: the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { with_avx512(f) },
        // SAFETY: the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { with_avx2(f) },
        Simd::Portable => f(),
    }
}

/// `Σ f(v)` over `values` in f64, as eight running sums (so the loop vectorises).
#[inline(always)]
pub(super) fn sum_f64(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// `Σ a·b` over pairs, each product in f32, summed in f64 as eight running sums (so the loop
/// vectorises).
#[inline(always)]
pub(super) fn sum_f64_pairs(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| (x * y) as f64)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += (x * y) as f64;
        }
    }
    lanes.iter().sum::<f64>() + rest
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
