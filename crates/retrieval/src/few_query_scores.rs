//! Scores of a few queries against a block of gallery rows in one pass over the rows, f16 rows
//! converted in registers. A served search has one query, or the few its batcher gathered
//! (`serve`'s `search_batcher`); for them the GEMM path costs more than the multiplications:
//! f16 rows are first converted into a scratch block, and a GEMM a few rows thin packs the
//! whole block again before multiplying it, so at 1M × 1280 four queries took twice one
//! query's time though the rows are read from memory once either way. Here each pair of
//! gallery rows is loaded (and converted) once into registers and multiplied with every query,
//! four queries at a time, so the scan stays bound by reading the rows.
//!
//! Written by hand because no crate offers it: `gemm` has no f16 operand on x86 without AVX-512
//! FP16, and a matrix-vector product of another crate would still convert the rows first. It
//! runs where the CPU has AVX2, FMA and F16C (checked once at run time); elsewhere the caller
//! keeps the GEMM path.

use half::f16;

use crate::matrix::Storage;
use crate::topk::BlockRows;

/// Queries per register group (eight accumulators: two rows × four queries).
const GROUP: usize = 4;

/// Whether the kernel beats the GEMM path for `n_q` queries against rows stored as f16 (or
/// f32 rows read in order). Measured at 1M × 1280 on a 2-core AVX2 machine (`bench topk
/// --f16`): on f16 rows it wins up to 64 queries (4 queries 0.12 s against 0.46); on f32 rows
/// a GEMM of one row is `gemm`'s own matrix-vector product, faster than this kernel, and from
/// about 32 queries the GEMM's register tiles win. A filter's listed rows are always scored
/// here (the GEMM would need them gathered into a copy first).
pub(crate) fn pays_off(rows_f16: bool, listed: bool, n_q: usize) -> bool {
    if rows_f16 || listed {
        n_q <= 64
    } else {
        (2..=16).contains(&n_q)
    }
}

/// A few queries laid out for the kernel: zero rows pad them to a multiple of [`GROUP`].
pub(crate) struct FewQueries {
    padded: Vec<f32>,
    n_q: usize,
    dim: usize,
}

impl FewQueries {
    /// `queries` (`n_q` rows of `dim`, row-major) ready to score, or `None` when this CPU lacks
    /// the instructions the kernel needs.
    pub(crate) fn new(queries: &[f32], n_q: usize, dim: usize) -> Option<Self> {
        if !kernel_available() || n_q == 0 || dim == 0 {
            return None;
        }
        let mut padded = queries[..n_q * dim].to_vec();
        padded.resize(n_q.div_ceil(GROUP) * GROUP * dim, 0.0);
        Some(FewQueries { padded, n_q, dim })
    }

    /// `tile[q * n_g + j] = query q · gallery row rows.index(j)` for the block's `n_g` rows
    /// of `gallery` (row-major, `dim` wide, as stored).
    pub(crate) fn scores(
        &self,
        gallery: Storage<'_>,
        rows: BlockRows<'_>,
        n_g: usize,
        tile: &mut [f32],
    ) {
        let dim = self.dim;
        assert!(tile.len() >= self.n_q * n_g, "score tile too small");
        // SAFETY: `new` checked AVX2, FMA and F16C; the kernel slices every row it reads
        // (bounds-checked) and loads 8 lanes only below the row's last whole 8; the queries
        // are padded to whole groups; the tile holds `n_q * n_g` (asserted).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let q = &self.padded;
            match gallery {
                Storage::F32(g) => x86::scores_f32(q, self.n_q, g, rows, n_g, dim, tile),
                Storage::F16(g) => x86::scores_f16(q, self.n_q, g, rows, n_g, dim, tile),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("FewQueries::new returns None on this CPU");
    }
}

/// Whether this CPU runs the kernel (x86-64 with AVX2, FMA and F16C).
fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The value of one stored element, for the tail of a row past its last whole 8 lanes.
trait Element: Copy {
    fn value(self) -> f32;
}

impl Element for f32 {
    fn value(self) -> f32 {
        self
    }
}

impl Element for f16 {
    fn value(self) -> f32 {
        self.to_f32()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Element, GROUP};
    use crate::topk::BlockRows;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f32(row: &[f32], d: usize) -> __m256 {
        // SAFETY: callers pass `d + 8 <= row.len()`.
        unsafe { _mm256_loadu_ps(row.as_ptr().add(d)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f16(row: &[f16], d: usize) -> __m256 {
        // SAFETY: callers pass `d + 8 <= row.len()`; `f16` is a transparent `u16`.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(d) as *const __m128i)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_lanes(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    macro_rules! scores_kernel {
        ($name:ident, $elem:ty, $load:ident) => {
            /// See [`super::FewQueries::scores`]; `queries` holds whole groups of [`GROUP`].
            #[target_feature(enable = "avx2,fma,f16c")]
            pub fn $name(
                queries: &[f32],
                n_q: usize,
                gallery: &[$elem],
                rows: BlockRows<'_>,
                n_g: usize,
                dim: usize,
                tile: &mut [f32],
            ) {
                let body = dim / 8 * 8;
                let row = |j: usize| {
                    let at = rows.index(j) as usize * dim;
                    &gallery[at..at + dim]
                };
                let mut j = 0;
                while j < n_g {
                    // Two rows at a time (the last one twice when `n_g` is odd).
                    let j1 = (j + 1).min(n_g - 1);
                    let (r0, r1) = (row(j), row(j1));
                    // Where the next pair's rows start, to fetch them while these are scored.
                    let (n0, n1) = ((j + 2).min(n_g - 1), (j + 3).min(n_g - 1));
                    let next0 = gallery.as_ptr().wrapping_add(rows.index(n0) as usize * dim);
                    let next1 = gallery.as_ptr().wrapping_add(rows.index(n1) as usize * dim);
                    for (group, q) in queries.chunks_exact(GROUP * dim).enumerate() {
                        let (q0, rest) = q.split_at(dim);
                        let (q1, rest) = rest.split_at(dim);
                        let (q2, q3) = rest.split_at(dim);
                        let mut a = [_mm256_setzero_ps(); 2 * GROUP];
                        let mut d = 0;
                        while d < body {
                            // The next pair's rows at the same place: the hardware prefetcher
                            // alone left one core reading 7 GB/s of f16 rows, this 11.5, and
                            // listed rows (a filter's) are not sequential at all.
                            _mm_prefetch::<_MM_HINT_T0>(next0.wrapping_add(d) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(next1.wrapping_add(d) as *const i8);
                            let x0 = $load(r0, d);
                            let x1 = $load(r1, d);
                            for (i, qi) in [q0, q1, q2, q3].into_iter().enumerate() {
                                let y = load_f32(qi, d);
                                a[i] = _mm256_fmadd_ps(y, x0, a[i]);
                                a[GROUP + i] = _mm256_fmadd_ps(y, x1, a[GROUP + i]);
                            }
                            d += 8;
                        }
                        for (i, qi) in [q0, q1, q2, q3].into_iter().enumerate() {
                            let qn = group * GROUP + i;
                            if qn >= n_q {
                                break;
                            }
                            let (mut s0, mut s1) = (sum_lanes(a[i]), sum_lanes(a[GROUP + i]));
                            for t in body..dim {
                                s0 += qi[t] * Element::value(r0[t]);
                                s1 += qi[t] * Element::value(r1[t]);
                            }
                            tile[qn * n_g + j] = s0;
                            tile[qn * n_g + j1] = s1;
                        }
                    }
                    j += 2;
                }
            }
        };
    }

    scores_kernel!(scores_f32, f32, load_f32);
    scores_kernel!(scores_f16, f16, load_f16);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topk::tests::pseudo_random;

    /// Plain dot products in f64.
    fn reference(q: &[f32], g: &[f32], dim: usize) -> Vec<f32> {
        let (nq, ng) = (q.len() / dim, g.len() / dim);
        let mut out = Vec::new();
        for i in 0..nq {
            for j in 0..ng {
                let s: f64 = (0..dim)
                    .map(|d| q[i * dim + d] as f64 * g[j * dim + d] as f64)
                    .sum();
                out.push(s as f32);
            }
        }
        out
    }

    #[test]
    fn scores_equal_dot_products_for_odd_sizes_and_both_storages() {
        if !kernel_available() {
            // Without the instructions no search uses the kernel (topk's tests cover the GEMM
            // path that serves instead); what holds here is that it is never offered.
            assert!(FewQueries::new(&[1.0; 8], 1, 8).is_none());
            eprintln!("this CPU lacks AVX2/FMA/F16C: checked that the kernel is not offered");
            return;
        }
        // Widths with and without a tail past whole 8 lanes; query counts around the group
        // size; an odd number of rows (the last pair repeats a row).
        for (dim, n_q, n_g) in [(16, 1, 7), (13, 3, 9), (1280, 5, 33), (7, 8, 1), (64, 9, 2)] {
            let q = pseudo_random(n_q * dim, 3 + dim as u32);
            let g = pseudo_random(n_g * dim, 5 + n_q as u32);
            let few = FewQueries::new(&q, n_q, dim).unwrap();
            let g16: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
            let g16_as_f32: Vec<f32> = g16.iter().map(|v| v.to_f32()).collect();
            // Every row in order, and the rows listed backwards (a filter's, not sequential).
            let backwards: Vec<u32> = (0..n_g as u32).rev().collect();
            for listed in [false, true] {
                let rows = if listed {
                    BlockRows::Listed(&backwards)
                } else {
                    BlockRows::Run(0)
                };
                let check = |tile: &[f32], want: &[f32], what: &str| {
                    for (i, a) in tile.iter().enumerate() {
                        let (query, j) = (i / n_g, i % n_g);
                        let row = if listed { n_g - 1 - j } else { j };
                        let b = want[query * n_g + row];
                        assert!((a - b).abs() < 1e-4, "{what} {dim}x{n_q}x{n_g}: {a} vs {b}");
                    }
                };
                let mut tile = vec![f32::NAN; n_q * n_g];
                few.scores(Storage::F32(&g), rows, n_g, &mut tile);
                check(&tile, &reference(&q, &g, dim), "f32");
                let mut tile = vec![f32::NAN; n_q * n_g];
                few.scores(Storage::F16(&g16), rows, n_g, &mut tile);
                check(&tile, &reference(&q, &g16_as_f32, dim), "f16");
            }
        }
    }
}
