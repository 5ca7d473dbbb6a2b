//! `mine filter`: WORK_DIR/pairs.parquet + features/ → kept.parquet and the similarity reports.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_mining::filter::{FilterOutputs, mine_filter};

use super::WorkDir;

#[derive(clap::Args)]
pub struct Args {
    /// The category's work folder (holding pairs.parquet and features/).
    #[arg(long)]
    work_dir: PathBuf,
    /// Keep a review photo when its mean cosine similarity to the product's images is above this
    /// (the original used 0.6, and 0.5 for about twice the images).
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    threshold: f32,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(-1.0..=1.0).contains(&a.threshold) {
        anyhow::bail!(
            "--threshold must be a cosine similarity in [-1, 1], got {}",
            a.threshold
        );
    }
    let work = WorkDir::new(&a.work_dir);
    work.require(&work.pairs(), "pairs")?;
    work.require(&work.features(), "features")?;
    let out = FilterOutputs::in_dir(&a.work_dir);
    let r =
        mine_filter(&work.pairs(), &work.features(), a.threshold, &out).context("mine filter")?;
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "kept {} of {} embedded review photos ({:.1}%) at threshold {}, for {} of {} products",
        r.kept_user_images,
        r.similarities.len(),
        pct(r.kept_user_images, r.similarities.len()),
        a.threshold,
        r.kept_products,
        r.products
    );
    println!(
        "not embedded: {} review photos; {} products without any embedded catalogue image",
        r.user_images_missing, r.products_without_embedded_images
    );
    println!(
        "wrote {}, {}, {}, {}",
        out.kept.display(),
        out.user_images_csv.display(),
        out.product_stats_csv.display(),
        out.histogram_png.display()
    );
    Ok(())
}
