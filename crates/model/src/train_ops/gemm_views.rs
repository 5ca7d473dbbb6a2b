//! Strided matrix views over f32 slices and the one checked GEMM entry point of our kernels
//! (convolutions forward and backward, the inference `Linear`): the `gemm` crate's f32 GEMM
//! (the GEMM burn-flex itself uses), or, when the process-wide matmul precision is bf16 and
//! the CPU has AMX, [`super::amx_gemm`]'s bf16 products with f32 sums.

use std::sync::atomic::{AtomicBool, Ordering};

use gemm::Parallelism;

use super::affine_kernels::Activation;
use super::amx_gemm;

/// The precision of the products inside our f32 GEMMs, like PyTorch's
/// `torch.set_float32_matmul_precision`: inputs, outputs and sums stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 products (the default).
    F32,
    /// Inputs rounded to bf16, f32 sums, on AMX tiles.
    Bf16,
}

static BF16_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Whether this CPU multiplies bf16 natively (AMX-BF16 tiles, permitted by the OS).
pub fn native_bf16() -> bool {
    amx_gemm::available()
}

/// Sets the process-wide precision of the products in convolutions and linear layers on flex
/// (every model and thread of this process). Returns the precision now in force: bf16 only
/// where [`native_bf16`], else f32.
pub fn set_matmul_precision(precision: MatmulPrecision) -> MatmulPrecision {
    let bf16 = precision == MatmulPrecision::Bf16 && native_bf16();
    BF16_PRODUCTS.store(bf16, Ordering::Relaxed);
    matmul_precision()
}

/// The precision [`set_matmul_precision`] put in force.
pub fn matmul_precision() -> MatmulPrecision {
    if BF16_PRODUCTS.load(Ordering::Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// A read-only matrix view: element `(r, c)` at `r · row_stride + c · col_stride`.
#[derive(Clone)]
pub(super) struct MatrixRef<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
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

    /// `rows × cols` with rows `row_stride` apart, starting at `data[0]`.
    pub(super) fn strided_rows(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same values.
    pub(super) fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
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
    pub(super) data: &'a mut [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols }
    }
}

/// A GEMM operand that several products share (a layer's weight across images or blocks of
/// rows): under bf16 products it is rounded and packed once ([`amx_gemm::Packed`]).
pub(super) enum Operand<'a> {
    F32(MatrixRef<'a>),
    Bf16(amx_gemm::Packed),
}

impl<'a> Operand<'a> {
    /// `m` as the left factor of the products to come.
    pub(super) fn lhs(m: MatrixRef<'a>, parallel: bool) -> Self {
        assert!(m.fits());
        if matmul_precision() == MatmulPrecision::Bf16 {
            Operand::Bf16(amx_gemm::Packed::lhs(&m, parallel))
        } else {
            Operand::F32(m)
        }
    }

    /// `m` as the right factor of the products to come.
    pub(super) fn rhs(m: MatrixRef<'a>, parallel: bool) -> Self {
        assert!(m.fits());
        if matmul_precision() == MatmulPrecision::Bf16 {
            Operand::Bf16(amx_gemm::Packed::rhs(&m, parallel))
        } else {
            Operand::F32(m)
        }
    }

    fn side(&self) -> amx_gemm::Side<'_> {
        match self {
            Operand::F32(m) => amx_gemm::Side::View(m.clone()),
            Operand::Bf16(p) => amx_gemm::Side::Packed(p),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Operand::F32(m) => (m.rows, m.cols),
            Operand::Bf16(p) => (p.rows(), p.cols()),
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, with products in the
/// [`matmul_precision`].
pub(super) fn gemm_f32(
    dst: Matrix<'_>,
    accumulate: bool,
    lhs: MatrixRef<'_>,
    rhs: MatrixRef<'_>,
    parallelism: Parallelism,
) {
    gemm(
        dst,
        accumulate,
        &Operand::F32(lhs),
        &Operand::F32(rhs),
        parallelism,
    );
}

/// [`gemm`], then `activation` over `dst`: under bf16 products in the same pass as each
/// block of the result is stored, else as a pass after the GEMM.
pub(super) fn gemm_then(
    mut dst: Matrix<'_>,
    accumulate: bool,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
    activation: Activation,
) {
    let ((m, k), (k2, n)) = (lhs.shape(), rhs.shape());
    assert!(m == dst.rows && n == dst.cols && k == k2);
    assert!(dst.rows * dst.cols <= dst.data.len());
    for operand in [lhs, rhs] {
        if let Operand::F32(view) = operand {
            assert!(view.fits());
        }
    }
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    let (lhs, rhs) = match (lhs, rhs) {
        (Operand::F32(lhs), Operand::F32(rhs)) if matmul_precision() == MatmulPrecision::F32 => {
            (lhs, rhs)
        }
        _ => {
            let parallel = !matches!(parallelism, Parallelism::None);
            let (lhs, rhs) = (lhs.side(), rhs.side());
            return amx_gemm::gemm(dst, accumulate, lhs, rhs, parallel, activation);
        }
    };
    f32_gemm(&mut dst, accumulate, lhs, rhs, 1.0, parallelism);
    activation.apply(&mut dst.data[..dst.rows * dst.cols]);
}

/// `dst = scale · lhs · rhs` in f32 whatever the [`matmul_precision`], on this thread: for
/// products too small to gain from bf16 (attention's per-head products).
pub(super) fn gemm_f32_scaled(
    mut dst: Matrix<'_>,
    lhs: MatrixRef<'_>,
    rhs: MatrixRef<'_>,
    scale: f32,
) {
    assert!(lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows);
    assert!(dst.rows * dst.cols <= dst.data.len() && lhs.fits() && rhs.fits());
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    f32_gemm(&mut dst, false, &lhs, &rhs, scale, Parallelism::None);
}

/// `dst (+)= scale · lhs · rhs` with the `gemm` crate; the callers check the shapes and that
/// the views fit their slices.
fn f32_gemm(
    dst: &mut Matrix<'_>,
    accumulate: bool,
    lhs: &MatrixRef<'_>,
    rhs: &MatrixRef<'_>,
    scale: f32,
    parallelism: Parallelism,
) {
    // SAFETY: the callers' asserts keep every index the GEMM touches inside the three slices,
    // and `dst` is borrowed mutably, so it aliases neither input.
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
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// [`gemm_f32`] with operands that may be packed already ([`Operand`]): bf16 products when
/// either is packed or the [`matmul_precision`] is bf16.
pub(super) fn gemm(
    dst: Matrix<'_>,
    accumulate: bool,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
) {
    gemm_then(dst, accumulate, lhs, rhs, parallelism, Activation::Identity);
}
