//! Strided matrix views over f32 slices and one checked entry point to the `gemm` crate's
//! f32 GEMM (the GEMM burn-flex itself uses), shared by the convolution kernels.

use gemm::Parallelism;

/// A read-only matrix view: element `(r, c)` at `r · row_stride + c · col_stride`.
pub(super) struct MatrixRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatrixRef<'a> {
    pub(super) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[cols, rows]` matrix, seen as `[rows, cols]`.
    pub(super) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
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
pub(super) struct Matrix<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`.
pub(super) fn gemm_f32(
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
