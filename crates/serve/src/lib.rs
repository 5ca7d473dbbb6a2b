//! visual-search-serve: the search service over an on-disk index (`visual-search serve`).
//!
//! - `POST /search` — an image as `multipart/form-data` (field `image`; several `image` fields
//!   are photos of one product, searched once with the mean of their embeddings) or as the raw
//!   body; query `k` (default 10), optional `bbox=x,y,w,h` (pixels, applied to every photo;
//!   400 when it misses one or selects under 4×4 pixels of it) and
//!   `filter=category=Fruit,in_stock=true` (only items whose metadata match) → JSON top-k with
//!   ids, labels, scores, metadata and image URLs, plus phase timings.
//! - `POST /search/vector` — a JSON `{"embedding": [...]}` the client made itself (same
//!   answer, no model; `vector_search`).
//! - `GET /items/{id}/similar?k=&filter=` — the catalogue items most like item `id` (itself
//!   left out), searched with its stored embedding.
//! - `GET /images/{id}` — a JPEG thumbnail (≤ 256 px) of a catalogue image.
//! - `GET /healthz`, `GET /metrics` (Prometheus text), `GET /` (the web page, `page.html`,
//!   plain HTML/JS compiled into the binary).
//!
//! Hostile input gets a 4xx with a JSON `{"error": …}` and never reaches the model: the body
//! size is capped and must arrive within a deadline ([`body_deadline`]), bodies held at once
//! share a memory budget ([`body_memory_budget`]), a client must take its answers within one
//! ([`send_deadline`]), images are decoded under a pixel limit and a bounded number at a time
//! ([`decode_permit`]), decoding runs on the blocking pool, each search has a deadline, and the
//! model queue is bounded (503 when full). The model itself is behind
//! [`inference::Embedder`], so this crate knows nothing of burn.
//!
//! Concurrent requests share work: their photos one forward pass ([`inference`]), and their
//! searches of the embedded index one scan of its rows ([`search_batcher`]).

pub mod api_error;
pub mod back_office;
pub mod batching;
pub mod body_deadline;
pub mod body_guard;
pub mod body_memory_budget;
pub mod inference;
pub mod live_index;
pub mod metrics;
pub mod query_image;
pub mod query_params;
pub mod search_batcher;
pub mod send_deadline;
pub mod upload;
pub mod vector_search;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use visual_search_data::formats::BBox;
use visual_search_data::image::DecodeLimits;
use visual_search_retrieval::auto_box::AutoBox;
use visual_search_retrieval::catalogue::{Catalogue, CatalogueHit};
use visual_search_retrieval::ensemble::fuse_rows;
use visual_search_retrieval::error::RetrievalError;
use visual_search_retrieval::index::Preprocessing;
use visual_search_retrieval::index_post_processing::{item_query, without_item};
use visual_search_retrieval::item_metadata::{Filter, Metadata};

use crate::api_error::{ApiError, bad_request, internal};
use crate::back_office::{WriteConfig, add_items, compact_index, delete_items, duplicate_groups};
use crate::inference::{InferenceQueue, QueueError};
use crate::live_index::LiveIndex;
use crate::metrics::{Counters, Metrics};
use crate::query_image::{
    decode_query, parse_bbox, prepare_decoded, prepare_query, prepare_windows, thumbnail_jpeg,
};
use crate::query_params::QueryParams;
use crate::search_batcher::{QuerySpace, SearchBatcher};
use crate::upload::read_upload;
use crate::vector_search::search_vector;

/// Limits and sizes of the service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most bytes all request bodies may hold at once (at least `max_body_bytes`); a body
    /// that would pass it is answered 503 ([`body_memory_budget`]).
    pub max_body_memory: usize,
    /// Largest decoded image (width × height).
    pub max_pixels: u64,
    /// Deadline of one search, queueing included.
    pub request_timeout: Duration,
    /// Largest `k` a client may ask for.
    pub max_k: usize,
    /// A connection must send a complete request head within this time, also when idle
    /// between keep-alive requests; otherwise it is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time of the request's start; otherwise it
    /// is answered 408 and its connection closed ([`body_deadline`]).
    pub body_timeout: Duration,
    /// How long in all a connection's answers may wait for the client to take them between
    /// two of its requests; after it the connection is closed ([`send_deadline`]).
    pub send_timeout: Duration,
    /// Most open connections; more are closed at once (and counted in /metrics).
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long open requests may finish before the server exits.
    pub drain_timeout: Duration,
    /// Most uploads decoded at the same time (decoding a photo takes tens of MB).
    pub max_concurrent_decodes: usize,
    /// The window search behind `box=auto`; `None` when the server runs without the window
    /// model (`serve --no-auto-box`).
    pub auto_box: Option<AutoBox>,
    /// Catalogue writes over HTTP (`POST /items`, `DELETE /items`, `POST /index/compact`);
    /// `None` keeps them off.
    pub writes: Option<WriteConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body_bytes: 20 << 20,
            max_body_memory: 512 << 20,
            max_pixels: 25_000_000,
            request_timeout: Duration::from_secs(30),
            max_k: 1000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 256,
            drain_timeout: Duration::from_secs(10),
            max_concurrent_decodes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            auto_box: None,
            writes: None,
        }
    }
}

/// What handlers share.
pub struct AppState {
    /// The embedded on-disk index or a PostgreSQL + pgvector one; a new on-disk version is
    /// swapped in while serving ([`live_index`]).
    pub index: Arc<LiveIndex>,
    pub queue: InferenceQueue,
    pub config: ServeConfig,
    pub metrics: Metrics,
    /// Permits for whole-photo decodes (`config.max_concurrent_decodes`), taken through
    /// [`decode_permit`].
    pub decoders: tokio::sync::Semaphore,
    /// The folder of an on-disk index, reopened after each write made over HTTP.
    pub index_folder: Option<std::path::PathBuf>,
    /// Concurrent searches of the embedded index, scanned together.
    pub searches: SearchBatcher,
}

impl AppState {
    pub fn new(
        index: Box<dyn Catalogue>,
        index_bytes: u64,
        queue: InferenceQueue,
        config: ServeConfig,
    ) -> Self {
        AppState {
            decoders: tokio::sync::Semaphore::new(config.max_concurrent_decodes.max(1)),
            index: Arc::new(LiveIndex::new(index, index_bytes)),
            queue,
            config,
            metrics: Metrics::default(),
            index_folder: None,
            searches: SearchBatcher::new(),
        }
    }

    /// Names the on-disk index folder (so HTTP writes serve their new version at once) and
    /// the version of it being served (`current` read before the index was opened).
    pub fn with_index_folder(
        mut self,
        dir: Option<std::path::PathBuf>,
        version: Option<String>,
    ) -> Self {
        self.index_folder = dir;
        self.index.record_version(version);
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    k: Option<usize>,
    bbox: Option<String>,
    /// `auto`: find the product in the photo (see `retrieval::auto_box`).
    #[serde(rename = "box")]
    box_mode: Option<String>,
    /// Only items whose metadata match (`name=value[|value…],…`; `retrieval::item_metadata`).
    filter: Option<String>,
}

/// The `k` parameter (default 10), checked against the server's bound (400 outside it).
fn checked_k(config: &ServeConfig, k: Option<usize>) -> Result<usize, ApiError> {
    let k = k.unwrap_or(10);
    if k == 0 || k > config.max_k {
        return Err(bad_request(format!("k must be in 1..={}", config.max_k)));
    }
    Ok(k)
}

/// The `filter` parameter, parsed (400 when malformed).
fn parse_filter(text: Option<&str>) -> Result<Filter, ApiError> {
    Filter::parse(text.unwrap_or_default()).map_err(|e| bad_request(e.to_string()))
}

#[derive(Serialize, Clone)]
struct Hit {
    rank: usize,
    id: u64,
    label: i64,
    score: f32,
    path: String,
    image_url: String,
    /// The catalogue list's extra columns for this item (empty when it had none).
    metadata: Metadata,
}

#[derive(Serialize)]
struct Timings {
    decode: f64,
    model: f64,
    search: f64,
    total: f64,
}

/// What a search was asked with: it decides `photos` and whether the top hit is judged a match.
#[derive(Clone, Copy)]
enum QueryKind {
    /// This many photos (their mean embedding).
    Photos(usize),
    /// A client's embedding.
    Vector,
    /// A catalogue item's neighbours (no match: the item itself is left out).
    Item,
}

#[derive(Serialize)]
struct SearchResponse {
    k: usize,
    /// Photos searched together (0 for a search by catalogue item or by embedding).
    photos: usize,
    results: Vec<Hit>,
    /// The top result when it is the product asked for: at or above the index's calibrated
    /// threshold (`index calibrate`), or always without one; `null` means "not in the
    /// catalogue" (the results are then only the nearest items). Absent for a search by item.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    matched: Option<Option<Hit>>,
    /// The calibrated threshold, when the index has one.
    match_threshold: Option<f32>,
    /// With `box=auto`: the box searched with (`[x, y, w, h]` in pixels of the photo), or
    /// `null` when the whole photo matched as well as any window.
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    found_box: Option<Option<[f64; 4]>>,
    timings_ms: Timings,
}

impl SearchResponse {
    fn new(
        index: &dyn Catalogue,
        hits: Vec<CatalogueHit>,
        query: QueryKind,
        timings_ms: Timings,
    ) -> Self {
        let photos = match query {
            QueryKind::Photos(n) => n,
            QueryKind::Vector | QueryKind::Item => 0,
        };
        let results: Vec<Hit> = hits
            .into_iter()
            .enumerate()
            .map(|(r, hit)| Hit {
                rank: r + 1,
                id: hit.id,
                label: hit.item.label,
                score: hit.score,
                path: index.meta().client_path(&hit.item.path),
                image_url: format!("/images/{}", hit.id),
                metadata: hit.item.metadata,
            })
            .collect();
        let meta = index.meta();
        // A search by catalogue item finds the item's neighbours, not the item.
        let matched = (!matches!(query, QueryKind::Item)).then(|| {
            results
                .first()
                .filter(|top| meta.is_match(top.score))
                .cloned()
        });
        SearchResponse {
            k: results.len(),
            photos,
            results,
            matched,
            match_threshold: meta.match_threshold.as_ref().map(|t| t.score),
            found_box: None,
            timings_ms,
        }
    }
}

async fn search(
    State(state): State<Arc<AppState>>,
    QueryParams(params): QueryParams<SearchParams>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let outcome = run_search(state.clone(), params, request, started);
    answer_search(&state, "search", started, outcome).await
}

/// Runs a search under the request deadline (504 after it), answers it as JSON and counts it
/// in the metrics (route, status, and the latency of a successful one).
async fn answer_search(
    state: &AppState,
    route: &'static str,
    started: Instant,
    search: impl std::future::Future<Output = Result<SearchResponse, ApiError>>,
) -> Response {
    let outcome = tokio::time::timeout(state.config.request_timeout, search)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                format!("search took longer than {:?}", state.config.request_timeout),
            ))
        });
    let response = match outcome {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request(route, response.status().as_u16());
    if response.status().is_success() {
        state.metrics.search_latency(started.elapsed());
    }
    response
}

async fn run_search(
    state: Arc<AppState>,
    params: SearchParams,
    request: Request,
    started: Instant,
) -> Result<SearchResponse, ApiError> {
    let k = checked_k(&state.config, params.k)?;
    let bbox = match &params.bbox {
        Some(text) => Some(parse_bbox(text).map_err(bad_request)?),
        None => None,
    };
    let filter = parse_filter(params.filter.as_deref())?;
    let auto_box = match params.box_mode.as_deref() {
        None => None,
        Some("auto") if bbox.is_some() => {
            return Err(bad_request("give bbox or box=auto, not both"));
        }
        Some("auto") => Some(state.config.auto_box.ok_or_else(|| {
            bad_request("box=auto needs the window model, which this server was started without")
        })?),
        Some(other) => {
            return Err(bad_request(format!(
                "box={other:?}: the only value is auto"
            )));
        }
    };
    let images = read_upload(request, state.config.max_body_bytes).await?;
    if images.iter().any(|b| b.is_empty()) {
        return Err(bad_request(
            "empty image: send an image (raw or multipart field `image`)",
        ));
    }
    let limits = DecodeLimits {
        max_pixels: state.config.max_pixels,
        max_file_bytes: state.config.max_body_bytes as u64,
        ..DecodeLimits::default()
    };
    // One index for the whole request, even if a new version is swapped in meanwhile.
    let index = state.index.get();
    let pre = index.meta().preprocessing.clone();
    // Decodes wait for a permit (bounded memory); the request's deadline still applies.
    let _permit = decode_permit(&state).await?;
    let photos = images.len();
    let (embedding, found_box, decoded) = match auto_box {
        Some(params) => {
            let Ok::<[axum::body::Bytes; 1], _>([bytes]) = images.try_into() else {
                return Err(bad_request("box=auto takes one photo"));
            };
            auto_boxed_embedding(&state, &index, bytes, &params, &pre, &limits, &filter).await?
        }
        None => {
            let (embeddings, decoded) =
                photo_embeddings(&state, images, bbox, &pre, &limits).await?;
            let embedding = match photos {
                1 => embeddings,
                _ => fuse_rows(&embeddings, index.meta().dim),
            };
            (embedding, None, decoded)
        }
    };
    let embedded = Instant::now();
    let hits = search_one(&state, &index, embedding, k, filter).await?;
    let done = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let timings = Timings {
        decode: ms(started, decoded),
        model: ms(decoded, embedded),
        search: ms(embedded, done),
        total: ms(started, done),
    };
    let mut response =
        SearchResponse::new(index.as_ref(), hits, QueryKind::Photos(photos), timings);
    if auto_box.is_some() {
        response.found_box = Some(found_box.map(|b| [b.x, b.y, b.w, b.h]));
    }
    Ok(response)
}

/// The top `k` items passing `filter` for one query embedding: scanned together with the
/// other searches waiting when the engine gains by it ([`SearchBatcher`]), otherwise on the
/// blocking pool. See [`explain_empty`] for a filter that left nothing.
async fn search_one(
    state: &AppState,
    index: &Arc<dyn Catalogue>,
    embedding: Vec<f32>,
    k: usize,
    filter: Filter,
) -> Result<Vec<CatalogueHit>, ApiError> {
    let kept = (!filter.is_empty()).then(|| filter.clone());
    let hits = scan_one(state, index, embedding, k, filter).await?;
    if hits.is_empty()
        && let Some(filter) = kept
    {
        explain_empty(index, filter).await?;
    }
    Ok(hits)
}

/// A filtered search found nothing: a 400 naming the filter's columns that no item of the
/// index has (a misspelled column matches nothing whatever the query), else nothing to say.
/// Asked only then, as listing an index's columns reads every item's metadata.
async fn explain_empty(index: &Arc<dyn Catalogue>, filter: Filter) -> Result<(), ApiError> {
    let index = index.clone();
    let columns = tokio::task::spawn_blocking(move || index.metadata_columns())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    filter
        .check_columns(&columns)
        .map_err(|e| bad_request(e.to_string()))
}

/// [`search_one`]'s scan.
async fn scan_one(
    state: &AppState,
    index: &Arc<dyn Catalogue>,
    embedding: Vec<f32>,
    k: usize,
    filter: Filter,
) -> Result<Vec<CatalogueHit>, ApiError> {
    if index.scans_queries_together() {
        return state
            .searches
            .search(index.clone(), embedding, QuerySpace::Model, k, filter)
            .await
            .map_err(internal);
    }
    let searcher = index.clone();
    let mut hits =
        tokio::task::spawn_blocking(move || searcher.search_items(&embedding, k, &filter))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    Ok(hits.pop().unwrap_or_default())
}

/// The `k` items passing `filter` most like catalogue row `id` ([`Catalogue::similar_items`]),
/// `None` when there is no row `id`: its stored vector scanned with the other searches waiting
/// when the engine gains by it ([`SearchBatcher`]), otherwise on the blocking pool.
async fn similar_hits(
    state: &AppState,
    index: &Arc<dyn Catalogue>,
    id: u64,
    k: usize,
    filter: Filter,
) -> Result<Option<Vec<CatalogueHit>>, ApiError> {
    let kept = (!filter.is_empty()).then(|| filter.clone());
    let hits = scan_similar(state, index, id, k, filter).await?;
    if let (Some(hits), Some(filter)) = (&hits, kept)
        && hits.is_empty()
    {
        explain_empty(index, filter).await?;
    }
    Ok(hits)
}

/// [`similar_hits`]' scan.
async fn scan_similar(
    state: &AppState,
    index: &Arc<dyn Catalogue>,
    id: u64,
    k: usize,
    filter: Filter,
) -> Result<Option<Vec<CatalogueHit>>, ApiError> {
    let searcher = index.clone();
    if !index.scans_queries_together() {
        return tokio::task::spawn_blocking(move || searcher.similar_items(id, k, &filter))
            .await
            .map_err(internal)?
            .map_err(internal);
    }
    let query = tokio::task::spawn_blocking(move || item_query(searcher.as_ref(), id))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let Some(query) = query else {
        return Ok(None);
    };
    let hits = state
        .searches
        .search(
            index.clone(),
            query,
            QuerySpace::Index,
            k.saturating_add(1),
            filter,
        )
        .await
        .map_err(internal)?;
    Ok(Some(without_item(hits, id, k)))
}

fn model_stopped() -> ApiError {
    internal("the model thread stopped")
}

/// A job's place in the model queue, or why there is none.
fn queued<T>(submitted: Result<T, QueueError>) -> Result<T, ApiError> {
    submitted.map_err(|e| match e {
        QueueError::Busy => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many searches in flight, retry".into(),
        ),
        QueueError::Stopped => model_stopped(),
        QueueError::NoModel => bad_request(
            "this server runs without a model (serve --vectors-only): search with POST /search/vector",
        ),
    })
}

async fn model_answer(
    reply: tokio::sync::oneshot::Receiver<Result<Vec<f32>, String>>,
) -> Result<Vec<f32>, ApiError> {
    reply.await.map_err(|_| model_stopped())?.map_err(internal)
}

/// The embeddings of `images` (each cropped to `bbox` when given), and when decoding ended.
async fn photo_embeddings(
    state: &Arc<AppState>,
    images: Vec<axum::body::Bytes>,
    bbox: Option<BBox>,
    pre: &Preprocessing,
    limits: &DecodeLimits,
) -> Result<(Vec<f32>, Instant), ApiError> {
    let photos = images.len();
    let (pre, limits) = (pre.clone(), *limits);
    let prepared = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                prepare_query(bytes, bbox, &pre, &limits).map_err(|e| match photos {
                    1 => e,
                    _ => format!("image {}: {e}", i + 1),
                })
            })
            .collect::<Result<Vec<Vec<f32>>, String>>()
    })
    .await
    .map_err(internal)?
    .map_err(bad_request)?;
    let decoded = Instant::now();
    let mut pending = Vec::with_capacity(photos);
    for pixels in prepared {
        pending.push(queued(state.queue.submit(pixels))?);
    }
    let mut embeddings = Vec::new();
    for reply in pending {
        embeddings.extend(model_answer(reply).await?);
    }
    Ok((embeddings, decoded))
}

/// `box=auto`: the photo's embedding and its windows' (by the window model), the choice against
/// the index, and the query — the winning window's embedding or the whole photo's — with the box
/// and when decoding ended.
async fn auto_boxed_embedding(
    state: &Arc<AppState>,
    index: &Arc<dyn Catalogue>,
    bytes: axum::body::Bytes,
    params: &AutoBox,
    pre: &Preprocessing,
    limits: &DecodeLimits,
    filter: &Filter,
) -> Result<(Vec<f32>, Option<BBox>, Instant), ApiError> {
    let limits = *limits;
    let (photo_pre, window_pre) = (
        pre.clone(),
        Preprocessing {
            size: params.window_side(pre.size),
            ..pre.clone()
        },
    );
    let windows = params.windows();
    let n = windows.len();
    let (photo_pixels, window_pixels, photo_size) = tokio::task::spawn_blocking(move || {
        let image = decode_query(&bytes, &limits)?;
        let photo = prepare_decoded(&image, None, &photo_pre);
        let crops = prepare_windows(&image, &windows, &window_pre);
        Ok::<_, String>((photo, crops, (image.width(), image.height())))
    })
    .await
    .map_err(internal)?
    .map_err(bad_request)?;
    let decoded = Instant::now();
    let photo = queued(state.queue.submit(photo_pixels))?;
    let crops = queued(state.queue.submit_windows(window_pixels, n))?;
    let (whole, rows) = (model_answer(photo).await?, model_answer(crops).await?);
    let (searcher, params, filter) = (index.clone(), *params, filter.clone());
    let (choice, whole, rows) = tokio::task::spawn_blocking(move || {
        params
            .choose_in_catalogue(searcher.as_ref(), &whole, &rows, &filter)
            .map(|choice| (choice, whole, rows))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(match choice {
        // The window's own embedding is the query: nothing more is embedded.
        Some(c) => (
            c.row(&rows, whole.len()).to_vec(),
            Some(c.window.to_bbox(photo_size.0, photo_size.1)),
            decoded,
        ),
        None => (whole, None, decoded),
    })
}

/// The `k` and `filter` query parameters of a search by item or by embedding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopKParams {
    k: Option<usize>,
    filter: Option<String>,
}

async fn similar(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    QueryParams(params): QueryParams<TopKParams>,
) -> Response {
    let started = Instant::now();
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no catalogue item {id}"));
    let checked = (
        checked_k(&state.config, params.k),
        parse_filter(params.filter.as_deref()),
    );
    let response = match checked {
        (Err(e), _) | (_, Err(e)) => e.into_response(),
        (Ok(k), Ok(filter)) => match id.parse::<u64>() {
            Err(_) => not_found().into_response(),
            Ok(item) => {
                let index = state.index.get();
                match similar_hits(&state, &index, item, k, filter).await {
                    Ok(Some(hits)) => {
                        let search = started.elapsed().as_secs_f64() * 1e3;
                        let timings = Timings {
                            decode: 0.0,
                            model: 0.0,
                            search,
                            total: search,
                        };
                        axum::Json(SearchResponse::new(
                            index.as_ref(),
                            hits,
                            QueryKind::Item,
                            timings,
                        ))
                        .into_response()
                    }
                    Ok(None) => not_found().into_response(),
                    Err(e) => e.into_response(),
                }
            }
        },
    };
    state.metrics.request("similar", response.status().as_u16());
    response
}

async fn image(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let response = match thumbnail(&state, &id).await {
        Ok(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            jpeg,
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request("images", response.status().as_u16());
    response
}

/// The JPEG thumbnail (256 px) of catalogue image `id`; 404 for an id the catalogue does not
/// hold or a photo that cannot be read.
async fn thumbnail(state: &AppState, id: &str) -> Result<Vec<u8>, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no catalogue image {id}"));
    let Ok(i) = id.parse::<u64>() else {
        return Err(not_found());
    };
    let index = state.index.get();
    let item = tokio::task::spawn_blocking(move || index.item(i))
        .await
        .unwrap_or_else(|e| Err(RetrievalError::Invalid(e.to_string())))
        .map_err(internal)?
        .ok_or_else(not_found)?;
    let limits = DecodeLimits {
        max_pixels: state.config.max_pixels,
        ..DecodeLimits::default()
    };
    // A catalogue photo is decoded whole before it is shrunk: thumbnails take the decoders'
    // permits, so their memory is bounded like uploads' (32 requests at once for 24 Mpx
    // photos took the server to 5 GB before).
    let _permit = decode_permit(state).await?;
    tokio::task::spawn_blocking(move || thumbnail_jpeg(Path::new(&item.path), 256, &limits))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e))
}

/// One of the decoders' permits (`--max-decodes`), waited for within the request deadline and
/// 503 after it: every whole-photo decode a request causes — a search's photos, a catalogue
/// photo for a thumbnail, a photo added to the catalogue — holds one, so their memory is
/// bounded together. (A search runs under its own deadline too, which ends it first: 504.)
pub(crate) async fn decode_permit(
    state: &AppState,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    match tokio::time::timeout(state.config.request_timeout, state.decoders.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(e)) => Err(internal(e)),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many images are being decoded; retry shortly".into(),
        )),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> &'static str {
    state.metrics.request("healthz", 200);
    "ok\n"
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request("metrics", 200);
    let index_rows = current_rows(&state).await;
    let stats = &state.queue.stats;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let (index_scans, index_searches) = state.searches.counts();
    let text = state.metrics.render(&Counters {
        index_rows,
        index_bytes: state.index.bytes(),
        inference_batches: stats.batches.load(relaxed),
        inference_images: stats.images.load(relaxed),
        index_scans,
        index_searches,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The served index's rows now. An engine changed in place (PostgreSQL) may have been written
/// by other processes since serve last counted, so it is counted (and sized) again; when that
/// fails the last count stands and the failure is logged.
async fn current_rows(state: &AppState) -> usize {
    let index = state.index.get();
    if state.index_folder.is_some() {
        return index.rows();
    }
    let (live, counter) = (state.index.clone(), index.clone());
    let counted = tokio::task::spawn_blocking(move || {
        let rows = counter.recount_rows();
        live.refresh_bytes();
        rows
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|rows| rows.map_err(|e| e.to_string()));
    counted.unwrap_or_else(|e| {
        tracing::warn!("metrics: the index's rows were not counted again: {e}");
        index.rows()
    })
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// The service's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let budget = Arc::new(body_memory_budget::BodyBudget::new(
        state.config.max_body_memory.max(limit),
    ));
    Router::new()
        .route("/", get(page))
        .route("/search", post(search))
        .route("/search/vector", post(search_vector))
        .route("/images/{id}", get(image))
        .route("/items/{id}/similar", get(similar))
        .route("/items", post(add_items).delete(delete_items))
        .route("/index/compact", post(compact_index))
        .route("/index/dups", get(duplicate_groups))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), budget),
            body_memory_budget::limit_body_memory,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_deadline::body_deadline,
        ))
        .with_state(state)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves until SIGINT/SIGTERM, then lets open requests finish for up to
/// `config.drain_timeout`. Each connection must deliver a request head within
/// `config.header_timeout` (idle keep-alive connections included) and take its answers
/// within `config.send_timeout`; beyond
/// `config.max_connections` new connections are closed at once.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    use hyper::server::conn::http1::Builder;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let app = router(state.clone());
    let config = state.config.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: hyper-util's auto (h1/h2) builder waits for a client's first bytes with no
    // deadline, so an idle connection would never time out.
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    state.metrics.request("refused_connection", 503);
                    drop(stream);
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let stream = send_deadline::SendDeadline::new(stream, config.send_timeout);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!("drain deadline passed; closing the remaining connections");
        }
    }
    Ok(())
}
