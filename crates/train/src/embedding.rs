//! Embedding a list of samples with a model: the parallel loader feeds batches, the model turns
//! them into L2-normalised rows, and rows land at their sample's index — so row order is CSV
//! order whatever order batches finish in. Images that cannot be read are reported and their
//! rows left at zero (an all-zero row never matches anything).

use std::sync::Arc;
use std::time::{Duration, Instant};

use visual_search_data::Sample;
use visual_search_data::loader::{BatchLoader, LoaderConfig, SkippedSample};
use visual_search_data::sampler::sequential_order;
use visual_search_data::transform::SampleTransform;
use visual_search_inference::{BatchEmbedder, InferenceError};
use visual_search_retrieval::embedding_file::Embeddings;

/// Where the time went.
#[derive(Debug, Clone, Default)]
pub struct EmbedTimings {
    /// Time the model waited for the loader (decode + preprocess not hidden by prefetching).
    pub waiting_for_data: Duration,
    /// Time in the model forward pass (including moving data to the device and back).
    pub model: Duration,
    pub total: Duration,
}

/// Result of [`embed_samples`].
pub struct EmbeddedSet {
    pub embeddings: Embeddings,
    pub skipped: Vec<SkippedSample>,
    pub timings: EmbedTimings,
}

/// Embeds every sample; `progress(done, total)` is called after each batch. A failing model
/// run (not a bad image: those are skipped) stops it with that error.
pub fn embed_samples(
    model: &dyn BatchEmbedder,
    samples: Arc<[Sample]>,
    transform: Arc<dyn SampleTransform>,
    loader: &LoaderConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<EmbeddedSet, InferenceError> {
    let start = Instant::now();
    let n = samples.len();
    let dim = model.dim();
    let mut data = vec![0.0f32; n * dim];
    let labels: Vec<i64> = samples.iter().map(|s| s.label).collect();
    let config = LoaderConfig {
        ordered: false,
        drop_last: false,
        ..loader.clone()
    };
    let mut batches = BatchLoader::new(samples, sequential_order(n), transform, &config);
    let mut timings = EmbedTimings::default();
    let mut skipped = Vec::new();
    let mut done = 0;
    loop {
        let wait = Instant::now();
        let Some(batch) = batches.next() else { break };
        timings.waiting_for_data += wait.elapsed();
        done += batch.len() + batch.skipped.len();
        skipped.extend(batch.skipped.iter().cloned());
        if !batch.is_empty() {
            let forward = Instant::now();
            let n_images = batch.len();
            let rows = model.embed_batch(batch.images, n_images)?;
            timings.model += forward.elapsed();
            for (k, &i) in batch.sample_indices.iter().enumerate() {
                data[i * dim..(i + 1) * dim].copy_from_slice(&rows[k * dim..(k + 1) * dim]);
            }
        }
        progress(done, n);
    }
    skipped.sort_by_key(|s| s.sample_index);
    timings.total = start.elapsed();
    Ok(EmbeddedSet {
        embeddings: Embeddings {
            rows: n,
            dim,
            data,
            labels: Some(labels),
        },
        skipped,
        timings,
    })
}
