//! ONNX export of our own model definitions (not of a PyTorch trace): each backbone family is
//! written op by op from the burn module's weights, batch norm folded into the convolution
//! before it, and the L2-normalised embedding as the output. Opset 17, input
//! `input [batch, 3, size, size]`, output `embedding [batch, dim]`, batch axis dynamic.
//!
//! Why hand-written graphs: burn has no ONNX exporter, and writing the graph ourselves lets it
//! take the exact shape ONNX Runtime's optimiser recognises (fused Conv+Clip, Gelu,
//! LayerNormalization, MatMul+Add), which is where its speed comes from.

mod cnn;
mod convnext;
mod graph;
mod params;
pub mod proto;
pub mod quantize;
mod vit;

use std::path::Path;

use prost::Message;
use visual_search_model::backbones::Backbone;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::Architecture;

pub use graph::{INPUT_NAME, OPSET, OUTPUT_NAME};
pub use params::batch_norm_affine;

use crate::error::{InferenceError, Result};
use cnn::Feature;
use graph::GraphBuilder;

/// Protobuf messages cannot exceed 2 GiB; larger models would need external data files.
const MAX_INLINE_BYTES: usize = 2_000_000_000;

/// Builds the ONNX model of `model` (already laid out for `size`, see
/// [`EmbeddingModel::with_image_size`]) for `size × size` inputs.
pub fn export_model(
    model: &EmbeddingModel,
    architecture: &Architecture,
    size: usize,
    description: &str,
) -> Result<proto::ModelProto> {
    let mut g = GraphBuilder::new();
    let x = Feature {
        name: INPUT_NAME.to_string(),
        h: size,
        w: size,
    };
    let features = match (&model.backbone, architecture) {
        (Backbone::EfficientNetLite(m), _) => cnn::efficientnet_lite(&mut g, m, x),
        (Backbone::ResNet(m), _) => cnn::resnet(&mut g, m, x),
        (Backbone::ConvNext(m), Architecture::ConvNext(c)) => {
            convnext::convnext(&mut g, m, x, c.norm_eps)
        }
        (Backbone::ConvNext(m), _) => convnext::convnext(&mut g, m, x, 1e-6),
        (Backbone::Vit(m), _) => {
            if m.image_size() != size {
                return Err(InferenceError::Export(format!(
                    "the ViT is laid out for {} px, not {size}",
                    m.image_size()
                )));
            }
            vit::vit(&mut g, m, x)
        }
    };
    let features = match &model.neck {
        Some(neck) => convnext::linear_layer(&mut g, &features, neck),
        None => features,
    };
    let embedding = g.l2_normalize(&features);
    if g.weight_bytes() > MAX_INLINE_BYTES {
        return Err(InferenceError::Export(format!(
            "{} bytes of weights do not fit one ONNX protobuf (2 GiB)",
            g.weight_bytes()
        )));
    }
    Ok(g.finish(
        INPUT_NAME,
        size,
        &embedding,
        model.dim(),
        description.to_string(),
    ))
}

/// Encodes and writes `model` to `path` atomically.
pub fn write_model(model: &proto::ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    Ok(visual_search_data::atomic_write::write_atomically(
        path, &bytes,
    )?)
}
