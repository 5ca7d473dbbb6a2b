//! The fused linear layer (product, bias, GELU) against PyTorch's `F.linear` + `F.gelu`, within
//! 1e-5 relative: the kernel with one block and with several (parallel blocks, and one block
//! whose GEMM is split), and `train_ops::linear_2d` on flex in inference and in training, with
//! its gradients through GELU.
//!
//! Fixture: `tests/fixtures/linear.safetensors`, from `tools/make_linear_fixtures.py`.

mod common;

use common::relative_error;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::{self, LinearActivation, linear_kernels};
use visual_search_model::weights::TensorFile;

struct Fixture {
    x: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    rows: usize,
    d_in: usize,
}

fn fixture() -> (Fixture, TensorFile) {
    let file = TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linear.safetensors"),
    )
    .unwrap();
    let shape = file.entries["x"].shape.clone();
    let f = Fixture {
        x: file.read_f32("x").unwrap(),
        weight: file.read_f32("weight").unwrap(),
        bias: file.read_f32("bias").unwrap(),
        rows: shape[0],
        d_in: shape[1],
    };
    (f, file)
}

const CASES: [(LinearActivation, &str); 2] = [
    (LinearActivation::Identity, "y"),
    (LinearActivation::Gelu, "y_gelu"),
];

#[test]
fn kernel_matches_pytorch_in_any_blocking() {
    let (f, file) = fixture();
    for (activation, key) in CASES {
        let want = file.read_f32(key).unwrap();
        // One block (its GEMM split across threads), 8-row blocks (5 in parallel), one row each.
        for block_rows in [f.rows, 8, 1] {
            let got = linear_kernels::forward_in_blocks(
                &f.x, &f.weight, &f.bias, f.rows, activation, block_rows,
            );
            let e = relative_error(&got, &want);
            assert!(
                e <= 1e-5,
                "{key}, {block_rows}-row blocks: relative error {e}"
            );
        }
    }
}

#[test]
fn linear_2d_on_flex_matches_pytorch() {
    let (f, file) = fixture();
    for device in [Device::flex(), Device::flex().autodiff()] {
        for (activation, key) in CASES {
            let x = Tensor::<2>::from_data(TensorData::new(f.x.clone(), [f.rows, f.d_in]), &device);
            let d_out = f.bias.len();
            let w =
                Tensor::<2>::from_data(TensorData::new(f.weight.clone(), [f.d_in, d_out]), &device);
            let b = Tensor::<1>::from_data(TensorData::new(f.bias.clone(), [d_out]), &device);
            let y = train_ops::linear_2d(x, w, Some(b), activation);
            let got = y.into_data().try_to_vec::<f32>().unwrap();
            let e = relative_error(&got, &file.read_f32(key).unwrap());
            assert!(e <= 1e-5, "{key} on {device:?}: relative error {e}");
        }
    }
}

#[test]
fn linear_2d_gradients_on_flex_match_pytorch() {
    let (f, file) = fixture();
    let device = Device::flex().autodiff();
    let d_out = f.bias.len();
    let x = Tensor::<2>::from_data(TensorData::new(f.x.clone(), [f.rows, f.d_in]), &device)
        .require_grad();
    let w = Tensor::<2>::from_data(TensorData::new(f.weight.clone(), [f.d_in, d_out]), &device)
        .require_grad();
    let b =
        Tensor::<1>::from_data(TensorData::new(f.bias.clone(), [d_out]), &device).require_grad();
    let gy = Tensor::<2>::from_data(
        TensorData::new(file.read_f32("gy").unwrap(), [f.rows, d_out]),
        &device,
    );
    let y = train_ops::linear_2d(
        x.clone(),
        w.clone(),
        Some(b.clone()),
        LinearActivation::Gelu,
    );
    let grads = y.mul(gy).sum().backward();
    for (key, got) in [
        ("gx", x.grad(&grads).unwrap().into_data()),
        ("gw", w.grad(&grads).unwrap().into_data()),
        ("gb", b.grad(&grads).unwrap().into_data()),
    ] {
        let got = got.try_to_vec::<f32>().unwrap();
        let e = relative_error(&got, &file.read_f32(key).unwrap());
        assert!(e <= 1e-5, "{key}: relative error {e}");
    }
}
