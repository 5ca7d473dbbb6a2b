//! Errors of training and evaluation runs.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] visual_search_data::DataError),
    #[error(transparent)]
    Weights(#[from] visual_search_model::weights::WeightError),
    #[error(transparent)]
    Inference(#[from] visual_search_inference::InferenceError),
    #[error(transparent)]
    Retrieval(#[from] visual_search_retrieval::RetrievalError),
    #[error("{path}: checkpoint: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "training stopped at step {step}: the loss is {value} (not finite); nothing was saved from this step. \
         Lower optim.lr_head, check the data, or resume from the last checkpoint"
    )]
    NonFiniteLoss { step: usize, value: f32 },
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
