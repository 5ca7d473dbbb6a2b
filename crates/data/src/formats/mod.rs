//! The challenge's dataset formats (SPEC "Data formats") and the `Sample` every reader produces.
//!
//! A reader turns one CSV into rows of its own shape (so tools like `data check` can report them),
//! and into `Sample`s: an image path joined to its root, an integer label and how the image is to
//! be cropped before resizing. Loaders and transforms only ever see `Sample`s.

pub mod dev_set;
pub mod mined_pairs;
pub mod product10k;

use std::path::PathBuf;

/// A box in pixel coordinates of the decoded image: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A box in fractions of an image's width and height (`0 <= x0 < x1 <= 1`): a window the
/// auto-box search scores, before it is known which image size it applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl Window {
    /// The window in pixels of a `width × height` image.
    pub fn to_bbox(&self, width: u32, height: u32) -> BBox {
        let (w, h) = (width as f64, height as f64);
        BBox {
            x: self.x0 as f64 * w,
            y: self.y0 as f64 * h,
            w: (self.x1 - self.x0) as f64 * w,
            h: (self.y1 - self.y0) as f64 * h,
        }
    }
}

/// How an image is cropped before any resizing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Crop {
    /// The whole image.
    #[default]
    None,
    /// Remove edge rows/columns that are pure white (gallery images, SPEC).
    WhiteBorder,
    /// Keep only this box, clamped to the image (queries, SPEC).
    Box(BBox),
    /// Keep only this window, in fractions of the decoded image (a box `--auto-box` found).
    Window(Window),
}

/// One image to load: where it is, its class and how to crop it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: i64,
    pub crop: Crop,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_map_to_pixels() {
        let half = Window {
            x0: 0.25,
            y0: 0.5,
            x1: 0.75,
            y1: 1.0,
        };
        assert_eq!(
            half.to_bbox(400, 100),
            BBox {
                x: 100.0,
                y: 50.0,
                w: 200.0,
                h: 50.0
            }
        );
    }
}
