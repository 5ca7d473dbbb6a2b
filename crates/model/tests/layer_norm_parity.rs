//! The LayerNorm kernels against PyTorch's `F.layer_norm`, within 1e-5 relative: output and the
//! gradients of `x`, `gamma` and `beta`, called directly and through burn's autodiff on flex
//! (`layers::layer_norm`, the path a ConvNeXt or ViT training step takes).
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
