//! `visual-search data check`: validate a Product10K and/or dev-set root.

use std::path::PathBuf;

use anyhow::bail;
use visual_search_data::check::{CheckOptions, check_dataset};
use visual_search_data::image::DecodeLimits;

use crate::table;

/// Checks every list found in DIR (train.csv, test_kaggletest.csv, gallery.csv, queries.csv):
/// each row parses, each image exists and decodes. Prints a summary per list and every problem
/// with its file and line; exits non-zero if there is any problem.
#[derive(clap::Args)]
pub struct Args {
    /// Dataset root (a Product10K root, a dev-set root, or both).
    #[arg(long)]
    dataset_dir: PathBuf,
    /// Image folder of train.csv inside the root [default: `train/` if the images are there, else the root].
    #[arg(long)]
    train_prefix: Option<String>,
    /// Image folder of test_kaggletest.csv [default: `test/` if the images are there, else the root].
    #[arg(long)]
    val_prefix: Option<String>,
    /// Only check that image files exist; do not decode them.
    #[arg(long)]
    no_decode: bool,
    /// Threads for decoding [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Show at most this many problems per list.
    #[arg(long, default_value_t = 50)]
    max_problems: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = CheckOptions {
        root: args.dataset_dir.clone(),
        train_prefix: args.train_prefix,
        val_prefix: args.val_prefix,
        decode: !args.no_decode,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        limits: DecodeLimits::default(),
    };
    let report = check_dataset(&options)?;
    let rows: Vec<Vec<String>> = report
        .lists
        .iter()
        .map(|l| {
            let mut counts: Vec<usize> = l.class_counts.values().copied().collect();
            counts.sort_unstable();
            let (min, median, max) = match counts.len() {
                0 => ("-".into(), "-".into(), "-".into()),
                n => (
                    counts[0].to_string(),
                    counts[n / 2].to_string(),
                    counts[n - 1].to_string(),
                ),
            };
            vec![
                l.csv
                    .file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
                l.kind.label().to_string(),
                if l.prefix.is_empty() {
                    "(root)".into()
                } else {
                    l.prefix.clone()
                },
                l.rows.to_string(),
                l.images_ok.to_string(),
                l.problems.len().to_string(),
                l.class_counts.len().to_string(),
                format!("{min}/{median}/{max}"),
            ]
        })
        .collect();
    println!("dataset: {}", report.root.display());
    print!(
        "{}",
        table::render(
            &[
                "file",
                "list",
                "prefix",
                "rows",
                "images ok",
                "problems",
                "classes",
                "per class min/median/max"
            ],
            &rows
        )
    );
    println!("classes over all lists: {}", report.n_classes());
    for list in &report.lists {
        if list.problems.is_empty() {
            continue;
        }
        println!("\nproblems in {}:", list.csv.display());
        for p in list.problems.iter().take(args.max_problems) {
            println!("  {p}");
        }
        if list.problems.len() > args.max_problems {
            println!("  ... and {} more", list.problems.len() - args.max_problems);
        }
    }
    let n = report.n_problems();
    if n > 0 {
        bail!("{n} problem(s) found in {}", report.root.display());
    }
    println!("ok: no problems");
    Ok(())
}
