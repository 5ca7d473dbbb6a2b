//! Errors of weight import; each names the file and every offending tensor.

use std::path::PathBuf;

/// Errors from reading or applying a weight file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error(
        "{path}: weights do not fit the model{}",
        describe(missing, unexpected, mis_shaped)
    )]
    Mismatch {
        path: PathBuf,
        /// Model parameters with no tensor in the file.
        missing: Vec<String>,
        /// File tensors no parameter took.
        unexpected: Vec<String>,
        /// `name: file shape vs model shape`.
        mis_shaped: Vec<String>,
    },
}

fn describe(missing: &[String], unexpected: &[String], mis_shaped: &[String]) -> String {
    const SHOW: usize = 20;
    let mut out = String::new();
    for (what, names) in [
        ("missing from the file", missing),
        ("in the file but not in the model", unexpected),
        ("with the wrong shape", mis_shaped),
    ] {
        if names.is_empty() {
            continue;
        }
        out += &format!("\n  {} tensor(s) {what}:", names.len());
        for n in names.iter().take(SHOW) {
            out += &format!("\n    {n}");
        }
        if names.len() > SHOW {
            out += &format!("\n    ... and {} more", names.len() - SHOW);
        }
    }
    out
}
