//! Folding batch norm into convolutions changes nothing but speed: EfficientNet-Lite and ResNet
//! with the seeded PyTorch-fixture weights (random batch-norm statistics) give the same
//! features before and after, to float rounding.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use visual_search_inference::batch_norm_folding::fold_batch_norms;
use visual_search_inference::model::burn_features;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::lookup;
use visual_search_model::weights::TensorFile;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

fn check(name: &str, weights: &str) {
    let device = Device::flex();
    let spec = lookup(name).unwrap();
    let options = spec.default_options();
    let model = EmbeddingModel::new(&spec, &options, None, &device)
        .load_pretrained_backbone(&spec, &options, &fixture(&format!("{weights}.safetensors")))
        .unwrap();
    let io = TensorFile::open(&fixture(&format!("{weights}_io.safetensors"))).unwrap();
    let input = io.read_f32("input").unwrap();
    let n = io.entries["input"].shape[0];
    let before = burn_features(&model, &device, input.clone(), n, 32);
    let folded = fold_batch_norms(model);
    let after = burn_features(&folded, &device, input, n, 32);
    let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = before
        .iter()
        .zip(&after)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(
        err < 1e-5,
        "{name}: folding changed features by {err:e} (relative)"
    );
}

#[test]
fn folding_keeps_efficientnet_lite_features() {
    check("tiny_efficientnet_lite", "efficientnet_lite_tiny");
}

#[test]
fn folding_keeps_resnet_features() {
    check("tiny_resnet", "resnet_tiny");
}
