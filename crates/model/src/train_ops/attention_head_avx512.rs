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

use super::attention_kernels::{softmax, softmax_backward};

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
    /// Keys (or values) transposed, `[HEAD_DIM][padded tokens]`.
    keys_t: Vec<f32>,
    /// The scores, then the probabilities, `[tokens][padded]`.
    scores: Vec<f32>,
    /// The backward pass's probability gradients, then the scores' gradients, `[tokens][padded]`.
    grads: Vec<f32>,
}

/// `tokens` rows of [`HEAD_DIM`] values, `stride` apart, from `data[0]`: one head's slice of
/// the packed projection (or of its gradient).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

impl Rows<'_> {
    fn fits(&self, tokens: usize) -> bool {
        tokens == 0 || (tokens - 1) * self.stride + HEAD_DIM <= self.data.len()
    }

    fn ptr(&self) -> *const f32 {
        self.data.as_ptr()
    }
}

/// One head of one image.
pub(super) struct Head<'a> {
    pub q: Rows<'a>,
    pub k: Rows<'a>,
    pub v: Rows<'a>,
    pub tokens: usize,
    pub scale: f32,
}

impl Head<'_> {
    fn check(&self) {
        let n = self.tokens;
        assert!(self.q.fits(n) && self.k.fits(n) && self.v.fits(n));
    }

    /// Keys (and scores) padded to whole 64-key blocks.
    fn padded(&self) -> usize {
        self.tokens.div_ceil(KEYS) * KEYS
    }
}

/// Output rows: token `t`'s [`HEAD_DIM`] values at `ptr + t·stride`.
#[derive(Clone, Copy)]
pub(super) struct OutRows {
    pub ptr: *mut f32,
    pub stride: usize,
}

/// A `[rows][terms]` matrix of weights read as `(r, t) → ptr[r·row_stride + t·term_stride]`:
/// the probabilities or their gradients, as they are or transposed.
#[derive(Clone, Copy)]
struct Weights {
    ptr: *const f32,
    row_stride: usize,
    term_stride: usize,
}

/// Writes the head's output rows into `out`.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]), and `out` must be valid for writes at every
/// one of the head's rows, written by no one else while this runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward(head: &Head<'_>, out: OutRows, s: &mut Scratch) {
    head.check();
    let n = head.tokens;
    if n == 0 {
        return;
    }
    // SAFETY: the rows are checked above and the scratch sized by `probabilities`; the
    // caller vouches for `out`.
    unsafe {
        let padded = probabilities(head, s);
        let p = Weights {
            ptr: s.scores.as_ptr(),
            row_stride: padded,
            term_stride: 1,
        };
        weighted(p, n, n, head.v, out);
    }
}

/// Writes the gradients of the head's q, k and v rows (`dq`, `dk`, `dv`) given the gradient
/// `g` of its output rows.
///
/// # Safety
/// As [`forward`], for each of `dq`, `dk` and `dv`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn backward(
    head: &Head<'_>,
    g: Rows<'_>,
    [dq, dk, dv]: [OutRows; 3],
    s: &mut Scratch,
) {
    head.check();
    let n = head.tokens;
    assert!(g.fits(n));
    if n == 0 {
        return;
    }
    // SAFETY (whole body): the rows are checked above, the scratch is sized by
    // `probabilities` and here, and the caller vouches for the outputs.
    unsafe {
        let padded = probabilities(head, s);
        // dP = g · vᵀ, then dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)) (the softmax's backward
        // and the scale the scores were multiplied by).
        s.grads.resize(n * padded, 0.0);
        transpose_rows(head.v, n, padded, s.keys_t.as_mut_ptr());
        products(g, n, s.keys_t.as_ptr(), padded, 1.0, s.grads.as_mut_ptr());
        for (ds, p) in s
            .grads
            .chunks_exact_mut(padded)
            .zip(s.scores.chunks_exact(padded))
        {
            softmax_backward(&mut ds[..n], &p[..n], head.scale);
        }
        let rows = |m: &[f32]| Weights {
            ptr: m.as_ptr(),
            row_stride: padded,
            term_stride: 1,
        };
        let columns = |m: &[f32]| Weights {
            ptr: m.as_ptr(),
            row_stride: 1,
            term_stride: padded,
        };
        // dq = dS · k; dk = dSᵀ · q; dv = Pᵀ · g
        weighted(rows(&s.grads), n, n, head.k, dq);
        weighted(columns(&s.grads), n, n, head.q, dk);
        weighted(columns(&s.scores), n, n, g, dv);
    }
}

/// `softmax(q·kᵀ·scale)` into `s.scores` (`[tokens][padded]`); returns `padded`.
///
/// # Safety
/// AVX-512F, and the head's rows checked ([`Head::check`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn probabilities(head: &Head<'_>, s: &mut Scratch) -> usize {
    let (n, padded) = (head.tokens, head.padded());
    s.keys_t.resize(HEAD_DIM * padded, 0.0);
    s.scores.resize(n * padded, 0.0);
    // SAFETY: the keys are checked rows; `keys_t` and the scores are sized above.
    unsafe {
        transpose_rows(head.k, n, padded, s.keys_t.as_mut_ptr());
        products(
            head.q,
            n,
            s.keys_t.as_ptr(),
            padded,
            head.scale,
            s.scores.as_mut_ptr(),
        );
    }
    for row in s.scores.chunks_exact_mut(padded) {
        softmax(&mut row[..n]);
    }
    padded
}

/// `out[r][..padded] = scale · lhs[r] · keys_t` for the `n` rows of `lhs`.
///
/// # Safety
/// AVX-512F; `lhs` holds `n` checked rows, `keys_t` is `[HEAD_DIM][padded]` and `out` is
/// `[n][padded]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn products(
    lhs: Rows<'_>,
    n: usize,
    keys_t: *const f32,
    padded: usize,
    scale: f32,
    out: *mut f32,
) {
    let mut row = 0;
    while row < n {
        let rows = (n - row).min(ROWS);
        // SAFETY: rows `row..row + rows` exist in `lhs` and `out`.
        unsafe {
            match rows {
                6 => products_block::<6>(lhs, row, keys_t, padded, scale, out),
                5 => products_block::<5>(lhs, row, keys_t, padded, scale, out),
                4 => products_block::<4>(lhs, row, keys_t, padded, scale, out),
                3 => products_block::<3>(lhs, row, keys_t, padded, scale, out),
                2 => products_block::<2>(lhs, row, keys_t, padded, scale, out),
                _ => products_block::<1>(lhs, row, keys_t, padded, scale, out),
            }
        }
        row += rows;
    }
}

/// `out` rows = `weights · values` for `n` output rows and `terms` terms.
///
/// # Safety
/// AVX-512F; `weights` readable at every `(r, t)` with `r < n`, `t < terms`; `values` holds
/// `terms` checked rows; `out` writable at its `n` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn weighted(weights: Weights, n: usize, terms: usize, values: Rows<'_>, out: OutRows) {
    let mut row = 0;
    while row < n {
        let rows = (n - row).min(ROWS);
        // SAFETY: forwarded.
        unsafe {
            match rows {
                6 => weighted_block::<6>(weights, row, terms, values, out),
                5 => weighted_block::<5>(weights, row, terms, values, out),
                4 => weighted_block::<4>(weights, row, terms, values, out),
                3 => weighted_block::<3>(weights, row, terms, values, out),
                2 => weighted_block::<2>(weights, row, terms, values, out),
                _ => weighted_block::<1>(weights, row, terms, values, out),
            }
        }
        row += rows;
    }
}

/// `keys_t[c][t] = rows[t][c]`, sixteen rows at a time through registers: sixteen 16-value
/// pieces of sixteen rows, transposed in-register, give sixteen 16-token pieces of the output
/// (one element at a time, this copy was a fifth of the forward kernel's time).
///
/// # Safety
/// AVX-512F; `rows` holds `n` checked rows and `keys_t` is `[HEAD_DIM][padded]`, `n ≤ padded`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn transpose_rows(rows: Rows<'_>, n: usize, padded: usize, keys_t: *mut f32) {
    let k = rows.ptr();
    let mut t0 = 0;
    while t0 + 16 <= n {
        for c0 in (0..HEAD_DIM).step_by(16) {
            let mut block = [_mm512_setzero_ps(); 16];
            for (i, r) in block.iter_mut().enumerate() {
                // SAFETY: row `t0 + i < n` holds HEAD_DIM values.
                *r = unsafe { _mm512_loadu_ps(k.add((t0 + i) * rows.stride + c0)) };
            }
            let cols = transpose_16x16(block);
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
            unsafe { *keys_t.add(c * padded + t) = *k.add(t * rows.stride + c) };
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

/// `out` rows `row..row + R` = `scale · lhs rows · keys_t`, 64 columns at a time.
///
/// # Safety
/// As [`products`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn products_block<const R: usize>(
    lhs: Rows<'_>,
    row: usize,
    keys_t: *const f32,
    padded: usize,
    scale: f32,
    out: *mut f32,
) {
    let scale = _mm512_set1_ps(scale);
    let lhs_ptr = lhs.ptr();
    for block in (0..padded).step_by(KEYS) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for c in 0..HEAD_DIM {
            // SAFETY (whole block): `keys_t` is `[HEAD_DIM][padded]` and `block + KEYS ≤
            // padded`; each lhs row holds HEAD_DIM values (the caller's).
            let kv = unsafe { load_64(keys_t.add(c * padded + block)) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let q = _mm512_set1_ps(unsafe { *lhs_ptr.add((row + r) * lhs.stride + c) });
                for (a, &k) in acc.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(q, k, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: `out` is `[n][padded]` and `row + r < n`.
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

/// `out` rows `row..row + R` = their weights times the values.
///
/// # Safety
/// As [`weighted`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn weighted_block<const R: usize>(
    weights: Weights,
    row: usize,
    terms: usize,
    values: Rows<'_>,
    out: OutRows,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for t in 0..terms {
        // SAFETY: value row `t` holds HEAD_DIM values, and the weights are readable at
        // `(row + r, t)` (the caller's).
        let vv = unsafe { load_64(values.ptr().add(t * values.stride)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let at = (row + r) * weights.row_stride + t * weights.term_stride;
            let w = _mm512_set1_ps(unsafe { *weights.ptr.add(at) });
            for (a, &v) in acc.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(w, v, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller vouches for output row `row + r`, HEAD_DIM values.
        let dst = unsafe { out.ptr.add((row + r) * out.stride) };
        for (j, &a) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add(16 * j), a) };
        }
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
