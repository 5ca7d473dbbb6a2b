//! `train`, `--resume` after SIGKILL, a non-finite loss, and `export` on a small cut of the
//! grocery data with a tiny ConvNeXt (fast enough for the test suite); `bench train`'s step
//! and its split by kind of operation on the same model.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{bin, run_ok};

/// A Product10K + dev-set root of `n` training images and a 12 x 24 dev set, reaching the
/// grocery images through symlinks.
fn small_dataset(dir: &Path, grocery: &Path, n: usize) -> PathBuf {
    let root = dir.join("data");
    std::fs::create_dir_all(&root).unwrap();
    for sub in ["train", "val", "test", "iconic-images-and-descriptions"] {
        std::os::unix::fs::symlink(grocery.join(sub), root.join(sub)).unwrap();
    }
    let head = |name: &str, n: usize, step: usize| -> String {
        let text = std::fs::read_to_string(grocery.join(name)).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap().to_string();
        let rows: Vec<&str> = lines.step_by(step).take(n).collect();
        format!("{header}\n{}\n", rows.join("\n"))
    };
    std::fs::write(root.join("train.csv"), head("train.csv", n, 5)).unwrap();
    std::fs::write(
        root.join("test_kaggletest.csv"),
        head("test_kaggletest.csv", 30, 40),
    )
    .unwrap();
    std::fs::write(root.join("queries.csv"), head("queries.csv", 12, 90)).unwrap();
    std::fs::write(root.join("gallery.csv"), head("gallery.csv", 24, 60)).unwrap();
    root
}

/// `train` arguments for a new run on the CPU without the initial validation.
fn train_args<'a>(cfg: &'a str, runs: &'a str, name: &'a str) -> [&'a str; 10] {
    [
        "train",
        "--config",
        cfg,
        "--runs-dir",
        runs,
        "--name",
        name,
        "--device",
        "flex",
        "--no-initial-eval",
    ]
}

/// A temporary folder with a grocery cut of `n` training images, or `None` (reported as
/// skipped) when the grocery data is not on this machine.
fn grocery_cut(n: usize) -> Option<(tempfile::TempDir, PathBuf)> {
    let Some(grocery) = visual_search_data::datasets::locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = small_dataset(dir.path(), &grocery, n);
    Some((dir, root))
}

const ARCFACE: &str = "  s: 30.0";

/// A phase config; `head` is the body of its `head:` section.
fn config(root: &Path, steps: usize, head: &str) -> String {
    format!(
        "dataset:
  product10k:
    train_valid_root: {root}
    train_list: train.csv
    val_list: test_kaggletest.csv
  dev_set:
    eval_root: {root}
  seed: 7
  input_size: 32
  batch_size: 8
  augmentations: default
  num_workers: 2
model:
  name: tiny_convnext
head:
{head}
optim:
  lr_head: 0.003
  backbone_lr_factor: 1.0
  warmup_steps: 4
  epochs: 3
  max_steps: {steps}
eval:
  validations_per_epoch: 4
  keep_best: 2
",
        root = root.display()
    )
}

fn losses(run: &Path) -> Vec<(usize, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            Some((c[0].parse().ok()?, c[2].parse().ok()?))
        })
        .collect()
}

fn last_step(run: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(run.join("last")).ok()?;
    text.trim().rsplit('-').next()?.parse().ok()
}

/// Starts `train` and SIGKILLs it once a checkpoint at `min_step` or later exists (before
/// `total` steps); returns the run folder.
fn train_until_killed(cfg: &str, runs: &str, name: &str, min_step: usize, total: usize) -> PathBuf {
    let run = Path::new(runs).join(name);
    let mut child = bin()
        .args(train_args(cfg, runs, name))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while last_step(&run).is_none_or(|s| s < min_step) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it trains, a second `train` on its folder is refused at once.
    let second = bin()
        .args([
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--device",
            "flex",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && stderr.contains("another process is running training"),
        "{stderr}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the run ended early");
    child.kill().unwrap(); // SIGKILL: the lock goes with the process
    child.wait().unwrap();
    let at_kill = last_step(&run).unwrap();
    assert!(at_kill < total, "killed too late to test anything");
    run
}

/// Resumes `run` to the end and checks every step's loss against the uninterrupted run.
fn resume_and_compare(run: &Path, reference: &[(usize, f64)], total: usize) {
    let text = run_ok(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--device",
        "flex",
    ]);
    assert!(text.contains("resumed"), "{text}");
    let resumed = losses(run);
    let steps: Vec<usize> = resumed.iter().map(|r| r.0).collect();
    assert_eq!(
        steps,
        (1..=total).collect::<Vec<_>>(),
        "every step exactly once, up to the same count"
    );
    for ((s, a), (_, b)) in resumed.iter().zip(reference) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "step {s}: loss {a} after resume vs {b} uninterrupted"
        );
    }
}

#[test]
fn sigkill_then_resume_continues_the_same_run() {
    // 12 batches per epoch, a checkpoint every 3 steps.
    let Some((dir, root)) = grocery_cut(96) else {
        return;
    };
    let cfg = dir.path().join("phase.yml");
    std::fs::write(&cfg, config(&root, 30, ARCFACE)).unwrap();
    let runs = dir.path().join("runs");
    let (runs_s, cfg_s) = (runs.to_str().unwrap(), cfg.to_str().unwrap());

    // The reference: an uninterrupted run.
    run_ok(&train_args(cfg_s, runs_s, "straight"));
    let reference = losses(&runs.join("straight"));
    assert_eq!(reference.last().unwrap().0, 30);
    for plot in ["loss.png", "lr.png", "map.png"] {
        let bytes = std::fs::read(runs.join("straight").join(plot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 1000,
            "{plot}"
        );
    }

    // The same run, killed once it has a checkpoint past step 9, then resumed.
    let killed = train_until_killed(cfg_s, runs_s, "killed", 9, 30);
    resume_and_compare(&killed, &reference, 30);

    // export → eval --model-dir gives the run's final validation mAP.
    let model_dir = dir.path().join("model");
    run_ok(&[
        "export",
        "--checkpoint",
        killed
            .join("last")
            .parent()
            .unwrap()
            .join(format!("checkpoints/step-{:07}", 30))
            .to_str()
            .unwrap(),
        "--out",
        model_dir.to_str().unwrap(),
    ]);
    let eval = run_ok(&[
        "eval",
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--dataset-dir",
        root.to_str().unwrap(),
        "--device",
        "flex",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(eval.lines().last().unwrap()).unwrap();
    let metrics = std::fs::read_to_string(killed.join("metrics.csv")).unwrap();
    let last_map: f64 = metrics
        .lines()
        .rev()
        .find_map(|l| l.split(',').nth(5).and_then(|v| v.parse().ok()))
        .unwrap();
    assert!(
        (json["map_at_k"].as_f64().unwrap() - last_map).abs() < 1e-6,
        "{json} vs {last_map}"
    );
}

/// An XBM phase starting from an ArcFace checkpoint, on the grocery cut plus a mined-pair list
/// (the test photos, labels offset by 1000); a 20-row memory wraps around every few steps and
/// is used from step 3. Killed and resumed, it must repeat the uninterrupted run's losses, which
/// it can only do if the memory was saved and restored exactly.
#[test]
fn xbm_phase_from_an_arcface_checkpoint_resumes_with_its_memory() {
    let Some((dir, root)) = grocery_cut(96) else {
        return;
    };
    let runs = dir.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let arc_cfg = dir.path().join("arc.yml");
    std::fs::write(&arc_cfg, config(&root, 6, ARCFACE)).unwrap();
    run_ok(&train_args(arc_cfg.to_str().unwrap(), runs_s, "arc"));

    let val = std::fs::read_to_string(root.join("test_kaggletest.csv")).unwrap();
    let pairs: Vec<String> = val
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            format!("{},{}", c[0], c[1])
        })
        .collect();
    let pairs_csv = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs_csv,
        format!("image_path,label\n{}\n", pairs.join("\n")),
    )
    .unwrap();
    let xbm = config(
        &root,
        16,
        "  type: xbm\n  memory_size: 20\n  start_iteration: 2",
    )
    .replace(
        "  num_workers: 2\n",
        &format!(
            "  num_workers: 2\n  mined_pairs:\n    - csv: {}\n      root: {}\n      label_offset: 1000\n",
            pairs_csv.display(),
            root.display()
        ),
    )
    .replace(
        "  name: tiny_convnext\n",
        &format!(
            "  name: tiny_convnext\n  pretrain_model: {}\n",
            runs.join("arc").display()
        ),
    );
    let cfg = dir.path().join("xbm.yml");
    std::fs::write(&cfg, xbm).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let text = run_ok(&train_args(cfg_s, runs_s, "straight"));
    assert!(
        text.contains("126 training images") && text.contains("XBM memory: 20 rows"),
        "{text}"
    );
    let straight = runs.join("straight");
    let reference = losses(&straight);
    assert_eq!(reference.len(), 16);
    assert!(reference.iter().all(|r| r.1.is_finite() && r.1 > 0.0));
    let last = straight.join(
        std::fs::read_to_string(straight.join("last"))
            .unwrap()
            .trim(),
    );
    assert!(last.join("xbm_memory.safetensors").is_file());
    assert!(!last.join("head.bpk").exists(), "XBM phases have no head");

    let killed = train_until_killed(cfg_s, runs_s, "killed", 6, 16);
    resume_and_compare(&killed, &reference, 16);
}

#[test]
fn a_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint() {
    let Some((dir, root)) = grocery_cut(48) else {
        return;
    };
    let cfg = dir.path().join("nan.yml");
    // A logit scale beyond f32's range makes the logits infinite and the loss NaN at step 1.
    std::fs::write(
        &cfg,
        config(&root, 10, ARCFACE).replace("s: 30.0", "s: 1.0e39"),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let out = bin()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--runs-dir",
            runs.to_str().unwrap(),
            "--device",
            "flex",
            "--no-initial-eval",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("not finite") && text.contains("step 1"),
        "{text}"
    );
    assert!(
        !runs.join("nan/last").exists(),
        "nothing may be saved from a diverged step"
    );
}

/// A run of base port `port` … `port + world` that nothing listens on.
fn free_ports(world: u16) -> u16 {
    (0..200)
        .map(|i| 20_000 + (std::process::id() as u16 % 20_000) + i * 17)
        .find(|&base| {
            (0..=world).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok())
        })
        .expect("free ports on 127.0.0.1")
}

/// Two processes on 127.0.0.1 (`--world-size 2`) train the run one process trains: the same
/// loss at every step, rank 0 writing the checkpoints and rank 1 only its log. Dropout is off,
/// since each share draws its own masks (as in PyTorch's DDP).
#[test]
fn two_processes_train_what_one_process_trains() {
    let Some((dir, root)) = grocery_cut(48) else {
        return;
    };
    let text = config(&root, 6, ARCFACE).replace(
        "model:\n  name: tiny_convnext\n",
        "model:\n  name: tiny_convnext\n  dropout: 0.0\n",
    );
    assert!(text.contains("dropout: 0.0"));
    let cfg = dir.path().join("ddp.yml");
    std::fs::write(&cfg, text).unwrap();
    let runs = dir.path().join("runs");
    let (cfg, runs_s) = (cfg.to_str().unwrap(), runs.to_str().unwrap());
    run_ok(&train_args(cfg, runs_s, "one"));

    let master = format!("127.0.0.1:{}", free_ports(2));
    // Each rank's output is read on its own thread: a rank blocked on a full pipe would stall
    // the group.
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let child = bin()
                .args(train_args(cfg, runs_s, "two"))
                .args(["--world-size", "2", "--rank", &rank.to_string()])
                .args(["--master", &master, "--group-timeout-s", "120"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::spawn(move || child.wait_with_output().unwrap())
        })
        .collect();
    for (rank, waiter) in ranks.into_iter().enumerate() {
        let out = waiter.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rank {rank}: {text}");
        assert!(
            text.contains(&format!("rank {rank} of 2: joined")),
            "{text}"
        );
    }
    let one = losses(&runs.join("one"));
    let two = losses(&runs.join("two"));
    assert_eq!(one.len(), 6, "{one:?}");
    assert_eq!(
        one.iter().map(|l| l.0).collect::<Vec<_>>(),
        two.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    for ((step, a), (_, b)) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "step {step}: one process {a}, two processes {b}\n{one:?}\n{two:?}"
        );
    }
    // Rank 0 wrote the checkpoints; rank 1 its own log and nothing else.
    assert_eq!(last_step(&runs.join("two")), Some(6));
    assert_eq!(losses(&runs.join("two/ranks/1")), two);
    let rank1: Vec<_> = std::fs::read_dir(runs.join("two/ranks/1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(rank1, vec!["metrics.csv".to_string()], "{rank1:?}");
}

#[test]
fn bench_train_splits_a_flex_step_by_kind_of_operation() {
    let Some((_dir, root)) = grocery_cut(8) else {
        return;
    };
    let out = run_ok(&[
        "bench",
        "train",
        "--models",
        "tiny_convnext",
        "--devices",
        "flex",
        "--no-baseline",
        "--batch",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--dataset-dir",
        root.to_str().unwrap(),
    ]);
    let title = "tiny_convnext visual-search flex f32, per step by kind of operation";
    let profile = out.split(title).nth(1).unwrap_or_else(|| panic!("{out}"));
    // Calls per step, forward and backward together: 5 blocks (a depthwise convolution, a
    // LayerNorm, two linear layers, a GELU and the layer scale each), the stem and three downsampling layers
    // (a convolution and a LayerNorm each), the final LayerNorm.
    for (operation, calls) in [
        ("depthwise conv", 10),
        ("k×k conv", 8),
        ("GELU", 10),
        ("LayerNorm", 20),
        ("linear", 20),
        ("layer scale + residual", 10),
    ] {
        let line = profile
            .lines()
            .find(|l| l.starts_with(operation))
            .unwrap_or_else(|| panic!("no {operation} row:\n{profile}"));
        let counted = line[operation.len()..]
            .split_whitespace()
            .find_map(|w| w.parse::<u64>().ok());
        assert_eq!(counted, Some(calls), "{line}");
    }
    for row in ["AdamW update", "the rest: burn's operations", "whole step"] {
        assert!(
            profile.lines().any(|l| l.starts_with(row)),
            "{row}:\n{profile}"
        );
    }
    assert!(!profile.contains("batch norm"), "{profile}");
}
