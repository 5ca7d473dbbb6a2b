//! `FusedAdamW` against PyTorch's `torch.optim.AdamW` (fixture, within 1e-6 relative over three
//! steps), and bit-for-bit against burn's `AdamW`, whose state record it shares.
//!
//! Fixture: `tests/fixtures/adamw.safetensors`, from `tools/make_adamw_fixtures.py`.

use std::path::Path;

use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::weights::TensorFile;
use visual_search_train::fused_adamw::{FusedAdamW, GradScale};

const LR: f64 = 1e-3;
const WEIGHT_DECAY: f32 = 0.05;

fn fixture() -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw.safetensors"),
    )
    .unwrap()
}

fn tensor(values: Vec<f32>, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [4, 5]), device)
}

fn values(t: &Tensor<2>) -> Vec<f32> {
    t.clone().into_data().try_to_vec::<f32>().unwrap()
}

/// The parameter after each of the fixture's three steps.
fn run<O: Optimizer>(optimizer: &O, device: &Device) -> Vec<Vec<f32>> {
    run_scaled(optimizer, device, 1.0)
}

/// [`run`] with each gradient multiplied by `factor` first (`1`: as it is).
fn run_scaled<O: Optimizer>(optimizer: &O, device: &Device, factor: f64) -> Vec<Vec<f32>> {
    let f = fixture();
    let mut param = tensor(f.read_f32("param").unwrap(), device);
    let mut state = None;
    let mut after = Vec::new();
    for i in 0..3 {
        let mut grad = tensor(f.read_f32(&format!("grad{i}")).unwrap(), device);
        if factor != 1.0 {
            grad = grad.mul_scalar(factor);
        }
        let (p, s) = optimizer.step(LR, param, grad, state);
        after.push(values(&p));
        (param, state) = (p, s);
    }
    after
}

#[test]
fn matches_pytorch_adamw() {
    let f = fixture();
    let got = run(&FusedAdamW::new(1e-8, WEIGHT_DECAY), &Device::flex());
    for (i, step) in got.iter().enumerate() {
        let want = f.read_f32(&format!("param{i}")).unwrap();
        for (a, b) in step.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "step {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn equals_burns_adamw_bit_for_bit() {
    let device = Device::flex();
    let burns = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(WEIGHT_DECAY)
        .build();
    assert_eq!(
        run(&FusedAdamW::new(1e-8, WEIGHT_DECAY), &device),
        run(&burns, &device)
    );
}

/// Clipping's factor, applied inside the step, gives what scaling each gradient first gives.
/// (With a large epsilon: Adam's step is otherwise nearly blind to the gradient's scale.)
#[test]
fn grad_scale_equals_scaling_the_gradient_first() {
    let device = Device::flex();
    let epsilon = 0.5;
    let burns = AdamWConfig::new()
        .with_epsilon(epsilon)
        .with_weight_decay(WEIGHT_DECAY)
        .build();
    let scale = GradScale::default();
    let fused = FusedAdamW::new(epsilon, WEIGHT_DECAY).with_grad_scale(scale.clone());
    scale.set(0.37);
    let scaled = run(&fused, &device);
    assert_eq!(scaled, run_scaled(&burns, &device, 0.37));
    assert_ne!(scaled, run(&burns, &device));
}
