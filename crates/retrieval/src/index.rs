//! The on-disk search index: a catalogue's embeddings plus what each row is, in a folder that
//! `serve` memory-maps.
//!
//! ```text
//! INDEX/
//!   current            one line naming the live version folder (replaced atomically)
//!   v000002/
//!     meta.json        format version, dtype, dim, rows, CRC-32s, model reference, preprocessing
//!     meta.json.crc32  the CRC-32 of meta.json itself
//!     items.csv        id,label,path[,metadata columns…] (row i of the embeddings is id i)
//!     embeddings.bin   rows × dim little-endian f16 (default) or f32, nothing else
//!     deleted.bin      only after a delete: the deleted row ids, u32 little-endian, increasing
//!   writer.lock        locked (flock) by each write, so concurrent writers take turns
//! ```
//!
//! Every write (`build`, `add`, `upsert`, `delete`, `compact`) creates a new version folder,
//! syncs it, then swaps `current`, so a reader sees either the old index or the new one, never
//! a mix, and a killed write leaves the old one in place. Writers hold `writer.lock` and apply
//! their change to the version current at that moment, not the one they opened, so two
//! `index add` runs at once both land (the kernel drops the lock of a killed writer).
//!
//! Deletes are tombstones: the rows stay in the files, listed in `deleted.bin`, and searches,
//! lookups and counts skip them, so row ids stay stable and a delete does not copy the
//! embeddings (the new version hard-links the old `embeddings.bin`). `compact` rewrites the
//! version without them, renumbering the rows after each deleted one. An upsert deletes the
//! rows of every product key it brings and appends the new rows, in one version. The product
//! key is the label, or a metadata column chosen at build time (`key_column`). A version with
//! tombstones is written as format 2, so a build that does not know them refuses it instead
//! of returning deleted rows.
//!
//! On open, `meta.json` is checked against its CRC-32, and the file sizes and the CRC-32 of the
//! data files against `meta.json`: a truncated, edited or mismatched index is refused with the
//! reason.
//! `embeddings.bin` starts at offset 0 of a page-aligned mapping, so its rows are read in place.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use visual_search_data::atomic_write::is_temp_file_of;
use visual_search_data::output_file::{foreign_entries, some_names};

use crate::catalogue::Deleted;
use crate::error::RetrievalError;
use crate::filter_postings::FilterPostings;
use crate::index_post_processing::IndexPostProcessing;
use crate::item_metadata::{Filter, MAX_COLUMNS, Metadata, check_column_name};
use crate::matrix::MatrixView;
use crate::open_set::MatchThreshold;
use crate::topk::{TopK, top_k};

pub const INDEX_FORMAT_VERSION: u32 = 1;
/// The format of a version holding tombstones (`deleted.bin`).
pub const TOMBSTONE_FORMAT_VERSION: u32 = 2;

/// Rows deleted from a version but still in its files (`deleted.bin`), until `compact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedRows {
    pub rows: usize,
    pub crc32: u32,
}

/// Stored precision of the embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexDtype {
    F16,
    F32,
}

impl IndexDtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            IndexDtype::F16 => 2,
            IndexDtype::F32 => 4,
        }
    }
}

/// How query images must be prepared to match the catalogue (same as at build time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub format_version: u32,
    pub dtype: IndexDtype,
    pub dim: usize,
    pub rows: usize,
    pub embeddings_crc32: u32,
    pub items_crc32: u32,
    /// The model that made the embeddings (opaque here; the CLI reads it back to load it).
    pub model: serde_json::Value,
    pub preprocessing: Preprocessing,
    /// The folder the build's list was relative to (absolute). Clients are shown item paths
    /// relative to it, never the server's own paths. Absent in indexes built before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_root: Option<PathBuf>,
    /// Applied to every query (and added row): centring, query blending.
    #[serde(default, skip_serializing_if = "IndexPostProcessing::is_empty")]
    pub post_processing: IndexPostProcessing,
    /// The calibrated "is it in the catalogue?" threshold (`index calibrate`); without it every
    /// top hit is reported as the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_threshold: Option<MatchThreshold>,
    /// The metadata column that names a product for `index upsert` / `index delete`; without
    /// it the product label is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_column: Option<String>,
    /// Tombstones of the embedded index (`deleted.bin`); PostgreSQL deletes rows outright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DeletedRows>,
}

impl IndexMeta {
    /// The metadata of a new index of `dim`-wide rows stored as `dtype`, made by `model` (a
    /// reference the loader reads back) with `preprocessing`; rows and checksums are filled
    /// in when it is written, and nothing else is stored.
    pub fn new(
        dtype: IndexDtype,
        dim: usize,
        model: serde_json::Value,
        preprocessing: Preprocessing,
    ) -> Self {
        IndexMeta {
            format_version: INDEX_FORMAT_VERSION,
            dtype,
            dim,
            rows: 0,
            embeddings_crc32: 0,
            items_crc32: 0,
            model,
            preprocessing,
            catalogue_root: None,
            post_processing: IndexPostProcessing::default(),
            match_threshold: None,
            key_column: None,
            deleted: None,
        }
    }

    /// The product key of `item`: its label, or its value of the key column (`None` when the
    /// item does not set it).
    pub fn key_of(&self, item: &IndexItem) -> Option<String> {
        match &self.key_column {
            None => Some(item.label.to_string()),
            Some(column) => item.metadata.get(column).cloned(),
        }
    }

    /// `keys` as this index stores product keys. Without a key column the keys are labels,
    /// integers: `007` is label 7, and a key that is not an integer (a product name, say) is
    /// refused, as it could never match.
    pub fn parse_keys(
        &self,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<HashSet<String>, RetrievalError> {
        keys.into_iter()
            .map(|key| match &self.key_column {
                Some(_) => Ok(key),
                None => key
                    .trim()
                    .parse::<i64>()
                    .map(|l| l.to_string())
                    .map_err(|_| {
                        RetrievalError::Invalid(format!(
                            "key {key:?} is not a product label (an integer); this index keys \
                         products by label (it was built without --key-column)"
                        ))
                    }),
            })
            .collect()
    }

    /// The product keys of `items`; an error names the first item without one.
    pub fn product_keys(&self, items: &[IndexItem]) -> Result<HashSet<String>, RetrievalError> {
        items
            .iter()
            .enumerate()
            .map(|(n, item)| {
                self.key_of(item).ok_or_else(|| {
                    RetrievalError::Invalid(format!(
                        "row {} ({}) has no {} (the index's product key)",
                        n + 1,
                        item.path.display(),
                        self.key_name()
                    ))
                })
            })
            .collect()
    }

    /// What a product key is, for messages.
    pub fn key_name(&self) -> &str {
        self.key_column.as_deref().unwrap_or("label")
    }

    /// Whether a top hit scoring `score` is the product asked for: at or above the calibrated
    /// threshold, or always when the index has none.
    pub fn is_match(&self, score: f32) -> bool {
        self.match_threshold
            .as_ref()
            .is_none_or(|t| t.accepts(score))
    }

    /// How an item's path is shown to clients: relative to the catalogue root when it lies under
    /// it, otherwise (an `index add` from elsewhere, an older index) only its file name.
    pub fn client_path(&self, path: &Path) -> String {
        let relative = self
            .catalogue_root
            .as_deref()
            .and_then(|root| path.strip_prefix(root).ok())
            .filter(|rel| !rel.as_os_str().is_empty());
        match relative {
            Some(rel) => rel.display().to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// One catalogue image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexItem {
    pub label: i64,
    /// Where the image is (absolute, or relative to where the index was built).
    pub path: PathBuf,
    /// The catalogue list's extra columns for this image ([`crate::item_metadata`]).
    pub metadata: Metadata,
}

impl IndexItem {
    /// An item without metadata.
    pub fn new(label: i64, path: impl Into<PathBuf>) -> Self {
        IndexItem {
            label,
            path: path.into(),
            metadata: Metadata::new(),
        }
    }
}

/// An open index: metadata, items and the mapped embeddings.
pub struct Index {
    pub dir: PathBuf,
    pub version_dir: PathBuf,
    pub meta: IndexMeta,
    /// Every row's item, deleted rows included (ids are positions).
    pub items: Vec<IndexItem>,
    data: Option<Mmap>,
    /// Deleted row ids, increasing.
    deleted: Vec<u32>,
    /// The rows not deleted, increasing; `None` when nothing is deleted.
    live: Option<Vec<u32>>,
    /// Rows per metadata value and label, built on the first filtered search.
    postings: OnceLock<FilterPostings>,
}

/// Where a new version's `embeddings.bin` comes from.
enum EmbeddingSource<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The same file as this one (unchanged rows): hard-linked, copied where links fail.
    SameAs(&'a Path),
}

fn fmt_err(path: &Path, message: impl Into<String>) -> RetrievalError {
    RetrievalError::format(path, message)
}

/// The metadata columns of `items`, sorted (every name any item sets).
pub fn metadata_columns<'a>(items: impl IntoIterator<Item = &'a IndexItem>) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> =
        items.into_iter().flat_map(|i| i.metadata.keys()).collect();
    names.into_iter().cloned().collect()
}

fn items_csv(items: &[IndexItem]) -> Result<Vec<u8>, RetrievalError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| RetrievalError::Invalid(format!("writing items.csv: {e}"));
    let columns = metadata_columns(items);
    if columns.len() > MAX_COLUMNS {
        return Err(RetrievalError::Invalid(format!(
            "{} metadata columns (at most {MAX_COLUMNS})",
            columns.len()
        )));
    }
    for name in &columns {
        check_column_name(name).map_err(RetrievalError::Invalid)?;
    }
    let header = ["id", "label", "path"]
        .into_iter()
        .chain(columns.iter().map(String::as_str));
    w.write_record(header).map_err(csv_err)?;
    for (i, item) in items.iter().enumerate() {
        let path = item.path.to_str().ok_or_else(|| {
            RetrievalError::Invalid(format!("{}: path is not UTF-8", item.path.display()))
        })?;
        let (id, label) = (i.to_string(), item.label.to_string());
        let cells = [id.as_str(), &label, path].into_iter().chain(
            columns
                .iter()
                .map(|c| item.metadata.get(c).map_or("", String::as_str)),
        );
        w.write_record(cells).map_err(csv_err)?;
    }
    w.into_inner()
        .map_err(|e| RetrievalError::Invalid(format!("writing items.csv: {e}")))
}

/// Reads `items.csv` as CSV (a path may hold commas, quotes or newlines); columns after
/// `id,label,path` are metadata, an empty cell meaning "not set".
fn parse_items(path: &Path, bytes: &[u8]) -> Result<Vec<IndexItem>, RetrievalError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| fmt_err(path, format!("header: {e}")))?
        .clone();
    if header.len() < 3 || &header[0] != "id" || &header[1] != "label" || &header[2] != "path" {
        return Err(fmt_err(path, "header does not start with `id,label,path`"));
    }
    let columns: Vec<String> = header.iter().skip(3).map(str::to_string).collect();
    for name in &columns {
        check_column_name(name).map_err(|m| fmt_err(path, m))?;
    }
    let mut items = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let bad = |what: &str| fmt_err(path, format!("record {}: {what}", n + 1));
        let record = record.map_err(|e| bad(&e.to_string()))?;
        let id: usize = record[0].parse().map_err(|_| bad("bad id"))?;
        if id != n {
            return Err(bad("ids must be 0, 1, 2, … in order"));
        }
        let label: i64 = record[1].parse().map_err(|_| bad("bad label"))?;
        let metadata = columns
            .iter()
            .zip(record.iter().skip(3))
            .filter(|(_, v)| !v.is_empty())
            .map(|(c, v)| (c.clone(), v.to_string()))
            .collect();
        items.push(IndexItem {
            label,
            path: PathBuf::from(&record[2]),
            metadata,
        });
    }
    Ok(items)
}

fn encode(embeddings: &[f32], dtype: IndexDtype) -> Vec<u8> {
    match dtype {
        IndexDtype::F32 => embeddings.iter().flat_map(|v| v.to_le_bytes()).collect(),
        IndexDtype::F16 => embeddings
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RetrievalError> {
    let mut f = std::fs::File::create(path).map_err(|e| RetrievalError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| RetrievalError::io(path, e))
}

/// Whether `name` is a version folder name this index writes (`v` + digits).
fn is_version_name(name: &str) -> bool {
    name.strip_prefix('v').is_some_and(|digits| {
        (6..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Whether `name` is a version folder a write had not finished (`.vNNNNNN.<suffix>`).
fn is_temp_version_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(version, _)| is_version_name(version))
}

/// The live version named by `current`: `None` when there is no `current`, an error when it
/// names anything but a version this index writes (so nothing else is ever opened or deleted).
fn current_version(dir: &Path) -> Result<Option<String>, RetrievalError> {
    let path = dir.join("current");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RetrievalError::io(&path, e)),
    };
    let name = text.trim();
    if !is_version_name(name) {
        return Err(fmt_err(
            &path,
            format!(
                "names {name:?}, which is not a version folder this index writes (vNNNNNN); \
                 refusing to use or replace it"
            ),
        ));
    }
    Ok(Some(name.to_string()))
}

/// Removes what a killed write left behind: temp version folders (`.vNNNNNN.*`) and temp
/// `current` files (`.current.*`).
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if is_temp_version_name(&name) && path.is_dir() {
            tracing::info!("removing {} left by an interrupted write", path.display());
            let _ = std::fs::remove_dir_all(&path);
        } else if is_temp_file_of(&name, "current") && path.is_file() {
            tracing::info!("removing {} left by an interrupted write", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Makes renames inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), RetrievalError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| RetrievalError::io(dir, e))
}

/// The CRC-32 of `meta.json`, as 8 hex digits, beside it: the data files' checksums live in
/// `meta.json`, so this one guards `meta.json` itself (an edited width, size or model).
const META_CRC_FILE: &str = "meta.json.crc32";

/// Checks `meta.json` against `meta.json.crc32`; versions written before that file existed
/// have none and are accepted.
fn check_meta_crc(
    version_dir: &Path,
    meta_path: &Path,
    bytes: &[u8],
) -> Result<(), RetrievalError> {
    let crc_path = version_dir.join(META_CRC_FILE);
    let text = match std::fs::read_to_string(&crc_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RetrievalError::io(&crc_path, e)),
    };
    let want = u32::from_str_radix(text.trim(), 16)
        .map_err(|_| fmt_err(&crc_path, "not an 8-digit hex CRC-32"))?;
    if crc32fast::hash(bytes) != want {
        return Err(fmt_err(meta_path, "checksum mismatch (damaged or edited)"));
    }
    Ok(())
}

/// Writes a new version of the index at `dir` (`deleted`: tombstoned rows, increasing), checks
/// that it opens, then makes it current.
fn write_version(
    dir: &Path,
    mut meta: IndexMeta,
    items: &[IndexItem],
    embeddings: EmbeddingSource<'_>,
    deleted: &[u32],
) -> Result<(), RetrievalError> {
    std::fs::create_dir_all(dir).map_err(|e| RetrievalError::io(dir, e))?;
    let previous = current_version(dir)?;
    sweep_leftovers(dir);
    let number = previous
        .as_deref()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(1, |n| n + 1);
    let name = format!("v{number:06}");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .tempdir_in(dir)
        .map_err(|e| RetrievalError::io(dir, e))?;
    let items_bytes = items_csv(items)?;
    meta.rows = items.len();
    meta.items_crc32 = crc32fast::hash(&items_bytes);
    let data_path = tmp.path().join("embeddings.bin");
    match embeddings {
        EmbeddingSource::Bytes(bytes) => {
            meta.embeddings_crc32 = crc32fast::hash(bytes);
            write_synced(&data_path, bytes)?;
        }
        // The checksum in `meta` is the source's, checked again when the version is opened.
        EmbeddingSource::SameAs(source) => {
            if std::fs::hard_link(source, &data_path).is_err() {
                std::fs::copy(source, &data_path)
                    .and_then(|_| std::fs::File::open(&data_path)?.sync_all())
                    .map_err(|e| RetrievalError::io(&data_path, e))?;
            }
        }
    }
    write_synced(&tmp.path().join("items.csv"), &items_bytes)?;
    if deleted.is_empty() {
        meta.deleted = None;
        meta.format_version = INDEX_FORMAT_VERSION;
    } else {
        let bytes: Vec<u8> = deleted.iter().flat_map(|r| r.to_le_bytes()).collect();
        meta.deleted = Some(DeletedRows {
            rows: deleted.len(),
            crc32: crc32fast::hash(&bytes),
        });
        meta.format_version = TOMBSTONE_FORMAT_VERSION;
        write_synced(&tmp.path().join(DELETED_FILE), &bytes)?;
    }
    let json =
        serde_json::to_vec_pretty(&meta).map_err(|e| RetrievalError::Invalid(e.to_string()))?;
    write_synced(&tmp.path().join("meta.json"), &json)?;
    write_synced(
        &tmp.path().join(META_CRC_FILE),
        format!("{:08x}\n", crc32fast::hash(&json)).as_bytes(),
    )?;
    sync_dir(tmp.path())?;
    // Verify the new version reads back before it replaces anything.
    Index::open_version(dir, tmp.path().to_path_buf()).map_err(|e| {
        RetrievalError::Invalid(format!(
            "the new index version does not read back ({e}); the previous one is kept"
        ))
    })?;
    let final_dir = dir.join(&name);
    // A write killed between its rename and the `current` update leaves this version's folder
    // without making it current; it is no one's version (we hold the writer lock, and `current`
    // names an older one), and the rename below cannot replace a non-empty folder.
    if final_dir.exists() {
        tracing::info!(
            "removing {} left by an interrupted write",
            final_dir.display()
        );
        std::fs::remove_dir_all(&final_dir).map_err(|e| RetrievalError::io(&final_dir, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &final_dir).map_err(|e| RetrievalError::io(&final_dir, e))?;
    sync_dir(dir)?;
    crate::npy::write_atomically(&dir.join("current"), format!("{name}\n").as_bytes())?;
    sync_dir(dir)?;
    if let Some(old) = previous.filter(|p| *p != name) {
        // Readers that mapped the old version keep their mapping; the folder can go.
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Whether `dir` may receive a new index: it does not exist, is an index (a rebuild replaces
/// it with a new version and leaves any other file there alone), is empty, or holds only what
/// an interrupted first build left. Anything else — a file, or a folder of other files — is
/// refused, so a build never mixes an index into a user's folder. Commands call it before they
/// embed, so a wrong `--out` costs nothing.
pub fn check_build_target(dir: &Path) -> Result<(), RetrievalError> {
    if dir.join("current").is_file() {
        return Ok(());
    }
    let foreign = match foreign_entries(dir, is_index_entry) {
        Ok(None) => return Ok(()),
        Ok(Some(foreign)) => foreign,
        Err(_) if !dir.is_dir() => {
            return Err(fmt_err(
                dir,
                "exists and is not a folder; an index is a folder — choose another --out",
            ));
        }
        Err(e) => return Err(RetrievalError::io(dir, e)),
    };
    if foreign.is_empty() {
        return Ok(());
    }
    Err(fmt_err(
        dir,
        format!(
            "is not empty and is not an index (it holds {}); refusing to write into it — \
             choose another --out",
            some_names(&foreign)
        ),
    ))
}

/// Whether an entry of an index folder is one an index writes: `current`, the writer lock, a
/// version folder, or what an interrupted write leaves (`.vNNNNNN.*`, `.current.*`).
fn is_index_entry(name: &str) -> bool {
    name == "current"
        || name == WRITER_LOCK_FILE
        || is_version_name(name)
        || is_temp_file_of(name, "current")
        || is_temp_version_name(name)
}

/// Writes a new index (replacing any index at `dir` atomically); refuses a `dir` that
/// [`check_build_target`] refuses.
pub fn build_index(
    dir: &Path,
    meta: IndexMeta,
    items: &[IndexItem],
    embeddings: &[f32],
) -> Result<(), RetrievalError> {
    check_build_target(dir)?;
    if items.is_empty() {
        return Err(RetrievalError::Invalid(
            "no catalogue image could be embedded; refusing to replace the index with an empty one"
                .into(),
        ));
    }
    if embeddings.len() != items.len() * meta.dim {
        return Err(RetrievalError::Invalid(format!(
            "{} embedding values for {} items of dim {}",
            embeddings.len(),
            items.len(),
            meta.dim
        )));
    }
    let bytes = encode(embeddings, meta.dtype);
    std::fs::create_dir_all(dir).map_err(|e| RetrievalError::io(dir, e))?;
    let _writer = lock_writer(dir)?;
    write_version(dir, meta, items, EmbeddingSource::Bytes(&bytes), &[])
}

/// The file writers lock (`flock`) so that two writes of one index run one after the other.
const WRITER_LOCK_FILE: &str = "writer.lock";

/// Waits for, then holds, the index's writer lock until the returned file is dropped.
fn lock_writer(dir: &Path) -> Result<std::fs::File, RetrievalError> {
    let path = dir.join(WRITER_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RetrievalError::io(&path, e))?;
    file.lock().map_err(|e| RetrievalError::io(&path, e))?;
    Ok(file)
}

/// The tombstone file of a version.
const DELETED_FILE: &str = "deleted.bin";

/// Reads and checks `deleted.bin` against `meta.deleted`: increasing row ids below `rows`.
fn read_deleted(version_dir: &Path, meta: &IndexMeta) -> Result<Vec<u32>, RetrievalError> {
    let Some(want) = meta.deleted else {
        return Ok(Vec::new());
    };
    let path = version_dir.join(DELETED_FILE);
    let bytes = std::fs::read(&path).map_err(|e| RetrievalError::io(&path, e))?;
    if bytes.len() != want.rows * 4 || crc32fast::hash(&bytes) != want.crc32 {
        return Err(fmt_err(
            &path,
            "checksum or size mismatch (damaged or edited)",
        ));
    }
    let rows: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let ordered = rows.windows(2).all(|w| w[0] < w[1]);
    if !ordered || rows.last().is_some_and(|&r| r as usize >= meta.rows) {
        return Err(fmt_err(&path, "row ids out of order or out of range"));
    }
    Ok(rows)
}

/// Every row in `0..rows` not in `deleted` (both increasing).
fn live_rows(rows: usize, deleted: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows - deleted.len());
    let mut next = deleted.iter().peekable();
    for r in 0..rows as u32 {
        if next.peek() == Some(&&r) {
            next.next();
        } else {
            out.push(r);
        }
    }
    out
}

impl Index {
    /// Opens and verifies the current version of the index at `dir`.
    pub fn open(dir: &Path) -> Result<Index, RetrievalError> {
        let version = current_version(dir)?.ok_or_else(|| {
            fmt_err(
                dir,
                "not an index (no `current` file); build one with `visual-search index build`",
            )
        })?;
        Index::open_version(dir, dir.join(&version))
    }

    /// Opens and verifies one version folder of the index at `dir`.
    fn open_version(dir: &Path, version_dir: PathBuf) -> Result<Index, RetrievalError> {
        let meta_path = version_dir.join("meta.json");
        let bytes = std::fs::read(&meta_path).map_err(|e| RetrievalError::io(&meta_path, e))?;
        check_meta_crc(&version_dir, &meta_path, &bytes)?;
        let meta: IndexMeta = serde_json::from_slice(&bytes)
            .map_err(|e| fmt_err(&meta_path, format!("damaged: {e}")))?;
        if !(INDEX_FORMAT_VERSION..=TOMBSTONE_FORMAT_VERSION).contains(&meta.format_version) {
            return Err(fmt_err(
                &meta_path,
                format!(
                    "index format {} (this build reads {INDEX_FORMAT_VERSION} to \
                     {TOMBSTONE_FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        if meta.dim == 0 || !(1..=4096).contains(&meta.preprocessing.size) {
            return Err(fmt_err(
                &meta_path,
                format!(
                    "dim {} / preprocessing.size {} out of range (dim ≥ 1, size 1..=4096)",
                    meta.dim, meta.preprocessing.size
                ),
            ));
        }
        let items_path = version_dir.join("items.csv");
        let items_bytes =
            std::fs::read(&items_path).map_err(|e| RetrievalError::io(&items_path, e))?;
        if crc32fast::hash(&items_bytes) != meta.items_crc32 {
            return Err(fmt_err(
                &items_path,
                "checksum mismatch (damaged or edited)",
            ));
        }
        let items = parse_items(&items_path, &items_bytes)?;
        if items.len() != meta.rows {
            return Err(fmt_err(
                &items_path,
                format!("{} items, meta.json says {}", items.len(), meta.rows),
            ));
        }
        let data_path = version_dir.join("embeddings.bin");
        let file =
            std::fs::File::open(&data_path).map_err(|e| RetrievalError::io(&data_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| RetrievalError::io(&data_path, e))?
            .len() as usize;
        let want = meta.rows * meta.dim * meta.dtype.bytes();
        if len != want {
            return Err(fmt_err(
                &data_path,
                format!(
                    "{len} bytes, expected {want} ({} rows × {} × {:?}): truncated or mismatched",
                    meta.rows, meta.dim, meta.dtype
                ),
            ));
        }
        let data = if len == 0 {
            None
        } else {
            // SAFETY: the file is only ever replaced by writing a new version folder, never
            // modified in place, so the mapping stays valid while it is held.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| RetrievalError::io(&data_path, e))?)
        };
        if crc32fast::hash(data.as_deref().unwrap_or(&[])) != meta.embeddings_crc32 {
            return Err(fmt_err(&data_path, "checksum mismatch (damaged or edited)"));
        }
        let deleted = read_deleted(&version_dir, &meta)?;
        let live = (!deleted.is_empty()).then(|| live_rows(meta.rows, &deleted));
        Ok(Index {
            dir: dir.to_path_buf(),
            version_dir,
            meta,
            items,
            data,
            deleted,
            live,
            postings: OnceLock::new(),
        })
    }

    /// Whether row `row` was deleted (a tombstone).
    pub fn is_deleted(&self, row: usize) -> bool {
        u32::try_from(row).is_ok_and(|r| self.deleted.binary_search(&r).is_ok())
    }

    /// Rows deleted and not yet compacted away.
    pub fn deleted_rows(&self) -> usize {
        self.deleted.len()
    }

    /// Rows a search can return.
    pub fn live_rows(&self) -> usize {
        self.meta.rows - self.deleted.len()
    }

    /// The ids of the rows not deleted, increasing.
    pub fn live_ids(&self) -> impl Iterator<Item = usize> + '_ {
        let all = self.live.is_none().then_some(0..self.meta.rows);
        let listed = self.live.iter().flatten().map(|&r| r as usize);
        all.into_iter().flatten().chain(listed)
    }

    /// The items of the rows not deleted, in id order.
    pub fn live_items(&self) -> impl Iterator<Item = &IndexItem> + '_ {
        self.live_ids().map(|r| &self.items[r])
    }

    /// The rows a search with `filter` may return, increasing; `None` means every row.
    pub fn allowed_rows(&self, filter: &Filter) -> Option<Vec<u32>> {
        if filter.is_empty() {
            return self.live.clone();
        }
        let postings = self
            .postings
            .get_or_init(|| FilterPostings::build(&self.items));
        Some(postings.rows(filter, &self.deleted))
    }

    fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or(&[])
    }

    /// The embeddings as a matrix, read in place.
    pub fn view(&self) -> Result<MatrixView<'_>, RetrievalError> {
        let (rows, dim) = (self.meta.rows, self.meta.dim);
        let misaligned = |_| fmt_err(&self.version_dir, "embeddings are not aligned in memory");
        Ok(match self.meta.dtype {
            IndexDtype::F32 => MatrixView::f32(
                bytemuck::try_cast_slice(self.bytes()).map_err(misaligned)?,
                rows,
                dim,
            ),
            IndexDtype::F16 => MatrixView::f16(
                bytemuck::try_cast_slice(self.bytes()).map_err(misaligned)?,
                rows,
                dim,
            ),
        })
    }

    /// Exact top-`k` rows for each of `queries` (row-major, `dim` wide, L2-normalised).
    pub fn search(&self, queries: &[f32], k: usize) -> Result<TopK, RetrievalError> {
        Ok(top_k(self.query_view(queries)?, self.view()?, k))
    }

    /// `queries` as a matrix of this index's width.
    pub fn query_view<'q>(&self, queries: &'q [f32]) -> Result<MatrixView<'q>, RetrievalError> {
        let dim = self.meta.dim;
        if !queries.len().is_multiple_of(dim) {
            return Err(RetrievalError::Invalid(format!(
                "query width does not divide by the index dimension {dim}"
            )));
        }
        Ok(MatrixView::f32(queries, queries.len() / dim, dim))
    }

    /// Bytes of the current version on disk.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.version_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Runs the write `op` under the index's writer lock, on the current version: this one, or
    /// the newer one another writer made since this was opened (so neither write is lost).
    fn write_latest<T>(
        &self,
        op: impl FnOnce(&Index) -> Result<T, RetrievalError>,
    ) -> Result<T, RetrievalError> {
        let _writer = lock_writer(&self.dir)?;
        let current = current_version(&self.dir)?.map(|v| self.dir.join(v));
        if current.as_deref() == Some(self.version_dir.as_path()) {
            return op(self);
        }
        let latest = Index::open(&self.dir)?;
        if latest.meta.model != self.meta.model || latest.meta.dim != self.meta.dim {
            return Err(RetrievalError::Invalid(format!(
                "{} was rebuilt with another model while this change was prepared; run it again",
                self.dir.display()
            )));
        }
        op(&latest)
    }

    /// Appends items and their embeddings as a new version; the open `Index` keeps reading the
    /// old one. Returns the rows a search of the new version can return.
    pub fn append(&self, items: &[IndexItem], embeddings: &[f32]) -> Result<usize, RetrievalError> {
        self.write_latest(|latest| {
            latest.write_with_rows(items, embeddings, &latest.deleted)?;
            Ok(latest.live_rows() + items.len())
        })
    }

    /// Writes this version plus `items` (their `embeddings`) at the end, with `deleted` as its
    /// tombstones.
    fn write_with_rows(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
        deleted: &[u32],
    ) -> Result<(), RetrievalError> {
        if embeddings.len() != items.len() * self.meta.dim {
            return Err(RetrievalError::Invalid(format!(
                "{} embedding values for {} items of dim {}",
                embeddings.len(),
                items.len(),
                self.meta.dim
            )));
        }
        let mut bytes = self.bytes().to_vec();
        bytes.extend(encode(embeddings, self.meta.dtype));
        let mut all = self.items.clone();
        all.extend(items.iter().cloned());
        write_version(
            &self.dir,
            self.meta.clone(),
            &all,
            EmbeddingSource::Bytes(&bytes),
            deleted,
        )
    }

    /// The live rows whose product key is in `keys`.
    fn rows_with_keys(&self, keys: &HashSet<String>) -> Vec<u32> {
        self.live_ids()
            .filter(|&r| {
                self.meta
                    .key_of(&self.items[r])
                    .is_some_and(|k| keys.contains(&k))
            })
            .map(|r| r as u32)
            .collect()
    }

    /// Tombstones every live row whose product key is in `keys`, as a new version that shares
    /// this one's embeddings file; returns how many rows were deleted (0: nothing written).
    pub fn delete_keys(&self, keys: &HashSet<String>) -> Result<Deleted, RetrievalError> {
        self.write_latest(|latest| latest.delete_keys_here(keys))
    }

    fn delete_keys_here(&self, keys: &HashSet<String>) -> Result<Deleted, RetrievalError> {
        let doomed = self.rows_with_keys(keys);
        let matched: HashSet<String> = doomed
            .iter()
            .filter_map(|&r| self.meta.key_of(&self.items[r as usize]))
            .collect();
        let outcome = Deleted::new(doomed.len(), keys, &matched);
        if doomed.is_empty() {
            return Ok(outcome);
        }
        let mut deleted = self.deleted.clone();
        deleted.extend(&doomed);
        deleted.sort_unstable();
        write_version(
            &self.dir,
            self.meta.clone(),
            &self.items,
            EmbeddingSource::SameAs(&self.version_dir.join("embeddings.bin")),
            &deleted,
        )?;
        Ok(outcome)
    }

    /// Replaces the products of `items`: tombstones the live rows of every product key they
    /// carry and appends them, as one new version. Every item must have a key. Returns
    /// `(rows replaced, rows added)`.
    pub fn upsert(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
    ) -> Result<(usize, usize), RetrievalError> {
        self.write_latest(|latest| latest.upsert_here(items, embeddings))
    }

    fn upsert_here(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
    ) -> Result<(usize, usize), RetrievalError> {
        let keys = self.meta.product_keys(items)?;
        let replaced = self.rows_with_keys(&keys);
        let mut deleted = self.deleted.clone();
        deleted.extend(&replaced);
        deleted.sort_unstable();
        self.write_with_rows(items, embeddings, &deleted)?;
        Ok((replaced.len(), items.len()))
    }

    /// Rewrites the index without its deleted rows (rows after each one move up, so their
    /// ids change); returns how many rows were dropped (0: nothing written).
    pub fn compact(&self) -> Result<usize, RetrievalError> {
        self.write_latest(Index::compact_here)
    }

    fn compact_here(&self) -> Result<usize, RetrievalError> {
        let Some(live) = &self.live else {
            return Ok(0);
        };
        let width = self.meta.dim * self.meta.dtype.bytes();
        let data = self.bytes();
        let mut bytes = Vec::with_capacity(live.len() * width);
        let mut items = Vec::with_capacity(live.len());
        for &r in live {
            let r = r as usize;
            bytes.extend_from_slice(&data[r * width..(r + 1) * width]);
            items.push(self.items[r].clone());
        }
        write_version(
            &self.dir,
            self.meta.clone(),
            &items,
            EmbeddingSource::Bytes(&bytes),
            &[],
        )?;
        Ok(self.deleted.len())
    }

    /// Writes the same rows with `threshold` in the metadata as a new version.
    pub fn set_match_threshold(
        &self,
        threshold: Option<MatchThreshold>,
    ) -> Result<(), RetrievalError> {
        self.write_latest(|latest| {
            let meta = IndexMeta {
                match_threshold: threshold,
                ..latest.meta.clone()
            };
            write_version(
                &latest.dir,
                meta,
                &latest.items,
                EmbeddingSource::SameAs(&latest.version_dir.join("embeddings.bin")),
                &latest.deleted,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(dtype: IndexDtype) -> IndexMeta {
        IndexMeta::new(
            dtype,
            2,
            serde_json::json!({"model": "tiny"}),
            Preprocessing {
                size: 32,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
        )
    }

    /// An index at `idx` of one row, `a.jpg` of product 1.
    fn build_one(idx: &Path) {
        build_index(idx, meta(IndexDtype::F32), &[item(1, "a.jpg")], &[1.0, 0.0]).unwrap();
    }

    /// A second build of `idx`, other than [`build_one`]'s.
    fn build_other(idx: &Path) {
        build_index(idx, meta(IndexDtype::F32), &[item(1, "a.jpg")], &[0.0, 1.0]).unwrap();
    }

    /// The folder `name` in `idx` with a part of a version in it, as a killed write leaves it.
    fn interrupted_write(idx: &Path, name: &str) -> PathBuf {
        let folder = idx.join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("embeddings.bin"), [0u8; 8]).unwrap();
        folder
    }

    fn item(label: i64, path: &str) -> IndexItem {
        IndexItem::new(label, path)
    }

    #[test]
    fn an_edited_meta_json_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let items = [item(1, "a.jpg")];
        build_index(&idx, meta(IndexDtype::F32), &items, &[1.0, 0.0]).unwrap();
        let version = idx.join(std::fs::read_to_string(idx.join("current")).unwrap().trim());
        let text = std::fs::read_to_string(version.join("meta.json")).unwrap();
        assert!(text.contains("\"size\": 32"), "{text}");
        std::fs::write(
            version.join("meta.json"),
            text.replace("\"size\": 32", "\"size\": 33"),
        )
        .unwrap();
        let err = Index::open(&idx).err().unwrap().to_string();
        assert!(
            err.contains("meta.json") && err.contains("checksum"),
            "{err}"
        );
        // An index from before the checksum file still opens.
        std::fs::write(version.join("meta.json"), &text).unwrap();
        std::fs::remove_file(version.join(META_CRC_FILE)).unwrap();
        Index::open(&idx).unwrap();
    }

    #[test]
    fn clients_see_catalogue_relative_paths_never_server_paths() {
        let mut m = meta(IndexDtype::F32);
        m.catalogue_root = Some(PathBuf::from("/srv/shop"));
        let shown = |p: &str| m.client_path(Path::new(p));
        assert_eq!(shown("/srv/shop/test/Fruit/a.jpg"), "test/Fruit/a.jpg");
        assert_eq!(shown("/elsewhere/b.jpg"), "b.jpg");
        assert_eq!(shown("/srv/shop"), "shop");
        m.catalogue_root = None;
        assert_eq!(m.client_path(Path::new("/srv/shop/test/c.jpg")), "c.jpg");
    }

    #[test]
    fn build_search_append_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let items = [item(1, "a.jpg"), item(2, "dir, with comma/b \"x\".jpg")];
        build_index(&idx, meta(IndexDtype::F16), &items, &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let index = Index::open(&idx).unwrap();
        assert_eq!(index.items, items);
        let hits = index.search(&[0.6, 0.8], 2).unwrap();
        assert_eq!(hits.row(0), &[1, 0]);
        index.append(&[item(3, "c.jpg")], &[0.0, -1.0]).unwrap();
        // The open index still reads its own version; a new open sees three rows.
        assert_eq!(index.search(&[0.0, -1.0], 1).unwrap().row(0), &[0]);
        let reopened = Index::open(&idx).unwrap();
        assert_eq!(reopened.meta.rows, 3);
        assert_eq!(reopened.search(&[0.0, -1.0], 1).unwrap().row(0), &[2]);
        assert_eq!(reopened.items[2], item(3, "c.jpg"));
        assert!(
            !index.version_dir.exists(),
            "the replaced version is removed"
        );
    }

    #[test]
    fn truncated_or_edited_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        build_one(&idx);
        let version = Index::open(&idx).unwrap().version_dir;
        let data = version.join("embeddings.bin");
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, &bytes[..6]).unwrap();
        let err = Index::open(&idx).err().unwrap().to_string();
        assert!(
            err.contains("embeddings.bin") && err.contains("truncated"),
            "{err}"
        );
        let mut edited = bytes.clone();
        edited[0] ^= 1;
        std::fs::write(&data, &edited).unwrap();
        let err = Index::open(&idx).err().unwrap().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&data, &bytes).unwrap();
        std::fs::write(version.join("items.csv"), "id,label,path\n0,7,a.jpg\n").unwrap();
        let err = Index::open(&idx).err().unwrap().to_string();
        assert!(
            err.contains("items.csv") && err.contains("checksum"),
            "{err}"
        );
        let err = Index::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not an index"), "{err}");
    }

    #[test]
    fn a_current_pointing_outside_the_index_is_refused_and_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious.txt"), "keep me").unwrap();
        let idx = dir.path().join("idx");
        std::fs::create_dir(&idx).unwrap();
        for bad in ["../victim\n", "\n", "v1/../../victim", "/tmp"] {
            std::fs::write(idx.join("current"), bad).unwrap();
            let err = build_index(
                &idx,
                meta(IndexDtype::F32),
                &[item(1, "a.jpg")],
                &[1.0, 0.0],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("not a version folder"), "{bad:?}: {err}");
            assert!(Index::open(&idx).is_err());
            assert!(
                victim.join("precious.txt").exists(),
                "{bad:?} deleted a sibling"
            );
        }
    }

    #[test]
    fn a_build_refuses_a_file_or_a_folder_of_other_files_and_replaces_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "mine").unwrap();
        let err = build_index(
            &file,
            meta(IndexDtype::F32),
            &[item(1, "a.jpg")],
            &[1.0, 0.0],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("notes.txt") && err.contains("not a folder"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

        let photos = dir.path().join("photos");
        std::fs::create_dir(&photos).unwrap();
        std::fs::write(photos.join("a.jpg"), "x").unwrap();
        let err = check_build_target(&photos).unwrap_err().to_string();
        assert!(
            err.contains("not an index") && err.contains("a.jpg"),
            "{err}"
        );
        assert!(build_one_err(&photos).contains("not an index"));
        let entries: Vec<_> = std::fs::read_dir(&photos).unwrap().collect();
        assert_eq!(entries.len(), 1, "nothing was written into the folder");

        // An empty folder, an existing index, and one a killed write left parts in, are ours.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        build_one(&empty);
        interrupted_write(&empty, ".v000009.tmp123");
        check_build_target(&empty).unwrap();
        build_other(&empty);
        assert_eq!(Index::open(&empty).unwrap().meta.rows, 1);
    }

    fn build_one_err(idx: &Path) -> String {
        build_index(idx, meta(IndexDtype::F32), &[item(1, "a.jpg")], &[1.0, 0.0])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn keys_are_labels_without_a_key_column() {
        let keys = |m: &IndexMeta, k: &[&str]| m.parse_keys(k.iter().map(|s| s.to_string()));
        let mut m = meta(IndexDtype::F32);
        let labels = keys(&m, &["007", " 12", "-3"]).unwrap();
        assert_eq!(labels, ["7", "12", "-3"].map(String::from).into());
        let err = keys(&m, &["7", "Granny-Smith"]).unwrap_err().to_string();
        assert!(
            err.contains("Granny-Smith") && err.contains("label"),
            "{err}"
        );
        m.key_column = Some("sku".into());
        let skus = keys(&m, &["007", "Granny-Smith"]).unwrap();
        assert_eq!(skus, ["007", "Granny-Smith"].map(String::from).into());
    }

    #[test]
    fn an_empty_build_keeps_the_previous_index() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        build_one(&idx);
        let err = build_index(&idx, meta(IndexDtype::F32), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        assert_eq!(Index::open(&idx).unwrap().meta.rows, 1);
    }

    #[test]
    fn metadata_round_trips_and_filters_the_search() {
        use crate::catalogue::Catalogue;
        use crate::item_metadata::Filter;
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let mut items = vec![item(1, "a.jpg"), item(2, "b.jpg"), item(3, "c.jpg")];
        items[0].metadata.insert("category".into(), "Fruit".into());
        items[1]
            .metadata
            .insert("category".into(), "Milk, \"whole\"".into());
        items[2].metadata.insert("brand".into(), "Arla".into());
        build_index(
            &idx,
            meta(IndexDtype::F32),
            &items,
            &[1.0, 0.0, 0.8, 0.6, 0.6, 0.8],
        )
        .unwrap();
        let index = Index::open(&idx).unwrap();
        assert_eq!(index.items, items);
        let text = std::fs::read_to_string(index.version_dir.join("items.csv")).unwrap();
        assert!(text.starts_with("id,label,path,brand,category\n"), "{text}");
        let found = |f: &str| -> Vec<u64> {
            index
                .search_items(&[0.0, 1.0], 3, &Filter::parse(f).unwrap())
                .unwrap()[0]
                .iter()
                .map(|h| h.id)
                .collect()
        };
        assert_eq!(found(""), vec![2, 1, 0]);
        assert_eq!(found(r##"category=Fruit|"Milk, ""whole""""##), vec![1, 0]);
        assert_eq!(found("category=Fruit|Milk"), vec![0]);
        assert_eq!(found("brand=Arla"), vec![2]);
        assert_eq!(found("label=1|2"), vec![1, 0]);
        assert!(found("brand=none").is_empty());
        // An appended row without metadata keeps the others'.
        index.append(&[item(4, "d.jpg")], &[0.0, 1.0]).unwrap();
        let index = Index::open(&idx).unwrap();
        assert_eq!(index.items[..3], items[..]);
        assert!(index.items[3].metadata.is_empty());
    }

    #[test]
    fn delete_upsert_and_compact_keep_versions_atomic_and_ids_stable() {
        use crate::catalogue::Catalogue;
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let items = [item(1, "a.jpg"), item(2, "b.jpg"), item(1, "c.jpg")];
        let rows = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        build_index(&idx, meta(IndexDtype::F32), &items, &rows).unwrap();
        let index = Index::open(&idx).unwrap();
        use std::os::unix::fs::MetadataExt;
        let inode = |i: &Index| {
            std::fs::metadata(i.version_dir.join("embeddings.bin"))
                .unwrap()
                .ino()
        };
        let before = inode(&index);
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let none = index.delete_keys(&keys(&["9"])).unwrap();
        assert_eq!(
            (none.rows, none.unmatched),
            (0, vec!["9".to_string()]),
            "no such key"
        );
        let some = index.delete_keys(&keys(&["1", "8"])).unwrap();
        assert_eq!((some.rows, some.unmatched), (2, vec!["8".to_string()]));
        let deleted = Index::open(&idx).unwrap();
        assert_eq!(deleted.meta.format_version, TOMBSTONE_FORMAT_VERSION);
        assert_eq!((deleted.rows(), deleted.meta.rows), (1, 3));
        // The embeddings file is the previous version's (hard-linked), not a copy.
        assert_eq!(inode(&deleted), before);
        let hits = deleted
            .search_items(&[1.0, 0.0], 3, &Filter::default())
            .unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(deleted.item(0).unwrap(), None);
        assert!(deleted.vectors(&[2]).is_err());
        assert_eq!(deleted.ids().unwrap(), vec![1]);
        assert_eq!(deleted.distinct_labels().unwrap(), vec![2]);
        // Upsert: product 2 gets a new photo; product 3 is new.
        let (replaced, added) = deleted
            .upsert(
                &[item(2, "b2.jpg"), item(3, "d.jpg")],
                &[0.0, -1.0, -1.0, 0.0],
            )
            .unwrap();
        assert_eq!((replaced, added), (1, 2));
        let upserted = Index::open(&idx).unwrap();
        assert_eq!(upserted.ids().unwrap(), vec![3, 4]);
        assert_eq!(
            upserted.item(3).unwrap().unwrap().path,
            PathBuf::from("b2.jpg")
        );
        // Compact renumbers: rows 3 and 4 become 0 and 1; the tombstones are gone.
        assert!(Catalogue::compact(&upserted).unwrap().contains("dropped 3"));
        let compacted = Index::open(&idx).unwrap();
        assert_eq!(compacted.meta.format_version, INDEX_FORMAT_VERSION);
        assert_eq!(compacted.items, vec![item(2, "b2.jpg"), item(3, "d.jpg")]);
        assert_eq!(compacted.deleted_rows(), 0);
        assert!(!compacted.version_dir.join(DELETED_FILE).exists());
        let hits = compacted
            .search_items(&[-1.0, 0.0], 1, &Filter::default())
            .unwrap();
        assert_eq!(hits[0][0].id, 1);
        assert_eq!(
            Index::compact(&compacted).unwrap(),
            0,
            "nothing left to compact"
        );
    }

    #[test]
    fn writes_from_handles_opened_before_another_write_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        build_one(&idx);
        let first = Index::open(&idx).unwrap();
        let second = Index::open(&idx).unwrap();
        first.append(&[item(2, "b.jpg")], &[0.0, 1.0]).unwrap();
        // `second` still reads the first version; its write lands on top of `first`'s.
        second.append(&[item(3, "c.jpg")], &[0.6, 0.8]).unwrap();
        let keys: HashSet<String> = ["1".to_string()].into();
        assert_eq!(first.delete_keys(&keys).unwrap().rows, 1);
        let now = Index::open(&idx).unwrap();
        let paths: Vec<_> = now.items.iter().map(|i| i.path.clone()).collect();
        assert_eq!(paths, ["a.jpg", "b.jpg", "c.jpg"].map(PathBuf::from));
        assert!(now.is_deleted(0));
        // Writers from several threads at once: every row arrives.
        std::thread::scope(|scope| {
            for t in 0..4 {
                let stale = Index::open(&idx).unwrap();
                scope.spawn(move || {
                    stale.append(&[item(10 + t, "t.jpg")], &[1.0, 0.0]).unwrap();
                });
            }
        });
        assert_eq!(Index::open(&idx).unwrap().meta.rows, 7);
    }

    #[test]
    fn a_key_column_names_products_and_damaged_tombstones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let mut m = meta(IndexDtype::F16);
        m.key_column = Some("sku".into());
        let mut items = vec![item(1, "a.jpg"), item(1, "b.jpg")];
        items[0].metadata.insert("sku".into(), "A-1".into());
        items[1].metadata.insert("sku".into(), "B-2".into());
        build_index(&idx, m, &items, &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let index = Index::open(&idx).unwrap();
        let err = index
            .upsert(&[item(1, "c.jpg")], &[1.0, 0.0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no sku"), "{err}");
        let keys: HashSet<String> = ["B-2".to_string()].into();
        assert_eq!(index.delete_keys(&keys).unwrap().rows, 1);
        let index = Index::open(&idx).unwrap();
        assert!(index.is_deleted(1) && !index.is_deleted(0));
        std::fs::write(index.version_dir.join(DELETED_FILE), 0u32.to_le_bytes()).unwrap();
        let err = Index::open(&idx).err().unwrap().to_string();
        assert!(err.contains("deleted.bin"), "{err}");
    }

    #[test]
    fn paths_with_newlines_and_quotes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        let items = [item(1, "line\nbreak.jpg"), item(2, "q\"uote,comma.jpg")];
        build_index(&idx, meta(IndexDtype::F32), &items, &[1.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(Index::open(&idx).unwrap().items, items);
    }

    #[test]
    fn leftovers_of_a_killed_write_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        build_one(&idx);
        let leftover = interrupted_write(&idx, ".v000002.abc123");
        // Killed while writing `current`: its temp file.
        let current_temp = idx.join(".current.x7Yz0a");
        std::fs::write(&current_temp, "v000002").unwrap();
        let unrelated = idx.join(".keep-me");
        std::fs::create_dir(&unrelated).unwrap();
        let unrelated_file = idx.join(".tmp-notes");
        std::fs::write(&unrelated_file, "mine").unwrap();
        let unrelated_current = idx.join(".current.notes");
        std::fs::write(&unrelated_current, "mine").unwrap();
        build_other(&idx);
        assert!(!leftover.exists());
        assert!(!current_temp.exists());
        assert!(unrelated.exists() && unrelated_file.exists() && unrelated_current.exists());
        // A write leaves nothing of its own behind.
        let dotted: Vec<String> = std::fs::read_dir(&idx)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(dotted.len(), 3, "{dotted:?}");
    }

    #[test]
    fn a_version_renamed_but_never_made_current_does_not_block_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        build_one(&idx);
        // Killed after renaming its folder into place, before updating `current`.
        interrupted_write(&idx, "v000002");
        assert_eq!(current_version(&idx).unwrap().as_deref(), Some("v000001"));
        build_other(&idx);
        assert_eq!(current_version(&idx).unwrap().as_deref(), Some("v000002"));
        assert_eq!(Index::open(&idx).unwrap().items, vec![item(1, "a.jpg")]);
    }
}
