//! Sample → normalised f32 CHW tensor: the per-image work a loader worker does.
//!
//! `SampleTransform` is the seam between the loader and what happens to an image, so training
//! augmentation can plug in beside the deterministic evaluation pipeline defined here:
//! decode → crop (box / white border) → `Resize((s, s))` antialiased bilinear → normalise.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::formats::Sample;
use crate::image::{DecodeLimits, Normalization, crop_rect, decode_rgb_file, resize_rgb};

/// Turns one sample into `3 * height * width` normalised floats.
pub trait SampleTransform: Send + Sync {
    /// Output (height, width); the same for every sample so batches stack.
    fn output_size(&self) -> (u32, u32);

    /// Loads `sample` into `out` (len `3*h*w`). `rng` is seeded per sample by the loader, so
    /// random augmentation is reproducible whatever the thread scheduling.
    fn load(&self, sample: &Sample, rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()>;
}

/// The evaluation pipeline: decode, crop, square resize, normalise.
#[derive(Debug, Clone)]
pub struct EvalTransform {
    pub size: u32,
    pub normalization: Normalization,
    pub limits: DecodeLimits,
}

impl EvalTransform {
    pub fn new(size: u32, normalization: Normalization) -> Self {
        assert!(size > 0, "image size must be positive");
        EvalTransform {
            size,
            normalization,
            limits: DecodeLimits::default(),
        }
    }

    /// Decoded, cropped and resized RGB8 image (before normalisation).
    pub fn load_rgb(&self, sample: &Sample) -> Result<RgbImage> {
        let image = decode_rgb_file(&sample.path, &self.limits)?;
        Ok(self.prepare_rgb(&image, sample))
    }

    /// Crop and resize of an already-decoded image.
    pub fn prepare_rgb(&self, image: &RgbImage, sample: &Sample) -> RgbImage {
        let rect = crop_rect(image, &sample.crop);
        resize_rgb(image, rect, self.size, self.size)
    }
}

impl SampleTransform for EvalTransform {
    fn output_size(&self) -> (u32, u32) {
        (self.size, self.size)
    }

    fn load(&self, sample: &Sample, _rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        let resized = self.load_rgb(sample)?;
        self.normalization.write_chw(&resized, out);
        Ok(())
    }
}
