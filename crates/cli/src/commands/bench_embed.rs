//! `visual-search bench embed`: model throughput on each compiled backend against PyTorch eager
//! on the same weights and the same preprocessed images, measured in the same run by
//! `tools/bench_embed_torch.py`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use visual_search_data::datasets::locate_grocery;
use visual_search_data::formats::product10k::{parse_product10k, product10k_samples};
use visual_search_data::transform::EvalTransform;
use visual_search_model::device::compiled_backends;
use visual_search_model::registry::{ModelSpec, lookup};

use super::bench_preprocess::{baseline_json, baseline_python, tools_dir};
use crate::args::model::{DeviceArgs, ModelArgs, Precision};
use crate::table;

/// Times `embed` (forward + L2 normalisation, no preprocessing) on one batch of real photos,
/// best of several passes after a warm-up, on every requested engine (default: every compiled
/// backend, plus ONNX Runtime when its library is found), then, on the same batch and weights,
/// the baselines a PyTorch user would run instead: eager, BN-folded channels-last, and Python
/// ONNX Runtime on PyTorch's own ONNX export. Prints every ratio and PyTorch's top ops.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "efficientnet_lite0")]
    model: String,
    /// Pretrained weights (used on both sides; random weights otherwise).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch: usize,
    /// Timed passes (the best is kept).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Rounds: every engine and the baselines take turns this many times, and each keeps its
    /// best round. On a machine whose speed drifts (a shared VM), more rounds keep the drift
    /// from landing on one side of a ratio.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Backends to time [default: every compiled one: flex, tch, ...].
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Precisions of our engines, each timed on every device that runs it; with bf16 the
    /// baselines add PyTorch's bf16 autocast.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<Precision>,
    #[command(flatten)]
    photos: PhotoBenchArgs,
}

/// Where the photos and the PyTorch baseline of a model benchmark come from.
#[derive(clap::Args)]
pub(super) struct PhotoBenchArgs {
    /// Dataset root with the photos (train.csv) [default: the bundled grocery set].
    #[arg(long)]
    pub dataset_dir: Option<PathBuf>,
    /// Python with torch, timm and open_clip [default: $VISUAL_SEARCH_PYTHON or python3].
    #[arg(long)]
    pub python: Option<String>,
    /// Time our engines only.
    #[arg(long)]
    pub no_baseline: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = lookup(&args.model)?;
    let size = args.size.unwrap_or(spec.input_size);
    let input = photo_batch(args.photos.dataset_dir.as_deref(), &spec, size, args.batch)?;

    let devices = if args.devices.is_empty() {
        let mut d: Vec<String> = compiled_backends().into_iter().map(String::from).collect();
        if visual_search_inference::ort_runtime::available() {
            d.push("ort".into());
        }
        d
    } else {
        args.devices.clone()
    };
    let mut engines = Vec::new();
    let bf16 = args.dtypes.contains(&Precision::Bf16);
    for (device, dtype) in devices
        .iter()
        .flat_map(|d| args.dtypes.iter().map(move |&p| (d, p)))
    {
        let loaded = ModelArgs {
            model: Some(args.model.clone()),
            model_dir: None,
            weights: args.weights.clone(),
            size: Some(size),
            device: DeviceArgs {
                device: device.clone(),
                dtype,
            },
        }
        .load();
        let loaded = match loaded {
            Ok(m) => m,
            Err(e) if dtype != Precision::F32 => {
                // burn fixes a device's float type at its first tensor, so a burn device that
                // loaded another dtype in this process cannot load this one.
                let prefix = format!("{device} ");
                let burn_device = !device.starts_with("ort");
                let hint = if burn_device
                    && engines
                        .iter()
                        .any(|(n, _): &(String, _)| n.starts_with(&prefix))
                {
                    format!(
                        "; a process of its own times it: `bench embed --devices {device} \
                         --dtypes {}`",
                        dtype.name()
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "{device} {}: not timed ({}){hint}",
                    dtype.name(),
                    crate::error_report::error_line(&e)
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        engines.push((format!("{device} {}", dtype.name()), loaded));
    }

    let rounds = args.rounds.max(1);
    let mut results: Vec<(String, f64)> = engines.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
    let mut baseline: Option<serde_json::Value> = None;
    let mut with_baseline = !args.photos.no_baseline;
    for _ in 0..rounds {
        for ((_, loaded), (_, images_per_s)) in engines.iter().zip(&mut results) {
            let run_once = || -> anyhow::Result<f64> {
                let t = Instant::now();
                loaded.embed(input.clone(), args.batch)?;
                Ok(t.elapsed().as_secs_f64())
            };
            run_once()?;
            let mut best = f64::INFINITY;
            for _ in 0..args.iters.max(1) {
                best = best.min(run_once()?);
            }
            *images_per_s = images_per_s.max(args.batch as f64 / best);
        }
        if with_baseline {
            match run_baseline(&args, &input, size) {
                Ok(b) => baseline = Some(best_of(baseline, b)),
                Err(e) => {
                    eprintln!(
                        "baseline unavailable ({}); printing our figures only",
                        crate::error_report::error_line(&e)
                    );
                    with_baseline = false;
                }
            }
        }
    }
    let figure = |key: &str| baseline.as_ref().and_then(|b| b[key].as_f64());
    let ort_version = baseline
        .as_ref()
        .and_then(|b| b["onnxruntime_version"].as_str())
        .unwrap_or("?")
        .to_string();
    let mut baselines = vec![
        ("PyTorch eager".to_string(), figure("images_per_s")),
        (
            "PyTorch, BN folded + channels-last".to_string(),
            figure("folded_channels_last"),
        ),
        (
            format!("ONNX Runtime {ort_version} (Python, PyTorch's ONNX)"),
            figure("onnxruntime"),
        ),
    ];
    if bf16 {
        baselines.push((
            "PyTorch, BN folded + channels-last, bf16 autocast".to_string(),
            figure("folded_channels_last_bf16"),
        ));
    }
    println!(
        "embed: {} at {size}x{size}, batch {}, {} weights, best of {} passes{}, {} threads",
        args.model,
        args.batch,
        if args.weights.is_some() {
            "pretrained"
        } else {
            "random"
        },
        args.iters,
        if rounds > 1 {
            format!(" in each of {rounds} alternating rounds")
        } else {
            String::new()
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut header = vec!["engine".to_string(), "img/s".to_string()];
    header.extend(baselines.iter().map(|(name, _)| format!("vs {name}")));
    let mut rows: Vec<Vec<String>> = results
        .iter()
        .map(|(d, ips)| {
            let mut row = vec![format!("visual-search {d}"), format!("{ips:.1}")];
            row.extend(
                baselines
                    .iter()
                    .map(|(_, b)| b.map_or("-".into(), |t| format!("{:.2}x", ips / t))),
            );
            row
        })
        .collect();
    for (name, ips) in &baselines {
        let mut row = vec![name.clone(), ips.map_or("-".into(), |v| format!("{v:.1}"))];
        row.extend(baselines.iter().map(|_| String::new()));
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    print!("{}", table::render(&header, &rows));
    for key in [
        "folded_channels_last_error",
        "onnxruntime_error",
        "folded_channels_last_bf16_error",
    ] {
        if let Some(e) = baseline.as_ref().and_then(|b| b[key].as_str()) {
            eprintln!("baseline {key}: {e}");
        }
    }
    if let Some(ops) = baseline.as_ref().and_then(|b| b["top_ops_ms"].as_array()) {
        println!("PyTorch's heaviest ops (one batch, self CPU ms):");
        for op in ops {
            println!(
                "  {:<40} {:>8.1}",
                op[0].as_str().unwrap_or("?"),
                op[1].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// The baseline figures (images per second) that `tools/bench_embed_torch.py` reports.
const BASELINE_FIGURES: [&str; 4] = [
    "images_per_s",
    "folded_channels_last",
    "onnxruntime",
    "folded_channels_last_bf16",
];

/// `latest` with each of its [`BASELINE_FIGURES`] raised to the best of the earlier rounds' (or
/// taken from them where this round has none).
fn best_of(earlier: Option<serde_json::Value>, mut latest: serde_json::Value) -> serde_json::Value {
    if let Some(earlier) = earlier {
        for key in BASELINE_FIGURES {
            match (earlier[key].as_f64(), latest[key].as_f64()) {
                (Some(a), Some(b)) => latest[key] = a.max(b).into(),
                (Some(a), None) => latest[key] = a.into(),
                _ => {}
            }
        }
    }
    latest
}

/// The first `batch` photos of the grocery `train.csv` (or `dataset_dir`'s), prepared for
/// `spec` at `size` (eval transform), as one NCHW f32 batch.
pub(super) fn photo_batch(
    dataset_dir: Option<&Path>,
    spec: &ModelSpec,
    size: usize,
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let root = match dataset_dir {
        Some(d) => d.to_path_buf(),
        None => locate_grocery().context("grocery dataset not found; pass --dataset-dir")?,
    };
    let rows = parse_product10k(&root.join("train.csv"))?.into_strict()?;
    let samples = product10k_samples(&rows, &root, "");
    if samples.len() < batch {
        bail!(
            "{} lists only {} images",
            root.join("train.csv").display(),
            samples.len()
        );
    }
    let transform = EvalTransform::new(
        size as u32,
        visual_search_data::image::Normalization {
            mean: spec.mean,
            std: spec.std,
        },
    );
    let (input, failed) = transform.load_all(&samples[..batch]);
    if let Some((_, e)) = failed.into_iter().next() {
        return Err(e.into());
    }
    Ok(input)
}

/// Writes `input` as raw little-endian f32 for a Python baseline to read.
pub(super) fn raw_f32_file(input: &[f32]) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        file.path(),
        input
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    Ok(file)
}

fn run_baseline(args: &Args, input: &[f32], size: usize) -> anyhow::Result<serde_json::Value> {
    let python = baseline_python(&args.photos.python);
    let file = raw_f32_file(input)?;
    let script = tools_dir().join("bench_embed_torch.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args([
            "--model",
            &args.model,
            "--input",
            &file.path().display().to_string(),
        ])
        .args([
            "--batch",
            &args.batch.to_string(),
            "--size",
            &size.to_string(),
            "--iters",
            &args.iters.to_string(),
        ]);
    if let Some(w) = &args.weights {
        cmd.args(["--weights", &w.display().to_string()]);
    }
    if args.dtypes.contains(&Precision::Bf16) {
        cmd.arg("--bf16");
    }
    baseline_json(cmd, &python, &script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rounds_keep_each_baselines_best() {
        let first = json!({"images_per_s": 9.0, "folded_channels_last": 16.0, "onnxruntime": 25.0});
        let second = json!({
            "images_per_s": 10.0,
            "folded_channels_last": 14.0,
            "onnxruntime_error": "no onnxruntime",
            "top_ops_ms": [["aten::addmm", 3.0]],
        });
        let best = best_of(Some(first), second);
        assert_eq!(best["images_per_s"], 10.0);
        assert_eq!(best["folded_channels_last"], 16.0);
        assert_eq!(best["onnxruntime"], 25.0);
        assert!(best["folded_channels_last_bf16"].is_null());
        assert_eq!(best["top_ops_ms"][0][1], 3.0);
        let alone = best_of(None, json!({"images_per_s": 1.0}));
        assert_eq!(alone["images_per_s"], 1.0);
    }
}
