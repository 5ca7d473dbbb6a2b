//! Centring on the joint mean, the 1st place's first post-processing step: subtract the mean of
//! all query *and* gallery vectors from every vector, then L2-normalise again.
//!
//! Why: embeddings of one domain share a common direction (every product photo looks a little
//! alike to an ImageNet model); removing it spreads the vectors over the sphere so cosine
//! similarity measures what differs. Taking the mean over both sets (not the gallery alone, as
//! DBA's standardisation does) keeps queries and gallery in one frame.
//!
//! Exactly: `m = (sum of query rows + sum of gallery rows) / (n_q + n_g)` (accumulated in f64),
//! `x <- normalize(x - m)` for every row of both sets; a row that becomes zero stays zero.

use crate::rerank::sanitize_and_normalize;

/// The mean row of `sets` together (row-major, `dim` wide), accumulated in f64; `None` when
/// they hold no row.
pub fn mean_row(sets: &[&[f32]], dim: usize) -> Option<Vec<f64>> {
    let rows: usize = sets.iter().map(|s| s.len() / dim.max(1)).sum();
    if rows == 0 {
        return None;
    }
    let mut mean = vec![0.0f64; dim];
    for row in sets.iter().flat_map(|s| s.chunks_exact(dim)) {
        row.iter().zip(&mut mean).for_each(|(v, m)| *m += *v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    Some(mean)
}

/// Subtracts the joint mean of `queries` and `gallery` (row-major, `dim` wide) from both and
/// L2-normalises every row.
pub fn centre_on_joint_mean(queries: &mut [f32], gallery: &mut [f32], dim: usize) {
    let Some(mean) = mean_row(&[queries, gallery], dim) else {
        return;
    };
    for set in [queries, gallery] {
        for row in set.chunks_exact_mut(dim) {
            row.iter_mut()
                .zip(&mean)
                .for_each(|(v, m)| *v = (*v as f64 - m) as f32);
        }
        sanitize_and_normalize(set, dim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_joint_mean_is_removed_before_normalising() {
        // Mean of (1, 1), (3, 1) and (2, 4) is (2, 2).
        let mut q = vec![1.0, 1.0];
        let mut g = vec![3.0, 1.0, 2.0, 4.0];
        centre_on_joint_mean(&mut q, &mut g, 2);
        let s = 0.5f32.sqrt();
        let expect = [-s, -s, s, -s, 0.0, 1.0];
        for (a, b) in q.iter().chain(&g).zip(expect) {
            assert!((a - b).abs() < 1e-6, "{q:?} {g:?}");
        }
    }
}
