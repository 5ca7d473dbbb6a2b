//! Changing a PostgreSQL index in place: upsert, delete and compact, each a transaction.
//!
//! An upsert reserves its id range through the load journal ([`crate::postgres_load`], so it
//! never collides with a concurrent `index add`), then in one transaction locks the metadata
//! row (one writer at a time), deletes the rows of every product key it brings, COPYs its rows
//! and marks its journal entry done. A killed upsert rolls back whole; running it again finds
//! its reservation and repeats the transaction; running it after it committed does nothing.
//! A delete is one `DELETE … WHERE <key> = ANY($1)`. Deleted rows are gone from searches at
//! once; `compact` is `VACUUM (ANALYZE)`, which returns their space to the table and refreshes
//! the planner's statistics (the HNSW index drops them as it vacuums).

use std::collections::HashSet;

use crate::catalogue::Deleted;
use crate::error::RetrievalError;
use crate::index::{IndexItem, IndexMeta};
use crate::item_metadata::{Clause, Filter};
use crate::postgres_index::{
    PgOptions, check_table, column_type, connect_retrying, pg_err, vector_type,
};
use crate::postgres_load::{LoadKind, copy_rows, ensure_metadata_column, load_key, reserve};

/// The condition "the row's product key is one of `keys`" (the label, or the index's key
/// column), with its parameters from `$first_param`.
fn key_condition(
    meta: &IndexMeta,
    keys: &HashSet<String>,
    first_param: usize,
) -> (String, Vec<Vec<String>>) {
    let mut values: Vec<String> = keys.iter().cloned().collect();
    values.sort();
    Filter {
        clauses: vec![Clause {
            column: meta.key_name().to_string(),
            values,
        }],
    }
    .sql("metadata", first_param)
}

/// Deletes every row whose product key is in `keys`; says how many went and which keys
/// matched none (the statement returns each deleted row's key).
pub fn delete_keys(
    opts: &PgOptions,
    meta: &IndexMeta,
    keys: &HashSet<String>,
) -> Result<Deleted, RetrievalError> {
    check_table(&opts.table)?;
    if keys.is_empty() {
        return Ok(Deleted::default());
    }
    let mut c = connect_retrying(opts)?;
    ensure_metadata_column(&mut c, &opts.table)?;
    let (condition, mut params) = key_condition(meta, keys, 1);
    let key = match meta.key_column.as_deref() {
        None => "label::text".to_string(),
        Some(column) => {
            params.push(vec![column.to_string()]);
            format!(
                "jsonb_extract_path_text(metadata, VARIADIC ${}::text[])",
                params.len()
            )
        }
    };
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let deleted = c
        .query(
            &format!(
                "DELETE FROM {} WHERE {condition} RETURNING {key}",
                opts.table
            ),
            &params,
        )
        .map_err(|e| pg_err("deleting rows", e))?;
    let matched: HashSet<String> = deleted
        .iter()
        .filter_map(|row| row.get::<_, Option<String>>(0))
        .collect();
    Ok(Deleted::new(deleted.len(), keys, &matched))
}

/// Replaces the products of `items` (every item must have a product key): deletes the rows of
/// their keys and inserts them, in one transaction. Returns `(rows replaced, rows added)`;
/// `(0, 0)` when this same upsert had committed before.
pub fn upsert(
    opts: &PgOptions,
    meta: &IndexMeta,
    items: &[IndexItem],
    embeddings: &[f32],
) -> Result<(usize, usize), RetrievalError> {
    check_table(&opts.table)?;
    let keys = meta.product_keys(items)?;
    if items.is_empty() || embeddings.len() != items.len() * meta.dim {
        return Err(RetrievalError::Invalid(format!(
            "{} embedding values for {} items of dim {}",
            embeddings.len(),
            items.len(),
            meta.dim
        )));
    }
    let t = &opts.table;
    let journal_key = format!("upsert-{}", load_key(items));
    let mut c = connect_retrying(opts)?;
    ensure_metadata_column(&mut c, t)?;
    let (first_id, done) = reserve(&mut c, t, &journal_key, items.len(), LoadKind::Add)?;
    if done {
        return Ok((0, 0));
    }
    let ty = vector_type(&mut c, column_type(meta.dtype))?;
    let err = |context: &'static str| move |e| pg_err(context, e);
    let mut tx = c.transaction().map_err(err("starting the upsert"))?;
    tx.query_one(
        &format!("SELECT one FROM {t}_meta WHERE one = 1 FOR UPDATE"),
        &[],
    )
    .map_err(err("locking the metadata row"))?;
    let (condition, params) = key_condition(meta, &keys, 1);
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let replaced = tx
        .execute(&format!("DELETE FROM {t} WHERE {condition}"), &params)
        .map_err(err("deleting the replaced rows"))?;
    copy_rows(
        &mut tx,
        t,
        &ty,
        meta.dtype,
        first_id,
        items,
        embeddings,
        0..items.len(),
    )
    .map_err(err("writing the new rows"))?;
    tx.execute(
        &format!("UPDATE {t}_loads SET done = true WHERE key = $1"),
        &[&journal_key],
    )
    .map_err(err("journaling the upsert"))?;
    tx.commit().map_err(err("committing the upsert"))?;
    Ok((replaced as usize, items.len()))
}

/// `VACUUM (ANALYZE)` of the table: the space of deleted rows is reused and the statistics
/// are fresh.
pub fn compact(opts: &PgOptions) -> Result<(), RetrievalError> {
    check_table(&opts.table)?;
    let mut c = connect_retrying(opts)?;
    c.batch_execute(&format!("VACUUM (ANALYZE) {}", opts.table))
        .map_err(|e| pg_err("VACUUM", e))
}
