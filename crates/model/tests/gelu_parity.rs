//! Our exact GELU (vectorised erf) against PyTorch's `F.gelu`: values and gradient, called
//! directly, through burn's autodiff on flex, and in inference on flex; each element within
//! 1e-5 of the reference, relative to max(|reference|, 1).
//!
//! Fixture: `tests/fixtures/gelu.safetensors`, from `tools/make_gelu_fixtures.py`.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::{self, gelu_kernels};
use visual_search_model::weights::TensorFile;

use common::assert_close_each as assert_close;

fn fixture() -> TensorFile {
    TensorFile::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gelu.safetensors"))
        .unwrap()
}

#[test]
fn kernels_match_pytorch() {
    let file = fixture();
    let get = |n: &str| file.read_f32(n).unwrap();
    assert_close(&gelu_kernels::forward(&get("x")), &get("y"), "gelu");
    assert_close(
        &gelu_kernels::backward(&get("x"), &get("gy")),
        &get("gx"),
        "gelu gradient",
    );
}

#[test]
fn flex_paths_match_pytorch() {
    let file = fixture();
    let get = |n: &str| file.read_f32(n).unwrap();
    let n = get("x").len();
    let inference = Device::flex();
    let x = Tensor::<1>::from_data(TensorData::new(get("x"), [n]), &inference);
    let y = train_ops::gelu(x).into_data().try_to_vec::<f32>().unwrap();
    assert_close(&y, &get("y"), "inference gelu");

    let training = Device::flex().autodiff();
    let x = Tensor::<1>::from_data(TensorData::new(get("x"), [n]), &training).require_grad();
    let y = train_ops::gelu(x.clone());
    let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_close(&values, &get("y"), "training gelu");
    let gy = Tensor::<1>::from_data(TensorData::new(get("gy"), [n]), &training);
    let grads = y.mul(gy).sum().backward();
    let dx = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_close(&dx, &get("gx"), "training gelu gradient");
}
