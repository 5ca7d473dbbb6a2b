//! The products table the pipeline passes between steps, as Parquet (readable by pandas,
//! polars, DuckDB): `asin`, `title`, `product_images` (list of URLs), `user_images` (list of
//! URLs), `n_reviews`. `mine pairs` writes it with every user photo; `mine filter` writes the same
//! layout with only the user photos it kept. Written in row groups as rows arrive (constant
//! memory) to a temp file that is renamed into place when complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, UInt32Builder};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{MiningError, Result};

const ROWS_PER_GROUP: usize = 8192;

/// One product and its image URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRow {
    pub asin: String,
    pub title: Option<String>,
    pub product_images: Vec<String>,
    pub user_images: Vec<String>,
    pub n_reviews: u32,
}

fn schema() -> SchemaRef {
    let list = || DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("asin", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("product_images", list(), false),
        Field::new("user_images", list(), false),
        Field::new("n_reviews", DataType::UInt32, false),
    ]))
}

/// Writes product rows to `path` (atomically, on [`ProductWriter::finish`]).
pub struct ProductWriter {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    writer: ArrowWriter<File>,
    rows: Vec<ProductRow>,
    written: u64,
}

/// Refuses to replace `path` unless it is absent or a products table (an earlier run of this
/// step): `--work-dir` may name a folder of the user's own files.
pub(crate) fn check_replaceable(path: &Path) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MiningError::io(path, e)),
    };
    let ours = ParquetRecordBatchReaderBuilder::try_new(file)
        .is_ok_and(|b| b.schema().fields() == schema().fields());
    if ours {
        Ok(())
    } else {
        Err(MiningError::invalid(
            path,
            "exists and is not a products table that `visual-search mine` wrote; refusing to \
             replace it (choose another --work-dir, or move the file)",
        ))
    }
}

impl ProductWriter {
    /// Starts writing `path`, which must be absent or a products table written before.
    pub fn create(path: &Path) -> Result<Self> {
        check_replaceable(path)?;
        let tmp = crate::partial_files::create_partial(parent_dir(path))?;
        let file = tmp.reopen().map_err(|e| MiningError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = ArrowWriter::try_new(file, schema(), Some(props))
            .map_err(|e| MiningError::parquet(path, e))?;
        Ok(ProductWriter {
            path: path.to_path_buf(),
            tmp,
            writer,
            rows: Vec::new(),
            written: 0,
        })
    }

    pub fn push(&mut self, row: ProductRow) -> Result<()> {
        self.rows.push(row);
        if self.rows.len() >= ROWS_PER_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.rows).map_err(|e| MiningError::parquet(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| MiningError::parquet(&self.path, e))?;
        self.written += self.rows.len() as u64;
        self.rows.clear();
        Ok(())
    }

    /// Writes what is left, closes the file and moves it into place; returns the row count.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        self.writer
            .close()
            .map_err(|e| MiningError::parquet(&self.path, e))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| MiningError::io(&self.path, e))?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| MiningError::io(&self.path, e.error))?;
        Ok(self.written)
    }
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn to_batch(rows: &[ProductRow]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut asin = StringBuilder::new();
    let mut title = StringBuilder::new();
    let mut product = ListBuilder::new(StringBuilder::new());
    let mut user = ListBuilder::new(StringBuilder::new());
    let mut n = UInt32Builder::new();
    for r in rows {
        asin.append_value(&r.asin);
        title.append_option(r.title.as_deref());
        for u in &r.product_images {
            product.values().append_value(u);
        }
        product.append(true);
        for u in &r.user_images {
            user.values().append_value(u);
        }
        user.append(true);
        n.append_value(r.n_reviews);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(asin.finish()),
        Arc::new(title.finish()),
        Arc::new(product.finish()),
        Arc::new(user.finish()),
        Arc::new(n.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Reads every row of a products table.
pub fn read_products(path: &Path) -> Result<Vec<ProductRow>> {
    let file = File::open(path).map_err(|e| MiningError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(ROWS_PER_GROUP).build())
        .map_err(|e| MiningError::parquet(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| MiningError::parquet(path, e))?;
        let asin = strings(path, &batch, "asin")?;
        let title = strings(path, &batch, "title")?;
        let product = lists(path, &batch, "product_images")?;
        let user = lists(path, &batch, "user_images")?;
        let n = column(path, &batch, "n_reviews")?
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| MiningError::invalid(path, "column n_reviews: expected uint32"))?
            .clone();
        for i in 0..batch.num_rows() {
            if asin.is_null(i) {
                return Err(MiningError::invalid(path, format!("row {i}: asin is null")));
            }
            out.push(ProductRow {
                asin: asin.value(i).to_string(),
                title: (!title.is_null(i)).then(|| title.value(i).to_string()),
                product_images: list_values(&product, i),
                user_images: list_values(&user, i),
                n_reviews: if n.is_null(i) { 0 } else { n.value(i) },
            });
        }
    }
    Ok(out)
}

fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        MiningError::invalid(
            path,
            format!("no column {name:?} (is this a products table?)"),
        )
    })
}

fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<StringArray> {
    column(path, batch, name)?
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| {
            MiningError::invalid(path, format!("column {name:?}: expected utf8 strings"))
        })
}

fn lists(path: &Path, batch: &RecordBatch, name: &str) -> Result<ListArray> {
    let list = column(path, batch, name)?
        .as_any()
        .downcast_ref::<ListArray>()
        .cloned()
        .ok_or_else(|| {
            MiningError::invalid(path, format!("column {name:?}: expected a list of strings"))
        })?;
    if list
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .is_none()
    {
        return Err(MiningError::invalid(
            path,
            format!("column {name:?}: expected a list of strings"),
        ));
    }
    Ok(list)
}

fn list_values(list: &ListArray, i: usize) -> Vec<String> {
    if list.is_null(i) {
        return Vec::new();
    }
    let values = list.value(i);
    let strings = values
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("checked to be a list of strings in `lists`");
    (0..strings.len())
        .filter(|&j| !strings.is_null(j))
        .map(|j| strings.value(j).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let rows: Vec<ProductRow> = (0..20_000u32)
            .map(|i| ProductRow {
                asin: format!("B{i:06}"),
                title: (i % 3 != 0).then(|| format!("thing {i}")),
                product_images: vec![format!("http://h/p{i}.jpg")],
                user_images: (0..i % 4)
                    .map(|j| format!("http://h/u{i}_{j}.jpg"))
                    .collect(),
                n_reviews: i % 7,
            })
            .collect();
        let mut w = ProductWriter::create(&path).unwrap();
        for r in rows.clone() {
            w.push(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 20_000);
        assert_eq!(read_products(&path).unwrap(), rows);
    }

    #[test]
    fn other_parquet_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(UInt32Array::from(vec![1u32])) as ArrayRef,
        )])
        .unwrap();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let err = read_products(&path).unwrap_err().to_string();
        assert!(err.contains("asin") && err.contains("p.parquet"), "{err}");
        // Nor replaced: neither another table nor a file that is not parquet at all.
        let refused = |path: &Path| {
            let err = ProductWriter::create(path).err().unwrap().to_string();
            assert!(err.contains("refusing to replace it"), "{err}");
        };
        let before = std::fs::read(&path).unwrap();
        refused(&path);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::write(&path, b"PAR1 not really").unwrap();
        assert!(
            read_products(&path)
                .unwrap_err()
                .to_string()
                .contains("parquet")
        );
        refused(&path);
        // A products table written before is replaced (a step run again).
        let table = dir.path().join("t.parquet");
        ProductWriter::create(&table).unwrap().finish().unwrap();
        ProductWriter::create(&table).unwrap().finish().unwrap();
    }
}
