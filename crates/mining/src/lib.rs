//! Mining training pairs from Amazon reviews (SPEC "Mining pairs from Amazon reviews"): the
//! original author's dataset pipeline, whose scripts were never published, in five resumable
//! steps that pass Parquet and CSV files between them:
//!
//! 1. [`pairs`]: review + metadata dumps → products with review photos and catalogue images;
//! 2. [`features`]: embed every image, fetched over HTTP and never stored, snapshotting;
//! 3. [`filter`]: keep review photos similar enough to their product's catalogue images;
//! 4. [`download`]: fetch the kept images into a content-addressed folder;
//! 5. [`merge`]: categories → one `image_path,label` training list.
//!
//! The crate knows no compute backend: `features` takes any [`features::ImageEmbedder`], which
//! the CLI implements with a registry or exported model.

pub mod amazon_records;
pub mod download;
pub mod error;
pub mod feature_merge;
pub mod feature_store;
pub mod features;
pub mod fetch;
pub mod filter;
pub mod json_lines;
pub mod merge;
pub mod pairs;
pub mod pairs_table;
pub mod partial_files;
pub mod redirect_policy;
pub mod similarity_histogram;

pub use error::{MiningError, Result};
