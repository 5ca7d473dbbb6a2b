//! Difference hashes (dHash) of an image, with a crop-tolerant distance.
//!
//! Why: `index dups` finds candidate near-duplicates by embedding, but two different photos of
//! one product can be as close in embedding space as a photo and its re-encoded copy. The dHash
//! sees the pixel layout: a re-encoded or resized copy keeps almost every bit, another photo of
//! the same product does not (Krawetz, "Kind of Like That", 2013). A crop of a few percent shifts
//! the hash grid and flips 10–16 of the 64 bits, so each image also gets the hashes of a grid of
//! crops of itself, and two images are as far apart as their closest full-image/crop pairing.
//! No maintained crate computes this over our decoder and Pillow-exact resize.
//!
//! Exactly: the image is resized (Pillow-compatible bilinear, [`crate::image::resize_rgb`]) to
//! 90×80; each crop of that keeps `[l, 90 - r) × [t, 80 - b)` for `l, r` in {0, 4, 9} and `t, b`
//! in {0, 4, 8} pixels (about 0, 5 and 10 % a side) — 81 crops, the first the whole image — and
//! is resized to 9×8; grey
//! is `0.299 R + 0.587 G + 0.114 B`, bit `8 y + x` is set when `grey(x, y) > grey(x + 1, y)`.
//! The distance of A and B is the fewest differing bits between A's whole-image hash and any of
//! B's crops, or B's whole-image hash and any of A's. `tools/make_dhash_fixtures.py` computes
//! the same with PIL.

use image::RgbImage;

use crate::image::{Rect, resize_rgb};

/// Pixels cut from the left/right and from the top/bottom of the 90×80 image.
const CROP_X: [u32; 3] = [0, 4, 9];
const CROP_Y: [u32; 3] = [0, 4, 8];

/// The dHashes of an image: the whole image first, then its crops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CropTolerantHash {
    pub hashes: Vec<u64>,
}

/// The 64-bit dHash of the `rect` region of `img`.
fn hash_region(img: &RgbImage, rect: Rect) -> u64 {
    let small = resize_rgb(img, rect, 9, 8);
    let grey = |x: u32, y: u32| {
        let p = small.get_pixel(x, y).0;
        0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
    };
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            if grey(x, y) > grey(x + 1, y) {
                hash |= 1 << (8 * y + x);
            }
        }
    }
    hash
}

/// The whole-image and crop hashes of `img`.
pub fn crop_tolerant_hash(img: &RgbImage) -> CropTolerantHash {
    let (w, h) = img.dimensions();
    let small = resize_rgb(img, Rect::full(w, h), 90, 80);
    let mut hashes = Vec::with_capacity(81);
    for l in CROP_X {
        for t in CROP_Y {
            for r in CROP_X {
                for b in CROP_Y {
                    let rect = Rect {
                        x: l,
                        y: t,
                        width: 90 - l - r,
                        height: 80 - t - b,
                    };
                    hashes.push(hash_region(&small, rect));
                }
            }
        }
    }
    CropTolerantHash { hashes }
}

impl CropTolerantHash {
    /// The whole image's hash.
    pub fn whole(&self) -> u64 {
        self.hashes[0]
    }

    /// The fewest differing bits between one image as a whole and any crop of the other.
    pub fn distance(&self, other: &CropTolerantHash) -> u32 {
        let best = |whole: u64, crops: &[u64]| {
            crops
                .iter()
                .map(|c| (whole ^ c).count_ones())
                .min()
                .unwrap_or(64)
        };
        best(self.whole(), &other.hashes).min(best(other.whole(), &self.hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_sets_no_bits_its_mirror_all_and_a_crop_stays_close() {
        let ramp = RgbImage::from_fn(180, 160, |x, y| {
            let v = (x * 255 / 179) as u8;
            image::Rgb([v, (y % 7) as u8, v])
        });
        let h = crop_tolerant_hash(&ramp);
        assert_eq!((h.hashes.len(), h.whole()), (81, 0));
        let mirror = RgbImage::from_fn(180, 160, |x, _| {
            let v = 255 - (x * 255 / 179) as u8;
            image::Rgb([v, v, v])
        });
        assert_eq!(crop_tolerant_hash(&mirror).whole(), u64::MAX);
        assert_eq!(h.distance(&crop_tolerant_hash(&mirror)), 64);
        assert_eq!(h.distance(&h), 0);
    }
}
