//! `visual-search bench preprocess`: decode + crop + resize + normalise throughput, ours against
//! PIL + torchvision measured in the same run by `tools/bench_preprocess_torchvision.py`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use visual_search_data::datasets::locate_grocery;
use visual_search_data::formats::product10k::{parse_product10k, product10k_samples};
use visual_search_data::formats::{Crop, Sample};
use visual_search_data::image::Normalization;
use visual_search_data::transform::{EvalTransform, SampleTransform};

use crate::table;

/// Times the evaluation pipeline (decode → crop → Resize((s, s)) antialiased → normalise to f32)
/// on real photos, on one thread and on all threads, and the same pipeline in PIL + torchvision
/// (one process per core for the parallel case, like a DataLoader), then prints the ratios.
#[derive(clap::Args)]
pub struct Args {
    /// Product10K-style root whose train.csv lists the images [default: the bundled grocery set].
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Output size.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Use the first N images of train.csv.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Threads for the parallel measurement [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Timed passes per measurement (the best is kept).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python with torch + torchvision for the baseline [default: $VISUAL_SEARCH_PYTHON or python3].
    #[arg(long)]
    python: Option<String>,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    no_baseline: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = match args.dataset_dir.clone() {
        Some(d) => d,
        None => locate_grocery().context("grocery dataset not found; pass --dataset-dir")?,
    };
    let rows = parse_product10k(&root.join("train.csv"))?.into_strict()?;
    let mut samples: Vec<Sample> = product10k_samples(&rows, &root, "");
    samples.truncate(args.limit);
    if samples.is_empty() {
        bail!("no images listed in {}", root.join("train.csv").display());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let transform = EvalTransform::new(args.size, Normalization::CLIP);
    // Warm the page cache so both pipelines read from memory.
    for s in &samples {
        let _ = std::fs::read(&s.path);
    }
    let ours_single = best_of(args.repeat, || pass(&samples, 1, &transform))?;
    let ours_multi = best_of(args.repeat, || pass(&samples, threads, &transform))?;

    let baseline = if args.no_baseline {
        None
    } else {
        let python = baseline_python(&args.python);
        match run_baseline(&python, &samples, args.size, threads, args.repeat) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!(
                    "baseline unavailable ({}); printing our figures only",
                    crate::error_report::error_line(&e)
                );
                None
            }
        }
    };

    println!(
        "preprocess: {} images from {}, {}x{} output, best of {} passes",
        samples.len(),
        root.display(),
        args.size,
        args.size,
        args.repeat
    );
    let mut rows = Vec::new();
    let ratio = |ours: f64, theirs: Option<f64>| {
        theirs.map_or("-".to_string(), |t| format!("{:.2}x", ours / t))
    };
    rows.push(vec![
        "1 thread".to_string(),
        format!("{ours_single:.0}"),
        baseline.map_or("-".into(), |b| format!("{:.0}", b.0)),
        ratio(ours_single, baseline.map(|b| b.0)),
    ]);
    rows.push(vec![
        format!("{threads} threads"),
        format!("{ours_multi:.0}"),
        baseline.map_or("-".into(), |b| format!("{:.0}", b.1)),
        ratio(ours_multi, baseline.map(|b| b.1)),
    ]);
    print!(
        "{}",
        table::render(
            &["", "visual-search img/s", "PIL+torchvision img/s", "ratio"],
            &rows
        )
    );
    Ok(())
}

fn best_of(repeat: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut best = 0.0f64;
    for _ in 0..repeat.max(1) {
        best = best.max(f()?);
    }
    Ok(best)
}

/// One timed pass over `samples` split across `threads`; returns images per second.
fn pass(samples: &[Sample], threads: usize, transform: &EvalTransform) -> anyhow::Result<f64> {
    let start = Instant::now();
    let chunk = samples.len().div_ceil(threads.max(1));
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let (h, w) = transform.output_size();
                    let mut out = vec![0.0f32; 3 * h as usize * w as usize];
                    let mut rng = rand_chacha_rng();
                    for s in part {
                        let sample = Sample {
                            crop: Crop::None,
                            ..s.clone()
                        };
                        transform.load(&sample, &mut rng, &mut out)?;
                        std::hint::black_box(&out);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(samples.len() as f64 / start.elapsed().as_secs_f64())
}

fn rand_chacha_rng() -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(0)
}

/// Runs the torchvision script; returns (single-thread, multi-process) images/s.
fn run_baseline(
    python: &str,
    samples: &[Sample],
    size: u32,
    threads: usize,
    repeat: usize,
) -> anyhow::Result<(f64, f64)> {
    let script = tools_dir().join("bench_preprocess_torchvision.py");
    let list = tempfile::NamedTempFile::new()?;
    let paths: Vec<String> = samples
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    std::fs::write(list.path(), paths.join("\n"))?;
    let output = Command::new(python)
        .arg(&script)
        .args(["--list", &list.path().display().to_string()])
        .args([
            "--size",
            &size.to_string(),
            "--threads",
            &threads.to_string(),
            "--repeat",
            &repeat.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing the baseline's JSON")?;
    let get = |k: &str| {
        json[k]
            .as_f64()
            .with_context(|| format!("baseline output lacks {k}"))
    };
    Ok((get("single_ips")?, get("multi_ips")?))
}

/// The Python that runs a baseline script: `--python`, else `$VISUAL_SEARCH_PYTHON`, else
/// `python3`.
pub fn baseline_python(flag: &Option<String>) -> String {
    flag.clone()
        .or_else(|| std::env::var("VISUAL_SEARCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".to_string())
}

/// Runs a baseline script (`cmd`, which runs `script`) and parses the JSON it prints; its
/// stderr is the error when it fails.
pub fn baseline_json(
    mut cmd: std::process::Command,
    python: &str,
    script: &Path,
) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("parsing the baseline's JSON")
}

/// `tools/` of this checkout (benchmarks are run from a checkout).
pub fn tools_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).join("tools")
}
