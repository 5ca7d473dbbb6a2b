//! `visual-search bench rank`: the whole dev-set ranker — decode, crop, resize, embed, top-1000,
//! mAP — against Python rankers a user would run instead (`tools/rank_torch.py`: PIL +
//! torchvision preprocessing in a DataLoader with one worker per core, then PyTorch with batch
//! norm folded + channels-last, or ONNX Runtime on PyTorch's own ONNX export), in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use visual_search_data::datasets::locate_grocery;

use super::bench_preprocess::{baseline_python, tools_dir};
use crate::args::model::{DeviceArgs, ModelArgs, Precision};
use crate::dev_set_run::{DevSetArgs, rank_dev_set};
use crate::table;

/// Times whole rankers on a dev set (default: the bundled grocery dev set, 1,197 queries ×
/// 1,483 gallery images) and prints seconds (model load + embedding + ranking), mAP@1000 and
/// every ratio.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "efficientnet_lite0")]
    model: String,
    /// Pretrained weights (used on both sides).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    size: Option<usize>,
    /// Dev-set root [default: the bundled grocery set].
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Our devices to time [default: ort when its library is found, and flex].
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Precisions of our rankers, each timed on every device that runs it (bf16: flex).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<Precision>,
    /// Python rankers to time: eager, folded, onnxruntime.
    #[arg(long, value_delimiter = ',', default_value = "folded,onnxruntime")]
    engines: Vec<String>,
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch_size: usize,
    /// Python with torch, torchvision, timm and onnxruntime [default: $VISUAL_SEARCH_PYTHON or python3].
    #[arg(long)]
    python: Option<String>,
}

struct Run {
    name: String,
    seconds: f64,
    map: f64,
}

fn ours(args: &Args, root: &Path, device: &str, dtype: Precision) -> anyhow::Result<Run> {
    let start = Instant::now();
    let loaded = ModelArgs {
        model: Some(args.model.clone()),
        model_dir: None,
        weights: args.weights.clone(),
        size: args.size,
        device: DeviceArgs {
            device: device.to_string(),
            dtype,
        },
    }
    .load()?;
    let data = DevSetArgs::at(root.to_path_buf(), args.batch_size);
    let ranked = rank_dev_set(&loaded, &data, 1000)?;
    let seconds = start.elapsed().as_secs_f64();
    let map = ranked.evaluate(1000).map_at_k;
    Ok(Run {
        name: format!(
            "visual-search rank --device {} --dtype {}",
            loaded.device_name,
            dtype.name()
        ),
        seconds,
        map,
    })
}

fn python(args: &Args, root: &Path, size: usize, engine: &str) -> anyhow::Result<Run> {
    let python = baseline_python(&args.python);
    let script = tools_dir().join("rank_torch.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--model", &args.model, "--engine", engine])
        .args(["--dataset-dir", &root.display().to_string()])
        .args(["--size", &size.to_string()])
        .args(["--batch", &args.batch_size.to_string()]);
    if let Some(w) = &args.weights {
        cmd.args(["--weights", &w.display().to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap_or_default(),
    )
    .context("parsing the Python ranker's JSON")?;
    let seconds =
        v["seconds_total"].as_f64().unwrap_or(f64::NAN) + v["seconds_load"].as_f64().unwrap_or(0.0);
    Ok(Run {
        name: format!("Python ranker, {engine}"),
        seconds,
        map: v["map_at_k"].as_f64().unwrap_or(f64::NAN),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = match args.dataset_dir.clone() {
        Some(d) => d,
        None => locate_grocery().context("grocery dataset not found; pass --dataset-dir")?,
    };
    let size = args
        .size
        .unwrap_or(visual_search_model::registry::lookup(&args.model)?.input_size);
    let devices = if args.devices.is_empty() {
        let mut d = Vec::new();
        if visual_search_inference::ort_runtime::available() {
            d.push("ort".to_string());
        }
        d.push("flex".to_string());
        d
    } else {
        args.devices.clone()
    };
    let mut runs = Vec::new();
    for device in &devices {
        for &dtype in &args.dtypes {
            eprintln!(
                "ranking with visual-search on {device} in {} …",
                dtype.name()
            );
            match ours(&args, &root, device, dtype) {
                Ok(run) => runs.push(run),
                Err(e) if dtype != Precision::F32 => {
                    eprintln!(
                        "{device} {}: not timed ({})",
                        dtype.name(),
                        crate::error_report::error_line(&e)
                    )
                }
                Err(e) => return Err(e),
            }
        }
    }
    let ours_count = runs.len();
    for engine in &args.engines {
        eprintln!("ranking with the Python ranker ({engine}) …");
        match python(&args, &root, size, engine) {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!(
                "Python ranker {engine} unavailable: {}",
                crate::error_report::error_line(&e)
            ),
        }
    }
    println!(
        "rank: {} at {size} px on {}, top 1000, {} threads",
        args.model,
        root.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let baselines = &runs[ours_count..];
    let mut header = vec!["ranker".to_string(), "seconds".into(), "mAP@1000".into()];
    header.extend(baselines.iter().map(|b| format!("vs {}", b.name)));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                format!("{:.1}", r.seconds),
                format!("{:.5}", r.map),
            ];
            row.extend(
                baselines
                    .iter()
                    .map(|b| format!("{:.2}x", b.seconds / r.seconds)),
            );
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    print!("{}", table::render(&header, &rows));
    Ok(())
}
