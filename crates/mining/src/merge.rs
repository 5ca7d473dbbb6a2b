//! `mine merge`: the downloaded categories → one training list `image_path,label` (SPEC "Data
//! formats", mined pairs), read by the XBM phase's `mined_pairs`.
//!
//! A product is one label whatever category lists it (keyed by ASIN). Labels are the rank of
//! the ASIN in sorted order among products that pass `--min-images`, so the same inputs always
//! give the same labels; `labels.csv` beside the list maps them back. A picture that two
//! different products claim (the same bytes, hence the same content-addressed file) would teach
//! the model a contradiction, so it is dropped from both and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::download::read_journal;
use crate::error::{MiningError, Result};
use crate::pairs_table::read_products;
use visual_search_data::output_file::{OutputFormat, check_replaceable_output};

/// One category's mining folder after `mine download`.
#[derive(Debug, Clone)]
pub struct CategoryInput {
    pub kept: PathBuf,
    pub journal: PathBuf,
    pub images_dir: PathBuf,
}

/// Where a category's images went; written by the CLI's `mine download` next to its journal so
/// `merge` finds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadLocation {
    pub images_dir: PathBuf,
}

/// How to merge.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub min_images: usize,
    pub include_product_images: bool,
    /// Paths in the list are relative to this folder.
    pub root: PathBuf,
}

/// What `mine merge` did.
#[derive(Debug, Default)]
pub struct MergeReport {
    pub products_seen: usize,
    pub products_written: usize,
    pub dropped_below_min_images: usize,
    pub images_written: usize,
    pub images_not_downloaded: usize,
    pub images_claimed_twice: usize,
}

/// The training list's columns, and its labels file's.
const LIST_HEADER: [&str; 2] = ["image_path", "label"];
const LABELS_HEADER: [&str; 4] = ["label", "asin", "title", "images"];

/// Merges `categories` into the list `out` and `labels` (both CSV, atomic).
pub fn mine_merge(
    categories: &[CategoryInput],
    options: &MergeOptions,
    out: &Path,
    labels: &Path,
) -> Result<MergeReport> {
    check_replaceable_output(out, OutputFormat::Csv(&LIST_HEADER))?;
    check_replaceable_output(labels, OutputFormat::Csv(&LABELS_HEADER))?;
    let mut report = MergeReport::default();
    // asin → (title, images as absolute paths, the same as a set: a product may list
    // thousands, so membership is not a scan)
    type Images = (Option<String>, Vec<PathBuf>, HashSet<PathBuf>);
    let mut products: BTreeMap<String, Images> = BTreeMap::new();
    for cat in categories {
        let journal = read_journal(&cat.journal, &cat.images_dir)?;
        for row in read_products(&cat.kept)? {
            let entry = products
                .entry(row.asin.clone())
                .or_insert_with(|| (row.title.clone(), Vec::new(), HashSet::new()));
            let urls = options
                .include_product_images
                .then_some(&row.product_images)
                .into_iter()
                .flatten()
                .chain(&row.user_images);
            for url in urls {
                match journal.get(url) {
                    Some(Ok(rel)) => {
                        let path = cat.images_dir.join(rel);
                        if entry.2.insert(path.clone()) {
                            entry.1.push(path);
                        }
                    }
                    _ => report.images_not_downloaded += 1,
                }
            }
        }
    }
    report.products_seen = products.len();
    let mut owners: HashMap<&PathBuf, HashSet<&String>> = HashMap::new();
    for (asin, (_, images, _)) in &products {
        for p in images {
            owners.entry(p).or_default().insert(asin);
        }
    }
    let contested: HashSet<PathBuf> = owners
        .into_iter()
        .filter(|(_, o)| o.len() > 1)
        .map(|(p, _)| p.clone())
        .collect();
    let root = std::path::absolute(&options.root).map_err(|e| MiningError::io(&options.root, e))?;
    let mut list = csv::Writer::from_writer(Vec::new());
    let mut label_rows = csv::Writer::from_writer(Vec::new());
    let list_err = |e: csv::Error| MiningError::invalid(out, e.to_string());
    let label_err = |e: csv::Error| MiningError::invalid(labels, e.to_string());
    list.write_record(LIST_HEADER).map_err(list_err)?;
    label_rows.write_record(LABELS_HEADER).map_err(label_err)?;
    let mut label = 0u64;
    for (asin, (title, images, _)) in &products {
        let images: Vec<&PathBuf> = images.iter().filter(|p| !contested.contains(*p)).collect();
        if images.len() < options.min_images.max(1) {
            report.dropped_below_min_images += 1;
            continue;
        }
        for p in &images {
            let abs = std::path::absolute(p).map_err(|e| MiningError::io(p, e))?;
            let rel = abs.strip_prefix(&root).map_err(|_| {
                MiningError::invalid(p, format!("is not under the list's root {}; pass --root with a folder that holds all image folders", root.display()))
            })?;
            list.write_record([rel.to_string_lossy().as_ref(), &label.to_string()])
                .map_err(list_err)?;
        }
        label_rows
            .write_record([
                &label.to_string(),
                asin.as_str(),
                title.as_deref().unwrap_or(""),
                &images.len().to_string(),
            ])
            .map_err(label_err)?;
        report.images_written += images.len();
        report.products_written += 1;
        label += 1;
    }
    report.images_claimed_twice = contested.len();
    for (w, path) in [(list, out), (label_rows, labels)] {
        let bytes = w
            .into_inner()
            .map_err(|e| MiningError::invalid(path, e.to_string()))?;
        visual_search_data::atomic_write::write_atomically(path, &bytes)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{MergeOptions, mine_merge};

    #[test]
    fn a_users_list_under_the_output_names_is_refused_before_any_category_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let options = MergeOptions {
            min_images: 1,
            include_product_images: false,
            root: dir.path().to_path_buf(),
        };
        let (out, labels) = (dir.path().join("train.csv"), dir.path().join("labels.csv"));
        for (path, theirs) in [(&out, "name,class,group\n"), (&labels, "label,name\n")] {
            std::fs::write(path, theirs).unwrap();
            let err = mine_merge(&[], &options, &out, &labels).unwrap_err();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                err.to_string().contains(name) && err.to_string().contains("refusing"),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(path).unwrap(), theirs);
            std::fs::remove_file(path).unwrap();
        }
        // Absent outputs (or earlier ones) are written.
        mine_merge(&[], &options, &out, &labels).unwrap();
        mine_merge(&[], &options, &out, &labels).unwrap();
        let list = std::fs::read_to_string(&out).unwrap();
        assert_eq!(list.trim_end(), "image_path,label");
    }
}
