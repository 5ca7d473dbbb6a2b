//! OpenCLIP `VisionTransformer` with its parameter names (`conv1`, `class_embedding`,
//! `positional_embedding`, `ln_pre`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight,
//! attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_post`, `proj`): pre-norm blocks, class-token
//! pooling after `ln_post`, then the projection.
//!
//! The position-embedding grid belongs to one input size. A model is built for the size it will
//! see, and weights trained at another size are resampled on load with bicubic interpolation
//! (OpenCLIP's `resize_pos_embed`), so 224 → 256 → 272 works as in the challenge recipe.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::interpolate::bicubic_resize;
use crate::layers::{
    conv, drop_path, drop_path_applies, layer_norm, linear, linear_add, linear_gelu, matmul_rows,
    quick_gelu,
};
use crate::train_ops::multi_head_attention;
use crate::weights::WeightMapping;

/// OpenCLIP's LayerNorm epsilon (every norm of the tower).
const LN_EPS: f64 = 1e-5;

/// Sizes of one OpenCLIP ViT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    /// Output of `proj` (the CLIP embedding); `None` keeps `ln_post`'s class token.
    pub output_dim: Option<usize>,
    /// OpenAI weights use QuickGELU; LAION/OpenCLIP-trained ones GELU.
    pub quick_gelu: bool,
    /// Layer scale (`ls_1`, `ls_2`) init, when the model has it.
    pub ls_init: Option<f64>,
    pub drop_path_rate: f64,
    /// Resample position embeddings with PyTorch's antialiased bicubic (OpenCLIP's default).
    pub pos_embed_antialias: bool,
}

impl VitConfig {
    /// `b32`, `b16`, `l14`, `h14` at their trained size (224).
    pub fn named(name: &str) -> Option<Self> {
        let (patch, width, layers, heads, out) = match name {
            "b32" => (32, 768, 12, 12, 512),
            "b16" => (16, 768, 12, 12, 512),
            "l14" => (14, 1024, 24, 16, 768),
            "h14" => (14, 1280, 32, 16, 1024),
            _ => return None,
        };
        Some(VitConfig {
            image_size: 224,
            patch_size: patch,
            width,
            layers,
            heads,
            mlp_ratio: 4.0,
            output_dim: Some(out),
            quick_gelu: false,
            ls_init: None,
            drop_path_rate: 0.0,
            pos_embed_antialias: true,
        })
    }

    /// A tiny ViT for tests (32 px, 8 px patches).
    pub fn tiny_test() -> Self {
        VitConfig {
            image_size: 32,
            patch_size: 8,
            width: 16,
            layers: 2,
            heads: 2,
            mlp_ratio: 2.0,
            output_dim: Some(12),
            quick_gelu: false,
            ls_init: None,
            drop_path_rate: 0.0,
            pos_embed_antialias: true,
        }
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn init(&self, device: &Device) -> VisionTransformer {
        let scale = (self.width as f64).powf(-0.5);
        let ln = |d: usize| LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device);
        let hidden = (self.width as f64 * self.mlp_ratio) as usize;
        let tokens = self.grid() * self.grid() + 1;
        let resblocks = (0..self.layers)
            .map(|i| {
                let rate = if self.layers > 1 {
                    self.drop_path_rate * i as f64 / (self.layers - 1) as f64
                } else {
                    0.0
                };
                ResidualAttentionBlock {
                    ln_1: ln(self.width),
                    attn: Attention {
                        in_proj_weight: Param::from_tensor(Tensor::random(
                            [3 * self.width, self.width],
                            Distribution::Uniform(-scale, scale),
                            device,
                        )),
                        in_proj_bias: Param::from_tensor(Tensor::zeros([3 * self.width], device)),
                        out_proj: LinearConfig::new(self.width, self.width).init(device),
                        heads: self.heads,
                    },
                    ls_1: self.ls_init.map(|v| LayerScale {
                        gamma: Param::from_tensor(Tensor::full([self.width], v, device)),
                    }),
                    ln_2: ln(self.width),
                    mlp: ClipMlp {
                        c_fc: LinearConfig::new(self.width, hidden).init(device),
                        c_proj: LinearConfig::new(hidden, self.width).init(device),
                        quick_gelu: self.quick_gelu,
                    },
                    ls_2: self.ls_init.map(|v| LayerScale {
                        gamma: Param::from_tensor(Tensor::full([self.width], v, device)),
                    }),
                    drop_path: rate,
                }
            })
            .collect();
        VisionTransformer {
            conv1: Conv2dConfig::new([3, self.width], [self.patch_size, self.patch_size])
                .with_stride([self.patch_size, self.patch_size])
                .with_bias(false)
                .init(device),
            class_embedding: Param::from_tensor(Tensor::random(
                [self.width],
                Distribution::Normal(0.0, scale),
                device,
            )),
            positional_embedding: Param::from_tensor(Tensor::random(
                [tokens, self.width],
                Distribution::Normal(0.0, scale),
                device,
            )),
            ln_pre: ln(self.width),
            transformer: Transformer { resblocks },
            ln_post: ln(self.width),
            proj: self.output_dim.map(|d| {
                Param::from_tensor(Tensor::random(
                    [self.width, d],
                    Distribution::Normal(0.0, scale),
                    device,
                ))
            }),
            patch_size: self.patch_size,
            pos_embed_antialias: self.pos_embed_antialias,
        }
    }
}

/// Multi-head self-attention with PyTorch `nn.MultiheadAttention`'s packed parameters.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[3 * width, width]`: q, k, v projections stacked (PyTorch layout).
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub heads: usize,
}

impl Attention {
    /// The heads' outputs side by side, before `out_proj`.
    fn attend(&self, x: Tensor<3>) -> Tensor<3> {
        let qkv = matmul_rows(
            x,
            self.in_proj_weight.val().transpose(),
            Some(self.in_proj_bias.val()),
        );
        multi_head_attention(qkv, self.heads)
    }
}

/// `c_fc` → GELU (or QuickGELU) → `c_proj`.
#[derive(Module, Debug)]
pub struct ClipMlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
    pub quick_gelu: bool,
}

impl ClipMlp {
    /// The activated hidden layer, before `c_proj`.
    fn hidden(&self, x: Tensor<3>) -> Tensor<3> {
        if self.quick_gelu {
            quick_gelu(linear(&self.c_fc, x))
        } else {
            linear_gelu(&self.c_fc, x)
        }
    }
}

/// Per-channel residual-branch scale.
#[derive(Module, Debug)]
pub struct LayerScale {
    pub gamma: Param<Tensor<1>>,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ls_1: Option<LayerScale>,
    pub ln_2: LayerNorm,
    pub mlp: ClipMlp,
    pub ls_2: Option<LayerScale>,
    pub drop_path: f64,
}

fn scaled(ls: &Option<LayerScale>, x: Tensor<3>) -> Tensor<3> {
    match ls {
        Some(ls) => x.mul(ls.gamma.val().reshape([1, 1, -1])),
        None => x,
    }
}

impl ResidualAttentionBlock {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let a = self.attn.attend(layer_norm(&self.ln_1, x.clone(), LN_EPS));
        let x = self.add_branch(x, a, &self.attn.out_proj, &self.ls_1);
        let m = self.mlp.hidden(layer_norm(&self.ln_2, x.clone(), LN_EPS));
        self.add_branch(x, m, &self.mlp.c_proj, &self.ls_2)
    }

    /// `x + drop_path(ls · proj(hidden))`. Without a layer scale or stochastic depth (every
    /// inference pass of the OpenCLIP towers), the projection accumulates onto `x` in one
    /// pass ([`linear_add`]).
    fn add_branch(
        &self,
        x: Tensor<3>,
        hidden: Tensor<3>,
        proj: &Linear,
        ls: &Option<LayerScale>,
    ) -> Tensor<3> {
        if ls.is_none() && !drop_path_applies(&x, self.drop_path) {
            return linear_add(proj, hidden, x);
        }
        let y = scaled(ls, linear(proj, hidden));
        x + drop_path(y, self.drop_path)
    }
}

/// The block stack (`transformer.resblocks`).
#[derive(Module, Debug)]
pub struct Transformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
}

/// OpenCLIP's image tower.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub conv1: Conv2d,
    pub class_embedding: Param<Tensor<1>>,
    pub positional_embedding: Param<Tensor<2>>,
    pub ln_pre: LayerNorm,
    pub transformer: Transformer,
    pub ln_post: LayerNorm,
    pub proj: Option<Param<Tensor<2>>>,
    pub patch_size: usize,
    pub pos_embed_antialias: bool,
}

impl VisionTransformer {
    /// The same model with its position embeddings resampled for `size` x `size` inputs.
    pub fn with_image_size(mut self, size: usize) -> Self {
        let [tokens, width] = self.positional_embedding.dims();
        let old = ((tokens - 1) as f64).sqrt().round() as usize;
        let new = size / self.patch_size;
        if old == new {
            return self;
        }
        let antialias = self.pos_embed_antialias;
        self.positional_embedding = self.positional_embedding.map(|t| {
            let device = t.device();
            let data: Vec<f32> = t.into_data().iter::<f32>().collect();
            let mut out = data[..width].to_vec();
            out.extend(bicubic_resize(
                &data[width..],
                (old, old, width),
                (new, new),
                antialias,
            ));
            Tensor::from_data(TensorData::new(out, [new * new + 1, width]), &device)
        });
        self
    }

    /// The image side this model's position embeddings are laid out for.
    pub fn image_size(&self) -> usize {
        let tokens = self.positional_embedding.dims()[0];
        ((tokens - 1) as f64).sqrt().round() as usize * self.patch_size
    }

    /// Projected class-token embedding `[B, output_dim]` (or `[B, width]` without `proj`).
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = conv(&self.conv1, x);
        let [b, d, gh, gw] = x.dims();
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, x], 1) + self.positional_embedding.val().unsqueeze_dim(0);
        let mut x = layer_norm(&self.ln_pre, x, LN_EPS);
        for block in &self.transformer.resblocks {
            x = block.forward(x);
        }
        let x = layer_norm(&self.ln_post, x, LN_EPS);
        let pooled = x.narrow(1, 0, 1).reshape([b, d]);
        match &self.proj {
            Some(p) => pooled.matmul(p.val()),
            None => pooled,
        }
    }

    pub fn out_dim(&self) -> usize {
        match &self.proj {
            Some(p) => p.dims()[1],
            None => self.ln_post.gamma.dims()[0],
        }
    }
}

/// OpenCLIP names are the module paths; position embeddings trained on another grid are
/// resampled.
pub struct VitWeights {
    pub antialias: bool,
}

impl WeightMapping for VitWeights {
    fn module_path(&self, name: &str) -> Option<String> {
        Some(name.to_string())
    }

    fn adapt(&self, path: &str, data: &[f32], from: &[usize], to: &[usize]) -> Option<Vec<f32>> {
        if path != "positional_embedding" || from.len() != 2 || to.len() != 2 || from[1] != to[1] {
            return None;
        }
        let grid = |tokens: usize| {
            let g = ((tokens.saturating_sub(1)) as f64).sqrt().round() as usize;
            (g * g + 1 == tokens).then_some(g)
        };
        let (old, new, width) = (grid(from[0])?, grid(to[0])?, from[1]);
        tracing::info!("resampling position embeddings from a {old}x{old} to a {new}x{new} grid");
        let mut out = data[..width].to_vec();
        out.extend(bicubic_resize(
            &data[width..],
            (old, old, width),
            (new, new),
            self.antialias,
        ));
        Some(out)
    }
}
