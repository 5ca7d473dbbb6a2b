//! `visual-search data import ...`: public datasets → challenge formats.

use std::path::PathBuf;

use clap::Subcommand;
use visual_search_data::fashion_mnist::{DEBIAN_DIR, ImportOptions, import_fashion_mnist};

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Fashion-MNIST (Debian package `dataset-fashion-mnist`) → PNGs + challenge CSVs.
    ///
    /// Writes into OUT: `train/<class>/NNNNN.png` and `test/<class>/NNNNN.png` (28x28 greyscale),
    /// `train.csv` (training images 0-49,999) and `test_kaggletest.csv` (50,000-59,999) in the
    /// Product10K format with an empty prefix, and a dev set of the 10,000 test images: every
    /// 10th image of each class in `queries.csv` (1,000), the rest in `gallery.csv` (9,000).
    /// The dev set shares the 10 classes with training (closed set, unlike the challenge).
    /// Existing PNGs are kept, so an interrupted import resumes.
    FashionMnist {
        /// Output dataset root.
        #[arg(long)]
        out: PathBuf,
        /// Folder holding the IDX files (plain or .gz).
        #[arg(long, default_value = DEBIAN_DIR)]
        from: PathBuf,
        /// Keep at most N images per class in each list (a smaller dataset for quick runs).
        #[arg(long)]
        max_per_class: Option<usize>,
    },
}

impl ImportCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            ImportCommand::FashionMnist {
                out,
                from,
                max_per_class,
            } => {
                let start = std::time::Instant::now();
                let s = import_fashion_mnist(&ImportOptions {
                    from,
                    out: out.clone(),
                    max_per_class,
                })?;
                println!(
                    "imported Fashion-MNIST into {} in {:.1}s: train.csv {} rows, test_kaggletest.csv {}, gallery.csv {}, queries.csv {} ({} new PNGs)",
                    out.display(),
                    start.elapsed().as_secs_f64(),
                    s.train,
                    s.val,
                    s.gallery,
                    s.queries,
                    s.images_written
                );
                Ok(())
            }
        }
    }
}
