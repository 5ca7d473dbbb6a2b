//! `C (+)= A · B` for f32 matrices with the products in bf16 and the sums in f32, on Intel AMX
//! tiles: what [`super::gemm_views::gemm`] runs when the matmul precision is bf16
//! ([`super::gemm_views::set_matmul_precision`]) — PyTorch's
//! `torch.set_float32_matmul_precision("medium")`.
//!
//! Why our own: on this CPU (AMX-BF16, AVX512-BF16) one `tdpbf16ps` does 16·16·32
//! multiply-adds, and a plain 2×2-tile loop measured 327 GFLOP/s on one core against ~100 for
//! the `gemm` crate's AVX-512 f32 kernel; no Rust crate drives AMX, and the intrinsics are not
//! stable in Rust, so the tile instructions are inline assembly (LLVM assembles them).
//!
//! Layout. Both operands are rounded to bf16 (round to nearest even) and packed, zero-padded
//! to multiples of 32:
//! - `A` (`m × k`) row-major, `[mp][kp]`: a 16 × 32 tile is 16 rows of 64 bytes;
//! - `B` (`k × n`) in AMX's pair-interleaved ("VNNI") layout, per 16 columns `[kp/2][16][2]`:
//!   row `p` of a tile holds `B[2p][c], B[2p+1][c]` for its 16 columns `c`.
//!
//! A 32 × 32 block of `C` is four accumulator tiles (tmm0–3) fed by two `A` tiles (tmm4, 5)
//! and two `B` tiles (tmm6, 7) per 32 of `k`; the block is stored to a scratch buffer and
//! added to (or written over) the output. Columns go in chunks whose packed `B` fits in L2;
//! within a chunk, 32-row strips of `C` run in parallel.
//!
//! The tile registers need the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux
//! 5.16+), asked once per process by [`available`]; each task loads the tile configuration
//! and releases the tiles when done ([`Tiles`]).

use rayon::prelude::*;

use half::bf16;

use super::activation_kernels::Activation;
use super::gemm_views::{Matrix, MatrixRef};
use super::stored::Element;

/// Whether this CPU and OS run AMX-BF16 tiles (checked and permission asked once).
pub(super) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7 (present on every CPU with AVX-512, checked first): EDX bit 22 = AMX-BF16,
    // bit 24 = AMX-TILE.
    let cpu = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && {
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
        };
    if !cpu {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which XSAVE features this process
    // may use; it fails cleanly (non-zero) where the kernel does not allow AMX.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    granted == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Packed `B` bytes per column chunk: the chunk stays in one core's L2 while every row strip
/// of `A` passes over it.
const B_CHUNK_BYTES: usize = 512 * 1024;

/// A matrix rounded to bf16 and packed for one side of the product: made once for an operand
/// that several products share (a layer's weight across images or row blocks).
pub(super) struct Packed {
    data: Vec<u16>,
    rows: usize,
    cols: usize,
}

impl Packed {
    /// `m` as a left operand (`A`).
    pub(super) fn lhs(m: &MatrixRef<'_>, parallel: bool) -> Self {
        let mut data = vec![0; pad32(m.rows) * pad32(m.cols)];
        pack::rows(m, pad32(m.rows), pad32(m.cols), &mut data, parallel);
        Packed {
            data,
            rows: m.rows,
            cols: m.cols,
        }
    }

    /// `m` as a right operand (`B`).
    pub(super) fn rhs(m: &MatrixRef<'_>, parallel: bool) -> Self {
        let mut data = vec![0; pad32(m.rows) * pad32(m.cols)];
        pack::pairs(m, pad32(m.rows), pad32(m.cols), &mut data, parallel);
        Packed {
            data,
            rows: m.rows,
            cols: m.cols,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn cols(&self) -> usize {
        self.cols
    }
}

/// One side of a product: f32 (packed into a reused per-thread buffer for this call) or
/// already [`Packed`] for its side.
pub(super) enum Side<'a> {
    View(MatrixRef<'a>),
    /// Values stored in bf16: packed without rounding.
    Bf16View(MatrixRef<'a, bf16>),
    Packed(&'a Packed),
}

impl Side<'_> {
    fn shape(&self) -> (usize, usize) {
        match self {
            Side::View(m) => (m.rows, m.cols),
            Side::Bf16View(m) => (m.rows, m.cols),
            Side::Packed(p) => (p.rows, p.cols),
        }
    }
}

thread_local! {
    /// Per-thread packing buffers for operands packed per call: a fresh multi-megabyte buffer
    /// per product cost the kernel's page clearing as much as the product itself. A product
    /// takes them out while it runs and puts them back after: a rayon worker waiting inside a
    /// parallel product may run another product, which then finds them empty and allocates.
    static BUFFERS: std::cell::Cell<(Vec<u16>, Vec<u16>)> = const {
        std::cell::Cell::new((Vec::new(), Vec::new()))
    };
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, with bf16 products. Call only
/// when [`available`]; a packed `lhs` must have been packed with [`Packed::lhs`], a packed `rhs`
/// with [`Packed::rhs`].
pub(super) fn gemm<T: Element>(
    dst: Matrix<'_, T>,
    accumulate: bool,
    lhs: Side<'_>,
    rhs: Side<'_>,
    parallel: bool,
    epilogue: Epilogue<'_>,
) {
    assert!(available(), "AMX-BF16 GEMM called on a CPU without it");
    let ((m, k), (k2, n)) = (lhs.shape(), rhs.shape());
    assert!(m == dst.rows && n == dst.cols && k == k2 && m * n <= dst.data.len());
    assert!(epilogue.fits(m, n));
    if k == 0 || m == 0 || n == 0 {
        if !accumulate {
            dst.data[..m * n].fill(T::from_f32(0.0));
        }
        epilogue.apply(&mut dst.data[..m * n], n);
        return;
    }
    let (mp, kp, np) = (pad32(m), pad32(k), pad32(n));
    let (mut a_buffer, mut b_buffer) = BUFFERS.take();
    let a: &[u16] = match lhs {
        Side::Packed(p) => &p.data,
        Side::View(v) => {
            pack::rows(&v, mp, kp, reused(&mut a_buffer, mp * kp), parallel);
            &a_buffer[..mp * kp]
        }
        Side::Bf16View(v) => {
            pack::bf16_rows(&v, mp, kp, reused(&mut a_buffer, mp * kp), parallel);
            &a_buffer[..mp * kp]
        }
    };
    let b: &[u16] = match rhs {
        Side::Packed(p) => &p.data,
        Side::View(v) => {
            pack::pairs(&v, kp, np, reused(&mut b_buffer, kp * np), parallel);
            &b_buffer[..kp * np]
        }
        Side::Bf16View(v) => {
            pack::bf16_pairs(&v, kp, np, reused(&mut b_buffer, kp * np), parallel);
            &b_buffer[..kp * np]
        }
    };
    assert!(a.len() == mp * kp && b.len() == kp * np);
    let store = Store {
        accumulate,
        epilogue,
    };
    products(&mut dst.data[..m * n], n, store, a, b, kp, np, parallel);
    BUFFERS.set((a_buffer, b_buffer));
}

/// The first `len` elements of a per-thread packing buffer, which grows (zero-filled) only
/// past its longest use so far. The packers overwrite every element they are given; a buffer
/// cut to each product's length had the difference filled with zeros again whenever a larger
/// product followed a smaller one (ConvNeXt-tiny's layers alternate sizes: `perf` put 2.5 %
/// of its bf16 step in that `memset`).
fn reused(buffer: &mut Vec<u16>, len: usize) -> &mut [u16] {
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

/// The tile loop over packed `a` (`[mp][kp]`) and `b` (pairs, `np` columns) into `out`
/// (`rows × n`).
#[allow(clippy::too_many_arguments)]
fn products<T: Element>(
    out: &mut [T],
    n: usize,
    store: Store,
    a: &[u16],
    b: &[u16],
    kp: usize,
    np: usize,
    parallel: bool,
) {
    let chunk = (B_CHUNK_BYTES / (2 * kp) / 32 * 32).clamp(32, np);
    for n0 in (0..np).step_by(chunk) {
        let columns = n0..(n0 + chunk).min(np);
        let strip = |(s, rows): (usize, &mut [T])| {
            let tiles = Tiles::load();
            let mut block = [0f32; 32 * 32];
            let a_strip = &a[s * 32 * kp..][..32 * kp];
            for j in columns.clone().step_by(32) {
                let b_pair = &b[j * kp..][..32 * kp];
                tiles.block(a_strip, b_pair, kp, &mut block);
                store.block(&block, rows, 32 * s, n, j);
            }
        };
        for_each_chunk(out, 32 * n, parallel, strip);
    }
}

fn pad32(x: usize) -> usize {
    x.div_ceil(32) * 32
}

/// `f((index, chunk))` over the `size`-element chunks of `data`: in parallel, or in order on
/// this thread.
fn for_each_chunk<T: Send>(
    data: &mut [T],
    size: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Send + Sync,
) {
    if parallel {
        data.par_chunks_mut(size).enumerate().for_each(f);
    } else {
        data.chunks_mut(size).enumerate().for_each(f);
    }
}

/// What the store does to each finished block of sums besides writing (or adding) it, before
/// the activation: a value per output row (a convolution's bias per channel) and a matrix
/// shaped as the output (a residual) — added here rather than written into the output before
/// the product, a pass that was 7 % of a Lite0 bf16 train step in `perf` (its stores missed
/// every cache: a 1×1 convolution's output is several megabytes per image).
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    /// One value per output row.
    pub(super) row_bias: Option<&'a [f32]>,
    /// Row-major, shaped as the output.
    pub(super) addend: Option<&'a [f32]>,
    pub(super) activation: Activation,
}

impl Epilogue<'_> {
    /// The activation alone.
    pub(super) fn activation(activation: Activation) -> Self {
        Epilogue {
            row_bias: None,
            addend: None,
            activation,
        }
    }

    /// Whether the bias and addend cover an `m × n` output.
    pub(super) fn fits(&self, m: usize, n: usize) -> bool {
        self.row_bias.is_none_or(|b| b.len() >= m) && self.addend.is_none_or(|a| a.len() >= m * n)
    }

    /// `y[r, c] = activation(y[r, c] + row_bias[r] + addend[r, c])` over a row-major `y` of
    /// rows of `n` values (a missing bias adds 0): the same sums in the same order as the
    /// store. Also the f32 convolution's pass after its GEMM; shaped so that, inlined into
    /// a `vectorized` closure, its loops vectorise (the activation chosen once, outside them).
    #[inline(always)]
    pub(super) fn apply<T: Element>(&self, y: &mut [T], n: usize) {
        match self.activation {
            Activation::Identity if self.row_bias.is_none() && self.addend.is_none() => {}
            Activation::Identity => self.apply_with(y, n, |v| v),
            Activation::Relu => self.apply_with(y, n, |v| Activation::Relu.of(v)),
            Activation::Relu6 => self.apply_with(y, n, |v| Activation::Relu6.of(v)),
        }
    }

    #[inline(always)]
    fn apply_with<T: Element>(&self, y: &mut [T], n: usize, f: impl Fn(f32) -> f32) {
        if n == 0 {
            return;
        }
        for (r, row) in y.chunks_mut(n).enumerate() {
            let b = self.bias(r);
            match self.addend {
                Some(a) => {
                    for (v, &s) in row.iter_mut().zip(&a[r * n..][..n]) {
                        *v = T::from_f32(f(v.to_f32() + b + s));
                    }
                }
                None => {
                    for v in row {
                        *v = T::from_f32(f(v.to_f32() + b));
                    }
                }
            }
        }
    }

    /// Row `r`'s bias, 0 without one.
    #[inline(always)]
    fn bias(&self, r: usize) -> f32 {
        self.row_bias.map_or(0.0, |b| b[r])
    }
}

/// How a finished 32 × 32 block of sums reaches the output: written or added, then the
/// [`Epilogue`].
#[derive(Clone, Copy)]
struct Store<'a> {
    accumulate: bool,
    epilogue: Epilogue<'a>,
}

impl Store<'_> {
    /// Stores `block` into the rows of `rows` (row length `n`; the output's rows from
    /// `first_row`) at column `j`, clipped to the matrix.
    fn block<T: Element>(
        self,
        block: &[f32; 32 * 32],
        rows: &mut [T],
        first_row: usize,
        n: usize,
        j: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the store runs only inside an AMX product, and `available` checked
            // AVX-512 F, BW, VL and BF16.
            unsafe { self.block_avx512(block, rows, first_row, n, j) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.block_scalar(block, rows, first_row, n, j)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn block_scalar<T: Element>(
        self,
        block: &[f32; 32 * 32],
        rows: &mut [T],
        first_row: usize,
        n: usize,
        j: usize,
    ) {
        let width = (n - j).min(32);
        let e = self.epilogue;
        for (i, (row, sums)) in rows.chunks_mut(n).zip(block.chunks(32)).enumerate() {
            let r = first_row + i;
            let addend = e.addend.map(|a| &a[r * n + j..][..width]);
            for (c, (d, s)) in row[j..j + width].iter_mut().zip(sums).enumerate() {
                let sum = if self.accumulate { d.to_f32() + s } else { *s };
                let v = sum + e.bias(r) + addend.map_or(0.0, |a| a[c]);
                *d = T::from_f32(e.activation.of(v));
            }
        }
    }

    /// [`Store::block`] in 16-lane vectors, the row ends masked: the adds in
    /// [`Epilogue::apply`]'s order (sum, then the output it accumulates onto, the bias — 0
    /// without one — and the addend), and ReLU/ReLU6
    /// as [`Activation::of`] has them (`max(v, 0)` is 0 for NaN, ReLU6's clamp keeps NaN).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn block_avx512<T: Element>(
        self,
        block: &[f32; 32 * 32],
        rows: &mut [T],
        first_row: usize,
        n: usize,
        j: usize,
    ) {
        use std::arch::x86_64::*;
        let width = (n - j).min(32);
        let e = self.epilogue;
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        for (i, (row, sums)) in rows.chunks_mut(n).zip(block.chunks(32)).enumerate() {
            let r = first_row + i;
            let row = &mut row[j..j + width];
            let addend = e.addend.map(|a| &a[r * n + j..][..width]);
            for half in 0..2 {
                let c0 = 16 * half;
                if c0 >= width {
                    break;
                }
                let mask: __mmask16 = if width - c0 >= 16 {
                    u16::MAX
                } else {
                    (1u16 << (width - c0)) - 1
                };
                // SAFETY: lanes `c0..width` of `row`, `addend` and `sums` (32 values) are in
                // bounds, and the masked loads and stores touch no other lane.
                unsafe {
                    let mut v = _mm512_loadu_ps(sums.as_ptr().add(c0));
                    let out = row.as_mut_ptr().add(c0);
                    if self.accumulate {
                        v = _mm512_add_ps(T::load16(out, mask), v);
                    }
                    v = _mm512_add_ps(v, _mm512_set1_ps(e.bias(r)));
                    if let Some(a) = addend {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.as_ptr().add(c0)));
                    }
                    v = match e.activation {
                        Activation::Identity => v,
                        Activation::Relu => _mm512_max_ps(v, zero),
                        Activation::Relu6 => _mm512_min_ps(six, _mm512_max_ps(zero, v)),
                    };
                    T::store16(out, mask, v);
                }
            }
        }
    }
}

/// This thread's tile registers, configured for 16 × 64-byte tiles; released on drop.
struct Tiles(());

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl Tiles {
    fn load() -> Self {
        // Palette 1; tiles 0–7: 16 rows of 64 bytes (bytes 16.. hold each tile's bytes per
        // row as u16, bytes 48.. its rows).
        let mut config = [0u8; 64];
        config[0] = 1;
        for t in 0..8 {
            config[16 + 2 * t] = 64;
            config[48 + t] = 16;
        }
        let config = TileConfig(config);
        // SAFETY: `available()` was checked by `gemm`, and the configuration is valid for
        // palette 1 (8 tiles of at most 16 rows × 64 bytes).
        unsafe { tile::configure(&config.0) };
        Self(())
    }

    /// `block = a_strip[32 × kp] · b_pair[kp × 32]` (packed as in the module docs).
    fn block(&self, a_strip: &[u16], b_pair: &[u16], kp: usize, block: &mut [f32; 32 * 32]) {
        assert!(kp.is_multiple_of(32) && a_strip.len() >= 32 * kp && b_pair.len() >= 32 * kp);
        // SAFETY: tiles are configured (`self` exists); every tile load reads 16 rows of 64
        // bytes inside `a_strip` / `b_pair` (checked above), every store writes 16 rows of 64
        // bytes inside `block` (32 × 32 f32).
        unsafe { tile::block_2x2(a_strip.as_ptr(), b_pair.as_ptr(), kp, block.as_mut_ptr()) }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releasing the tile state is always allowed once configured.
        unsafe { tile::release() }
    }
}

#[cfg(target_arch = "x86_64")]
mod tile {
    use std::arch::asm;

    pub(super) unsafe fn configure(config: &[u8; 64]) {
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.as_ptr(), options(nostack, readonly)) };
    }

    pub(super) unsafe fn release() {
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Four accumulator tiles over the whole `kp`, stored to a 32 × 32 row-major `c`.
    pub(super) unsafe fn block_2x2(a: *const u16, b: *const u16, kp: usize, c: *mut f32) {
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a_stride = 2 * kp;
            let (a1, b1) = (a.add(16 * kp), b.add(16 * kp));
            for k in (0..kp).step_by(32) {
                asm!(
                    "tileloadd tmm4, [{a0} + {a_stride}*1]",
                    "tileloadd tmm5, [{a1} + {a_stride}*1]",
                    "tileloadd tmm6, [{b0} + {b_stride}*1]",
                    "tileloadd tmm7, [{b1} + {b_stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(k),
                    a1 = in(reg) a1.add(k),
                    b0 = in(reg) b.add(16 * k),
                    b1 = in(reg) b1.add(16 * k),
                    a_stride = in(reg) a_stride,
                    b_stride = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c0} + {stride}*1], tmm0",
                "tilestored [{c1} + {stride}*1], tmm1",
                "tilestored [{c2} + {stride}*1], tmm2",
                "tilestored [{c3} + {stride}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * 32),
                c3 = in(reg) c.add(16 * 32 + 16),
                stride = in(reg) 32 * 4usize,
                options(nostack)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tile {
    pub(super) unsafe fn configure(_: &[u8; 64]) {
        unreachable!("AMX is x86-64 only")
    }
    pub(super) unsafe fn release() {}
    pub(super) unsafe fn block_2x2(_: *const u16, _: *const u16, _: usize, _: *mut f32) {
        unreachable!("AMX is x86-64 only")
    }
}

/// Rounding f32 to bf16 and packing into the tile layouts.
mod pack {
    use half::bf16;

    use super::super::gemm_views::MatrixRef;
    use super::for_each_chunk;

    /// `m` row-major `[mp][kp]`, zero-padded, into `out` (`mp · kp` elements, every one
    /// written).
    pub(super) fn rows(m: &MatrixRef<'_>, mp: usize, kp: usize, out: &mut [u16], parallel: bool) {
        assert_eq!(out.len(), mp * kp);
        if m.col_stride != 1 && m.row_stride == 1 && simd::usable() {
            // Column-major storage (a transposed view): 16 × 16 blocks transposed in registers.
            let strip = |(s, rows): (usize, &mut [u16])| {
                for k0 in (0..kp).step_by(16) {
                    // SAFETY: the CPU has AVX-512BW and AVX512-BF16 (`usable`); `rows` holds 16
                    // rows of `kp` elements and `k0 + 16 <= kp`.
                    unsafe { simd::rows_from_columns(m, 16 * s, k0, kp, rows) };
                }
            };
            for_each_chunk(out, 16 * kp, parallel, strip);
            return;
        }
        let fill = |(r, row): (usize, &mut [u16])| {
            if r < m.rows && m.col_stride == 1 {
                let src = &m.data[r * m.row_stride..][..m.cols];
                convert(src, &mut row[..m.cols]);
                row[m.cols..].fill(0);
            } else {
                row_by_value(m, r, row);
            }
        };
        for_each_chunk(out, kp, parallel, fill);
    }

    /// `m` in the pair-interleaved layout, per 16 columns `[kp/2][16][2]`, zero-padded, into
    /// `out` (`kp · np` elements, every one written).
    pub(super) fn pairs(m: &MatrixRef<'_>, kp: usize, np: usize, out: &mut [u16], parallel: bool) {
        assert_eq!(out.len(), np * kp);
        // Full 16-column blocks of a row-major `m` go GROUP at a time: each pair of rows is
        // then read as GROUP · 64 contiguous bytes rather than 64 (one page per row apart).
        let full = if m.col_stride == 1 && simd::usable() {
            m.cols / 16
        } else {
            0
        };
        let fill = |block: usize, tile: &mut [u16]| {
            let c0 = block * 16;
            if c0 < m.cols && m.col_stride != 1 && m.row_stride == 1 && simd::usable() {
                // SAFETY: the CPU has AVX-512BW and AVX512-BF16 (`usable`); `tile` is one
                // 16-column block of `kp` rows, and reads stay inside `m` (masked to its size).
                unsafe { simd::pairs_from_columns(m, c0, kp, tile) };
            } else {
                pairs_by_value(m, c0, tile);
            }
        };
        let fill_group = |(group, tiles): (usize, &mut [u16])| {
            let first = group * GROUP;
            let blocks = full.saturating_sub(first).min(tiles.len() / (16 * kp));
            if blocks > 0 {
                // SAFETY: the CPU has AVX-512BW and AVX512-BF16 (`full > 0` only when
                // `usable`), and the `blocks` blocks from `first` are full 16-column blocks
                // of `m`, so every read is inside `m`.
                unsafe { simd::pairs_16(m, first * 16, blocks, &mut tiles[..blocks * 16 * kp]) };
            }
            for (b, tile) in tiles.chunks_mut(16 * kp).enumerate().skip(blocks) {
                fill(first + b, tile);
            }
        };
        for_each_chunk(out, GROUP * 16 * kp, parallel, fill_group);
    }

    /// [`rows`] of a matrix stored in bf16: its values as they are (no rounding).
    pub(super) fn bf16_rows(
        m: &MatrixRef<'_, bf16>,
        mp: usize,
        kp: usize,
        out: &mut [u16],
        parallel: bool,
    ) {
        assert_eq!(out.len(), mp * kp);
        let fill = |(r, row): (usize, &mut [u16])| {
            if r < m.rows && m.col_stride == 1 {
                // A row-major row is already the packed row: one copy of its bits.
                let src = &m.data[r * m.row_stride..][..m.cols];
                // SAFETY: `bf16` is `repr(transparent)` over its `u16` bits.
                let bits = unsafe { &*(src as *const [bf16] as *const [u16]) };
                row[..m.cols].copy_from_slice(bits);
                row[m.cols..].fill(0);
            } else {
                row_by_value(m, r, row);
            }
        };
        for_each_chunk(out, kp, parallel, fill);
    }

    /// [`pairs`] of a matrix stored in bf16: its values as they are, in the pair-interleaved
    /// layout; row-major full 16-column blocks and column-major matrices (a transposed view)
    /// in vector registers.
    pub(super) fn bf16_pairs(
        m: &MatrixRef<'_, bf16>,
        kp: usize,
        np: usize,
        out: &mut [u16],
        parallel: bool,
    ) {
        assert_eq!(out.len(), np * kp);
        let row_major = m.col_stride == 1 && simd::usable();
        let column_major = m.row_stride == 1 && m.col_stride != 1 && simd::usable();
        let fill = |(block, tile): (usize, &mut [u16])| {
            let c0 = block * 16;
            if row_major && c0 + 16 <= m.cols {
                // SAFETY: AVX-512 BW (`usable`); a full block of 16 columns from `c0`, `tile`
                // one block of `kp` rows.
                unsafe { simd::bf16_pairs_16(m, c0, tile) };
            } else if column_major && c0 < m.cols {
                // SAFETY: AVX-512 BW (`usable`); `tile` is one 16-column block of `kp` rows,
                // reads masked to `m`'s size.
                unsafe { simd::bf16_pairs_from_columns(m, c0, kp, tile) };
            } else {
                pairs_by_value(m, c0, tile);
            }
        };
        for_each_chunk(out, 16 * kp, parallel, fill);
    }

    /// 16-column blocks packed together by [`pairs`].
    const GROUP: usize = 4;

    /// An element the packers take: f32 (rounded to bf16) or bf16 (as it is).
    trait Source: Copy {
        fn bits(self) -> u16;
    }

    impl Source for f32 {
        fn bits(self) -> u16 {
            bf16(self)
        }
    }

    impl Source for half::bf16 {
        fn bits(self) -> u16 {
            self.to_bits()
        }
    }

    /// Row `r` of `m` into `row`, zero-padded (all zero past `m`'s rows), one value at a
    /// time: the path of any strides the vector packers do not take.
    fn row_by_value<T: Source>(m: &MatrixRef<'_, T>, r: usize, row: &mut [u16]) {
        let filled = if r < m.rows { m.cols } else { 0 };
        for (c, v) in row[..filled].iter_mut().enumerate() {
            *v = m.data[r * m.row_stride + c * m.col_stride].bits();
        }
        row[filled..].fill(0);
    }

    /// The 16-column block from `c0` of `m` in the pair-interleaved layout (`tile`, zero past
    /// `m`), one value at a time.
    fn pairs_by_value<T: Source>(m: &MatrixRef<'_, T>, c0: usize, tile: &mut [u16]) {
        let width = m.cols.saturating_sub(c0).min(16);
        tile.fill(0);
        for (p, pair) in tile.chunks_mut(32).enumerate() {
            for e in 0..2 {
                let r = 2 * p + e;
                if r >= m.rows {
                    break;
                }
                for c in 0..width {
                    pair[2 * c + e] = m.data[r * m.row_stride + (c0 + c) * m.col_stride].bits();
                }
            }
        }
    }

    fn convert(src: &[f32], dst: &mut [u16]) {
        if simd::usable() {
            // SAFETY: the CPU has AVX-512BW and AVX512-BF16.
            unsafe { simd::convert(src, dst) };
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16(s));
        }
    }

    /// Round to nearest even, as the AVX512-BF16 conversion does.
    pub(super) fn bf16(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    #[cfg(target_arch = "x86_64")]
    mod simd {
        use std::arch::x86_64::*;

        use half::bf16;

        use super::super::super::gemm_views::MatrixRef;

        pub(super) fn usable() -> bool {
            super::super::available()
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn convert(src: &[f32], dst: &mut [u16]) {
            let n = src.len().min(dst.len());
            let mut i = 0;
            while i < n {
                let left = (n - i).min(16);
                let mask: u16 = if left == 16 {
                    u16::MAX
                } else {
                    (1 << left) - 1
                };
                // SAFETY: the masked load and store touch only `left` elements from `i`.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i) as *mut i16, mask, h);
                }
                i += 16;
            }
        }

        /// `blocks` full blocks of 16 columns from `c0` of a row-major `m` into their
        /// pair-interleaved tile columns `[kp/2][16][2]` (`tiles`, one after another).
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn pairs_16(
            m: &MatrixRef<'_>,
            c0: usize,
            blocks: usize,
            tiles: &mut [u16],
        ) {
            let interleave = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            let row = |r: usize, c: usize| {
                if r < m.rows {
                    // SAFETY: the caller guarantees `blocks` full blocks from `c0` in every row.
                    unsafe { _mm512_loadu_ps(m.data.as_ptr().add(r * m.row_stride + c)) }
                } else {
                    _mm512_setzero_ps()
                }
            };
            let tile_len = tiles.len() / blocks;
            for p in 0..tile_len / 32 {
                for b in 0..blocks {
                    let pair = &mut tiles[b * tile_len + 32 * p..][..32];
                    let c = c0 + 16 * b;
                    let both = _mm512_cvtne2ps_pbh(row(2 * p + 1, c), row(2 * p, c));
                    // SAFETY: `pair` is 32 u16 = 64 bytes.
                    unsafe {
                        let v = _mm512_permutexvar_epi16(
                            interleave,
                            std::mem::transmute::<__m512bh, __m512i>(both),
                        );
                        _mm512_storeu_si512(pair.as_mut_ptr() as *mut __m512i, v);
                    }
                }
            }
        }

        /// One full block of 16 columns from `c0` of a row-major bf16 `m` into its
        /// pair-interleaved tile column `[kp/2][16][2]` (`tile`); rows past `m` are zero.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) unsafe fn bf16_pairs_16(m: &MatrixRef<'_, bf16>, c0: usize, tile: &mut [u16]) {
            let interleave = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            let row = |r: usize| {
                if r < m.rows {
                    // SAFETY: the caller guarantees 16 columns from `c0` in every row.
                    unsafe { _mm256_loadu_si256(m.data.as_ptr().add(r * m.row_stride + c0).cast()) }
                } else {
                    _mm256_setzero_si256()
                }
            };
            for (p, pair) in tile.chunks_exact_mut(32).enumerate() {
                let both =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * p)), row(2 * p + 1));
                // SAFETY: `pair` is 32 u16 = 64 bytes.
                unsafe {
                    _mm512_storeu_si512(
                        pair.as_mut_ptr().cast(),
                        _mm512_permutexvar_epi16(interleave, both),
                    )
                };
            }
        }

        /// [`pairs_from_columns`] of a column-major bf16 `m`: 32 rows of a column are already
        /// 16 pairs, one load.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) unsafe fn bf16_pairs_from_columns(
            m: &MatrixRef<'_, bf16>,
            c0: usize,
            kp: usize,
            tile: &mut [u16],
        ) {
            let width = m.cols.saturating_sub(c0).min(16);
            for k0 in (0..kp).step_by(32) {
                let left = m.rows.saturating_sub(k0).min(32);
                let mask: u32 = if left >= 32 {
                    u32::MAX
                } else {
                    (1u32 << left) - 1
                };
                let mut v = [_mm512_setzero_si512(); 16];
                if mask != 0 {
                    for (n, v) in v.iter_mut().enumerate().take(width) {
                        // SAFETY: rows `k0..k0 + left` of column `c0 + n < m.cols` are inside
                        // `m`; masked lanes are not read.
                        *v = unsafe {
                            _mm512_maskz_loadu_epi16(
                                mask,
                                m.data.as_ptr().add(k0 + (c0 + n) * m.col_stride).cast(),
                            )
                        };
                    }
                }
                transpose_16x16(&mut v);
                for (p, v) in v.iter().enumerate() {
                    let pair = &mut tile[(k0 / 2 + p) * 32..][..32];
                    // SAFETY: `pair` is 32 u16 = 64 bytes.
                    unsafe { _mm512_storeu_si512(pair.as_mut_ptr() as *mut __m512i, *v) };
                }
            }
        }

        /// Lanes `0..count` (at most 16).
        fn lanes(count: usize) -> u16 {
            if count >= 16 {
                u16::MAX
            } else {
                (1u16 << count) - 1
            }
        }

        /// Rows `r0..r0 + 16` × columns `k0..k0 + 16` of a column-major `m` (`row_stride`
        /// 1), rounded to bf16 into `strip` (16 rows of `kp`), row `i` at `i · kp + k0`; what
        /// lies outside `m` is zero.
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn rows_from_columns(
            m: &MatrixRef<'_>,
            r0: usize,
            k0: usize,
            kp: usize,
            strip: &mut [u16],
        ) {
            let mask = lanes(m.rows.saturating_sub(r0));
            let mut v = [_mm512_setzero_si512(); 16];
            for (k, v) in v.iter_mut().enumerate() {
                if mask != 0 && k0 + k < m.cols {
                    // SAFETY: row `r0 < m.rows` of column `k0 + k < m.cols` is inside `m`;
                    // the masked lanes beyond `m.rows` are not read.
                    let column = unsafe { m.data.as_ptr().add(r0 + (k0 + k) * m.col_stride) };
                    *v = _mm512_castps_si512(unsafe { _mm512_maskz_loadu_ps(mask, column) });
                }
            }
            transpose_16x16(&mut v);
            for (i, v) in v.iter().enumerate() {
                let h: __m256i =
                    unsafe { std::mem::transmute(_mm512_cvtneps_pbh(_mm512_castsi512_ps(*v))) };
                let row = &mut strip[i * kp + k0..][..16];
                // SAFETY: `row` is 16 u16 = 32 bytes.
                unsafe { _mm256_storeu_si256(row.as_mut_ptr() as *mut __m256i, h) };
            }
        }

        /// The 16-column block from `c0` of a column-major `m` (`row_stride` 1: a column's
        /// rows are adjacent) in the pair-interleaved layout `[kp/2][16][2]` (`tile`); what
        /// lies outside `m` is zero.
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn pairs_from_columns(
            m: &MatrixRef<'_>,
            c0: usize,
            kp: usize,
            tile: &mut [u16],
        ) {
            let width = m.cols.saturating_sub(c0).min(16);
            for k0 in (0..kp).step_by(32) {
                let (low, high) = (
                    lanes(m.rows.saturating_sub(k0)),
                    lanes(m.rows.saturating_sub(k0 + 16)),
                );
                let mut v = [_mm512_setzero_si512(); 16];
                for (n, v) in v.iter_mut().enumerate().take(width) {
                    let load = |mask: u16, k: usize| {
                        if mask == 0 {
                            return _mm512_setzero_ps();
                        }
                        // SAFETY: row `k < m.rows` of column `c0 + n < m.cols` is inside `m`;
                        // masked lanes are not read.
                        unsafe {
                            _mm512_maskz_loadu_ps(
                                mask,
                                m.data.as_ptr().add(k + (c0 + n) * m.col_stride),
                            )
                        }
                    };
                    // One u32 lane per pair of rows: (row 2p, row 2p + 1) of this column.
                    let both = _mm512_cvtne2ps_pbh(load(high, k0 + 16), load(low, k0));
                    *v = unsafe { std::mem::transmute::<__m512bh, __m512i>(both) };
                }
                transpose_16x16(&mut v);
                for (p, v) in v.iter().enumerate() {
                    let pair = &mut tile[(k0 / 2 + p) * 32..][..32];
                    // SAFETY: `pair` is 32 u16 = 64 bytes.
                    unsafe { _mm512_storeu_si512(pair.as_mut_ptr() as *mut __m512i, *v) };
                }
            }
        }

        /// Transposes a 16 × 16 matrix of 32-bit lanes held as 16 rows.
        #[target_feature(enable = "avx512f")]
        fn transpose_16x16(r: &mut [__m512i; 16]) {
            let mut t = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            // u[4g + j]: lane L holds element 4L + j of rows 4g..4g + 4.
            let mut u = [_mm512_setzero_si512(); 16];
            for g in 0..4 {
                let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
                u[4 * g] = _mm512_unpacklo_epi64(a, c);
                u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
                u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
                u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
            }
            for j in 0..4 {
                let v = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
                let w = _mm512_shuffle_i32x4::<0xEE>(u[j], u[4 + j]);
                let x = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
                let y = _mm512_shuffle_i32x4::<0xEE>(u[8 + j], u[12 + j]);
                r[j] = _mm512_shuffle_i32x4::<0x88>(v, x);
                r[4 + j] = _mm512_shuffle_i32x4::<0xDD>(v, x);
                r[8 + j] = _mm512_shuffle_i32x4::<0x88>(w, y);
                r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(w, y);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    mod simd {
        use half::bf16;

        use super::super::super::gemm_views::MatrixRef;
        pub(super) fn usable() -> bool {
            false
        }
        pub(super) unsafe fn bf16_pairs_16(_: &MatrixRef<'_, bf16>, _: usize, _: &mut [u16]) {}
        pub(super) unsafe fn bf16_pairs_from_columns(
            _: &MatrixRef<'_, bf16>,
            _: usize,
            _: usize,
            _: &mut [u16],
        ) {
        }
        pub(super) unsafe fn rows_from_columns(
            _: &MatrixRef<'_>,
            _: usize,
            _: usize,
            _: usize,
            _: &mut [u16],
        ) {
        }
        pub(super) unsafe fn pairs_from_columns(
            _: &MatrixRef<'_>,
            _: usize,
            _: usize,
            _: &mut [u16],
        ) {
        }
        pub(super) unsafe fn convert(_: &[f32], _: &mut [u16]) {}
        pub(super) unsafe fn pairs_16(_: &MatrixRef<'_>, _: usize, _: usize, _: &mut [u16]) {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm_views::{Matrix, MatrixRef};
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn round(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f64()
    }

    /// Every shape class (padding in m, k, n; several column chunks; transposed operands) against
    /// an f64 product of the bf16-rounded inputs.
    #[test]
    fn matches_the_product_of_rounded_inputs() {
        if !available() {
            // Nothing here can multiply on AMX; what must hold is that nothing tries to: a
            // bf16 request leaves the products in f32 (this never changes the setting, so the
            // other tests of this binary are unaffected).
            use super::super::gemm_views::{MatmulPrecision, set_matmul_precision};
            assert_eq!(
                set_matmul_precision(MatmulPrecision::Bf16),
                MatmulPrecision::F32
            );
            eprintln!("no AMX-BF16 on this CPU: bf16 products stay f32 (checked)");
            return;
        }
        for &(m, k, n, transposed, accumulate, parallel) in &[
            (1, 1, 1, false, false, false),
            (33, 70, 17, false, true, true),
            (64, 4100, 45, false, false, true),
            (40, 96, 600, true, true, false),
            (33, 70, 17, true, false, true),
            (18, 45, 40, true, true, false),
            (7, 33, 3000, false, true, true),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let start = values(m * n, 3);
            let mut c = start.clone();
            let (lhs, rhs) = if transposed {
                // Store a as [k][m] and b as [n][k] and view them transposed.
                let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                (at, bt)
            } else {
                (a.clone(), b.clone())
            };
            let (lv, rv) = if transposed {
                (
                    MatrixRef::transposed(&lhs, m, k),
                    MatrixRef::transposed(&rhs, k, n),
                )
            } else {
                (
                    MatrixRef::row_major(&lhs, m, k),
                    MatrixRef::row_major(&rhs, k, n),
                )
            };
            // Even m: both packed per call; odd m: both packed once beforehand.
            if m % 2 == 0 {
                gemm(
                    Matrix::row_major(&mut c, m, n),
                    accumulate,
                    Side::View(lv),
                    Side::View(rv),
                    parallel,
                    Epilogue::activation(Activation::Identity),
                );
            } else {
                let (a, b) = (Packed::lhs(&lv, parallel), Packed::rhs(&rv, parallel));
                gemm(
                    Matrix::row_major(&mut c, m, n),
                    accumulate,
                    Side::Packed(&a),
                    Side::Packed(&b),
                    parallel,
                    Epilogue::activation(Activation::Identity),
                );
            }
            for i in 0..m {
                for j in 0..n {
                    let mut want = if accumulate {
                        start[i * n + j] as f64
                    } else {
                        0.0
                    };
                    let mut scale = want.abs();
                    for q in 0..k {
                        let p = round(a[i * k + q]) * round(b[q * n + j]);
                        want += p;
                        scale += p.abs();
                    }
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * scale + 1e-6,
                        "({m},{k},{n}) [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The store's epilogue (a bias per row, an addend, each activation; written over the
    /// output or added to it) on every row and column end of a block, against the product
    /// stored plain and the scalar [`Epilogue::apply`] after it: the same sums in the same
    /// order, so equal bit for bit, NaN included.
    #[test]
    fn epilogue_in_the_store_matches_a_pass_after_it() {
        if !available() {
            eprintln!("SKIPPED: no AMX-BF16 on this CPU, the store epilogue never runs");
            return;
        }
        let (m, k, n) = (45, 40, 70);
        let a = values(m * k, 4);
        let b = values(k * n, 5);
        let bias: Vec<f32> = values(m, 6).iter().map(|v| 8.0 * v).collect();
        let mut addend: Vec<f32> = values(m * n, 7).iter().map(|v| 16.0 * v).collect();
        addend[3 * n + 5] = f32::NAN;
        let start = values(m * n, 8);
        let (lv, rv) = (
            MatrixRef::row_major(&a, m, k),
            MatrixRef::row_major(&b, k, n),
        );
        for activation in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            for (row_bias, with_addend) in [
                (None, false),
                (Some(&bias[..]), false),
                (Some(&bias[..]), true),
            ] {
                for accumulate in [false, true] {
                    let epilogue = Epilogue {
                        row_bias,
                        addend: with_addend.then_some(&addend[..]),
                        activation,
                    };
                    let mut want = start.clone();
                    let plain = Epilogue::activation(Activation::Identity);
                    gemm(
                        Matrix::row_major(&mut want, m, n),
                        accumulate,
                        Side::View(lv.clone()),
                        Side::View(rv.clone()),
                        true,
                        plain,
                    );
                    epilogue.apply(&mut want, n);
                    let mut got = start.clone();
                    gemm(
                        Matrix::row_major(&mut got, m, n),
                        accumulate,
                        Side::View(lv.clone()),
                        Side::View(rv.clone()),
                        true,
                        epilogue,
                    );
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{activation:?} bias {} addend {with_addend} accumulate {accumulate} [{i}]: {g} vs {w}",
                            row_bias.is_some()
                        );
                    }
                }
            }
        }
    }

    /// Operands stored in bf16 (row-major, transposed, strided) pack exactly as f32 operands
    /// holding the same values, and a bf16 output holds the f32 output rounded to nearest
    /// even: bit for bit.
    #[test]
    fn bf16_operands_and_outputs_match_the_f32_ones() {
        if !available() {
            eprintln!("SKIPPED: no AMX-BF16 on this CPU, bf16 operands never reach the products");
            return;
        }
        let (m, k, n) = (45, 70, 83);
        let rounded = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| round(x) as f32).collect() };
        let a = rounded(values(m * k, 9));
        let b = rounded(values(k * n, 10));
        let to_bf16 = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&x| bf16::from_f32(x)).collect() };
        // b stored as [n][k] too, for the transposed (column-major) views.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let (a16, b16, bt16) = (to_bf16(&a), to_bf16(&b), to_bf16(&bt));
        let identity = Epilogue::activation(Activation::Relu6);
        for transposed in [false, true] {
            let (rv, rv16) = if transposed {
                (
                    MatrixRef::transposed(&bt, k, n),
                    MatrixRef::transposed(&bt16, k, n),
                )
            } else {
                (
                    MatrixRef::row_major(&b, k, n),
                    MatrixRef::row_major(&b16, k, n),
                )
            };
            // With the transposed right operand a transposed (column-major) left one, else a
            // strided one: every other row of a taller matrix.
            let (lv, lv16) = if transposed {
                (
                    MatrixRef::row_major(&a, k, m).t(),
                    MatrixRef::row_major(&a16, k, m).t(),
                )
            } else {
                (
                    MatrixRef::strided_rows(&a, m / 2, k, 2 * k),
                    MatrixRef::strided_rows(&a16, m / 2, k, 2 * k),
                )
            };
            let rows = lv.rows;
            let mut want = vec![0.0f32; rows * n];
            gemm(
                Matrix::row_major(&mut want, rows, n),
                false,
                Side::View(lv.clone()),
                Side::View(rv.clone()),
                true,
                identity,
            );
            let mut got = vec![0.0f32; rows * n];
            let (l16, r16) = (Side::Bf16View(lv16.clone()), Side::Bf16View(rv16.clone()));
            gemm(
                Matrix::row_major(&mut got, rows, n),
                false,
                l16,
                r16,
                true,
                identity,
            );
            assert_eq!(got, want, "bf16 operands, transposed {transposed}");
            let mut got16 = vec![bf16::ZERO; rows * n];
            gemm(
                Matrix::row_major(&mut got16, rows, n),
                false,
                Side::View(lv.clone()),
                Side::View(rv.clone()),
                true,
                identity,
            );
            assert_eq!(
                got16,
                to_bf16(&want),
                "bf16 output, transposed {transposed}"
            );
        }
    }
}
