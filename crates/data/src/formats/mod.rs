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
}

/// One image to load: where it is, its class and how to crop it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: i64,
    pub crop: Crop,
}
