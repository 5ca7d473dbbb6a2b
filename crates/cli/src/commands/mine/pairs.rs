//! `mine pairs`: review + metadata dumps → WORK_DIR/pairs.parquet.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use visual_search_mining::json_lines::StreamStats;
use visual_search_mining::pairs::mine_pairs;

use super::WorkDir;

#[derive(clap::Args)]
pub struct Args {
    /// The category's review dump (JSON lines, optionally gzip).
    #[arg(long)]
    reviews: PathBuf,
    /// The category's metadata dump (JSON lines, optionally gzip).
    #[arg(long)]
    metadata: PathBuf,
    /// The category's work folder (created if needed).
    #[arg(long)]
    work_dir: PathBuf,
    /// Parser threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn print_malformed(what: &str, s: &StreamStats) {
    if s.malformed == 0 {
        return;
    }
    eprintln!("{what}: {} malformed line(s) skipped, e.g.:", s.malformed);
    for (line, e) in &s.malformed_samples {
        eprintln!("  line {line}: {e}");
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let work = WorkDir::new(&a.work_dir);
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let start = Instant::now();
    let r = mine_pairs(&a.reviews, &a.metadata, &work.pairs(), threads).context("mine pairs")?;
    let secs = start.elapsed().as_secs_f64();
    print_malformed(&a.reviews.display().to_string(), &r.reviews);
    print_malformed(&a.metadata.display().to_string(), &r.metadata);
    println!(
        "reviews: {} lines ({:.0}/s), {} products reviewed, {} with review photos ({} photos)",
        r.reviews.lines,
        r.reviews.lines as f64 / secs.max(1e-9),
        r.products_reviewed,
        r.products_with_user_images,
        r.user_images
    );
    println!(
        "metadata: {} lines; {} products without catalogue images, {} without metadata, {} duplicate metadata lines",
        r.metadata.lines, r.without_product_images, r.without_metadata, r.duplicate_metadata
    );
    println!(
        "wrote {} products to {} in {secs:.1} s",
        r.written,
        work.pairs().display()
    );
    Ok(())
}
