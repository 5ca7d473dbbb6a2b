//! Backbones against PyTorch (timm / open_clip) outputs on seeded weights and inputs.
//!
//! Fixtures: `tests/fixtures/*.safetensors`, written by `tools/make_model_fixtures.py`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::backbones::Backbone;
use visual_search_model::registry::{BuildOptions, lookup};
use visual_search_model::weights::{TensorFile, load_weights};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(file: &TensorFile, name: &str) -> (Vec<f32>, Vec<usize>) {
    (
        file.read_f32(name).unwrap(),
        file.entries[name].shape.clone(),
    )
}

fn tensor<const D: usize>(data: Vec<f32>, shape: Vec<usize>, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// max |a - b| / max |b|
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn check(
    model_name: &str,
    fixture_name: &str,
    io_name: &str,
    image_size: usize,
    with_classifier: bool,
) {
    let device = Device::flex();
    let spec = lookup(model_name).unwrap();
    let options = BuildOptions {
        image_size,
        with_classifier,
        ..spec.default_options()
    };
    let backbone: Backbone = spec.build(&options, &device);
    let weights = TensorFile::open(&fixture(&format!("{fixture_name}.safetensors"))).unwrap();
    let backbone = load_weights(backbone, &weights, spec.weight_mapping(&options).as_ref())
        .unwrap_or_else(|e| panic!("{model_name}: {e}"));
    let io = TensorFile::open(&fixture(&format!("{io_name}_io.safetensors"))).unwrap();
    let (x, shape) = read(&io, "input");
    let features = backbone.forward(tensor::<4>(x, shape, &device));
    let got: Vec<f32> = features.clone().into_data().try_to_vec::<f32>().unwrap();
    let (want, _) = read(&io, "output");
    let err = relative_error(&got, &want);
    assert!(
        err <= 1e-4,
        "{model_name}: features differ from PyTorch by {err:e} (relative)"
    );
    if with_classifier {
        let logits: Vec<f32> = backbone
            .classify(features)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let (want, _) = read(&io, "logits");
        let err = relative_error(&logits, &want);
        assert!(err <= 1e-4, "{model_name}: logits differ by {err:e}");
    }
}

#[test]
fn efficientnet_lite_matches_timm() {
    check(
        "tiny_efficientnet_lite",
        "efficientnet_lite_tiny",
        "efficientnet_lite_tiny",
        32,
        true,
    );
}

#[test]
fn convnext_matches_timm() {
    check("tiny_convnext", "convnext_tiny", "convnext_tiny", 32, false);
}

#[test]
fn convnext_conv_mlp_variant_matches_timm() {
    check(
        "tiny_convnext",
        "convnext_tiny_convmlp",
        "convnext_tiny_convmlp",
        32,
        false,
    );
}

#[test]
fn openclip_convnext_tower_matches_open_clip() {
    check(
        "tiny_convnext_clip",
        "convnext_clip_tiny",
        "convnext_clip_tiny",
        32,
        false,
    );
}

#[test]
fn vit_matches_open_clip() {
    check("tiny_vit", "vit_tiny", "vit_tiny", 32, false);
}

#[test]
fn vit_with_resampled_position_embeddings_matches_open_clip() {
    check("tiny_vit", "vit_tiny", "vit_tiny_40px", 40, false);
}

#[test]
fn resnet_matches_timm() {
    check("tiny_resnet", "resnet_tiny", "resnet_tiny", 32, false);
}

#[test]
fn bicubic_resampling_matches_pytorch() {
    let file = TensorFile::open(&fixture("bicubic.safetensors")).unwrap();
    let (grid, shape) = read(&file, "grid");
    for size in [9, 5] {
        for aa in [false, true] {
            let got = visual_search_model::interpolate::bicubic_resize(
                &grid,
                (shape[0], shape[1], shape[2]),
                (size, size),
                aa,
            );
            let (want, _) = read(
                &file,
                &format!("to{size}_{}", if aa { "aa" } else { "plain" }),
            );
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err < 1e-5,
                "7x7 -> {size}x{size} antialias={aa}: max difference {err}"
            );
        }
    }
}

#[test]
fn mismatched_weights_name_every_problem() {
    let device = Device::flex();
    let spec = lookup("tiny_resnet").unwrap();
    let options = spec.default_options();
    let backbone = spec.build(&options, &device);
    // ConvNeXt weights into a ResNet: everything is missing or unexpected.
    let weights = TensorFile::open(&fixture("convnext_tiny.safetensors")).unwrap();
    let err = load_weights(backbone, &weights, spec.weight_mapping(&options).as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing from the file") && err.contains("conv1.weight"),
        "{err}"
    );
    assert!(
        err.contains("in the file but not in the model")
            && err.contains("stages.0.blocks.0.conv_dw.weight"),
        "{err}"
    );
}
