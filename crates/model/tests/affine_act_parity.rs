//! The gradient before a ReLU/ReLU6, from the activation's output (what a convolution with a
//! folded frozen batch norm runs first in its backward pass), against PyTorch: with `z =
//! act(x · scale[c] + shift[c])`, masking the output gradient where `z` says the activation did
//! not pass and scaling it by `scale` gives PyTorch's gradient for `x`, and its channel sums
//! PyTorch's gradient for `shift`, within 1e-5 relative — at the activations' edges too.
//!
//! Fixture: `tests/fixtures/affine_act.safetensors`, from `tools/make_affine_act_fixtures.py`.

mod common;

use std::path::Path;

use common::relative_error;
use visual_search_model::train_ops::{Activation, activation_kernels};
use visual_search_model::weights::TensorFile;

const ACTIVATIONS: [(&str, Activation); 3] = [
    ("identity", Activation::Identity),
    ("relu", Activation::Relu),
    ("relu6", Activation::Relu6),
];

#[test]
fn masked_gradient_and_channel_sums_match_pytorch() {
    let file = TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/affine_act.safetensors"),
    )
    .unwrap();
    let get = |name: &str| file.read_f32(name).unwrap();
    let shape = file.entries["x"].shape.clone();
    let (channels, plane) = (shape[1], shape[2] * shape[3]);
    let scale = get("scale");
    let mut clipped = 0;
    for (name, activation) in ACTIVATIONS {
        let z = get(&format!("{name}.y"));
        clipped += z.iter().filter(|&&v| v == 0.0 || v == 6.0).count();
        let mut g = get("gy");
        let sums =
            activation_kernels::mask_pre_activation_grad(&z, &mut g, plane, channels, activation);
        let gx: Vec<f32> = g
            .iter()
            .enumerate()
            .map(|(i, v)| v * scale[(i / plane) % channels])
            .collect();
        let e = relative_error(&gx, &get(&format!("{name}.gx")));
        assert!(e <= 1e-5, "{name} dx: relative error {e}");
        let e = relative_error(&sums, &get(&format!("{name}.gshift")));
        assert!(e <= 1e-5, "{name} channel sums: relative error {e}");
    }
    assert!(
        clipped > 100,
        "the fixture reaches the activations' edges ({clipped})"
    );
}
