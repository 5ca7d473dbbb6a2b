//! NumPy `.npy` files (format 1.0) for 2-D arrays: f32/f16/f64 in, f32/f16/i64 out.
//!
//! Written here rather than taken from a crate because only C-order 2-D arrays of four dtypes
//! are needed and the format is a 10-byte preamble plus a Python-literal header; this keeps the
//! reader strict (shape and size are checked against the file) with no extra dependency.

use std::path::Path;

use crate::error::RetrievalError;

/// Element types this module writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F16,
    I64,
}

impl NpyDtype {
    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F16 => "<f2",
            NpyDtype::I64 => "<i8",
        }
    }
}

/// The 1.0 header for a C-order `rows x cols` array, padded to a multiple of 64 bytes.
fn header(dtype: NpyDtype, rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}",
        dtype.descr()
    );
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((dict.len() + padding + 1) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

/// Encodes a `rows x cols` array of f32 values as `dtype` (`I64` values are rounded).
pub fn encode_f32(values: &[f32], rows: usize, cols: usize, dtype: NpyDtype) -> Vec<u8> {
    assert_eq!(
        values.len(),
        rows * cols,
        "array data does not match its shape"
    );
    let mut out = header(dtype, rows, cols);
    match dtype {
        NpyDtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        NpyDtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        NpyDtype::I64 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(v.round() as i64).to_le_bytes())),
    }
    out
}

/// Encodes a `rows x cols` array of integers as i64.
pub fn encode_i64(values: &[i64], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(
        values.len(),
        rows * cols,
        "array data does not match its shape"
    );
    let mut out = header(NpyDtype::I64, rows, cols);
    values
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// Writes bytes to `path` atomically: the data crate's
/// [`write_atomically`](visual_search_data::atomic_write::write_atomically) (temp file
/// `.<file name>.XXXXXX` in the same folder, then rename) with this crate's error.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RetrievalError> {
    Ok(visual_search_data::atomic_write::write_atomically(
        path, bytes,
    )?)
}

/// Reads a 2-D (or 1-D, as one row) float `.npy` as f32: `(values, rows, cols)`.
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, usize, usize), RetrievalError> {
    let bytes = std::fs::read(path).map_err(|e| RetrievalError::io(path, e))?;
    let bad = |m: &str| RetrievalError::format(path, format!("not a readable .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran-order arrays are not supported"));
    }
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .ok_or_else(|| bad("no descr"))?;
    let shape: Vec<usize> = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        [c] => (1, *c),
        _ => return Err(bad("expected a 1-D or 2-D array")),
    };
    let data = &bytes[start + header_len..];
    let size = match descr {
        "<f4" => 4,
        "<f2" => 2,
        "<f8" => 8,
        other => {
            return Err(bad(&format!(
                "unsupported dtype {other} (expected <f4, <f2 or <f8)"
            )));
        }
    };
    if cols == 0 {
        return Err(bad(&format!("shape ({rows}, 0): rows have no values")));
    }
    let needed = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| bad(&format!("shape ({rows}, {cols}) is too large")))?;
    if data.len() != needed {
        return Err(bad(&format!(
            "holds {} data bytes, shape ({rows}, {cols}) needs {needed}",
            data.len()
        )));
    }
    let values = match size {
        4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        2 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
    };
    Ok((values, rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_round_trips() {
        let values: Vec<f32> = (0..6).map(|v| v as f32 * 0.5).collect();
        for dtype in [NpyDtype::F32, NpyDtype::F16] {
            let bytes = encode_f32(&values, 2, 3, dtype);
            let header_end = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!(header_end % 64, 0);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("a.npy");
            write_atomically(&p, &bytes).unwrap();
            assert_eq!(read_f32(&p).unwrap(), (values.clone(), 2, 3));
        }
        let truncated = &encode_f32(&values, 2, 3, NpyDtype::F32)[..70];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        std::fs::write(&p, truncated).unwrap();
        assert!(read_f32(&p).unwrap_err().to_string().contains("t.npy"));
    }

    fn npy_with_shape(shape: &str, data_bytes: usize) -> Vec<u8> {
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(vec![0u8; data_bytes]);
        out
    }

    #[test]
    fn crafted_shapes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        for (shape, bytes) in [("(3, 4611686018427387904)", 24), ("(5, 0)", 0), ("(0,)", 0)] {
            std::fs::write(&p, npy_with_shape(shape, bytes)).unwrap();
            let err = read_f32(&p).unwrap_err().to_string();
            assert!(err.contains("shape"), "{shape}: {err}");
        }
    }
}
