//! Importing public weights: reading tensor files (safetensors, PyTorch zip, legacy pickle) and
//! applying them to burn modules under the PyTorch parameter names.
//!
//! Module fields are named after the PyTorch parameters they hold, so a module path such as
//! `stages.1.blocks.0.conv_dw.weight` *is* the timm key; each backbone family only maps the few
//! names that cannot be field names (`stem.0` → `stem_conv`) and says which file tensors to
//! ignore (a classifier, the text tower of a CLIP checkpoint).

mod apply;
mod error;
mod tensor_file;

pub use apply::{WeightMapping, load_weights};
pub use error::WeightError;
pub use tensor_file::{TensorEntry, TensorFile, strip_common_prefixes};
