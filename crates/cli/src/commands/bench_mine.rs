//! `visual-search bench mine`: throughput of the mining pipeline's two heavy steps against the
//! Python a PyTorch user would write, measured in the same run:
//! - `mine pairs` in reviews/s on a generated review dump (Amazon 2018 layout, gzip) against
//!   `tools/bench_mine_pairs.py` (json.loads + pyarrow);
//! - `mine features` in images/s on grocery photos served over loopback by Python's
//!   `http.server` to both sides, against `tools/bench_mine_features.py` (thread pool + urllib +
//!   PIL/torchvision + PyTorch eager).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use visual_search_data::datasets::locate_grocery;
use visual_search_data::image::DecodeLimits;
use visual_search_mining::features::{FeaturesOptions, mine_features};
use visual_search_mining::fetch::FetchConfig;
use visual_search_mining::pairs::mine_pairs;
use visual_search_mining::pairs_table::{ProductRow, ProductWriter};

use super::bench_preprocess::{baseline_python, tools_dir};
use super::mine::features::ModelEmbedder;
use crate::args::model::{DeviceArgs, ModelArgs};
use crate::table;

#[derive(clap::Args)]
pub struct Args {
    /// Reviews in the generated dump.
    #[arg(long, default_value_t = 400_000)]
    reviews: usize,
    /// Grocery photos embedded by the features benchmark.
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// EfficientNet-Lite0 weights for the features benchmark (random weights otherwise).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Python with torch, timm, torchvision and pyarrow [default: $VISUAL_SEARCH_PYTHON or python3].
    #[arg(long)]
    python: Option<String>,
    #[arg(long)]
    no_baseline: bool,
    /// Only the `mine pairs` benchmark.
    #[arg(long)]
    pairs_only: bool,
}

/// Runs a `tools/` script that prints one JSON object.
fn run_script(python: &str, script: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(tools_dir().join(script))
        .args(args)
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{script} printed {last:?}"))
}

/// A review dump in the 2018 layout: ~10% of reviews carry 1-3 photos, 10 reviews per product.
fn write_dumps(dir: &Path, reviews: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let products = (reviews / 10).max(1);
    let words = [
        "great",
        "product",
        "works",
        "as",
        "described",
        "would",
        "buy",
        "again",
        "the",
        "color",
        "fits",
        "well",
    ];
    let rpath = dir.join("reviews.json.gz");
    let mut gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&rpath)?, flate2::Compression::fast());
    for i in 0..reviews {
        let asin = format!("B{:09}", rng.random_range(0..products));
        let text: Vec<&str> = (0..rng.random_range(20..80))
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        let mut review = serde_json::json!({
            "overall": rng.random_range(1..=5) as f64, "verified": true, "reviewTime": "01 5, 2018",
            "reviewerID": format!("A{i:012}"), "asin": asin, "reviewerName": "someone",
            "reviewText": text.join(" "), "summary": "fine", "unixReviewTime": 1515110400 + i,
        });
        if rng.random_range(0..10) == 0 {
            let n = rng.random_range(1..=3);
            review["image"] = (0..n)
                .map(|j| {
                    format!("https://images-na.ssl-images-amazon.com/images/I/{i}{j}._SY88.jpg")
                })
                .collect();
        }
        writeln!(gz, "{review}")?;
    }
    gz.finish()?;
    let mpath = dir.join("meta.json.gz");
    let mut gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&mpath)?, flate2::Compression::fast());
    for p in 0..products {
        let meta = serde_json::json!({
            "asin": format!("B{p:09}"), "title": format!("Product {p}"), "brand": "Acme",
            "imageURL": [format!("https://images-na.ssl-images-amazon.com/images/I/p{p}._SS40_.jpg")],
            "imageURLHighRes": [format!("https://images-na.ssl-images-amazon.com/images/I/p{p}.jpg")],
        });
        writeln!(gz, "{meta}")?;
    }
    gz.finish()?;
    Ok((rpath, mpath))
}

fn bench_pairs(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let (reviews, meta) = write_dumps(dir, args.reviews)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut written = 0;
    for threads in [1, cores] {
        let t = Instant::now();
        let r = mine_pairs(
            &reviews,
            &meta,
            &dir.join(format!("pairs{threads}.parquet")),
            threads,
        )?;
        rows.push((
            format!("ours, {threads} parser thread(s)"),
            args.reviews as f64 / t.elapsed().as_secs_f64(),
        ));
        written = r.written;
    }
    let baseline = if args.no_baseline {
        None
    } else {
        let out = dir.join("pairs_py.parquet");
        let s = |p: &Path| p.display().to_string();
        match run_script(
            &baseline_python(&args.python),
            "bench_mine_pairs.py",
            &[
                "--reviews".into(),
                s(&reviews),
                "--metadata".into(),
                s(&meta),
                "--out".into(),
                s(&out),
            ],
        ) {
            Ok(v) => {
                let products = v["products"].as_u64().unwrap_or(0);
                if products != written {
                    bail!("the baseline found {products} products, we found {written}");
                }
                v["seconds"].as_f64().map(|sec| args.reviews as f64 / sec)
            }
            Err(e) => {
                eprintln!(
                    "baseline unavailable ({})",
                    crate::error_report::error_line(&e)
                );
                None
            }
        }
    };
    println!(
        "mine pairs: {} reviews (gzip, 2018 layout), {written} products written",
        args.reviews
    );
    print_table("reviews/s", "Python json + pyarrow", &rows, baseline);
    Ok(())
}

fn print_table(unit: &str, baseline_name: &str, rows: &[(String, f64)], baseline: Option<f64>) {
    let mut table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, v)| {
            vec![
                name.clone(),
                format!("{v:.0}"),
                baseline.map_or("-".into(), |b| format!("{:.2}x", v / b)),
            ]
        })
        .collect();
    if let Some(b) = baseline {
        table_rows.push(vec![
            baseline_name.to_string(),
            format!("{b:.0}"),
            "1.00x".into(),
        ]);
    }
    print!("{}", table::render(&["", unit, "ratio"], &table_rows));
}

/// `python -m http.server` on a free loopback port, killed on drop.
struct HttpServer(Child, u16);

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_http_server(python: &str, root: &Path) -> anyhow::Result<HttpServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(python)
        .args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python -m http.server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    if !line.contains("Serving HTTP") {
        bail!("http.server said {line:?}");
    }
    Ok(HttpServer(child, port))
}

fn bench_features(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let grocery =
        locate_grocery().context("the grocery dataset is needed for the features benchmark")?;
    let python = baseline_python(&args.python);
    let server = start_http_server(&python, &grocery)?;
    let text = std::fs::read_to_string(grocery.join("train.csv"))?;
    let urls: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .take(args.images)
        .map(|p| format!("http://127.0.0.1:{}/{p}", server.1))
        .collect();
    let work = dir.join("features_work");
    let pairs = work.join("pairs.parquet");
    let mut w = ProductWriter::create(&pairs)?;
    for (i, chunk) in urls.chunks(8).enumerate() {
        w.push(ProductRow {
            asin: format!("P{i}"),
            title: None,
            product_images: chunk[..1].to_vec(),
            user_images: chunk[1..].to_vec(),
            n_reviews: 1,
        })?;
    }
    w.finish()?;
    let model = ModelArgs {
        model: Some("efficientnet_lite0".into()),
        model_dir: None,
        weights: args.weights.clone(),
        size: None,
        device: DeviceArgs {
            device: "flex".into(),
            ..DeviceArgs::default()
        },
    };
    let mut embedder = ModelEmbedder::load(&model)?;
    let options = FeaturesOptions {
        fetch: FetchConfig {
            timeout: Duration::from_secs(60),
            ..FetchConfig::default()
        },
        batch_size: 32,
        snapshot_every: 1000,
        retry_failed: false,
        limits: DecodeLimits::default(),
        shard: None,
    };
    let t = Instant::now();
    let r = mine_features(
        &pairs,
        &work.join("features"),
        &mut embedder,
        &options,
        &mut |_, _| {},
    )?;
    let ours = r.embedded as f64 / t.elapsed().as_secs_f64();
    if r.failed > 0 {
        bail!(
            "{} of {} images failed to fetch from the loopback server",
            r.failed,
            r.urls
        );
    }
    let baseline = if args.no_baseline {
        None
    } else {
        let list = dir.join("urls.txt");
        std::fs::write(&list, urls.join("\n"))?;
        let mut a = vec!["--urls".to_string(), list.display().to_string()];
        if let Some(wt) = &args.weights {
            a.extend(["--weights".to_string(), wt.display().to_string()]);
        }
        match run_script(&python, "bench_mine_features.py", &a) {
            Ok(v) => v["images_per_s"].as_f64(),
            Err(e) => {
                eprintln!(
                    "baseline unavailable ({})",
                    crate::error_report::error_line(&e)
                );
                None
            }
        }
    };
    println!(
        "mine features: {} grocery photos over loopback HTTP, EfficientNet-Lite0 224 px ({} weights), batch 32, 32 requests in flight",
        r.embedded,
        if args.weights.is_some() {
            "pretrained"
        } else {
            "random"
        }
    );
    print_table(
        "images/s",
        "Python urllib + PIL + PyTorch",
        &[("ours (flex)".into(), ours)],
        baseline,
    );
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bench_pairs(&args, dir.path())?;
    if !args.pairs_only {
        bench_features(&args, dir.path())?;
    }
    Ok(())
}
