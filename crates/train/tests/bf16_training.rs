//! `optim.precision: bf16` (f32 weights and optimizer state, bf16 products), over 50 steps of a
//! tiny ResNet's ArcFace phase against f32: over the first 20 steps each 5-step mean loss is
//! within 2 % of f32's (bf16 keeps 8 significant bits of each factor; the sums, norms, losses
//! and the optimizer stay f32); after that the two runs drift apart as any two runs with
//! different rounding do, so over the last 10 steps bf16's mean loss must be at most 15 % above
//! f32's, with both below 60 % of where they started. And bf16 really ran (the curves differ).
//!
//! On flex the products run on AMX tiles; without AMX the config is refused with a message that
//! says why. In a `--features tch` build the same curve is checked on tch, where bf16 is casts
//! around libtorch's operations (`train_ops::bf16_casts`).
//!
//! Its own test binary: the matmul precision is process-wide.

mod common;

use common::{config, dataset, flex_options, run_on};
use visual_search_model::train_ops::native_bf16;
use visual_search_train::config::TrainConfig;
use visual_search_train::trainer::train;

const ARCFACE: &str = "  type: arcface\n  k: 2\n  s: 16.0";

/// The generated dataset, a folder for the runs, and the bf16 config on that dataset.
fn bf16_setup() -> (tempfile::TempDir, tempfile::TempDir, TrainConfig) {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let bf16 = config(data.path(), ARCFACE, "  precision: bf16");
    (data, runs, bf16)
}

#[test]
fn bf16_follows_the_f32_loss_curve() {
    let (data, runs, bf16) = bf16_setup();
    if !native_bf16() {
        let options = flex_options(&runs.path().join("bf16"), false);
        let err = train(&bf16, &options, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("AMX"), "{err}");
        eprintln!("no AMX-BF16 on this CPU: bf16 training refused (checked)");
        return;
    }
    follows_the_f32_curve("flex", data.path(), runs.path(), bf16);
}

/// The same curve on tch: bf16 casts around libtorch's convolutions and matmuls.
#[cfg(feature = "tch")]
#[test]
fn bf16_on_tch_follows_the_f32_loss_curve() {
    let (data, runs, bf16) = bf16_setup();
    follows_the_f32_curve("tch", data.path(), runs.path(), bf16);
}

fn follows_the_f32_curve(
    device: &str,
    data: &std::path::Path,
    runs: &std::path::Path,
    bf16: TrainConfig,
) {
    // 32 images in batches of 8: 13 epochs, stopped at 50 steps.
    let fifty = |mut c: TrainConfig| {
        c.optim.epochs = 13;
        c.optim.max_steps = Some(50);
        c.eval.validations_per_epoch = 1;
        c
    };
    let (_, f32_losses) = run_on(
        device,
        &fifty(config(data, ARCFACE, "")),
        &runs.join("f32"),
        false,
    );
    let (summary, bf16_losses) = run_on(device, &fifty(bf16), &runs.join("bf16"), false);
    assert_eq!(summary.steps, 50);
    assert_eq!(bf16_losses.len(), f32_losses.len());
    eprintln!("{device}: bf16 vs f32 losses: {bf16_losses:?} vs {f32_losses:?}");
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let mut early = 0.0f64;
    for (a, b) in bf16_losses[..20].chunks(5).zip(f32_losses[..20].chunks(5)) {
        early = early.max((mean(a) - mean(b)).abs() / mean(b));
    }
    assert!(
        early <= 0.02,
        "bf16 left the f32 loss curve by {early} in 20 steps"
    );
    assert!(early > 0.0, "identical curves: bf16 products did not run");
    let (first, last_f32, last_bf16) = (
        mean(&f32_losses[..5]),
        mean(&f32_losses[40..]),
        mean(&bf16_losses[40..]),
    );
    assert!(
        last_f32 < 0.6 * first && last_bf16 < 0.6 * first,
        "the tiny phase did not learn: {first} → f32 {last_f32}, bf16 {last_bf16}"
    );
    assert!(
        last_bf16 <= 1.15 * last_f32,
        "bf16 learned less: last 10 steps {last_bf16} vs f32 {last_f32}"
    );
}
