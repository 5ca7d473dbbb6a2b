//! Several embeddings as one: an ensemble of models (each model's unit rows side by side, the
//! concatenation re-normalised), one model's views of an image (multi-scale test-time
//! augmentation: the mean of the unit rows, re-normalised), or several photos of one product
//! fused into one query (the same mean).
//!
//! Why: models that see products differently (other widths, resolutions, training) make
//! different mistakes; the cosine of concatenated unit vectors is the mean of the models'
//! cosines, so every ranking step that follows (top-k, DBA, k-reciprocal, the index) works on the
//! ensemble unchanged. Views of one model live in one space, so they are averaged instead and
//! keep the model's width.

use crate::embedding_file::Embeddings;
use crate::rerank::sanitize_and_normalize;

/// Concatenates the rows of `parts` (same row count; each row L2-normalised first) and
/// normalises the result. Labels are taken from the first part. `None` when the row counts differ.
pub fn concatenate_normalised(parts: &[&Embeddings]) -> Option<Embeddings> {
    let rows = parts.first()?.rows;
    if parts.iter().any(|p| p.rows != rows) {
        return None;
    }
    let dim: usize = parts.iter().map(|p| p.dim).sum();
    let mut data = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        for part in parts {
            let start = data.len();
            data.extend_from_slice(part.row(r));
            sanitize_and_normalize(&mut data[start..], part.dim);
        }
    }
    sanitize_and_normalize(&mut data, dim);
    Some(Embeddings {
        rows,
        dim,
        data,
        labels: parts[0].labels.clone(),
    })
}

/// The mean of the unit rows of `parts` (same shape), re-normalised. Labels are taken from the
/// first part. `None` when the shapes differ.
pub fn average_normalised(parts: &[&Embeddings]) -> Option<Embeddings> {
    let first = parts.first()?;
    let (rows, dim) = (first.rows, first.dim);
    if parts.iter().any(|p| p.rows != rows || p.dim != dim) {
        return None;
    }
    let mut sum = vec![0.0f32; rows * dim];
    for part in parts {
        let mut unit = part.data.clone();
        sanitize_and_normalize(&mut unit, dim);
        sum.iter_mut().zip(&unit).for_each(|(s, v)| *s += v);
    }
    sanitize_and_normalize(&mut sum, dim);
    Some(Embeddings {
        rows,
        dim,
        data: sum,
        labels: first.labels.clone(),
    })
}

/// One query from several photos of one product: the mean of the unit rows of `rows`
/// (row-major, `dim` wide), re-normalised.
pub fn fuse_rows(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut unit = rows.to_vec();
    sanitize_and_normalize(&mut unit, dim);
    let mut sum = vec![0.0f32; dim];
    for row in unit.chunks_exact(dim) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    sanitize_and_normalize(&mut sum, dim);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cosine_of_the_ensemble_is_the_mean_cosine() {
        let a = Embeddings {
            rows: 2,
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 2.0],
            labels: Some(vec![7, 8]),
        };
        let b = Embeddings {
            rows: 2,
            dim: 1,
            data: vec![3.0, 5.0],
            labels: None,
        };
        let e = concatenate_normalised(&[&a, &b]).unwrap();
        assert_eq!((e.rows, e.dim, e.labels.clone()), (2, 3, Some(vec![7, 8])));
        let cos: f32 = e.row(0).iter().zip(e.row(1)).map(|(x, y)| x * y).sum();
        // Model a: cosine 0; model b: cosine 1; mean 0.5.
        assert!((cos - 0.5).abs() < 1e-6, "{cos}");
        let short = Embeddings {
            rows: 1,
            ..b.clone()
        };
        assert!(concatenate_normalised(&[&a, &short]).is_none());
    }

    #[test]
    fn fused_rows_are_the_normalised_mean_of_unit_rows() {
        let fused = fuse_rows(&[3.0, 0.0, 0.0, 0.5], 2);
        let d = 0.5f32.sqrt();
        assert!(
            (fused[0] - d).abs() < 1e-6 && (fused[1] - d).abs() < 1e-6,
            "{fused:?}"
        );
    }

    #[test]
    fn views_are_averaged_as_unit_vectors() {
        let a = Embeddings {
            rows: 1,
            dim: 2,
            data: vec![2.0, 0.0],
            labels: None,
        };
        let b = Embeddings {
            rows: 1,
            dim: 2,
            data: vec![0.0, 5.0],
            labels: None,
        };
        let m = average_normalised(&[&a, &b]).unwrap();
        let d = 0.5f32.sqrt();
        assert!(
            (m.data[0] - d).abs() < 1e-6 && (m.data[1] - d).abs() < 1e-6,
            "{m:?}"
        );
        let wide = Embeddings {
            dim: 1,
            data: vec![1.0, 1.0],
            rows: 2,
            labels: None,
        };
        assert!(average_normalised(&[&a, &wide]).is_none());
    }
}
