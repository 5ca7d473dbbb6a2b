//! Concurrent searches scanned together. An exact scan of the embedded index reads every row
//! once per call whatever the number of queries in it (`retrieval::topk` scores each block of
//! rows against all of them), and one query already keeps every core busy; so searches that
//! arrive while a scan runs would only queue behind it. Here they wait for the scan thread
//! instead, and the next scan takes all of them at once: at 1M rows several clients cost
//! about one scan, where each used to cost one of its own.
//!
//! No search is held back to wait for others: a lone search starts at once, and a batch is
//! whatever gathered while the previous scan ran. Searches of one batch are grouped by index
//! version and filter (one engine call each); a group asks for its largest `k` and each search
//! keeps its own first `k` (exact top-k in a total order, so that is its own answer). Engines
//! whose search of several queries costs several searches (PostgreSQL runs one statement per
//! query) are not batched ([`Catalogue::scans_queries_together`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use visual_search_retrieval::catalogue::{Catalogue, CatalogueHit};
use visual_search_retrieval::index_post_processing::search_prepared;
use visual_search_retrieval::item_metadata::Filter;

use crate::batching::next_batch;

/// The most searches one scan takes (a bound on the batch's score tiles and replies).
const MAX_BATCH: usize = 64;

/// What space a query vector is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySpace {
    /// As a model embeds (a photo's embedding, a client's vector): the index prepares it
    /// (centring) before searching.
    Model,
    /// Already in the index's space: a stored row's vector (a search by item,
    /// [`item_query`](visual_search_retrieval::index_post_processing::item_query)).
    Index,
}

/// One waiting search and where its answer goes.
struct Job {
    index: Arc<dyn Catalogue>,
    query: Vec<f32>,
    space: QuerySpace,
    k: usize,
    filter: Filter,
    reply: tokio::sync::oneshot::Sender<Result<Vec<CatalogueHit>, String>>,
}

/// Engine calls made and the searches they answered (`/metrics`).
#[derive(Default)]
struct Counts {
    scans: AtomicU64,
    searches: AtomicU64,
}

/// The scan thread's inbox; the thread ends when the batcher is dropped.
pub struct SearchBatcher {
    jobs: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

impl Default for SearchBatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl SearchBatcher {
    /// Starts the scan thread.
    pub fn new() -> Self {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        std::thread::Builder::new()
            .name("search-batcher".into())
            .spawn(move || {
                while let Some(batch) = next_batch(&inbox, MAX_BATCH) {
                    // A panic inside the engine fails this batch's searches (their replies
                    // are dropped), not every later one.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_batch(batch, &thread_counts)
                    }));
                    if ran.is_err() {
                        tracing::error!("a batch of searches panicked; its searches failed");
                    }
                }
            })
            .expect("spawning the search thread");
        SearchBatcher { jobs, counts }
    }

    /// Engine calls made so far and the searches they answered.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.scans.load(Ordering::Relaxed),
            self.counts.searches.load(Ordering::Relaxed),
        )
    }

    /// The top `k` items of `index` passing `filter` for `query` (one L2-normalised vector in
    /// `space`), scanned with whatever other searches are waiting: what
    /// [`Catalogue::search_items`] answers for a model's embedding.
    pub async fn search(
        &self,
        index: Arc<dyn Catalogue>,
        query: Vec<f32>,
        space: QuerySpace,
        k: usize,
        filter: Filter,
    ) -> Result<Vec<CatalogueHit>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                index,
                query,
                space,
                k,
                filter,
                reply,
            })
            .map_err(|_| "the search thread stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the search thread stopped".to_string())?
    }
}

/// Answers a batch: one engine call per (index version, filter, query space) group.
fn run_batch(mut batch: Vec<Job>, counts: &Counts) {
    // A search whose deadline passed while it waited (or whose client left) dropped its
    // receiver: it is not scanned for.
    batch.retain(|job| !job.reply.is_closed());
    while !batch.is_empty() {
        let (first_index, first_filter) = (batch[0].index.clone(), batch[0].filter.clone());
        let space = batch[0].space;
        let (group, rest): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| {
            Arc::ptr_eq(&j.index, &first_index) && j.filter == first_filter && j.space == space
        });
        batch = rest;
        let k = group.iter().map(|j| j.k).max().unwrap_or(0);
        let queries: Vec<f32> = group.iter().flat_map(|j| j.query.iter().copied()).collect();
        counts.scans.fetch_add(1, Ordering::Relaxed);
        counts
            .searches
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let found = match space {
            // A stored row's vector: the index's query preparation (centring) is not applied
            // again.
            QuerySpace::Index => search_prepared(first_index.as_ref(), queries, k, &first_filter),
            QuerySpace::Model => first_index.search_items(&queries, k, &first_filter),
        };
        let answers = match found {
            Ok(found) if found.len() == group.len() => Ok(found),
            Ok(found) => Err(format!(
                "the index answered {} queries for {}",
                found.len(),
                group.len()
            )),
            Err(e) => Err(e.to_string()),
        };
        // A search whose client has gone (deadline passed) has no one to answer: sends to it
        // are ignored.
        match answers {
            Ok(found) => {
                for (job, mut hits) in group.into_iter().zip(found) {
                    hits.truncate(job.k);
                    let _ = job.reply.send(Ok(hits));
                }
            }
            Err(why) => {
                for job in group {
                    let _ = job.reply.send(Err(why.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use visual_search_retrieval::index::{
        Index, IndexDtype, IndexItem, IndexMeta, Preprocessing, build_index,
    };
    use visual_search_retrieval::index_post_processing::IndexPostProcessing;

    /// An index of `rows` pseudo-random unit vectors, every third item in category "a";
    /// `centred`: stored centred on their mean, which searches subtract from raw queries.
    fn index(
        dir: &std::path::Path,
        rows: usize,
        dim: usize,
        seed: u32,
        centred: bool,
    ) -> Arc<dyn Catalogue> {
        let mut x = seed | 1;
        let mut values: Vec<f32> = (0..rows * dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 1000) as f32 / 500.0 - 1.0
            })
            .collect();
        for row in values.chunks_mut(dim) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
        }
        let items: Vec<IndexItem> = (0..rows)
            .map(|i| {
                let mut item = IndexItem::new(i as i64, format!("{i}.jpg"));
                let category = if i % 3 == 0 { "a" } else { "b" };
                item.metadata.insert("category".into(), category.into());
                item
            })
            .collect();
        let pre = Preprocessing {
            size: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let mut meta = IndexMeta::new(IndexDtype::F16, dim, serde_json::json!({"t": 1}), pre);
        if centred {
            let mean = IndexPostProcessing::centre_catalogue(&mut values, dim);
            meta.post_processing.centre = Some(mean);
        }
        build_index(dir, meta, &items, &values).unwrap();
        Arc::new(Index::open(dir).unwrap())
    }

    #[test]
    fn batched_searches_answer_as_searches_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 16;
        let versions = [
            index(&dir.path().join("one"), 3000, dim, 7, false),
            index(&dir.path().join("two"), 500, dim, 11, true),
        ];
        let filters = [Filter::default(), Filter::parse("category=a").unwrap()];
        // 64 searches in one batch over two index versions (one centred), two filters, raw
        // queries and queries in the index's space (searches by item), and several k.
        struct Search {
            version: usize,
            query: Vec<f32>,
            k: usize,
            filter: usize,
            space: QuerySpace,
        }
        let searches: Vec<Search> = (0..64)
            .map(|i| Search {
                version: i % 2,
                query: versions[0].vectors(&[(i * 37 % 500) as u64]).unwrap(),
                k: [1, 5, 10, 40][i / 8 % 4],
                filter: i / 2 % 2,
                space: if i / 4 % 2 == 1 {
                    QuerySpace::Index
                } else {
                    QuerySpace::Model
                },
            })
            .collect();
        let (jobs, replies): (Vec<Job>, Vec<_>) = searches
            .iter()
            .map(|s| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let job = Job {
                    index: versions[s.version].clone(),
                    query: s.query.clone(),
                    space: s.space,
                    k: s.k,
                    filter: filters[s.filter].clone(),
                    reply,
                };
                (job, answer)
            })
            .unzip();
        let counts = Counts::default();
        run_batch(jobs, &counts);
        assert_eq!(
            (counts.scans.into_inner(), counts.searches.into_inner()),
            (8, 64),
            "one scan per version, filter and query space"
        );
        let answers: Vec<Vec<CatalogueHit>> = replies
            .into_iter()
            .map(|mut r| r.try_recv().unwrap().unwrap())
            .collect();
        let mut centring_mattered = false;
        for (s, hits) in searches.iter().zip(&answers) {
            let (index, filter) = (&versions[s.version], &filters[s.filter]);
            let raw = index.search_items(&s.query, s.k, filter).unwrap().pop();
            let prepared = search_prepared(index.as_ref(), s.query.clone(), s.k, filter)
                .unwrap()
                .pop();
            let (alone, other) = match s.space {
                QuerySpace::Index => (prepared.unwrap(), raw.unwrap()),
                QuerySpace::Model => (raw.unwrap(), prepared.unwrap()),
            };
            assert_eq!(hits.len(), s.k);
            let ids = |h: &[CatalogueHit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
            let what = format!("version {}, k {}, filter {}", s.version, s.k, s.filter);
            assert_eq!(ids(hits), ids(&alone), "{what}");
            centring_mattered |= ids(hits) != ids(&other);
            for (a, b) in hits.iter().zip(&alone) {
                assert!((a.score - b.score).abs() < 1e-5);
            }
            if s.filter == 1 {
                assert!(hits.iter().all(|h| h.item.metadata["category"] == "a"));
            }
        }
        assert!(
            centring_mattered,
            "the test must tell the two query spaces apart"
        );
    }

    #[test]
    fn concurrent_searches_through_the_thread_are_answered_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(&dir.path().join("idx"), 2000, 8, 5, false);
        let batcher = Arc::new(SearchBatcher::new());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let answers = runtime.block_on(async {
            let tasks: Vec<_> = (0..32u64)
                .map(|id| {
                    let (b, index) = (batcher.clone(), index.clone());
                    let query = index.vectors(&[id]).unwrap();
                    tokio::spawn(async move {
                        b.search(index, query, QuerySpace::Model, 3, Filter::default())
                            .await
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap().unwrap());
            }
            answers
        });
        for (id, hits) in answers.iter().enumerate() {
            assert_eq!(hits[0].id, id as u64, "each row finds itself first");
        }
        let (scans, searches) = batcher.counts();
        assert_eq!(searches, 32);
        assert!((1..=32).contains(&scans), "{scans}");
    }

    #[test]
    fn searches_nobody_waits_for_are_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(&dir.path().join("idx"), 100, 8, 3, false);
        let (jobs, mut replies): (Vec<Job>, Vec<_>) = (0..3u64)
            .map(|id| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let query = index.vectors(&[id]).unwrap();
                let filter = Filter::default();
                let index = index.clone();
                (
                    Job {
                        index,
                        query,
                        space: QuerySpace::Model,
                        k: 2,
                        filter,
                        reply,
                    },
                    answer,
                )
            })
            .unzip();
        // The first and last requests gave up (their deadline passed) while queued.
        drop(replies.pop());
        drop(replies.remove(0));
        let counts = Counts::default();
        run_batch(jobs, &counts);
        assert_eq!(
            (counts.scans.into_inner(), counts.searches.into_inner()),
            (1, 1)
        );
        assert_eq!(replies[0].try_recv().unwrap().unwrap()[0].id, 1);
    }

    #[test]
    fn a_failing_search_fails_its_group_alone() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(&dir.path().join("idx"), 100, 8, 3, false);
        let batcher = SearchBatcher::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // A query of the wrong width: the engine refuses it, the batcher stays up.
        let bad = runtime.block_on(batcher.search(
            index.clone(),
            vec![1.0; 5],
            QuerySpace::Model,
            3,
            Filter::default(),
        ));
        assert!(bad.unwrap_err().contains("dimension"));
        let good = runtime.block_on(batcher.search(
            index.clone(),
            index.vectors(&[4]).unwrap(),
            QuerySpace::Model,
            3,
            Filter::default(),
        ));
        assert_eq!(good.unwrap()[0].id, 4);
    }
}
