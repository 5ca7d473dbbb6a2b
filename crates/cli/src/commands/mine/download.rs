//! `mine download`: the images of WORK_DIR/kept.parquet → an image folder + downloads.csv.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use visual_search_mining::download::mine_download;
use visual_search_mining::merge::DownloadLocation;

use super::WorkDir;
use super::fetch_args::FetchArgs;
use crate::progress::images_bar;

#[derive(clap::Args)]
pub struct Args {
    /// The category's work folder (holding kept.parquet).
    #[arg(long)]
    work_dir: PathBuf,
    /// Where the images go [default: WORK_DIR/images]. Categories may share one folder.
    #[arg(long)]
    images_dir: Option<PathBuf>,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Fetch again the URLs an earlier run recorded as failed.
    #[arg(long)]
    retry_failed: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let work = WorkDir::new(&a.work_dir);
    work.require(&work.kept(), "filter")?;
    let images = a
        .images_dir
        .clone()
        .unwrap_or_else(|| work.default_images());
    let images =
        std::path::absolute(&images).with_context(|| format!("resolving {}", images.display()))?;
    let location = serde_json::to_vec_pretty(&DownloadLocation {
        images_dir: images.clone(),
    })?;
    visual_search_data::atomic_write::write_atomically(&work.download_location(), &location)?;
    let bar = images_bar(0, "downloading");
    let start = Instant::now();
    let r = mine_download(
        &work.kept(),
        &images,
        &work.journal(),
        &a.fetch.config()?,
        a.retry_failed,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .context("mine download")?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} image URLs: {} done before, {} downloaded now, {} failed ({:.1} images/s) → {}",
        r.urls,
        r.already_done,
        r.downloaded,
        r.failed,
        (r.downloaded + r.failed) as f64 / secs.max(1e-9),
        images.display()
    );
    println!("journal (url, path, error): {}", work.journal().display());
    Ok(())
}
