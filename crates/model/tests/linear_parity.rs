//! The fused linear layer (product, bias, GELU) against PyTorch's `F.linear` + `F.gelu`, within
//! 1e-5 relative: the kernel with one block and with several (parallel blocks, and one block
//! whose GEMM is split), with the weight row-major and transposed, and `train_ops::linear_2d`
//! on flex in inference and in training, with its gradients through GELU, for a weight
//! parameter in either layout.
//!
//! Fixture: `tests/fixtures/linear.safetensors`, from `tools/make_linear_fixtures.py`.

mod common;

use common::relative_error;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::linear_kernels::{self, Weight};
use visual_search_model::train_ops::{self, LinearActivation};
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
        let weight_t = transpose(&f.weight, f.d_in);
        for block_rows in [f.rows, 8, 1] {
            for weight in [Weight::RowMajor(&f.weight), Weight::Transposed(&weight_t)] {
                let got = linear_kernels::forward_in_blocks(
                    &f.x, weight, &f.bias, f.rows, activation, block_rows,
                );
                let e = relative_error(&got, &want);
                assert!(
                    e <= 1e-5,
                    "{key}, {block_rows}-row blocks, {weight:?}: relative error {e}"
                );
            }
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

/// The row-major `[cols, rows]` transpose of a row-major `[rows, cols]` matrix.
fn transpose(m: &[f32], rows: usize) -> Vec<f32> {
    let cols = m.len() / rows;
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| m[r * cols + c]))
        .collect()
}

/// Gradients through `linear_2d` with the weight parameter stored as burn's `Linear` keeps it
/// (`[d_in, d_out]`) and, as ViT's packed attention projection, as `[d_out, d_in]` used
/// transposed (its gradient then arrives laid out as the parameter, see `flex_ext`).
#[test]
fn linear_2d_gradients_on_flex_match_pytorch() {
    let (f, file) = fixture();
    let device = Device::flex().autodiff();
    let d_out = f.bias.len();
    let want_gw = file.read_f32("gw").unwrap();
    for stored_transposed in [false, true] {
        let x = Tensor::<2>::from_data(TensorData::new(f.x.clone(), [f.rows, f.d_in]), &device)
            .require_grad();
        let w = if stored_transposed {
            let values = transpose(&f.weight, f.d_in);
            Tensor::<2>::from_data(TensorData::new(values, [d_out, f.d_in]), &device)
        } else {
            Tensor::<2>::from_data(TensorData::new(f.weight.clone(), [f.d_in, d_out]), &device)
        }
        .require_grad();
        let b = Tensor::<1>::from_data(TensorData::new(f.bias.clone(), [d_out]), &device)
            .require_grad();
        let gy = Tensor::<2>::from_data(
            TensorData::new(file.read_f32("gy").unwrap(), [f.rows, d_out]),
            &device,
        );
        let weight = if stored_transposed {
            w.clone().transpose()
        } else {
            w.clone()
        };
        let y = train_ops::linear_2d(x.clone(), weight, Some(b.clone()), LinearActivation::Gelu);
        let grads = y.mul(gy).sum().backward();
        let want_gw = if stored_transposed {
            transpose(&want_gw, f.d_in)
        } else {
            want_gw.clone()
        };
        let data = |t: Option<burn::tensor::TensorData>| t.unwrap().try_to_vec::<f32>().unwrap();
        for (key, got, want) in [
            (
                "gx",
                data(x.grad(&grads).map(|g| g.into_data())),
                file.read_f32("gx").unwrap(),
            ),
            ("gw", data(w.grad(&grads).map(|g| g.into_data())), want_gw),
            (
                "gb",
                data(b.grad(&grads).map(|g| g.into_data())),
                file.read_f32("gb").unwrap(),
            ),
        ] {
            let e = relative_error(&got, &want);
            assert!(
                e <= 1e-5,
                "{key} (weight stored transposed: {stored_transposed}): relative error {e}"
            );
        }
    }
}
