//! The one error type of the data crate.
//!
//! Every variant names the file (and where it applies the CSV line and column) so a user can go
//! straight to the problem; nothing here is a bare `io::Error` without its path.

use std::path::PathBuf;

/// Errors from reading CSVs, decoding images and loading batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CSV itself is malformed (bad quoting, ragged row, invalid UTF-8).
    #[error("{path}: line {line}: malformed CSV: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A column the format needs is not in the header.
    #[error("{path}: missing column `{column}` in header (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    /// A cell has a value the format does not allow.
    #[error("{path}: line {line}: column `{column}`: {message}")]
    BadValue {
        path: PathBuf,
        line: u64,
        column: String,
        message: String,
    },
    /// The image bytes could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    /// The image is larger than the decoded-pixel limit (decompression-bomb guard).
    #[error(
        "{path}: image is {width}x{height} ({} Mpx), over the limit of {} Mpx",
        (*width as u64 * *height as u64) / 1_000_000,
        max_pixels / 1_000_000
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// The file is larger than the encoded-size limit.
    #[error("{path}: file is {size} bytes, over the limit of {max_bytes} bytes")]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        max_bytes: u64,
    },
    /// A dataset-level problem (wrong layout, inconsistent files).
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
