//! Horizontal-flip test-time augmentation: embed every image and its mirror image, average the
//! two unit embeddings and re-normalise.
//!
//! Why: a product photographed from the left and the same product from the right should land
//! close together; averaging over the mirror makes the embedding (nearly) invariant to it, at
//! twice the model cost. It wraps any [`BatchEmbedder`], so it works on every engine (burn
//! devices and ONNX Runtime) without touching the model. Flipping prepared pixels is exact (a
//! reversal of each row), so it equals flipping the decoded image before normalisation.

use crate::batch_embedder::BatchEmbedder;
use crate::error::Result;
use crate::model::finish_rows;

/// A [`BatchEmbedder`] that averages each image's embedding with its mirror image's.
pub struct FlipAveraged<'a> {
    pub inner: &'a dyn BatchEmbedder,
}

/// Mirrors `n` prepared images (`n × 3 × size × size`, row-major) left to right in place.
pub fn flip_horizontally(pixels: &mut [f32], size: usize) {
    if size == 0 {
        return;
    }
    pixels
        .chunks_exact_mut(size)
        .for_each(|image_row| image_row.reverse());
}

impl BatchEmbedder for FlipAveraged<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn input_size(&self) -> usize {
        self.inner.input_size()
    }
    fn embed_batch(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let mut mirrored = pixels.clone();
        flip_horizontally(&mut mirrored, self.input_size());
        let mut rows = self.inner.embed_batch(pixels, n)?;
        let flipped = self.inner.embed_batch(mirrored, n)?;
        rows.iter_mut().zip(&flipped).for_each(|(a, b)| *a += b);
        finish_rows(&mut rows, self.dim());
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds an image as its left column's sum and right column's sum (2-d), so a mirror
    /// swaps the two coordinates.
    struct Columns;
    impl BatchEmbedder for Columns {
        fn dim(&self) -> usize {
            2
        }
        fn input_size(&self) -> usize {
            2
        }
        fn embed_batch(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
            let mut rows = Vec::new();
            for image in pixels.chunks_exact(12).take(n) {
                let left: f32 = image.iter().step_by(2).sum();
                let right: f32 = image.iter().skip(1).step_by(2).sum();
                rows.extend([left, right]);
            }
            finish_rows(&mut rows, 2);
            Ok(rows)
        }
    }

    #[test]
    fn rows_are_mirrored_and_embeddings_averaged() {
        let mut p = vec![1.0, 2.0, 3.0, 4.0];
        flip_horizontally(&mut p, 2);
        assert_eq!(p, vec![2.0, 1.0, 4.0, 3.0]);

        // Left columns hold 1s, right columns 0s: (1, 0) and its mirror (0, 1) average to the
        // diagonal.
        let image: Vec<f32> = (0..12)
            .map(|i| if i % 2 == 0 { 1.0 } else { 0.0 })
            .collect();
        let rows = FlipAveraged { inner: &Columns }
            .embed_batch(image, 1)
            .unwrap();
        let d = 0.5f32.sqrt();
        assert!(
            (rows[0] - d).abs() < 1e-6 && (rows[1] - d).abs() < 1e-6,
            "{rows:?}"
        );
    }
}
