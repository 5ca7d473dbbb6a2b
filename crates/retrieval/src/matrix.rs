//! Borrowed views of row-major embedding matrices in f32 or f16 storage.
//!
//! f16 halves the memory of a large gallery (1M x 512 is 1 GiB instead of 2); the search
//! converts one block of rows at a time to f32 for the matrix product, so the full-precision
//! copy never exists.

use half::f16;

/// Row-major storage of an `rows x dim` matrix.
#[derive(Debug, Clone, Copy)]
pub enum Storage<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// A row-major `rows x dim` embedding matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    pub rows: usize,
    pub dim: usize,
    pub storage: Storage<'a>,
}

impl<'a> MatrixView<'a> {
    pub fn f32(data: &'a [f32], rows: usize, dim: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * dim,
            "matrix data does not match its shape"
        );
        MatrixView {
            rows,
            dim,
            storage: Storage::F32(data),
        }
    }

    pub fn f16(data: &'a [f16], rows: usize, dim: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * dim,
            "matrix data does not match its shape"
        );
        MatrixView {
            rows,
            dim,
            storage: Storage::F16(data),
        }
    }

    /// The listed rows as f32, copied into `scratch` in the order given.
    pub fn gather_f32<'s>(&self, rows: &[u32], scratch: &'s mut Vec<f32>) -> &'s [f32] {
        use half::slice::HalfFloatSliceExt;
        let dim = self.dim;
        scratch.resize(rows.len() * dim, 0.0);
        for (out, &r) in scratch.chunks_exact_mut(dim.max(1)).zip(rows) {
            let at = r as usize * dim;
            match self.storage {
                Storage::F32(d) => out.copy_from_slice(&d[at..at + dim]),
                Storage::F16(d) => d[at..at + dim].convert_to_f32_slice(out),
            }
        }
        scratch
    }

    /// Rows `start..end` as f32: borrowed when stored as f32, converted into `scratch` otherwise.
    pub fn rows_f32<'s>(
        &'s self,
        start: usize,
        end: usize,
        scratch: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        match self.storage {
            Storage::F32(d) => &d[start * self.dim..end * self.dim],
            Storage::F16(d) => {
                // The slice conversion uses F16C/NEON when the CPU has it (checked at run
                // time); element by element it was 10x slower and dominated a search.
                use half::slice::HalfFloatSliceExt;
                let src = &d[start * self.dim..end * self.dim];
                scratch.resize(src.len(), 0.0);
                src.convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}
