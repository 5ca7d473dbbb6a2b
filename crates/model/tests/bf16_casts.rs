//! `train_ops::bf16_casts` (bf16 mixed precision on tch and the GPU backends) against PyTorch's
//! CPU bf16 autocast, output and gradients of a convolution and a matmul. Run here on autodiff
//! flex, whose bf16 operations compute in f32 and round the result, as autocast's oneDNN
//! kernels do. Two checks per tensor: the mean difference to autocast is under a tenth of the
//! mean difference between autocast and f32 (so it is bf16 rounding that matches, not f32 that
//! happens to be close), and every value is within two bf16 steps of autocast's.
//!
//! Fixture: `tests/fixtures/bf16_casts.safetensors`, from `tools/make_bf16_cast_fixtures.py`.

use std::path::Path;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
use visual_search_model::train_ops::bf16_casts;
use visual_search_model::weights::TensorFile;

fn fixture() -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bf16_casts.safetensors"),
    )
    .unwrap()
}

fn leaf<const D: usize>(file: &TensorFile, key: &str, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = file.entries[key].shape.clone().try_into().unwrap();
    Tensor::<D>::from_data(TensorData::new(file.read_f32(key).unwrap(), shape), device)
        .require_grad()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F32, "bf16 casts must hand back f32");
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / a.len() as f64
}

/// `got` is autocast's `{key}_bf16`, not its `{key}_f32`.
fn assert_matches_autocast(file: &TensorFile, key: &str, got: &[f32]) {
    let bf16 = file.read_f32(&format!("{key}_bf16")).unwrap();
    let f32 = file.read_f32(&format!("{key}_f32")).unwrap();
    let to_autocast = mean_abs_diff(got, &bf16);
    let autocast_to_f32 = mean_abs_diff(&bf16, &f32);
    assert!(
        to_autocast < 0.1 * autocast_to_f32,
        "{key}: mean difference to autocast {to_autocast}, autocast to f32 {autocast_to_f32}"
    );
    let scale = bf16.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(&bf16).enumerate() {
        // A bf16 step at |w| is 2⁻⁷·|w| at most; sums of rounded terms can differ by a few of
        // the largest value's steps.
        let step = w.abs().max(scale / 64.0) / 128.0;
        assert!(
            (g - w).abs() <= 2.0 * step,
            "{key}[{i}]: {g} vs autocast {w} (f32 {})",
            f32[i]
        );
    }
}

#[test]
fn conv2d_matches_pytorch_autocast_both_ways() {
    let file = fixture();
    let device = Device::flex().autodiff();
    let x = leaf::<4>(&file, "conv_x", &device);
    let w = leaf::<4>(&file, "conv_w", &device);
    let b = leaf::<1>(&file, "conv_b", &device);
    let gy = leaf::<4>(&file, "conv_gy", &device).detach();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let y = bf16_casts::conv2d(x.clone(), w.clone(), Some(b.clone()), options);
    assert_matches_autocast(&file, "conv_y", &values(y.clone()));
    let grads = y.mul(gy).sum().backward();
    assert_matches_autocast(&file, "conv_gx", &values(x.grad(&grads).unwrap()));
    assert_matches_autocast(&file, "conv_gw", &values(w.grad(&grads).unwrap()));
    assert_matches_autocast(&file, "conv_gb", &values(b.grad(&grads).unwrap()));
}

#[test]
fn matmul_matches_pytorch_autocast_both_ways() {
    let file = fixture();
    let device = Device::flex().autodiff();
    let a = leaf::<2>(&file, "mm_a", &device);
    let m = leaf::<2>(&file, "mm_b", &device);
    let gy = leaf::<2>(&file, "mm_gy", &device).detach();
    let y = bf16_casts::matmul(a.clone(), m.clone());
    assert_matches_autocast(&file, "mm_y", &values(y.clone()));
    let grads = y.mul(gy).sum().backward();
    assert_matches_autocast(&file, "mm_ga", &values(a.grad(&grads).unwrap()));
    assert_matches_autocast(&file, "mm_gb", &values(m.grad(&grads).unwrap()));
}
