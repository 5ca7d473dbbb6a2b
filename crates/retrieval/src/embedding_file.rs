//! Embedding files: an `(n, d)` matrix whose row i belongs to row i of the CSV it was made from.
//!
//! `.npy` (f32 or f16) for NumPy users; `.safetensors` (tensor `embeddings`, f32 or f16, plus
//! `labels` when known) for everything else. Writes are atomic.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use visual_search_data::output_file::{OutputFormat, check_replaceable_output};

use crate::error::RetrievalError;
use crate::npy::{NpyDtype, encode_f32, read_f32, write_atomically};

/// A row-major `rows x dim` matrix of embeddings, with optional labels per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
    pub labels: Option<Vec<i64>>,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Stored precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
}

/// The format of an embedding file, named by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFormat {
    Npy,
    Safetensors,
}

impl EmbeddingFormat {
    /// The format `path`'s extension names, or an error naming the file. Commands call it
    /// before they embed, so a mistyped `--out` is refused before the work, not after.
    pub fn of(path: &Path) -> Result<Self, RetrievalError> {
        match path.extension().and_then(|s| s.to_str()) {
            Some("npy") => Ok(Self::Npy),
            Some("safetensors") => Ok(Self::Safetensors),
            _ => Err(RetrievalError::format(
                path,
                "embedding files must end in .npy or .safetensors",
            )),
        }
    }
}

/// The format `path` names, if an embedding file may be written there: absent, empty, or a
/// file of that format (an earlier output) — never a user's other file under that name.
/// Commands call it before they embed.
pub fn check_output(path: &Path) -> Result<EmbeddingFormat, RetrievalError> {
    let format = EmbeddingFormat::of(path)?;
    check_replaceable_output(
        path,
        match format {
            EmbeddingFormat::Npy => OutputFormat::Npy,
            EmbeddingFormat::Safetensors => OutputFormat::Safetensors,
        },
    )?;
    Ok(format)
}

/// Writes `.npy` or `.safetensors` (by extension), where [`check_output`] allows.
pub fn write_embeddings(
    path: &Path,
    e: &Embeddings,
    dtype: StoredDtype,
) -> Result<(), RetrievalError> {
    let bytes = match check_output(path)? {
        EmbeddingFormat::Npy => encode_f32(
            &e.data,
            e.rows,
            e.dim,
            if dtype == StoredDtype::F16 {
                NpyDtype::F16
            } else {
                NpyDtype::F32
            },
        ),
        EmbeddingFormat::Safetensors => {
            let (values, st_dtype): (Vec<u8>, Dtype) = match dtype {
                StoredDtype::F32 => (
                    e.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Dtype::F32,
                ),
                StoredDtype::F16 => (
                    e.data
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    Dtype::F16,
                ),
            };
            let labels: Option<Vec<u8>> = e
                .labels
                .as_ref()
                .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect());
            let mut tensors = vec![(
                "embeddings".to_string(),
                TensorView::new(st_dtype, vec![e.rows, e.dim], &values)
                    .map_err(|x| RetrievalError::Invalid(x.to_string()))?,
            )];
            if let Some(l) = &labels {
                tensors.push((
                    "labels".to_string(),
                    TensorView::new(Dtype::I64, vec![e.rows], l)
                        .map_err(|x| RetrievalError::Invalid(x.to_string()))?,
                ));
            }
            safetensors::serialize(tensors, None::<HashMap<String, String>>)
                .map_err(|x| RetrievalError::Invalid(x.to_string()))?
        }
    };
    write_atomically(path, &bytes)
}

/// Reads an embedding file written by [`write_embeddings`] (or any 2-D float `.npy`).
pub fn read_embeddings(path: &Path) -> Result<Embeddings, RetrievalError> {
    match EmbeddingFormat::of(path)? {
        EmbeddingFormat::Npy => {
            let (data, rows, dim) = read_f32(path)?;
            Ok(Embeddings {
                rows,
                dim,
                data,
                labels: None,
            })
        }
        EmbeddingFormat::Safetensors => {
            let bytes = std::fs::read(path).map_err(|e| RetrievalError::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                RetrievalError::format(path, format!("invalid safetensors file: {e}"))
            })?;
            let t = st
                .tensor("embeddings")
                .map_err(|_| RetrievalError::format(path, "no `embeddings` tensor"))?;
            let [rows, dim] = t.shape() else {
                return Err(RetrievalError::format(path, "`embeddings` must be 2-D"));
            };
            let data: Vec<f32> = match t.dtype() {
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(RetrievalError::format(
                        path,
                        format!("`embeddings` has dtype {other:?}, expected F32 or F16"),
                    ));
                }
            };
            let labels = match st.tensor("labels") {
                Ok(l) if l.dtype() == Dtype::I64 && l.shape() == [*rows] => Some(
                    l.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                ),
                Ok(_) => {
                    return Err(RetrievalError::format(
                        path,
                        "`labels` must be I64 with one value per row",
                    ));
                }
                Err(_) => None,
            };
            Ok(Embeddings {
                rows: *rows,
                dim: *dim,
                data,
                labels,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_formats() {
        let e = Embeddings {
            rows: 2,
            dim: 3,
            data: vec![0.5, -1.0, 2.0, 0.25, 0.0, 1.0],
            labels: Some(vec![7, 9]),
        };
        let dir = tempfile::tempdir().unwrap();
        for (name, dtype) in [
            ("a.safetensors", StoredDtype::F16),
            ("b.safetensors", StoredDtype::F32),
            ("c.npy", StoredDtype::F32),
        ] {
            let p = dir.path().join(name);
            write_embeddings(&p, &e, dtype).unwrap();
            let back = read_embeddings(&p).unwrap();
            assert_eq!((back.rows, back.dim, &back.data), (2, 3, &e.data));
            assert_eq!(back.labels.is_some(), name.ends_with("safetensors"));
        }
        assert!(write_embeddings(&dir.path().join("x.bin"), &e, StoredDtype::F32).is_err());
    }
}
