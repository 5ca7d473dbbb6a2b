//! visual-search-train: everything that runs a model over data — embedding a list of images
//! (used by `embed`, `rank`, `eval` and validation during training) and, in later modules, the
//! training loop itself.

pub mod embedding;
