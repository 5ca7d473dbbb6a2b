//! Product10K-style lists: `name,class,group` with `name` under `<root>/<prefix>`.
//!
//! `group` is optional (only `name` and `class` are needed to train); extra columns are ignored.

use std::path::{Path, PathBuf};

use super::{Crop, Sample};
use crate::csv_table::{CsvTable, Parsed, parse_rows};
use crate::error::Result;

/// One row of a Product10K list.
#[derive(Debug, Clone, PartialEq)]
pub struct Product10kRow {
    /// Image path relative to `<root>/<prefix>`.
    pub name: PathBuf,
    pub class: i64,
    pub group: Option<i64>,
    /// Line in the CSV (header = 1).
    pub line: u64,
}

/// Parses a Product10K CSV; a header problem is an error, bad rows are collected.
pub fn parse_product10k(csv_path: &Path) -> Result<Parsed<Product10kRow>> {
    let mut table = CsvTable::open(csv_path)?;
    let name = table.column("name")?;
    let class = table.column("class")?;
    let group = table.optional_column("group");
    Ok(parse_rows(&mut table, |row| {
        Ok(Product10kRow {
            name: row.relative_path(&name)?,
            class: row.integer(&class)?,
            group: match &group {
                Some(g) if !row.text(g).is_empty() => Some(row.integer(g)?),
                _ => None,
            },
            line: row.line(),
        })
    }))
}

/// Turns rows into samples whose paths are `<root>/<prefix>/<name>`.
pub fn product10k_samples(rows: &[Product10kRow], root: &Path, prefix: &str) -> Vec<Sample> {
    rows.iter()
        .map(|r| Sample {
            path: root.join(prefix).join(&r.name),
            label: r.class,
            crop: Crop::None,
        })
        .collect()
}

/// Reads `<root>/<list>` strictly (the first bad row is an error) into samples.
pub fn load_product10k(root: &Path, prefix: &str, list: &str) -> Result<Vec<Sample>> {
    let rows = parse_product10k(&root.join(list))?.into_strict()?;
    Ok(product10k_samples(&rows, root, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_table::temp_csv as csv;
    use crate::error::DataError;

    #[test]
    fn reads_by_header_name_in_any_order() {
        let f = csv("group,extra,class,name\n3,x,7,train/a.jpg\n4,y,8,train/b.jpg\n");
        let rows = parse_product10k(f.path()).unwrap().into_strict().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, PathBuf::from("train/a.jpg"));
        assert_eq!(
            (rows[0].class, rows[0].group, rows[0].line),
            (7, Some(3), 2)
        );
        assert_eq!(
            (rows[1].class, rows[1].group, rows[1].line),
            (8, Some(4), 3)
        );
    }

    #[test]
    fn missing_column_names_the_column() {
        let f = csv("name,group\na.jpg,1\n");
        let err = parse_product10k(f.path()).unwrap_err();
        assert!(matches!(&err, DataError::MissingColumn { column, .. } if column == "class"));
        assert!(err.to_string().contains("class"));
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let f = csv("name,class,group\na.jpg,1,0\nb.jpg,x,0\n../c.jpg,2,0\nd.jpg,3\n");
        let parsed = parse_product10k(f.path()).unwrap();
        assert_eq!(parsed.rows.len(), 1);
        let messages: Vec<String> = parsed.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("line 3") && messages[0].contains("`class`"));
        assert!(messages[1].contains("line 4") && messages[1].contains("`name`"));
        assert!(messages[2].contains("line 5") && messages[2].contains("fields"));
    }
}
