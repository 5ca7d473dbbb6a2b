//! Re-ranking by changing the vectors before the final search: database-side augmentation (DBA)
//! and α-query expansion (α-QE), as used by the challenge solution (DBA, k = 5).
//!
//! Exactly what is implemented, in order:
//! 1. Non-finite values → 0, rows L2-normalised (queries and gallery).
//! 2. With DBA: standardise with the gallery's per-dimension mean and standard deviation
//!    (`(x - mean) / std`, applied to gallery *and* queries so they stay comparable), L2-normalise
//!    again, then replace every gallery vector by `sum_{i=0..k} w_i * n_i` where `n_0` is the
//!    vector itself, `n_1..n_k` its k nearest gallery neighbours (inner product, ties to the lower
//!    index) and `w = logspace(0, -2, k + 1)` = `10^(-2 i / k)`; L2-normalise.
//! 3. With α-QE: replace every query by `q + sum_{i=1..k} max(s_i, 0)^α * g_i` over its k nearest
//!    (augmented) gallery vectors `g_i` with similarities `s_i`; L2-normalise.

use crate::matrix::MatrixView;
use crate::topk::top_k;

/// Zeroes non-finite values and scales each row to unit length (zero rows stay zero).
pub fn sanitize_and_normalize(data: &mut [f32], dim: usize) {
    for row in data.chunks_exact_mut(dim) {
        row.iter_mut().for_each(|v| {
            if !v.is_finite() {
                *v = 0.0
            }
        });
        let norm = row
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    }
}

/// `dst += w * rows[index]` for a row-major matrix `dim` wide.
pub(crate) fn add_weighted_row(dst: &mut [f32], rows: &[f32], dim: usize, index: u32, w: f32) {
    let src = &rows[index as usize * dim..(index as usize + 1) * dim];
    dst.iter_mut().zip(src).for_each(|(d, v)| *d += w * v);
}

/// `(x - mean) / std` per dimension, statistics taken over `reference` (population std; a
/// constant dimension is only centred).
pub fn standardize(reference: &[f32], dim: usize, targets: &mut [&mut [f32]]) {
    let rows = (reference.len() / dim).max(1) as f64;
    let mut mean = vec![0.0f64; dim];
    for row in reference.chunks_exact(dim) {
        row.iter().zip(&mut mean).for_each(|(v, m)| *m += *v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= rows);
    let mut var = vec![0.0f64; dim];
    for row in reference.chunks_exact(dim) {
        row.iter()
            .zip(&mean)
            .zip(&mut var)
            .for_each(|((v, m), s)| *s += (*v as f64 - m).powi(2));
    }
    let std: Vec<f64> = var.iter().map(|s| (s / rows).sqrt()).collect();
    for target in targets.iter_mut() {
        for row in target.chunks_exact_mut(dim) {
            for ((v, m), s) in row.iter_mut().zip(&mean).zip(&std) {
                let centred = *v as f64 - m;
                *v = if *s > 0.0 {
                    (centred / s) as f32
                } else {
                    centred as f32
                };
            }
        }
    }
}

/// The DBA weights `logspace(0, -2, k + 1)`.
pub fn dba_weights(k: usize) -> Vec<f32> {
    if k == 0 {
        return vec![1.0];
    }
    (0..=k)
        .map(|i| 10f64.powf(-2.0 * i as f64 / k as f64) as f32)
        .collect()
}

/// Database-side augmentation of `gallery` (row-major, unit rows) with `k` neighbours.
pub fn database_augmentation(gallery: &mut [f32], dim: usize, k: usize) {
    let rows = gallery.len() / dim;
    if k == 0 || rows == 0 {
        return;
    }
    let view = MatrixView::f32(gallery, rows, dim);
    let neighbours = top_k(view, view, k + 1);
    let weights = dba_weights(k);
    let mut out = vec![0.0f32; gallery.len()];
    for r in 0..rows {
        let dst = &mut out[r * dim..(r + 1) * dim];
        // The row itself first, then its neighbours other than itself.
        let others = neighbours
            .row(r)
            .iter()
            .copied()
            .filter(|&n| n as usize != r)
            .take(k);
        for (&w, n) in weights.iter().zip(std::iter::once(r as u32).chain(others)) {
            add_weighted_row(dst, gallery, dim, n, w);
        }
    }
    sanitize_and_normalize(&mut out, dim);
    gallery.copy_from_slice(&out);
}

/// α-query expansion of `queries` against `gallery` (both row-major, unit rows).
pub fn query_expansion(queries: &mut [f32], gallery: &[f32], dim: usize, k: usize, alpha: f32) {
    let (nq, ng) = (queries.len() / dim, gallery.len() / dim);
    if k == 0 || nq == 0 || ng == 0 {
        return;
    }
    let neighbours = top_k(
        MatrixView::f32(queries, nq, dim),
        MatrixView::f32(gallery, ng, dim),
        k,
    );
    for q in 0..nq {
        let row = &mut queries[q * dim..(q + 1) * dim];
        for (&g, &s) in neighbours.row(q).iter().zip(neighbours.row_scores(q)) {
            add_weighted_row(row, gallery, dim, g, s.max(0.0).powf(alpha));
        }
    }
    sanitize_and_normalize(queries, dim);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_logspace() {
        let w = dba_weights(5);
        let expect = [
            1.0,
            0.398_107_2,
            0.158_489_32,
            0.063_095_73,
            0.025_118_865,
            0.01,
        ];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn dba_pulls_a_vector_towards_its_neighbour() {
        // Rows 0 and 1 are close, row 2 is far; with k = 1, row 0 becomes 0 + 0.01 * row 1.
        let mut g = vec![1.0, 0.0, 0.8, 0.6, -1.0, 0.0];
        database_augmentation(&mut g, 2, 1);
        let expect = {
            let (x, y) = (1.0 + 0.01 * 0.8, 0.01 * 0.6f32);
            let n = (x * x + y * y).sqrt();
            [x / n, y / n]
        };
        assert!(
            (g[0] - expect[0]).abs() < 1e-6 && (g[1] - expect[1]).abs() < 1e-6,
            "{g:?}"
        );
    }

    #[test]
    fn sanitize_zeroes_nan_rows_and_normalises() {
        let mut d = vec![f32::NAN, 3.0, 0.0, 4.0];
        sanitize_and_normalize(&mut d, 2);
        assert_eq!(d, vec![0.0, 1.0, 0.0, 1.0]);
    }
}
