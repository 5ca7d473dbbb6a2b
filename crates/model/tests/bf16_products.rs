//! bf16 products (`set_matmul_precision(Bf16)`, on AMX): the convolution forward kernels, the
//! convolution gradients, the fused linear layer and a training linear layer's gradients
//! (through autodiff on flex) against PyTorch's references within 1e-2
//! relative — bf16 keeps 8 significant bits of each factor, the sums stay f32 — and measurably
//! different from f32 (the bf16 path really ran). Without AMX the precision stays f32.
//!
//! Fixtures: `conv_grad.safetensors` and `linear.safetensors` (see `conv_parity.rs`,
//! `linear_parity.rs`). Its own test binary: the matmul precision is process-wide.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use common::conv_fixture::{Loaded, cases, geometry};
use common::relative_error;
use visual_search_model::train_ops::linear_kernels::Weight;
use visual_search_model::train_ops::{
    self, Activation, LinearActivation, MatmulPrecision, conv_forward_kernels, conv_kernels,
    linear_kernels, native_bf16, set_matmul_precision,
};
use visual_search_model::weights::TensorFile;

const TOLERANCE: f32 = 1e-2;

/// Bf16 products in force, or false (and the fallback checked) on a CPU without AMX.
fn bf16_products() -> bool {
    let now = set_matmul_precision(MatmulPrecision::Bf16);
    if native_bf16() {
        assert_eq!(now, MatmulPrecision::Bf16);
        true
    } else {
        assert_eq!(now, MatmulPrecision::F32);
        eprintln!("no AMX-BF16 on this CPU: products stay f32 (checked)");
        false
    }
}

/// Checks `got` against `want` within bf16's tolerance; returns the error.
fn close(got: &[f32], want: &[f32], what: &str) -> f32 {
    let e = relative_error(got, want);
    assert!(e <= TOLERANCE, "{what}: relative error {e}");
    e
}

#[test]
fn convolutions_forward_and_backward() {
    if !bf16_products() {
        return;
    }
    let fixture = Loaded::open();
    let mut largest = 0.0f32;
    for (name, case) in &cases() {
        let (x, xs) = fixture.get(name, "x");
        let (w, ws) = fixture.get(name, "weight");
        let (bias, _) = fixture.get(name, "bias");
        let (gy, gys) = fixture.get(name, "gy");
        let g = geometry(&xs, &ws, &gys, case);
        if let Some(y) =
            conv_forward_kernels::forward(&x, &w, Some(&bias), None, &g, Activation::Relu)
        {
            let e = close(
                &y,
                &fixture.get(name, "y_relu").0,
                &format!("{name} forward"),
            );
            largest = largest.max(e);
        }
        if let Some(dw) = conv_kernels::weight_grad(&x, &gy, &g) {
            let e = close(
                &dw,
                &fixture.get(name, "gw").0,
                &format!("{name} weight grad"),
            );
            largest = largest.max(e);
        }
        if let Some(dx) = conv_kernels::input_grad(&w, &gy, &g) {
            let e = close(
                &dx,
                &fixture.get(name, "gx").0,
                &format!("{name} input grad"),
            );
            largest = largest.max(e);
        }
    }
    assert!(
        largest > 1e-5,
        "every result within f32 error: bf16 did not run"
    );
}

#[test]
fn linear_layer_in_any_blocking() {
    if !bf16_products() {
        return;
    }
    let file = TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linear.safetensors"),
    )
    .unwrap();
    let read = |key: &str| file.read_f32(key).unwrap();
    let (x, weight, bias) = (read("x"), read("weight"), read("bias"));
    let rows = file.entries["x"].shape[0];
    let mut largest = 0.0f32;
    let device = Device::flex().autodiff();
    let d_out = bias.len();
    let d_in = weight.len() / d_out;
    let tensor = |values: Vec<f32>, shape: Vec<usize>| {
        Tensor::<2>::from_data(TensorData::new(values, shape), &device).require_grad()
    };
    let xt = tensor(x.clone(), vec![rows, d_in]);
    let wt = tensor(weight.clone(), vec![d_in, d_out]);
    let bt = Tensor::<1>::from_data(TensorData::new(bias.clone(), [d_out]), &device).require_grad();
    let y = train_ops::linear_2d(
        xt.clone(),
        wt.clone(),
        Some(bt.clone()),
        LinearActivation::Gelu,
    );
    let grads = y
        .mul(tensor(read("gy"), vec![rows, d_out]))
        .sum()
        .backward();
    for (key, got) in [("gx", xt.grad(&grads)), ("gw", wt.grad(&grads))] {
        let got = got.unwrap().into_data().try_to_vec::<f32>().unwrap();
        largest = largest.max(close(&got, &read(key), &format!("training {key}")));
    }
    for (activation, key) in [
        (LinearActivation::Identity, "y"),
        (LinearActivation::Gelu, "y_gelu"),
    ] {
        for block_rows in [rows, 8, 1] {
            let got = linear_kernels::forward_in_blocks(
                &x,
                Weight::RowMajor(&weight),
                &bias,
                rows,
                activation,
                block_rows,
            );
            let e = close(&got, &read(key), &format!("{key}, {block_rows}-row blocks"));
            largest = largest.max(e);
        }
    }
    assert!(
        largest > 1e-5,
        "every result within f32 error: bf16 did not run"
    );
}
