//! One attention head's forward pass, `softmax(q·kᵀ·scale)·v`, in AVX-512 registers, for the
//! head size every OpenCLIP / timm ViT uses (64): what [`super::attention_kernels::forward`]
//! runs on CPUs with AVX-512F.
//!
//! Why not the `gemm` crate here: at ViT-B/32's 50 tokens each head's products are
//! `[50, 64] × [64, 50]` and `[50, 50] × [50, 64]`, and a call of a general GEMM (dispatch,
//! packing both sides, edge kernels) cost more than its arithmetic — attention ran at
//! 47 GFLOP/s, 8 % of a ViT-B/32 forward pass at batch 32 for 1 % of its multiply-adds. Here
//! the keys are transposed once into a per-thread scratch (`[64][keys]`, keys padded to a
//! multiple of 64), the scores of six queries against 64 keys are 24 accumulators (one
//! broadcast of a query value per four key vectors), the softmax runs on each row while it is
//! in L1, and `P · v` is again six rows × 64 outputs in registers, written straight into the
//! token rows of the output (no per-head block and no interleaving pass).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::gelu_kernels::exp as exp_nonpositive;

/// The head size this kernel handles (ViT-B/32, B/16, L/14 all use 64).
pub(super) const HEAD_DIM: usize = 64;

/// Query rows per register block.
const ROWS: usize = 6;

/// Keys (score columns) per register block: four vectors.
const KEYS: usize = 64;

/// Whether this CPU runs the kernel.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Per-thread buffers reused from head to head.
#[derive(Default)]
pub(super) struct Scratch {
    /// The keys transposed, `[HEAD_DIM][padded keys]`.
    keys_t: Vec<f32>,
    /// The scores, then the probabilities, `[tokens][padded keys]`.
    scores: Vec<f32>,
}

/// One head of one image. Token `t`'s query, key and value are `q[t·stride..][..64]`,
/// `k[t·stride..]`, `v[t·stride..]`; its output goes to `out[t·out_stride..][..64]`.
pub(super) struct Head<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
    pub tokens: usize,
    pub scale: f32,
}

impl Head<'_> {
    fn fits(&self, slice: &[f32], stride: usize) -> bool {
        self.tokens == 0 || (self.tokens - 1) * stride + HEAD_DIM <= slice.len()
    }
}

/// Writes the head's output rows into `out` (token `t` at `out[t·out_stride..][..64]`).
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]), and `out` must be valid for writes at every
/// one of those rows, written by no one else while this runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward(head: &Head<'_>, out: *mut f32, out_stride: usize, s: &mut Scratch) {
    let n = head.tokens;
    assert!(head.fits(head.q, head.stride) && head.fits(head.k, head.stride));
    assert!(head.fits(head.v, head.stride) && out_stride >= HEAD_DIM);
    if n == 0 {
        return;
    }
    let padded = n.div_ceil(KEYS) * KEYS;
    s.keys_t.resize(HEAD_DIM * padded, 0.0);
    s.scores.resize(n * padded, 0.0);
    // SAFETY: every key holds HEAD_DIM values (asserted above), and `keys_t` is
    // `[HEAD_DIM][padded]` with `t < n ≤ padded`.
    unsafe { transpose_keys(head, padded, s.keys_t.as_mut_ptr()) };
    let mut row = 0;
    while row < n {
        let rows = (n - row).min(ROWS);
        // SAFETY: rows `row..row + rows` of q and of the scores exist (asserted and sized
        // above), and `keys_t` holds `padded` columns for each of the 64 dimensions.
        unsafe {
            match rows {
                6 => scores::<6>(head, row, padded, s),
                5 => scores::<5>(head, row, padded, s),
                4 => scores::<4>(head, row, padded, s),
                3 => scores::<3>(head, row, padded, s),
                2 => scores::<2>(head, row, padded, s),
                _ => scores::<1>(head, row, padded, s),
            }
        }
        for r in row..row + rows {
            softmax(&mut s.scores[r * padded..][..n]);
        }
        // SAFETY: as above for the probabilities and v; the caller vouches for `out`.
        unsafe {
            match rows {
                6 => weighted_values::<6>(head, row, padded, s, out, out_stride),
                5 => weighted_values::<5>(head, row, padded, s, out, out_stride),
                4 => weighted_values::<4>(head, row, padded, s, out, out_stride),
                3 => weighted_values::<3>(head, row, padded, s, out, out_stride),
                2 => weighted_values::<2>(head, row, padded, s, out, out_stride),
                _ => weighted_values::<1>(head, row, padded, s, out, out_stride),
            }
        }
        row += rows;
    }
}

/// `keys_t[c][t] = k[t][c]`, sixteen keys at a time through registers: sixteen 16-value
/// pieces of sixteen keys, transposed in-register, give sixteen 16-key pieces of the output
/// (one element at a time, this copy was a fifth of the kernel's time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn transpose_keys(head: &Head<'_>, padded: usize, keys_t: *mut f32) {
    let n = head.tokens;
    let k = head.k.as_ptr();
    let mut t0 = 0;
    while t0 + 16 <= n {
        for c0 in (0..HEAD_DIM).step_by(16) {
            let mut rows = [_mm512_setzero_ps(); 16];
            for (i, r) in rows.iter_mut().enumerate() {
                // SAFETY: key `t0 + i < n` holds HEAD_DIM values.
                *r = unsafe { _mm512_loadu_ps(k.add((t0 + i) * head.stride + c0)) };
            }
            let cols = transpose_16x16(rows);
            for (i, c) in cols.iter().enumerate() {
                // SAFETY: row `c0 + i < HEAD_DIM` of `keys_t`, columns `t0..t0 + 16 ≤ n`.
                unsafe { _mm512_storeu_ps(keys_t.add((c0 + i) * padded + t0), *c) };
            }
        }
        t0 += 16;
    }
    for t in t0..n {
        for c in 0..HEAD_DIM {
            // SAFETY: as above, one element at a time.
            unsafe { *keys_t.add(c * padded + t) = *k.add(t * head.stride + c) };
        }
    }
}

/// The transpose of a 16 × 16 block held as sixteen rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn transpose_16x16(r: [__m512; 16]) -> [__m512; 16] {
    // Interleave 32-bit lanes of row pairs, then 64-bit lanes of pair pairs: each 128-bit
    // lane now holds a 4 × 4 block transposed.
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // `b[4·i + j]`, lane `l`: column `4·l + j` of input rows `4·i..4·i + 4`.
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        for h in 0..2 {
            let (x, y) = (
                _mm512_castps_pd(a[4 * i + h]),
                _mm512_castps_pd(a[4 * i + 2 + h]),
            );
            b[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            b[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    // Then gather 128-bit lanes: output row `4·l + j` is lane `l` of `b[j]`, `b[4 + j]`,
    // `b[8 + j]`, `b[12 + j]`.
    let mut c = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let (g0, g1, g2, g3) = (b[j], b[4 + j], b[8 + j], b[12 + j]);
        // lanes (0, 1) of g0 and g1, then of g2 and g3; likewise lanes (2, 3).
        let lo01 = _mm512_shuffle_f32x4::<0b01_00_01_00>(g0, g1);
        let lo23 = _mm512_shuffle_f32x4::<0b01_00_01_00>(g2, g3);
        let hi01 = _mm512_shuffle_f32x4::<0b11_10_11_10>(g0, g1);
        let hi23 = _mm512_shuffle_f32x4::<0b11_10_11_10>(g2, g3);
        c[j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(lo01, lo23);
        c[4 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(lo01, lo23);
        c[8 + j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(hi01, hi23);
        c[12 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(hi01, hi23);
    }
    c
}

/// Scores of queries `row..row + R` against every (padded) key, times the scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn scores<const R: usize>(head: &Head<'_>, row: usize, padded: usize, s: &mut Scratch) {
    let scale = _mm512_set1_ps(head.scale);
    let keys_t = s.keys_t.as_ptr();
    let out = s.scores.as_mut_ptr();
    for block in (0..padded).step_by(KEYS) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for c in 0..HEAD_DIM {
            // SAFETY (whole block): `keys_t` is `[HEAD_DIM][padded]` and `block + KEYS ≤
            // padded`; each query row holds HEAD_DIM values (the caller's asserts).
            let k = unsafe { keys_t.add(c * padded + block) };
            let kv = unsafe { load_64(k) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let q =
                    _mm512_set1_ps(unsafe { *head.q.get_unchecked((row + r) * head.stride + c) });
                for (a, &k) in acc.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(q, k, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the scores are `[tokens][padded]` and `row + r < tokens`.
            let dst = unsafe { out.add((row + r) * padded + block) };
            for (j, &a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(dst.add(16 * j), _mm512_mul_ps(a, scale)) };
            }
        }
    }
}

/// 64 consecutive values as four vectors.
///
/// # Safety
/// `p` must be valid for reading 64 values, and the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn load_64(p: *const f32) -> [__m512; 4] {
    // SAFETY: the caller's.
    unsafe { std::array::from_fn(|j| _mm512_loadu_ps(p.add(16 * j))) }
}

/// `out` rows `row..row + R` = their probabilities times the values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn weighted_values<const R: usize>(
    head: &Head<'_>,
    row: usize,
    padded: usize,
    s: &Scratch,
    out: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let p = s.scores.as_ptr();
    for t in 0..head.tokens {
        // SAFETY: token `t`'s value holds HEAD_DIM values (the caller's asserts), and the
        // probabilities are `[tokens][padded]` with `t < tokens ≤ padded`.
        let v = unsafe { head.v.as_ptr().add(t * head.stride) };
        let vv = unsafe { load_64(v) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(unsafe { *p.add((row + r) * padded + t) });
            for (a, &v) in acc.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(w, v, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller vouches for output row `row + r`, HEAD_DIM values.
        let dst = unsafe { out.add((row + r) * out_stride) };
        for (j, &a) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add(16 * j), a) };
        }
    }
}

/// `row = softmax(row)`, compiled inside the AVX-512 kernel (the loops vectorise).
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (m, &v) in max.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let max = max.iter().copied().fold(rest, f32::max);
    let mut sums = [0.0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (sum, v) in sums.iter_mut().zip(chunk) {
            *v = exp_nonpositive(*v - max);
            *sum += *v;
        }
    }
    let mut rest = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        rest += *v;
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + rest);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_16x16_transposes() {
        if !available() {
            eprintln!("SKIPPED transpose_16x16_transposes: no AVX-512F on this CPU");
            return;
        }
        let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512F checked above; the loads and stores stay inside 256 values.
        let out = unsafe {
            let rows: [__m512; 16] =
                std::array::from_fn(|i| _mm512_loadu_ps(values.as_ptr().add(16 * i)));
            let cols = transpose_16x16(rows);
            let mut out = vec![0.0f32; 256];
            for (i, c) in cols.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *c);
            }
            out
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * i + j], values[16 * j + i], "({i}, {j})");
            }
        }
    }
}
