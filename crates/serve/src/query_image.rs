//! Turning uploaded bytes into the model's input exactly as the catalogue was prepared (decode
//! under limits → optional box crop → `Resize((s, s))` → normalise), and catalogue thumbnails.

use std::path::Path;

use image::RgbImage;
use visual_search_data::formats::{BBox, Crop, Window};
use visual_search_data::image::{
    DecodeLimits, Normalization, Rect, crop_rect, decode_rgb_bytes, decode_rgb_file, resize_rgb,
};
use visual_search_retrieval::index::Preprocessing;

/// `x,y,w,h` in pixels of the uploaded image.
pub fn parse_bbox(text: &str) -> Result<BBox, String> {
    let v: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bbox {text:?}: expected four numbers x,y,w,h"))?;
    match v[..] {
        [x, y, w, h] if v.iter().all(|n| n.is_finite()) && w > 0.0 && h > 0.0 => {
            Ok(BBox { x, y, w, h })
        }
        _ => Err(format!("bbox {text:?}: expected x,y,w,h with w, h > 0")),
    }
}

/// CHW floats for the model from an uploaded image.
pub fn prepare_query(
    bytes: &[u8],
    bbox: Option<BBox>,
    pre: &Preprocessing,
    limits: &DecodeLimits,
) -> Result<Vec<f32>, String> {
    Ok(prepare_decoded(&decode_query(bytes, limits)?, bbox, pre))
}

/// An uploaded image decoded under `limits` (the auto-box search prepares it more than once:
/// whole, and cropped to each of its windows).
pub fn decode_query(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, String> {
    decode_rgb_bytes(bytes, Path::new("upload"), limits).map_err(|e| e.to_string())
}

/// CHW floats for the model from a decoded image, cropped to `bbox` when given.
pub fn prepare_decoded(image: &RgbImage, bbox: Option<BBox>, pre: &Preprocessing) -> Vec<f32> {
    prepare_cropped(image, &bbox.map_or(Crop::None, Crop::Box), pre)
}

/// CHW floats of a catalogue image added over HTTP, prepared as `index build` prepares a
/// gallery image: its white border cropped away first.
pub fn prepare_catalogue_image(image: &RgbImage, pre: &Preprocessing) -> Vec<f32> {
    prepare_cropped(image, &Crop::WhiteBorder, pre)
}

fn prepare_cropped(image: &RgbImage, crop: &Crop, pre: &Preprocessing) -> Vec<f32> {
    let rect = crop_rect(image, crop);
    let s = pre.size as u32;
    let resized = resize_rgb(image, rect, s, s);
    let mut out = vec![0.0f32; 3 * pre.size * pre.size];
    Normalization {
        mean: pre.mean,
        std: pre.std,
    }
    .write_chw(&resized, &mut out);
    out
}

/// CHW floats of each of `windows` (fractions of the image) cropped from a decoded image, one
/// image after another (`box=auto`, `search --auto-box`).
pub fn prepare_windows(image: &RgbImage, windows: &[Window], pre: &Preprocessing) -> Vec<f32> {
    windows
        .iter()
        .flat_map(|w| prepare_decoded(image, Some(w.to_bbox(image.width(), image.height())), pre))
        .collect()
}

/// A JPEG of the image at `path` fitting in `max_side` × `max_side`.
pub fn thumbnail_jpeg(
    path: &Path,
    max_side: u32,
    limits: &DecodeLimits,
) -> Result<Vec<u8>, String> {
    let image = decode_rgb_file(path, limits).map_err(|e| e.to_string())?;
    let (w, h) = image.dimensions();
    let scale = (max_side as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let small = resize_rgb(&image, Rect::full(w, h), tw, th);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&small)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bboxes_parse_or_explain() {
        assert_eq!(
            parse_bbox("1, 2,30,40.5").unwrap(),
            BBox {
                x: 1.0,
                y: 2.0,
                w: 30.0,
                h: 40.5
            }
        );
        for bad in ["1,2,3", "a,b,c,d", "0,0,0,5", "1,2,3,NaN"] {
            assert!(parse_bbox(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        let pre = Preprocessing {
            size: 16,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let err = prepare_query(b"not an image", None, &pre, &DecodeLimits::default()).unwrap_err();
        assert!(!err.is_empty());
    }
}
