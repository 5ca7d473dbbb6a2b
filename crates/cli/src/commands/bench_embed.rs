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
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed passes (the best is kept).
    #[arg(long, default_value_t = 3)]
    iters: usize,
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
    let mut results = Vec::new();
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
                eprintln!("{device} {}: not timed ({e:#})", dtype.name());
                continue;
            }
            Err(e) => return Err(e),
        };
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
        results.push((
            format!("{device} {}", dtype.name()),
            args.batch as f64 / best,
        ));
    }

    let baseline = if args.photos.no_baseline {
        None
    } else {
        match run_baseline(&args, &input, size) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("baseline unavailable ({e:#}); printing our figures only");
                None
            }
        }
    };
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
        "embed: {} at {size}x{size}, batch {}, {} weights, best of {} passes, {} threads",
        args.model,
        args.batch,
        if args.weights.is_some() {
            "pretrained"
        } else {
            "random"
        },
        args.iters,
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
