//! The engine seam: what `search`, `serve` and the `index` commands need from an index,
//! whatever engine holds it — its metadata (model, preprocessing, width, size), top-k search
//! returning the catalogue items (optionally among the items a metadata [`Filter`] keeps),
//! lookup by id, and the catalogue's changes (upsert and delete by product key, compact).
//! Two engines implement it: the embedded on-disk [`Index`] (the default: exact search over a
//! memory-mapped matrix) and [`crate::postgres_index::PgIndex`] (PostgreSQL + pgvector, for
//! catalogues that outgrow one machine).

use std::collections::HashSet;

use crate::error::RetrievalError;
use crate::index::{Index, IndexItem, IndexMeta, metadata_columns};
use crate::index_post_processing::{post_processed_search, similar_to_item};
use crate::item_metadata::Filter;
use crate::open_set::MatchThreshold;
use crate::topk::top_k_rows;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueHit {
    /// Row id in the index (0-based, dense).
    pub id: u64,
    /// Cosine similarity (embeddings are L2-normalised).
    pub score: f32,
    pub item: IndexItem,
}

/// What a delete by product keys did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows removed.
    pub rows: usize,
    /// The keys asked for that no row had (a typo, or a product already gone), sorted.
    pub unmatched: Vec<String>,
}

impl Deleted {
    /// The outcome when the rows of the `matched` keys out of `asked` went.
    pub fn new(rows: usize, asked: &HashSet<String>, matched: &HashSet<String>) -> Self {
        let mut unmatched: Vec<String> = asked.difference(matched).cloned().collect();
        unmatched.sort();
        Deleted { rows, unmatched }
    }
}

/// An index that can be searched.
pub trait Catalogue: Send + Sync {
    fn meta(&self) -> &IndexMeta;
    /// Items a search can return (deleted rows not counted).
    fn rows(&self) -> usize;
    /// Counts the items again, for an engine other processes write to (a database table), so
    /// a long-running server reports what the table holds now; an in-process index's count is
    /// always current, and this is [`Catalogue::rows`].
    fn recount_rows(&self) -> Result<usize, RetrievalError> {
        Ok(self.rows())
    }
    /// The ids of those items, increasing (ids have gaps after deletes).
    fn ids(&self) -> Result<Vec<u64>, RetrievalError>;
    /// The top `k` items that pass `filter` for each query (row-major, `dim` wide), after the
    /// index's stored post-processing (centring, query blending:
    /// [`crate::index_post_processing`]). Fewer than `k` when fewer items pass.
    fn search_items(
        &self,
        queries: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError> {
        post_processed_search(self, queries, k, filter)
    }
    /// The `k` items passing `filter` most like catalogue row `id` (itself left out), with the
    /// index's blending; `None` when there is no row `id`.
    fn similar_items(
        &self,
        id: u64,
        k: usize,
        filter: &Filter,
    ) -> Result<Option<Vec<CatalogueHit>>, RetrievalError> {
        similar_to_item(self, id, k, filter)
    }
    /// The engine's own exact or approximate top `k` among the items passing `filter`, for
    /// queries already in the index's space (L2-normalised, centred when the index is).
    fn search_raw(
        &self,
        queries: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError>;
    /// Adds `items` (their `embeddings` row-major, already in the index's space) after the
    /// rows there; returns the number of rows the index then holds.
    fn append(&self, items: &[IndexItem], embeddings: &[f32]) -> Result<usize, RetrievalError>;
    /// Replaces the products of `items` (by the index's product key: the label or its key
    /// column) with them, atomically: returns `(rows replaced, rows added)`. The open handle
    /// keeps reading what it opened; the next opening sees the change.
    fn upsert(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
    ) -> Result<(usize, usize), RetrievalError>;
    /// Removes every item whose product key is in `keys`; says how many rows went and which
    /// keys matched none.
    fn delete_keys(&self, keys: &HashSet<String>) -> Result<Deleted, RetrievalError>;
    /// Reclaims what deletes left behind; says what it did.
    fn compact(&self) -> Result<String, RetrievalError>;
    /// The stored vectors of rows `ids`, as f32, row-major in the order given.
    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>, RetrievalError>;
    /// The distinct labels (products) the index holds.
    fn distinct_labels(&self) -> Result<Vec<i64>, RetrievalError>;
    /// The metadata column names any item sets, sorted.
    fn metadata_columns(&self) -> Result<Vec<String>, RetrievalError>;
    /// Stores (or with `None` removes) the calibrated match threshold in the index's
    /// metadata, for every later opening (this open handle keeps its old metadata).
    fn store_match_threshold(
        &self,
        threshold: Option<MatchThreshold>,
    ) -> Result<(), RetrievalError>;
    /// The item with row id `id`.
    fn item(&self, id: u64) -> Result<Option<IndexItem>, RetrievalError>;
    /// Whether one search of several queries costs about one query's (an exact scan reads
    /// the rows once for all of them), so that a server gains by batching concurrent searches.
    fn scans_queries_together(&self) -> bool {
        false
    }
    /// Bytes the index takes in its engine.
    fn size_bytes(&self) -> u64;
    /// Where it lives, for messages.
    fn location(&self) -> String;
}

impl Catalogue for Index {
    fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    fn rows(&self) -> usize {
        self.live_rows()
    }

    fn append(&self, items: &[IndexItem], embeddings: &[f32]) -> Result<usize, RetrievalError> {
        Index::append(self, items, embeddings)
    }

    fn upsert(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
    ) -> Result<(usize, usize), RetrievalError> {
        Index::upsert(self, items, embeddings)
    }

    fn delete_keys(&self, keys: &HashSet<String>) -> Result<Deleted, RetrievalError> {
        Index::delete_keys(self, keys)
    }

    fn compact(&self) -> Result<String, RetrievalError> {
        Ok(match Index::compact(self)? {
            0 => "nothing to compact: no deleted rows".to_string(),
            n => format!("dropped {n} deleted rows; the rows after them have new ids"),
        })
    }

    fn ids(&self) -> Result<Vec<u64>, RetrievalError> {
        Ok(self.live_ids().map(|r| r as u64).collect())
    }

    fn search_raw(
        &self,
        queries: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError> {
        let top = match self.allowed_rows(filter) {
            None => self.search(queries, k)?,
            Some(rows) => top_k_rows(self.query_view(queries)?, self.view()?, &rows, k),
        };
        Ok((0..top.queries)
            .map(|q| {
                top.row(q)
                    .iter()
                    .zip(top.row_scores(q))
                    .map(|(&id, &score)| CatalogueHit {
                        id: id as u64,
                        score,
                        item: self.items[id as usize].clone(),
                    })
                    .collect()
            })
            .collect())
    }

    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>, RetrievalError> {
        let view = self.view()?;
        let mut out = Vec::with_capacity(ids.len() * self.meta.dim);
        let mut scratch = Vec::new();
        for &id in ids {
            let row = usize::try_from(id)
                .ok()
                .filter(|&r| r < view.rows && !self.is_deleted(r))
                .ok_or_else(|| RetrievalError::Invalid(format!("no row {id} in the index")))?;
            out.extend_from_slice(view.rows_f32(row, row + 1, &mut scratch));
        }
        Ok(out)
    }

    fn distinct_labels(&self) -> Result<Vec<i64>, RetrievalError> {
        let mut labels: Vec<i64> = self.live_items().map(|i| i.label).collect();
        labels.sort_unstable();
        labels.dedup();
        Ok(labels)
    }

    fn metadata_columns(&self) -> Result<Vec<String>, RetrievalError> {
        Ok(metadata_columns(self.live_items()))
    }

    fn store_match_threshold(
        &self,
        threshold: Option<MatchThreshold>,
    ) -> Result<(), RetrievalError> {
        self.set_match_threshold(threshold)
    }

    fn item(&self, id: u64) -> Result<Option<IndexItem>, RetrievalError> {
        Ok(usize::try_from(id)
            .ok()
            .filter(|&i| !self.is_deleted(i))
            .and_then(|i| self.items.get(i))
            .cloned())
    }

    fn scans_queries_together(&self) -> bool {
        true
    }

    fn size_bytes(&self) -> u64 {
        self.size_on_disk()
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}
