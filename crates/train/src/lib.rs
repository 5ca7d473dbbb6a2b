//! visual-search-train: everything that runs a model over data — embedding a list of images
//! (used by `embed`, `rank`, `eval` and validation) and the training loop of a phase with its
//! config, schedule, checkpoints and metrics log.

pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod embedding;
pub mod error;
pub mod export;
pub mod fused_adamw;
pub mod grads;
pub mod head;
pub mod labels;
pub mod metrics_log;
pub mod optimizer_step;
pub mod plots;
pub mod resume_point;
pub mod schedule;
pub mod soup;
pub mod train_model;
pub mod trainer;
pub mod training_data;
pub mod validation;

pub use error::TrainError;
