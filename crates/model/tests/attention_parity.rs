//! The multi-head attention kernels against PyTorch's `F.scaled_dot_product_attention` (the op
//! `nn.MultiheadAttention` runs in OpenCLIP's ViT), within 1e-5 relative: the output and the
//! gradient of the packed QKV projection, called directly, in inference on flex and through
//! burn's autodiff on flex (`train_ops::multi_head_attention`, the path a ViT takes).
//!
//! Fixture: `tests/fixtures/attention.safetensors`, from `tools/make_attention_fixtures.py`.

mod common;

use common::relative_error;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::attention_kernels::{self, AttentionShape};
use visual_search_model::train_ops::multi_head_attention;
use visual_search_model::weights::TensorFile;

const HEADS: usize = 4;

fn fixture() -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attention.safetensors"),
    )
    .unwrap()
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let e = relative_error(got, want);
    assert!(e <= 1e-5, "{what}: relative error {e}");
}

fn shape(f: &TensorFile) -> AttentionShape {
    let dims = &f.entries["qkv"].shape;
    AttentionShape {
        batch: dims[0],
        tokens: dims[1],
        heads: HEADS,
        head_dim: dims[2] / (3 * HEADS),
    }
}

#[test]
fn kernels_match_pytorch() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let s = shape(&f);
    check(
        "output",
        &attention_kernels::forward(&read("qkv"), s),
        &read("y"),
    );
    check(
        "qkv gradient",
        &attention_kernels::backward(&read("qkv"), &read("gy"), s),
        &read("gqkv"),
    );
}

#[test]
fn flex_inference_and_autodiff_match_pytorch() {
    let f = fixture();
    let read = |k: &str| f.read_f32(k).unwrap();
    let dims = f.entries["qkv"].shape.clone();
    let y_dims = f.entries["y"].shape.clone();

    let device = Device::flex();
    let qkv = Tensor::<3>::from_data(TensorData::new(read("qkv"), dims.clone()), &device);
    let y = multi_head_attention(qkv, HEADS);
    assert_eq!(y.dims().to_vec(), y_dims);
    check(
        "inference output",
        &y.into_data().try_to_vec::<f32>().unwrap(),
        &read("y"),
    );

    let device = Device::flex().autodiff();
    let qkv = Tensor::<3>::from_data(TensorData::new(read("qkv"), dims), &device).require_grad();
    let y = multi_head_attention(qkv.clone(), HEADS);
    let gy = Tensor::<3>::from_data(TensorData::new(read("gy"), y_dims), &device);
    check(
        "training output",
        &y.clone().into_data().try_to_vec::<f32>().unwrap(),
        &read("y"),
    );
    let grads = y.mul(gy).sum().backward();
    check(
        "qkv gradient",
        &qkv.grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        &read("gqkv"),
    );
}
