//! Post-processing an index applies to every search, chosen at `index build` and stored in its
//! metadata so that `search`, `serve` and every client get it without asking: centring on the
//! catalogue mean and query blending (see [`crate::centring`] and [`crate::query_blending`]).
//!
//! Why at build time: a service answers one query at a time, so there is no "joint query +
//! gallery" set to centre on; the catalogue's mean stands in for it (on the grocery dev set the
//! queries move it by little), is subtracted from the stored vectors once, and from each query
//! and each added row later. Blending needs the catalogue vectors closest to the query, which
//! both engines can return. DBA and k-reciprocal re-ranking change the catalogue as a whole
//! (each row depends on its neighbours), so they stay options of `rank`/`eval`.
//!
//! Exactly, for a query `q` (unit): `q <- normalize(q - m)` with the stored mean `m` (when
//! centring), then each blending round as [`crate::query_blending::blend_round`] (through [`blend_in_rounds`]) over the
//! engine's own top-n (n = the round's neighbour count) and the stored vectors of those rows,
//! then the engine's top-k. A metadata filter restricts only that final top-k: the blending
//! neighbours are the closest catalogue vectors whatever their metadata, so a filter changes
//! which items are returned, never how the query is formed.

use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, CatalogueHit};
use crate::centring::mean_row;
use crate::error::RetrievalError;
use crate::item_metadata::Filter;
use crate::query_blending::{QueryBlending, blend_in_rounds};
use crate::rerank::sanitize_and_normalize;

/// What an index does to queries (and new rows) before searching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexPostProcessing {
    /// The catalogue mean subtracted from every vector (stored rows are already centred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<Vec<f32>>,
    /// Query blending with the closest catalogue vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blending: Option<QueryBlending>,
}

impl IndexPostProcessing {
    pub fn is_empty(&self) -> bool {
        self.centre.is_none() && self.blending.is_none()
    }

    /// Centres a whole catalogue (row-major, `dim` wide) on its own mean, which is returned.
    pub fn centre_catalogue(rows: &mut [f32], dim: usize) -> Vec<f32> {
        sanitize_and_normalize(rows, dim);
        let mean: Vec<f32> = mean_row(&[rows], dim)
            .unwrap_or_else(|| vec![0.0; dim])
            .iter()
            .map(|&m| m as f32)
            .collect();
        subtract_and_normalize(rows, &mean);
        mean
    }

    /// Brings rows (new catalogue rows or queries) into the index's space: normalised, and
    /// centred with the stored mean when the index is centred.
    pub fn prepare_rows(&self, rows: &mut [f32], dim: usize) -> Result<(), RetrievalError> {
        sanitize_and_normalize(rows, dim);
        if let Some(mean) = &self.centre {
            if mean.len() != dim {
                return Err(RetrievalError::Invalid(format!(
                    "the index's stored mean has {} values for {dim}-d rows",
                    mean.len()
                )));
            }
            subtract_and_normalize(rows, mean);
        }
        Ok(())
    }
}

fn subtract_and_normalize(rows: &mut [f32], mean: &[f32]) {
    let dim = mean.len();
    for row in rows.chunks_exact_mut(dim) {
        row.iter_mut().zip(mean).for_each(|(v, m)| *v -= m);
    }
    sanitize_and_normalize(rows, dim);
}

/// The top `k` items for each query after the index's post-processing (what
/// [`Catalogue::search_items`] returns).
pub fn post_processed_search<C: Catalogue + ?Sized>(
    catalogue: &C,
    queries: &[f32],
    k: usize,
    filter: &Filter,
) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError> {
    let post = &catalogue.meta().post_processing;
    if post.is_empty() {
        return catalogue.search_raw(queries, k, filter);
    }
    let dim = catalogue.meta().dim;
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(RetrievalError::Invalid(format!(
            "query width does not divide by the index dimension {dim}"
        )));
    }
    let mut queries = queries.to_vec();
    post.prepare_rows(&mut queries, dim)?;
    search_prepared(catalogue, queries, k, filter)
}

/// The items most like catalogue row `id` (itself left out), or `None` when there is no such
/// row: its stored vector (already in the index's space) searched as a query, blending rounds
/// included (what [`Catalogue::similar_items`] returns).
pub fn similar_to_item<C: Catalogue + ?Sized>(
    catalogue: &C,
    id: u64,
    k: usize,
    filter: &Filter,
) -> Result<Option<Vec<CatalogueHit>>, RetrievalError> {
    let Some(query) = item_query(catalogue, id)? else {
        return Ok(None);
    };
    let hits = search_prepared(catalogue, query, k.saturating_add(1), filter)?
        .pop()
        .unwrap_or_default();
    Ok(Some(without_item(hits, id, k)))
}

/// The query of a search by catalogue row `id`: its stored vector (already in the index's
/// space), cleaned and L2-normalised; `None` when there is no row `id`.
pub fn item_query<C: Catalogue + ?Sized>(
    catalogue: &C,
    id: u64,
) -> Result<Option<Vec<f32>>, RetrievalError> {
    if catalogue.item(id)?.is_none() {
        return Ok(None);
    }
    let mut query = catalogue.vectors(&[id])?;
    let dim = query.len();
    sanitize_and_normalize(&mut query, dim);
    Ok(Some(query))
}

/// The answer of a search by row `id` that asked for `k + 1` items: the row itself left out,
/// the first `k` of the rest.
pub fn without_item(mut hits: Vec<CatalogueHit>, id: u64, k: usize) -> Vec<CatalogueHit> {
    hits.retain(|h| h.id != id);
    hits.truncate(k);
    hits
}

/// Blending rounds (when the index has them) and the final top-k, for queries already in the
/// index's space (what [`post_processed_search`] runs after preparing raw queries).
pub fn search_prepared<C: Catalogue + ?Sized>(
    catalogue: &C,
    mut queries: Vec<f32>,
    k: usize,
    filter: &Filter,
) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError> {
    let dim = catalogue.meta().dim;
    if let Some(blending) = &catalogue.meta().post_processing.blending {
        // Each round: the engine's own top-n, then the stored vectors of all those rows in one
        // request.
        let from_index = |queries: &[f32], n: usize| {
            let hits = catalogue.search_raw(queries, n, &Filter::default())?;
            let ids: Vec<u64> = hits.iter().flatten().map(|h| h.id).collect();
            let vectors = catalogue.vectors(&ids)?;
            let mut rows = vectors.chunks_exact(dim);
            Ok::<_, RetrievalError>(
                hits.iter()
                    .map(|found| {
                        found
                            .iter()
                            .zip(rows.by_ref())
                            .map(|(h, v)| (h.score, v.to_vec()))
                            .collect()
                    })
                    .collect(),
            )
        };
        blend_in_rounds(&mut queries, dim, blending, from_index)?;
    }
    catalogue.search_raw(&queries, k, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_centred_with_the_stored_mean() {
        let mut catalogue = vec![1.0, 1.0, 1.0, -1.0];
        let mean = IndexPostProcessing::centre_catalogue(&mut catalogue, 2);
        let s = 0.5f32.sqrt();
        assert!(
            (mean[0] - s).abs() < 1e-6 && mean[1].abs() < 1e-6,
            "{mean:?}"
        );
        assert!((catalogue[1] - 1.0).abs() < 1e-6 && (catalogue[3] + 1.0).abs() < 1e-6);
        let post = IndexPostProcessing {
            centre: Some(mean),
            blending: None,
        };
        let mut query = vec![2.0, 0.0];
        post.prepare_rows(&mut query, 2).unwrap();
        // (1, 0) - (0.707, 0) normalises to (1, 0).
        assert!((query[0] - 1.0).abs() < 1e-6, "{query:?}");
        assert!(post.prepare_rows(&mut [0.0; 3], 3).is_err());
    }
}
