//! Mined-pair lists (SPEC "Data formats"): `image_path,label`, paths relative to the list's image
//! root. Their labels are product ids of another source (the Amazon-review mining pipeline), so
//! a training set that mixes them with Product10K shifts them by a label offset (the original
//! used +10,000) to keep the two label spaces apart. Extra columns are ignored.

use std::path::{Path, PathBuf};

use super::{Crop, Sample};
use crate::csv_table::{CsvTable, Parsed, parse_rows};
use crate::error::{DataError, Result};

/// One row of a mined-pair list.
#[derive(Debug, Clone, PartialEq)]
pub struct MinedPairRow {
    /// Image path relative to the image root.
    pub image_path: PathBuf,
    pub label: i64,
    /// Line in the CSV (header = 1).
    pub line: u64,
}

/// Parses a mined-pair CSV; a header problem is an error, bad rows are collected.
pub fn parse_mined_pairs(csv_path: &Path) -> Result<Parsed<MinedPairRow>> {
    let mut table = CsvTable::open(csv_path)?;
    let image_path = table.column("image_path")?;
    let label = table.column("label")?;
    Ok(parse_rows(&mut table, |row| {
        Ok(MinedPairRow {
            image_path: row.relative_path(&image_path)?,
            label: row.integer(&label)?,
            line: row.line(),
        })
    }))
}

/// Reads `csv_path` strictly into samples under `root` with `label + label_offset`; an offset
/// that overflows is an error naming the row.
pub fn load_mined_pairs(csv_path: &Path, root: &Path, label_offset: i64) -> Result<Vec<Sample>> {
    let rows = parse_mined_pairs(csv_path)?.into_strict()?;
    rows.iter()
        .map(|r| {
            let label = r
                .label
                .checked_add(label_offset)
                .ok_or_else(|| DataError::BadValue {
                    path: csv_path.to_path_buf(),
                    line: r.line,
                    column: "label".into(),
                    message: format!("{} + offset {label_offset} overflows", r.label),
                })?;
            Ok(Sample {
                path: root.join(&r.image_path),
                label,
                crop: Crop::None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_table::temp_csv as csv;

    #[test]
    fn labels_are_offset_and_paths_joined_to_the_root() {
        let f = csv("label,image_path,score\n3,a/x.jpg,0.7\n5,b.jpg,0.6\n");
        let samples = load_mined_pairs(f.path(), Path::new("/imgs"), 10_000).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].path, PathBuf::from("/imgs/a/x.jpg"));
        assert_eq!((samples[0].label, samples[1].label), (10_003, 10_005));
    }

    #[test]
    fn bad_rows_and_headers_name_file_line_and_column() {
        let f = csv("image_path,label\na.jpg,1\n../b.jpg,2\n");
        let err = load_mined_pairs(f.path(), Path::new("r"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("image_path"),
            "{err}"
        );
        let f = csv("path,label\na.jpg,1\n");
        let err = load_mined_pairs(f.path(), Path::new("r"), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image_path"), "{err}");
        let f = csv("image_path,label\na.jpg,9223372036854775807\n");
        let err = load_mined_pairs(f.path(), Path::new("r"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("overflows"), "{err}");
    }
}
