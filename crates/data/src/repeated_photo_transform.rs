//! The evaluation transform for several crops of one photo in a row — `--auto-box`'s windows,
//! listed photo by photo: each loader thread keeps the last photo it decoded, so the windows of
//! a photo that fall in one batch decode it once instead of once per window.
//!
//! Why: decoding a phone photo takes about as long as embedding one small window, so decoding
//! it again for each of five windows doubled the image work of `eval --auto-box` and competed
//! with the model for the same cores. The loader hands each thread whole batches and loads a
//! batch's samples in order, so consecutive windows of one photo meet the same thread. The
//! kept photos belong to this transform (one per thread) and go when it goes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::formats::Sample;
use crate::image::decode_rgb_file;
use crate::transform::{EvalTransform, SampleTransform};

/// [`EvalTransform`], decoding a photo once for a run of samples that share its path.
pub struct RepeatedPhotoTransform {
    eval: EvalTransform,
    last_decoded: Mutex<HashMap<ThreadId, (PathBuf, Arc<RgbImage>)>>,
}

impl RepeatedPhotoTransform {
    pub fn new(eval: EvalTransform) -> Self {
        RepeatedPhotoTransform {
            eval,
            last_decoded: Mutex::new(HashMap::new()),
        }
    }

    fn decoded(&self, sample: &Sample) -> Result<Arc<RgbImage>> {
        let thread = std::thread::current().id();
        let kept = self
            .last_decoded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&thread)
            .filter(|(path, _)| *path == sample.path)
            .map(|(_, image)| image.clone());
        if let Some(image) = kept {
            return Ok(image);
        }
        let image = Arc::new(decode_rgb_file(&sample.path, &self.eval.limits)?);
        self.last_decoded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(thread, (sample.path.clone(), image.clone()));
        Ok(image)
    }
}

impl SampleTransform for RepeatedPhotoTransform {
    fn output_size(&self) -> (u32, u32) {
        self.eval.output_size()
    }

    fn load(&self, sample: &Sample, _rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        let image = self.decoded(sample)?;
        let resized = self.eval.prepare_rgb(&image, sample);
        self.eval.normalization.write_chw(&resized, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::formats::{Crop, Window};
    use crate::image::Normalization;

    #[test]
    fn windows_of_photos_in_a_row_load_as_the_eval_transform_loads_them() {
        let dir = tempfile::tempdir().unwrap();
        let photos: Vec<PathBuf> = (0..2u32)
            .map(|k| {
                let path = dir.path().join(format!("{k}.png"));
                RgbImage::from_fn(60 + 10 * k, 40, |x, y| {
                    image::Rgb([(x * 4) as u8, (y * 6) as u8, (k * 100) as u8])
                })
                .save(&path)
                .unwrap();
                path
            })
            .collect();
        let windows = [
            (0.0, 0.0, 0.5, 0.5),
            (0.5, 0.5, 1.0, 1.0),
            (0.2, 0.1, 0.9, 0.7),
        ];
        let samples: Vec<Sample> = [0, 0, 0, 1, 1, 0]
            .iter()
            .zip(windows.iter().cycle())
            .map(|(&k, &(x0, y0, x1, y1))| Sample {
                path: photos[k].clone(),
                label: k as i64,
                crop: Crop::Window(Window { x0, y0, x1, y1 }),
            })
            .collect();
        let eval = EvalTransform::new(16, Normalization::CLIP);
        let repeated = RepeatedPhotoTransform::new(eval.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for sample in &samples {
            let (mut want, mut got) = (vec![0.0; 3 * 16 * 16], vec![0.0; 3 * 16 * 16]);
            eval.load(sample, &mut rng, &mut want).unwrap();
            repeated.load(sample, &mut rng, &mut got).unwrap();
            assert_eq!(got, want, "{}", sample.path.display());
        }
        // A photo that cannot be read is an error every time, not a kept image.
        let missing = Sample {
            path: dir.path().join("missing.png"),
            ..samples[0].clone()
        };
        let mut out = vec![0.0; 3 * 16 * 16];
        assert!(repeated.load(&missing, &mut rng, &mut out).is_err());
        assert!(repeated.load(&missing, &mut rng, &mut out).is_err());
    }
}
