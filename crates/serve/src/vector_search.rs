//! `POST /search/vector`: search with an embedding the client made itself — for clients that
//! embed on their own GPUs, and for benchmarks of the index without the model. The body is
//! JSON, `{"embedding": [...], "k": 10, "filter": "category=Fruit"}` (`k` and `filter` may
//! also be query parameters). The vector must have the index's dimension and finite values; it
//! is L2-normalised here, then searched exactly as a photo's embedding is (the index's
//! centring and blending, the filter, the "not in the catalogue" threshold).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use crate::api_error::{ApiError, bad_request};
use crate::query_params::QueryParams;
use crate::{
    AppState, QueryKind, SearchResponse, Timings, TopKParams, answer_search, checked_k,
    parse_filter, search_one,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorQuery {
    embedding: Vec<f32>,
    k: Option<usize>,
    filter: Option<String>,
}

pub(crate) async fn search_vector(
    State(state): State<Arc<AppState>>,
    QueryParams(params): QueryParams<TopKParams>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let outcome = run(&state, params, &body, started);
    answer_search(&state, "search_vector", started, outcome).await
}

async fn run(
    state: &AppState,
    params: TopKParams,
    body: &[u8],
    started: Instant,
) -> Result<SearchResponse, ApiError> {
    let query: VectorQuery = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "the body must be JSON {{\"embedding\": [numbers], \"k\": 10, \"filter\": \"…\"}}: {e}"
        ))
    })?;
    let k = checked_k(&state.config, query.k.or(params.k))?;
    let filter = parse_filter(query.filter.as_deref().or(params.filter.as_deref()))?;
    let index = state.index.get();
    let dim = index.meta().dim;
    let mut embedding = query.embedding;
    if embedding.len() != dim {
        return Err(bad_request(format!(
            "the embedding has {} values; this index holds {dim}-d vectors",
            embedding.len()
        )));
    }
    if let Some(i) = embedding.iter().position(|v| !v.is_finite()) {
        return Err(bad_request(format!(
            "embedding[{i}] is not a finite number"
        )));
    }
    // The norm in f64: squares of finite f32 values can overflow f32 (values near 1e20 and
    // up) or vanish in it (below 1e-23), and either left a vector of zeros or NaNs to search.
    let norm = embedding
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err(bad_request("the embedding is all zeros"));
    }
    embedding
        .iter_mut()
        .for_each(|v| *v = (f64::from(*v) / norm) as f32);
    let parsed = Instant::now();
    let hits = search_one(state, &index, embedding, k, filter).await?;
    let done = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let timings = Timings {
        decode: ms(started, parsed),
        model: 0.0,
        search: ms(parsed, done),
        total: ms(started, done),
    };
    Ok(SearchResponse::new(
        index.as_ref(),
        hits,
        QueryKind::Vector,
        timings,
    ))
}
