//! `optim.precision: bf16` (f32 weights and optimizer state, bf16 products on AMX tiles): a tiny
//! ResNet's ArcFace phase follows the f32 loss curve step by step within 5 % (bf16 keeps 8
//! significant bits of each factor; the sums, norms, losses and the optimizer stay f32), and
//! really ran in bf16 (the curves differ). Without AMX the config is refused with a message
//! that says why.
//!
//! Its own test binary: the matmul precision is process-wide.

mod common;

use common::{config, dataset, run};
use visual_search_model::device::parse_device;
use visual_search_model::train_ops::native_bf16;
use visual_search_train::trainer::{TrainOptions, train};

#[test]
fn bf16_follows_the_f32_loss_curve() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let arcface = "  type: arcface\n  k: 2\n  s: 16.0";
    let bf16 = config(data.path(), arcface, "  precision: bf16");
    if !native_bf16() {
        let options = TrainOptions {
            run_dir: runs.path().join("bf16"),
            device: parse_device("flex").unwrap(),
            resume: false,
            validate_at_start: false,
        };
        let err = train(&bf16, &options, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("AMX"), "{err}");
        eprintln!("no AMX-BF16 on this CPU: bf16 training refused (checked)");
        return;
    }
    let (_, f32_losses) = run(
        &config(data.path(), arcface, ""),
        &runs.path().join("f32"),
        false,
    );
    let (summary, bf16_losses) = run(&bf16, &runs.path().join("bf16"), false);
    assert_eq!(summary.steps, 8);
    assert_eq!(bf16_losses.len(), f32_losses.len());
    let mut largest = 0.0f64;
    for (a, b) in bf16_losses.iter().zip(&f32_losses) {
        largest = largest.max((a - b).abs() / b.abs().max(1.0));
    }
    eprintln!("bf16 vs f32 losses: {bf16_losses:?} vs {f32_losses:?}, largest {largest:.2e}");
    assert!(largest <= 0.05, "bf16 left the f32 loss curve by {largest}");
    assert!(largest > 0.0, "identical curves: bf16 products did not run");
}
