//! The catalogue's back office over HTTP: `POST /items` (add or upsert a product's photos),
//! `DELETE /items` (remove products by key), `POST /index/compact` and `GET /index/dups`
//! (near-duplicate groups). The same engine seam and code as `visual-search index upsert |
//! delete | compact | dups`, so both engines work.
//!
//! These are off unless the server was given a token (`serve --write-token-file`); each
//! request must carry `Authorization: Bearer <token>` (401 otherwise, compared in constant
//! time). `dups` changes nothing but reads every candidate image on the server, so it is
//! behind the token too. Uploaded photos are kept in the upload folder under fresh names (never replacing a
//! file), prepared as `index build` prepares gallery images (white border cropped, resized,
//! normalised), embedded by the server's model queue and brought into the index's space. After
//! a write to an on-disk index the new version is served at once.
//!
//! `POST /items?mode=upsert|add` takes a multipart form: one to 16 `image` fields, a `label`
//! field (the product label) and any other text field as metadata (`category=Fruit`, the key
//! column, …). `upsert` (the default) replaces every image of the product key the fields give;
//! `add` appends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use visual_search_data::image::DecodeLimits;
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::catalogue_duplicates::{DupSettings, find_duplicate_groups};
use visual_search_retrieval::index::IndexItem;
use visual_search_retrieval::item_metadata::{Metadata, check_column_name, check_value};

use crate::api_error::{ApiError, bad_request, internal};
use crate::query_image::{decode_query, prepare_catalogue_image};
use crate::query_params::QueryParams;
use crate::upload::{MAX_IMAGES, body_error, check_declared_length, is_multipart};
use crate::{AppState, model_answer, queued};

/// What catalogue writes need: the token and where uploaded photos go.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    pub token: String,
    pub upload_dir: PathBuf,
}

#[derive(Serialize)]
struct WriteReply {
    /// Rows removed (an upsert's replaced images, a delete's images).
    removed: usize,
    added: usize,
    /// Images the index serves after the change (for PostgreSQL, counted just after it, with
    /// what other writers committed meanwhile).
    rows: usize,
    /// A delete's keys that no image had.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unmatched_keys: Vec<String>,
}

/// What a write changed: rows removed and added, and a delete's keys that matched nothing.
type WriteCounts = (usize, usize, Vec<String>);

/// 403 when writes are off, 401 without the right bearer token.
fn authorize<'a>(
    state: &'a AppState,
    request_headers: &header::HeaderMap,
) -> Result<&'a WriteConfig, ApiError> {
    let config = state.config.writes.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            "catalogue writes are off (start serve with --write-token-file)".into(),
        )
    })?;
    let given = request_headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), config.token.as_bytes()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a catalogue write needs `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(config)
}

/// Equality whose time does not depend on where the inputs first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs one write in the blocking pool and, for an on-disk index, serves the new version.
async fn write(
    state: &Arc<AppState>,
    op: impl FnOnce(&dyn Catalogue) -> Result<WriteCounts, String> + Send + 'static,
) -> Result<WriteReply, ApiError> {
    let index = state.index.get();
    let (removed, added, unmatched_keys) = tokio::task::spawn_blocking(move || op(index.as_ref()))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let live = state.index.clone();
    let reload = match state.index_folder.clone() {
        Some(dir) => tokio::task::spawn_blocking(move || live.reload_folder(&dir).map(drop)),
        // An engine changed in place (PostgreSQL) counted its rows as it wrote; its size on
        // its server is asked again.
        None => tokio::task::spawn_blocking(move || {
            live.refresh_bytes();
            Ok(())
        }),
    };
    reload.await.map_err(internal)?.map_err(internal)?;
    Ok(WriteReply {
        removed,
        added,
        rows: state.index.get().rows(),
        unmatched_keys,
    })
}

fn reply(state: &AppState, route: &'static str, outcome: Result<WriteReply, ApiError>) -> Response {
    let response = match outcome {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request(route, response.status().as_u16());
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddParams {
    mode: Option<String>,
}

/// A product's photos and fields from a multipart form.
struct ItemForm {
    images: Vec<Bytes>,
    label: i64,
    metadata: Metadata,
}

impl ItemForm {
    /// The item each uploaded photo becomes, before it has a path (the product key is read
    /// from it).
    fn metadata_item(&self) -> IndexItem {
        IndexItem {
            label: self.label,
            path: PathBuf::new(),
            metadata: self.metadata.clone(),
        }
    }
}

async fn read_item_form(request: Request, max_body_bytes: usize) -> Result<ItemForm, ApiError> {
    check_declared_length(&request, max_body_bytes)?;
    if !is_multipart(&request) {
        return Err(bad_request(
            "send a multipart form: `image` fields, a `label` field and metadata fields",
        ));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad_request(e.body_text()))?;
    let (mut images, mut label, mut metadata) = (Vec::new(), None, Metadata::new());
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| body_error(e.body_text(), max_body_bytes))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| body_error(e.body_text(), max_body_bytes))?;
        match name.as_str() {
            "image" if images.len() == MAX_IMAGES => {
                return Err(bad_request(format!(
                    "more than {MAX_IMAGES} `image` fields"
                )));
            }
            "image" => images.push(bytes),
            _ => {
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| bad_request(format!("field {name:?} is not UTF-8 text")))?
                    .trim()
                    .to_string();
                if name == "label" {
                    label =
                        Some(text.parse::<i64>().map_err(|_| {
                            bad_request(format!("label {text:?} is not an integer"))
                        })?);
                } else if !text.is_empty() {
                    check_column_name(&name).map_err(bad_request)?;
                    check_value(&text).map_err(|e| bad_request(format!("{name}: {e}")))?;
                    metadata.insert(name, text);
                }
            }
        }
    }
    if images.is_empty() {
        return Err(bad_request("no `image` field"));
    }
    Ok(ItemForm {
        images,
        label: label.ok_or_else(|| bad_request("no `label` field (the product label)"))?,
        metadata,
    })
}

/// Keeps an uploaded photo in `dir` under a fresh name (its format's extension); never
/// replaces a file.
fn keep_upload(dir: &Path, bytes: &[u8]) -> Result<PathBuf, String> {
    let ext = image::guess_format(bytes)
        .ok()
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut file = tempfile_in(dir)?;
    std::io::Write::write_all(&mut file.0, bytes)
        .and_then(|_| file.0.sync_all())
        .map_err(|e| format!("{}: {e}", file.1.display()))?;
    let path = file.1.with_extension(ext);
    // A hard link never replaces an existing file; the temp name goes after.
    std::fs::hard_link(&file.1, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&file.1);
    Ok(std::path::absolute(&path).unwrap_or(path))
}

/// The photos one request kept: removed again when the request fails before the index holds
/// them (a bad second image, a model error, a refused write), so a failed upload leaves no
/// orphan files; [`KeptUploads::keep`] once the index refers to them.
#[derive(Default)]
struct KeptUploads(Vec<PathBuf>);

impl KeptUploads {
    /// The index holds the photos now: they stay.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for KeptUploads {
    fn drop(&mut self) {
        for path in &self.0 {
            // Files this request created itself and nothing refers to.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A new, empty file in `dir` with a unique name (`upload-<time>-<n>`).
fn tempfile_in(dir: &Path) -> Result<(std::fs::File, PathBuf), String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    for n in 0..1000 {
        let path = dir.join(format!("upload-{stamp}-{n}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("{}: no free file name", dir.display()))
}

/// `POST /items?mode=upsert|add`.
pub(crate) async fn add_items(
    State(state): State<Arc<AppState>>,
    QueryParams(params): QueryParams<AddParams>,
    request: Request,
) -> Response {
    let outcome = async {
        let config = authorize(&state, request.headers())?.clone();
        let upsert = match params.mode.as_deref() {
            None | Some("upsert") => true,
            Some("add") => false,
            Some(other) => {
                return Err(bad_request(format!(
                    "mode={other:?}: use upsert (the default) or add"
                )));
            }
        };
        let form = read_item_form(request, state.config.max_body_bytes).await?;
        let index = state.index.get();
        let product = form.metadata_item();
        if upsert && index.meta().key_of(&product).is_none() {
            return Err(bad_request(format!(
                "an upsert needs the product key field {:?}",
                index.meta().key_name()
            )));
        }
        let pre = index.meta().preprocessing.clone();
        let limits = DecodeLimits {
            max_pixels: state.config.max_pixels,
            max_file_bytes: state.config.max_body_bytes as u64,
            ..DecodeLimits::default()
        };
        let images = form.images;
        let n = images.len();
        let permit = crate::decode_permit(&state).await?;
        let (prepared, kept) = tokio::task::spawn_blocking(move || {
            let mut prepared = Vec::with_capacity(n);
            let mut kept = KeptUploads::default();
            for (i, bytes) in images.iter().enumerate() {
                let image = decode_query(bytes, &limits).map_err(|e| {
                    bad_request(if n == 1 {
                        e
                    } else {
                        format!("image {}: {e}", i + 1)
                    })
                })?;
                prepared.push(prepare_catalogue_image(&image, &pre));
                kept.0
                    .push(keep_upload(&config.upload_dir, bytes).map_err(internal)?);
            }
            Ok::<_, ApiError>((prepared, kept))
        })
        .await
        .map_err(internal)??;
        drop(permit);
        let mut pending = Vec::with_capacity(n);
        for pixels in prepared {
            pending.push(queued(state.queue.submit(pixels))?);
        }
        let mut rows = Vec::new();
        for answer in pending {
            rows.extend(model_answer(answer).await?);
        }
        index
            .meta()
            .post_processing
            .prepare_rows(&mut rows, index.meta().dim)
            .map_err(internal)?;
        let items: Vec<IndexItem> = kept
            .0
            .iter()
            .map(|path| IndexItem {
                path: path.clone(),
                ..product.clone()
            })
            .collect();
        write(&state, move |index| {
            let written = if upsert {
                index
                    .upsert(&items, &rows)
                    .map(|(removed, added)| (removed, added, Vec::new()))
                    .map_err(|e| e.to_string())
            } else {
                index
                    .append(&items, &rows)
                    .map(|_| (0, items.len(), Vec::new()))
                    .map_err(|e| e.to_string())
            };
            if written.is_ok() {
                kept.keep();
            }
            written
        })
        .await
    }
    .await;
    reply(&state, "items_write", outcome)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteBody {
    keys: Vec<String>,
}

/// `DELETE /items` with `{"keys": ["7", …]}`: every image of those products.
pub(crate) async fn delete_items(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let outcome = async {
        authorize(&state, request.headers())?;
        let axum::Json(body) = axum::Json::<DeleteBody>::from_request(request, &())
            .await
            .map_err(|e| bad_request(e.body_text()))?;
        let keys = state
            .index
            .get()
            .meta()
            .parse_keys(body.keys)
            .map_err(|e| bad_request(e.to_string()))?;
        write(&state, move |index| {
            index
                .delete_keys(&keys)
                .map(|d| (d.rows, 0, d.unmatched))
                .map_err(|e| e.to_string())
        })
        .await
    }
    .await;
    reply(&state, "items_write", outcome)
}

/// `POST /index/compact`.
pub(crate) async fn compact_index(
    State(state): State<Arc<AppState>>,
    request_headers: header::HeaderMap,
) -> Response {
    let outcome = async {
        authorize(&state, &request_headers)?;
        write(&state, |index| {
            index
                .compact()
                .map(|_| (0, 0, Vec::new()))
                .map_err(|e| e.to_string())
        })
        .await
    }
    .await;
    reply(&state, "compact", outcome)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DupsParams {
    threshold: Option<f32>,
    k: Option<usize>,
    max_hash_distance: Option<u32>,
}

/// `GET /index/dups?threshold=0.9&k=10&max_hash_distance=5`: the near-duplicate groups, as
/// `index dups` finds them (`retrieval::catalogue_duplicates`).
pub(crate) async fn duplicate_groups(
    State(state): State<Arc<AppState>>,
    QueryParams(params): QueryParams<DupsParams>,
    request_headers: header::HeaderMap,
) -> Response {
    let outcome = async {
        authorize(&state, &request_headers)?;
        let defaults = DupSettings::default();
        let settings = DupSettings {
            threshold: params.threshold.unwrap_or(defaults.threshold),
            k: params.k.unwrap_or(defaults.k).clamp(1, 100),
            max_hash_distance: params
                .max_hash_distance
                .unwrap_or(defaults.max_hash_distance),
        };
        if !(settings.threshold > 0.0 && settings.threshold <= 1.0) {
            return Err(bad_request("threshold must be in (0, 1]"));
        }
        let index = state.index.get();
        let mut report = tokio::task::spawn_blocking(move || {
            find_duplicate_groups(index.as_ref(), &settings, &mut |_, _| {})
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        // Clients see catalogue-relative paths, never the server's own.
        let meta = state.index.get().meta().clone();
        for member in report.groups.iter_mut().flatten() {
            member.path = meta.client_path(Path::new(&member.path));
        }
        // Unreadable files are named in the server's log, not to clients (server paths).
        if !report.unreadable.is_empty() {
            for u in &report.unreadable {
                tracing::warn!("index dups: {u}");
            }
            let n = report.unreadable.len();
            report.unreadable = vec![format!(
                "{n} candidate images could not be read; their pairs are left out"
            )];
        }
        Ok(report)
    }
    .await;
    let response = match outcome {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request("dups", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn uploads_get_fresh_names_and_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let png = {
            let mut out = std::io::Cursor::new(Vec::new());
            image::RgbImage::new(2, 2)
                .write_to(&mut out, image::ImageFormat::Png)
                .unwrap();
            out.into_inner()
        };
        let a = keep_upload(dir.path(), &png).unwrap();
        let b = keep_upload(dir.path(), &png).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.extension().unwrap(), "png");
        assert_eq!(std::fs::read(&a).unwrap(), png);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_none())
            .collect();
        assert!(leftovers.is_empty(), "temp names are removed");
    }
}
