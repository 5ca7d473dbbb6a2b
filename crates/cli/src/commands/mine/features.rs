//! `mine features`: embed every image of WORK_DIR/pairs.parquet into WORK_DIR/features/ — in
//! one process, or as worker I of N into `features/workers/I-of-N/` and then merged.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use visual_search_data::image::{DecodeLimits, Normalization};
use visual_search_mining::feature_merge::merge_worker_features;
use visual_search_mining::features::{FeaturesOptions, ImageEmbedder, mine_features, worker_store};

use super::WorkDir;
use super::fetch_args::FetchArgs;
use visual_search_inference::InferenceModel;

use crate::args::model::ModelArgs;
use crate::args::shard::{ShardMode, WorkerArgs};
use crate::progress::images_bar;

#[derive(clap::Args)]
pub struct Args {
    /// The category's work folder (holding pairs.parquet).
    #[arg(long)]
    work_dir: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch_size: usize,
    /// Save the embeddings made so far every this many images.
    #[arg(long, default_value_t = 1000, value_parser = crate::args::at_least_one)]
    snapshot_every: usize,
    /// Fetch again the URLs an earlier run recorded as failed.
    #[arg(long)]
    retry_failed: bool,
    #[command(flatten)]
    worker: WorkerArgs,
}

/// A loaded registry/exported model as the mining crate's embedder.
pub(crate) struct ModelEmbedder {
    loaded: InferenceModel,
    description: String,
}

impl ModelEmbedder {
    /// Loads the model of `args`; its description is the model reference an index stores.
    pub(crate) fn load(args: &ModelArgs) -> anyhow::Result<Self> {
        let loaded = args.load()?;
        let description = serde_json::to_string(&loaded.reference)?;
        Ok(ModelEmbedder {
            loaded,
            description,
        })
    }
}

impl ImageEmbedder for ModelEmbedder {
    fn input_size(&self) -> usize {
        self.loaded.preprocessing.size
    }
    fn normalization(&self) -> Normalization {
        self.loaded.preprocessing.normalization()
    }
    fn dim(&self) -> usize {
        self.loaded.dim
    }
    fn describe(&self) -> String {
        self.description.clone()
    }
    fn embed(&mut self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, String> {
        self.loaded.embed(pixels, n).map_err(|e| e.to_string())
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let work = WorkDir::new(&a.work_dir);
    work.require(&work.pairs(), "pairs")?;
    let shard = match a.worker.mode()? {
        ShardMode::Merge => return merge(&work, a.snapshot_every),
        ShardMode::Worker(spec) => {
            a.model.require_weights_for_workers()?;
            Some(spec)
        }
        ShardMode::Whole => None,
    };
    let mut embedder = ModelEmbedder::load(&a.model)?;
    let options = FeaturesOptions {
        shard,
        fetch: a.fetch.config()?,
        batch_size: a.batch_size,
        snapshot_every: a.snapshot_every,
        retry_failed: a.retry_failed,
        limits: DecodeLimits::default(),
    };
    let store = match shard {
        Some(spec) => worker_store(&work.features(), spec),
        None => work.features(),
    };
    let bar = images_bar(0, "embedding");
    let start = Instant::now();
    let r = mine_features(
        &work.pairs(),
        &work.features(),
        &mut embedder,
        &options,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .context("mine features")?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let fresh = r.embedded + r.failed;
    println!(
        "{} image URLs: {} done before, {} embedded now, {} failed ({:.1} images/s, {} snapshots) → {}",
        r.urls,
        r.already_done,
        r.embedded,
        r.failed,
        fresh as f64 / secs.max(1e-9),
        r.snapshots,
        store.display()
    );
    println!("failed URLs: {}", r.failed_report.display());
    if let Some(spec) = shard {
        println!("worker {spec} is done; when every worker is, run again with --merge-parts");
    }
    Ok(())
}

/// Joins the workers' stores into the features folder.
fn merge(work: &WorkDir, chunk_size: usize) -> anyhow::Result<()> {
    let r = merge_worker_features(&work.pairs(), &work.features(), chunk_size)
        .context("mine features --merge-parts")?;
    println!(
        "{} image URLs from {} worker stores: {} merged before, {} embedded and {} failed merged now → {}",
        r.urls,
        r.workers,
        r.already_merged,
        r.embedded,
        r.failed,
        work.features().display()
    );
    println!("failed URLs: {}", r.failed_report.display());
    Ok(())
}
