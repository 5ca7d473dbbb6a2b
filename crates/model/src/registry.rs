//! Models by name: architecture, the input size it was trained at and its pixel statistics, so a
//! config or command names a model (`efficientnet_lite0`, `convnext_xxlarge_clip`,
//! `vit_b16_clip`, `resnet50`) instead of restating its preprocessing.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::backbones::Backbone;
use crate::backbones::convnext::{ConvNextConfig, ConvNextWeights};
use crate::backbones::efficientnet_lite::{EfficientNetLiteConfig, EfficientNetLiteWeights};
use crate::backbones::resnet::{ResNetConfig, ResNetWeights};
use crate::backbones::vit::{VitConfig, VitWeights};
use crate::pooling::PoolingKind;
use crate::weights::WeightMapping;

/// OpenAI CLIP pixel statistics.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_7];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `(x - 127) / 128` on 0..255 pixels, as 0..1-scale mean/std.
pub const CENTERED_MEAN: [f32; 3] = [127.0 / 255.0; 3];
pub const CENTERED_STD: [f32; 3] = [128.0 / 255.0; 3];

/// An architecture with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Architecture {
    EfficientNetLite(EfficientNetLiteConfig),
    ConvNext(ConvNextConfig),
    Vit(VitConfig),
    ResNet(ResNetConfig),
}

/// A named model: architecture plus the preprocessing its weights expect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub architecture: Architecture,
    /// Side of the square input the weights were trained at.
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Error for a name the registry does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown model `{name}`; known models: {known}", name = .0, known = model_names().join(", "))]
pub struct UnknownModel(pub String);

const CONVNEXT_SIZES: [&str; 10] = [
    "atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge", "xxlarge",
];

/// Every registered name.
pub fn model_names() -> Vec<String> {
    let mut names: Vec<String> = (0..5).map(|i| format!("efficientnet_lite{i}")).collect();
    names.extend(CONVNEXT_SIZES.iter().map(|s| format!("convnext_{s}")));
    names.extend(
        [
            "convnext_base_clip",
            "convnext_base_w_clip",
            "convnext_xxlarge_clip",
        ]
        .map(String::from),
    );
    for v in ["b32", "b16", "l14", "h14"] {
        names.push(format!("vit_{v}_clip"));
        names.push(format!("vit_{v}_clip_quickgelu"));
    }
    names.extend([18, 34, 50, 101, 152].map(|d| format!("resnet{d}")));
    names.extend(
        [
            "tiny_efficientnet_lite",
            "tiny_convnext",
            "tiny_convnext_clip",
            "tiny_vit",
            "tiny_resnet",
        ]
        .map(String::from),
    );
    names
}

/// Looks a model up by name.
pub fn lookup(name: &str) -> Result<ModelSpec, UnknownModel> {
    let unknown = || UnknownModel(name.to_string());
    let spec = |architecture, input_size, mean, std| ModelSpec {
        name: name.to_string(),
        architecture,
        input_size,
        mean,
        std,
    };
    if let Some(i) = name.strip_prefix("efficientnet_lite") {
        let index: usize = i.parse().map_err(|_| unknown())?;
        let config = EfficientNetLiteConfig::lite(index).ok_or_else(unknown)?;
        let size = [224, 240, 260, 280, 300][index];
        return Ok(spec(
            Architecture::EfficientNetLite(config),
            size,
            CENTERED_MEAN,
            CENTERED_STD,
        ));
    }
    if let Some(rest) = name.strip_prefix("convnext_") {
        let (size, clip) = match rest.strip_suffix("_clip") {
            Some(s) => (s, true),
            None => (rest, false),
        };
        if !clip {
            let config = ConvNextConfig::named(size).ok_or_else(unknown)?;
            return Ok(spec(
                Architecture::ConvNext(config),
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ));
        }
        // OpenCLIP configs: trunk size, projection width, image size.
        let (trunk, embed, image) = match size {
            "base" => ("base", 512, 224),
            "base_w" => ("base", 640, 256),
            "xxlarge" => ("xxlarge", 1024, 256),
            _ => return Err(unknown()),
        };
        let mut config = ConvNextConfig::named(trunk).ok_or_else(unknown)?;
        config.clip_embed_dim = Some(embed);
        return Ok(spec(
            Architecture::ConvNext(config),
            image,
            CLIP_MEAN,
            CLIP_STD,
        ));
    }
    if let Some(rest) = name.strip_prefix("vit_") {
        let (rest, quick) = match rest.strip_suffix("_quickgelu") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let variant = rest.strip_suffix("_clip").ok_or_else(unknown)?;
        let mut config = VitConfig::named(variant).ok_or_else(unknown)?;
        config.quick_gelu = quick;
        return Ok(spec(Architecture::Vit(config), 224, CLIP_MEAN, CLIP_STD));
    }
    if let Some(d) = name.strip_prefix("resnet") {
        let config = ResNetConfig::depth(d.parse().map_err(|_| unknown())?).ok_or_else(unknown)?;
        return Ok(spec(
            Architecture::ResNet(config),
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ));
    }
    Ok(match name {
        "tiny_efficientnet_lite" => spec(
            Architecture::EfficientNetLite(EfficientNetLiteConfig::tiny()),
            32,
            CENTERED_MEAN,
            CENTERED_STD,
        ),
        "tiny_convnext" => spec(
            Architecture::ConvNext(ConvNextConfig::tiny_test()),
            32,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "tiny_convnext_clip" => {
            let mut c = ConvNextConfig::tiny_test();
            c.clip_embed_dim = Some(12);
            spec(Architecture::ConvNext(c), 32, CLIP_MEAN, CLIP_STD)
        }
        "tiny_vit" => spec(
            Architecture::Vit(VitConfig::tiny_test()),
            32,
            CLIP_MEAN,
            CLIP_STD,
        ),
        "tiny_resnet" => spec(
            Architecture::ResNet(ResNetConfig::tiny_test()),
            32,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        _ => return Err(unknown()),
    })
}

/// Choices made when building a backbone from a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOptions {
    /// Input side the model will see (ViT position embeddings are laid out for it).
    pub image_size: usize,
    /// Keep the ImageNet classifier (for checking real weights).
    pub with_classifier: bool,
    /// Replace average pooling with GeM (CNNs).
    pub gem: bool,
    pub drop_path_rate: f64,
}

impl ModelSpec {
    /// Options for this model at its trained size, without classifier.
    pub fn default_options(&self) -> BuildOptions {
        BuildOptions {
            image_size: self.input_size,
            with_classifier: false,
            gem: false,
            drop_path_rate: 0.0,
        }
    }

    /// Builds the backbone with freshly initialised weights.
    pub fn build(&self, options: &BuildOptions, device: &Device) -> Backbone {
        let pooling = if options.gem {
            PoolingKind::Gem
        } else {
            PoolingKind::Avg
        };
        // The ImageNet classifier: the family's own width, or 1000 classes.
        let classes = |own: Option<usize>| options.with_classifier.then(|| own.unwrap_or(1000));
        let rate = options.drop_path_rate;
        match &self.architecture {
            Architecture::EfficientNetLite(c) => Backbone::EfficientNetLite(
                EfficientNetLiteConfig {
                    pooling,
                    drop_connect_rate: rate,
                    num_classes: classes(c.num_classes),
                    ..c.clone()
                }
                .init(device),
            ),
            Architecture::ConvNext(c) => Backbone::ConvNext(
                ConvNextConfig {
                    pooling,
                    drop_path_rate: rate,
                    num_classes: classes(c.num_classes),
                    ..c.clone()
                }
                .init(device),
            ),
            Architecture::Vit(c) => Backbone::Vit(
                VitConfig {
                    image_size: options.image_size,
                    drop_path_rate: rate,
                    ..c.clone()
                }
                .init(device),
            ),
            Architecture::ResNet(c) => Backbone::ResNet(
                ResNetConfig {
                    pooling,
                    drop_path_rate: rate,
                    num_classes: classes(c.num_classes),
                    ..c.clone()
                }
                .init(device),
            ),
        }
    }

    /// How this architecture's pretrained files name their tensors.
    pub fn weight_mapping(&self, options: &BuildOptions) -> Box<dyn WeightMapping> {
        match &self.architecture {
            Architecture::EfficientNetLite(_) => Box::new(EfficientNetLiteWeights {
                with_classifier: options.with_classifier,
            }),
            Architecture::ConvNext(_) => Box::new(ConvNextWeights {
                with_classifier: options.with_classifier,
            }),
            Architecture::Vit(c) => Box::new(VitWeights {
                antialias: c.pos_embed_antialias,
            }),
            Architecture::ResNet(_) => Box::new(ResNetWeights {
                with_classifier: options.with_classifier,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves() {
        for name in model_names() {
            let spec = lookup(&name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(spec.name, name);
        }
        assert!(
            lookup("resnet51")
                .unwrap_err()
                .to_string()
                .contains("known models")
        );
        assert!(lookup("vit_b16").is_err());
    }
}
