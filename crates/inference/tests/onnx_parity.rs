//! ONNX export + ONNX Runtime against our own flex forward pass: every family (tiny configs
//! with the seeded PyTorch-fixture weights of the model crate, batch-norm statistics included),
//! and EfficientNet-Lite0 with its real ImageNet weights on real grocery photos. Each row's
//! cosine to flex must be ≥ 0.99999.
//!
//! Needs ONNX Runtime's library (`tools/install_onnxruntime.sh`, run by `test.sh`); locally a
//! missing library or dataset is SKIPPED, under CI (`CI=true`) it fails the test.

mod common;

use burn::tensor::Device;
use common::{lite0_and_grocery, lite0_pixels, model_fixture, ort_or_skip};
use visual_search_inference::model::finish_rows;
use visual_search_inference::onnx::{export_model, write_model};
use visual_search_inference::ort_runtime::{OrtModel, OrtTarget};
use visual_search_inference::{BatchEmbedder, BurnEmbedder};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{BuildOptions, lookup};
use visual_search_model::weights::TensorFile;

/// Exports `model` at `size`, runs `input` through ONNX Runtime and through flex, and checks
/// every row's cosine.
fn check(name: &str, model: &EmbeddingModel, size: usize, input: Vec<f32>, n: usize) {
    let spec = lookup(name).unwrap();
    let proto = export_model(model, &spec.architecture, size, name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    write_model(&proto, &path).unwrap();
    let session = OrtModel::open(&path, OrtTarget::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut got = session.run(&input, n, size).unwrap();
    let dim = model.dim();
    assert_eq!(got.len(), n * dim, "{name}: output shape");
    finish_rows(&mut got, dim);
    let device = Device::flex();
    let want = BurnEmbedder {
        model,
        device: &device,
        size,
    }
    .embed_batch(input, n)
    .unwrap();
    for (i, (a, b)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
        let cos: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!(
            cos >= 0.99999,
            "{name}: row {i} has cosine {cos} to flex (want >= 0.99999)"
        );
    }
}

/// A tiny model with the fixture weights and the fixture input.
fn tiny(name: &str, weights: &str, io: &str, size: usize) {
    if !ort_or_skip() {
        return;
    }
    let device = Device::flex();
    let spec = lookup(name).unwrap();
    let options = BuildOptions {
        image_size: size,
        ..spec.default_options()
    };
    let model = EmbeddingModel::new(&spec, &options, None, &device)
        .load_pretrained_backbone(
            &spec,
            &options,
            &model_fixture(&format!("{weights}.safetensors")),
        )
        .unwrap();
    let io = TensorFile::open(&model_fixture(&format!("{io}_io.safetensors"))).unwrap();
    let input = io.read_f32("input").unwrap();
    let n = io.entries["input"].shape[0];
    check(name, &model, size, input, n);
}

#[test]
fn efficientnet_lite_onnx_matches_flex() {
    tiny(
        "tiny_efficientnet_lite",
        "efficientnet_lite_tiny",
        "efficientnet_lite_tiny",
        32,
    );
}

#[test]
fn convnext_onnx_matches_flex() {
    tiny("tiny_convnext", "convnext_tiny", "convnext_tiny", 32);
}

#[test]
fn openclip_convnext_onnx_matches_flex() {
    tiny(
        "tiny_convnext_clip",
        "convnext_clip_tiny",
        "convnext_clip_tiny",
        32,
    );
}

#[test]
fn vit_onnx_matches_flex() {
    tiny("tiny_vit", "vit_tiny", "vit_tiny", 32);
}

#[test]
fn vit_onnx_at_another_size_matches_flex() {
    // Position embeddings resampled to 40 px before export.
    tiny("tiny_vit", "vit_tiny", "vit_tiny_40px", 40);
}

#[test]
fn resnet_onnx_matches_flex() {
    tiny("tiny_resnet", "resnet_tiny", "resnet_tiny", 32);
}

#[test]
fn gem_pooling_and_neck_onnx_match_flex() {
    if !ort_or_skip() {
        return;
    }
    let device = Device::flex();
    let spec = lookup("tiny_resnet").unwrap();
    let options = BuildOptions {
        gem: true,
        ..spec.default_options()
    };
    let model = EmbeddingModel::new(&spec, &options, Some(24), &device)
        .load_pretrained_backbone(&spec, &options, &model_fixture("resnet_tiny.safetensors"))
        .unwrap();
    let io = TensorFile::open(&model_fixture("resnet_tiny_io.safetensors")).unwrap();
    let input = io.read_f32("input").unwrap();
    check("tiny_resnet", &model, 32, input, 2);
}

#[test]
fn efficientnet_lite0_real_weights_onnx_matches_flex_on_grocery_photos() {
    if !ort_or_skip() {
        return;
    }
    let Some((model, grocery)) = lite0_and_grocery() else {
        return;
    };
    let photos = [
        "test/Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg",
        "test/Fruit/Banana/Banana_001.jpg",
        "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg",
        "test/Vegetables/Carrots/Carrots_001.jpg",
    ];
    let samples: Vec<visual_search_data::Sample> = photos
        .iter()
        .map(|p| visual_search_data::Sample {
            path: grocery.join(p),
            label: 0,
            crop: visual_search_data::Crop::None,
        })
        .collect();
    check(
        "efficientnet_lite0",
        &model,
        224,
        lite0_pixels(&samples),
        photos.len(),
    );
}
