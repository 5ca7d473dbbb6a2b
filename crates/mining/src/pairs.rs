//! `mine pairs`: one category's review dump + metadata dump → the products table of products
//! that have at least one review photo and at least one catalogue image.
//!
//! Two streaming passes. The review pass keeps, per product, the review count and the
//! de-duplicated review-photo URLs: memory grows with the number of products, never with the size
//! of the dump. The metadata pass writes a row for each product with review photos as its
//! metadata line arrives (first line wins for duplicated products).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::amazon_records::{parse_meta, parse_review};
use crate::error::{MiningError, Result};
use crate::json_lines::{StreamStats, stream_records};
use crate::pairs_table::{ProductRow, ProductWriter};

/// What `mine pairs` did.
#[derive(Debug, Default)]
pub struct PairsReport {
    pub reviews: StreamStats,
    pub metadata: StreamStats,
    pub products_reviewed: u64,
    pub products_with_user_images: u64,
    pub user_images: u64,
    pub written: u64,
    /// Products with review photos whose metadata has no image.
    pub without_product_images: u64,
    /// Products with review photos that the metadata never mentions.
    pub without_metadata: u64,
    pub duplicate_metadata: u64,
}

#[derive(Default)]
struct Reviewed {
    n_reviews: u32,
    user_images: Vec<String>,
}

/// A dump none of whose lines is a record — another file, or not JSON lines (a `.gz` that is
/// not gzip is read as text) — is an error rather than an empty table: a few malformed lines
/// in a real dump are counted and skipped, all of them mean the wrong input.
fn refuse_unreadable(path: &Path, what: &str, stats: &StreamStats) -> Result<()> {
    if stats.records > 0 || stats.malformed == 0 {
        return Ok(());
    }
    let first = stats
        .malformed_samples
        .first()
        .map(|(line, e)| format!(" (line {line}: {e})"))
        .unwrap_or_default();
    Err(MiningError::invalid(
        path,
        format!(
            "none of its {} line(s) is a {what} record{first}; is it the right file, as JSON \
             lines (plain or gzip)?",
            stats.malformed
        ),
    ))
}

/// Runs both passes and writes `out` (Parquet).
pub fn mine_pairs(
    reviews: &Path,
    metadata: &Path,
    out: &Path,
    threads: usize,
) -> Result<PairsReport> {
    // Before the reviews pass, which can take minutes on a large dump.
    crate::pairs_table::check_replaceable(out)?;
    let mut report = PairsReport::default();
    let mut products: HashMap<String, Reviewed> = HashMap::new();
    report.reviews = stream_records(
        reviews,
        threads,
        |l| parse_review(l).map(Some),
        |review| {
            let entry = products.entry(review.product).or_default();
            entry.n_reviews = entry.n_reviews.saturating_add(1);
            for url in review.image_urls {
                entry.user_images.push(url);
            }
        },
    )?;
    refuse_unreadable(reviews, "review", &report.reviews)?;
    report.products_reviewed = products.len() as u64;
    products.retain(|_, p| !p.user_images.is_empty());
    for p in products.values_mut() {
        let mut seen = HashSet::new();
        p.user_images.retain(|u| seen.insert(u.clone()));
        report.user_images += p.user_images.len() as u64;
    }
    report.products_with_user_images = products.len() as u64;

    let mut writer = ProductWriter::create(out)?;
    let mut write_error = None;
    let mut done: HashSet<String> = HashSet::new();
    report.metadata = stream_records(
        metadata,
        threads,
        |l| {
            let meta = parse_meta(l)?;
            Ok(Some(meta))
        },
        |meta| {
            if write_error.is_some() || !products.contains_key(&meta.product) {
                return;
            }
            if !done.insert(meta.product.clone()) {
                report.duplicate_metadata += 1;
                return;
            }
            if meta.image_urls.is_empty() {
                report.without_product_images += 1;
                return;
            }
            let reviewed = products
                .get_mut(&meta.product)
                .map(std::mem::take)
                .unwrap_or_default();
            if let Err(e) = writer.push(ProductRow {
                asin: meta.product,
                title: meta.title,
                product_images: meta.image_urls,
                user_images: reviewed.user_images,
                n_reviews: reviewed.n_reviews,
            }) {
                write_error = Some(e);
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e);
    }
    refuse_unreadable(metadata, "metadata", &report.metadata)?;
    report.without_metadata = report.products_with_user_images - done.len() as u64;
    report.written = writer.finish()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "{\"parent_asin\":\"A1\",\"images\":[{\"large\":\"http://x/p1.jpg\"}]}\n";

    #[test]
    fn a_dump_with_no_record_in_it_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (reviews, metadata) = (dir.path().join("r.json.gz"), dir.path().join("m.jsonl"));
        let out = dir.path().join("pairs.parquet");
        std::fs::write(&metadata, META).unwrap();
        // Named .gz but not gzip, and no line of it JSON: another file.
        std::fs::write(&reviews, "garbage\nmore garbage\n").unwrap();
        let err = mine_pairs(&reviews, &metadata, &out, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.json.gz") && err.contains("none of its 2 line(s) is a review record"),
            "{err}"
        );
        assert!(!out.exists());

        // One good line among bad ones is a real dump: the bad ones are counted and skipped.
        let review = "{\"asin\":\"A1\",\"images\":[{\"large_image_url\":\"http://x/1.jpg\"}]}";
        std::fs::write(&reviews, format!("garbage\n{review}\n")).unwrap();
        let report = mine_pairs(&reviews, &metadata, &out, 2).unwrap();
        assert_eq!((report.written, report.reviews.malformed), (1, 1));

        std::fs::write(&metadata, "{broken\n").unwrap();
        let err = mine_pairs(&reviews, &metadata, &out, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.jsonl") && err.contains("metadata record"),
            "{err}"
        );
    }
}
