//! visual-search-data: everything between files on disk and f32 batches, with no deep-learning
//! dependency.
//!
//! - [`formats`]: the challenge's CSVs (Product10K lists, dev-set gallery/queries) → [`Sample`]s.
//! - [`image`]: decode, crop, resize and normalise, matching PIL/torchvision.
//! - [`transform`], [`sampler`], [`loader`]: per-sample pipelines, epoch orders and the parallel
//!   bounded loader that yields [`loader::Batch`]es.
//! - [`check`], [`fashion_mnist`]: validating a dataset root; importing a real dataset anyone can
//!   install.

pub mod atomic_write;
pub mod augment;
pub mod check;
pub mod csv_table;
pub mod datasets;
pub mod error;
pub mod fashion_mnist;
pub mod file_check;
pub mod folder_manifest;
pub mod formats;
pub mod image;
pub mod loader;
pub mod output_file;
pub mod repeated_photo_transform;
pub mod root_containment;
pub mod sampler;
pub mod shard;
pub mod transform;
pub mod work_lock;

pub use error::{DataError, Result};
pub use formats::{BBox, Crop, Sample};
