//! Antialiased bilinear resizing that matches Pillow's `Image.resize(..., BILINEAR)`, which is
//! what torchvision's `Resize((s, s), antialias=True)` does on PIL images.
//!
//! fast_image_resize's `Convolution(Bilinear)` implements the same separable, support-scaled
//! filter with the same 8-bit fixed-point arithmetic as Pillow, with SIMD; its output differs
//! from Pillow's by at most one grey level on identical input. (JPEG decoding is a separate
//! source of difference: zune-jpeg and PIL's libjpeg-turbo disagree by up to a few levels on
//! some pixels, mean ~0.3; after downscaling the whole pipeline stays within 2/255 of PIL —
//! `tests/preprocess_parity.rs`.)

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::crop::Rect;

thread_local! {
    // A resizer keeps scratch buffers; one per thread avoids reallocating them per image.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes the `rect` part of `src` to `width` x `height`.
///
/// `rect` must lie inside `src` and the output must be non-empty (callers get both from
/// [`super::crop_rect`] and a validated size).
pub fn resize_rgb(src: &RgbImage, rect: Rect, width: u32, height: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    debug_assert!(rect.x + rect.width <= w && rect.y + rect.height <= h);
    if rect != Rect::full(w, h) {
        // fast_image_resize's own crop lets the filter read pixels outside the box; PIL crops
        // first, so the box's edge pixels are clamped. Copy the box out to match.
        let cropped =
            image::imageops::crop_imm(src, rect.x, rect.y, rect.width, rect.height).to_image();
        return resize_rgb(&cropped, Rect::full(rect.width, rect.height), width, height);
    }
    if (w, h) == (width, height) {
        return src.clone();
    }
    let src_view = ImageRef::new(w, h, src.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer always holds width*height*3 bytes");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER.with(|r| {
        r.borrow_mut()
            .resize(&src_view, &mut dst, &options)
            .expect("source and destination are both U8x3 and non-empty")
    });
    RgbImage::from_raw(width, height, dst.into_vec())
        .expect("the destination buffer holds width*height*3 bytes")
}

/// The output size of torchvision's `Resize(size)` (one int): the shorter side becomes `size`,
/// the longer one `int(size * long / short)` (truncated, as torchvision does).
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size as u64 * long as u64) / short.max(1) as u64).max(1) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_matches_torchvision() {
        assert_eq!(shorter_side_size(348, 348, 224), (224, 224));
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
        assert_eq!(shorter_side_size(480, 641, 224), (224, 299));
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([10, 200, 77]));
        let out = resize_rgb(&img, Rect::full(37, 53), 16, 16);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
        let crop = resize_rgb(
            &img,
            Rect {
                x: 3,
                y: 4,
                width: 10,
                height: 20,
            },
            30,
            30,
        );
        assert!(crop.pixels().all(|p| p.0 == [10, 200, 77]));
    }
}
