//! The XBM step (enqueue the batch into the cross-batch memory, then
//! `Contrastive(x, x) + w · Contrastive(x, memory)`) against the XBM reference code and
//! pytorch-metric-learning's `CrossBatchMemory`: memory contents after a wrap-around, loss, and
//! the gradient with respect to the raw (un-normalised) features.
//!
//! Fixture: `tests/fixtures/xbm_contrastive.*`, from `tools/make_xbm_fixtures.py`.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use visual_search_model::embedder::l2_normalize;
use visual_search_model::losses::contrastive::ContrastiveLoss;
use visual_search_model::losses::xbm::{CrossBatchMemory, MemorySnapshot, xbm_loss};
use visual_search_model::weights::TensorFile;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn memory_loss_and_gradient_match_the_references() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let file = TensorFile::open(&dir.join("xbm_contrastive.safetensors")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("xbm_contrastive.json")).unwrap())
            .unwrap();
    let get = |n: &str| (file.read_f32(n).unwrap(), file.entries[n].shape.clone());
    let ints = |n: &str| -> Vec<i64> { get(n).0.iter().map(|&v| v as i64).collect() };
    let capacity = meta["capacity"].as_u64().unwrap() as usize;
    let device = Device::flex().autodiff();

    let (before, shape) = get("memory_before");
    let dim = shape[1];
    let mut memory = CrossBatchMemory::restore(
        &MemorySnapshot {
            capacity,
            dim,
            next: meta["next_before"].as_u64().unwrap() as usize,
            feats: before,
            labels: ints("memory_labels_before"),
        },
        &device,
    )
    .unwrap();

    let (x, xs) = get("x");
    let b = xs[0];
    let x = Tensor::<2>::from_data(TensorData::new(x, xs), &device).require_grad();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(ints("labels"), [b]), &device);
    let xn = l2_normalize(x.clone());
    let loss_fn = ContrastiveLoss {
        margin: meta["margin"].as_f64().unwrap(),
    };
    let weight = meta["weight"].as_f64().unwrap();
    let loss = xbm_loss(
        &loss_fn,
        &mut memory,
        xn.clone(),
        labels.clone(),
        weight,
        true,
    );

    let after = memory.snapshot();
    assert_eq!(after.next, meta["next_after"].as_u64().unwrap() as usize);
    assert_eq!(after.labels, ints("memory_labels_after"));
    let err = max_diff(&after.feats, &get("memory_after").0);
    assert!(err <= 1e-6, "memory contents differ by {err}");

    // The two terms separately, against the memory as it now is.
    let (mem_feats, mem_labels) = memory.contents().unwrap();
    let batch = loss_fn.forward(xn.clone(), labels.clone(), xn.clone(), labels.clone());
    let against_memory = loss_fn.forward(xn, labels, mem_feats, mem_labels);
    for (got, key) in [
        (batch, "loss_batch"),
        (against_memory, "loss_memory"),
        (loss.clone(), "loss"),
    ] {
        let (got, want) = (got.into_scalar::<f32>(), meta[key].as_f64().unwrap() as f32);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{key}: {got} vs {want}"
        );
    }
    // PML's loss counts hard negatives as s - 0.5 and sums: the same loss once that is undone.
    let pml = (meta["pml_loss_sum"].as_f64().unwrap()
        + 0.5 * meta["hard_negatives"].as_f64().unwrap())
        / b as f64;
    assert!((pml - meta["loss"].as_f64().unwrap()).abs() < 1e-5);

    let grads = loss.backward();
    let got: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
    for name in ["grad_x", "pml_grad_x_over_b"] {
        let err = max_diff(&got, &get(name).0);
        assert!(err <= 1e-5, "{name}: max difference {err}");
    }
}
