//! Sample → normalised f32 CHW tensor: the per-image work a loader worker does.
//!
//! `SampleTransform` is the seam between the loader and what happens to an image, so training
//! augmentation can plug in beside the deterministic evaluation pipeline defined here:
//! decode → crop (box / white border) → `Resize((s, s))` antialiased bilinear → normalise.

use std::path::PathBuf;
use std::sync::Arc;

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

    /// `samples` prepared one after another into a single `n × 3 × size × size` buffer, in
    /// order; images that cannot be read are left out and returned with their index.
    pub fn load_all(&self, samples: &[Sample]) -> (Vec<f32>, Vec<(usize, crate::DataError)>) {
        let per = 3 * self.size as usize * self.size as usize;
        let mut pixels = Vec::with_capacity(samples.len() * per);
        let mut failed = Vec::new();
        for (i, sample) in samples.iter().enumerate() {
            match self.load_rgb(sample) {
                Ok(rgb) => {
                    let start = pixels.len();
                    pixels.resize(start + per, 0.0);
                    self.normalization.write_chw(&rgb, &mut pixels[start..]);
                }
                Err(e) => failed.push((i, e)),
            }
        }
        (pixels, failed)
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

/// Routes each sample to the transform of the source whose root its path lies under (the
/// longest matching root wins), else to a default — so one training set can mix sources that
/// each keep their own normalisation. All transforms must produce the same output size.
pub struct PerRootTransform {
    default: Arc<dyn SampleTransform>,
    routes: Vec<(PathBuf, Arc<dyn SampleTransform>)>,
}

impl PerRootTransform {
    pub fn new(
        default: Arc<dyn SampleTransform>,
        mut routes: Vec<(PathBuf, Arc<dyn SampleTransform>)>,
    ) -> Self {
        for (root, t) in &routes {
            assert_eq!(
                t.output_size(),
                default.output_size(),
                "transform for {} has another output size",
                root.display()
            );
        }
        routes.sort_by_key(|(root, _)| std::cmp::Reverse(root.components().count()));
        PerRootTransform { default, routes }
    }

    fn route(&self, sample: &Sample) -> &dyn SampleTransform {
        self.routes
            .iter()
            .find(|(root, _)| sample.path.starts_with(root))
            .map_or(self.default.as_ref(), |(_, t)| t.as_ref())
    }
}

impl SampleTransform for PerRootTransform {
    fn output_size(&self) -> (u32, u32) {
        self.default.output_size()
    }

    fn load(&self, sample: &Sample, rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        self.route(sample).load(sample, rng, out)
    }
}
