//! `mine filter`: keep the review photos that show the product. For each product, every user
//! image's cosine similarity to each of the product's catalogue images is averaged; the photo is
//! kept when that mean exceeds the threshold (the original used 0.6 and 0.5). Writes the kept
//! products table, a per-image CSV (`user_images.csv`: asin, url, mean similarity, kept), a
//! per-product CSV (`product_stats.csv`) and a histogram of the mean similarities with the
//! threshold marked, which is how a user picks the threshold for a new model or category.
//!
//! `--work-dir` may hold a user's own files: each output replaces only an earlier output of
//! this step (a products table, a CSV with this step's header, the histogram's PNG), checked
//! for all four before anything is read or written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{MiningError, Result};
use crate::feature_store::read_features;
use crate::pairs_table::{ProductRow, ProductWriter, read_products};
use crate::similarity_histogram::draw_histogram;
use visual_search_data::output_file::{OutputFormat, check_replaceable_output};

/// What `mine filter` did.
#[derive(Debug, Default)]
pub struct FilterReport {
    pub products: usize,
    /// Products none of whose catalogue images could be embedded.
    pub products_without_embedded_images: usize,
    pub user_images: usize,
    /// User images that could not be embedded (fetch or decode failed).
    pub user_images_missing: usize,
    pub kept_user_images: usize,
    pub kept_products: usize,
    pub similarities: Vec<f32>,
}

/// Where `mine filter` writes, all in one folder.
#[derive(Debug, Clone)]
pub struct FilterOutputs {
    pub kept: PathBuf,
    pub user_images_csv: PathBuf,
    pub product_stats_csv: PathBuf,
    pub histogram_png: PathBuf,
}

impl FilterOutputs {
    pub fn in_dir(dir: &Path) -> Self {
        FilterOutputs {
            kept: dir.join("kept.parquet"),
            user_images_csv: dir.join("user_images.csv"),
            product_stats_csv: dir.join("product_stats.csv"),
            histogram_png: dir.join("similarity_histogram.png"),
        }
    }
}

const USER_IMAGES_HEADER: [&str; 4] = ["asin", "url", "mean_similarity", "kept"];
const PRODUCT_STATS_HEADER: [&str; 6] = [
    "asin",
    "product_images",
    "user_images",
    "embedded_user_images",
    "kept_user_images",
    "mean_similarity",
];

impl FilterOutputs {
    /// Whether every output is absent or an earlier output of this step.
    fn check_replaceable(&self) -> Result<()> {
        crate::pairs_table::check_replaceable(&self.kept)?;
        check_replaceable_output(
            &self.user_images_csv,
            OutputFormat::Csv(&USER_IMAGES_HEADER),
        )?;
        check_replaceable_output(
            &self.product_stats_csv,
            OutputFormat::Csv(&PRODUCT_STATS_HEADER),
        )?;
        crate::similarity_histogram::check_replaceable(&self.histogram_png)
    }
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> MiningError + '_ {
    move |e| MiningError::invalid(path, e.to_string())
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Mean cosine similarity of `user` to each of `catalogue` (all L2-normalised).
pub fn mean_similarity(user: &[f32], catalogue: &[Vec<f32>]) -> f32 {
    catalogue.iter().map(|p| dot(user, p)).sum::<f32>() / catalogue.len() as f32
}

/// Runs the step.
pub fn mine_filter(
    products: &Path,
    features_dir: &Path,
    threshold: f32,
    out: &FilterOutputs,
) -> Result<FilterReport> {
    out.check_replaceable()?;
    let rows = read_products(products)?;
    let features: HashMap<String, Vec<f32>> = read_features(features_dir)?
        .into_iter()
        .filter_map(|(u, r)| r.ok().map(|e| (u, normalized(&e))))
        .collect();
    if features.is_empty() {
        return Err(MiningError::invalid(
            features_dir,
            "no embeddings here; run `mine features` first",
        ));
    }
    let mut report = FilterReport {
        products: rows.len(),
        ..Default::default()
    };
    let mut kept = ProductWriter::create(&out.kept)?;
    let mut per_image = csv::Writer::from_writer(Vec::new());
    let mut per_product = csv::Writer::from_writer(Vec::new());
    per_image
        .write_record(USER_IMAGES_HEADER)
        .map_err(csv_err(&out.user_images_csv))?;
    per_product
        .write_record(PRODUCT_STATS_HEADER)
        .map_err(csv_err(&out.product_stats_csv))?;
    for row in rows {
        report.user_images += row.user_images.len();
        let catalogue_urls: Vec<&String> = row
            .product_images
            .iter()
            .filter(|u| features.contains_key(*u))
            .collect();
        let catalogue: Vec<Vec<f32>> = catalogue_urls
            .iter()
            .map(|u| features[*u].clone())
            .collect();
        if catalogue.is_empty() {
            report.products_without_embedded_images += 1;
            report.user_images_missing += row
                .user_images
                .iter()
                .filter(|u| !features.contains_key(*u))
                .count();
            continue;
        }
        let mut keep = Vec::new();
        let mut sims = Vec::new();
        for url in &row.user_images {
            let Some(user) = features.get(url) else {
                report.user_images_missing += 1;
                continue;
            };
            let s = mean_similarity(user, &catalogue);
            let k = s > threshold;
            sims.push(s);
            report.similarities.push(s);
            per_image
                .write_record([
                    row.asin.as_str(),
                    url,
                    &format!("{s:.6}"),
                    if k { "true" } else { "false" },
                ])
                .map_err(csv_err(&out.user_images_csv))?;
            if k {
                keep.push(url.clone());
            }
        }
        let mean = if sims.is_empty() {
            f32::NAN
        } else {
            sims.iter().sum::<f32>() / sims.len() as f32
        };
        per_product
            .write_record([
                row.asin.as_str(),
                &catalogue.len().to_string(),
                &row.user_images.len().to_string(),
                &sims.len().to_string(),
                &keep.len().to_string(),
                &if mean.is_nan() {
                    String::new()
                } else {
                    format!("{mean:.6}")
                },
            ])
            .map_err(csv_err(&out.product_stats_csv))?;
        report.kept_user_images += keep.len();
        if !keep.is_empty() {
            report.kept_products += 1;
            kept.push(ProductRow {
                product_images: catalogue_urls.into_iter().cloned().collect(),
                user_images: keep,
                ..row
            })?;
        }
    }
    kept.finish()?;
    for (w, path) in [
        (per_image, &out.user_images_csv),
        (per_product, &out.product_stats_csv),
    ] {
        let bytes = w
            .into_inner()
            .map_err(|e| MiningError::invalid(path, e.to_string()))?;
        visual_search_data::atomic_write::write_atomically(path, &bytes)?;
    }
    draw_histogram(&out.histogram_png, &report.similarities, threshold)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_cosines() {
        let cat = vec![normalized(&[1.0, 0.0]), normalized(&[0.0, 1.0])];
        let u = normalized(&[1.0, 1.0]);
        assert!((mean_similarity(&u, &cat) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((mean_similarity(&cat[0], &cat) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_users_file_under_an_output_name_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = FilterOutputs::in_dir(dir.path());
        let missing = dir.path().join("pairs.parquet");
        // Earlier outputs of the step pass the check (the step then fails on the missing input).
        std::fs::write(
            &out.user_images_csv,
            "asin,url,mean_similarity,kept\nB1,u,0.5,true\n",
        )
        .unwrap();
        std::fs::write(
            &out.product_stats_csv,
            PRODUCT_STATS_HEADER.join(",") + "\r\n",
        )
        .unwrap();
        crate::similarity_histogram::draw_histogram(&out.histogram_png, &[0.5], 0.6).unwrap();
        let err = mine_filter(&missing, dir.path(), 0.6, &out).unwrap_err();
        assert!(err.to_string().contains("pairs.parquet"), "{err}");

        for (path, theirs) in [
            (&out.user_images_csv, b"name,notes\n".as_slice()),
            (&out.product_stats_csv, b"asin;notes\n".as_slice()),
            (&out.histogram_png, b"\x89PNG\r\n\x1a\n".as_slice()),
            (&out.kept, b"PAR1".as_slice()),
        ] {
            let before = std::fs::read(path).ok();
            std::fs::write(path, theirs).unwrap();
            let err = mine_filter(&missing, dir.path(), 0.6, &out).unwrap_err();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                err.to_string().contains(name) && err.to_string().contains("refusing"),
                "{err}"
            );
            assert_eq!(std::fs::read(path).unwrap(), theirs, "{name} was changed");
            match before {
                Some(b) => std::fs::write(path, b).unwrap(),
                None => std::fs::remove_file(path).unwrap(),
            }
        }
    }
}
