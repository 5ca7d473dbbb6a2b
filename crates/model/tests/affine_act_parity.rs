//! The fused per-channel affine + activation (frozen batch norm + ReLU/ReLU6) against PyTorch:
//! values and the gradients for x, scale and shift, called directly and through burn's autodiff
//! on flex, within 1e-5 relative.
//!
//! Fixture: `tests/fixtures/affine_act.safetensors`, from `tools/make_affine_act_fixtures.py`.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::train_ops::{self, Activation, affine_kernels};
use visual_search_model::weights::TensorFile;

const ACTIVATIONS: [(&str, Activation); 3] = [
    ("identity", Activation::Identity),
    ("relu", Activation::Relu),
    ("relu6", Activation::Relu6),
];

fn fixture() -> TensorFile {
    TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/affine_act.safetensors"),
    )
    .unwrap()
}

fn get(file: &TensorFile, name: &str) -> (Vec<f32>, Vec<usize>) {
    (
        file.read_f32(name).unwrap(),
        file.entries[name].shape.clone(),
    )
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff / scale <= 1e-5,
        "{what}: relative error {}",
        diff / scale
    );
}

#[test]
fn kernels_match_pytorch() {
    let file = fixture();
    let (x, xs) = get(&file, "x");
    let (scale, _) = get(&file, "scale");
    let (shift, _) = get(&file, "shift");
    let (gy, _) = get(&file, "gy");
    let plane = xs[2] * xs[3];
    for (name, activation) in ACTIVATIONS {
        let y = affine_kernels::forward(&x, &scale, &shift, plane, activation);
        assert_close(
            &y,
            &get(&file, &format!("{name}.y")).0,
            &format!("{name} y"),
        );
        let g = affine_kernels::backward(&x, &scale, &shift, &gy, plane, activation);
        assert_close(
            &g.x,
            &get(&file, &format!("{name}.gx")).0,
            &format!("{name} dx"),
        );
        let want = get(&file, &format!("{name}.gscale")).0;
        assert_close(&g.scale, &want, &format!("{name} dscale"));
        let want = get(&file, &format!("{name}.gshift")).0;
        assert_close(&g.shift, &want, &format!("{name} dshift"));
    }
}

#[test]
fn autodiff_on_flex_matches_pytorch() {
    let file = fixture();
    let device = Device::flex().autodiff();
    let tensor4 = |name: &str| {
        let (v, s) = get(&file, name);
        Tensor::<4>::from_data(TensorData::new(v, s), &device)
    };
    let tensor1 = |name: &str| {
        let (v, s) = get(&file, name);
        Tensor::<1>::from_data(TensorData::new(v, s), &device).require_grad()
    };
    for (name, activation) in ACTIVATIONS {
        let x = tensor4("x").require_grad();
        let (scale, shift) = (tensor1("scale"), tensor1("shift"));
        let y = train_ops::channel_affine(x.clone(), scale.clone(), shift.clone(), activation);
        let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
        assert_close(&values, &get(&file, &format!("{name}.y")).0, name);
        let grads = y.mul(tensor4("gy")).sum().backward();
        let vec4 = |t: Option<Tensor<4>>| t.unwrap().into_data().try_to_vec::<f32>().unwrap();
        let vec1 = |t: Option<Tensor<1>>| t.unwrap().into_data().try_to_vec::<f32>().unwrap();
        let want = |g: &str| get(&file, &format!("{name}.{g}")).0;
        assert_close(&vec4(x.grad(&grads)), &want("gx"), &format!("{name} dx"));
        assert_close(
            &vec1(scale.grad(&grads)),
            &want("gscale"),
            &format!("{name} dscale"),
        );
        assert_close(
            &vec1(shift.grad(&grads)),
            &want("gshift"),
            &format!("{name} dshift"),
        );
    }
}
