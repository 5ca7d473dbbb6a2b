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

/// An inverted-residual block (1×1 expansion, ReLU6; depthwise 3×3, ReLU6; 1×1 projection
/// and the shortcut; then a strided depthwise 5×5 variant without it) trained on flex with
/// its expanded activations stored in bf16 (`Storage::Bf16`, what EfficientNet-Lite's blocks
/// ask for; their gradients are then bf16 too) against the same block with them in f32, both
/// with bf16 products: the expanded tensors really are bf16, and the output and every
/// gradient (input, weights, biases) stay within bf16's tolerance of the f32-stored run while
/// differing from it.
///
/// The data keeps every activation clear of ReLU6's edges (checked): an output within bf16's
/// rounding of 0 or 6 would pass the gradient in one run and block it in the other (as
/// PyTorch's autocast, which masks by its bf16 tensors, differs from f32 there), and a single
/// such element moves a bias's gradient — a sum with much cancellation — by several percent.
#[test]
fn inverted_residual_block_with_bf16_activations() {
    use burn::tensor::DType;
    use burn::tensor::ops::ConvOptions;
    use train_ops::Storage;

    if !bf16_products() {
        return;
    }
    let device = Device::flex().autodiff();
    // Values in [offset - scale, offset + scale).
    let values = |len: usize, seed: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .map(|v| v * scale + offset)
            .collect()
    };
    let (batch, c, e, side) = (2, 16, 96, 10);
    let tracked4 = |v: Vec<f32>, shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v, shape), &device).require_grad()
    };
    let tracked1 = |v: Vec<f32>| {
        let len = v.len();
        Tensor::<1>::from_data(TensorData::new(v, [len]), &device).require_grad()
    };
    let as_f32 = |t: Tensor<4>| t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
    for (kernel, stride) in [(3, 1), (5, 2)] {
        let taps = kernel * kernel;
        let x = tracked4(
            values(batch * c * side * side, 1, 1.0, 0.0),
            [batch, c, side, side],
        );
        let w1 = tracked4(values(e * c, 2, 0.3, 0.0), [e, c, 1, 1]);
        let b1 = tracked1(values(e, 3, 0.5, 3.0));
        let wd = tracked4(
            values(e * taps, 4, 1.0 / taps as f32, 0.0),
            [e, 1, kernel, kernel],
        );
        let bd = tracked1(values(e, 5, 0.5, 3.0));
        let w2 = tracked4(values(c * e, 6, 0.2, 0.0), [c, e, 1, 1]);
        let b2 = tracked1(values(c, 7, 1.0, 0.0));
        let (pad, out_side) = (kernel / 2, side.div_ceil(stride));
        let out_shape = [batch, c, out_side, out_side];
        let gy = Tensor::<4>::from_data(
            TensorData::new(values(out_shape.iter().product(), 8, 1.0, 0.0), out_shape),
            &device,
        );
        let run = |storage: Storage| {
            let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
            let depthwise = ConvOptions::new([stride; 2], [pad; 2], [1, 1], e);
            let relu6 = Activation::Relu6;
            let y1 = train_ops::conv2d_stored(
                x.clone(),
                w1.clone(),
                Some(b1.clone()),
                None,
                pointwise.clone(),
                relu6,
                storage,
            );
            let y2 = train_ops::conv2d_stored(
                y1.clone(),
                wd.clone(),
                Some(bd.clone()),
                None,
                depthwise,
                relu6,
                storage,
            );
            let stored = [(y1.dtype(), as_f32(y1)), (y2.dtype(), as_f32(y2.clone()))];
            let residual = (stride == 1).then(|| x.clone());
            let y = train_ops::conv2d_stored(
                y2,
                w2.clone(),
                Some(b2.clone()),
                residual,
                pointwise,
                Activation::Identity,
                Storage::F32,
            );
            let grads = y.clone().mul(gy.clone()).sum().backward();
            let grad4 = |t: &Tensor<4>| t.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            let grad1 = |t: &Tensor<1>| t.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            let results: Vec<(&str, Vec<f32>)> = vec![
                ("output", y.into_data().try_to_vec::<f32>().unwrap()),
                ("gx", grad4(&x)),
                ("gw1", grad4(&w1)),
                ("gb1", grad1(&b1)),
                ("gwd", grad4(&wd)),
                ("gbd", grad1(&bd)),
                ("gw2", grad4(&w2)),
                ("gb2", grad1(&b2)),
            ];
            (stored, results)
        };
        let (f32_stored, want) = run(Storage::F32);
        let (bf16_stored, got) = run(Storage::Bf16);
        let near_an_edge = |z: f32| z.abs() < 0.05 || (z - 6.0).abs() < 0.05;
        for ((f32_dtype, f32_values), (bf16_dtype, bf16_values)) in
            f32_stored.iter().zip(&bf16_stored)
        {
            assert_eq!((*f32_dtype, *bf16_dtype), (DType::F32, DType::BF16));
            assert!(
                !f32_values
                    .iter()
                    .chain(bf16_values)
                    .any(|&z| near_an_edge(z))
            );
        }
        let mut largest = 0.0f32;
        for ((name, got), (_, want)) in got.iter().zip(&want) {
            let e = close(got, want, &format!("{kernel}×{kernel}/{stride} {name}"));
            largest = largest.max(e);
        }
        assert!(
            largest > 1e-5,
            "{kernel}×{kernel}/{stride}: bf16 storage changed nothing"
        );
    }
}
