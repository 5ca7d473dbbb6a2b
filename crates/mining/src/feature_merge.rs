//! Joining the stores of `mine features` workers (`--shard I/N`) into the features folder, so
//! `mine filter` reads the same URL → embedding map a single run would have written. Workers
//! of runs with different worker counts may coexist (a re-split job): every store is read, a
//! URL's embedding is preferred over a recorded failure, and the merge refuses when a URL of
//! the products table is in no store (naming how many, and some) or the stores disagree on the
//! model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{MiningError, Result};
use crate::feature_store::{FeatureRecord, FeatureStore, read_features, store_model};
use crate::features::{WORKERS_DIR, image_urls, write_failed_report};

/// What a merge did.
#[derive(Debug, Default)]
pub struct FeatureMergeReport {
    pub workers: usize,
    pub urls: usize,
    /// URLs the features folder held before the merge.
    pub already_merged: usize,
    pub embedded: usize,
    pub failed: usize,
    pub failed_report: PathBuf,
}

/// The workers' stores under `store_dir`, in name order.
fn worker_stores(store_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = store_dir.join(WORKERS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MiningError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| MiningError::io(&dir, e))?;
        if entry.path().is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Writes every URL of `products` that the workers embedded (or recorded as failed) and the
/// features folder lacks into it, in table order, `chunk_size` URLs per chunk.
pub fn merge_worker_features(
    products: &Path,
    store_dir: &Path,
    chunk_size: usize,
) -> Result<FeatureMergeReport> {
    let stores = worker_stores(store_dir)?;
    if stores.is_empty() {
        return Err(MiningError::invalid(
            store_dir,
            format!("no worker stores in {WORKERS_DIR}/: run the workers (--shard I/N) first"),
        ));
    }
    let mut model: Option<(String, usize, PathBuf)> = None;
    let mut found: HashMap<String, std::result::Result<Vec<f32>, String>> = HashMap::new();
    for store in &stores {
        let Some((m, dim)) = store_model(store)? else {
            continue;
        };
        match &model {
            None => model = Some((m, dim, store.clone())),
            Some((first, first_dim, first_store)) if *first != m || *first_dim != dim => {
                return Err(MiningError::invalid(
                    store,
                    format!(
                        "made by {m} ({dim}-d), but {} was made by {first} ({first_dim}-d)",
                        first_store.display()
                    ),
                ));
            }
            Some(_) => {}
        }
        for (url, result) in read_features(store)? {
            let keep_old = matches!(found.get(&url), Some(Ok(_))) && result.is_err();
            if !keep_old {
                found.insert(url, result);
            }
        }
    }
    let Some((model, dim, _)) = model else {
        return Err(MiningError::invalid(
            store_dir,
            "the worker stores hold nothing yet: run the workers first",
        ));
    };
    let urls = image_urls(products)?;
    let merged = read_features(store_dir)?;
    let missing: Vec<&String> = urls
        .iter()
        .filter(|u| !found.contains_key(*u) && !merged.contains_key(*u))
        .collect();
    if !missing.is_empty() {
        let some: Vec<&str> = missing.iter().take(5).map(|u| u.as_str()).collect();
        return Err(MiningError::invalid(
            store_dir,
            format!(
                "{} of {} image URLs are in no worker's store (e.g. {}): run the unfinished workers again",
                missing.len(),
                urls.len(),
                some.join(", ")
            ),
        ));
    }
    let mut store = FeatureStore::open_for_writing(store_dir, &model, dim)?;
    let mut report = FeatureMergeReport {
        workers: stores.len(),
        urls: urls.len(),
        already_merged: urls.iter().filter(|u| merged.contains_key(*u)).count(),
        failed_report: store_dir.join("failed_urls.csv"),
        ..Default::default()
    };
    let fresh: Vec<FeatureRecord> = urls
        .iter()
        .filter(|u| !merged.contains_key(*u))
        .filter_map(|u| {
            found.remove(u).map(|result| FeatureRecord {
                url: u.clone(),
                result,
            })
        })
        .collect();
    for chunk in fresh.chunks(chunk_size.max(1)) {
        store.write_chunk(chunk)?;
    }
    report.embedded = fresh.iter().filter(|r| r.result.is_ok()).count();
    report.failed = fresh.len() - report.embedded;
    write_failed_report(store_dir, &report.failed_report)?;
    Ok(report)
}
