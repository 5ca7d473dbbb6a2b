//! Errors of loading, exporting and running inference models.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    ModelDir { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] visual_search_data::DataError),
    #[error(transparent)]
    Weights(#[from] visual_search_model::weights::WeightError),
    #[error(transparent)]
    UnknownModel(#[from] visual_search_model::registry::UnknownModel),
    #[error(transparent)]
    UnknownDevice(#[from] visual_search_model::device::UnknownDevice),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("ONNX export: {0}")]
    Export(String),
    #[error("{0}")]
    Invalid(String),
}

impl InferenceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        InferenceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn model_dir(path: &Path, message: impl Into<String>) -> Self {
        InferenceError::ModelDir {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<ort::Error> for InferenceError {
    fn from(e: ort::Error) -> Self {
        InferenceError::Ort(e.to_string())
    }
}

pub type Result<T, E = InferenceError> = std::result::Result<T, E>;
