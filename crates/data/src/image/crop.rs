//! Crops as pixel rectangles: the query box (clamped to the image) and the gallery white border.
//!
//! Crops are computed as a `Rect` rather than copied out, so the resizer can read the crop
//! straight from the decoded image.

use image::RgbImage;

use crate::formats::{BBox, Crop};

/// A rectangle of whole pixels inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// The whole of a `width` x `height` image.
    pub fn full(width: u32, height: u32) -> Self {
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// The rectangle of `image` that `crop` keeps.
pub fn crop_rect(image: &RgbImage, crop: &Crop) -> Rect {
    let (w, h) = image.dimensions();
    match crop {
        Crop::None => Rect::full(w, h),
        Crop::Box(b) => box_rect(b, w, h),
        Crop::Window(win) => box_rect(&win.to_bbox(w, h), w, h),
        Crop::WhiteBorder => white_border_rect(image),
    }
}

/// The box clamped to the image, covering every pixel the box touches (floor of the start, ceil
/// of the end). A box that misses the image entirely keeps the whole image.
pub fn box_rect(b: &BBox, width: u32, height: u32) -> Rect {
    box_overlap(b, width, height).unwrap_or(Rect::full(width, height))
}

/// The pixels of a `width × height` image the box touches, or `None` when it misses the image.
pub fn box_overlap(b: &BBox, width: u32, height: u32) -> Option<Rect> {
    let clamp = |v: f64, max: u32| v.clamp(0.0, max as f64) as u32;
    let x0 = clamp(b.x.floor(), width);
    let y0 = clamp(b.y.floor(), height);
    let x1 = clamp((b.x + b.w).ceil(), width);
    let y1 = clamp((b.y + b.h).ceil(), height);
    (x1 > x0 && y1 > y0).then(|| Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}

/// A query box narrower or lower than this many pixels of its image selects nothing a model
/// can recognise; it is what a box in fractions of the image (0.1,0.2,0.5,0.4) read as pixels
/// becomes.
pub const MIN_QUERY_BOX_SIDE: u32 = 4;

/// Whether a query box given for a `width × height` image (`what`: "image", "photo") can be
/// searched with: it must overlap the image by at least [`MIN_QUERY_BOX_SIDE`] pixels each
/// way. The error says which rule it breaks. (Where a list is only loaded, a box that misses
/// its image keeps the whole image — [`box_rect`] — so a dataset with a few bad rows still
/// loads; `data check`, `search` and the server refuse them with this.)
pub fn check_query_box(b: &BBox, width: u32, height: u32, what: &str) -> Result<(), String> {
    // Formatted only for an error: every query image of a ranking passes through here.
    let described = || format!("bbox {},{},{},{}", b.x, b.y, b.w, b.h);
    match box_overlap(b, width, height) {
        None => Err(format!(
            "{} lies outside the {width}x{height} {what} (x,y,w,h are pixels of the {what})",
            described()
        )),
        Some(r) if r.width < MIN_QUERY_BOX_SIDE || r.height < MIN_QUERY_BOX_SIDE => Err(format!(
            "{} covers only {}x{} pixels of the {width}x{height} {what} (x,y,w,h are \
             pixels, not fractions of the {what})",
            described(),
            r.width,
            r.height
        )),
        Some(_) => Ok(()),
    }
}

/// Removes edge rows and columns whose mean intensity is exactly 255 (SPEC), i.e. whose every
/// channel value is 255. An all-white image is kept whole.
pub fn white_border_rect(image: &RgbImage) -> Rect {
    let (w, h) = image.dimensions();
    let stride = w as usize * 3;
    let raw = image.as_raw();
    let row_white = |y: u32| {
        let start = y as usize * stride;
        raw[start..start + stride].iter().all(|&v| v == 255)
    };
    let Some(top) = (0..h).find(|&y| !row_white(y)) else {
        return Rect::full(w, h);
    };
    let bottom = (0..h).rev().find(|&y| !row_white(y)).unwrap_or(top);
    let col_white = |x: u32| {
        (top..=bottom).all(|y| {
            let i = y as usize * stride + x as usize * 3;
            raw[i] == 255 && raw[i + 1] == 255 && raw[i + 2] == 255
        })
    };
    let left = (0..w).find(|&x| !col_white(x)).unwrap_or(0);
    let right = (0..w).rev().find(|&x| !col_white(x)).unwrap_or(w - 1);
    Rect {
        x: left,
        y: top,
        width: right - left + 1,
        height: bottom - top + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn white_border_is_removed_exactly() {
        let mut img = RgbImage::from_pixel(10, 8, Rgb([255, 255, 255]));
        img.put_pixel(2, 3, Rgb([255, 254, 255]));
        img.put_pixel(6, 5, Rgb([0, 0, 0]));
        assert_eq!(
            white_border_rect(&img),
            Rect {
                x: 2,
                y: 3,
                width: 5,
                height: 3
            }
        );
    }

    #[test]
    fn all_white_or_no_border_keeps_everything() {
        let white = RgbImage::from_pixel(4, 3, Rgb([255, 255, 255]));
        assert_eq!(white_border_rect(&white), Rect::full(4, 3));
        let grey = RgbImage::from_pixel(4, 3, Rgb([254, 255, 255]));
        assert_eq!(white_border_rect(&grey), Rect::full(4, 3));
    }

    #[test]
    fn a_query_box_must_select_four_pixels_each_way() {
        let b = |x, y, w, h| BBox { x, y, w, h };
        assert_eq!(
            check_query_box(&b(5.0, 5.0, 20.0, 20.0), 40, 30, "photo"),
            Ok(())
        );
        // Partly outside, four pixels left inside: searched.
        assert_eq!(
            check_query_box(&b(36.0, 26.0, 50.0, 50.0), 40, 30, "photo"),
            Ok(())
        );
        let err = check_query_box(&b(38.0, 0.0, 50.0, 50.0), 40, 30, "photo").unwrap_err();
        assert!(
            err.contains("covers only 2x30 pixels of the 40x30 photo"),
            "{err}"
        );
        let err = check_query_box(&b(0.1, 0.2, 0.5, 0.4), 40, 30, "image").unwrap_err();
        assert!(
            err.contains("covers only 1x1 pixels") && err.contains("not fractions"),
            "{err}"
        );
        let err = check_query_box(&b(100.0, 0.0, 5.0, 5.0), 40, 30, "photo").unwrap_err();
        assert!(err.contains("lies outside the 40x30 photo"), "{err}");
    }

    #[test]
    fn box_is_clamped_to_the_image() {
        let b = BBox {
            x: -5.0,
            y: 2.5,
            w: 20.0,
            h: 3.0,
        };
        assert_eq!(
            box_rect(&b, 10, 10),
            Rect {
                x: 0,
                y: 2,
                width: 10,
                height: 4
            }
        );
        let outside = BBox {
            x: 50.0,
            y: 50.0,
            w: 5.0,
            h: 5.0,
        };
        assert_eq!(box_rect(&outside, 10, 10), Rect::full(10, 10));
    }
}
