//! The model runs on one dedicated thread fed by a bounded queue. Requests that arrive while a
//! batch is running wait in the queue and go into the next batch together (up to `max_batch`),
//! so concurrent searches share one forward pass; when the queue is full a request is turned
//! away at once (503) instead of piling up memory and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use crate::batching::next_batch;

use tokio::sync::oneshot;

/// Turns preprocessed images into L2-normalised embeddings.
pub trait Embedder: Send + 'static {
    /// `pixels` holds `n` images of `3 × size × size` floats; returns `n × dim` values.
    fn embed(&mut self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, String>;
    fn dim(&self) -> usize;
    /// `n` windows of a photo (`box=auto`), prepared at the window side, embedded by the model
    /// loaded at that side; `None` when the server has none.
    fn embed_windows(&mut self, _pixels: Vec<f32>, _n: usize) -> Result<Option<Vec<f32>>, String> {
        Ok(None)
    }
}

struct Job {
    pixels: Vec<f32>,
    /// For a window job (`box=auto`): how many windows `pixels` holds; answered alone, not
    /// batched with photos.
    windows: Option<usize>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// Counters the metrics page reports.
#[derive(Default)]
pub struct InferenceStats {
    pub batches: AtomicU64,
    pub images: AtomicU64,
}

/// Handle to the inference thread.
#[derive(Clone)]
pub struct InferenceQueue {
    /// `None` for a server started without a model (`serve --vectors-only`).
    tx: Option<SyncSender<Job>>,
    pub stats: Arc<InferenceStats>,
}

/// Why a request could not be queued.
#[derive(Debug)]
pub enum QueueError {
    Busy,
    Stopped,
    /// The server runs without a model: only embeddings can be searched.
    NoModel,
}

impl InferenceQueue {
    /// Starts the inference thread with `embedder`; at most `capacity` requests wait.
    pub fn start(embedder: Box<dyn Embedder>, max_batch: usize, capacity: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        let stats = Arc::new(InferenceStats::default());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run(embedder, rx, max_batch.max(1), &worker_stats))
            .expect("spawning the inference thread");
        InferenceQueue {
            tx: Some(tx),
            stats,
        }
    }

    /// A queue with no model behind it, for a server that searches only embeddings its
    /// clients send (`POST /search/vector`); every submission is refused.
    pub fn without_model() -> Self {
        InferenceQueue {
            tx: None,
            stats: Arc::new(InferenceStats::default()),
        }
    }

    /// Queues one image; the receiver yields its embedding.
    pub fn submit(
        &self,
        pixels: Vec<f32>,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, String>>, QueueError> {
        self.send(pixels, None)
    }

    /// Queues `n` windows of a photo (see [`Embedder::embed_windows`]).
    pub fn submit_windows(
        &self,
        pixels: Vec<f32>,
        n: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, String>>, QueueError> {
        self.send(pixels, Some(n))
    }

    fn send(
        &self,
        pixels: Vec<f32>,
        windows: Option<usize>,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, String>>, QueueError> {
        let Some(tx) = &self.tx else {
            return Err(QueueError::NoModel);
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Job {
            pixels,
            windows,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(QueueError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(QueueError::Stopped),
        }
    }
}

fn run(
    mut embedder: Box<dyn Embedder>,
    rx: Receiver<Job>,
    max_batch: usize,
    stats: &InferenceStats,
) {
    let dim = embedder.dim();
    while let Some(mut jobs) = next_batch(&rx, max_batch) {
        // A request that timed out (or whose client left) dropped its receiver: skip its job
        // rather than spend the model on it.
        jobs.retain(|job| !job.reply.is_closed());
        let (window_jobs, plain): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| job.windows.is_some());
        for job in window_jobs {
            let n = job.windows.unwrap_or(0);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.images.fetch_add(n as u64, Ordering::Relaxed);
            let answer = match embedder.embed_windows(job.pixels, n) {
                Ok(Some(rows)) if rows.len() == n * dim => Ok(rows),
                Ok(Some(rows)) => Err(format!(
                    "model returned {} values for {n} windows × {dim}",
                    rows.len()
                )),
                Ok(None) => Err("this server has no window model: box=auto is unavailable".into()),
                Err(e) => Err(e),
            };
            let _ = job.reply.send(answer);
        }
        let jobs = plain;
        if jobs.is_empty() {
            continue;
        }
        let n = jobs.len();
        let mut pixels = Vec::with_capacity(n * jobs[0].pixels.len());
        let mut replies = Vec::with_capacity(n);
        for job in jobs {
            pixels.extend_from_slice(&job.pixels);
            replies.push(job.reply);
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.images.fetch_add(n as u64, Ordering::Relaxed);
        match embedder.embed(pixels, n) {
            Ok(rows) if rows.len() == n * dim => {
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(rows[i * dim..(i + 1) * dim].to_vec()));
                }
            }
            Ok(rows) => {
                let message = format!("model returned {} values for {n} × {dim}", rows.len());
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
            Err(message) => {
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Blocks in `embed` until told to go on (or 2 s pass), so jobs pile up behind it.
    struct Gated {
        go: mpsc::Receiver<()>,
    }

    impl Embedder for Gated {
        fn embed(&mut self, _pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, String> {
            let _ = self.go.recv_timeout(std::time::Duration::from_secs(2));
            Ok(vec![1.0; n])
        }
        fn dim(&self) -> usize {
            1
        }
    }

    #[test]
    fn jobs_whose_request_gave_up_are_not_embedded() {
        let (go, gate) = mpsc::channel();
        let queue = InferenceQueue::start(Box::new(Gated { go: gate }), 1, 8);
        let first = queue.submit(vec![0.0]).unwrap();
        // Wait until the first job is inside the model, then queue one whose caller leaves.
        while queue.stats.batches.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let abandoned = queue.submit(vec![0.0]).unwrap();
        drop(abandoned);
        let kept = queue.submit(vec![0.0]).unwrap();
        go.send(()).unwrap();
        go.send(()).unwrap();
        assert_eq!(first.blocking_recv().unwrap().unwrap(), vec![1.0]);
        assert_eq!(kept.blocking_recv().unwrap().unwrap(), vec![1.0]);
        assert_eq!(
            queue.stats.images.load(Ordering::Relaxed),
            2,
            "the abandoned job was embedded"
        );
    }
}
