//! A catalogue list's extra columns, kept as item metadata by `index build` / `index add`
//! (`category`, `brand`, `in_stock`, … beside `img_path,product_id`), so searches can return
//! and filter on them ([`visual_search_retrieval::item_metadata`]).
//!
//! Every column the list's kind does not consume is kept; an empty cell means "not set". A
//! column whose name cannot be a metadata name (spaces, reserved names) and a cell that cannot
//! be a value (over 1 KiB, control characters) are left out with a warning naming them and a
//! count, rather than refusing a catalogue over a column nobody filters on.

use std::path::Path;

use anyhow::Context;
use visual_search_data::csv_table::CsvTable;
use visual_search_retrieval::item_metadata::{
    MAX_COLUMNS, Metadata, check_column_name, check_value,
};

use crate::sample_lists::ListKind;

/// The columns a list of `kind` reads itself.
fn consumed(kind: ListKind) -> &'static [&'static str] {
    match kind {
        ListKind::Gallery => &["img_path", "product_id"],
        ListKind::Queries => &[
            "img_path",
            "product_id",
            "bbox_x",
            "bbox_y",
            "bbox_w",
            "bbox_h",
        ],
        ListKind::Product10k => &["name", "class"],
    }
}

/// Metadata per data row of `csv` (a list of `kind` already read strictly, so rows line up
/// with its samples).
pub fn read_list_metadata(csv: &Path, kind: ListKind) -> anyhow::Result<Vec<Metadata>> {
    let mut table = CsvTable::open(csv)?;
    let mut columns = Vec::new();
    for name in table.header().to_vec() {
        if consumed(kind).contains(&name.as_str()) {
            continue;
        }
        match check_column_name(&name) {
            Ok(()) => columns.push((name.clone(), table.column(&name)?)),
            Err(why) => eprintln!(
                "warning: {}: column {name:?} is not kept as metadata ({why})",
                csv.display()
            ),
        }
    }
    if columns.len() > MAX_COLUMNS {
        anyhow::bail!(
            "{}: {} metadata columns (at most {MAX_COLUMNS})",
            csv.display(),
            columns.len()
        );
    }
    let mut rows = Vec::new();
    let mut dropped = 0usize;
    let mut first_dropped = None;
    let mut failure = None;
    table.for_each_row(|row| {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                failure.get_or_insert(e);
                return;
            }
        };
        let mut metadata = Metadata::new();
        for (name, column) in &columns {
            let value = row.text(column);
            if value.is_empty() {
                continue;
            }
            match check_value(value) {
                Ok(()) => {
                    metadata.insert(name.clone(), value.to_string());
                }
                Err(why) => {
                    dropped += 1;
                    first_dropped
                        .get_or_insert_with(|| format!("line {} {name}: {why}", row.line()));
                }
            }
        }
        rows.push(metadata);
    });
    if let Some(e) = failure {
        return Err(e).with_context(|| format!("reading metadata from {}", csv.display()));
    }
    if let Some(first) = first_dropped {
        eprintln!(
            "warning: {}: {dropped} metadata cell(s) not kept (first: {first})",
            csv.display()
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_columns_become_metadata_and_bad_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("gallery.csv");
        let long = "x".repeat(2000);
        std::fs::write(
            &csv,
            format!(
                "img_path,product_id,category,Class Name (str),in_stock\n\
                 a.jpg,1,Fruit,Apple,true\n\
                 b.jpg,2,,Milk,{long}\n"
            ),
        )
        .unwrap();
        let rows = read_list_metadata(&csv, ListKind::Gallery).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get("category").map(String::as_str), Some("Fruit"));
        assert_eq!(rows[0].get("in_stock").map(String::as_str), Some("true"));
        assert_eq!(rows[0].len(), 2, "the badly named column is left out");
        assert!(rows[1].is_empty(), "empty and oversized cells are not set");
    }
}
