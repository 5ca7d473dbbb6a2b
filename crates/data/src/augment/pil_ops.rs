//! The 14 image operations of torchvision's AutoAugment/RandAugment, with the semantics they have
//! on PIL images (torchvision calls PIL for them): `ImageEnhance` blends, `ImageOps` look-up
//! tables, and `Image.transform(AFFINE, NEAREST)` with PIL's 16.16 fixed-point sampling — so an
//! operation with a given magnitude produces PIL's pixels (checked against fixtures in `tests/`).

use image::{Rgb, RgbImage};

/// One operation with its magnitude (already signed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Identity,
    ShearX(f64),
    ShearY(f64),
    TranslateX(f64),
    TranslateY(f64),
    Rotate(f64),
    Brightness(f64),
    Color(f64),
    Contrast(f64),
    Sharpness(f64),
    Posterize(u8),
    Solarize(f64),
    AutoContrast,
    Equalize,
    Invert,
}

/// Applies `op` as torchvision's `_apply_op` does on a PIL image (NEAREST, black fill).
pub fn apply(img: &RgbImage, op: Op) -> RgbImage {
    match op {
        Op::Identity => img.clone(),
        // F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]) → inverse matrix [1, m, 0, 0, 1, 0].
        Op::ShearX(m) => affine(img, [1.0, m.atan().tan(), 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY(m) => affine(img, [1.0, 0.0, 0.0, m.atan().tan(), 1.0, 0.0]),
        Op::TranslateX(m) => affine(img, [1.0, 0.0, -((m as i64) as f64), 0.0, 1.0, 0.0]),
        Op::TranslateY(m) => affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, -((m as i64) as f64)]),
        Op::Rotate(deg) => rotate(img, deg),
        Op::Brightness(m) => blend(
            &RgbImage::new(img.width(), img.height()),
            img,
            (1.0 + m) as f32,
        ),
        Op::Color(m) => blend(&grey_rgb(img), img, (1.0 + m) as f32),
        Op::Contrast(m) => {
            let mean = grey_mean(img);
            blend(
                &RgbImage::from_pixel(img.width(), img.height(), Rgb([mean; 3])),
                img,
                (1.0 + m) as f32,
            )
        }
        Op::Sharpness(m) => blend(&smooth(img), img, (1.0 + m) as f32),
        Op::Posterize(bits) => {
            let mask = !((1u16 << (8 - bits.min(8))) - 1) as u8;
            map_lut(img, &[std::array::from_fn(|i| i as u8 & mask); 3])
        }
        Op::Solarize(t) => map_lut(
            img,
            &[std::array::from_fn(|i| {
                if (i as f64) < t {
                    i as u8
                } else {
                    255 - i as u8
                }
            }); 3],
        ),
        Op::AutoContrast => map_lut(img, &autocontrast_luts(img)),
        Op::Equalize => map_lut(img, &equalize_luts(img)),
        Op::Invert => map_lut(img, &[std::array::from_fn(|i| 255 - i as u8); 3]),
    }
}

fn map_lut(img: &RgbImage, luts: &[[u8; 256]; 3]) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        for c in 0..3 {
            px.0[c] = luts[c][px.0[c] as usize];
        }
    }
    out
}

/// PIL's `Image.blend(a, b, alpha)`: `a + alpha (b - a)` in float, truncated; clipped when
/// extrapolating (alpha outside [0, 1]).
pub fn blend(a: &RgbImage, b: &RgbImage, alpha: f32) -> RgbImage {
    let mut out = b.clone();
    let inside = (0.0..=1.0).contains(&alpha);
    for ((o, &x), &y) in out.iter_mut().zip(a.as_raw()).zip(b.as_raw()) {
        let v = x as f32 + alpha * (y as f32 - x as f32);
        *o = if inside {
            v as u8
        } else if v <= 0.0 {
            0
        } else if v >= 255.0 {
            255
        } else {
            v as u8
        };
    }
    out
}

/// PIL's RGB → L: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`.
fn luma(p: &Rgb<u8>) -> u8 {
    ((p.0[0] as u32 * 19595 + p.0[1] as u32 * 38470 + p.0[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

fn grey_rgb(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let l = luma(px);
        px.0 = [l; 3];
    }
    out
}

/// `int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)`.
fn grey_mean(img: &RgbImage) -> u8 {
    let sum: u64 = img.pixels().map(|p| luma(p) as u64).sum();
    let n = (img.width() as u64 * img.height() as u64).max(1);
    (sum as f64 / n as f64 + 0.5) as u8
}

/// `ImageFilter.SMOOTH` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13); border pixels are
/// copied, as PIL's 3x3 filter does.
fn smooth(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = img.clone();
    if w < 3 || h < 3 {
        return out;
    }
    let k: [f32; 9] = [1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0].map(|v: f32| v / 13.0);
    let src = img.as_raw();
    let stride = w as usize * 3;
    for y in 1..h as usize - 1 {
        for x in 1..w as usize - 1 {
            for c in 0..3 {
                let at =
                    |dy: usize, dx: usize| src[(y + dy - 1) * stride + (x + dx - 1) * 3 + c] as f32;
                // Row by row, as PIL's KERNEL1x3 sums (row y+1 first, then y, then y-1).
                let mut ss = 0.0f32;
                ss += at(2, 0) * k[0] + at(2, 1) * k[1] + at(2, 2) * k[2];
                ss += at(1, 0) * k[3] + at(1, 1) * k[4] + at(1, 2) * k[5];
                ss += at(0, 0) * k[6] + at(0, 1) * k[7] + at(0, 2) * k[8];
                out.as_mut()[y * stride + x * 3 + c] = if ss <= 0.0 {
                    0
                } else if ss >= 255.0 {
                    255
                } else {
                    (ss + 0.5) as u8
                };
            }
        }
    }
    out
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            h[c][p.0[c] as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)` (no cutoff): per channel, stretch [lo, hi] to [0, 255].
fn autocontrast_luts(img: &RgbImage) -> [[u8; 256]; 3] {
    let h = histograms(img);
    std::array::from_fn(|c| {
        let lo = (0..256).find(|&i| h[c][i] > 0);
        let hi = (0..256).rev().find(|&i| h[c][i] > 0);
        match (lo, hi) {
            (Some(lo), Some(hi)) if hi > lo => {
                let scale = 255.0 / (hi - lo) as f64;
                let offset = -(lo as f64) * scale;
                std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
            }
            _ => std::array::from_fn(|i| i as u8),
        }
    })
}

/// `ImageOps.equalize(img)`: per channel histogram equalisation with PIL's integer steps.
fn equalize_luts(img: &RgbImage) -> [[u8; 256]; 3] {
    let h = histograms(img);
    std::array::from_fn(|c| {
        let nonzero: Vec<u64> = h[c].iter().copied().filter(|&v| v > 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if nonzero.len() <= 1 {
            return identity;
        }
        let step = (nonzero.iter().sum::<u64>() - nonzero[nonzero.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[c][i];
            v
        })
    })
}

/// PIL `Image.transform(size, AFFINE, a, NEAREST)` with black fill: output (x, y) samples the
/// input at `(a0 (x+½) + a1 (y+½) + a2, a3 (x+½) + a4 (y+½) + a5)`, using PIL's own paths
/// (pretabulated scaling when a1 = a3 = 0, else 16.16 fixed point, else double precision).
pub fn affine(img: &RgbImage, a: [f64; 6]) -> RgbImage {
    let (w, h) = img.dimensions();
    let (wi, hi) = (w as i64, h as i64);
    let mut out = RgbImage::new(w, h);
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let put = |out: &mut RgbImage, x: u32, y: u32, sx: i64, sy: i64| {
        if sx >= 0 && sx < wi && sy >= 0 && sy < hi {
            out.put_pixel(x, y, *img.get_pixel(sx as u32, sy as u32));
        }
    };
    if a[1] == 0.0 && a[3] == 0.0 {
        for y in 0..h {
            let sy = coord(a[4] * (y as f64 + 0.5) + a[5]);
            for x in 0..w {
                let sx = coord(a[0] * (x as f64 + 0.5) + a[2]);
                put(&mut out, x, y, sx, sy);
            }
        }
        return out;
    }
    let fits = |x: f64, y: f64| {
        (x * a[0] + y * a[1] + a[2]).abs() < 32768.0 && (x * a[3] + y * a[4] + a[5]).abs() < 32768.0
    };
    let (fw, fh) = (w as f64, h as f64);
    if fits(0.0, 0.0) && fits(fw, fh) && fits(0.0, fh) && fits(fw, 0.0) {
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i32;
        let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
        let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
        let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                put(&mut out, x, y, (xx >> 16) as i64, (yy >> 16) as i64);
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return out;
    }
    let (mut xo, mut yo) = (
        a[2] + a[1] * 0.5 + a[0] * 0.5,
        a[5] + a[4] * 0.5 + a[3] * 0.5,
    );
    for y in 0..h {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..w {
            put(&mut out, x, y, coord(xx), coord(yy));
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
    out
}

fn round15(v: f64) -> f64 {
    (v * 1e15).round() / 1e15
}

/// PIL `Image.rotate(angle, NEAREST)` about the centre, same size, black fill.
pub fn rotate(img: &RgbImage, degrees: f64) -> RgbImage {
    let angle = degrees.rem_euclid(360.0);
    let (w, h) = img.dimensions();
    if angle == 0.0 {
        return img.clone();
    }
    if angle == 180.0 {
        return image::imageops::rotate180(img);
    }
    if w == h && angle == 90.0 {
        return image::imageops::rotate270(img);
    }
    if w == h && angle == 270.0 {
        return image::imageops::rotate90(img);
    }
    let r = -angle.to_radians();
    let mut m = [
        round15(r.cos()),
        round15(r.sin()),
        0.0,
        round15(-r.sin()),
        round15(r.cos()),
        0.0,
    ];
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (tx, ty) = (
        m[0] * -cx + m[1] * -cy + m[2],
        m[3] * -cx + m[4] * -cy + m[5],
    );
    m[2] = tx + cx;
    m[5] = ty + cy;
    affine(img, m)
}
