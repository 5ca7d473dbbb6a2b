//! Errors of the retrieval crate; file errors name the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl RetrievalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        RetrievalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &std::path::Path, message: impl Into<String>) -> Self {
        RetrievalError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<visual_search_data::DataError> for RetrievalError {
    fn from(e: visual_search_data::DataError) -> Self {
        use visual_search_data::DataError;
        match e {
            DataError::Io { path, source } => RetrievalError::Io { path, source },
            DataError::Invalid { path, message } => RetrievalError::Format { path, message },
            other => RetrievalError::Invalid(other.to_string()),
        }
    }
}
