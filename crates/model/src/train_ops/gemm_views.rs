//! Strided matrix views over f32 slices and the one checked GEMM entry point of our kernels
//! (convolutions forward and backward, the inference `Linear`): the `gemm` crate's f32 GEMM
//! (the GEMM burn-flex itself uses), or, when the process-wide matmul precision is bf16 and
//! the CPU has AMX, [`super::amx_gemm`]'s bf16 products with f32 sums. One more checked entry,
//! [`gemm_into_uninit`], writes a product into memory not yet initialised (a convolution's
//! output, whose bias and activation follow in one pass; a 1×1 convolution's input gradient).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use gemm::Parallelism;

use half::bf16;

use super::activation_kernels::Activation;
use super::amx_gemm;
pub(super) use super::amx_gemm::Epilogue;
use super::stored::{Element, Stored};

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

/// Held shared by the passes of [`with_matmul_precision`] while they run, and exclusively by
/// [`set_matmul_precision`] while it switches: the switch never happens under a running pass.
static PRECISION_GATE: RwLock<()> = RwLock::new(());

/// Whether this CPU multiplies bf16 natively (AMX-BF16 tiles, permitted by the OS).
pub fn native_bf16() -> bool {
    amx_gemm::available()
}

/// Sets the process-wide precision of the products in convolutions and linear layers on flex
/// (every model and thread of this process). Returns the precision now in force: bf16 only
/// where [`native_bf16`], else f32.
/// Waits for the passes of [`with_matmul_precision`] running now to finish.
pub fn set_matmul_precision(precision: MatmulPrecision) -> MatmulPrecision {
    let _switch = PRECISION_GATE
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    BF16_PRODUCTS.store(
        in_force(precision) == MatmulPrecision::Bf16,
        Ordering::Relaxed,
    );
    matmul_precision()
}

/// What [`set_matmul_precision`] puts in force when asked for `precision`.
fn in_force(precision: MatmulPrecision) -> MatmulPrecision {
    if precision == MatmulPrecision::Bf16 && native_bf16() {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// Runs `f` (a model's forward pass) with `precision` in force, as [`set_matmul_precision`]
/// puts it, for the whole of `f`: passes of the same precision run together on any threads,
/// and a pass that needs the other one waits until they are done (and they for it). Two
/// models of different precisions in one process, embedding on two threads at once, each get
/// their own — with only the switch, one could flip it under the other's running pass.
pub fn with_matmul_precision<R>(precision: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    let wanted = in_force(precision);
    loop {
        {
            let _pass = PRECISION_GATE
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if matmul_precision() == wanted {
                return f();
            }
        }
        set_matmul_precision(precision);
    }
}

/// The precision [`set_matmul_precision`] put in force.
pub fn matmul_precision() -> MatmulPrecision {
    if BF16_PRODUCTS.load(Ordering::Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// A read-only matrix view: element `(r, c)` at `r · row_stride + c · col_stride`; of f32
/// values, or of bf16 ones (activations stored so, see [`super::stored`]), which only the
/// bf16 products read.
#[derive(Clone)]
pub(super) struct MatrixRef<'a, T = f32> {
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a, T> MatrixRef<'a, T> {
    pub(super) fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[cols, rows]` matrix, seen as `[rows, cols]`.
    pub(super) fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    /// `rows × cols` with rows `row_stride` apart, starting at `data[0]`.
    pub(super) fn strided_rows(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
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

/// A row-major output matrix (f32, or bf16 from the bf16 products).
pub(super) struct Matrix<'a, T = f32> {
    pub(super) data: &'a mut [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl<'a, T> Matrix<'a, T> {
    pub(super) fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols }
    }
}

/// A GEMM operand that several products share (a layer's weight across images or blocks of
/// rows): under bf16 products it is rounded and packed once ([`amx_gemm::Packed`]).
pub(super) enum Operand<'a> {
    F32(MatrixRef<'a>),
    /// bf16 values as they are stored (products in bf16 only).
    Bf16View(MatrixRef<'a, bf16>),
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

    /// `rows × cols` row-major values as they are stored: f32, or bf16 (read by the bf16
    /// products as they lie).
    pub(super) fn stored_rows(values: Stored<'a>, rows: usize, cols: usize) -> Self {
        match values {
            Stored::F32(v) => Operand::F32(MatrixRef::row_major(v, rows, cols)),
            Stored::Bf16(v) => Operand::Bf16View(MatrixRef::row_major(v, rows, cols)),
        }
    }

    fn side(&self) -> amx_gemm::Side<'_> {
        match self {
            Operand::F32(m) => amx_gemm::Side::View(m.clone()),
            Operand::Bf16View(m) => amx_gemm::Side::Bf16View(m.clone()),
            Operand::Bf16(p) => amx_gemm::Side::Packed(p),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Operand::F32(m) => (m.rows, m.cols),
            Operand::Bf16View(m) => (m.rows, m.cols),
            Operand::Bf16(p) => (p.rows(), p.cols()),
        }
    }

    fn fits(&self) -> bool {
        match self {
            Operand::F32(m) => m.fits(),
            Operand::Bf16View(m) => m.fits(),
            Operand::Bf16(_) => true,
        }
    }
}

/// [`gemm`], then the [`Epilogue`] over `dst` (a bias per row, an addend shaped as `dst`, the
/// activation): under bf16 products in the same pass as each block of the result is stored,
/// else as a pass after the GEMM. A bf16 `dst` or operand takes the bf16 products (which
/// [`MatmulPrecision::Bf16`] is only ever set for on a CPU with them).
fn gemm_then<T: Element>(
    dst: Matrix<'_, T>,
    accumulate: bool,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
    epilogue: Epilogue<'_>,
) {
    let ((m, k), (k2, n)) = (lhs.shape(), rhs.shape());
    assert!(m == dst.rows && n == dst.cols && k == k2);
    assert!(dst.rows * dst.cols <= dst.data.len() && epilogue.fits(m, n));
    assert!(lhs.fits() && rhs.fits());
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if matmul_precision() == MatmulPrecision::F32
        && let (Operand::F32(lhs), Operand::F32(rhs)) = (lhs, rhs)
        && let Some(out) = T::as_f32_mut(&mut dst.data[..m * n])
    {
        let mut out = Matrix::row_major(out, m, n);
        f32_gemm(&mut out, accumulate, lhs, rhs, 1.0, parallelism);
        epilogue.apply(out.data, n);
        return;
    }
    let parallel = !matches!(parallelism, Parallelism::None);
    let (lhs, rhs) = (lhs.side(), rhs.side());
    amx_gemm::gemm(dst, accumulate, lhs, rhs, parallel, epilogue);
}

/// `dst = lhs · rhs` ([`gemm`], in the [`matmul_precision`]) into memory that may not be
/// initialised, as a `rows × cols` row-major matrix. Both GEMMs only store into an output they
/// do not accumulate onto: the `gemm` crate's `read_dst = false` never loads it (BLAS's β = 0:
/// "C need not be set on input"; for `k = 0` it writes zeros), and [`amx_gemm`]'s store writes
/// each finished block without reading the destination. Returns `dst`, now initialised. A
/// convolution's output gets its bias and activation in one pass after this instead of a pass
/// that writes the bias rows before the product and one that applies the activation after it;
/// a gradient that a product overwrites in full (a 1×1 convolution's input gradient) skips the
/// zero-fill that `vec![0.0; …]` cost (3.7 % of a Lite0 bf16 training step in `perf`).
pub(super) fn gemm_into_uninit<'a>(
    dst: &'a mut [MaybeUninit<f32>],
    rows: usize,
    cols: usize,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
) -> &'a mut [f32] {
    let identity = Epilogue::activation(Activation::Identity);
    gemm_into_uninit_then(dst, rows, cols, lhs, rhs, parallelism, identity)
}

/// [`gemm_into_uninit`], then the [`Epilogue`]: under bf16 products in the AMX store (a
/// convolution's bias, residual and activation with no pass of their own over its output),
/// which also writes a bf16 `dst`.
pub(super) fn gemm_into_uninit_then<'a, T: Element>(
    dst: &'a mut [MaybeUninit<T>],
    rows: usize,
    cols: usize,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
    epilogue: Epilogue<'_>,
) -> &'a mut [T] {
    assert_eq!(dst.len(), rows * cols);
    // SAFETY: `MaybeUninit<T>` has the layout of `T`, and the product below writes every
    // one of the `rows · cols` elements before anything reads them (see above; `gemm_then`
    // asserts the shapes, and with an empty shape there are no elements).
    let dst = unsafe { &mut *(dst as *mut [MaybeUninit<T>] as *mut [T]) };
    gemm_then(
        Matrix::row_major(&mut *dst, rows, cols),
        false,
        lhs,
        rhs,
        parallelism,
        epilogue,
    );
    dst
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

/// Products with fewer rows than this split their columns across threads themselves.
const FEW_ROWS: usize = 256;

/// The fewest columns per thread in such a split: narrower tasks leave the micro-kernel's
/// column tiles part empty.
const MIN_TASK_COLS: usize = 64;

/// `dst (+)= scale · lhs · rhs` with the `gemm` crate; the callers check the shapes and that
/// the views fit their slices.
///
/// A product with few rows and `Parallelism::Rayon` (a single photo through a ViT linear layer:
/// 50 rows × 768 × 2,304) runs as one task per thread over its own range of columns: the
/// `gemm` crate's own threading reached 49–70 GFLOP/s on that product on two cores, one
/// column half per thread 82–134 and a quarter per task 131–147 (measured on an AVX-512 Xeon);
/// with many rows the crate's threading is as fast as any split and is kept.
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
        f32_gemm_into(
            dst.data.as_mut_ptr(),
            dst.rows,
            dst.cols,
            accumulate,
            lhs,
            rhs,
            scale,
            parallelism,
        )
    }
}

/// [`f32_gemm`] on a raw `rows × cols` row-major output.
///
/// # Safety
/// `dst` must be valid for writes (and, when `accumulate`, reads) of `rows · cols` values that
/// nothing else touches meanwhile, and `lhs`/`rhs` must fit their slices with `lhs` `rows ×
/// k` and `rhs` `k × cols`.
#[allow(clippy::too_many_arguments)]
unsafe fn f32_gemm_into(
    dst: *mut f32,
    rows: usize,
    cols: usize,
    accumulate: bool,
    lhs: &MatrixRef<'_>,
    rhs: &MatrixRef<'_>,
    scale: f32,
    parallelism: Parallelism,
) {
    let threads = match parallelism {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(n) => n,
    };
    if threads > 1 && rows < FEW_ROWS && cols >= 2 * MIN_TASK_COLS {
        let tasks = (2 * threads).min(cols / MIN_TASK_COLS);
        let width = cols.div_ceil(tasks).next_multiple_of(16);
        let out = SharedOut(dst);
        rayon::scope(|scope| {
            for first in (0..cols).step_by(width) {
                let out = &out;
                let task_cols = width.min(cols - first);
                scope.spawn(move |_| {
                    // SAFETY: as below, for columns `first..first + task_cols` of `dst` and
                    // `rhs`; the tasks write disjoint column ranges of `dst`.
                    unsafe {
                        f32_gemm_raw(
                            out.0.add(first),
                            cols,
                            rows,
                            task_cols,
                            accumulate,
                            lhs,
                            rhs.data.as_ptr().add(first * rhs.col_stride),
                            rhs,
                            scale,
                            Parallelism::None,
                        )
                    }
                });
            }
        });
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        f32_gemm_raw(
            dst,
            cols,
            rows,
            cols,
            accumulate,
            lhs,
            rhs.data.as_ptr(),
            rhs,
            scale,
            parallelism,
        )
    }
}

/// The output pointer of a product split over threads by columns.
struct SharedOut(*mut f32);
// SAFETY: each task writes its own columns through it (see `f32_gemm`).
unsafe impl Sync for SharedOut {}

/// The one call into the `gemm` crate: `rows × cols` of `dst` (row stride `dst_row_stride`)
/// from `lhs` and the columns of `rhs` starting at `rhs_first` (with `rhs`'s strides).
///
/// # Safety
/// Every element addressed through the three pointers must lie inside live allocations, and
/// `dst`'s must not alias the inputs or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn f32_gemm_raw(
    dst: *mut f32,
    dst_row_stride: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    lhs: &MatrixRef<'_>,
    rhs_first: *const f32,
    rhs: &MatrixRef<'_>,
    scale: f32,
    parallelism: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            lhs.cols,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs_first,
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

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, with operands that may be
/// packed already ([`Operand`]): bf16 products when either is packed or stored in bf16, or the
/// [`matmul_precision`] is bf16.
pub(super) fn gemm(
    dst: Matrix<'_>,
    accumulate: bool,
    lhs: &Operand<'_>,
    rhs: &Operand<'_>,
    parallelism: Parallelism,
) {
    let identity = Epilogue::activation(Activation::Identity);
    gemm_then(dst, accumulate, lhs, rhs, parallelism, identity);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lhs · rhs` in f64 by the definition.
    fn reference(lhs: &MatrixRef<'_>, rhs: &MatrixRef<'_>) -> Vec<f32> {
        let at =
            |m: &MatrixRef<'_>, r: usize, c: usize| m.data[r * m.row_stride + c * m.col_stride];
        let mut out = Vec::with_capacity(lhs.rows * rhs.cols);
        for r in 0..lhs.rows {
            for c in 0..rhs.cols {
                let sum: f64 = (0..lhs.cols)
                    .map(|k| f64::from(at(lhs, r, k)) * f64::from(at(rhs, k, c)))
                    .sum();
                out.push(sum as f32);
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// Few rows with `Parallelism::Rayon` take the column split: every column range (the last
    /// one narrower, widths not multiples of the vector width), plain and transposed right-hand
    /// sides, overwrite and accumulate, equal the definition.
    #[test]
    fn column_split_products_match_the_definition() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (rows, inner, cols) in [(50, 96, 300), (1, 64, 129), (7, 33, 1000)] {
            let lhs_data = values(rows * inner, 1);
            let rhs_data = values(inner * cols, 2);
            let lhs = MatrixRef::row_major(&lhs_data, rows, inner);
            for rhs in [
                MatrixRef::row_major(&rhs_data, inner, cols),
                MatrixRef::transposed(&rhs_data, inner, cols),
            ] {
                let want = reference(&lhs, &rhs);
                for accumulate in [false, true] {
                    let start = values(rows * cols, 3);
                    let mut got = start.clone();
                    // f32 products whatever another test set the matmul precision to.
                    pool.install(|| {
                        f32_gemm(
                            &mut Matrix::row_major(&mut got, rows, cols),
                            accumulate,
                            &lhs,
                            &rhs,
                            1.0,
                            Parallelism::Rayon(0),
                        )
                    });
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let w = if accumulate { w + start[i] } else { *w };
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{rows}x{inner}x{cols} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
