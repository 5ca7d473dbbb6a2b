//! A uniform, lazy view of the tensors in a weight file.
//!
//! Formats are told apart by their bytes, not their extension: safetensors (an 8-byte header
//! length, then JSON), PyTorch ≥ 1.6 zip archives, and the legacy (pre-1.6) pickle stream, read
//! with burn's `pytorch_reader`, which also gathers strided (non-contiguous) storages. Nothing is
//! read until a tensor's data is asked for, so a 10 GB CLIP checkpoint can be inspected or
//! partly loaded cheaply. Data is returned as f32 whatever the stored float type.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::store::pytorch_reader::{self, PytorchReader};
use safetensors::{Dtype, SafeTensors};

use super::WeightError;

enum Source {
    Safetensors {
        map: Arc<memmap2::Mmap>,
        start: usize,
        end: usize,
        dtype: Dtype,
    },
    Pytorch(pytorch_reader::Tensor),
}

/// One tensor of a file: name, shape, stored dtype; data on demand.
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    source: Source,
}

/// The tensors of one file, by name.
pub struct TensorFile {
    pub path: PathBuf,
    /// `safetensors`, `pytorch-zip` or `pytorch-legacy`.
    pub format: &'static str,
    pub entries: BTreeMap<String, TensorEntry>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Reads the data as f32 (f16, bf16, f64 and integer types are converted).
    pub fn read_f32(&self, path: &Path) -> Result<Vec<f32>, WeightError> {
        let err = |message: String| WeightError::Tensor {
            path: path.to_path_buf(),
            name: self.name.clone(),
            message,
        };
        match &self.source {
            Source::Safetensors {
                map,
                start,
                end,
                dtype,
            } => {
                let bytes = map
                    .get(*start..*end)
                    .ok_or_else(|| err("data lies past the end of the file".into()))?;
                let dtype = format!("{dtype:?}");
                convert(bytes, &dtype, self.numel()).map_err(err)
            }
            Source::Pytorch(t) => {
                let bytes = t.read().map_err(|e| err(e.to_string()))?;
                convert(&bytes, &self.dtype, self.numel()).map_err(err)
            }
        }
    }
}

/// Little-endian bytes of `dtype` → f32.
fn convert(bytes: &[u8], dtype: &str, numel: usize) -> Result<Vec<f32>, String> {
    let size = match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "Bool" => 1,
        other => return Err(format!("unsupported dtype {other}")),
    };
    if bytes.len() != numel * size {
        return Err(format!(
            "holds {} bytes, expected {} for {numel} x {dtype}",
            bytes.len(),
            numel * size
        ));
    }
    let chunks = bytes.chunks_exact(size);
    Ok(match dtype {
        "F32" => chunks
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F64" => chunks
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        "F16" => chunks
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => chunks
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "I64" => chunks
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        "U64" => chunks
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        "I32" => chunks
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        "U32" => chunks
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        "I16" => chunks
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        "U16" => chunks
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        "I8" => chunks.map(|c| c[0] as i8 as f32).collect(),
        _ => chunks.map(|c| c[0] as f32).collect(),
    })
}

impl TensorFile {
    /// Opens a safetensors or PyTorch file.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let read_err = |message: String| WeightError::Read {
            path: path.to_path_buf(),
            message,
        };
        let mut head = [0u8; 16];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| read_err(e.to_string()))?;
        let head = &head[..n];
        if looks_like_safetensors(head) {
            Self::open_safetensors(path)
        } else if head.starts_with(b"PK")
            || head.first() == Some(&0x80)
            || head.first() == Some(&b'\x1f')
        {
            Self::open_pytorch(path)
        } else {
            Err(read_err(
                "not a safetensors or PyTorch (.pth/.pt) file".to_string(),
            ))
        }
    }

    fn open_safetensors(path: &Path) -> Result<Self, WeightError> {
        let read_err = |message: String| WeightError::Read {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|e| read_err(e.to_string()))?;
        // SAFETY: the file is only read; a concurrent writer could change the bytes under us,
        // which at worst yields wrong values or a failed parse, never unsoundness in our use
        // (every slice below is bounds-checked against the mapped length).
        let map =
            Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| read_err(e.to_string()))?);
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| read_err(format!("invalid safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let (start, end) = (
                data_start + info.data_offsets.0,
                data_start + info.data_offsets.1,
            );
            if end > map.len() {
                return Err(read_err(format!(
                    "tensor `{name}` lies past the end of the file (truncated?)"
                )));
            }
            entries.insert(
                name.clone(),
                TensorEntry {
                    name: name.clone(),
                    shape: info.shape.clone(),
                    dtype: format!("{:?}", info.dtype),
                    source: Source::Safetensors {
                        map: Arc::clone(&map),
                        start,
                        end,
                        dtype: info.dtype,
                    },
                },
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            format: "safetensors",
            entries,
        })
    }

    fn open_pytorch(path: &Path) -> Result<Self, WeightError> {
        let reader = PytorchReader::new(path).map_err(|e| WeightError::Read {
            path: path.to_path_buf(),
            message: format!("cannot read PyTorch checkpoint: {e}"),
        })?;
        let format = if reader.metadata().is_legacy_format() {
            "pytorch-legacy"
        } else {
            "pytorch-zip"
        };
        let entries = reader
            .into_tensors()
            .into_iter()
            .map(|(name, t)| {
                let entry = TensorEntry {
                    name: name.clone(),
                    shape: t.shape().to_vec(),
                    dtype: format!("{:?}", t.dtype()).to_uppercase(),
                    source: Source::Pytorch(t),
                };
                (name, entry)
            })
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            format,
            entries,
        })
    }

    /// Reads a tensor by name as f32.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let entry = self.entries.get(name).ok_or_else(|| WeightError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            message: "not in the file".to_string(),
        })?;
        entry.read_f32(&self.path)
    }
}

fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) < (1 << 32)
}

/// Removes wrapper prefixes that training code adds around a model's own names: a checkpoint
/// dict (`state_dict.`, `model.`, `model_state_dict.`), DataParallel's `module.`, and an OpenCLIP
/// model's vision tower `visual.` (the text tower is dropped). Applied repeatedly while every
/// name shares the prefix.
pub fn strip_common_prefixes(names: impl IntoIterator<Item = String>) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = names.into_iter().map(|n| (n.clone(), n)).collect();
    loop {
        let stripped = [
            "state_dict.",
            "model_state_dict.",
            "model.",
            "module.",
            "visual.",
        ]
        .iter()
        .find_map(|prefix| {
            let with = map.values().filter(|v| v.starts_with(prefix)).count();
            let all = with == map.len();
            let visual_split = *prefix == "visual." && with > 0;
            (!map.is_empty() && (all || visual_split)).then_some(*prefix)
        });
        let Some(prefix) = stripped else { break };
        map = map
            .into_iter()
            .filter_map(|(orig, v)| v.strip_prefix(prefix).map(|s| (orig, s.to_string())))
            .collect();
    }
    map.into_iter().map(|(orig, short)| (short, orig)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_wrappers_and_keeps_the_vision_tower() {
        let names = [
            "state_dict.module.visual.conv1.weight",
            "state_dict.module.visual.proj",
            "state_dict.module.transformer.resblocks.0.ln_1.weight",
            "state_dict.module.logit_scale",
        ]
        .map(String::from);
        let map = strip_common_prefixes(names);
        assert_eq!(map.len(), 2);
        assert_eq!(map["conv1.weight"], "state_dict.module.visual.conv1.weight");
        assert_eq!(map["proj"], "state_dict.module.visual.proj");
        let plain = strip_common_prefixes(["conv.weight".to_string(), "fc.bias".to_string()]);
        assert_eq!(plain["conv.weight"], "conv.weight");
    }
}
