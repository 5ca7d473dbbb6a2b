//! Where `mine features` keeps embeddings: a folder of snapshot chunks
//! (`chunk-000001.parquet`, …), each holding the URLs finished since the previous snapshot with
//! their embedding (`fixed_size_list<float32>`) or the reason they failed. A chunk is written to a
//! temp file and renamed, so a killed run leaves only whole chunks; resuming reads them and skips
//! every URL they hold. `meta.json` records the model, so a resume with another model is refused
//! instead of silently mixing embedding spaces.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use visual_search_data::work_lock::{WorkLock, lock_work_folder};

use crate::error::{MiningError, Result};
use crate::pairs_table::parent_dir;

/// The outcome for one URL.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRecord {
    pub url: String,
    pub result: std::result::Result<Vec<f32>, String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct StoreMeta {
    model: String,
    dim: usize,
}

/// The model and width a features folder was made with, if it has any yet.
pub fn store_model(dir: &Path) -> Result<Option<(String, usize)>> {
    let meta_path = dir.join("meta.json");
    match std::fs::read(&meta_path) {
        Ok(bytes) => {
            let found: StoreMeta = serde_json::from_slice(&bytes)
                .map_err(|e| MiningError::invalid(&meta_path, format!("damaged: {e}")))?;
            Ok(Some((found.model, found.dim)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MiningError::io(&meta_path, e)),
    }
}

/// An open features folder.
pub struct FeatureStore {
    dir: PathBuf,
    dim: usize,
    next_chunk: u32,
    /// One writer per folder: another would sweep this one's partial chunk and take its
    /// chunk numbers.
    _lock: WorkLock,
}

/// The lock file a writer holds in a features folder.
const WRITER_LOCK_FILE: &str = ".writer.lock";

fn schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("url", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            true,
        ),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn chunk_paths(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(MiningError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| MiningError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("chunk-")
            .and_then(|r| r.strip_suffix(".parquet"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl FeatureStore {
    /// Opens (or starts) the folder for `model` embeddings of width `dim`.
    pub fn open_for_writing(dir: &Path, model: &str, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| MiningError::io(dir, e))?;
        let lock = lock_work_folder(dir, WRITER_LOCK_FILE, "mine features")?;
        let meta_path = dir.join("meta.json");
        let wanted = StoreMeta {
            model: model.to_string(),
            dim,
        };
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let found: StoreMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| MiningError::invalid(&meta_path, format!("damaged: {e}")))?;
                if found != wanted {
                    return Err(MiningError::invalid(
                        &meta_path,
                        format!(
                            "these features were made by {} ({}-d); this run uses {} ({}-d). \
                             Use another --features-dir or the same model.",
                            found.model, found.dim, wanted.model, wanted.dim
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let json = serde_json::to_vec_pretty(&wanted)
                    .map_err(|e| MiningError::invalid(&meta_path, e.to_string()))?;
                visual_search_data::atomic_write::write_atomically(&meta_path, &json)?;
            }
            Err(e) => return Err(MiningError::io(&meta_path, e)),
        }
        crate::partial_files::remove_partials(dir)?;
        let next_chunk = chunk_paths(dir)?.last().map_or(1, |(n, _)| n + 1);
        Ok(FeatureStore {
            dir: dir.to_path_buf(),
            dim,
            next_chunk,
            _lock: lock,
        })
    }

    /// Writes one snapshot chunk (atomically); returns its path.
    pub fn write_chunk(&mut self, records: &[FeatureRecord]) -> Result<PathBuf> {
        let path = self
            .dir
            .join(format!("chunk-{:06}.parquet", self.next_chunk));
        let mut url = StringBuilder::new();
        let mut error = StringBuilder::new();
        let mut embedding = FixedSizeListBuilder::new(Float32Builder::new(), self.dim as i32)
            .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
        for r in records {
            url.append_value(&r.url);
            match &r.result {
                Ok(e) if e.len() == self.dim => {
                    embedding.values().append_slice(e);
                    embedding.append(true);
                    error.append_null();
                }
                Ok(e) => {
                    return Err(MiningError::Embed(format!(
                        "{}: {}-d embedding in a {}-d store",
                        r.url,
                        e.len(),
                        self.dim
                    )));
                }
                Err(msg) => {
                    embedding.values().append_slice(&vec![0.0; self.dim]);
                    embedding.append(false);
                    error.append_value(msg);
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(url.finish()),
            Arc::new(embedding.finish()),
            Arc::new(error.finish()),
        ];
        let batch = RecordBatch::try_new(schema(self.dim), columns)
            .map_err(|e| MiningError::parquet(&path, e))?;
        let tmp = crate::partial_files::create_partial(parent_dir(&path))?;
        let file = tmp.reopen().map_err(|e| MiningError::io(&path, e))?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None)
            .map_err(|e| MiningError::parquet(&path, e))?;
        writer
            .write(&batch)
            .map_err(|e| MiningError::parquet(&path, e))?;
        writer.close().map_err(|e| MiningError::parquet(&path, e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| MiningError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| MiningError::io(&path, e.error))?;
        self.next_chunk += 1;
        Ok(path)
    }
}

/// Every record of a features folder, later chunks overriding earlier ones for the same URL.
pub fn read_features(dir: &Path) -> Result<HashMap<String, std::result::Result<Vec<f32>, String>>> {
    let mut out = HashMap::new();
    for (_, path) in chunk_paths(dir)? {
        for r in read_chunk(&path)? {
            out.insert(r.url, r.result);
        }
    }
    Ok(out)
}

/// The records of one chunk file.
pub fn read_chunk(path: &Path) -> Result<Vec<FeatureRecord>> {
    let file = File::open(path).map_err(|e| MiningError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| MiningError::parquet(path, e))?;
    let bad = |what: &str| MiningError::invalid(path, format!("not a features chunk: {what}"));
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| MiningError::parquet(path, e))?;
        let url = batch
            .column_by_name("url")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("no utf8 column url"))?;
        let error = batch
            .column_by_name("error")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("no utf8 column error"))?;
        let embedding = batch
            .column_by_name("embedding")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| bad("no fixed-size list column embedding"))?;
        let values = embedding
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| bad("embedding values are not float32"))?;
        let dim = embedding.value_length() as usize;
        for i in 0..batch.num_rows() {
            let result = if embedding.is_null(i) {
                Err(if error.is_null(i) {
                    "unknown error".to_string()
                } else {
                    error.value(i).to_string()
                })
            } else {
                let start = embedding.value_offset(i) as usize;
                Ok(values.values()[start..start + dim].to_vec())
            };
            out.push(FeatureRecord {
                url: url.value(i).to_string(),
                result,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_resume_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FeatureStore::open_for_writing(dir.path(), "m", 3).unwrap();
        let a = vec![
            FeatureRecord {
                url: "http://a".into(),
                result: Ok(vec![1.0, 2.0, 3.0]),
            },
            FeatureRecord {
                url: "http://b".into(),
                result: Err("HTTP 404".into()),
            },
        ];
        store.write_chunk(&a).unwrap();
        let err = FeatureStore::open_for_writing(dir.path(), "m", 3)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("another process is running mine features"),
            "{err}"
        );
        drop(store);
        let mut store = FeatureStore::open_for_writing(dir.path(), "m", 3).unwrap();
        let b = vec![FeatureRecord {
            url: "http://c".into(),
            result: Ok(vec![0.5, 0.0, -1.0]),
        }];
        let second = store.write_chunk(&b).unwrap();
        assert!(second.ends_with("chunk-000002.parquet"));
        assert_eq!(read_chunk(&second).unwrap(), b);
        let all = read_features(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["http://b"], Err("HTTP 404".to_string()));
        assert_eq!(all["http://a"], Ok(vec![1.0, 2.0, 3.0]));
        drop(store);
        let err = FeatureStore::open_for_writing(dir.path(), "other", 3)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("meta.json") && err.contains("other"), "{err}");
    }
}
