//! visual-search-model: burn modules for image embedding (backbones, pooling, heads, losses)
//! and the import of their PyTorch weights.
//!
//! Which compute backends exist is decided by this crate's cargo features (`flex`, `tch`,
//! `cuda`, `wgpu`), set only by the binary; model code itself is backend-free (burn 0.22 picks
//! the backend from the runtime `Device`).

pub mod backbones;
pub mod compute_pool;
pub mod device;
pub mod embedder;
pub mod heads;
pub mod interpolate;
pub mod layers;
pub mod losses;
pub mod pooling;
pub mod pretrained;
pub mod registry;
pub mod train_ops;
pub mod weights;
