//! The scale-out engine: a catalogue index kept in PostgreSQL with pgvector, for catalogues that
//! outgrow one machine (tens of millions of rows, many writers, replicas). The embedded on-disk
//! index stays the default; this one is chosen by giving a `postgres://` URL instead of a folder.
//!
//! Layout: a table `<table>` (`id bigint primary key, label bigint, path text, metadata jsonb,
//! embedding vector(dim)` or `halfvec(dim)`) and `<table>_meta` (one row: the same [`IndexMeta`] JSON the
//! on-disk index keeps, so `search`/`serve` load the same model), plus `<table>_loads`, the
//! journal through which concurrent and resumed loads get disjoint id ranges
//! ([`crate::postgres_load`]). An HNSW index (cosine ops) is created
//! after the bulk load, which is much faster than maintaining it row by row. Search is
//! `ORDER BY embedding <=> $1 LIMIT k` under `SET LOCAL hnsw.ef_search`; `exact` disables index
//! scans so pgvector compares against every row. A metadata filter becomes a `WHERE` clause
//! with its values as parameters; HNSW then scans iteratively (pgvector ≥ 0.8,
//! `hnsw.iterative_scan = strict_order`) so that a selective filter still returns k rows in
//! distance order instead of the few of the first `ef_search` candidates that pass. Tables made
//! before metadata existed have no `metadata` column; they are read as items without
//! metadata, and the next `index add` adds the column.
//!
//! The synchronous `postgres` client is used (it drives tokio internally): callers here are
//! CLI commands and `serve`'s blocking search threads. A small pool of connections lets
//! concurrent searches run in parallel.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgvector::Vector;
use postgres::Client;
use postgres::types::{Kind, Type};

use crate::catalogue::{Catalogue, CatalogueHit, Deleted};
use crate::error::RetrievalError;
use crate::index::{IndexDtype, IndexItem, IndexMeta};
use crate::item_metadata::{Filter, from_json};
use crate::open_set::MatchThreshold;
pub use crate::postgres_connect::{PgOptions, is_postgres_url, redact};
pub(crate) use crate::postgres_connect::{check_table, connect_retrying, is_transient, pg_err};

pub(crate) fn column_type(dtype: IndexDtype) -> &'static str {
    match dtype {
        IndexDtype::F32 => "vector",
        IndexDtype::F16 => "halfvec",
    }
}

/// Creates the tables (and the pgvector extension) for a new index with `meta`, or checks that
/// an existing one was made by the same model at the same width (so a resumed or repeated
/// build continues it). `replace` drops an existing index first.
pub fn create_tables(
    opts: &PgOptions,
    meta: &IndexMeta,
    replace: bool,
) -> Result<(), RetrievalError> {
    check_table(&opts.table)?;
    let mut c = connect_retrying(opts)?;
    let t = &opts.table;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .map_err(|e| pg_err("enabling pgvector (CREATE EXTENSION vector)", e))?;
    if replace {
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS {t}_meta; DROP TABLE IF EXISTS {t}_loads"
        ))
        .map_err(|e| pg_err("dropping the old index", e))?;
    }
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {t}_meta (one int PRIMARY KEY CHECK (one = 1), meta jsonb NOT NULL);
         CREATE TABLE IF NOT EXISTS {t} (id bigint PRIMARY KEY, label bigint NOT NULL, path text NOT NULL,
                                         metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                                         embedding {}({}) NOT NULL)",
        column_type(meta.dtype),
        meta.dim
    ))
    .map_err(|e| pg_err("creating the tables", e))?;
    let stored = meta_json(meta);
    let existing: Option<serde_json::Value> = c
        .query_opt(&format!("SELECT meta FROM {t}_meta"), &[])
        .map_err(|e| pg_err("reading the metadata", e))?
        .map(|r| r.get(0));
    match existing {
        None => {
            c.execute(
                &format!("INSERT INTO {t}_meta (one, meta) VALUES (1, $1)"),
                &[&stored],
            )
            .map_err(|e| pg_err("writing the metadata", e))?;
        }
        Some(found) => {
            let same = found["dim"] == stored["dim"]
                && found["model"] == stored["model"]
                && found["dtype"] == stored["dtype"];
            if !same {
                return Err(RetrievalError::Invalid(format!(
                    "table {t} already holds an index made by another model or width; pass --replace or another --table"
                )));
            }
        }
    }
    Ok(())
}

/// The metadata as stored (rows and checksums are the table's business, not the JSON's).
fn meta_json(meta: &IndexMeta) -> serde_json::Value {
    let mut m = meta.clone();
    m.rows = 0;
    m.embeddings_crc32 = 0;
    m.items_crc32 = 0;
    serde_json::to_value(m).unwrap_or_default()
}

pub(crate) fn vector_type(c: &mut Client, name: &str) -> Result<Type, RetrievalError> {
    let row = c
        .query_one("SELECT oid FROM pg_type WHERE typname = $1", &[&name])
        .map_err(|e| pg_err(&format!("looking up type {name}"), e))?;
    let oid: u32 = row.get(0);
    Ok(Type::new(
        name.to_string(),
        oid,
        Kind::Simple,
        "public".to_string(),
    ))
}

/// Rows now in the table (ids have gaps after deletes, so this is a count, not `max(id) + 1`).
fn count_rows(c: &mut Client, table: &str) -> Result<i64, postgres::Error> {
    Ok(c.query_one(&format!("SELECT count(*) FROM {table}"), &[])?
        .get(0))
}

/// Whether `table` has the `metadata` column (tables made before it existed do not).
pub(crate) fn has_metadata_column(c: &mut Client, table: &str) -> Result<bool, RetrievalError> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = $1 AND column_name = 'metadata'
                          AND table_schema = ANY(current_schemas(false)))",
        &[&table],
    )
    .map(|r| r.get(0))
    .map_err(|e| pg_err("looking for the metadata column", e))
}

/// The item of a row `(id, label, path, metadata, …)`.
fn item_of_row(r: &postgres::Row) -> IndexItem {
    IndexItem {
        label: r.get(1),
        path: r.get::<_, String>(2).into(),
        metadata: from_json(&r.get::<_, serde_json::Value>(3)),
    }
}

/// Builds the HNSW index over the embeddings (after the bulk load).
pub fn create_hnsw(opts: &PgOptions, dtype: IndexDtype) -> Result<(), RetrievalError> {
    check_table(&opts.table)?;
    let mut c = connect_retrying(opts)?;
    let t = &opts.table;
    let ops = match dtype {
        IndexDtype::F32 => "vector_cosine_ops",
        IndexDtype::F16 => "halfvec_cosine_ops",
    };
    let workers = match opts.hnsw_workers {
        Some(n) => format!("SET max_parallel_maintenance_workers = {n};"),
        None => String::new(),
    };
    c.batch_execute(&format!(
        "SET maintenance_work_mem = '{}MB'; {workers}
         CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw (embedding {ops}) WITH (m = {}, ef_construction = {})",
        opts.hnsw_memory_mb.max(64), opts.m, opts.ef_construction
    ))
    .map_err(|e| pg_err("building the HNSW index", e))
}

/// An open PostgreSQL index.
pub struct PgIndex {
    opts: PgOptions,
    meta: IndexMeta,
    pool: Vec<Mutex<Client>>,
    next: AtomicUsize,
    /// Rows in the table: counted at opening and again after each write through this handle
    /// (a write by another process shows at this handle's next write or opening).
    rows: AtomicUsize,
    /// How the statements read an item's metadata: its column, or an empty object for tables
    /// made before it existed.
    metadata: &'static str,
    /// Compare against every row instead of walking the HNSW graph.
    pub exact: bool,
}

impl PgIndex {
    /// Opens the index in `opts.table` (its metadata and row count).
    pub fn open(opts: &PgOptions) -> Result<Self, RetrievalError> {
        check_table(&opts.table)?;
        let mut first = connect_retrying(opts)?;
        let t = &opts.table;
        let row = first
            .query_opt(&format!("SELECT meta FROM {t}_meta"), &[])
            .map_err(|e| {
                pg_err(
                    &format!("reading {t}_meta (build the index first with `index build`)"),
                    e,
                )
            })?
            .ok_or_else(|| {
                RetrievalError::Invalid(format!(
                    "PostgreSQL: {t}_meta is empty; the index was never built"
                ))
            })?;
        let json: serde_json::Value = row.get(0);
        let mut meta: IndexMeta = serde_json::from_value(json).map_err(|e| {
            RetrievalError::Invalid(format!("PostgreSQL: {t}_meta is damaged: {e}"))
        })?;
        meta.rows = count_rows(&mut first, t).map_err(|e| pg_err("counting rows", e))? as usize;
        let metadata = if has_metadata_column(&mut first, t)? {
            "metadata"
        } else {
            "'{}'::jsonb"
        };
        let mut pool = vec![Mutex::new(first)];
        for _ in 1..opts.pool.max(1) {
            pool.push(Mutex::new(connect_retrying(opts)?));
        }
        Ok(PgIndex {
            opts: opts.clone(),
            rows: AtomicUsize::new(meta.rows),
            meta,
            pool,
            next: AtomicUsize::new(0),
            metadata,
            exact: false,
        })
    }

    /// Runs `f` on a pooled connection, replacing it once if it was lost.
    fn with_client<T>(
        &self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, RetrievalError> {
        let slot = &self.pool[self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len()];
        let mut client = slot.lock().unwrap_or_else(|p| p.into_inner());
        match f(&mut client) {
            Ok(v) => Ok(v),
            Err(e) if client.is_closed() || is_transient(&e) => {
                *client = connect_retrying(&self.opts)?;
                f(&mut client).map_err(|e| pg_err("search", e))
            }
            Err(e) => Err(pg_err("search", e)),
        }
    }

    /// [`Catalogue::recount_rows`] after a committed write, which stands even when the count
    /// fails (the old count is kept and the failure logged).
    fn recount_after_write(&self) {
        if let Err(e) = self.recount_rows() {
            tracing::warn!("{}: rows not counted after the write: {e}", self.opts.table);
        }
    }

    /// The server's size of the table and its indexes.
    pub fn total_bytes(&self) -> Result<u64, RetrievalError> {
        let t = self.opts.table.clone();
        self.with_client(|c| {
            let r = c.query_one("SELECT pg_total_relation_size($1::regclass)", &[&t])?;
            Ok(r.get::<_, i64>(0) as u64)
        })
    }
}

impl Catalogue for PgIndex {
    fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    /// Counts the table's rows again (after a write, or for a server's metrics), keeps the
    /// count for [`Catalogue::rows`] and returns it.
    fn recount_rows(&self) -> Result<usize, RetrievalError> {
        let t = self.opts.table.clone();
        let n = self.with_client(|c| count_rows(c, &t))? as usize;
        self.rows.store(n, Ordering::Relaxed);
        Ok(n)
    }

    fn search_raw(
        &self,
        queries: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<CatalogueHit>>, RetrievalError> {
        let dim = self.meta.dim;
        if dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(RetrievalError::Invalid(format!(
                "query width does not divide by the index dimension {dim}"
            )));
        }
        let t = &self.opts.table;
        let cast = column_type(self.meta.dtype);
        let m = self.metadata;
        let (condition, filter_params) = filter.sql(m, 3);
        let sql = format!(
            "SELECT id, label, path, {m}, (1 - (embedding <=> $1::vector::{cast}))::real \
             FROM {t} WHERE {condition} ORDER BY embedding <=> $1::vector::{cast} LIMIT $2"
        );
        // The timeout is set last, after the statement is prepared, so that it covers only the
        // search's Bind/Execute. A timeout firing during a Parse can reach the client after
        // the library has stopped reading that reply; the error is then lost and the search
        // fails with "current transaction is aborted" instead of naming the timeout.
        let scan = if self.exact {
            "SET LOCAL enable_indexscan = off".to_string()
        } else {
            let iterative = if filter.is_empty() {
                ""
            } else {
                "; SET LOCAL hnsw.iterative_scan = strict_order"
            };
            format!(
                "SET LOCAL hnsw.ef_search = {}{iterative}",
                self.opts.ef_search.max(k as u32).min(1000)
            )
        };
        let settings = format!(
            "{scan}; SET LOCAL statement_timeout = {}",
            self.opts.search_timeout.as_millis().max(1)
        );
        let k = k as i64;
        queries
            .chunks(dim)
            .map(|q| {
                let v = Vector::from(q.to_vec());
                let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&v, &k];
                params.extend(
                    filter_params
                        .iter()
                        .map(|p| p as &(dyn postgres::types::ToSql + Sync)),
                );
                self.with_client(|c| {
                    let mut tx = c.transaction()?;
                    let statement = tx.prepare(&sql)?;
                    tx.batch_execute(&settings)?;
                    let rows = tx.query(&statement, &params)?;
                    tx.commit()?;
                    Ok(rows
                        .iter()
                        .map(|r| CatalogueHit {
                            id: r.get::<_, i64>(0) as u64,
                            score: r.get(4),
                            item: item_of_row(r),
                        })
                        .collect())
                })
            })
            .collect()
    }

    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>, RetrievalError> {
        let t = self.opts.table.clone();
        let wanted: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let found = self.with_client(|c| {
            let rows = c.query(
                &format!("SELECT id, embedding::vector FROM {t} WHERE id = ANY($1)"),
                &[&wanted],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Vector>(1).to_vec()))
                .collect::<std::collections::HashMap<i64, Vec<f32>>>())
        })?;
        let mut out = Vec::with_capacity(ids.len() * self.meta.dim);
        for id in &wanted {
            let v = found.get(id).ok_or_else(|| {
                RetrievalError::Invalid(format!("PostgreSQL: no row {id} in {t}"))
            })?;
            out.extend_from_slice(v);
        }
        Ok(out)
    }

    fn distinct_labels(&self) -> Result<Vec<i64>, RetrievalError> {
        let t = self.opts.table.clone();
        self.with_client(|c| {
            let rows = c.query(
                &format!("SELECT DISTINCT label FROM {t} ORDER BY label"),
                &[],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// A journaled load ([`crate::postgres_load`]): resumable, and disjoint from concurrent
    /// adds; running a finished one again writes nothing.
    fn append(&self, items: &[IndexItem], embeddings: &[f32]) -> Result<usize, RetrievalError> {
        let outcome = crate::postgres_load::load_rows(
            &self.opts,
            self.meta.dtype,
            crate::postgres_load::LoadKind::Add,
            items,
            embeddings,
            &mut |_, _| {},
        )?;
        if outcome.already_loaded {
            tracing::warn!(
                "these {} rows were loaded before; nothing written",
                items.len()
            );
        } else if outcome.resumed_from > 0 {
            tracing::warn!(
                "resumed an interrupted load after {} of {} rows",
                outcome.resumed_from,
                outcome.rows
            );
        }
        self.recount_rows()
    }

    fn upsert(
        &self,
        items: &[IndexItem],
        embeddings: &[f32],
    ) -> Result<(usize, usize), RetrievalError> {
        let changed = crate::postgres_edit::upsert(&self.opts, &self.meta, items, embeddings)?;
        self.recount_after_write();
        Ok(changed)
    }

    fn delete_keys(&self, keys: &HashSet<String>) -> Result<Deleted, RetrievalError> {
        let removed = crate::postgres_edit::delete_keys(&self.opts, &self.meta, keys)?;
        self.recount_after_write();
        Ok(removed)
    }

    fn compact(&self) -> Result<String, RetrievalError> {
        crate::postgres_edit::compact(&self.opts)?;
        Ok(format!(
            "vacuumed {} (deleted rows' space is reused; ids are unchanged)",
            self.opts.table
        ))
    }

    fn ids(&self) -> Result<Vec<u64>, RetrievalError> {
        let t = self.opts.table.clone();
        self.with_client(|c| {
            let rows = c.query(&format!("SELECT id FROM {t} ORDER BY id"), &[])?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn metadata_columns(&self) -> Result<Vec<String>, RetrievalError> {
        let t = self.opts.table.clone();
        let m = self.metadata;
        self.with_client(|c| {
            let rows = c.query(
                &format!("SELECT DISTINCT jsonb_object_keys({m}) AS k FROM {t} ORDER BY k"),
                &[],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn store_match_threshold(
        &self,
        threshold: Option<MatchThreshold>,
    ) -> Result<(), RetrievalError> {
        let t = self.opts.table.clone();
        let stored = meta_json(&IndexMeta {
            match_threshold: threshold,
            ..self.meta.clone()
        });
        self.with_client(|c| {
            c.execute(&format!("UPDATE {t}_meta SET meta = $1"), &[&stored])?;
            Ok(())
        })
    }

    fn item(&self, id: u64) -> Result<Option<IndexItem>, RetrievalError> {
        let t = self.opts.table.clone();
        let id = id as i64;
        self.with_client(|c| {
            let row = c.query_opt(
                &format!(
                    "SELECT id, label, path, {} FROM {t} WHERE id = $1",
                    self.metadata
                ),
                &[&id],
            )?;
            Ok(row.as_ref().map(item_of_row))
        })
    }

    fn size_bytes(&self) -> u64 {
        self.total_bytes().unwrap_or(0)
    }

    fn location(&self) -> String {
        format!("{} table {}", redact(&self.opts.url), self.opts.table)
    }
}
