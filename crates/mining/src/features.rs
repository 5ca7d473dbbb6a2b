//! `mine features`: embed every product and user image of a products table, fetched over HTTP
//! and never written to disk. Bodies are decoded and resized on the fetcher's blocking threads,
//! embedded in batches on the caller's thread (where the model lives), and snapshotted into the
//! feature store every `snapshot_every` images, so a killed run loses at most one snapshot's
//! worth of work and never refetches a URL a snapshot holds. URLs that still fail after the
//! retries are stored with their reason (and listed in `failed_urls.csv`); a resume skips them
//! unless asked to retry them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use visual_search_data::image::{DecodeLimits, Normalization, decode_rgb_bytes};
use visual_search_data::shard::ShardSpec;
use visual_search_data::transform::EvalTransform;
use visual_search_data::{Crop, Sample};

use crate::error::{MiningError, Result};
use crate::feature_store::{FeatureRecord, FeatureStore, read_features};
use crate::fetch::{FetchConfig, fetch_all};
use crate::pairs_table::read_products;

/// A model that turns prepared images into L2-normalised embeddings.
pub trait ImageEmbedder {
    /// Square input side in pixels.
    fn input_size(&self) -> usize;
    fn normalization(&self) -> Normalization;
    fn dim(&self) -> usize;
    /// A stable description of the model and weights (stored with the features).
    fn describe(&self) -> String;
    /// `n × dim` embeddings of `n` images given as `n × 3 × size × size` floats.
    fn embed(&mut self, pixels: Vec<f32>, n: usize) -> std::result::Result<Vec<f32>, String>;
}

/// How `mine features` runs.
#[derive(Debug, Clone)]
pub struct FeaturesOptions {
    pub fetch: FetchConfig,
    pub batch_size: usize,
    pub snapshot_every: usize,
    /// Fetch again the URLs an earlier run recorded as failed.
    pub retry_failed: bool,
    pub limits: DecodeLimits,
    /// Embed only this worker's share of the URLs, into its own store under the features
    /// folder ([`worker_store`]); `feature_merge` joins the workers' stores.
    pub shard: Option<ShardSpec>,
}

/// Where worker `spec` keeps its features: `workers/I-of-N/` inside the features folder, a
/// store of its own (resumable like the main one), so workers never write the same files.
pub fn worker_store(store_dir: &Path, spec: ShardSpec) -> PathBuf {
    store_dir
        .join(WORKERS_DIR)
        .join(format!("{}-of-{}", spec.index, spec.count))
}

/// The folder inside the features folder that holds the workers' stores.
pub const WORKERS_DIR: &str = "workers";

/// What `mine features` did.
#[derive(Debug, Default)]
pub struct FeaturesReport {
    pub urls: usize,
    pub already_done: usize,
    pub embedded: usize,
    pub failed: usize,
    pub snapshots: usize,
    pub failed_report: PathBuf,
}

/// Every distinct image URL of a products table, product images first, in table order.
pub fn image_urls(products: &Path) -> Result<Vec<String>> {
    let rows = read_products(products)?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for url in rows
        .iter()
        .flat_map(|r| r.product_images.iter().chain(&r.user_images))
    {
        if seen.insert(url.as_str()) {
            out.push(url.clone());
        }
    }
    Ok(out)
}

/// Runs the step; `progress(done, total)` is called as images finish.
pub fn mine_features(
    products: &Path,
    store_dir: &Path,
    embedder: &mut dyn ImageEmbedder,
    options: &FeaturesOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeaturesReport> {
    let all_urls = image_urls(products)?;
    let (urls, store_dir) = match options.shard {
        Some(spec) => (
            all_urls[spec.share(all_urls.len())].to_vec(),
            worker_store(store_dir, spec),
        ),
        None => (all_urls, store_dir.to_path_buf()),
    };
    let store_dir = store_dir.as_path();
    let mut store =
        FeatureStore::open_for_writing(store_dir, &embedder.describe(), embedder.dim())?;
    let previous = read_features(store_dir)?;
    let todo: Vec<String> = urls
        .iter()
        .filter(|u| match previous.get(*u) {
            Some(Ok(_)) => false,
            Some(Err(_)) => options.retry_failed,
            None => true,
        })
        .cloned()
        .collect();
    let mut report = FeaturesReport {
        urls: urls.len(),
        already_done: urls.len() - todo.len(),
        failed_report: store_dir.join("failed_urls.csv"),
        ..Default::default()
    };
    progress(report.already_done, urls.len());

    let size = embedder.input_size();
    let transform = EvalTransform {
        size: size as u32,
        normalization: embedder.normalization(),
        limits: options.limits,
    };
    let results = fetch_all(todo, options.fetch.clone(), move |url, bytes| {
        let image = decode_rgb_bytes(&bytes, Path::new(url), &transform.limits)
            .map_err(|e| e.to_string())?;
        let sample = Sample {
            path: PathBuf::from(url),
            label: 0,
            crop: Crop::None,
        };
        let resized = transform.prepare_rgb(&image, &sample);
        let mut out = vec![0.0f32; 3 * size * size];
        transform.normalization.write_chw(&resized, &mut out);
        Ok(out)
    })?;

    let batch_size = options.batch_size.max(1);
    let snapshot_every = options.snapshot_every.max(1);
    let mut pending: Vec<FeatureRecord> = Vec::new();
    let mut batch_urls: Vec<String> = Vec::new();
    let mut batch_pixels: Vec<f32> = Vec::new();
    let mut embed_batch = |urls: &mut Vec<String>,
                           pixels: &mut Vec<f32>,
                           pending: &mut Vec<FeatureRecord>|
     -> Result<()> {
        if urls.is_empty() {
            return Ok(());
        }
        let n = urls.len();
        let embeddings = embedder
            .embed(std::mem::take(pixels), n)
            .map_err(MiningError::Embed)?;
        let dim = embeddings.len() / n;
        for (url, e) in urls.drain(..).zip(embeddings.chunks(dim.max(1))) {
            pending.push(FeatureRecord {
                url,
                result: Ok(e.to_vec()),
            });
        }
        Ok(())
    };
    for (url, result) in results {
        match result {
            Ok(pixels) => {
                batch_urls.push(url);
                batch_pixels.extend_from_slice(&pixels);
                if batch_urls.len() >= batch_size {
                    embed_batch(&mut batch_urls, &mut batch_pixels, &mut pending)?;
                }
            }
            Err(e) => {
                tracing::debug!("{url}: {e}");
                pending.push(FeatureRecord {
                    url,
                    result: Err(e),
                });
            }
        }
        if pending.len() >= snapshot_every {
            snapshot(&mut store, &mut pending, &mut report)?;
        }
        progress(
            report.already_done
                + report.embedded
                + report.failed
                + pending.len()
                + batch_urls.len(),
            urls.len(),
        );
    }
    embed_batch(&mut batch_urls, &mut batch_pixels, &mut pending)?;
    snapshot(&mut store, &mut pending, &mut report)?;
    progress(urls.len(), urls.len());
    write_failed_report(store_dir, &report.failed_report)?;
    Ok(report)
}

fn snapshot(
    store: &mut FeatureStore,
    pending: &mut Vec<FeatureRecord>,
    report: &mut FeaturesReport,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    store.write_chunk(pending)?;
    report.snapshots += 1;
    for r in pending.drain(..) {
        match r.result {
            Ok(_) => report.embedded += 1,
            Err(_) => report.failed += 1,
        }
    }
    Ok(())
}

/// `url,error` for every URL of the store that has no embedding (atomically rewritten).
pub(crate) fn write_failed_report(store_dir: &Path, path: &Path) -> Result<()> {
    let all = read_features(store_dir)?;
    let mut failed: Vec<(&String, &String)> = all
        .iter()
        .filter_map(|(u, r)| r.as_ref().err().map(|e| (u, e)))
        .collect();
    failed.sort();
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| MiningError::invalid(path, e.to_string());
    w.write_record(["url", "error"]).map_err(csv_err)?;
    for (u, e) in failed {
        w.write_record([u, e]).map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| MiningError::invalid(path, e.to_string()))?;
    visual_search_data::atomic_write::write_atomically(path, &bytes)?;
    Ok(())
}
