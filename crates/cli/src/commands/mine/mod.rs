//! `visual-search mine pairs | features | filter | download | merge`: the Amazon-review mining
//! pipeline (SPEC "Mining pairs from Amazon reviews"), one file per step. Every step works in a
//! category's work folder (`--work-dir`) under fixed file names, so the steps chain without
//! path plumbing:
//!
//! ```text
//! pairs.parquet → features/ → kept.parquet (+ user_images.csv, product_stats.csv,
//! similarity_histogram.png) → images/ + downloads.csv → (merge) train.csv + labels
//! ```

mod download;
pub(crate) mod features;
mod fetch_args;
mod filter;
mod merge;
mod pairs;

use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum MineCommand {
    /// Stream a category's review + metadata dumps (JSON lines, .gz or plain; the 2018 and 2023
    /// Amazon layouts) into WORK_DIR/pairs.parquet: products with review photos.
    Pairs(pairs::Args),
    /// Embed every product and review image (fetched over HTTP, never stored) into
    /// WORK_DIR/features/, snapshotting so a killed run resumes.
    Features(features::Args),
    /// Keep review photos whose mean cosine similarity to the product's images exceeds a
    /// threshold: WORK_DIR/kept.parquet, per-image and per-product CSVs, a histogram PNG.
    Filter(filter::Args),
    /// Download the kept images into a content-addressed folder (resumable, validated).
    Download(download::Args),
    /// Merge downloaded categories into one `image_path,label` training list.
    Merge(merge::Args),
}

impl MineCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            MineCommand::Pairs(a) => pairs::run(a),
            MineCommand::Features(a) => features::run(a),
            MineCommand::Filter(a) => filter::run(a),
            MineCommand::Download(a) => download::run(a),
            MineCommand::Merge(a) => merge::run(a),
        }
    }
}

/// The fixed file names inside a category's work folder.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(dir: &Path) -> Self {
        WorkDir(dir.to_path_buf())
    }
    fn pairs(&self) -> PathBuf {
        self.0.join("pairs.parquet")
    }
    fn features(&self) -> PathBuf {
        self.0.join("features")
    }
    fn kept(&self) -> PathBuf {
        self.0.join("kept.parquet")
    }
    fn journal(&self) -> PathBuf {
        self.0.join("downloads.csv")
    }
    fn download_location(&self) -> PathBuf {
        self.0.join("download.json")
    }
    fn default_images(&self) -> PathBuf {
        self.0.join("images")
    }
    /// Fails with the command to run first when `path` is missing.
    fn require(&self, path: &Path, made_by: &str) -> anyhow::Result<()> {
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist; run `visual-search mine {made_by} --work-dir {}` first",
                path.display(),
                self.0.display()
            );
        }
        Ok(())
    }
}
