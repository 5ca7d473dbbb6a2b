//! Loading rows into a PostgreSQL index so that several writers and restarts stay correct.
//!
//! Each load (`index build`, `index add`, `index migrate`) is named by a key derived from its
//! rows (their count and two CRC-32s of labels and paths) and recorded in `<table>_loads`
//! (`key, first_id, rows, done`). Before writing, a load reserves its id range: under a lock on
//! the metadata row, it takes the ids after every range reserved so far (and after the rows
//! already in the table), so two `index add` runs at the same time get disjoint ranges instead of
//! both resuming after `max(id)` and skipping each other's rows. Rows go in with binary `COPY`,
//! one transaction per batch; after a lost connection or a restarted server the load reconnects
//! (with backoff, up to `retry_for`) and continues after the highest id *in its own range*, so
//! nothing is written twice or skipped. Running the same command again after a crash finds its
//! key and finishes the range; running it after it finished does nothing.
//!
//! A build (as opposed to an add) into a table that already holds rows from other loads is
//! refused: it would mix two catalogues. `--replace` drops the table first.

use std::time::{Duration, Instant};

use pgvector::{HalfVector, Vector};
use postgres::Client;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

use crate::error::RetrievalError;
use crate::index::{IndexDtype, IndexItem};
use crate::item_metadata::to_json;
use crate::postgres_index::{
    PgOptions, check_table, column_type, connect_retrying, has_metadata_column, is_transient,
    pg_err, vector_type,
};

/// Whether a load starts a catalogue or adds to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// The table must hold no rows but this load's own (from an interrupted run).
    Build,
    /// Rows go after everything reserved so far.
    Add,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Id of the load's first row.
    pub first_id: i64,
    pub rows: usize,
    /// The same rows had been loaded completely before; nothing was written.
    pub already_loaded: bool,
    /// Rows found written by an interrupted earlier run of the same load.
    pub resumed_from: usize,
}

/// The journal key of a load: its row count and two CRC-32s over labels, paths and metadata.
pub fn load_key(items: &[IndexItem]) -> String {
    let mut a = crc32fast::Hasher::new();
    let mut b = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    for item in items {
        let label = item.label.to_le_bytes();
        let path = item.path.to_string_lossy();
        for h in [&mut a, &mut b] {
            h.update(&label);
            h.update(path.as_bytes());
            // Metadata counts only when present, so keys of rows without it stay as before.
            for (k, v) in &item.metadata {
                h.update(b"\x1f");
                h.update(k.as_bytes());
                h.update(b"=");
                h.update(v.as_bytes());
            }
            h.update(b"\0");
        }
    }
    format!("{}-{:08x}{:08x}", items.len(), a.finalize(), b.finalize())
}

/// Creates `<table>_loads` if missing (tables made before the journal existed get one too).
pub(crate) fn create_journal(c: &mut Client, table: &str) -> Result<(), RetrievalError> {
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table}_loads (key text PRIMARY KEY, first_id bigint NOT NULL,
                                                 rows bigint NOT NULL, done boolean NOT NULL DEFAULT false)"
    ))
    .map_err(|e| pg_err("creating the load journal", e))
}

/// Gives a table made before items had metadata its `metadata` column (instant: a constant
/// default). Only when it is missing: `ALTER TABLE` takes an exclusive lock even when it has
/// nothing to do, which would stall every search and writer on the table behind any open
/// transaction.
pub(crate) fn ensure_metadata_column(c: &mut Client, table: &str) -> Result<(), RetrievalError> {
    if has_metadata_column(c, table)? {
        return Ok(());
    }
    c.batch_execute(&format!(
        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb"
    ))
    .map_err(|e| pg_err("adding the metadata column", e))
}

/// Finds or reserves the id range of the load `key` of `rows` rows. Returns the first id and
/// whether the load had finished before.
pub(crate) fn reserve(
    c: &mut Client,
    table: &str,
    key: &str,
    rows: usize,
    kind: LoadKind,
) -> Result<(i64, bool), RetrievalError> {
    create_journal(c, table)?;
    let err = |context: &str| {
        let context = context.to_string();
        move |e| pg_err(&context, e)
    };
    let mut tx = c.transaction().map_err(err("starting a transaction"))?;
    // One reservation at a time: the metadata row is the lock.
    tx.query_opt(
        &format!("SELECT one FROM {table}_meta WHERE one = 1 FOR UPDATE"),
        &[],
    )
    .map_err(err("locking the metadata row"))?
    .ok_or_else(|| {
        RetrievalError::Invalid(format!(
            "PostgreSQL: {table}_meta is empty; build the index first"
        ))
    })?;
    let found = tx
        .query_opt(
            &format!("SELECT first_id, rows, done FROM {table}_loads WHERE key = $1"),
            &[&key],
        )
        .map_err(err("reading the load journal"))?;
    if let Some(row) = found {
        let (first, n, done): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
        if n != rows as i64 {
            return Err(RetrievalError::Invalid(format!(
                "load {key} is journaled with {n} rows, not {rows}"
            )));
        }
        tx.commit().map_err(err("committing the reservation"))?;
        return Ok((first, done));
    }
    let end_of_loads: i64 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(first_id + rows), 0) FROM {table}_loads"),
            &[],
        )
        .map_err(err("reading the load journal"))?
        .get(0);
    let end_of_rows: i64 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(id) + 1, 0) FROM {table}"),
            &[],
        )
        .map_err(err("counting rows"))?
        .get(0);
    if kind == LoadKind::Build && end_of_rows > 0 {
        return Err(RetrievalError::Invalid(format!(
            "table {table} already holds {end_of_rows} rows from another load; pass --replace to \
             rebuild it, or use `index add` to add to it"
        )));
    }
    let first = end_of_loads.max(end_of_rows);
    tx.execute(
        &format!("INSERT INTO {table}_loads (key, first_id, rows) VALUES ($1, $2, $3)"),
        &[&key, &first, &(rows as i64)],
    )
    .map_err(err("journaling the load"))?;
    tx.commit().map_err(err("committing the reservation"))?;
    Ok((first, false))
}

/// Loads `items` (`embeddings` row-major, `dim` wide) as one journaled load: reserves its id
/// range, COPYs the rows in batches (reconnecting and resuming inside the range after a lost
/// connection) and marks it done. `progress(written, total)` follows the batches.
pub fn load_rows(
    opts: &PgOptions,
    dtype: IndexDtype,
    kind: LoadKind,
    items: &[IndexItem],
    embeddings: &[f32],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadOutcome, RetrievalError> {
    check_table(&opts.table)?;
    let dim = if items.is_empty() {
        0
    } else {
        embeddings.len() / items.len()
    };
    if dim * items.len() != embeddings.len() {
        return Err(RetrievalError::Invalid(format!(
            "{} values for {} items",
            embeddings.len(),
            items.len()
        )));
    }
    let key = load_key(items);
    let mut c = connect_retrying(opts)?;
    ensure_metadata_column(&mut c, &opts.table)?;
    let (first_id, done) = reserve(&mut c, &opts.table, &key, items.len(), kind)?;
    drop(c);
    let mut outcome = LoadOutcome {
        first_id,
        rows: items.len(),
        already_loaded: done,
        resumed_from: 0,
    };
    if done {
        progress(items.len(), items.len());
        return Ok(outcome);
    }
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match write_range(opts, dtype, first_id, items, embeddings, progress) {
            Ok(resumed_from) => {
                if attempt == 0 {
                    outcome.resumed_from = resumed_from;
                }
                break;
            }
            Err(WriteError::Connection(e)) if started.elapsed() < opts.retry_for => {
                tracing::warn!(
                    "PostgreSQL connection lost while writing ({e}); reconnecting and resuming"
                );
                std::thread::sleep(Duration::from_millis(500));
                attempt += 1;
            }
            Err(WriteError::Connection(e)) => {
                return Err(pg_err("writing rows (connection lost, gave up)", e));
            }
            Err(WriteError::Other(e)) => return Err(e),
        }
    }
    let mut c = connect_retrying(opts)?;
    c.execute(
        &format!("UPDATE {}_loads SET done = true WHERE key = $1", opts.table),
        &[&key],
    )
    .map_err(|e| pg_err("marking the load done", e))?;
    Ok(outcome)
}

enum WriteError {
    Connection(postgres::Error),
    Other(RetrievalError),
}

fn classify(context: &str, e: postgres::Error) -> WriteError {
    // A database error (constraint, type, permission) will not pass by retrying; a lost or
    // restarting server may.
    if is_transient(&e) {
        WriteError::Connection(e)
    } else {
        WriteError::Other(pg_err(context, e))
    }
}

/// Writes the rows of the range `first_id..first_id + items.len()` not yet in the table;
/// returns how many were there already.
fn write_range(
    opts: &PgOptions,
    dtype: IndexDtype,
    first_id: i64,
    items: &[IndexItem],
    embeddings: &[f32],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize, WriteError> {
    let mut c = connect_retrying(opts).map_err(WriteError::Other)?;
    let t = &opts.table;
    let last = first_id + items.len() as i64;
    // Batches commit whole and in order, so the range is written up to its highest id.
    let present: i64 = c
        .query_one(
            &format!("SELECT COALESCE(MAX(id) + 1, $1) FROM {t} WHERE id >= $1 AND id < $2"),
            &[&first_id, &last],
        )
        .map_err(|e| classify("counting rows", e))?
        .get(0);
    let resumed_from = (present - first_id) as usize;
    if resumed_from > 0 {
        tracing::info!("resuming after row {present}");
    }
    let mut start = resumed_from;
    let ty = vector_type(&mut c, column_type(dtype)).map_err(WriteError::Other)?;
    progress(start, items.len());
    while start < items.len() {
        let end = (start + opts.batch_rows.max(1)).min(items.len());
        let mut tx = c
            .transaction()
            .map_err(|e| classify("starting a transaction", e))?;
        copy_rows(
            &mut tx,
            t,
            &ty,
            dtype,
            first_id,
            items,
            embeddings,
            start..end,
        )
        .map_err(|e| classify("COPY", e))?;
        tx.commit().map_err(|e| classify("committing a batch", e))?;
        start = end;
        progress(start, items.len());
    }
    Ok(resumed_from)
}

/// COPYs `items[range]` (with their rows of `embeddings`) into `table` inside `tx`, item `i`
/// as id `first_id + i`; `ty` is the table's vector type ([`vector_type`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_rows(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    ty: &Type,
    dtype: IndexDtype,
    first_id: i64,
    items: &[IndexItem],
    embeddings: &[f32],
    range: std::ops::Range<usize>,
) -> Result<(), postgres::Error> {
    let dim = embeddings.len() / items.len().max(1);
    let sink = tx.copy_in(&format!(
        "COPY {table} (id, label, path, metadata, embedding) FROM STDIN (FORMAT binary)"
    ))?;
    let mut w = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::INT8, Type::TEXT, Type::JSONB, ty.clone()],
    );
    for i in range {
        let item = &items[i];
        let id = first_id + i as i64;
        let path = item.path.to_string_lossy();
        let metadata = to_json(&item.metadata);
        let values = &embeddings[i * dim..(i + 1) * dim];
        let head: [&(dyn ToSql + Sync); 4] = [&id, &item.label, &path.as_ref(), &metadata];
        match dtype {
            IndexDtype::F32 => {
                let v = Vector::from(values.to_vec());
                w.write(&[head[0], head[1], head[2], head[3], &v])?;
            }
            IndexDtype::F16 => {
                let v = HalfVector::from_f32_slice(values);
                w.write(&[head[0], head[1], head[2], head[3], &v])?;
            }
        }
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(label: i64, path: &str) -> IndexItem {
        IndexItem::new(label, path)
    }

    #[test]
    fn load_keys_follow_the_rows() {
        let a = [item(1, "a.jpg"), item(2, "b.jpg")];
        assert_eq!(load_key(&a), load_key(&a.clone()));
        assert!(load_key(&a).starts_with("2-"));
        assert_ne!(
            load_key(&a),
            load_key(&[item(1, "a.jpg"), item(3, "b.jpg")])
        );
        assert_ne!(
            load_key(&a),
            load_key(&[item(2, "b.jpg"), item(1, "a.jpg")])
        );
        assert_ne!(
            load_key(&[item(1, "ab"), item(1, "c")]),
            load_key(&[item(1, "a"), item(1, "bc")])
        );
        let mut tagged = item(1, "a.jpg");
        tagged.metadata.insert("brand".into(), "x".into());
        assert_ne!(load_key(&[tagged]), load_key(&[item(1, "a.jpg")]));
    }
}
