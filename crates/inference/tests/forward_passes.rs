//! A batch larger than one CPU forward pass ([`images_per_pass`]) is embedded in several passes;
//! every image must come out as it does on its own, in order, none dropped — for each model
//! family (tiny configs, seeded random weights).

use burn::tensor::Device;
use visual_search_inference::forward_passes::{CPU_IMAGES_PER_PASS, images_per_pass};
use visual_search_inference::model::burn_features;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::lookup;

const SIZE: usize = 32;

/// `n` distinct images of [`SIZE`] px.
fn pixels(n: usize) -> Vec<f32> {
    (0..n * 3 * SIZE * SIZE)
        .map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0)
        .collect()
}

fn check(name: &str) {
    let device = Device::flex();
    let spec = lookup(name).unwrap();
    let model = EmbeddingModel::new(&spec, &spec.default_options(), None, &device);
    // Two full passes and a partial one (one pass of as many for a transformer, which takes
    // whole batches).
    let n = 2 * images_per_pass(&device, &model).min(CPU_IMAGES_PER_PASS) + 3;
    let embed = |images: &[f32], m: usize| burn_features(&model, &device, images.to_vec(), m, SIZE);
    check_rows(name, &pixels(n), n, embed);
}

/// Every row of `n` images embedded together equals that image's row embedded alone.
fn check_rows(name: &str, pixels: &[f32], n: usize, embed: impl Fn(&[f32], usize) -> Vec<f32>) {
    let together = embed(pixels, n);
    let dim = together.len() / n;
    assert_eq!(together.len(), n * dim, "{name}: one row per image");
    assert!(dim > 0);
    for (i, image) in pixels.chunks(pixels.len() / n).enumerate() {
        let alone = embed(image, 1);
        let row = &together[i * dim..][..dim];
        let scale = alone.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = alone
            .iter()
            .zip(row)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{name}: image {i} of {n} differs from its features alone by {err:e} (scale {scale})"
        );
    }
}

#[test]
fn efficientnet_lite_in_passes() {
    check("tiny_efficientnet_lite");
}

#[test]
fn convnext_in_passes() {
    check("tiny_convnext");
}

#[test]
fn vit_in_passes() {
    check("tiny_vit");
}

#[test]
fn resnet_in_passes() {
    check("tiny_resnet");
}

/// On flex, CNNs go in cache-sized passes and a vision transformer in whole batches.
#[test]
fn transformers_take_whole_batches() {
    let device = Device::flex();
    for (name, whole) in [
        ("tiny_vit", true),
        ("tiny_convnext", false),
        ("tiny_efficientnet_lite", false),
        ("tiny_resnet", false),
    ] {
        let spec = lookup(name).unwrap();
        let model = EmbeddingModel::new(&spec, &spec.default_options(), None, &device);
        let per_pass = images_per_pass(&device, &model);
        assert_eq!(per_pass == usize::MAX, whole, "{name}: {per_pass}");
    }
}
