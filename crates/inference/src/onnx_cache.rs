//! ONNX exports made on the fly for `--device ort`: a registry model with its weights, or a
//! model folder at a size other than its own, is exported once into
//! `~/.cache/visual-search/onnx/<key>/`, keyed by a SHA-256 of the weights' bytes, the model
//! name and the input size — so changed weights never reuse a stale export. `export.json`
//! records the export's size and CRC-32: a `model.onnx` damaged since (cut short, changed) is
//! exported again instead of failing every `--device ort` run until the folder is found and
//! deleted by hand. (Exports cached before the record existed are taken as they are.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use visual_search_data::file_check::{Depth, FileCheck};
use visual_search_model::registry::{ModelSpec, lookup};

use crate::error::{InferenceError, Result};
use crate::fingerprint::hash_source;
use crate::model::{ModelSource, Preprocessing, load_burn};
use crate::onnx::{export_model, write_model};

/// What the cache remembers next to each `model.onnx`.
#[derive(Debug, Serialize, Deserialize)]
struct CachedExport {
    model: String,
    preprocessing: Preprocessing,
    dim: usize,
    /// `model.onnx` as written.
    #[serde(default)]
    onnx: Option<FileCheck>,
}

/// The cache root (`$XDG_CACHE_HOME` or `~/.cache`, then `visual-search/onnx`).
pub fn cache_root() -> Result<PathBuf> {
    crate::cache_dir()
        .map(|c| c.join("onnx"))
        .ok_or_else(|| InferenceError::Invalid("no HOME to keep the ONNX export cache in".into()))
}

/// The exporter's graph layout, part of the cache key: raised when the graphs it writes change
/// (2: ViT's blocks on 2-D token rows; 3: ConvNeXt's layer scale folded into its MLP), so
/// that exports cached by an older binary are made again rather than kept.
const GRAPH_LAYOUT: u32 = 3;

fn cache_key(source: &ModelSource, size: Option<usize>) -> Result<String> {
    // The size the export is laid out for, whether given or the model's own.
    let size = match (size, source) {
        (Some(s), _) => s,
        (None, ModelSource::Registry { name, .. }) => lookup(name)?.input_size,
        (None, ModelSource::Dir(dir)) => crate::model_dir::read_info(dir)?.input_size,
    };
    let mut h = Sha256::new();
    h.update(format!(
        "format {GRAPH_LAYOUT}; opset {}; size {size};",
        crate::onnx::OPSET
    ));
    hash_source(&mut h, source)?;
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The path of an up-to-date ONNX export of `source` at `size`, exporting it first if needed;
/// also its spec, preprocessing and width.
pub fn cached_onnx_export(
    source: &ModelSource,
    size: Option<usize>,
    quiet: bool,
) -> Result<(PathBuf, ModelSpec, Preprocessing, usize)> {
    cached_onnx_export_in(&cache_root()?, source, size, quiet)
}

/// [`cached_onnx_export`] with the cache in `root`.
fn cached_onnx_export_in(
    root: &Path,
    source: &ModelSource,
    size: Option<usize>,
    quiet: bool,
) -> Result<(PathBuf, ModelSpec, Preprocessing, usize)> {
    let dir = root.join(cache_key(source, size)?);
    let onnx = dir.join("model.onnx");
    let info_path = dir.join("export.json");
    if let Ok(text) = std::fs::read_to_string(&info_path)
        && let Ok(info) = serde_json::from_str::<CachedExport>(&text)
        && onnx.exists()
    {
        let intact = info.onnx.map_or(Ok(()), |check| {
            check.compare(&onnx, "model.onnx", Depth::Contents)
        });
        match intact {
            Ok(()) => return Ok((onnx, lookup(&info.model)?, info.preprocessing, info.dim)),
            Err(why) if !quiet => eprintln!(
                "the cached export in {} is damaged ({why}); exporting again",
                dir.display()
            ),
            Err(_) => {}
        }
    }
    let device = crate::cpu_device()?;
    let (model, spec, preprocessing) = load_burn(source, size, &device, quiet)?;
    if !quiet {
        eprintln!(
            "exporting {} at {} px to ONNX for ONNX Runtime (once; cached in {})",
            spec.name,
            preprocessing.size,
            dir.display()
        );
    }
    let proto = export_model(&model, &spec.architecture, preprocessing.size, &spec.name)?;
    write_model(&proto, &onnx)?;
    let info = CachedExport {
        model: spec.name.clone(),
        preprocessing,
        dim: model.dim(),
        onnx: Some(FileCheck::of(&onnx).map_err(|e| InferenceError::io(&onnx, e))?),
    };
    let json =
        serde_json::to_vec_pretty(&info).map_err(|e| InferenceError::Export(e.to_string()))?;
    visual_search_data::atomic_write::write_atomically(&info_path, &json)?;
    Ok((onnx, spec, preprocessing, info.dim))
}

#[cfg(test)]
mod tests {
    use super::cached_onnx_export_in;
    use crate::model::ModelSource;

    #[test]
    fn a_damaged_cached_export_is_exported_again() {
        let root = tempfile::tempdir().unwrap();
        let source = ModelSource::Registry {
            name: "tiny_resnet".into(),
            weights: None,
        };
        let (onnx, spec, ..) = cached_onnx_export_in(root.path(), &source, Some(32), true).unwrap();
        assert_eq!(spec.name, "tiny_resnet");
        let written = std::fs::read(&onnx).unwrap();
        let info = std::fs::read_to_string(onnx.with_file_name("export.json")).unwrap();
        assert!(info.contains("crc32"), "{info}");

        // Cut short: exported again.
        std::fs::write(&onnx, &written[..written.len() / 2]).unwrap();
        let (again, ..) = cached_onnx_export_in(root.path(), &source, Some(32), true).unwrap();
        assert_eq!(again, onnx);
        assert_eq!(std::fs::read(&onnx).unwrap().len(), written.len());

        // Same size, one byte changed: exported again.
        let mut changed = std::fs::read(&onnx).unwrap();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        std::fs::write(&onnx, &changed).unwrap();
        cached_onnx_export_in(root.path(), &source, Some(32), true).unwrap();
        let now = std::fs::read(&onnx).unwrap();
        assert_ne!(now, changed);
        assert_eq!(now.len(), changed.len());
    }
}
