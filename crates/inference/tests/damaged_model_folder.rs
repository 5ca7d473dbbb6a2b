//! An exported model folder copied in part or changed afterwards is refused when it is loaded,
//! naming the file (its manifest records each file's size and CRC-32); a folder exported
//! before manifests existed loads as before; adding and removing the int8 model keeps the
//! manifest true; its files get the mode of any new file. The ONNX Runtime half skips (fails
//! under CI) without the library.

mod common;

use std::path::Path;

use common::{export_folder, ort_or_skip, tiny_lite};
use visual_search_data::folder_manifest::MANIFEST_FILE;
use visual_search_inference::int8::{INT8_FILE, quantize_model_dir, remove_int8_model};
use visual_search_inference::model_dir::{ONNX_FILE, WEIGHTS_FILE, export_embedder};
use visual_search_inference::ort_runtime::OrtTarget;
use visual_search_inference::{DeviceChoice, InferenceModel, LoadOptions, ModelSource, Precision};

fn load(dir: &Path, device: DeviceChoice, precision: Precision) -> Result<(), String> {
    InferenceModel::load(
        &ModelSource::Dir(dir.to_path_buf()),
        &LoadOptions {
            device,
            precision,
            quiet: true,
            ..LoadOptions::default()
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Flips one byte in the middle of `path`; returns what undoes it.
fn flip_byte(path: &Path) -> impl FnOnce() + use<> {
    let original = std::fs::read(path).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
    let path = path.to_path_buf();
    move || std::fs::write(path, original).unwrap()
}

/// Every file of an export has the mode a plain new file gets (burn wrote the weights 0600,
/// unreadable to anyone but the exporting user).
#[test]
fn exported_files_have_the_mode_of_plain_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let out = dir.path().join("model");
    export_folder("tiny_efficientnet_lite", &tiny_lite(), 32, &out);
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), mode(&plain), "{}", path.display());
    }
}

#[test]
fn changed_or_cut_weights_are_named_when_the_folder_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    export_folder("tiny_efficientnet_lite", &tiny_lite(), 32, &out);
    let flex = || load(&out, DeviceChoice::Burn("flex".into()), Precision::F32);
    flex().unwrap();

    let undo = flip_byte(&out.join(WEIGHTS_FILE));
    let err = flex().unwrap_err();
    assert!(
        err.contains("damaged model folder: model.safetensors has changed since it was written"),
        "{err}"
    );
    undo();
    let weights = std::fs::read(out.join(WEIGHTS_FILE)).unwrap();
    std::fs::write(out.join(WEIGHTS_FILE), &weights[..weights.len() - 100]).unwrap();
    let err = flex().unwrap_err();
    assert!(err.contains("model.safetensors has"), "{err}");
    assert!(err.contains("bytes"), "{err}");
    std::fs::write(out.join(WEIGHTS_FILE), &weights).unwrap();

    // model.json is the user's to edit; only the files loaded are checked.
    let json = std::fs::read_to_string(out.join("model.json")).unwrap();
    std::fs::write(
        out.join("model.json"),
        json.replace("\"test\"", "\"edited\""),
    )
    .unwrap();
    flex().unwrap();

    // An earlier export, manifest and all, is replaced by a new one.
    let model = tiny_lite();
    let spec = visual_search_model::registry::lookup("tiny_efficientnet_lite").unwrap();
    let exported = visual_search_inference::model_dir::ExportedModel {
        model: &model,
        spec: &spec,
        size: 32,
        neck_dim: None,
        gem: false,
        source: "again".into(),
    };
    export_embedder(&exported, &out, Default::default()).unwrap();
    assert!(!out.join(ONNX_FILE).exists());

    // A folder from before manifests loads as it is.
    std::fs::remove_file(out.join(MANIFEST_FILE)).unwrap();
    let _ = flip_byte(&out.join(WEIGHTS_FILE));
    flex().unwrap();
}

#[test]
fn onnx_models_are_checked_and_the_int8_model_joins_and_leaves_the_manifest() {
    if !ort_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    export_folder("tiny_efficientnet_lite", &tiny_lite(), 32, &out);
    let ort = |precision| load(&out, DeviceChoice::Ort(OrtTarget::Cpu), precision);
    ort(Precision::F32).unwrap();
    let undo = flip_byte(&out.join(ONNX_FILE));
    let err = ort(Precision::F32).unwrap_err();
    assert!(err.contains("model.onnx has changed"), "{err}");
    let err = quantize_model_dir(&out, &[0.0; 2 * 3 * 32 * 32], 2, -1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.onnx has changed"), "{err}");
    undo();

    let n = 8;
    let pixels: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    assert!(quantize_model_dir(&out, &pixels, n, -1.0).unwrap().written);
    let manifest = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    assert!(manifest.contains(INT8_FILE), "{manifest}");
    ort(Precision::Int8).unwrap();
    let undo = flip_byte(&out.join(INT8_FILE));
    let err = ort(Precision::Int8).unwrap_err();
    assert!(err.contains("model.int8.onnx has changed"), "{err}");
    undo();

    remove_int8_model(&out).unwrap();
    let manifest = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    assert!(!manifest.contains(INT8_FILE), "{manifest}");
    assert_eq!(
        visual_search_data::folder_manifest::verify(
            &out,
            visual_search_data::file_check::Depth::Contents
        ),
        Ok(())
    );
}
