//! visual-search-inference: a model ready to embed images, whatever runs it.
//!
//! One home for inference, used by every command that embeds (`embed`, `rank`, `eval`,
//! `index`, `search`, `serve`, `mine features`) and by training's validation:
//! - [`model::InferenceModel`]: load a registry model + weights or an exported folder
//!   ([`model_dir`]) onto a device ([`device_choice`]: burn's devices or ONNX Runtime), with its
//!   [`model::Preprocessing`], and embed batches — NaN→0 and L2 normalisation happen in
//!   [`model::finish_rows`] and nowhere else;
//! - [`onnx`]: export of our own model definitions to ONNX (batch norm folded);
//! - [`ort_runtime`]: ONNX Runtime loaded at run time; [`onnx_cache`]: on-the-fly exports;
//! - [`test_time_flip`]: horizontal-flip test-time augmentation around any embedder.

pub mod batch_embedder;
pub mod batch_norm_folding;
pub mod device_choice;
pub mod error;
pub mod fingerprint;
pub mod forward_passes;
pub mod int8;
pub mod model;
pub mod model_dir;
pub mod onnx;
pub mod onnx_cache;
pub mod ort_runtime;
pub mod test_time_flip;

pub use batch_embedder::{BatchEmbedder, BurnEmbedder};
pub use device_choice::{DeviceChoice, Precision};
pub use error::{InferenceError, Result};
pub use model::{InferenceModel, LoadOptions, ModelRef, ModelSource, Preprocessing};

/// Largest input side accepted anywhere (a 4096² f32 image is 200 MB per batch row).
pub const MAX_INPUT_SIZE: usize = 4096;

/// visual-search's cache folder: `$XDG_CACHE_HOME/visual-search`, else
/// `~/.cache/visual-search` (weights, ONNX Runtime's library, ONNX exports).
pub fn cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("visual-search"))
}

/// The CPU device models are built on for export: flex when compiled in, else the first
/// compiled backend.
pub fn cpu_device() -> Result<burn::tensor::Device> {
    let name = if cfg!(feature = "flex") {
        "flex"
    } else {
        "auto"
    };
    Ok(visual_search_model::device::parse_device(name)?)
}
