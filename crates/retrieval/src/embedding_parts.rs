//! Embedding a list on many machines: the list's rows are tiled into fixed chunks, worker
//! `I/N` embeds the chunks of its contiguous share, and each chunk becomes a *part file*; a
//! merge concatenates the parts into the matrix one process would have made.
//!
//! Why chunks rather than one part per worker: the tiling depends only on the list and the
//! chunk size, never on the number of workers, so a killed worker redoes at most one chunk, a
//! re-run with another worker count reuses every finished part, and the merge checks coverage
//! without knowing how the work was split. Chunk sizes are multiples of the batch size, so each
//! image is embedded in the same batch as in a single run (bit-exact even on engines whose
//! results depend on the batch).
//!
//! A part is a `.safetensors` file (readable from Python as is): tensor `embeddings` (f32, one
//! row per list row of the chunk, zero for images that could not be read) and a `part` metadata
//! entry holding a JSON [`PartHeader`]: which job made it ([`PartJob`]: the list's digest, the
//! model's fingerprint, the chunking), its rows, the unreadable rows with their reason, and a
//! CRC-32 of the embedding bytes. Parts are written atomically; a part of another job is never
//! reused or replaced.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

pub use visual_search_data::shard::ShardSpec;

use crate::error::RetrievalError;
use crate::npy::write_atomically;
use visual_search_data::atomic_write::is_temp_file_of;

/// Version of the part layout; a merge refuses parts of another version.
pub const PART_FORMAT_VERSION: u32 = 1;

/// Default rows per chunk (rounded up to a multiple of the batch size).
pub const DEFAULT_CHUNK_ROWS: usize = 4096;

/// What every part of one job shares: a merge accepts only parts whose job equals its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartJob {
    /// SHA-256 of the list file's bytes (and the options that change which images it names).
    pub list_digest: String,
    /// Rows of the list.
    pub rows: usize,
    /// Rows per chunk (a multiple of the batch size).
    pub chunk_rows: usize,
    /// The model, its weights' digest, input size, precision and test-time views.
    pub model: String,
}

/// A hex SHA-256 of the list file's bytes and of `options` (whatever else changes which images
/// the list names, e.g. an image prefix): the list's identity whatever folder it lies in.
pub fn list_digest(list: &Path, options: &str) -> Result<String, RetrievalError> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(list).map_err(|e| RetrievalError::io(list, e))?;
    let mut h = Sha256::new();
    h.update(&bytes);
    h.update([0u8]);
    h.update(options.as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// One unreadable image of a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSkip {
    /// Row of the whole list.
    pub row: usize,
    pub path: PathBuf,
    pub reason: String,
}

/// The `part` metadata of a part file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartHeader {
    pub format: u32,
    pub job: PartJob,
    /// First list row of the part and one past its last.
    pub start: usize,
    pub end: usize,
    pub dim: usize,
    /// CRC-32 of the `embeddings` tensor's bytes.
    pub crc32: u32,
    pub skipped: Vec<PartSkip>,
    /// Where and how long it was embedded (reported by the merge; not part of the job).
    pub device: String,
    pub model_seconds: f64,
}

/// The chunks of a job: `0..rows` tiled by `chunk_rows`.
pub fn chunk_ranges(rows: usize, chunk_rows: usize) -> Vec<Range<usize>> {
    let step = chunk_rows.max(1);
    (0..rows.div_ceil(step))
        .map(|c| c * step..((c + 1) * step).min(rows))
        .collect()
}

/// `chunk_rows` rounded up to a multiple of `batch_size`.
pub fn batch_aligned_chunk_rows(chunk_rows: usize, batch_size: usize) -> usize {
    let b = batch_size.max(1);
    chunk_rows.max(1).div_ceil(b) * b
}

/// The file of the part holding `rows`.
pub fn part_path(dir: &Path, rows: &Range<usize>) -> PathBuf {
    dir.join(format!(
        "rows-{:012}-{:012}.safetensors",
        rows.start, rows.end
    ))
}

/// Removes the temp files that killed writes of the parts of `chunks` left in `dir`
/// (`.rows-….safetensors.XXXXXX`, [`write_atomically`]'s names; nothing else is touched) and
/// returns how many went. A worker calls it for its own chunks before it embeds them, the
/// merge for all of them once every part is there: no live write of those parts is expected
/// then.
pub fn sweep_part_temps(dir: &Path, chunks: &[Range<usize>]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let targets: std::collections::HashSet<String> = chunks
        .iter()
        .filter_map(|rows| {
            part_path(dir, rows)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = name
            .strip_prefix('.')
            .and_then(|rest| rest.rsplit_once('.'))
            .map(|(target, _)| target);
        let leftover = target.is_some_and(|t| targets.contains(t) && is_temp_file_of(&name, t));
        if leftover && entry.path().is_file() && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                "removed {}, left by an interrupted part write",
                entry.path().display()
            );
            removed += 1;
        }
    }
    removed
}

/// Writes a part atomically.
pub fn write_part(
    dir: &Path,
    mut header: PartHeader,
    embeddings: &[f32],
) -> Result<PathBuf, RetrievalError> {
    let rows = header.end - header.start;
    if embeddings.len() != rows * header.dim {
        return Err(RetrievalError::Invalid(format!(
            "part {}..{}: {} values for {rows} rows of {}",
            header.start,
            header.end,
            embeddings.len(),
            header.dim
        )));
    }
    let bytes: Vec<u8> = embeddings.iter().flat_map(|v| v.to_le_bytes()).collect();
    header.format = PART_FORMAT_VERSION;
    header.crc32 = crc32fast::hash(&bytes);
    let json =
        serde_json::to_string(&header).map_err(|e| RetrievalError::Invalid(e.to_string()))?;
    let view = TensorView::new(Dtype::F32, vec![rows, header.dim], &bytes)
        .map_err(|e| RetrievalError::Invalid(e.to_string()))?;
    let file = safetensors::serialize(
        [("embeddings", view)],
        Some(HashMap::from([("part".to_string(), json)])),
    )
    .map_err(|e| RetrievalError::Invalid(e.to_string()))?;
    let path = part_path(dir, &(header.start..header.end));
    write_atomically(&path, &file)?;
    Ok(path)
}

/// Reads a part and checks its checksum and shape.
pub fn read_part(path: &Path) -> Result<(PartHeader, Vec<f32>), RetrievalError> {
    let bytes = std::fs::read(path).map_err(|e| RetrievalError::io(path, e))?;
    let bad = |m: String| RetrievalError::format(path, m);
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a readable part (damaged or truncated?): {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a readable part: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("part"))
        .ok_or_else(|| bad("no `part` metadata: not an embedding part".into()))?;
    let header: PartHeader =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable `part` metadata: {e}")))?;
    if header.format != PART_FORMAT_VERSION {
        return Err(bad(format!(
            "part format {} (this build reads {PART_FORMAT_VERSION})",
            header.format
        )));
    }
    let t = st
        .tensor("embeddings")
        .map_err(|_| bad("no `embeddings` tensor".into()))?;
    let rows = header.end.saturating_sub(header.start);
    if t.dtype() != Dtype::F32 || t.shape() != [rows, header.dim] {
        return Err(bad(format!(
            "`embeddings` is {:?} {:?}, the header says F32 [{rows}, {}]",
            t.dtype(),
            t.shape(),
            header.dim
        )));
    }
    if crc32fast::hash(t.data()) != header.crc32 {
        return Err(bad("checksum mismatch: the embeddings are damaged".into()));
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((header, data))
}

/// What a worker finds where one of its parts belongs.
#[derive(Debug, PartialEq)]
pub enum ExistingPart {
    /// Nothing yet: embed the chunk.
    Missing,
    /// A sound part of this job: skip the chunk.
    Done,
    /// A file that does not read as a part (damaged disk, a copy cut short); the worker
    /// replaces it, having written it under this name itself.
    Damaged(String),
}

/// Whether the part of `rows` exists for `job`; a sound part of another job is an error, so
/// a worker never mixes two jobs in one folder.
pub fn existing_part(
    dir: &Path,
    job: &PartJob,
    rows: &Range<usize>,
) -> Result<ExistingPart, RetrievalError> {
    let path = part_path(dir, rows);
    if !path.exists() {
        return Ok(ExistingPart::Missing);
    }
    match read_part(&path) {
        Ok((header, _)) if header.job == *job => Ok(ExistingPart::Done),
        Ok((header, _)) => Err(other_job(&path, &header.job, job)),
        Err(e) => Ok(ExistingPart::Damaged(e.to_string())),
    }
}

fn other_job(path: &Path, found: &PartJob, wanted: &PartJob) -> RetrievalError {
    let field = if found.list_digest != wanted.list_digest || found.rows != wanted.rows {
        format!(
            "another list ({} rows, digest {}…; this one {} rows, {}…)",
            found.rows,
            &found.list_digest[..found.list_digest.len().min(12)],
            wanted.rows,
            &wanted.list_digest[..wanted.list_digest.len().min(12)]
        )
    } else if found.model != wanted.model {
        format!("another model ({}; this one {})", found.model, wanted.model)
    } else {
        format!(
            "another chunk size ({} rows; this one {})",
            found.chunk_rows, wanted.chunk_rows
        )
    };
    RetrievalError::format(
        path,
        format!(
            "this part belongs to another job: {field}. Use another parts folder, or remove this one if its job is over"
        ),
    )
}

/// The parts of a job joined: the whole list's `rows x dim` matrix.
#[derive(Debug)]
pub struct MergedParts {
    /// How many part files were joined.
    pub parts: usize,
    pub dim: usize,
    pub data: Vec<f32>,
    pub skipped: Vec<PartSkip>,
    /// Model time summed over the parts, and the devices that made them.
    pub model_seconds: f64,
    pub devices: Vec<String>,
}

/// Joins the parts of `job` found in `dir`: every chunk must be there, sound and of this job;
/// the error lists the missing chunks (so the user sees which worker to run again). After a
/// merge the temp files killed part writes left are swept ([`sweep_part_temps`]).
pub fn merge_parts(dir: &Path, job: &PartJob) -> Result<MergedParts, RetrievalError> {
    let chunks = chunk_ranges(job.rows, job.chunk_rows);
    let missing: Vec<&Range<usize>> = chunks
        .iter()
        .filter(|r| !part_path(dir, r).exists())
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .take(10)
            .map(|r| format!("rows {}..{}", r.start, r.end))
            .collect();
        return Err(RetrievalError::Invalid(format!(
            "{}: {} of {} parts are missing ({}{}); run the workers that own them again",
            dir.display(),
            missing.len(),
            chunks.len(),
            list.join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        )));
    }
    let mut merged = MergedParts {
        parts: chunks.len(),
        dim: 0,
        data: Vec::new(),
        skipped: Vec::new(),
        model_seconds: 0.0,
        devices: Vec::new(),
    };
    for (c, rows) in chunks.iter().enumerate() {
        let path = part_path(dir, rows);
        let (header, data) = read_part(&path)?;
        if header.job != *job {
            return Err(other_job(&path, &header.job, job));
        }
        if header.start != rows.start || header.end != rows.end {
            return Err(RetrievalError::format(
                &path,
                format!(
                    "holds rows {}..{} under the name of rows {}..{}",
                    header.start, header.end, rows.start, rows.end
                ),
            ));
        }
        if c == 0 {
            merged.dim = header.dim;
            merged.data.reserve(job.rows * header.dim);
        } else if header.dim != merged.dim {
            return Err(RetrievalError::format(
                &path,
                format!("{}-d rows, the first part has {}", header.dim, merged.dim),
            ));
        }
        merged.data.extend_from_slice(&data);
        merged.skipped.extend(header.skipped);
        merged.model_seconds += header.model_seconds;
        if !merged.devices.contains(&header.device) {
            merged.devices.push(header.device);
        }
    }
    sweep_part_temps(dir, &chunks);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rows: usize) -> PartJob {
        PartJob {
            list_digest: "abc".into(),
            rows,
            chunk_rows: 4,
            model: "m".into(),
        }
    }

    fn header(job: &PartJob, rows: &Range<usize>, dim: usize) -> PartHeader {
        PartHeader {
            format: 0,
            job: job.clone(),
            start: rows.start,
            end: rows.end,
            dim,
            crc32: 0,
            skipped: vec![],
            device: "flex".into(),
            model_seconds: 0.5,
        }
    }

    #[test]
    fn killed_part_writes_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(10);
        let chunks = chunk_ranges(10, 4);
        let name = |rows: &Range<usize>| {
            part_path(dir.path(), rows)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let leftover = dir.path().join(format!(".{}.Ab12Cd", name(&chunks[0])));
        let other_chunk = dir.path().join(format!(".{}.Ef34Gh", name(&chunks[1])));
        let keep = [
            dir.path().join(format!(".{}.notes", name(&chunks[0]))),
            dir.path().join(format!("{}.Ab12Cd", name(&chunks[0]))),
            dir.path().join(".rows-x.safetensors.Ab12Cd"),
        ];
        for path in keep.iter().chain([&leftover, &other_chunk]) {
            std::fs::write(path, b"half a part").unwrap();
        }
        // A worker about to embed chunk 0 sweeps chunk 0's leftovers only.
        assert_eq!(sweep_part_temps(dir.path(), &chunks[..1]), 1);
        assert!(!leftover.exists() && other_chunk.exists());
        // A merge sweeps every chunk's.
        for r in &chunks {
            write_part(dir.path(), header(&job, r, 1), &vec![0.5; r.len()]).unwrap();
        }
        merge_parts(dir.path(), &job).unwrap();
        assert!(!other_chunk.exists());
        assert!(keep.iter().all(|p| p.exists()), "a user's files stay");
    }

    #[test]
    fn chunks_tile_the_rows() {
        assert_eq!(chunk_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert!(chunk_ranges(0, 4).is_empty());
        assert_eq!(batch_aligned_chunk_rows(4096, 32), 4096);
        assert_eq!(batch_aligned_chunk_rows(100, 32), 128);
    }

    #[test]
    fn parts_merge_into_the_whole_matrix_and_refuse_gaps_damage_and_other_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(10);
        let dim = 3;
        let all: Vec<f32> = (0..30).map(|v| v as f32 * 0.25).collect();
        let chunks = chunk_ranges(10, 4);
        // The last part is missing: the merge names it.
        for r in &chunks[..2] {
            assert_eq!(
                existing_part(dir.path(), &job, r).unwrap(),
                ExistingPart::Missing
            );
            let mut h = header(&job, r, dim);
            if r.start == 4 {
                h.skipped.push(PartSkip {
                    row: 5,
                    path: "x.jpg".into(),
                    reason: "gone".into(),
                });
            }
            write_part(dir.path(), h, &all[r.start * dim..r.end * dim]).unwrap();
            assert_eq!(
                existing_part(dir.path(), &job, r).unwrap(),
                ExistingPart::Done
            );
        }
        let e = merge_parts(dir.path(), &job).unwrap_err().to_string();
        assert!(e.contains("1 of 3 parts are missing (rows 8..10)"), "{e}");

        let last = &chunks[2];
        write_part(dir.path(), header(&job, last, dim), &all[24..30]).unwrap();
        let merged = merge_parts(dir.path(), &job).unwrap();
        assert_eq!(merged.data, all);
        assert_eq!(merged.skipped.len(), 1);
        assert_eq!(merged.skipped[0].row, 5);
        assert_eq!(merged.model_seconds, 1.5);

        // Another model's part in the folder: refused by the worker and the merge.
        let mut other = job.clone();
        other.model = "n".into();
        assert!(
            existing_part(dir.path(), &other, last)
                .unwrap_err()
                .to_string()
                .contains("another model (m; this one n)")
        );
        assert!(merge_parts(dir.path(), &other).is_err());

        // A flipped byte: the worker redoes the chunk, the merge refuses.
        let path = part_path(dir.path(), last);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            existing_part(dir.path(), &job, last).unwrap(),
            ExistingPart::Damaged(m) if m.contains("checksum")
        ));
        assert!(
            merge_parts(dir.path(), &job)
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            existing_part(dir.path(), &job, last).unwrap(),
            ExistingPart::Damaged(_)
        ));
    }
}
