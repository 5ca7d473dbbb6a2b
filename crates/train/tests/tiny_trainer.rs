//! The trainer end to end on a tiny model and generated images, with no external data, so it
//! runs everywhere CI does: an ArcFace phase validates, checkpoints and resumes exactly where it
//! stopped; an XBM phase starts from its checkpoint; a config asking for bf16 is refused.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use visual_search_model::device::parse_device;
use visual_search_train::config::TrainConfig;
use visual_search_train::trainer::{TrainEvent, TrainOptions, TrainSummary, train};

const CLASSES: usize = 4;
const PER_CLASS: usize = 8;

/// `root/img/c{class}_{i}.png`: each class a colour with a stripe at its own place, plus noise.
/// Lists: train.csv (Product10K), gallery.csv and queries.csv (a dev set).
fn dataset(root: &Path) {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut state = 7u32;
    let mut noise = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 27) as u8
    };
    let (mut train, mut gallery, mut queries) = (
        String::from("name,class,group\n"),
        String::from("img_path,product_id\n"),
        String::from("img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\n"),
    );
    for c in 0..CLASSES {
        for i in 0..PER_CLASS {
            let base = [(c * 60) as u8, (255 - c * 50) as u8, ((c * 97) % 256) as u8];
            let img = RgbImage::from_fn(40, 40, |x, y| {
                let stripe = (y as usize / 10) == c && x > 5;
                let mut v = |b: u8| {
                    let b = if stripe { 255 - b } else { b };
                    b.saturating_add(noise())
                };
                Rgb([v(base[0]), v(base[1]), v(base[2])])
            });
            let name = format!("img/c{c}_{i}.png");
            img.save(root.join(&name)).unwrap();
            train.push_str(&format!("{name},{c},0\n"));
            if i == 0 {
                queries.push_str(&format!("{name},{c},,,,\n"));
            } else if i < 3 {
                gallery.push_str(&format!("{name},{c}\n"));
            }
        }
    }
    std::fs::write(root.join("train.csv"), train).unwrap();
    std::fs::write(root.join("gallery.csv"), gallery).unwrap();
    std::fs::write(root.join("queries.csv"), queries).unwrap();
}

fn config(root: &Path, head: &str, extra_optim: &str) -> TrainConfig {
    let text = format!(
        "
dataset:
  product10k:
    train_valid_root: {root}
    train_list: train.csv
  dev_set:
    eval_root: {root}
  input_size: 32
  batch_size: 8
  num_workers: 1
model:
  name: tiny_resnet
  dropout: 0.1
head:
{head}
optim:
  lr_head: 0.01
  backbone_lr_factor: 0.5
  warmup_steps: 2
  epochs: 2
{extra_optim}
eval:
  validations_per_epoch: 2
  top_k: 16
",
        root = root.display()
    );
    TrainConfig::parse(&text, Path::new("tiny.yml")).unwrap()
}

fn run(config: &TrainConfig, dir: &Path, resume: bool) -> (TrainSummary, Vec<f64>) {
    let options = TrainOptions {
        run_dir: dir.to_path_buf(),
        device: parse_device("flex").unwrap(),
        resume,
        validate_at_start: !resume,
    };
    let mut losses = Vec::new();
    let summary = train(config, &options, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            losses.push(loss);
        }
    })
    .unwrap();
    (summary, losses)
}

#[test]
fn a_tiny_phase_trains_checkpoints_and_resumes_exactly() {
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
}

#[test]
fn bf16_is_refused_until_it_is_implemented() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let c = config(data.path(), "  type: arcface", "  precision: bf16");
    let options = TrainOptions {
        run_dir: runs.path().join("bf16"),
        device: parse_device("flex").unwrap(),
        resume: false,
        validate_at_start: false,
    };
    let err = train(&c, &options, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("precision"), "{err}");
}
