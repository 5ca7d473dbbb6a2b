//! A convolution + frozen batch norm + activation (and a ResNet block's residual before it) as
//! our CNNs train it — the batch norm folded into the convolution — against PyTorch's unfolded
//! composition: the output and the gradients of the input, the convolution's weight and bias,
//! gamma, beta and the residual, within 1e-5 relative, through burn's autodiff on flex; and the
//! same output from an inference pass (which keeps the batch norm as it is).
//!
//! Fixture: `tests/fixtures/conv_bn_act.safetensors`, from `tools/make_conv_bn_act_fixtures.py`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use common::relative_error;
use serde::Deserialize;
use visual_search_model::layers::{conv_bn_act, conv_bn_add_act};
use visual_search_model::train_ops::Activation;
use visual_search_model::weights::TensorFile;

#[derive(Deserialize)]
struct Case {
    stride: usize,
    padding: [[usize; 2]; 2],
    groups: usize,
    bias: bool,
    residual: bool,
    activation: String,
    epsilon: f64,
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conv_bn_act.safetensors")
}

fn cases() -> BTreeMap<String, Case> {
    let bytes = std::fs::read(fixture_path()).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&metadata.metadata().as_ref().unwrap()["cases"]).unwrap()
}

struct Fixture {
    file: TensorFile,
    case: String,
}

impl Fixture {
    fn values(&self, key: &str) -> Vec<f32> {
        self.file.read_f32(&format!("{}.{key}", self.case)).unwrap()
    }

    fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let shape = self.file.entries[&format!("{}.{key}", self.case)]
            .shape
            .clone();
        Tensor::<D>::from_data(TensorData::new(self.values(key), shape), device)
    }
}

fn activation(name: &str) -> Activation {
    match name {
        "identity" => Activation::Identity,
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        other => panic!("unknown activation {other}"),
    }
}

/// The fixture's convolution and frozen batch norm as burn modules on `device`.
fn modules(f: &Fixture, case: &Case, device: &Device) -> (Conv2d, BatchNorm) {
    let weight = f.tensor::<4>("weight", device);
    let [out_channels, in_per_group, k, _] = weight.dims();
    let [[top, bottom], [left, right]] = case.padding;
    let mut conv = Conv2dConfig::new([in_per_group * case.groups, out_channels], [k, k])
        .with_stride([case.stride; 2])
        .with_groups(case.groups)
        .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
        .with_bias(case.bias)
        .init(device);
    conv.weight = Param::from_tensor(weight);
    if case.bias {
        conv.bias = Some(Param::from_tensor(f.tensor("bias", device)));
    }
    let mut bn = BatchNormConfig::new(out_channels)
        .with_epsilon(case.epsilon)
        .init(device);
    bn.gamma = Param::from_tensor(f.tensor("gamma", device));
    bn.beta = Param::from_tensor(f.tensor("beta", device));
    bn.running_mean = RunningState::new(f.tensor("mean", device));
    bn.running_var = RunningState::new(f.tensor("var", device));
    bn.training = Param::from_bool(false);
    (conv, bn)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn check(got: Vec<f32>, f: &Fixture, key: &str) {
    let e = relative_error(&got, &f.values(key));
    assert!(e <= 1e-5, "{} {key}: relative error {e}", f.case);
}

#[test]
fn folded_frozen_batch_norm_trains_as_pytorch() {
    let cases = cases();
    assert_eq!(cases.len(), 6);
    let device = Device::flex().autodiff();
    for (name, case) in &cases {
        let f = Fixture {
            file: TensorFile::open(&fixture_path()).unwrap(),
            case: name.clone(),
        };
        let (conv, bn) = modules(&f, case, &device);
        let frozen = Some(bn.clone());
        let x = f.tensor::<4>("x", &device).require_grad();
        let act = activation(&case.activation);
        let residual = case
            .residual
            .then(|| f.tensor::<4>("residual", &device).require_grad());
        let z = match &residual {
            Some(r) => conv_bn_add_act(&conv, &frozen, x.clone(), r.clone(), act),
            None => conv_bn_act(&conv, &frozen, x.clone(), act),
        };
        check(values(z.clone()), &f, "z");
        let grads = z.mul(f.tensor("gz", &device)).sum().backward();
        check(values(x.grad(&grads).unwrap()), &f, "gx");
        check(
            values(conv.weight.val().grad(&grads).unwrap()),
            &f,
            "gweight",
        );
        check(values(bn.gamma.val().grad(&grads).unwrap()), &f, "ggamma");
        check(values(bn.beta.val().grad(&grads).unwrap()), &f, "gbeta");
        if let Some(bias) = &conv.bias {
            check(values(bias.val().grad(&grads).unwrap()), &f, "gbias");
        }
        if let Some(r) = residual {
            check(values(r.grad(&grads).unwrap()), &f, "gresidual");
        }
    }
}

#[test]
fn inference_keeps_the_batch_norm_and_the_same_output() {
    let device = Device::flex();
    for (name, case) in &cases() {
        let f = Fixture {
            file: TensorFile::open(&fixture_path()).unwrap(),
            case: name.clone(),
        };
        let (conv, bn) = modules(&f, case, &device);
        let bn = Some(bn);
        let (x, act) = (f.tensor::<4>("x", &device), activation(&case.activation));
        let z = if case.residual {
            conv_bn_add_act(&conv, &bn, x, f.tensor("residual", &device), act)
        } else {
            conv_bn_act(&conv, &bn, x, act)
        };
        check(values(z), &f, "z");
    }
}

/// The backward pass masks the output gradient in place only when nothing else holds it: here
/// the output also feeds a sum with another tracked tensor, whose gradient is the same tensor
/// and stays as it was, while the input's gradient is PyTorch's.
#[test]
fn a_shared_output_gradient_is_left_as_it_is() {
    let cases = cases();
    let device = Device::flex().autodiff();
    let name = "expand_relu6";
    let f = Fixture {
        file: TensorFile::open(&fixture_path()).unwrap(),
        case: name.to_string(),
    };
    let (conv, bn) = modules(&f, &cases[name], &device);
    let x = f.tensor::<4>("x", &device).require_grad();
    let z = conv_bn_act(&conv, &Some(bn), x.clone(), Activation::Relu6);
    let other = Tensor::<4>::zeros(z.dims(), &device).require_grad();
    let grads = z
        .add(other.clone())
        .mul(f.tensor("gz", &device))
        .sum()
        .backward();
    check(values(x.grad(&grads).unwrap()), &f, "gx");
    assert_eq!(values(other.grad(&grads).unwrap()), f.values("gz"));
}

/// A ResNet block's input is both its first convolution's input and its residual, so the
/// residual's gradient (the masked output gradient, registered after the convolution's
/// gradients are done reading it) is summed with the input's: the same gradients as from two
/// separate tensors holding the same values.
#[test]
fn a_residual_that_is_also_the_input_gets_both_gradients() {
    let device = Device::flex().autodiff();
    let shape = [2, 4, 5, 6];
    let len: usize = shape.iter().product();
    let values_of =
        |scale: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * scale).sin() * 1.5).collect() };
    let (xs, gz) = (values_of(0.37), values_of(0.53));
    let conv = Conv2dConfig::new([4, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let bn = Some(BatchNormConfig::new(4).init(&device));
    let run = |shared: bool| {
        let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), shape), &device).require_grad();
        let r = if shared {
            x.clone()
        } else {
            Tensor::<4>::from_data(TensorData::new(xs.clone(), shape), &device).require_grad()
        };
        let z = conv_bn_add_act(&conv, &bn, x.clone(), r.clone(), Activation::Relu);
        let grads = z
            .mul(Tensor::<4>::from_data(
                TensorData::new(gz.clone(), shape),
                &device,
            ))
            .sum()
            .backward();
        let gx = values(x.grad(&grads).unwrap());
        if shared {
            gx
        } else {
            let gr = values(r.grad(&grads).unwrap());
            gx.iter().zip(&gr).map(|(a, b)| a + b).collect()
        }
    };
    let (shared, separate) = (run(true), run(false));
    let e = relative_error(&shared, &separate);
    assert!(e <= 1e-6, "relative error {e}");
    assert!(shared.iter().any(|&g| g != 0.0));
}

/// The folding's per-output-channel weight scaling (our op on flex) gives burn's broadcast
/// product and its gradients for the weight and the scale.
#[test]
fn weight_scaling_matches_burns_broadcast_product() {
    use visual_search_model::train_ops::scale_out_channels;
    let device = Device::flex().autodiff();
    let shape = [6, 4, 3, 3];
    let len: usize = shape.iter().product();
    let w: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
    let s = vec![0.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0];
    let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.71).cos()).collect();
    let run = |ours: bool| {
        let weight =
            Tensor::<4>::from_data(TensorData::new(w.clone(), shape), &device).require_grad();
        let scale = Tensor::<1>::from_data(TensorData::new(s.clone(), [6]), &device).require_grad();
        let y = if ours {
            scale_out_channels(weight.clone(), scale.clone())
        } else {
            weight.clone().mul(scale.clone().reshape([6, 1, 1, 1]))
        };
        let out = values(y.clone());
        let grads = y
            .mul(Tensor::<4>::from_data(
                TensorData::new(g.clone(), shape),
                &device,
            ))
            .sum()
            .backward();
        (
            out,
            values(weight.grad(&grads).unwrap()),
            values(scale.grad(&grads).unwrap()),
        )
    };
    let (ours, burns) = (run(true), run(false));
    for (label, a, b) in [
        ("output", &ours.0, &burns.0),
        ("weight gradient", &ours.1, &burns.1),
        ("scale gradient", &ours.2, &burns.2),
    ] {
        let e = relative_error(a, b);
        assert!(e <= 1e-6, "{label}: relative error {e}");
    }
}
