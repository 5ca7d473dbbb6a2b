//! Batches split into forward passes of a cache-sized number of images on the CPU.
//!
//! A CNN's activations are large: EfficientNet-Lite0's widest layer holds 4.8 MB per image at
//! 224 px, 154 MB for a batch of 32 — far more than a CPU's caches, so every layer streamed its
//! input and output through memory. In passes of 8 images (38 MB) a layer's output is mostly
//! still in the last-level cache when the next layer reads it. On a 2-core AMD EPYC (32 MB L3),
//! flex's Lite0 batch of 32 runs 5 % faster this way, ConvNeXt-tiny 2 %, ResNet-50 and ViT-B/32
//! within the noise (BENCHMARKS.md, "Forward passes of 8 images on flex"). Inference has no
//! batch statistics, so each image's features do not depend on the others in its pass. Accelerators keep whole
//! batches (they want them large), and so does ONNX Runtime, which plans its own memory: in
//! passes of 8 it gained on Lite0 and ConvNeXt-tiny but lost on ResNet-50 and ViT-B/32.
//!
//! A vision transformer keeps whole batches on the CPU too: its activations are a few tokens
//! per image (50 × 3,072 floats at the widest for ViT-B/32), and its linear layers run faster
//! on many rows at once — one f32 block of 800 token rows per thread instead of two of 200
//! (the `gemm` crate packs the weight again for every block): ViT-B/32's batch of 32 embedded
//! 11 % faster on an AVX-512 Xeon (BENCHMARKS.md, "Whole batches through ViT on flex"), with
//! the same bits out.

use burn::tensor::Device;
use visual_search_model::backbones::Backbone;
use visual_search_model::device::is_flex;
use visual_search_model::embedder::EmbeddingModel;

/// Images per forward pass on the CPU, unless the machine has more compute threads.
pub const CPU_IMAGES_PER_PASS: usize = 8;

/// The most images one forward pass on `device` takes: on flex [`CPU_IMAGES_PER_PASS`], or one
/// per compute thread on a larger machine (so that every thread still has an image); on an
/// accelerator, and for a vision transformer anywhere, the whole batch.
pub fn images_per_pass(device: &Device, model: &EmbeddingModel) -> usize {
    if is_flex(device) && !matches!(model.backbone, Backbone::Vit(_)) {
        CPU_IMAGES_PER_PASS.max(rayon::current_num_threads())
    } else {
        usize::MAX
    }
}

/// `forward` over `pixels` (`n` images, `pixels.len() / n` values each) in passes of at most
/// `per_pass` images, in order; the passes' outputs concatenated. A batch that fits one pass is
/// handed over as it is (no copy).
pub fn in_passes(
    pixels: Vec<f32>,
    n: usize,
    per_pass: usize,
    mut forward: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
) -> Vec<f32> {
    if n <= per_pass {
        return forward(pixels, n);
    }
    let per_image = pixels.len() / n;
    let mut out = Vec::new();
    for pass in pixels.chunks(per_pass * per_image) {
        out.extend(forward(pass.to_vec(), pass.len() / per_image));
    }
    out
}
