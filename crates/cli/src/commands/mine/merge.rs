//! `mine merge`: downloaded categories → one `image_path,label` training list + its labels.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_mining::merge::{CategoryInput, DownloadLocation, MergeOptions, mine_merge};

use super::WorkDir;

#[derive(clap::Args)]
pub struct Args {
    /// A category's work folder (after `mine download`); repeat for each category.
    #[arg(long = "work-dir", required = true)]
    work_dirs: Vec<PathBuf>,
    /// The training list to write (CSV `image_path,label`); labels go to `<stem>_labels.csv`
    /// beside it.
    #[arg(long)]
    out: PathBuf,
    /// Image paths in the list are relative to this folder (the `root` of the training config's
    /// `mined_pairs` entry) [default: the list's folder].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Drop products with fewer images than this.
    #[arg(long, default_value_t = 2)]
    min_images: usize,
    /// List only review photos, not the products' catalogue images.
    #[arg(long)]
    no_product_images: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut categories = Vec::new();
    for dir in &a.work_dirs {
        let work = WorkDir::new(dir);
        work.require(&work.kept(), "filter")?;
        work.require(&work.download_location(), "download")?;
        let loc_path = work.download_location();
        let bytes =
            std::fs::read(&loc_path).with_context(|| format!("reading {}", loc_path.display()))?;
        let loc: DownloadLocation = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged", loc_path.display()))?;
        categories.push(CategoryInput {
            kept: work.kept(),
            journal: work.journal(),
            images_dir: loc.images_dir,
        });
    }
    let root = match &a.root {
        Some(r) => r.clone(),
        None => match a.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let stem = a
        .out
        .file_stem()
        .map_or("train".into(), |s| s.to_string_lossy().into_owned());
    let labels = a.out.with_file_name(format!("{stem}_labels.csv"));
    let options = MergeOptions {
        min_images: a.min_images,
        include_product_images: !a.no_product_images,
        root: root.clone(),
    };
    let r = mine_merge(&categories, &options, &a.out, &labels).context("mine merge")?;
    println!(
        "{} products from {} categories: wrote {} images of {} products ({} products had fewer than {} images)",
        r.products_seen,
        categories.len(),
        r.images_written,
        r.products_written,
        r.dropped_below_min_images,
        a.min_images
    );
    println!(
        "skipped: {} images not downloaded, {} images claimed by two products",
        r.images_not_downloaded, r.images_claimed_twice
    );
    println!(
        "wrote {} (paths relative to {}) and {}",
        a.out.display(),
        root.display(),
        labels.display()
    );
    Ok(())
}
