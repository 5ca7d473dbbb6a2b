//! The f32 gradient kernels of a 2-D convolution (NCHW, contiguous), on plain slices.
//!
//! Two families, which are what our backbones train:
//! - **groups = 1** (pointwise 1×1, stems, patchify, ResNet's k×k): per image, an im2col matrix
//!   (skipped for a 1×1 stride-1 unpadded convolution, where the image already is that matrix)
//!   and one GEMM on the `gemm` crate (the GEMM burn-flex itself uses). The weight gradient
//!   accumulates over the batch in one partial per thread, the input gradient is independent per
//!   image, so both keep every core busy whatever the layer.
//! - **depthwise** (groups = channels in = channels out): direct loops, parallel over channels
//!   (weight gradient) or over (image, channel) planes (input gradient), with the valid output
//!   range of each kernel tap computed once so the inner loops carry no bounds tests.
//!
//! Other groupings return `None`, and the caller falls back to burn's composition.

use gemm::Parallelism;
use rayon::prelude::*;

/// Shape and options of one convolution; `out_h`/`out_w` are the output gradient's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: [usize; 2],
    /// Padding before each spatial dimension (the padding after is implied by the sizes).
    pub pad_begin: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvGeometry {
    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own im2col matrix.
    fn is_plain_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride == [1, 1]
            && self.pad_begin == [0, 0]
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }

    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Rows of the im2col matrix: `in_channels · kernel_h · kernel_w`.
    fn col_rows(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// The output positions `o` whose input index `o·stride + tap·dilation − pad` lies inside
    /// `[0, size)`, as a half-open range, for dimension `dim`.
    fn valid_outputs(&self, dim: usize, tap: usize) -> (usize, usize) {
        let (size, out) = if dim == 0 {
            (self.in_h, self.out_h)
        } else {
            (self.in_w, self.out_w)
        };
        let offset = (tap * self.dilation[dim]) as isize - self.pad_begin[dim] as isize;
        let stride = self.stride[dim] as isize;
        // o·stride + offset >= 0  and  o·stride + offset < size
        let first = if offset >= 0 {
            0
        } else {
            ((-offset) + stride - 1) / stride
        };
        let end = if (size as isize) <= offset {
            0
        } else {
            ((size as isize - offset) + stride - 1) / stride
        };
        let first = (first as usize).min(out);
        (first, (end as usize).clamp(first, out))
    }

    fn input_index(&self, dim: usize, out: usize, tap: usize) -> usize {
        out * self.stride[dim] + tap * self.dilation[dim] - self.pad_begin[dim]
    }

    /// Calls `f` for every kernel tap (row-major over `kernel_h × kernel_w`) and every output row
    /// that tap reaches inside the input, in that order: the one walk over the geometry that
    /// the depthwise kernels, im2col and col2im share.
    fn for_each_tap_row(&self, mut f: impl FnMut(TapRow)) {
        for kh in 0..self.kernel_h {
            let (oh0, oh1) = self.valid_outputs(0, kh);
            for kw in 0..self.kernel_w {
                let (ow0, ow1) = self.valid_outputs(1, kw);
                if ow0 >= ow1 {
                    continue;
                }
                let iw0 = self.input_index(1, ow0, kw);
                for oh in oh0..oh1 {
                    f(TapRow {
                        tap: kh * self.kernel_w + kw,
                        out: oh * self.out_w + ow0..oh * self.out_w + ow1,
                        input: self.input_index(0, oh, kh) * self.in_w + iw0,
                    });
                }
            }
        }
    }
}

/// One output row of one kernel tap: its valid outputs as a range of the output plane, and the
/// input-plane index the first of them reads (the next ones read every `stride[1]`-th value).
struct TapRow {
    tap: usize,
    out: std::ops::Range<usize>,
    input: usize,
}

/// `dL/dweight`, shape `[out_channels, in_channels / groups, kernel_h, kernel_w]`, or `None` for
/// a grouping these kernels do not cover.
pub fn weight_grad(x: &[f32], gy: &[f32], g: &ConvGeometry) -> Option<Vec<f32>> {
    if g.is_depthwise() {
        Some(depthwise_weight_grad(x, gy, g))
    } else if g.groups == 1 {
        Some(dense_weight_grad(x, gy, g))
    } else {
        None
    }
}

/// `dL/dx`, shape `[batch, in_channels, in_h, in_w]`, or `None` for a grouping these kernels do
/// not cover.
pub fn input_grad(weight: &[f32], gy: &[f32], g: &ConvGeometry) -> Option<Vec<f32>> {
    if g.is_depthwise() {
        Some(depthwise_input_grad(weight, gy, g))
    } else if g.groups == 1 {
        Some(dense_input_grad(weight, gy, g))
    } else {
        None
    }
}

fn depthwise_weight_grad(x: &[f32], gy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let taps = g.kernel_h * g.kernel_w;
    let mut dw = vec![0.0f32; g.out_channels * taps];
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, dw_c)| {
        let mut acc: Vec<Lanes> = (0..taps).map(|_| Lanes::default()).collect();
        for n in 0..g.batch {
            let plane = n * g.in_channels + c;
            let x_plane = &x[plane * g.in_plane()..][..g.in_plane()];
            let gy_plane = &gy[plane * g.out_plane()..][..g.out_plane()];
            g.for_each_tap_row(|row| {
                let gy_row = &gy_plane[row.out];
                let x_row = &x_plane[row.input..];
                if g.stride[1] == 1 {
                    acc[row.tap].dot(gy_row, &x_row[..gy_row.len()]);
                } else {
                    acc[row.tap].dot_strided(gy_row, x_row, g.stride[1]);
                }
            });
            for (d, lanes) in dw_c.iter_mut().zip(&mut acc) {
                *d += lanes.sum();
                *lanes = Lanes::default();
            }
        }
    });
    dw
}

fn depthwise_input_grad(weight: &[f32], gy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let taps = g.kernel_h * g.kernel_w;
    let mut dx = vec![0.0f32; g.batch * g.in_channels * g.in_plane()];
    dx.par_chunks_mut(g.in_plane())
        .enumerate()
        .for_each(|(plane, dx_plane)| {
            let c = plane % g.in_channels;
            let w_c = &weight[c * taps..(c + 1) * taps];
            let gy_plane = &gy[plane * g.out_plane()..][..g.out_plane()];
            g.for_each_tap_row(|row| {
                let wv = w_c[row.tap];
                let gy_row = &gy_plane[row.out];
                let dx_row = &mut dx_plane[row.input..];
                if g.stride[1] == 1 {
                    for (d, &v) in dx_row.iter_mut().zip(gy_row) {
                        *d += wv * v;
                    }
                } else {
                    for (d, &v) in dx_row.iter_mut().step_by(g.stride[1]).zip(gy_row) {
                        *d += wv * v;
                    }
                }
            });
        });
    dx
}

fn dense_weight_grad(x: &[f32], gy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let rows = g.col_rows();
    let size = g.out_channels * rows;
    let chunks = g.batch.min(rayon::current_num_threads()).max(1);
    let per_chunk = g.batch.div_ceil(chunks);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0.0f32; size];
            let mut col = Vec::new();
            let images = chunk * per_chunk..((chunk + 1) * per_chunk).min(g.batch);
            for n in images {
                let x_n = &x[n * g.in_channels * g.in_plane()..][..g.in_channels * g.in_plane()];
                let gy_n =
                    &gy[n * g.out_channels * g.out_plane()..][..g.out_channels * g.out_plane()];
                let col_n: &[f32] = if g.is_plain_pointwise() {
                    x_n
                } else {
                    im2col(x_n, g, &mut col);
                    &col
                };
                // dw[co, r] += Σ_p gy[co, p] · col[r, p]
                gemm_f32(
                    Matrix::row_major(&mut dw, g.out_channels, rows),
                    true,
                    MatrixRef::row_major(gy_n, g.out_channels, g.out_plane()),
                    MatrixRef::transposed(col_n, g.out_plane(), rows),
                    Parallelism::None,
                );
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0.0; size]);
    for partial in partials {
        for (a, b) in dw.iter_mut().zip(partial) {
            *a += b;
        }
    }
    dw
}

fn dense_input_grad(weight: &[f32], gy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let rows = g.col_rows();
    let image = g.in_channels * g.in_plane();
    let mut dx = vec![0.0f32; g.batch * image];
    // Parallel over images when there are enough of them, else inside each GEMM.
    let across_images = g.batch >= rayon::current_num_threads();
    let inner = if across_images {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    };
    // `col` is one patch-matrix buffer per thread, overwritten by each image's GEMM.
    let run = |col: &mut Vec<f32>, (n, dx_n): (usize, &mut [f32])| {
        let gy_n = &gy[n * g.out_channels * g.out_plane()..][..g.out_channels * g.out_plane()];
        // col[r, p] = Σ_co weight[co, r] · gy[co, p]
        let w_t = MatrixRef::transposed(weight, rows, g.out_channels);
        let gy_m = MatrixRef::row_major(gy_n, g.out_channels, g.out_plane());
        if g.is_plain_pointwise() {
            gemm_f32(
                Matrix::row_major(dx_n, rows, g.out_plane()),
                false,
                w_t,
                gy_m,
                inner,
            );
        } else {
            col.resize(rows * g.out_plane(), 0.0);
            gemm_f32(
                Matrix::row_major(col, rows, g.out_plane()),
                false,
                w_t,
                gy_m,
                inner,
            );
            col2im_add(col, g, dx_n);
        }
    };
    if across_images {
        dx.par_chunks_mut(image)
            .enumerate()
            .for_each_init(Vec::new, run);
    } else {
        let mut col = Vec::new();
        dx.chunks_mut(image)
            .enumerate()
            .for_each(|item| run(&mut col, item));
    }
    dx
}

/// Writes image `x_n`'s `[in_channels · kh · kw, out_h · out_w]` patch matrix into `col`
/// (zeros where a tap falls in the padding).
fn im2col(x_n: &[f32], g: &ConvGeometry, col: &mut Vec<f32>) {
    let (p, taps) = (g.out_plane(), g.kernel_h * g.kernel_w);
    col.clear();
    col.resize(g.col_rows() * p, 0.0);
    for c in 0..g.in_channels {
        let x_plane = &x_n[c * g.in_plane()..][..g.in_plane()];
        let col_c = &mut col[c * taps * p..(c + 1) * taps * p];
        g.for_each_tap_row(|row| {
            let out = &mut col_c[row.tap * p..(row.tap + 1) * p][row.out];
            let x_row = x_plane[row.input..].iter().step_by(g.stride[1]);
            for (o, &v) in out.iter_mut().zip(x_row) {
                *o = v;
            }
        });
    }
}

/// Adds the patch-matrix gradient `col` back onto image gradient `dx_n` (im2col's adjoint).
fn col2im_add(col: &[f32], g: &ConvGeometry, dx_n: &mut [f32]) {
    let (p, taps) = (g.out_plane(), g.kernel_h * g.kernel_w);
    for c in 0..g.in_channels {
        let dx_plane = &mut dx_n[c * g.in_plane()..][..g.in_plane()];
        let col_c = &col[c * taps * p..(c + 1) * taps * p];
        g.for_each_tap_row(|row| {
            let src = &col_c[row.tap * p..(row.tap + 1) * p][row.out];
            for (d, &v) in dx_plane[row.input..]
                .iter_mut()
                .step_by(g.stride[1])
                .zip(src)
            {
                *d += v;
            }
        });
    }
}

/// Eight running sums, so the dot products vectorise (a single f32 accumulator would force
/// the compiler to keep the additions in order).
#[derive(Default)]
struct Lanes([f32; 8]);

impl Lanes {
    fn dot(&mut self, a: &[f32], b: &[f32]) {
        let mut a8 = a.chunks_exact(8);
        let mut b8 = b.chunks_exact(8);
        for (x, y) in (&mut a8).zip(&mut b8) {
            for i in 0..8 {
                self.0[i] += x[i] * y[i];
            }
        }
        for (i, (x, y)) in a8.remainder().iter().zip(b8.remainder()).enumerate() {
            self.0[i] += x * y;
        }
    }

    fn dot_strided(&mut self, a: &[f32], b: &[f32], stride: usize) {
        for (i, (x, y)) in a.iter().zip(b.iter().step_by(stride)).enumerate() {
            self.0[i % 8] += x * y;
        }
    }

    fn sum(&self) -> f32 {
        self.0.iter().sum()
    }
}

/// A read-only matrix view: element `(r, c)` at `r · row_stride + c · col_stride`.
struct MatrixRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatrixRef<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[cols, rows]` matrix, seen as `[rows, cols]`.
    fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// A row-major output matrix.
struct Matrix<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`.
fn gemm_f32(
    dst: Matrix<'_>,
    accumulate: bool,
    lhs: MatrixRef<'_>,
    rhs: MatrixRef<'_>,
    parallelism: Parallelism,
) {
    assert!(lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows);
    assert!(lhs.fits() && rhs.fits() && dst.rows * dst.cols <= dst.data.len());
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index the GEMM touches inside the three slices, and
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.cols as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
