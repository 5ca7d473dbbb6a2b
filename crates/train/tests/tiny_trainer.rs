//! The trainer end to end on a tiny model and generated images, with no external data, so it
//! runs everywhere CI does: an ArcFace phase validates, checkpoints and resumes exactly where it
//! stopped (and refuses to resume on a changed training list or model); an XBM phase starts from its
//! checkpoint; a new run in a finished run's folder and a config asking for f16 are refused (bf16: `bf16_training.rs`).

mod common;

use std::path::PathBuf;

use common::{config, dataset, flex_options, run};
use visual_search_train::trainer::{TrainEvent, train};

/// The device's random generator is process-wide (`device.seed`): two trainings at once in
/// this test binary would draw from it in turn and neither would be reproducible.
static ONE_TRAINING_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_tiny_phase_trains_checkpoints_and_resumes_exactly() {
    let _alone = ONE_TRAINING_AT_A_TIME.lock();
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let arcface = "  type: arcface\n  k: 2\n  s: 16.0";

    // Straight through: 32 images / 8 = 4 steps per epoch, 2 epochs.
    let straight = config(data.path(), arcface, "");
    let (summary, losses) = run(&straight, &runs.path().join("straight"), false);
    assert_eq!(summary.steps, 8);
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let first = summary.first_validation.unwrap();
    let last = summary.last_validation.unwrap();
    assert!(first.map_at_k.is_some() && last.map_at_k.is_some());
    assert!(summary.best_checkpoint.is_some());
    assert!(runs.path().join("straight/metrics.csv").is_file());

    // Stopped after 3 steps, then resumed: the same 8 losses as straight through.
    let stopped = config(data.path(), arcface, "  max_steps: 3");
    let dir: PathBuf = runs.path().join("resumed");
    let (s1, l1) = run(&stopped, &dir, false);
    assert_eq!(s1.steps, 3);
    let (s2, l2) = run(&straight, &dir, true);
    assert_eq!(s2.steps, 8);
    let resumed: Vec<f64> = l1.iter().chain(&l2).copied().collect();
    assert_eq!(resumed.len(), 8);
    for (a, b) in resumed.iter().zip(&losses) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{resumed:?} vs {losses:?}"
        );
    }

    // The last checkpoint damaged after it was written (one byte changed): `--resume` says so
    // and continues from the one before (step 2), giving the straight run's later losses.
    let dir = runs.path().join("damaged");
    run(&stopped, &dir, false);
    let weights = dir.join("checkpoints/step-0000003/embedder.bpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let err = visual_search_train::export::CheckpointEmbedder::load(
        &dir.join("checkpoints/step-0000003"),
        &visual_search_model::device::parse_device("flex").unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("embedder.bpk has changed"), "{err}");
    let (mut damaged, mut later) = (Vec::new(), Vec::new());
    let options = flex_options(&dir, true);
    train(&straight, &options, &mut |e| match e {
        TrainEvent::DamagedCheckpoint {
            path,
            reason,
            set_aside,
        } => damaged.push((path, reason, set_aside)),
        TrainEvent::Step { loss, .. } => later.push(loss),
        _ => {}
    })
    .unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert!(
        damaged[0].0.ends_with("step-0000003") && damaged[0].1.contains("embedder.bpk"),
        "{damaged:?}"
    );
    // Set aside, not deleted: out of what resuming, pruning and `best` look at.
    let aside = dir.join("checkpoints/damaged-step-0000003");
    assert_eq!(damaged[0].2.as_deref(), Some(aside.as_path()));
    assert_eq!(std::fs::read(aside.join("embedder.bpk")).unwrap(), bytes);
    assert!(
        visual_search_train::checkpoint::resolve_checkpoint(&dir).is_ok(),
        "the run's best is intact"
    );
    assert_eq!(later.len(), 6, "steps 3..=8 again");
    for (a, b) in later.iter().zip(&losses[2..]) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{later:?} vs {losses:?}"
        );
    }

    // An XBM phase from the ArcFace checkpoint (its head is dropped, its embedder kept).
    let best = summary.best_checkpoint.unwrap();
    let mut xbm = config(
        data.path(),
        "  type: xbm\n  memory_size: 64\n  margin: 0.5",
        "",
    );
    xbm.model.pretrain_model = Some(best);
    xbm.dataset.images_per_class = 2;
    let (sx, lx) = run(&xbm, &runs.path().join("xbm"), false);
    assert_eq!(sx.steps, 8);
    assert!(lx.iter().all(|l| l.is_finite()), "{lx:?}");

    // A new run in the folder of a finished one is refused, and the old run is left as it was.
    let metrics = std::fs::read(runs.path().join("straight/metrics.csv")).unwrap();
    let options = flex_options(&runs.path().join("straight"), false);
    let err = train(&straight, &options, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("holds a run already") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(runs.path().join("straight/metrics.csv")).unwrap(),
        metrics
    );
}

#[test]
fn resuming_with_a_changed_training_list_or_model_is_refused() {
    let _alone = ONE_TRAINING_AT_A_TIME.lock();
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let arcface = "  type: arcface\n  k: 2\n  s: 16.0";
    let stopped = config(data.path(), arcface, "  max_steps: 2");
    let dir = runs.path().join("run");
    run(&stopped, &dir, false);
    let list = data.path().join("train.csv");
    let original = std::fs::read_to_string(&list).unwrap();
    // A class added (its label unknown to the run's head: this panicked in the ArcFace loss),
    // and a list of the same length with two labels swapped (another epoch order).
    let first_row = original.lines().nth(1).unwrap();
    let added = format!("{original}{}\n", first_row.replace(",0,", ",99,"));
    let mut rows: Vec<String> = original.lines().map(String::from).collect();
    let last = rows.len() - 1;
    let (a, b) = (rows[1].clone(), rows[last].clone());
    let label = |r: &str| r.split(',').nth(1).unwrap().to_string();
    rows[1] = a.replacen(&format!(",{},", label(&a)), &format!(",{},", label(&b)), 1);
    rows[last] = b.replacen(&format!(",{},", label(&b)), &format!(",{},", label(&a)), 1);
    let swapped = rows.join("\n") + "\n";
    let more = config(data.path(), arcface, "  max_steps: 4");
    for (changed, expected) in [
        (added, "32 images then, 33 now"),
        (swapped, "labels are not the same"),
    ] {
        std::fs::write(&list, changed).unwrap();
        let err = train(&more, &flex_options(&dir, true), &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("the training list is not the one this run started with")
                && err.contains(expected),
            "{err}"
        );
    }
    // The list put back, a config that builds another model: refused too, naming the key.
    std::fs::write(&list, original).unwrap();
    let mut bigger = more.clone();
    bigger.dataset.input_size += 16;
    let err = train(&bigger, &flex_options(&dir, true), &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("dataset.input_size is") && err.contains("this run was trained with"),
        "{err}"
    );
    // Both as they were: the run goes on.
    let (summary, _) = run(&more, &dir, true);
    assert_eq!(summary.steps, 4);
}

#[test]
fn f16_is_refused() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let c = config(data.path(), "  type: arcface", "  precision: f16");
    let options = flex_options(&runs.path().join("f16"), false);
    let err = train(&c, &options, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("precision f16"), "{err}");
}
