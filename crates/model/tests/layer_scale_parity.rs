//! ConvNeXt's layer scale and residual sum (`train_ops::layer_scale_residual`) against timm's
//! block (`shortcut + (x * gamma).permute(0, 3, 1, 2)`): values and the gradients of `x`,
//! `gamma` and the residual, from the kernels directly, through burn's autodiff on flex (the
//! residual NCHW, as after a downsampling convolution, and channels-last in memory, as the
//! stream between blocks) and in inference; each element within 1e-5 of the reference,
//! relative to max(|reference|, 1).
//!
//! Fixture: `tests/fixtures/layer_scale.safetensors`, from `tools/make_layer_scale_fixtures.py`.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::conv_kernels::ChannelOrder;
use visual_search_model::train_ops::{self, layer_scale_kernels};
use visual_search_model::weights::TensorFile;

use common::assert_close_each as assert_close;

const N: usize = 2;
const H: usize = 5;
const W: usize = 6;
const C: usize = 8;

fn fixture() -> TensorFile {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    TensorFile::open(&dir.join("tests/fixtures/layer_scale.safetensors")).unwrap()
}

/// NCHW values as NHWC.
fn channels_last(nchw: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; nchw.len()];
    for n in 0..N {
        for c in 0..C {
            for p in 0..H * W {
                out[(n * H * W + p) * C + c] = nchw[(n * C + c) * H * W + p];
            }
        }
    }
    out
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn kernels_match_timm() {
    let file = fixture();
    let get = |n: &str| file.read_f32(n).unwrap();
    let (x, gamma, residual) = (get("x"), get("gamma"), get("residual"));
    let want = channels_last(&get("y"));
    let plane = H * W;
    let first = layer_scale_kernels::forward(&x, &gamma, (&residual, ChannelOrder::First), plane);
    assert_close(&first, &want, "y, NCHW residual");
    let residual_last = channels_last(&residual);
    let last =
        layer_scale_kernels::forward(&x, &gamma, (&residual_last, ChannelOrder::Last), plane);
    assert_close(&last, &want, "y, channels-last residual");
    let g = layer_scale_kernels::backward(&x, &gamma, &channels_last(&get("gy")));
    assert_close(&g.x, &get("gx"), "x gradient");
    assert_close(&g.gamma, &get("ggamma"), "gamma gradient");
}

#[test]
fn flex_autodiff_matches_timm_for_both_residual_layouts() {
    let file = fixture();
    let get = |n: &str| file.read_f32(n).unwrap();
    let device = Device::flex().autodiff();
    for residual_last in [false, true] {
        let x =
            Tensor::<4>::from_data(TensorData::new(get("x"), [N, H, W, C]), &device).require_grad();
        let gamma =
            Tensor::<1>::from_data(TensorData::new(get("gamma"), [C]), &device).require_grad();
        // The leaf whose gradient is checked: NCHW, or NHWC seen as NCHW through a permute.
        let leaf = if residual_last {
            let r = channels_last(&get("residual"));
            Tensor::<4>::from_data(TensorData::new(r, [N, H, W, C]), &device).require_grad()
        } else {
            Tensor::<4>::from_data(TensorData::new(get("residual"), [N, C, H, W]), &device)
                .require_grad()
        };
        let residual = if residual_last {
            leaf.clone().permute([0, 3, 1, 2])
        } else {
            leaf.clone()
        };
        let y = train_ops::layer_scale_residual(x.clone(), gamma.clone(), residual);
        assert_close(&values(y.clone()), &get("y"), "y");
        let gy = Tensor::<4>::from_data(TensorData::new(get("gy"), [N, C, H, W]), &device);
        let grads = y.mul(gy).sum().backward();
        let what = if residual_last {
            "channels-last"
        } else {
            "NCHW"
        };
        let grad = |t: Tensor<4>| values(t.grad(&grads).unwrap());
        assert_close(&grad(x), &get("gx"), &format!("x gradient, {what}"));
        let ggamma = values(gamma.grad(&grads).unwrap());
        assert_close(&ggamma, &get("ggamma"), &format!("gamma gradient, {what}"));
        let gresidual = if residual_last {
            values(leaf.grad(&grads).unwrap().permute([0, 3, 1, 2]))
        } else {
            grad(leaf)
        };
        assert_close(
            &gresidual,
            &get("gresidual"),
            &format!("residual gradient, {what}"),
        );
    }
}

#[test]
fn flex_inference_matches_timm() {
    let file = fixture();
    let get = |n: &str| file.read_f32(n).unwrap();
    let device = Device::flex();
    let x = Tensor::<4>::from_data(TensorData::new(get("x"), [N, H, W, C]), &device);
    let gamma = Tensor::<1>::from_data(TensorData::new(get("gamma"), [C]), &device);
    let residual = Tensor::<4>::from_data(TensorData::new(get("residual"), [N, C, H, W]), &device);
    let y = train_ops::layer_scale_residual(x, gamma, residual);
    assert_eq!(y.dims(), [N, C, H, W]);
    assert_close(&values(y), &get("y"), "y");
}
