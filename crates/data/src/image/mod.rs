//! Image decoding and the deterministic preprocessing steps shared by training, ranking and serving.
//!
//! Each step is one file: `decode` (bytes → RGB8 with limits and EXIF orientation), `crop`
//! (query boxes and the gallery's white border, as pixel rectangles), `resize` (Pillow/torchvision
//! antialiased bilinear, reimplemented to the bit), `normalize` (mean/std → f32 CHW).

pub mod crop;
pub mod decode;
pub mod difference_hash;
pub mod normalize;
pub mod pillow_resample;
pub mod resize;

pub use crop::{Rect, box_overlap, check_query_box, crop_rect};
pub use decode::{DecodeLimits, decode_rgb_bytes, decode_rgb_file};
pub use normalize::Normalization;
pub use resize::{resize_rgb, shorter_side_size};
