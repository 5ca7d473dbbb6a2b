//! One optimiser step over the three model parts (SPEC "Training recipe"): micro-batch gradients
//! are accumulated per part; at the step they are clipped by the global norm over all parts
//! together (PyTorch's `clip_grad_norm_`), then AdamW updates the backbone at
//! `lr × backbone_lr_factor` and the neck and head at `lr`.

use burn::nn::Linear;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Gradients;
use visual_search_model::backbones::Backbone;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::heads::arcface_subcenter::ArcFaceSubcenter;

use crate::checkpoint::Optimizers;
use crate::grads::{clip_factor, scale, squared_norm};
use crate::train_model::TrainModel;

/// Gradients summed over the micro-batches of one step, per model part.
pub struct Accumulators {
    backbone: GradientsAccumulator<Backbone>,
    neck: GradientsAccumulator<Option<Linear>>,
    head: GradientsAccumulator<Option<ArcFaceSubcenter>>,
}

impl Default for Accumulators {
    fn default() -> Self {
        Accumulators {
            backbone: GradientsAccumulator::new(),
            neck: GradientsAccumulator::new(),
            head: GradientsAccumulator::new(),
        }
    }
}

impl Accumulators {
    /// Adds one micro-batch's gradients (of a loss already divided by the accumulation count).
    pub fn accumulate(&mut self, model: &TrainModel, grads: &mut Gradients) {
        let e = &model.embedder;
        self.backbone.accumulate(
            &e.backbone,
            GradientsParams::from_module(grads, &e.backbone),
        );
        self.neck
            .accumulate(&e.neck, GradientsParams::from_module(grads, &e.neck));
        self.head.accumulate(
            &model.head,
            GradientsParams::from_module(grads, &model.head),
        );
    }
}

/// Learning rate and clipping of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub lr: f64,
    pub backbone_lr_factor: f64,
    pub grad_clip: Option<f64>,
}

/// Clips the accumulated gradients and applies them; the accumulators start over.
pub fn optimizer_step(
    model: TrainModel,
    accumulators: &mut Accumulators,
    optimizers: &mut Optimizers,
    settings: StepSettings,
) -> TrainModel {
    let (mut gb, mut gn, mut gh) = (
        accumulators.backbone.grads(),
        accumulators.neck.grads(),
        accumulators.head.grads(),
    );
    if let Some(max) = settings.grad_clip {
        let total = (squared_norm(&model.embedder.backbone, &gb)
            + squared_norm(&model.embedder.neck, &gn)
            + squared_norm(&model.head, &gh))
        .sqrt();
        let factor = clip_factor(total, max);
        if factor < 1.0 {
            scale(&model.embedder.backbone, &mut gb, factor);
            scale(&model.embedder.neck, &mut gn, factor);
            scale(&model.head, &mut gh, factor);
        }
    }
    let TrainModel {
        embedder: EmbeddingModel { backbone, neck },
        head,
    } = model;
    let lr = settings.lr;
    TrainModel {
        embedder: EmbeddingModel {
            backbone: optimizers
                .backbone
                .step(lr * settings.backbone_lr_factor, backbone, gb),
            neck: optimizers.neck.step(lr, neck, gn),
        },
        head: optimizers.head.step(lr, head, gh),
    }
}
