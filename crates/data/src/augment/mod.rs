//! Training-time augmentation: `Resize(s)` (shorter side) → AutoAugment (ImageNet policy) or
//! RandAugment → `Resize((s, s))` → normalise, the challenge recipe's `default` pipeline.
//!
//! The operations are torchvision's on PIL images ([`pil_ops`]); the draws come from the
//! per-sample RNG the loader seeds from (seed, epoch, position), so a resumed run augments
//! exactly as the uninterrupted one would have.

pub mod pil_ops;
pub mod policies;

use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::formats::Sample;
use crate::image::{
    DecodeLimits, Normalization, Rect, crop_rect, decode_rgb_file, resize_rgb, shorter_side_size,
};
use crate::transform::SampleTransform;

/// Which random policy to apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AugmentPolicy {
    /// torchvision `AutoAugment(AutoAugmentPolicy.IMAGENET)`.
    AutoAugmentImageNet,
    /// torchvision `RandAugment(num_ops, magnitude)`.
    RandAugment { ops: usize, magnitude: usize },
}

/// The training transform for one sample.
#[derive(Debug, Clone)]
pub struct TrainTransform {
    pub policy: AugmentPolicy,
    pub size: u32,
    pub normalization: Normalization,
    pub limits: DecodeLimits,
}

impl TrainTransform {
    pub fn new(policy: AugmentPolicy, size: u32, normalization: Normalization) -> Self {
        TrainTransform {
            policy,
            size,
            normalization,
            limits: DecodeLimits::default(),
        }
    }
}

impl SampleTransform for TrainTransform {
    fn output_size(&self) -> (u32, u32) {
        (self.size, self.size)
    }

    fn load(&self, sample: &Sample, rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        let image = decode_rgb_file(&sample.path, &self.limits)?;
        let rect = crop_rect(&image, &sample.crop);
        let (w, h) = shorter_side_size(rect.width, rect.height, self.size);
        let mut img = resize_rgb(&image, rect, w, h);
        let ops = match self.policy {
            AugmentPolicy::AutoAugmentImageNet => policies::auto_augment_ops(rng, w, h),
            AugmentPolicy::RandAugment { ops, magnitude } => {
                policies::rand_augment_ops(rng, ops, magnitude, w, h)
            }
        };
        for op in ops {
            img = pil_ops::apply(&img, op);
        }
        let square = resize_rgb(&img, Rect::full(w, h), self.size, self.size);
        self.normalization.write_chw(&square, out);
        Ok(())
    }
}
