//! Reading any of the challenge's lists into samples, recognised by their header: dev-set
//! queries (`img_path` + bbox columns), dev-set gallery (`img_path`, `product_id`) or a
//! Product10K list (`name`, `class`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_data::csv_table::CsvTable;
use visual_search_data::formats::dev_set::{
    gallery_samples, parse_gallery, parse_queries, query_samples,
};
use visual_search_data::formats::product10k::{parse_product10k, product10k_samples};
use visual_search_data::root_containment::check_inside_root;

/// What kind of list a CSV is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Queries,
    Gallery,
    Product10k,
}

/// Recognises a list by its header.
pub fn detect_kind(csv: &Path) -> anyhow::Result<ListKind> {
    let table = CsvTable::open(csv)?;
    let has = |c: &str| table.header().iter().any(|h| h == c);
    Ok(if has("img_path") && has("bbox_x") {
        ListKind::Queries
    } else if has("img_path") && has("product_id") {
        ListKind::Gallery
    } else if has("name") && has("class") {
        ListKind::Product10k
    } else {
        bail!(
            "{}: not a challenge list (header {:?}; expected img_path,product_id[,bbox_*] or name,class,group)",
            csv.display(),
            table.header()
        )
    })
}

/// Samples of `csv`, image paths under `root` (and `prefix` for Product10K lists); queries are
/// cropped to their boxes, gallery images lose their white border.
pub fn read_samples(
    csv: &Path,
    root: &Path,
    prefix: &str,
) -> anyhow::Result<(ListKind, Vec<Sample>)> {
    let kind = detect_kind(csv)?;
    let samples = match kind {
        ListKind::Queries => query_samples(&parse_queries(csv)?.into_strict()?, root),
        ListKind::Gallery => gallery_samples(&parse_gallery(csv)?.into_strict()?, root),
        ListKind::Product10k => {
            product10k_samples(&parse_product10k(csv)?.into_strict()?, root, prefix)
        }
    };
    Ok((kind, samples))
}

/// The images to embed.
#[derive(clap::Args)]
pub struct ListArgs {
    /// The list (kind recognised from its header; gallery images lose their white border).
    #[arg(long)]
    pub csv: PathBuf,
    /// Folder the CSV's image paths are relative to [default: the CSV's folder].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Image prefix folder for Product10K lists (e.g. `train/`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    /// Image-loading threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Accept images that a symlink inside the root points to outside it (refused by default, so
    /// a dataset cannot make an index serve files from elsewhere on the machine).
    #[arg(long)]
    pub follow_links: bool,
}

impl ListArgs {
    /// The folder the list's image paths are relative to.
    pub fn root(&self) -> PathBuf {
        match &self.root {
            Some(r) => r.clone(),
            None => match self.csv.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            },
        }
    }

    /// The list's samples (kind recognised from its header).
    pub fn read(&self) -> anyhow::Result<(ListKind, Vec<Sample>)> {
        let root = self.root();
        let (kind, samples) = read_samples(&self.csv, &root, &self.prefix)?;
        if !self.follow_links {
            check_inside_root(&root, &samples)
                .with_context(|| format!("reading {}", self.csv.display()))?;
        }
        Ok((kind, samples))
    }
}
