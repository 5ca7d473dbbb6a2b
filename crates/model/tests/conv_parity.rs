//! Our convolution kernels against PyTorch, within 1e-5 relative: the forward pass with bias and
//! activation (called directly, and through `train_ops::conv2d_act` on flex as inference runs
//! it), and the gradients (called directly, and through burn's autodiff on flex as a training
//! step runs them, with and without a bias: its gradient too).
//!
//! Fixture: `tests/fixtures/conv_grad.safetensors`, from `tools/make_conv_grad_fixtures.py`
//! (float64 reference outputs and gradients for f32 inputs).

mod common;

use common::conv_fixture::{Loaded, cases, geometry, options};
use common::relative_error;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::{
    self, Activation, conv_forward_kernels, conv_kernels as kernels,
};

/// Each activation and the fixture output it is checked against.
const ACTIVATIONS: [(Activation, &str); 3] = [
    (Activation::Identity, "y"),
    (Activation::Relu, "y_relu"),
    (Activation::Relu6, "y_relu6"),
];

#[test]
fn forward_kernels_match_pytorch() {
    let fixture = Loaded::open();
    for (name, case) in &cases() {
        let (x, xs) = fixture.get(name, "x");
        let (w, ws) = fixture.get(name, "weight");
        let (bias, _) = fixture.get(name, "bias");
        let (y, ys) = fixture.get(name, "y");
        let g = geometry(&xs, &ws, &ys, case);
        for (activation, key) in ACTIVATIONS {
            let got = conv_forward_kernels::forward(&x, &w, Some(&bias), None, &g, activation)
                .expect("kernel covers this case");
            let e = relative_error(&got, &fixture.get(name, key).0);
            assert!(e <= 1e-5, "{name} {activation:?}: relative error {e}");
        }
        // Without a bias: the output less the bias.
        let got =
            conv_forward_kernels::forward(&x, &w, None, None, &g, Activation::Identity).unwrap();
        let want: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, v)| v - bias[(i / (g.out_h * g.out_w)) % g.out_channels])
            .collect();
        let e = relative_error(&got, &want);
        assert!(e <= 1e-5, "{name} without bias: relative error {e}");
        // With a residual (a ResNet block's shortcut) and the ReLU after the sum; the dense
        // kernel covers it, the depthwise one leaves it to burn.
        let residual: Vec<f32> = (0..y.len())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let got = conv_forward_kernels::forward(
            &x,
            &w,
            Some(&bias),
            Some(&residual),
            &g,
            Activation::Relu,
        );
        match got {
            Some(got) => {
                let want: Vec<f32> = y
                    .iter()
                    .zip(&residual)
                    .map(|(v, r)| (v + r).max(0.0))
                    .collect();
                let e = relative_error(&got, &want);
                assert!(e <= 1e-5, "{name} with a residual: relative error {e}");
            }
            None => assert_ne!(g.groups, 1, "{name}: the dense kernel takes a residual"),
        }
    }
}

/// Inference on flex (no autodiff) runs the fused kernels through the backend extension.
#[test]
fn fused_inference_conv_on_flex_matches_pytorch() {
    let fixture = Loaded::open();
    let device = Device::flex();
    for (name, case) in &cases() {
        let load = |key: &str| {
            let (v, s) = fixture.get(name, key);
            Tensor::<4>::from_data(TensorData::new(v, s), &device)
        };
        let (bias, bs) = fixture.get(name, "bias");
        let bias = Tensor::<1>::from_data(TensorData::new(bias, bs), &device);
        for (activation, key) in ACTIVATIONS {
            let y = train_ops::conv2d_act(
                load("x"),
                load("weight"),
                Some(bias.clone()),
                options(case),
                activation,
            );
            let got = y.into_data().try_to_vec::<f32>().unwrap();
            let e = relative_error(&got, &fixture.get(name, key).0);
            assert!(e <= 1e-5, "{name} {activation:?}: relative error {e}");
        }
    }
}

#[test]
fn kernels_match_pytorch() {
    let fixture = Loaded::open();
    let cases = cases();
    assert!(cases.len() >= 8, "fixture lists {} cases", cases.len());
    for (name, case) in &cases {
        let (x, xs) = fixture.get(name, "x");
        let (w, ws) = fixture.get(name, "weight");
        let (gy, gys) = fixture.get(name, "gy");
        let g = geometry(&xs, &ws, &gys, case);
        let dw = kernels::weight_grad(&x, &gy, &g).expect("kernel covers this case");
        let dx = kernels::input_grad(&w, &gy, &g).expect("kernel covers this case");
        let ew = relative_error(&dw, &fixture.get(name, "gw").0);
        let ex = relative_error(&dx, &fixture.get(name, "gx").0);
        assert!(ew <= 1e-5, "{name}: weight gradient relative error {ew}");
        assert!(ex <= 1e-5, "{name}: input gradient relative error {ex}");
    }
}

/// Through burn's autodiff on flex, without a bias and with one (then the convolution is one
/// tracked operation with the bias inside): the output, and every gradient as PyTorch's.
#[test]
fn autodiff_on_flex_matches_pytorch() {
    let fixture = Loaded::open();
    let device = Device::flex().autodiff();
    for (name, case) in &cases() {
        let load = |key: &str| {
            let (v, s) = fixture.get(name, key);
            Tensor::<4>::from_data(TensorData::new(v, s), &device)
        };
        let (bias, bias_shape) = fixture.get(name, "bias");
        for with_bias in [false, true] {
            let x = load("x").require_grad();
            let w = load("weight").require_grad();
            let b =
                Tensor::<1>::from_data(TensorData::new(bias.clone(), bias_shape.clone()), &device)
                    .require_grad();
            let y = train_ops::conv2d(
                x.clone(),
                w.clone(),
                with_bias.then(|| b.clone()),
                options(case),
            );
            if with_bias {
                let got_y = values(y.clone());
                let ey = relative_error(&got_y, &fixture.get(name, "y").0);
                assert!(ey <= 1e-5, "{name}: output relative error {ey}");
            }
            let grads = y.mul(load("gy")).sum().backward();
            let mut checks = vec![
                ("input", values(x.grad(&grads).unwrap()), "gx"),
                ("weight", values(w.grad(&grads).unwrap()), "gw"),
            ];
            if with_bias {
                checks.push(("bias", values(b.grad(&grads).unwrap()), "gb"));
            }
            for (label, got, key) in checks {
                let e = relative_error(&got, &fixture.get(name, key).0);
                assert!(
                    e <= 1e-5,
                    "{name} (bias {with_bias}): {label} gradient relative error {e}"
                );
            }
        }
    }
}

/// A tensor's values.
fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `[n][c][plane]` values as `[n][plane][c]`.
fn to_nhwc(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let (n, c, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    let mut out = vec![0.0; values.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..plane {
                out[(i * plane + p) * c + ch] = values[(i * c + ch) * plane + p];
            }
        }
    }
    out
}

/// A channels-last input (ConvNeXt's residual stream: an NHWC tensor seen as NCHW) and output
/// gradient take the depthwise kernels' channels-last paths (the input gradient's at stride 1;
/// strided layers fall back to NCHW copies): the same output and gradients.
#[test]
fn channels_last_depthwise_on_flex_matches_pytorch() {
    let fixture = Loaded::open();
    let device = Device::flex().autodiff();
    let mut covered = 0;
    for (name, case) in &cases() {
        let (x, xs) = fixture.get(name, "x");
        let (w, ws) = fixture.get(name, "weight");
        let (gy, gys) = fixture.get(name, "gy");
        let g = geometry(&xs, &ws, &gys, case);
        if g.groups == 1 {
            continue;
        }
        covered += 1;
        // An NHWC tensor permuted to NCHW: channels-last memory under an NCHW shape.
        let channels_last = |values: &[f32], shape: &[usize]| {
            let nhwc = [shape[0], shape[2], shape[3], shape[1]];
            Tensor::<4>::from_data(TensorData::new(to_nhwc(values, shape), nhwc), &device)
        };
        let x_last = channels_last(&x, &xs).require_grad();
        let w_tensor = Tensor::<4>::from_data(TensorData::new(w, ws.clone()), &device);
        let w_tensor = w_tensor.require_grad();
        let (bias, bias_shape) = fixture.get(name, "bias");
        // Without a bias (the output less the fixture's bias), then with it (ConvNeXt's
        // depthwise layers have one: its gradient from the channels-last output gradient).
        for with_bias in [false, true] {
            let b =
                Tensor::<1>::from_data(TensorData::new(bias.clone(), bias_shape.clone()), &device)
                    .require_grad();
            let y = train_ops::conv2d(
                x_last.clone().permute([0, 3, 1, 2]),
                w_tensor.clone(),
                with_bias.then(|| b.clone()),
                options(case),
            );
            let (want_y, ys) = fixture.get(name, "y");
            let plane = ys[2] * ys[3];
            let want_y: Vec<f32> = match with_bias {
                true => want_y,
                false => want_y
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v - bias[(i / plane) % ys[1]])
                    .collect(),
            };
            let got_y = values(y.clone());
            let ey = relative_error(&got_y, &want_y);
            assert!(
                ey <= 1e-5,
                "{name} (bias {with_bias}): output relative error {ey}"
            );
            // The loss reads the output channels-last (as a ConvNeXt block's LayerNorm does),
            // so the output gradient arrives channels-last.
            let grads = y
                .permute([0, 2, 3, 1])
                .mul(channels_last(&gy, &gys))
                .sum()
                .backward();
            let dx = x_last.grad(&grads).unwrap();
            assert_eq!(dx.dims(), [xs[0], xs[2], xs[3], xs[1]]);
            let (dx, dw) = (values(dx), values(w_tensor.grad(&grads).unwrap()));
            let (gx, gxs) = fixture.get(name, "gx");
            let ex = relative_error(&dx, &to_nhwc(&gx, &gxs));
            let ew = relative_error(&dw, &fixture.get(name, "gw").0);
            assert!(
                ew <= 1e-5,
                "{name} (bias {with_bias}): weight gradient relative error {ew}"
            );
            assert!(
                ex <= 1e-5,
                "{name} (bias {with_bias}): input gradient relative error {ex}"
            );
            if with_bias {
                let db = values(b.grad(&grads).unwrap());
                let eb = relative_error(&db, &fixture.get(name, "gb").0);
                assert!(eb <= 1e-5, "{name}: bias gradient relative error {eb}");
            }
        }
    }
    assert!(covered >= 4, "{covered} depthwise cases");
}

/// A bias (our tracked op) and a grouping the kernels do not cover (two groups) still train:
/// the same values and gradients as burn's own `conv2d`.
#[test]
fn bias_and_other_groupings_match_burns_conv() {
    let device = Device::flex().autodiff();
    for groups in [1, 2] {
        let x = Tensor::<4>::random(
            [2, 4, 6, 5],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<4>::random(
            [6, 4 / groups, 3, 3],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let b = Tensor::<1>::random([6], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let opts = ConvOptions::new_with_padding([2, 1], [(1, 0), (1, 1)], [1, 1], groups);
        let run = |ours: bool| {
            let (x, w, b) = (
                x.clone().detach().require_grad(),
                w.clone().detach().require_grad(),
                b.clone().detach().require_grad(),
            );
            let y = if ours {
                train_ops::conv2d(x.clone(), w.clone(), Some(b.clone()), opts.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), Some(b.clone()), opts.clone())
            };
            let weights = Tensor::<4>::ones(y.dims(), &device).mul_scalar(0.5);
            let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
            let grads = y.mul(weights).sum().backward();
            (
                values,
                x.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                w.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                b.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            )
        };
        let (ours, burns) = (run(true), run(false));
        for (label, a, b) in [
            ("output", &ours.0, &burns.0),
            ("dx", &ours.1, &burns.1),
            ("dw", &ours.2, &burns.2),
            ("db", &ours.3, &burns.3),
        ] {
            let err = relative_error(a, b);
            assert!(
                err <= 1e-5,
                "groups {groups}, {label}: relative error {err}"
            );
        }
    }
}
