//! `visual-search bench topk`: exact top-k search speed against faiss `IndexFlatIP` and NumPy,
//! on the same seeded synthetic unit vectors, measured in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use visual_search_retrieval::matrix::MatrixView;
use visual_search_retrieval::npy::{NpyDtype, encode_f32, encode_i64, write_atomically};
use visual_search_retrieval::rerank::sanitize_and_normalize;
use visual_search_retrieval::topk::top_k;

use super::bench_preprocess::{baseline_python, tools_dir};
use crate::table;

/// Generates seeded random unit vectors (queries and gallery), times our blocked GEMM + partial
/// sort top-k (f32, and f16 gallery storage with `--f16`), then runs faiss IndexFlatIP and NumPy
/// (blocked matmul + argpartition) on the same matrices and prints times, GFLOP/s and ratios.
/// The full-size run (10k x 1M x 512) writes 2 GB of temporary .npy files and takes minutes.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    queries: usize,
    #[arg(long, default_value_t = 1_000_000)]
    gallery: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    #[arg(long, default_value_t = 1000)]
    k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time f16 gallery storage.
    #[arg(long)]
    f16: bool,
    /// Python with faiss-cpu and numpy [default: $VISUAL_SEARCH_PYTHON or python3].
    #[arg(long)]
    python: Option<String>,
    #[arg(long)]
    no_baseline: bool,
    /// Skip the (slow) NumPy baseline.
    #[arg(long)]
    skip_numpy: bool,
}

fn unit_vectors(rows: usize, dim: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    sanitize_and_normalize(&mut v, dim);
    v
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let q = unit_vectors(args.queries, args.dim, &mut rng);
    let g = unit_vectors(args.gallery, args.dim, &mut rng);
    let flops = 2.0 * args.queries as f64 * args.gallery as f64 * args.dim as f64;
    let mut rows = Vec::new();

    let t = Instant::now();
    let ours = top_k(
        MatrixView::f32(&q, args.queries, args.dim),
        MatrixView::f32(&g, args.gallery, args.dim),
        args.k,
    );
    let ours_s = t.elapsed().as_secs_f64();
    rows.push(("visual-search (f32)".to_string(), ours_s));
    if args.f16 {
        let g16: Vec<half::f16> = g.iter().map(|v| half::f16::from_f32(*v)).collect();
        let t = Instant::now();
        let _ = top_k(
            MatrixView::f32(&q, args.queries, args.dim),
            MatrixView::f16(&g16, args.gallery, args.dim),
            args.k,
        );
        rows.push((
            "visual-search (f16 gallery)".to_string(),
            t.elapsed().as_secs_f64(),
        ));
    }

    let mut agreement = None;
    if !args.no_baseline {
        let dir = tempfile::tempdir()?;
        let (qp, gp, op) = (
            dir.path().join("q.npy"),
            dir.path().join("g.npy"),
            dir.path().join("ours.npy"),
        );
        write_atomically(&qp, &encode_f32(&q, args.queries, args.dim, NpyDtype::F32))?;
        drop(q);
        write_atomically(&gp, &encode_f32(&g, args.gallery, args.dim, NpyDtype::F32))?;
        drop(g);
        let idx: Vec<i64> = ours.indices.iter().map(|&i| i as i64).collect();
        write_atomically(&op, &encode_i64(&idx, ours.queries, ours.k))?;
        let python = baseline_python(&args.python);
        let script = tools_dir().join("bench_topk_faiss.py");
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args([
                "--queries",
                &qp.display().to_string(),
                "--gallery",
                &gp.display().to_string(),
            ])
            .args([
                "--k",
                &args.k.to_string(),
                "--ours",
                &op.display().to_string(),
            ]);
        if args.skip_numpy {
            cmd.arg("--skip-numpy");
        }
        match cmd.output() {
            Ok(out) if out.status.success() => {
                let json: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("parsing the baseline's JSON")?;
                if let Some(s) = json["faiss_seconds"].as_f64() {
                    rows.push((
                        format!(
                            "faiss IndexFlatIP {}",
                            json["faiss_version"].as_str().unwrap_or("")
                        ),
                        s,
                    ));
                }
                if let Some(s) = json["numpy_seconds"].as_f64() {
                    rows.push(("numpy matmul + argpartition".to_string(), s));
                }
                agreement = json["same_topk_sets_as_faiss"].as_f64();
            }
            Ok(out) => eprintln!(
                "baseline failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("baseline unavailable ({e}); printing our figures only"),
        }
    }
    if rows.is_empty() {
        bail!("nothing measured");
    }
    println!(
        "top-{} by inner product: {} queries x {} gallery x {}-d, {} threads",
        args.k,
        args.queries,
        args.gallery,
        args.dim,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                format!("{s:.2}"),
                format!("{:.1}", flops / s / 1e9),
                format!("{:.2}x", s / ours_s),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["implementation", "seconds", "GFLOP/s", "time vs ours"],
            &table_rows
        )
    );
    if let Some(a) = agreement {
        println!(
            "queries whose top-{} set equals faiss's: {:.2}%",
            args.k,
            a * 100.0
        );
    }
    Ok(())
}
