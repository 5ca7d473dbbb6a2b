//! Pillow's antialiased bilinear resampling (`Image.resize(size, BILINEAR)`, which is what
//! torchvision's `Resize` runs on PIL images), reimplemented to the bit.
//!
//! Same coefficients (double precision, support scaled by the downscale factor, normalised),
//! same 22-bit fixed-point quantisation and rounding, same pass order (horizontal into 8 bits,
//! then vertical, except when the height shrinks much more than the width: see
//! [`vertical_pass_first`]) as Pillow 13's `Resample.c`. fast_image_resize was measured to differ from
//! Pillow by one level on most downscaled photos (its 16-bit coefficients and vertical-first
//! order); since a one-level difference flips near-ties in a ranking, exact parity won.
//! For speed both passes run as "vertical" passes over whole rows, which the compiler
//! vectorises: the horizontal pass works on the transposed image.

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input index and fixed-point weights.
struct Coefficients {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` with the bilinear filter, then `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // bilinear support 1.0, scaled
    let ss = 1.0 / filter_scale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| {
                let t = ((x as f64 - center + 0.5) * ss).abs();
                if t < 1.0 { 1.0 - t } else { 0.0 }
            })
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|w| {
                let w = if total != 0.0 { w / total } else { *w };
                let v = w * (1u64 << PRECISION_BITS) as f64;
                (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
            })
            .collect();
        start.push(xmin);
        weights.push(fixed);
    }
    Coefficients { start, weights }
}

/// Resamples the rows of a `rows x row_len` byte matrix (row_len = pixels * 3) to `out_rows`.
fn resample_rows(src: &[u8], row_len: usize, rows: usize, out_rows: usize) -> Vec<u8> {
    let c = coefficients(rows, out_rows);
    let mut out = vec![0u8; out_rows * row_len];
    let mut acc = vec![0i32; row_len];
    let avx2 = has_avx2();
    for (y, dst) in out.chunks_exact_mut(row_len).enumerate() {
        acc.fill(1 << (PRECISION_BITS - 1));
        for (i, &k) in c.weights[y].iter().enumerate() {
            let row = &src[(c.start[y] + i) * row_len..(c.start[y] + i + 1) * row_len];
            if avx2 {
                // SAFETY: only reached when the CPU reports AVX2.
                unsafe { accumulate_avx2(&mut acc, row, k) }
            } else {
                accumulate(&mut acc, row, k);
            }
        }
        if avx2 {
            // SAFETY: as above.
            unsafe { finish_avx2(&acc, dst) }
        } else {
            finish(&acc, dst);
        }
    }
    out
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

// The kernels are plain loops the compiler vectorises; the `_avx2` copies are the same code
// compiled for AVX2 (8 x i32 lanes with a native 32-bit multiply, which baseline x86-64 lacks),
// chosen at run time.

#[inline(always)]
fn accumulate(acc: &mut [i32], row: &[u8], k: i32) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += v as i32 * k;
    }
}

#[inline(always)]
fn finish(acc: &[i32], dst: &mut [u8]) {
    for (d, &a) in dst.iter_mut().zip(acc) {
        *d = (a >> PRECISION_BITS).clamp(0, 255) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(acc: &mut [i32], row: &[u8], k: i32) {
    accumulate(acc, row, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_avx2(acc: &[i32], dst: &mut [u8]) {
    finish(acc, dst)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn accumulate_avx2(acc: &mut [i32], row: &[u8], k: i32) {
    accumulate(acc, row, k)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn finish_avx2(acc: &[i32], dst: &mut [u8]) {
    finish(acc, dst)
}

/// Transposes an RGB image stored as `h` rows of `w` pixels into `w` rows of `h` pixels.
/// Tiled so both sides stay in cache; each output column tile is written contiguously.
fn transpose_rgb(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let (src_px, _) = src.as_chunks::<3>();
    let mut out = vec![0u8; src.len()];
    let (out_px, _) = out.as_chunks_mut::<3>();
    assert_eq!(src_px.len(), w * h);
    const TILE: usize = 32;
    for x0 in (0..w).step_by(TILE) {
        let x1 = (x0 + TILE).min(w);
        for y0 in (0..h).step_by(TILE) {
            let y1 = (y0 + TILE).min(h);
            for x in x0..x1 {
                let dst = &mut out_px[x * h + y0..x * h + y1];
                for (d, y) in dst.iter_mut().zip(y0..y1) {
                    *d = src_px[y * w + x];
                }
            }
        }
    }
    out
}

/// Whether Pillow runs the vertical pass first: since Pillow 13 (`ImagingResampleInner`), when
/// the height shrinks by more than twice as many pixels as the width does. The 8-bit rounding
/// between the passes makes the order visible (one level on about 13% of the values of a
/// 563x1000 photo resized to 224x224), so it has to be the same.
pub fn vertical_pass_first(w: usize, h: usize, width: usize, height: usize) -> bool {
    let shrink_h = h as i64 - height as i64;
    let shrink_w = w as i64 - width as i64;
    shrink_h > 0 && shrink_h > shrink_w * 2
}

/// Resamples the width of a packed RGB8 image `w x h` to `width` (the rows stay).
fn resize_width(src: &[u8], w: usize, h: usize, width: usize) -> Vec<u8> {
    let t = transpose_rgb(src, w, h);
    let resized = resample_rows(&t, h * 3, w, width);
    transpose_rgb(&resized, h, width)
}

/// Resizes a packed RGB8 image `w x h` to `width x height` exactly as Pillow's BILINEAR does.
pub fn resize_rgb8(src: &[u8], w: usize, h: usize, width: usize, height: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "image buffer does not match its size");
    if vertical_pass_first(w, h, width, height) {
        let vertical = resample_rows(src, w * 3, h, height);
        return if width != w {
            resize_width(&vertical, w, height, width)
        } else {
            vertical
        };
    }
    let horizontal = if width != w {
        resize_width(src, w, h, width)
    } else {
        src.to_vec()
    };
    if height != h {
        resample_rows(&horizontal, width * 3, h, height)
    } else {
        horizontal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(348, 224), (150, 272), (7, 3)] {
            let c = coefficients(i, o);
            for w in &c.weights {
                let s: i64 = w.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // (h - oh) > 2 (w - ow) and the height shrinks.
        assert!(vertical_pass_first(563, 1000, 224, 224));
        assert!(!vertical_pass_first(348, 464, 224, 224));
        assert!(!vertical_pass_first(224, 224, 224, 224));
        assert!(
            vertical_pass_first(90, 400, 224, 224),
            "a tall box grows wide, shrinks tall"
        );
        assert!(!vertical_pass_first(100, 100, 50, 300), "the height grows");
    }

    #[test]
    fn transpose_round_trips() {
        let img: Vec<u8> = (0..5 * 3 * 3).map(|v| v as u8).collect();
        assert_eq!(transpose_rgb(&transpose_rgb(&img, 5, 3), 3, 5), img);
    }
}
