//! The mining pipeline's errors: each names the file, URL or line it is about.

use std::path::{Path, PathBuf};

/// Anything that stops a mining step.
#[derive(Debug, thiserror::Error)]
pub enum MiningError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error(transparent)]
    Data(#[from] visual_search_data::DataError),
}

impl MiningError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        MiningError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn parquet(path: &Path, e: impl std::fmt::Display) -> Self {
        MiningError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        MiningError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, MiningError>;
