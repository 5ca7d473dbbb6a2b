//! What the trainer tests share: a tiny generated dataset (4 classes of striped colour
//! images), a tiny-ResNet config for it, and a run on flex that records every step's loss.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;

use image::{Rgb, RgbImage};
use visual_search_model::device::parse_device;
use visual_search_train::config::TrainConfig;
use visual_search_train::trainer::{TrainEvent, TrainOptions, TrainSummary, train};

pub const CLASSES: usize = 4;
pub const PER_CLASS: usize = 8;

/// `root/img/c{class}_{i}.png`: each class a colour with a stripe at its own place, plus noise.
/// Lists: train.csv (Product10K), gallery.csv and queries.csv (a dev set).
pub fn dataset(root: &Path) {
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

pub fn config(root: &Path, head: &str, extra_optim: &str) -> TrainConfig {
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

/// Options for a run on flex in `dir`.
pub fn flex_options(dir: &Path, resume: bool) -> TrainOptions {
    options_on("flex", dir, resume)
}

/// Options for a run on `device` in `dir`.
pub fn options_on(device: &str, dir: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        run_dir: dir.to_path_buf(),
        device: parse_device(device).unwrap(),
        resume,
        validate_at_start: !resume,
        group: None,
    }
}

/// A run on flex: its summary and step losses.
pub fn run(config: &TrainConfig, dir: &Path, resume: bool) -> (TrainSummary, Vec<f64>) {
    run_on("flex", config, dir, resume)
}

/// [`run`] on `device`.
pub fn run_on(
    device: &str,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
) -> (TrainSummary, Vec<f64>) {
    let options = options_on(device, dir, resume);
    let mut losses = Vec::new();
    let summary = train(config, &options, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            losses.push(loss);
        }
    })
    .unwrap();
    (summary, losses)
}
