//! Backbone families, one file each, and the `Backbone` enum the rest of the system uses.

pub mod convnext;
pub mod efficientnet_lite;
pub mod resnet;
pub mod vit;

use burn::module::Module;
use burn::tensor::Tensor;

use convnext::ConvNext;
use efficientnet_lite::EfficientNetLite;
use resnet::ResNet;
use vit::VisionTransformer;

/// Any supported image backbone.
// One Backbone exists per model, so the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    EfficientNetLite(EfficientNetLite),
    ConvNext(ConvNext),
    Vit(VisionTransformer),
    ResNet(ResNet),
}

impl Backbone {
    /// Pooled features `[B, out_dim]` of normalised images `[B, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Backbone::EfficientNetLite(m) => m.forward_features(x),
            Backbone::ConvNext(m) => m.forward_features(x),
            Backbone::Vit(m) => m.forward_features(x),
            Backbone::ResNet(m) => m.forward_features(x),
        }
    }

    /// ImageNet logits from features, for backbones built with their classifier.
    pub fn classify(&self, features: Tensor<2>) -> Option<Tensor<2>> {
        match self {
            Backbone::EfficientNetLite(m) => m.classify(features),
            Backbone::ConvNext(m) => m.classify(features),
            Backbone::Vit(_) => None,
            Backbone::ResNet(m) => m.classify(features),
        }
    }

    /// The same backbone prepared for `size` x `size` inputs (ViT position embeddings are
    /// resampled; convolutional backbones take any size as they are).
    pub fn with_image_size(self, size: usize) -> Self {
        match self {
            Backbone::Vit(m) => Backbone::Vit(m.with_image_size(size)),
            other => other,
        }
    }

    pub fn out_dim(&self) -> usize {
        match self {
            Backbone::EfficientNetLite(m) => m.out_dim(),
            Backbone::ConvNext(m) => m.out_dim(),
            Backbone::Vit(m) => m.out_dim(),
            Backbone::ResNet(m) => m.out_dim(),
        }
    }
}
