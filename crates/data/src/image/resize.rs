//! Antialiased bilinear resizing, pixel-identical to Pillow's `Image.resize(..., BILINEAR)`
//! (what torchvision's `Resize((s, s), antialias=True)` does on PIL images); see
//! [`super::pillow_resample`] for why it is not fast_image_resize.

use image::RgbImage;

use super::crop::Rect;
use super::pillow_resample::resize_rgb8;

/// Resizes the `rect` part of `src` to `width` x `height`.
///
/// `rect` must lie inside `src` and the output must be non-empty (callers get both from
/// [`super::crop_rect`] and a validated size).
pub fn resize_rgb(src: &RgbImage, rect: Rect, width: u32, height: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    debug_assert!(rect.x + rect.width <= w && rect.y + rect.height <= h);
    if rect != Rect::full(w, h) {
        // PIL crops first, so the filter never reads pixels outside the box.
        let cropped =
            image::imageops::crop_imm(src, rect.x, rect.y, rect.width, rect.height).to_image();
        return resize_rgb(&cropped, Rect::full(rect.width, rect.height), width, height);
    }
    if (w, h) == (width, height) {
        return src.clone();
    }
    let out = resize_rgb8(
        src.as_raw(),
        w as usize,
        h as usize,
        width as usize,
        height as usize,
    );
    RgbImage::from_raw(width, height, out)
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
    let new_long =
        ((size as u64 * long as u64) / short.max(1) as u64).clamp(1, u32::MAX as u64) as u32;
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
