//! `visual-search index calibrate`: measures, on labelled queries, the top-1 score from which
//! the index's top hit is the product asked for, and stores it in the index so that `search` and
//! `POST /search` answer "not in the catalogue" below it (`"match": null`).
//!
//! Absent queries are made the way `eval --holdout-products` makes them: a seeded fraction of
//! the index's products is hidden (their rows are skipped in each query's results, which for an
//! exact index equals removing them), so a catalogue and a labelled query list are all it needs.
//! The search is the index's own (its stored centring and blending included), so the threshold
//! holds for what the service answers.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_retrieval::item_metadata::Filter;
use visual_search_retrieval::open_set::{MatchThreshold, top1_without};

use crate::args::model::DeviceArgs;
use crate::args::postgres::{PgArgs, open_catalogue};
use crate::dev_set_run::eval_loader;
use crate::embedding_run::embed_with_progress;
use crate::holdout::held_out_products;
use crate::index_model::load_index_model;
use crate::sample_lists::ListArgs;

/// Results searched per query before hidden products are skipped; queries whose every hit is
/// hidden are searched again over the whole index.
const FIRST_DEPTH: usize = 50;

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// The index: a folder or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// Labelled queries (a dev-set queries.csv, cropped to its boxes, or any list whose labels
    /// are the index's products).
    #[command(flatten)]
    list: ListArgs,
    /// Fraction of the index's products hidden to make queries whose product is absent.
    #[arg(long, default_value_t = 0.25)]
    holdout_products: f64,
    #[arg(long, default_value_t = 0)]
    holdout_seed: u64,
    /// Precision wanted on accepted queries: the stored threshold is the lowest top-1 score at
    /// which at least this fraction of the queries scoring above it are present.
    #[arg(long, default_value_t = 0.9)]
    precision: f64,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let index = open_catalogue(&args.index, &args.pg)?;
    if !(args.precision > 0.0 && args.precision <= 1.0) {
        bail!("--precision must be in (0, 1], got {}", args.precision);
    }
    let catalogue: HashSet<i64> = index.distinct_labels()?.into_iter().collect();
    let labels: Vec<i64> = catalogue.iter().copied().collect();
    let held = held_out_products(&labels, args.holdout_products, args.holdout_seed)?;

    let loaded = load_index_model(index.meta(), &args.device)?;
    let (_, samples) = args.list.read()?;
    if samples.is_empty() {
        bail!("{} lists no images", args.list.csv.display());
    }
    let samples: Arc<[Sample]> = samples.into();
    let set = embed_with_progress(
        &loaded,
        false,
        samples.clone(),
        &eval_loader(args.list.batch_size, args.list.workers),
        "embedding queries",
        "they are left out of the calibration",
    )?;
    let skipped: HashSet<usize> = set.skipped.iter().map(|s| s.sample_index).collect();
    let kept: Vec<usize> = (0..samples.len())
        .filter(|i| !skipped.contains(i))
        .collect();
    let mut queries = Vec::with_capacity(kept.len() * loaded.dim);
    kept.iter()
        .for_each(|&i| queries.extend_from_slice(set.embeddings.row(i)));
    let query_labels: Vec<i64> = kept.iter().map(|&i| samples[i].label).collect();

    let as_pairs = |hits: Vec<Vec<visual_search_retrieval::catalogue::CatalogueHit>>| {
        hits.into_iter()
            .map(|h| h.into_iter().map(|h| (h.item.label, h.score)).collect())
            .collect::<Vec<Vec<(i64, f32)>>>()
    };
    let mut hits = as_pairs(
        index
            .search_items(&queries, FIRST_DEPTH.min(index.rows()), &Filter::default())
            .context("searching the index")?,
    );
    for (q, found) in hits.iter_mut().enumerate() {
        if found.iter().all(|(l, _)| held.contains(l)) && index.rows() > FIRST_DEPTH {
            let row = &queries[q * loaded.dim..(q + 1) * loaded.dim];
            *found = as_pairs(index.search_items(row, index.rows(), &Filter::default())?)
                .pop()
                .unwrap_or_default();
        }
    }
    let (scores, present) = top1_without(&hits, &query_labels, &held, &catalogue);
    let threshold = MatchThreshold::calibrate(&scores, &present, args.precision, held.len())?;
    index.store_match_threshold(Some(threshold.clone()))?;
    println!(
        "{} queries ({} present, {} absent after hiding {} of {} products); top-1 score AUROC {:.3}",
        scores.len(),
        threshold.present_queries,
        threshold.absent_queries,
        held.len(),
        catalogue.len(),
        threshold.auroc
    );
    println!(
        "stored match threshold {:.4} in {}: precision {:.3} (asked {}), recall {:.3}",
        threshold.score,
        index.location(),
        threshold.precision,
        args.precision,
        threshold.recall
    );
    Ok(())
}
