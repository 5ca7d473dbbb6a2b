//! Bicubic resampling of a small 2-D grid of vectors, exactly as PyTorch's
//! `F.interpolate(mode="bicubic", align_corners=False)` does it, with or without `antialias`.
//!
//! Used on weights, not activations: a ViT's position-embedding grid is resampled once when the
//! input size differs from the size it was trained at (OpenCLIP's `resize_pos_embed`, which uses
//! `antialias=True`). Written here on host memory because it must match PyTorch's two kernels
//! (a = -0.75 with clamped borders; antialiased a = -0.5 with renormalised weights) to the bit
//! pattern, and it runs once per model load.

/// Per output position: (first source index, weights).
fn weights_plain(in_size: usize, out_size: usize) -> Vec<(Vec<usize>, Vec<f64>)> {
    const A: f64 = -0.75;
    let cubic1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cubic2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|i| {
            let real = scale * (i as f64 + 0.5) - 0.5;
            let x0 = real.floor();
            let t = real - x0;
            let w = vec![cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
            let idx = (-1..=2)
                .map(|k| (x0 as i64 + k).clamp(0, in_size as i64 - 1) as usize)
                .collect();
            (idx, w)
        })
        .collect()
}

fn weights_antialias(in_size: usize, out_size: usize) -> Vec<(Vec<usize>, Vec<f64>)> {
    const A: f64 = -0.5;
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor() as i64).max(0) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(in_size);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| filter((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            ((xmin..xmax).collect(), w)
        })
        .collect()
}

/// Resamples `data`, a row-major `[h, w, c]` grid, to `[new_h, new_w, c]`.
pub fn bicubic_resize(
    data: &[f32],
    (h, w, c): (usize, usize, usize),
    (new_h, new_w): (usize, usize),
    antialias: bool,
) -> Vec<f32> {
    assert_eq!(data.len(), h * w * c, "grid data does not match its shape");
    let weights = |i, o| {
        if antialias {
            weights_antialias(i, o)
        } else {
            weights_plain(i, o)
        }
    };
    let (wy, wx) = (weights(h, new_h), weights(w, new_w));
    // Width first, then height (PyTorch's separable order for the antialiased kernel; the plain
    // kernel is computed in one 2-D pass, which is the same sum).
    let mut tmp = vec![0.0f64; h * new_w * c];
    for y in 0..h {
        for (x, (idx, ws)) in wx.iter().enumerate() {
            for (&sx, &wgt) in idx.iter().zip(ws) {
                let src = &data[(y * w + sx) * c..(y * w + sx + 1) * c];
                let dst = &mut tmp[(y * new_w + x) * c..(y * new_w + x + 1) * c];
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(d, s)| *d += wgt * *s as f64);
            }
        }
    }
    let mut out = vec![0.0f64; new_h * new_w * c];
    for (y, (idx, ws)) in wy.iter().enumerate() {
        for (&sy, &wgt) in idx.iter().zip(ws) {
            let src = &tmp[sy * new_w * c..(sy + 1) * new_w * c];
            let dst = &mut out[y * new_w * c..(y + 1) * new_w * c];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wgt * s);
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_grid_stays_constant_and_identity_is_exact() {
        let data = vec![2.5f32; 7 * 7 * 3];
        for aa in [false, true] {
            let out = bicubic_resize(&data, (7, 7, 3), (9, 5), aa);
            assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-5), "{out:?}");
        }
        let ramp: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(bicubic_resize(&ramp, (4, 4, 1), (4, 4), false), ramp);
    }
}
