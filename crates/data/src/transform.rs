//! Sample → normalised f32 CHW tensor: the per-image work a loader worker does.
//!
//! `SampleTransform` is the seam between the loader and what happens to an image, so training
//! augmentation can plug in beside the deterministic evaluation pipeline defined here:
//! decode → crop (box / white border) → `Resize((s, s))` antialiased bilinear → normalise.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::formats::{Crop, Sample};
use crate::image::{
    DecodeLimits, Normalization, check_query_box, crop_rect, decode_rgb_file, resize_rgb,
};

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
        if let Crop::Box(b) = &sample.crop
            && let Err(why) = check_query_box(b, image.width(), image.height(), "image")
        {
            warn_unusable_box(sample, &why);
        }
        let rect = crop_rect(image, &sample.crop);
        resize_rgb(image, rect, self.size, self.size)
    }
}

/// How many unusable query boxes are named on stderr before the rest go unmentioned.
const BOX_WARNINGS: usize = 3;
static BOX_WARNINGS_GIVEN: AtomicUsize = AtomicUsize::new(0);

/// A query box that misses its image (the whole image is embedded) or selects a pixel or two
/// of it (that is embedded) still loads, so one bad row does not stop a ranking; the first few
/// are named, since a list whose boxes are all in fractions of the image embeds nothing
/// useful. `data check` lists every one.
fn warn_unusable_box(sample: &Sample, why: &str) {
    let given = BOX_WARNINGS_GIVEN.fetch_add(1, Ordering::Relaxed);
    if given < BOX_WARNINGS {
        let more = if given + 1 == BOX_WARNINGS {
            " (further ones are not named; `visual-search data check` lists every one)"
        } else {
            ""
        };
        tracing::warn!("{}: {why}{more}", sample.path.display());
    }
}

/// How many times this process met an unusable query box so far (a box embedded in several
/// passes — validations of a run — counts each time); the CLI prints the total when it is
/// more than the few named.
pub fn unusable_query_boxes() -> usize {
    BOX_WARNINGS_GIVEN.load(Ordering::Relaxed)
}

/// The line the CLI ends with when more unusable boxes were met than were named.
pub fn unusable_query_boxes_summary() -> Option<String> {
    let n = unusable_query_boxes();
    (n > BOX_WARNINGS).then(|| {
        format!(
            "{n} unusable query boxes were embedded as the whole image or a sliver of it \
             ({BOX_WARNINGS} named above); `visual-search data check` lists every one"
        )
    })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use image::{Rgb, RgbImage};

    use super::{BOX_WARNINGS_GIVEN, EvalTransform};
    use crate::formats::{BBox, Crop, Sample};
    use crate::image::Normalization;

    #[test]
    fn an_unusable_query_box_is_counted_and_still_embedded() {
        let transform = EvalTransform::new(
            8,
            Normalization {
                mean: [0.5; 3],
                std: [0.5; 3],
            },
        );
        let image = RgbImage::from_pixel(40, 30, Rgb([10, 20, 30]));
        let sample = |x, y, w, h| Sample {
            path: "q.jpg".into(),
            label: 1,
            crop: Crop::Box(BBox { x, y, w, h }),
        };
        let before = BOX_WARNINGS_GIVEN.load(Ordering::Relaxed);
        let out = transform.prepare_rgb(&image, &sample(5.0, 5.0, 20.0, 20.0));
        assert_eq!(out.dimensions(), (8, 8));
        assert_eq!(
            BOX_WARNINGS_GIVEN.load(Ordering::Relaxed),
            before,
            "a good box"
        );
        // In fractions: one pixel, embedded as the list says; outside: the whole image.
        for bad in [sample(0.1, 0.2, 0.5, 0.4), sample(100.0, 0.0, 5.0, 5.0)] {
            let out = transform.prepare_rgb(&image, &bad);
            assert_eq!(out.dimensions(), (8, 8));
        }
        assert!(BOX_WARNINGS_GIVEN.load(Ordering::Relaxed) >= before + 2);
    }
}
