//! The multi-head attention kernels against PyTorch's `F.scaled_dot_product_attention` (the op
//! `nn.MultiheadAttention` runs in OpenCLIP's ViT), within 1e-5 relative: the output and the
//! gradient of the packed QKV projection, called directly, in inference on flex and through
//! burn's autodiff on flex (`train_ops::multi_head_attention`, the path a ViT takes).
//!
//! Fixtures, from `tools/make_attention_fixtures.py`: `tests/fixtures/attention.safetensors`
//! (4 heads of 16) and `attention_head64.safetensors` (2 heads of 64, the head size of every
//! OpenCLIP ViT: on AVX-512 CPUs, the forward pass of `attention_head_avx512`).

mod common;

use common::relative_error;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::attention_kernels::{self, AttentionShape};
use visual_search_model::train_ops::multi_head_attention;
use visual_search_model::weights::TensorFile;

/// Each fixture file and its number of heads.
const FIXTURES: [(&str, usize); 2] = [
    ("attention.safetensors", 4),
    ("attention_head64.safetensors", 2),
];

fn fixture(name: &str) -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let e = relative_error(got, want);
    assert!(e <= 1e-5, "{what}: relative error {e}");
}

fn shape(f: &TensorFile, heads: usize) -> AttentionShape {
    let dims = &f.entries["qkv"].shape;
    AttentionShape {
        batch: dims[0],
        tokens: dims[1],
        heads,
        head_dim: dims[2] / (3 * heads),
    }
}

#[test]
fn kernels_match_pytorch() {
    for (name, heads) in FIXTURES {
        let f = fixture(name);
        let read = |k: &str| f.read_f32(k).unwrap();
        let s = shape(&f, heads);
        check(
            &format!("{name} output"),
            &attention_kernels::forward(&read("qkv"), s),
            &read("y"),
        );
        check(
            &format!("{name} qkv gradient"),
            &attention_kernels::backward(&read("qkv"), &read("gy"), s),
            &read("gqkv"),
        );
    }
}

#[test]
fn flex_inference_and_autodiff_match_pytorch() {
    for (name, heads) in FIXTURES {
        flex_matches_pytorch(name, heads);
    }
}

fn flex_matches_pytorch(name: &str, heads: usize) {
    let f = fixture(name);
    let read = |k: &str| f.read_f32(k).unwrap();
    let dims = f.entries["qkv"].shape.clone();
    let y_dims = f.entries["y"].shape.clone();

    let device = Device::flex();
    let qkv = Tensor::<3>::from_data(TensorData::new(read("qkv"), dims.clone()), &device);
    let y = multi_head_attention(qkv, heads);
    assert_eq!(y.dims().to_vec(), y_dims);
    check(
        &format!("{name} inference output"),
        &y.into_data().try_to_vec::<f32>().unwrap(),
        &read("y"),
    );

    let device = Device::flex().autodiff();
    let qkv = Tensor::<3>::from_data(TensorData::new(read("qkv"), dims), &device).require_grad();
    let y = multi_head_attention(qkv.clone(), heads);
    let gy = Tensor::<3>::from_data(TensorData::new(read("gy"), y_dims), &device);
    check(
        &format!("{name} training output"),
        &y.clone().into_data().try_to_vec::<f32>().unwrap(),
        &read("y"),
    );
    let grads = y.mul(gy).sum().backward();
    check(
        &format!("{name} autodiff qkv gradient"),
        &qkv.grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        &read("gqkv"),
    );
}
