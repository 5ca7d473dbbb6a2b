//! Turning uploaded bytes into the model's input exactly as the catalogue was prepared (decode
//! under limits → optional box crop → `Resize((s, s))` → normalise), and catalogue thumbnails.

use std::path::Path;

use image::RgbImage;
use visual_search_data::formats::{BBox, Crop, Window};
use visual_search_data::image::{
    DecodeLimits, Normalization, Rect, check_query_box, crop_rect, decode_rgb_bytes,
    decode_rgb_file, resize_rgb,
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

/// Refuses a query box that misses the photo or selects a few pixels of it
/// ([`check_query_box`]). A catalogue row's box that misses its image keeps the whole image
/// (`box_rect`, so a dataset with a few bad rows still loads), but a query box is typed by a
/// person for this photo: one that misses it was given for another photo or another scale,
/// one of a pixel or two was given in fractions of the photo, and searching anyway would
/// answer a different question without saying so.
pub fn check_box_on_photo(bbox: &BBox, image: &RgbImage) -> Result<(), String> {
    check_query_box(bbox, image.width(), image.height(), "photo")
}

/// CHW floats for the model from an uploaded image, cropped to `bbox` when given (which must
/// overlap the photo: [`check_box_on_photo`]).
pub fn prepare_query(
    bytes: &[u8],
    bbox: Option<BBox>,
    pre: &Preprocessing,
    limits: &DecodeLimits,
) -> Result<Vec<f32>, String> {
    let image = decode_query(bytes, limits)?;
    if let Some(b) = &bbox {
        check_box_on_photo(b, &image)?;
    }
    Ok(prepare_decoded(&image, bbox, pre))
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
    fn a_query_box_must_overlap_the_photo() {
        let photo = RgbImage::new(40, 30);
        let on = |x, y, w, h| check_box_on_photo(&BBox { x, y, w, h }, &photo);
        assert!(on(0.0, 0.0, 40.0, 30.0).is_ok());
        assert!(on(-10.0, -10.0, 14.0, 14.0).is_ok(), "four pixels inside");
        assert!(
            on(35.5, 25.5, 100.0, 100.0).is_ok(),
            "four and a half pixels inside"
        );
        // A pixel or two of the photo is refused too: nothing to recognise in it.
        for (x, y, w, h) in [(-10.0, -10.0, 11.0, 11.0), (39.5, 29.5, 100.0, 100.0)] {
            let err = on(x, y, w, h).unwrap_err();
            assert!(
                err.contains("covers only 1x1 pixels of the 40x30 photo"),
                "{err}"
            );
        }
        for (x, y, w, h) in [
            (40.0, 0.0, 5.0, 5.0),
            (0.0, 30.0, 5.0, 5.0),
            (-10.0, 0.0, 10.0, 5.0),
            (1000.0, 1000.0, 5.0, 5.0),
        ] {
            let err = on(x, y, w, h).unwrap_err();
            assert!(err.contains("outside the 40x30 photo"), "{err}");
        }
    }

    #[test]
    fn a_query_box_off_the_photo_is_refused_before_embedding() {
        let pre = Preprocessing {
            size: 16,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let mut png = Vec::new();
        RgbImage::new(40, 30)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let limits = DecodeLimits::default();
        let inside = BBox {
            x: 5.0,
            y: 5.0,
            w: 10.0,
            h: 10.0,
        };
        assert!(prepare_query(&png, Some(inside), &pre, &limits).is_ok());
        let outside = BBox {
            x: 100.0,
            y: 5.0,
            w: 10.0,
            h: 10.0,
        };
        let err = prepare_query(&png, Some(outside), &pre, &limits).unwrap_err();
        assert!(err.contains("outside"), "{err}");
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
