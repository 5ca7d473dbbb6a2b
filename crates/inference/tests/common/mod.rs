//! What the inference tests share: the model crate's fixtures, ONNX Runtime or a SKIPPED (a
//! failure under CI), and EfficientNet-Lite0 with its ImageNet weights on grocery photos.

#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use visual_search_data::Sample;
use visual_search_data::transform::EvalTransform;
use visual_search_inference::model_dir::{
    FORMAT_VERSION, ModelDirInfo, ONNX_FILE, write_model_dir,
};
use visual_search_inference::onnx::{export_model, write_model};
use visual_search_inference::ort_runtime;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::lookup;

/// A file of the model crate's PyTorch fixtures.
pub fn model_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

/// Whether ONNX Runtime's library is there (else SKIPPED, or a failure under CI).
pub fn ort_or_skip() -> bool {
    if ort_runtime::available() {
        return true;
    }
    visual_search_data::datasets::missing_test_dependency(
        "ONNX Runtime's library not found (tools/install_onnxruntime.sh)",
    );
    false
}

/// EfficientNet-Lite0's ImageNet weights file and the grocery dataset root (else SKIPPED, or a
/// failure under CI).
pub fn lite0_weights_and_grocery() -> Option<(PathBuf, PathBuf)> {
    use visual_search_model::pretrained::efficientnet_lite0_weights;
    let (Some(weights), Some(grocery)) = (
        efficientnet_lite0_weights(),
        visual_search_data::datasets::locate_grocery(),
    ) else {
        visual_search_data::datasets::missing_test_dependency(
            "EfficientNet-Lite0 weights or grocery photos not found",
        );
        return None;
    };
    Some((weights, grocery))
}

/// `n` grocery gallery photos spread evenly over the gallery list.
pub fn gallery_spread(grocery: &Path, n: usize) -> Vec<Sample> {
    let rows = visual_search_data::formats::dev_set::parse_gallery(&grocery.join("gallery.csv"))
        .unwrap()
        .into_strict()
        .unwrap();
    let all = visual_search_data::formats::dev_set::gallery_samples(&rows, grocery);
    (0..n).map(|i| all[i * all.len() / n].clone()).collect()
}

/// EfficientNet-Lite0 with its ImageNet weights on flex, and the grocery dataset root.
pub fn lite0_and_grocery() -> Option<(EmbeddingModel, PathBuf)> {
    let (weights, grocery) = lite0_weights_and_grocery()?;
    let spec = lookup("efficientnet_lite0").unwrap();
    let options = spec.default_options();
    let model = EmbeddingModel::new(&spec, &options, None, &Device::flex())
        .load_pretrained_backbone(&spec, &options, &weights)
        .unwrap();
    Some((model, grocery))
}

/// `samples` prepared for Lite0 (224 px, its normalisation) into one batch buffer.
pub fn lite0_pixels(samples: &[Sample]) -> Vec<f32> {
    let spec = lookup("efficientnet_lite0").unwrap();
    let transform = EvalTransform::new(
        224,
        visual_search_data::image::Normalization {
            mean: spec.mean,
            std: spec.std,
        },
    );
    let (pixels, failed) = transform.load_all(samples);
    if let Some((i, e)) = failed.first() {
        panic!("sample {i}: {e}");
    }
    pixels
}

/// An exported folder (with model.onnx) of `model`.
pub fn export_folder(name: &str, model: &EmbeddingModel, size: usize, out: &Path) {
    let spec = lookup(name).unwrap();
    let info = ModelDirInfo {
        format_version: FORMAT_VERSION,
        model: name.into(),
        input_size: size,
        mean: spec.mean,
        std: spec.std,
        embedding_dim: model.dim(),
        neck_dim: None,
        gem: false,
        dtype: "f32".into(),
        source: "test".into(),
    };
    write_model_dir(model, &info, out, false, |tmp| {
        let proto = export_model(model, &spec.architecture, size, name)?;
        write_model(&proto, &tmp.join(ONNX_FILE))
    })
    .unwrap();
}

/// `tiny_efficientnet_lite` with the PyTorch fixture's weights, on flex (exported at 32 px).
pub fn tiny_lite() -> EmbeddingModel {
    let spec = lookup("tiny_efficientnet_lite").unwrap();
    let options = spec.default_options();
    EmbeddingModel::new(&spec, &options, None, &Device::flex())
        .load_pretrained_backbone(
            &spec,
            &options,
            &model_fixture("efficientnet_lite_tiny.safetensors"),
        )
        .unwrap()
}
