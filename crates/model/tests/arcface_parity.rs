//! Sub-centre ArcFace with dynamic margins against the PyTorch reference: loss and gradients.
//!
//! Fixture: `tests/fixtures/arcface_subcenter.safetensors`, from `tools/make_arcface_fixtures.py`.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::heads::arcface_subcenter::{
    ArcFaceLoss, ArcFaceSubcenter, dynamic_margins,
};
use visual_search_model::weights::TensorFile;

#[test]
fn loss_and_gradients_match_pytorch() {
    let file = TensorFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arcface_subcenter.safetensors"),
    )
    .unwrap();
    let get = |n: &str| (file.read_f32(n).unwrap(), file.entries[n].shape.clone());
    let device = Device::flex().autodiff();
    let (f, fs) = get("features");
    let (w, ws) = get("weight");
    let labels: Vec<usize> = get("labels").0.iter().map(|&v| v as usize).collect();
    let counts: Vec<usize> = get("counts").0.iter().map(|&v| v as usize).collect();
    let margins = dynamic_margins(&counts, 0.45, 0.05);
    for (a, b) in margins.iter().zip(get("margins").0) {
        assert!((a - b as f64).abs() < 1e-6, "margin {a} vs {b}");
    }

    let features = Tensor::<2>::from_data(TensorData::new(f, fs), &device).require_grad();
    let head = ArcFaceSubcenter {
        weight: Param::from_tensor(
            Tensor::from_data(TensorData::new(w, ws.clone()), &device).require_grad(),
        ),
        classes: 7,
        k: 3,
    };
    let loss_fn = ArcFaceLoss { margins, s: 30.0 };
    let loss = loss_fn.forward(head.cosine(features.clone()), &labels);
    let value: f32 = loss.clone().into_scalar::<f32>();
    let want = get("loss").0[0];
    assert!(
        (value - want).abs() <= 1e-5 * want.abs().max(1.0),
        "loss {value} vs {want}"
    );

    let grads = loss.backward();
    let check = |got: Vec<f32>, name: &str| {
        let want = get(name).0;
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5, "{name}: max difference {err}");
    };
    check(
        features
            .grad(&grads)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect(),
        "grad_features",
    );
    check(
        head.weight
            .val()
            .grad(&grads)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect(),
        "grad_weight",
    );
}
