//! The LayerNorm kernels against PyTorch's `F.layer_norm`, within 1e-5 relative: output and the
//! gradients of `x`, `gamma` and `beta`, called directly and through burn's autodiff on flex
//! (`layers::layer_norm`, the path a ConvNeXt or ViT training step takes); and over the
//! channels of the same values laid out NCHW (`layers::layer_norm_2d`, ConvNeXt's
//! `LayerNorm2d`): the channels-first kernels, and autodiff and inference on flex with the
//! tensor NCHW in memory and channels-last in memory.
//!
//! Fixture: `tests/fixtures/layer_norm.safetensors`, from `tools/make_layer_norm_fixtures.py`.

mod common;

use common::relative_error;

use std::path::Path;

use burn::module::Param;
use burn::nn::LayerNormConfig;
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::layers;
use visual_search_model::train_ops::layer_norm_kernels;
use visual_search_model::weights::TensorFile;

const EPSILON: f64 = 1e-6;

fn fixture() -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layer_norm.safetensors"),
    )
    .unwrap()
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let e = relative_error(got, want);
    assert!(e <= 1e-5, "{what}: relative error {e}");
}

#[test]
fn kernels_match_pytorch() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let (x, gamma, beta, gy) = (read("x"), read("gamma"), read("beta"), read("gy"));
    check(
        "output",
        &layer_norm_kernels::forward(&x, &gamma, &beta, EPSILON),
        &read("y"),
    );
    let g = layer_norm_kernels::backward(&x, &gamma, &gy, EPSILON);
    check("x gradient", &g.x, &read("gx"));
    check("gamma gradient", &g.gamma, &read("ggamma"));
    check("beta gradient", &g.beta, &read("gbeta"));
}

#[test]
fn autodiff_on_flex_matches_pytorch() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let device = Device::flex().autodiff();
    let shape = f.entries["x"].shape.clone();
    let width = shape[3];
    let mut norm = LayerNormConfig::new(width)
        .with_epsilon(EPSILON)
        .init(&device);
    norm.gamma = Param::from_tensor(Tensor::from_data(
        TensorData::new(read("gamma"), [width]),
        &device,
    ));
    norm.beta = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(read("beta"), [width]),
        &device,
    )));
    let x =
        Tensor::<4>::from_data(TensorData::new(read("x"), shape.clone()), &device).require_grad();
    let y = layers::layer_norm(&norm, x.clone(), EPSILON);
    let gy = Tensor::<4>::from_data(TensorData::new(read("gy"), shape), &device);
    let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
    let grads = y.mul(gy).sum().backward();
    let vec = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    check("output", &values, &read("y"));
    check(
        "x gradient",
        &x.grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        &read("gx"),
    );
    check(
        "gamma gradient",
        &vec(norm.gamma.val().grad(&grads).unwrap()),
        &read("ggamma"),
    );
    let beta = norm.beta.as_ref().unwrap().val();
    check(
        "beta gradient",
        &vec(beta.grad(&grads).unwrap()),
        &read("gbeta"),
    );
}

/// `[n, h, w, c]` values as `[n, c, h, w]`.
fn to_channels_first(nhwc: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; nhwc.len()];
    for b in 0..n {
        for p in 0..h * w {
            for ch in 0..c {
                out[(b * c + ch) * h * w + p] = nhwc[(b * h * w + p) * c + ch];
            }
        }
    }
    out
}

/// The fixture's `[n, h, w, c]` shape.
fn nhwc_shape(f: &TensorFile) -> [usize; 4] {
    let s = &f.entries["x"].shape;
    [s[0], s[1], s[2], s[3]]
}

#[test]
fn channels_first_kernels_match_pytorch() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let shape = nhwc_shape(&f);
    let plane = shape[1] * shape[2];
    let first = |k: &str| to_channels_first(&read(k), shape);
    let (x, gamma, beta, gy) = (first("x"), read("gamma"), read("beta"), first("gy"));
    check(
        "output",
        &layer_norm_kernels::forward_channels_first(&x, &gamma, &beta, EPSILON, plane),
        &first("y"),
    );
    let g = layer_norm_kernels::backward_channels_first(&x, &gamma, &gy, EPSILON, plane);
    check("x gradient", &g.x, &first("gx"));
    check("gamma gradient", &g.gamma, &read("ggamma"));
    check("beta gradient", &g.beta, &read("gbeta"));
}

#[test]
fn layer_norm_2d_on_flex_matches_pytorch_in_both_layouts() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let [n, h, w, c] = nhwc_shape(&f);
    let first = |k: &str| to_channels_first(&read(k), [n, h, w, c]);
    for device in [Device::flex(), Device::flex().autodiff()] {
        let mut norm = LayerNormConfig::new(c).with_epsilon(EPSILON).init(&device);
        norm.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(read("gamma"), [c]),
            &device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(read("beta"), [c]),
            &device,
        )));
        for channels_last in [false, true] {
            let what = format!(
                "{}, {}",
                if device.is_autodiff() {
                    "training"
                } else {
                    "inference"
                },
                if channels_last {
                    "channels-last"
                } else {
                    "NCHW"
                }
            );
            // The leaf: NCHW values, or NHWC values seen as NCHW through a permute.
            let leaf = if channels_last {
                Tensor::<4>::from_data(TensorData::new(read("x"), [n, h, w, c]), &device)
            } else {
                Tensor::<4>::from_data(TensorData::new(first("x"), [n, c, h, w]), &device)
            };
            let leaf = if device.is_autodiff() {
                leaf.require_grad()
            } else {
                leaf
            };
            let x = if channels_last {
                leaf.clone().permute([0, 3, 1, 2])
            } else {
                leaf.clone()
            };
            let y = layers::layer_norm_2d(&norm, x, EPSILON);
            assert_eq!(y.dims(), [n, c, h, w], "{what}");
            let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
            check(&format!("output, {what}"), &values, &first("y"));
            if !device.is_autodiff() {
                continue;
            }
            let gy = Tensor::<4>::from_data(TensorData::new(first("gy"), [n, c, h, w]), &device);
            let grads = y.mul(gy).sum().backward();
            let gx = leaf.grad(&grads).unwrap();
            let gx = if channels_last {
                gx.permute([0, 3, 1, 2])
            } else {
                gx
            };
            let gx = gx.into_data().try_to_vec::<f32>().unwrap();
            check(&format!("x gradient, {what}"), &gx, &first("gx"));
            let vec = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            let ggamma = vec(norm.gamma.val().grad(&grads).unwrap());
            check(&format!("gamma gradient, {what}"), &ggamma, &read("ggamma"));
            let gbeta = vec(norm.beta.as_ref().unwrap().val().grad(&grads).unwrap());
            check(&format!("beta gradient, {what}"), &gbeta, &read("gbeta"));
        }
    }
}
