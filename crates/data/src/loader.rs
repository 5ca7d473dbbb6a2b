//! A parallel, bounded, prefetching batch loader.
//!
//! Worker threads take whole batches as jobs and run the `SampleTransform` on each sample. The
//! consumer hands out a new job only when it takes a batch, so at most `num_workers +
//! prefetch_batches` batches exist at any time — memory stays bounded even when one slow batch
//! holds up ordered delivery. A sample that fails (missing file, corrupt image, even a panic in a
//! transform) is left out of its batch and reported in `Batch::skipped` and logged with its path:
//! batches never contain a placeholder image, and loading never crashes on bad data.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::formats::Sample;
use crate::sampler::mix_seed;
use crate::shard::ShardSpec;
use crate::transform::SampleTransform;

/// How batches are formed and delivered.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Worker threads; 0 loads on the caller's thread.
    pub num_workers: usize,
    /// Finished batches allowed to wait beyond one per worker.
    pub prefetch_batches: usize,
    /// Deliver batches in order (evaluation) or as they finish (training).
    pub ordered: bool,
    /// Drop a final batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Seeds the per-sample RNG handed to the transform.
    pub seed: u64,
    /// Added to each sample's position in `order` when seeding its RNG, so a pass resumed at
    /// position p draws the same augmentations as the uninterrupted pass did.
    pub position_offset: u64,
    /// Data-parallel training: load only this process's share of each batch (contiguous, by
    /// [`ShardSpec::share`]), each image seeded by its position in the whole batch, so the
    /// shares of all processes are exactly the batch one process would load.
    pub share: Option<ShardSpec>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            num_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch_batches: 2,
            ordered: true,
            drop_last: false,
            seed: 0,
            position_offset: 0,
            share: None,
        }
    }
}

/// A sample that could not be loaded.
#[derive(Debug, Clone)]
pub struct SkippedSample {
    pub sample_index: usize,
    pub path: PathBuf,
    pub reason: String,
}

/// A stack of loaded images, f32 NCHW.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of this batch in the epoch (0-based).
    pub index: usize,
    pub images: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub labels: Vec<i64>,
    /// Index into the sample list of each image, in batch order.
    pub sample_indices: Vec<usize>,
    pub skipped: Vec<SkippedSample>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[n, 3, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 3, self.height, self.width]
    }
}

struct Shared {
    samples: Arc<[Sample]>,
    order: Vec<usize>,
    transform: Arc<dyn SampleTransform>,
    batch_size: usize,
    seed: u64,
    position_offset: u64,
    share: Option<ShardSpec>,
}

impl Shared {
    fn load_batch(&self, index: usize) -> Batch {
        let mut start = index * self.batch_size;
        let mut end = (start + self.batch_size).min(self.order.len());
        if let Some(share) = self.share {
            let mine = share.share(end - start);
            (start, end) = (start + mine.start, start + mine.end);
        }
        let (h, w) = self.transform.output_size();
        let (h, w) = (h as usize, w as usize);
        let per_image = 3 * h * w;
        let mut images = vec![0.0f32; (end - start) * per_image];
        let mut labels = Vec::with_capacity(end - start);
        let mut sample_indices = Vec::with_capacity(end - start);
        let mut skipped = Vec::new();
        for position in start..end {
            let sample_index = self.order[position];
            let sample = &self.samples[sample_index];
            let slot = labels.len() * per_image;
            let out = &mut images[slot..slot + per_image];
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(
                self.seed,
                self.position_offset + position as u64,
            ));
            let result = catch_unwind(AssertUnwindSafe(|| {
                self.transform.load(sample, &mut rng, out)
            }));
            let reason = match result {
                Ok(Ok(())) => {
                    labels.push(sample.label);
                    sample_indices.push(sample_index);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!(
                    "{}: internal error while loading: {}",
                    sample.path.display(),
                    panic_message(&panic)
                ),
            };
            // The reason names the file (every data error starts with its path).
            tracing::warn!("skipped {reason}");
            skipped.push(SkippedSample {
                sample_index,
                path: sample.path.clone(),
                reason,
            });
        }
        images.truncate(labels.len() * per_image);
        Batch {
            index,
            images,
            height: h,
            width: w,
            labels,
            sample_indices,
            skipped,
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Iterator over the batches of one pass through `order`.
pub struct BatchLoader {
    shared: Arc<Shared>,
    job_tx: Option<Sender<usize>>,
    result_rx: Receiver<Batch>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Batch>,
    n_batches: usize,
    yielded: usize,
    dispatched: usize,
    ordered: bool,
    skipped_total: usize,
}

impl BatchLoader {
    /// Loads `samples` in the order given by `order` (indices into `samples`).
    pub fn new(
        samples: Arc<[Sample]>,
        order: Vec<usize>,
        transform: Arc<dyn SampleTransform>,
        config: &LoaderConfig,
    ) -> Self {
        assert!(config.batch_size > 0, "batch size must be positive");
        assert!(
            order.iter().all(|&i| i < samples.len()),
            "order indexes past the sample list"
        );
        let n_batches = if config.drop_last {
            order.len() / config.batch_size
        } else {
            order.len().div_ceil(config.batch_size)
        };
        let shared = Arc::new(Shared {
            samples,
            order,
            transform,
            batch_size: config.batch_size,
            seed: config.seed,
            position_offset: config.position_offset,
            share: config.share,
        });
        let (job_tx, job_rx) = unbounded::<usize>();
        let (result_tx, result_rx) = unbounded::<Batch>();
        let workers = (0..config.num_workers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let job_rx = job_rx.clone();
                let result_tx = result_tx.clone();
                std::thread::Builder::new()
                    .name(format!("loader-{i}"))
                    .spawn(move || {
                        while let Ok(index) = job_rx.recv() {
                            if result_tx.send(shared.load_batch(index)).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawning a loader thread")
            })
            .collect();
        let mut loader = BatchLoader {
            shared,
            job_tx: Some(job_tx),
            result_rx,
            workers,
            pending: BTreeMap::new(),
            n_batches,
            yielded: 0,
            dispatched: 0,
            ordered: config.ordered,
            skipped_total: 0,
        };
        let window = config.num_workers + config.prefetch_batches;
        if config.num_workers > 0 {
            for _ in 0..window.min(n_batches) {
                loader.dispatch_one();
            }
        }
        loader
    }

    /// Number of batches this pass yields.
    pub fn n_batches(&self) -> usize {
        self.n_batches
    }

    /// Samples skipped so far in this pass.
    pub fn skipped_total(&self) -> usize {
        self.skipped_total
    }

    fn dispatch_one(&mut self) {
        if self.dispatched < self.n_batches {
            if let Some(tx) = &self.job_tx {
                // Workers only stop when the sender is dropped, so this cannot fail here.
                let _ = tx.send(self.dispatched);
            }
            self.dispatched += 1;
        }
    }

    fn receive(&mut self) -> Option<Batch> {
        if self.workers.is_empty() {
            return Some(self.shared.load_batch(self.yielded));
        }
        if !self.ordered {
            return self.result_rx.recv().ok();
        }
        loop {
            if let Some(batch) = self.pending.remove(&self.yielded) {
                return Some(batch);
            }
            let batch = self.result_rx.recv().ok()?;
            self.pending.insert(batch.index, batch);
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.yielded >= self.n_batches {
            return None;
        }
        let batch = self.receive()?;
        self.yielded += 1;
        self.skipped_total += batch.skipped.len();
        if !self.workers.is_empty() {
            self.dispatch_one();
        }
        Some(batch)
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        self.job_tx = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
