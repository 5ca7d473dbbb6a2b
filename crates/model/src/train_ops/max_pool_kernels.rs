//! 2-D max pooling's forward pass over f32 NCHW planes, without the indices: ResNet's stem pool
//! in inference on flex.
//!
//! burn-flex pools through its 3-D pooling with indices (kept for a backward pass) whatever the
//! caller needs; in a ResNet-50 inference pass at batch 32 that one 3×3 stride-2 pool over
//! `[32, 64, 112, 112]` took 7 % of the time. Here each plane is one parallel task, and each
//! output row is two passes: the element-wise maximum of the window's input rows (contiguous,
//! vectorised by the compiler), then each window's maximum along that row. Padding never wins
//! (PyTorch pads with −∞) and a NaN in a window is its maximum, as in PyTorch.

use rayon::prelude::*;

/// One pooling's geometry: symmetric padding, floor rounding of the output size (PyTorch's
/// `MaxPool2d` without `ceil_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl PoolGeometry {
    /// The output's `[height, width]`, or `None` when the window does not fit the padded input
    /// or a kernel, stride or dilation is zero.
    pub fn out_size(&self) -> Option<[usize; 2]> {
        let size = |dim: usize, len: usize| {
            let (kernel, stride, dilation) =
                (self.kernel[dim], self.stride[dim], self.dilation[dim]);
            if kernel == 0 || stride == 0 || dilation == 0 {
                return None;
            }
            let reach = dilation * (kernel - 1) + 1;
            (len + 2 * self.padding[dim])
                .checked_sub(reach)
                .map(|d| d / stride + 1)
        };
        Some([size(0, self.in_h)?, size(1, self.in_w)?])
    }

    /// The input positions (along `dim`, of input length `len`) that window `out` covers.
    fn taps(&self, dim: usize, len: usize, out: usize) -> impl Iterator<Item = usize> {
        let start = (out * self.stride[dim]) as isize - self.padding[dim] as isize;
        let dilation = self.dilation[dim] as isize;
        (0..self.kernel[dim] as isize)
            .map(move |k| start + k * dilation)
            .filter(move |&i| i >= 0 && (i as usize) < len)
            .map(|i| i as usize)
    }
}

/// The larger of `a` and `b`, NaN when either is.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Max pooling of `planes` planes of `in_h × in_w` values each: `planes × out_h × out_w` values,
/// or `None` for a geometry without output (see [`PoolGeometry::out_size`]).
pub fn forward(x: &[f32], planes: usize, g: &PoolGeometry) -> Option<Vec<f32>> {
    let [out_h, out_w] = g.out_size()?;
    let in_plane = g.in_h * g.in_w;
    assert_eq!(x.len(), planes * in_plane);
    let mut y = vec![0.0f32; planes * out_h * out_w];
    if y.is_empty() {
        return Some(y);
    }
    if in_plane == 0 {
        // Every window lies in the padding.
        y.fill(f32::NEG_INFINITY);
        return Some(y);
    }
    y.par_chunks_mut(out_h * out_w)
        .zip(x.par_chunks(in_plane))
        .for_each_init(
            || vec![f32::NEG_INFINITY; g.in_w],
            |row_max, (y_plane, x_plane)| {
                for (oy, y_row) in y_plane.chunks_mut(out_w).enumerate() {
                    row_max.fill(f32::NEG_INFINITY);
                    for iy in g.taps(0, g.in_h, oy) {
                        let x_row = &x_plane[iy * g.in_w..][..g.in_w];
                        for (m, &v) in row_max.iter_mut().zip(x_row) {
                            *m = max_nan(*m, v);
                        }
                    }
                    for (ox, out) in y_row.iter_mut().enumerate() {
                        *out = g
                            .taps(1, g.in_w, ox)
                            .fold(f32::NEG_INFINITY, |m, ix| max_nan(m, row_max[ix]));
                    }
                }
            },
        );
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one window at a time.
    fn naive(x: &[f32], planes: usize, g: &PoolGeometry) -> Vec<f32> {
        let [out_h, out_w] = g.out_size().unwrap();
        let mut y = Vec::new();
        for p in 0..planes {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..g.kernel[0] {
                        for kx in 0..g.kernel[1] {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.padding[0] as isize;
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.padding[1] as isize;
                            if iy >= 0
                                && ix >= 0
                                && (iy as usize) < g.in_h
                                && (ix as usize) < g.in_w
                            {
                                let v = x[(p * g.in_h + iy as usize) * g.in_w + ix as usize];
                                m = max_nan(m, v);
                            }
                        }
                    }
                    y.push(m);
                }
            }
        }
        y
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 37.0)
            .collect()
    }

    #[test]
    fn matches_the_definition() {
        let geometries = [
            // ResNet's stem pool.
            ([3, 3], [2, 2], [1, 1], [1, 1], 9, 11),
            ([2, 2], [2, 2], [0, 0], [1, 1], 8, 7),
            ([3, 2], [1, 3], [1, 0], [2, 1], 10, 9),
            ([1, 1], [2, 2], [0, 0], [1, 1], 5, 5),
        ];
        for (kernel, stride, padding, dilation, in_h, in_w) in geometries {
            let g = PoolGeometry {
                in_h,
                in_w,
                kernel,
                stride,
                padding,
                dilation,
            };
            let planes = 3;
            let x = values(planes * in_h * in_w);
            assert_eq!(
                forward(&x, planes, &g).unwrap(),
                naive(&x, planes, &g),
                "{g:?}"
            );
        }
    }

    #[test]
    fn a_nan_is_its_windows_maximum() {
        let g = PoolGeometry {
            in_h: 4,
            in_w: 4,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            dilation: [1, 1],
        };
        let mut x = values(16);
        x[5] = f32::NAN;
        let y = forward(&x, 1, &g).unwrap();
        assert!(y[0].is_nan());
        assert!(y[1..].iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_window_larger_than_the_input_has_no_output() {
        let g = PoolGeometry {
            in_h: 2,
            in_w: 2,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        };
        assert!(forward(&[0.0; 4], 1, &g).is_none());
    }
}
