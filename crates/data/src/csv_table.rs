//! Reading challenge CSVs by header name.
//!
//! The challenge's CSVs come in several column orders and with extra id columns
//! (`seller_img_id`, `user_img_id`, ...), so every reader looks columns up by name and ignores the
//! rest. Each row knows its line number so errors can name file, line and column.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::error::{DataError, Result};

/// An open CSV file with its header.
pub struct CsvTable {
    path: PathBuf,
    header: Vec<String>,
    reader: csv::Reader<File>,
}

/// A column found in the header: its position and name (for error messages).
#[derive(Debug, Clone)]
pub struct Column {
    index: usize,
    name: String,
}

/// One data row with its 1-based line number in the file (the header is line 1).
pub struct CsvRow<'a> {
    path: &'a Path,
    line: u64,
    record: csv::StringRecord,
}

impl CsvTable {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| csv_error(path, &e))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        Ok(CsvTable {
            path: path.to_path_buf(),
            header,
            reader,
        })
    }

    /// The file this table reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trimmed header names.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// A column that must be present.
    pub fn column(&self, name: &str) -> Result<Column> {
        self.optional_column(name)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self.header.join(","),
            })
    }

    /// A column that may be absent.
    pub fn optional_column(&self, name: &str) -> Option<Column> {
        self.header
            .iter()
            .position(|h| h == name)
            .map(|index| Column {
                index,
                name: name.to_string(),
            })
    }

    /// Calls `f` on each data row; a malformed row is passed as an error, and reading goes on.
    pub fn for_each_row(&mut self, mut f: impl FnMut(Result<CsvRow<'_>>)) {
        let path = self.path.clone();
        let mut record = csv::StringRecord::new();
        loop {
            match self.reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    f(Ok(CsvRow {
                        path: &path,
                        line,
                        record: record.clone(),
                    }));
                }
                Err(e) => {
                    let fatal = matches!(e.kind(), csv::ErrorKind::Io(_));
                    f(Err(csv_error(&path, &e)));
                    if fatal {
                        break;
                    }
                }
            }
        }
    }
}

fn csv_error(path: &Path, e: &csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("row has {len} fields, the header has {expected_len}"),
        _ => e.to_string(),
    };
    DataError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

impl CsvRow<'_> {
    /// The 1-based line number of this row.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The trimmed text of a cell.
    pub fn text(&self, column: &Column) -> &str {
        self.record.get(column.index).unwrap_or("").trim()
    }

    /// An error about a cell of this row.
    pub fn error(&self, column: &Column, message: impl Into<String>) -> DataError {
        DataError::BadValue {
            path: self.path.to_path_buf(),
            line: self.line,
            column: column.name.clone(),
            message: message.into(),
        }
    }

    /// A cell that must hold an integer.
    pub fn integer(&self, column: &Column) -> Result<i64> {
        let text = self.text(column);
        text.parse::<i64>()
            .map_err(|_| self.error(column, format!("expected an integer, found {text:?}")))
    }

    /// A cell that may be empty or hold a finite number.
    pub fn optional_number(&self, column: &Column) -> Result<Option<f64>> {
        let text = self.text(column);
        if text.is_empty() || text.eq_ignore_ascii_case("nan") {
            return Ok(None);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.error(column, format!("expected a number, found {text:?}"))),
        }
    }

    /// A cell holding a path relative to the dataset root, which must stay inside it.
    pub fn relative_path(&self, column: &Column) -> Result<PathBuf> {
        safe_relative_path(self.text(column)).map_err(|m| self.error(column, m))
    }
}

/// Checks that `text` is a relative path that cannot escape the folder it is joined to.
pub fn safe_relative_path(text: &str) -> std::result::Result<PathBuf, String> {
    if text.is_empty() {
        return Err("empty path".to_string());
    }
    let path = Path::new(text);
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "path {text:?} uses `..` and could escape the dataset root"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path {text:?} is absolute; paths must be relative to the dataset root"
                ));
            }
        }
    }
    Ok(path.to_path_buf())
}

/// Rows that parsed and the errors of the rows that did not, in file order.
#[derive(Debug)]
pub struct Parsed<T> {
    pub rows: Vec<T>,
    pub errors: Vec<DataError>,
}

impl<T> Parsed<T> {
    /// All rows, or the first error if any row was bad.
    pub fn into_strict(self) -> Result<Vec<T>> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.rows),
        }
    }
}

/// Runs `parse` over every row, collecting rows and errors.
pub(crate) fn parse_rows<T>(
    table: &mut CsvTable,
    mut parse: impl FnMut(&CsvRow<'_>) -> Result<T>,
) -> Parsed<T> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    table.for_each_row(|row| match row.and_then(|r| parse(&r)) {
        Ok(v) => rows.push(v),
        Err(e) => errors.push(e),
    });
    Parsed { rows, errors }
}

/// A temporary CSV file holding `text` (for the readers' tests).
#[cfg(test)]
pub(crate) fn temp_csv(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write temp file");
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_paths() {
        assert!(safe_relative_path("a/b.jpg").is_ok());
        assert!(safe_relative_path("./a.jpg").is_ok());
        assert!(safe_relative_path("../a.jpg").unwrap_err().contains(".."));
        assert!(safe_relative_path("a/../../b.jpg").is_err());
        assert!(
            safe_relative_path("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(safe_relative_path("").is_err());
    }
}
