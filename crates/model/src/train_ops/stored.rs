//! Activations as our convolution kernels keep them between layers: f32, or bf16 under mixed
//! precision.
//!
//! With bf16 products (`optim.precision: bf16` on flex, a CPU with AMX) a Lite0 train step
//! is bound by memory, not by its products: `perf` puts most of it in passes that stream the
//! activations and their gradients (the depthwise layers' copies into channel blocks, the
//! activation masks, the AMX packing and stores). PyTorch's autocast keeps a convolution's
//! output in bf16 for the same reason. Here a caller asks for it per convolution
//! ([`Storage`]): an inverted-residual block keeps its expanded activations — the two largest
//! tensors of each block — in bf16, and their gradients too (a bf16 tensor's gradient is
//! bf16, as in autocast). Every kernel that reads them widens bf16 to f32 as it loads
//! (exact), every one that writes them rounds to nearest even as it stores; sums, biases,
//! weights and their gradients stay f32. On Lite0 this took the bf16 train step from 1.25x to
//! 1.6x our f32 step, and `--dtype bf16` inference (the same forward pass) past ONNX Runtime
//! (BENCHMARKS.md).

use half::bf16;

/// The element type a convolution's output is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// bf16 where the products are bf16 (mixed precision) and our kernels run both ways; f32
    /// otherwise.
    Bf16,
}

/// A read-only run of stored values.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stored<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Stored<'a> {
    pub(super) fn len(&self) -> usize {
        match self {
            Stored::F32(v) => v.len(),
            Stored::Bf16(v) => v.len(),
        }
    }

    /// Value `i`, as f32.
    #[inline(always)]
    pub(super) fn get(&self, i: usize) -> f32 {
        match self {
            Stored::F32(v) => v[i],
            Stored::Bf16(v) => v[i].to_f32(),
        }
    }

    /// Values `start..start + len`.
    pub(super) fn slice(&self, start: usize, len: usize) -> Stored<'a> {
        match *self {
            Stored::F32(v) => Stored::F32(&v[start..][..len]),
            Stored::Bf16(v) => Stored::Bf16(&v[start..][..len]),
        }
    }

    /// Every value as f32, in a new buffer: for a path that reads only f32 (never one our
    /// models take with bf16 values).
    pub(super) fn widened(self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The values as f32: as they are, or [`Stored::widened`] into `buffer`.
    pub(super) fn f32_values<'b>(self, buffer: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Stored::F32(v) => v,
            Stored::Bf16(_) => {
                *buffer = self.widened();
                buffer
            }
        }
    }
}

/// A writable run of stored values (a gradient rewritten in place).
#[derive(Debug)]
pub(super) enum StoredMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
}

impl StoredMut<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            StoredMut::F32(v) => v.len(),
            StoredMut::Bf16(v) => v.len(),
        }
    }
}

/// Owned stored values: a kernel's output in the [`Storage`] asked for.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StoredVec {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl StoredVec {
    /// The values as f32: an output asked for in f32 as it is, a bf16 one widened.
    pub(super) fn into_f32(self) -> Vec<f32> {
        match self {
            StoredVec::F32(v) => v,
            StoredVec::Bf16(v) => v.into_iter().map(bf16::to_f32).collect(),
        }
    }
}

/// `values` rounded to bf16 and widened back (what storing them in bf16 keeps).
#[cfg(test)]
pub(super) fn rounded(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// `values` rounded to bf16.
#[cfg(test)]
pub(super) fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Whether this CPU converts f32 to bf16 in vector registers (AVX512-BF16, with the BW and VL
/// masked stores the kernels use); without it the bf16 stores round one value at a time.
pub(super) fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An element type values are stored in, as the vector kernels load and store it.
pub(super) trait Element: Copy + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;

    /// The values as f32, when they are.
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;

    /// The lanes of `mask` from `ptr` as f32 (the others zero and not read).
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW; the masked lanes are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(ptr: *const Self, mask: u16) -> std::arch::x86_64::__m512;

    /// The lanes of `mask` of `v` to `ptr`, as this type (bf16: rounded to nearest even).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW, VL and BF16; the masked lanes are writable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store16(ptr: *mut Self, mask: u16, v: std::arch::x86_64::__m512);
}

impl Element for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, ptr) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store16(ptr: *mut Self, mask: u16, v: std::arch::x86_64::__m512) {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_mask_storeu_ps(ptr, mask, v) }
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; bf16 is the upper half of an f32.
        unsafe {
            let halves = _mm256_maskz_loadu_epi16(mask, ptr.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store16(ptr: *mut Self, mask: u16, v: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe {
            let rounded: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(ptr.cast(), mask, rounded)
        }
    }
}
