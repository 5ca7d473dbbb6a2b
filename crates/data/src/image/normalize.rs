//! Per-channel normalisation of RGB8 pixels into f32 CHW planes.
//!
//! Mean and std are given on the 0..1 scale as torchvision's `Normalize` takes them, so
//! `out = (v / 255 - mean) / std`. Models whose preprocessing is stated on 0..255 pixels
//! (EfficientNet-Lite's `(x - 127) / 128`) express it as mean 127/255, std 128/255.

use image::RgbImage;

/// Mean and standard deviation per RGB channel, on the 0..1 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// OpenAI CLIP's statistics (the challenge's default, SPEC), digits as published.
    #[allow(clippy::excessive_precision)]
    pub const CLIP: Normalization = Normalization {
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
    };
    /// ImageNet statistics (timm/torchvision models).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// `(x - 127) / 128` on 0..255 pixels (EfficientNet-Lite's TF preprocessing).
    pub const CENTERED_128: Normalization = Normalization {
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };

    /// Writes `image` as three normalised planes (C, H, W) into `out` (len 3*H*W).
    pub fn write_chw(&self, image: &RgbImage, out: &mut [f32]) {
        let plane = image.width() as usize * image.height() as usize;
        assert_eq!(out.len(), 3 * plane, "output buffer must hold 3*H*W values");
        // (v/255 - mean)/std computed as v*scale + offset, in f32 like torchvision.
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let offset: [f32; 3] = std::array::from_fn(|c| -self.mean[c] / self.std[c]);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
            r[i] = px[0] as f32 * scale[0] + offset[0];
            g[i] = px[1] as f32 * scale[1] + offset[1];
            b[i] = px[2] as f32 * scale[2] + offset[2];
        }
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::CLIP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_planes() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 127, 255]));
        let mut out = vec![0.0; 6];
        Normalization::CENTERED_128.write_chw(&img, &mut out);
        let expect = [-127.0 / 128.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }
}
