//! Self-contained inference model folders: `model.safetensors` (the embedder's weights, f32 or
//! f16 — norms stay f32), `model.json` (registry name, input size, pixel statistics, neck,
//! pooling) and, after `export --onnx`, `model.onnx` — so `embed`, `rank`, `eval`, `index` and
//! `serve` need only the folder.
//!
//! A folder is copied to the machines that serve it, so it carries `manifest.json`
//! (`data::folder_manifest`: size and CRC-32 of each file). Loading checks the file it loads
//! against it: a copy cut short or a flipped bit is an error naming the file, never wrong
//! weights served without a word. `model.json` is not checked (it is parsed and validated, and
//! a user may edit it). Folders exported before the manifest have none and load as before.
//!
//! Writing never deletes what it did not create: a folder is replaced only when it is empty or
//! holds an earlier export (its `model.json` and nothing but export files).

use std::path::{Path, PathBuf};

use burn::store::{FloatCastAdapter, HalfPrecisionAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use visual_search_data::file_check::Depth;
use visual_search_data::folder_manifest::{self, MANIFEST_FILE};
use visual_search_data::output_file::{foreign_entries, some_names};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, ModelSpec, lookup};

use crate::error::{InferenceError, Result};

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDirInfo {
    pub format_version: u32,
    /// Registry name of the architecture.
    pub model: String,
    /// Input side the model was trained at (and should be fed).
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub embedding_dim: usize,
    pub neck_dim: Option<usize>,
    pub gem: bool,
    /// Stored precision of the weights: `f32` or `f16`.
    pub dtype: String,
    /// The checkpoint it was exported from.
    pub source: String,
}

impl ModelDirInfo {
    /// The preprocessing the folder's model expects, at `size` (default: its own).
    pub fn preprocessing(&self, size: Option<usize>) -> crate::model::Preprocessing {
        crate::model::Preprocessing {
            size: size.unwrap_or(self.input_size),
            mean: self.mean,
            std: self.std,
        }
    }
}

pub const FORMAT_VERSION: u32 = 1;
pub const INFO_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const ONNX_FILE: &str = "model.onnx";
/// Files an export writes; a folder holding anything else is not ours to replace.
const EXPORT_FILES: [&str; 5] = [
    INFO_FILE,
    WEIGHTS_FILE,
    ONNX_FILE,
    "model.int8.onnx",
    MANIFEST_FILE,
];

/// Refuses to replace `out` unless it is absent, empty, or an earlier export.
pub fn check_replaceable(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(InferenceError::model_dir(
            out,
            "exists and is not a folder; refusing to replace it",
        ));
    }
    // One listing: every entry, then those an export does not write.
    let entries = foreign_entries(out, |_| false)
        .map_err(|e| InferenceError::io(out, e))?
        .unwrap_or_default();
    let foreign: Vec<String> = entries
        .iter()
        .filter(|n| !EXPORT_FILES.contains(&n.as_str()))
        .cloned()
        .collect();
    let earlier_export = out.join(INFO_FILE).is_file();
    if entries.is_empty() || (foreign.is_empty() && earlier_export) {
        return Ok(());
    }
    let holds = match foreign.is_empty() {
        true => format!("export files but no {INFO_FILE}"),
        false => some_names(&foreign),
    };
    Err(InferenceError::model_dir(
        out,
        format!(
            "is not empty and is not an exported model folder (it holds {holds}); refusing to \
             delete it — choose another --out"
        ),
    ))
}

/// Writes a model folder: weights (f16 when `half`), `model.json`, and any `extra` files
/// (e.g. `model.onnx`) produced by `extra(tmp_dir)`. The folder appears at once, complete.
pub fn write_model_dir(
    model: &EmbeddingModel,
    info: &ModelDirInfo,
    out: &Path,
    half: bool,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    check_replaceable(out)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| InferenceError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".export.")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .tempdir_in(parent)
        .map_err(|e| InferenceError::io(parent, e))?;
    let mut store = SafetensorsStore::from_file(tmp.path().join(WEIGHTS_FILE));
    if half {
        store = store.with_to_adapter(HalfPrecisionAdapter::new());
    }
    model
        .save_into(&mut store)
        .map_err(|e| InferenceError::model_dir(out, format!("writing weights: {e}")))?;
    let json = serde_json::to_vec_pretty(info)
        .map_err(|e| InferenceError::model_dir(out, e.to_string()))?;
    let info_path = tmp.path().join(INFO_FILE);
    std::fs::write(&info_path, json).map_err(|e| InferenceError::io(tmp.path(), e))?;
    // burn writes the weights through a private temp file (mode 0600); give them the mode
    // any file gets here (0666 less the umask, as `model.json` just did), so that a service
    // account can read a folder its owner exported.
    let plain = std::fs::metadata(&info_path)
        .map_err(|e| InferenceError::io(&info_path, e))?
        .permissions();
    let weights_path = tmp.path().join(WEIGHTS_FILE);
    std::fs::set_permissions(&weights_path, plain)
        .map_err(|e| InferenceError::io(&weights_path, e))?;
    extra(tmp.path())?;
    folder_manifest::write_manifest(tmp.path())?;
    // Re-checked just before the swap: only an earlier export is ever removed.
    check_replaceable(out)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| InferenceError::io(out, e))?;
    }
    let kept: PathBuf = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| InferenceError::io(out, e))?;
    Ok(())
}

/// What an export writes besides the weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Store the weights as f16.
    pub half: bool,
    /// Also write `model.onnx` (batch norm folded, L2-normalised output).
    pub onnx: bool,
}

/// How the exported model was built: its registry spec and choices.
pub struct ExportedModel<'a> {
    pub model: &'a EmbeddingModel,
    pub spec: &'a ModelSpec,
    /// Input side it is laid out for.
    pub size: usize,
    pub neck_dim: Option<usize>,
    pub gem: bool,
    /// Where it came from (a checkpoint, a weights file).
    pub source: String,
}

/// Writes an embedder as a model folder at `out` (see [`write_model_dir`]), with its ONNX
/// graph when `options.onnx`.
pub fn export_embedder(
    e: &ExportedModel<'_>,
    out: &Path,
    options: ExportOptions,
) -> Result<ModelDirInfo> {
    let info = ModelDirInfo {
        format_version: FORMAT_VERSION,
        model: e.spec.name.clone(),
        input_size: e.size,
        mean: e.spec.mean,
        std: e.spec.std,
        embedding_dim: e.model.dim(),
        neck_dim: e.neck_dim,
        gem: e.gem,
        dtype: if options.half { "f16" } else { "f32" }.to_string(),
        source: e.source.clone(),
    };
    write_model_dir(e.model, &info, out, options.half, |tmp| {
        if options.onnx {
            let proto =
                crate::onnx::export_model(e.model, &e.spec.architecture, e.size, &e.spec.name)?;
            crate::onnx::write_model(&proto, &tmp.join(ONNX_FILE))?;
        }
        Ok(())
    })?;
    Ok(info)
}

/// Checks `dir/name` (a file about to be loaded) against the folder's manifest, reading it
/// whole: the error names the file and what changed.
pub fn verify_model_file(dir: &Path, name: &str) -> Result<()> {
    folder_manifest::verify_files(dir, &[name], Depth::Contents).map_err(|why| {
        InferenceError::model_dir(
            dir,
            format!("damaged model folder: {why}; copy or export it again"),
        )
    })
}

/// Records a file added to or removed from an exported folder (`model.int8.onnx`) in its
/// manifest, when it has one.
pub fn refresh_manifest(dir: &Path) -> Result<()> {
    if dir.join(MANIFEST_FILE).exists() {
        folder_manifest::write_manifest(dir)?;
    }
    Ok(())
}

/// Reads `model.json`.
pub fn read_info(dir: &Path) -> Result<ModelDirInfo> {
    let json_path = dir.join(INFO_FILE);
    let text =
        std::fs::read_to_string(&json_path).map_err(|e| InferenceError::io(&json_path, e))?;
    let info: ModelDirInfo = serde_json::from_str(&text)
        .map_err(|e| InferenceError::model_dir(&json_path, format!("invalid model.json: {e}")))?;
    if info.format_version != FORMAT_VERSION {
        return Err(InferenceError::model_dir(
            &json_path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                info.format_version
            ),
        ));
    }
    if info.input_size == 0 || info.input_size > crate::MAX_INPUT_SIZE {
        return Err(InferenceError::model_dir(
            &json_path,
            format!(
                "input_size {} is outside 1..={}",
                info.input_size,
                crate::MAX_INPUT_SIZE
            ),
        ));
    }
    Ok(info)
}

/// Loads a model folder's burn weights; `image_size` overrides the size it was trained at
/// (ViT position embeddings are resampled).
pub fn load_model_dir(
    dir: &Path,
    image_size: Option<usize>,
    device: &Device,
) -> Result<(EmbeddingModel, ModelDirInfo)> {
    let info = read_info(dir)?;
    let json_path = dir.join(INFO_FILE);
    let spec =
        lookup(&info.model).map_err(|e| InferenceError::model_dir(&json_path, e.to_string()))?;
    let options = BuildOptions {
        image_size: info.input_size,
        gem: info.gem,
        ..spec.default_options()
    };
    let mut model = EmbeddingModel::new(&spec, &options, info.neck_dim, device);
    let weights = dir.join(WEIGHTS_FILE);
    verify_model_file(dir, WEIGHTS_FILE)?;
    let mut store =
        SafetensorsStore::from_file(&weights).with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = model.load_from(&mut store).map_err(|e| {
        InferenceError::model_dir(
            &weights,
            format!("cannot read (damaged or truncated?): {e}"),
        )
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(InferenceError::model_dir(
            &weights,
            format!("weights do not fit {}: {result}", info.model),
        ));
    }
    if let Some(size) = image_size {
        model = model.with_image_size(size);
    }
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::{FORMAT_VERSION, INFO_FILE, ModelDirInfo, check_replaceable, read_info};

    #[test]
    fn a_model_json_key_this_build_does_not_know_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let info = ModelDirInfo {
            format_version: FORMAT_VERSION,
            model: "efficientnet_lite0".into(),
            input_size: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
            embedding_dim: 1280,
            neck_dim: None,
            gem: false,
            dtype: "f32".into(),
            source: "runs/x".into(),
        };
        let mut json = serde_json::to_value(&info).unwrap();
        std::fs::write(dir.path().join(INFO_FILE), json.to_string()).unwrap();
        assert_eq!(read_info(dir.path()).unwrap(), info);
        // A hand edit with a typo: `neckdim` would otherwise load the model without its neck.
        json["neckdim"] = 512.into();
        std::fs::write(dir.path().join(INFO_FILE), json.to_string()).unwrap();
        let err = read_info(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("unknown field `neckdim`"),
            "{err}"
        );
    }

    #[test]
    fn only_absent_empty_or_export_folders_may_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        assert!(check_replaceable(&out).is_ok(), "absent");
        std::fs::create_dir(&out).unwrap();
        assert!(check_replaceable(&out).is_ok(), "empty");
        std::fs::write(out.join("model.json"), "{}").unwrap();
        std::fs::write(out.join("model.onnx"), "x").unwrap();
        assert!(check_replaceable(&out).is_ok(), "an earlier export");
        // A run folder (what `export --checkpoint runs/x --out runs/x` used to wipe).
        std::fs::write(out.join("metrics.csv"), "step\n").unwrap();
        let err = check_replaceable(&out).unwrap_err().to_string();
        assert!(
            err.contains("metrics.csv") && err.contains("refusing"),
            "{err}"
        );
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "x").unwrap();
        assert!(check_replaceable(&file).is_err(), "a file");
    }
}
