//! Decoding any supported image (JPEG, PNG, WebP) to 8-bit RGB.
//!
//! JPEG goes through libjpeg-turbo (the `turbojpeg` crate, built from its vendored 3.1 sources)
//! with the same defaults as PIL — accurate integer IDCT, fancy upsampling — so decoded pixels
//! are bit-identical to `PIL.Image.open(...).convert("RGB")`. (zune-jpeg, the `image` crate's
//! decoder, was measured 1.4x faster but differs from PIL by up to 15 levels on some pixels,
//! which survives resizing.) CMYK/YCCK JPEGs, PNG and WebP go through the `image` crate.
//! Greyscale, CMYK, 16-bit and alpha images are converted to RGB8 (alpha dropped, as PIL's
//! `convert("RGB")` does). The EXIF orientation is applied by default so phone photos stand
//! upright. The pixel count is checked from the header before any pixel is decoded, which is what
//! stops a decompression bomb (a tiny file that claims 30000x30000 pixels).

use std::io::{Cursor, Read};
use std::path::Path;

use std::cell::RefCell;

use image::codecs::jpeg::JpegDecoder;
use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage, metadata::Orientation,
};

use crate::error::{DataError, Result};

/// Limits that keep a hostile or broken file from exhausting memory.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width × height accepted (default 89,478,485 — PIL's `MAX_IMAGE_PIXELS`).
    pub max_pixels: u64,
    /// Largest encoded file accepted, in bytes (default 256 MiB).
    pub max_file_bytes: u64,
    /// Rotate/flip by the EXIF orientation tag (default true).
    pub apply_exif_orientation: bool,
    /// Largest long-side / short-side ratio accepted (default 50). Resizing keeps one full-height
    /// intermediate (output width × input height), so a 1 × 40,000,000 image that passes the
    /// pixel limit would need tens of GB; no product photo is that shape.
    pub max_aspect_ratio: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 89_478_485,
            max_file_bytes: 256 << 20,
            apply_exif_orientation: true,
            max_aspect_ratio: 50,
        }
    }
}

/// Opens an image file, refusing anything but a regular file. Opened non-blocking, so a FIFO
/// named `x.jpg` in a catalogue (or a device) is refused at once instead of hanging the
/// loader in `open` until some writer appears.
fn open_image_file(path: &Path) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| DataError::io(path, e))?;
    let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message:
                "is not a regular file (a folder, FIFO, socket or device); an image must be one"
                    .to_string(),
        });
    }
    Ok((file, meta.len()))
}

/// Reads and decodes an image file.
pub fn decode_rgb_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let (file, size) = open_image_file(path)?;
    if size > limits.max_file_bytes {
        return Err(DataError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            max_bytes: limits.max_file_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_file_bytes)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    decode_rgb_bytes(&bytes, path, limits)
}

/// Decodes image bytes; `name` is only used in error messages.
pub fn decode_rgb_bytes(bytes: &[u8], name: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(DataError::FileTooLarge {
            path: name.to_path_buf(),
            size: bytes.len() as u64,
            max_bytes: limits.max_file_bytes,
        });
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => decode_jpeg(bytes, name, limits),
        Ok(ImageFormat::Png | ImageFormat::WebP) => decode_with_image_crate(bytes, name, limits),
        Ok(other) => Err(decode_error(
            name,
            format!("{other:?} images are not supported (JPEG, PNG, WebP are)"),
        )),
        Err(_) => Err(decode_error(
            name,
            "not a JPEG, PNG or WebP image".to_string(),
        )),
    }
}

fn decode_error(name: &Path, message: String) -> DataError {
    DataError::Decode {
        path: name.to_path_buf(),
        message,
    }
}

fn check_pixels(name: &Path, width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(decode_error(
            name,
            format!("image has no pixels ({width}x{height})"),
        ));
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DataError::TooManyPixels {
            path: name.to_path_buf(),
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    let (long, short) = (width.max(height) as u64, width.min(height) as u64);
    if long > short * limits.max_aspect_ratio as u64 {
        return Err(decode_error(
            name,
            format!(
                "image is {width}x{height}, more than {}:1 (refused: resizing it would need an \
                 intermediate of {} MB)",
                limits.max_aspect_ratio,
                long * 224 * 3 / 1_000_000
            ),
        ));
    }
    Ok(())
}

thread_local! {
    // A TurboJPEG handle is reusable; one per thread saves its setup per image.
    static DECOMPRESSOR: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
}

fn decode_jpeg(bytes: &[u8], name: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let header = turbojpeg::read_header(bytes).map_err(|e| decode_error(name, e.to_string()))?;
    let (width, height) = (
        u32::try_from(header.width).unwrap_or(u32::MAX),
        u32::try_from(header.height).unwrap_or(u32::MAX),
    );
    check_pixels(name, width, height, limits)?;
    if matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        // TurboJPEG does not convert CMYK to RGB; the image crate does (with Adobe inversion).
        return decode_with_image_crate(bytes, name, limits);
    }
    let (w, h) = (header.width, header.height);
    let mut pixels = vec![0u8; w * h * 3];
    DECOMPRESSOR.with(|cell| -> Result<()> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                turbojpeg::Decompressor::new().map_err(|e| decode_error(name, e.to_string()))?,
            );
        }
        let decompressor = slot.as_mut().expect("set just above");
        let output = turbojpeg::Image {
            pixels: &mut pixels[..],
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        decompressor
            .decompress(bytes, output)
            .map_err(|e| decode_error(name, e.to_string()))
    })?;
    let rgb = RgbImage::from_raw(width, height, pixels).expect("buffer sized width*height*3");
    if !limits.apply_exif_orientation {
        return Ok(rgb);
    }
    // The EXIF orientation comes from the header parse of the image crate's JPEG decoder.
    let orientation = JpegDecoder::new(Cursor::new(bytes))
        .ok()
        .and_then(|mut d| d.orientation().ok())
        .unwrap_or(Orientation::NoTransforms);
    Ok(oriented(DynamicImage::ImageRgb8(rgb), orientation))
}

fn oriented(mut image: DynamicImage, orientation: Orientation) -> RgbImage {
    if orientation != Orientation::NoTransforms {
        image.apply_orientation(orientation);
    }
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    }
}

fn decode_with_image_crate(bytes: &[u8], name: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(name, e.to_string()))?;
    let mut decoder_limits = Limits::default();
    // Room for the RGB(A)/16-bit output plus decoder scratch; the pixel check is the strict one.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(name, e.to_string()))?;
    let (width, height) = decoder.dimensions();
    check_pixels(name, width, height, limits)?;
    let orientation = if limits.apply_exif_orientation {
        decoder.orientation().unwrap_or(Orientation::NoTransforms)
    } else {
        Orientation::NoTransforms
    };
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| decode_error(name, e.to_string()))?;
    Ok(oriented(image, orientation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayAlphaImage, ImageFormat, LumaA};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_fifo_or_folder_named_like_an_image_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.jpg");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let folder = dir.path().join("folder.jpg");
        std::fs::create_dir(&folder).unwrap();
        for path in [&fifo, &folder] {
            // Without the check the FIFO blocks in `open` for ever (no writer ever comes).
            let err = decode_rgb_file(path, &DecodeLimits::default()).unwrap_err();
            assert!(err.to_string().contains("is not a regular file"), "{err}");
        }
    }

    #[test]
    fn grey_alpha_png_becomes_rgb() {
        let img = GrayAlphaImage::from_pixel(3, 2, LumaA([200, 10]));
        let bytes = encode(DynamicImage::ImageLumaA8(img), ImageFormat::Png);
        let rgb = decode_rgb_bytes(&bytes, Path::new("x.png"), &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert_eq!(rgb.get_pixel(1, 1).0, [200, 200, 200]);
    }

    #[test]
    fn garbage_and_truncated_images_are_decode_errors() {
        let err =
            decode_rgb_bytes(b"hello", Path::new("bad.jpg"), &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("bad.jpg"), "{err}");

        let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let cut = &bytes[..bytes.len() / 2];
        let err =
            decode_rgb_bytes(cut, Path::new("cut.png"), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DataError::Decode { .. }), "{err}");
    }

    #[test]
    fn jpeg_decodes_and_truncated_jpeg_is_an_error() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let bytes = encode(DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
        let rgb = decode_rgb_bytes(&bytes, Path::new("a.jpg"), &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.dimensions(), (64, 48));
        let diff = rgb
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(diff < 40, "JPEG round trip too far off: {diff}");
        let err = decode_rgb_bytes(
            &bytes[..bytes.len() / 3],
            Path::new("cut.jpg"),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cut.jpg"), "{err}");
    }

    #[test]
    fn jpeg_bomb_is_refused_from_its_header() {
        let img = RgbImage::new(16, 16);
        let mut bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        // Rewrite the frame header (SOF0: FFC0, len, precision, height, width) to 30000x30000.
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline JPEG");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
        let err =
            decode_rgb_bytes(&bytes, Path::new("bomb.jpg"), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooManyPixels {
                    width: 30000,
                    height: 30000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let img = RgbImage::new(100, 100);
        let bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let limits = DecodeLimits {
            max_pixels: 9_999,
            ..Default::default()
        };
        let err = decode_rgb_bytes(&bytes, Path::new("big.png"), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooManyPixels {
                    width: 100,
                    height: 100,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn extreme_aspect_ratios_are_refused_before_decoding() {
        // A 1 x 2,000,000 PNG is small on disk but would need ~1.3 GB to resize.
        let img = RgbImage::new(1, 2_000_000);
        let bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let err = decode_rgb_bytes(&bytes, Path::new("thin.png"), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("thin.png") && err.contains("50:1"), "{err}");
        let ok = RgbImage::new(10, 400);
        let bytes = encode(DynamicImage::ImageRgb8(ok), ImageFormat::Png);
        assert!(decode_rgb_bytes(&bytes, Path::new("ok.png"), &DecodeLimits::default()).is_ok());
    }
}
