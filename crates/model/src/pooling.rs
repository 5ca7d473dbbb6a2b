//! Global pooling for CNN feature maps: average (the default) or GeM, generalised mean pooling
//! `(mean(clamp(x, eps)^p))^(1/p)` with a learnable `p` (Radenović et al.), a common choice for
//! retrieval embeddings.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::global_avg_pool;

/// Which pooling a CNN backbone ends with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolingKind {
    #[default]
    Avg,
    Gem,
}

/// GeM pooling with learnable exponent `p` (timm/cirtorch initialise p = 3, eps = 1e-6).
#[derive(Module, Debug)]
pub struct Gem {
    pub p: Param<Tensor<1>>,
    pub eps: f64,
}

impl Gem {
    pub fn new(p: f64, device: &Device) -> Self {
        Gem {
            p: Param::from_tensor(Tensor::from_floats([p as f32], device)),
            eps: 1e-6,
        }
    }

    /// `[B, C, H, W]` → `[B, C]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let p = self.p.val();
        let p4 = p.clone().reshape([1, 1, 1, 1]);
        let pooled = global_avg_pool(x.clamp_min(self.eps).powf(p4));
        pooled.powf(p.reshape([1, 1]).recip())
    }
}

/// A backbone's final pooling: average when `gem` is `None`, else GeM.
///
/// Its parameter (GeM's `p`) is this crate's own, never in a pretrained file, so weight import
/// does not require it (see `weights::load_weights`).
#[derive(Module, Debug)]
pub struct Pooling {
    pub gem: Option<Gem>,
}

impl Pooling {
    pub fn new(kind: PoolingKind, device: &Device) -> Self {
        Pooling {
            gem: (kind == PoolingKind::Gem).then(|| Gem::new(3.0, device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match &self.gem {
            None => global_avg_pool(x),
            Some(g) => g.forward(x),
        }
    }
}
