//! `--dtype bf16` on flex: with AMX, an f32 model whose convolutions and linear layers multiply
//! in bf16 (f32 sums), its inverted-residual blocks keeping their expanded activations in bf16
//! (`train_ops::stored`). EfficientNet-Lite0 with its ImageNet weights on 32 grocery gallery
//! photos stays within cosine 0.999 of f32 per image, and no pairwise similarity moves by more
//! than 0.008 (the dev-set gate, mAP@1000 within 0.002, is measured in BENCHMARKS.md).
//! Without AMX, bf16 on flex is burn's bf16 tensors, which a process that already ran an f32
//! model on flex cannot switch to: the load must say so.
//!
//! With AMX, an f32 and a bf16 model loaded side by side each run their own precision, one
//! after the other and from two threads at once (the switch is process-wide; each forward
//! pass runs with its model's in force, and a switch waits for the passes running under the
//! other).
//!
//! Its own test binary: the matmul precision is process-wide.

mod common;

use common::{gallery_spread, lite0_pixels, lite0_weights_and_grocery};
use visual_search_inference::{DeviceChoice, InferenceModel, LoadOptions, ModelSource, Precision};
use visual_search_model::train_ops::{MatmulPrecision, matmul_precision, native_bf16};

fn load(
    weights: &std::path::Path,
    precision: Precision,
) -> visual_search_inference::Result<InferenceModel> {
    InferenceModel::load(
        &ModelSource::Registry {
            name: "efficientnet_lite0".into(),
            weights: Some(weights.to_path_buf()),
        },
        &LoadOptions {
            device: DeviceChoice::Burn("flex".into()),
            precision,
            quiet: true,
            ..LoadOptions::default()
        },
    )
}

fn embed(model: &InferenceModel, pixels: &[f32], n: usize) -> Vec<f32> {
    model.embed(pixels.to_vec(), n).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn lite0_bf16_products_keep_features_and_neighbours() {
    let Some((weights, grocery)) = lite0_weights_and_grocery() else {
        return;
    };
    let n = 32;
    let pixels = lite0_pixels(&gallery_spread(&grocery, n));

    let f32_model = load(&weights, Precision::F32).unwrap();
    let f32_rows = embed(&f32_model, &pixels, n);
    assert_eq!(matmul_precision(), MatmulPrecision::F32);
    if !native_bf16() {
        // Without AMX, bf16 on flex means burn's bf16 tensors, and burn fixes a device's float
        // type at its first tensor: after an f32 model, this process must refuse clearly.
        let refused = load(&weights, Precision::Bf16)
            .err()
            .expect("bf16 after f32 loaded");
        eprintln!("no AMX-BF16 on this CPU: {refused}");
        assert!(
            refused.to_string().contains("cannot compute in Bf16"),
            "{refused}"
        );
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
        return;
    }
    let bf16_model = load(&weights, Precision::Bf16).unwrap();
    // Loaded after it, the bf16 model must not change what the f32 model computes.
    assert_eq!(
        embed(&f32_model, &pixels, n),
        f32_rows,
        "the f32 model ran bf16 products after a bf16 model was loaded"
    );
    let bf16_rows = embed(&bf16_model, &pixels, n);
    assert_eq!(matmul_precision(), MatmulPrecision::Bf16);
    assert_eq!(embed(&f32_model, &pixels, n), f32_rows);
    assert_eq!(embed(&bf16_model, &pixels, n), bf16_rows);
    let dim = f32_rows.len() / n;
    let a: Vec<&[f32]> = f32_rows.chunks(dim).collect();
    let b: Vec<&[f32]> = bf16_rows.chunks(dim).collect();
    let worst = (0..n).map(|i| dot(a[i], b[i])).fold(1.0f32, f32::min);
    assert!(
        worst >= 0.999,
        "bf16 products: cosine to f32 down to {worst}"
    );
    assert!(
        a != b,
        "bf16 products gave exactly the f32 features: not in force"
    );
    let mut drift = 0.0f32;
    for i in 0..n {
        for j in 0..n {
            drift = drift.max((dot(a[i], a[j]) - dot(b[i], b[j])).abs());
        }
    }
    eprintln!("bf16 products: worst cosine to f32 {worst}, largest similarity change {drift}");
    assert!(drift <= 0.008, "similarities moved by {drift}");

    // Both models embedding at once on two threads: neither may run under the other's
    // precision (the switch waits for the running passes of the other precision).
    let few = 4;
    let pixels = &pixels[..few * pixels.len() / n];
    let alone = [
        embed(&f32_model, pixels, few),
        embed(&bf16_model, pixels, few),
    ];
    std::thread::scope(|scope| {
        for (model, want) in [&f32_model, &bf16_model].into_iter().zip(&alone) {
            scope.spawn(move || {
                for round in 0..6 {
                    assert!(
                        embed(model, pixels, few) == *want,
                        "round {round}: a model ran under the other's precision"
                    );
                }
            });
        }
    });
}
