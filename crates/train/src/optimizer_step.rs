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
use crate::data_parallel::{ProcessGroup, flatten_grads, unflatten_grads};
use crate::error::TrainError;
use crate::grads::{clip_factor, squared_norm};
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

impl Accumulators {
    /// Data-parallel training: replaces the accumulated gradients by their sum over the
    /// `group`'s processes times `factor(sums)`, where `sums` is the sum of `extras` over the
    /// processes (sent along in the same exchange); returns `sums`.
    pub fn all_reduce(
        &mut self,
        model: &TrainModel,
        group: &ProcessGroup,
        extras: [f64; 2],
        factor: impl FnOnce(&[f64; 2]) -> f32,
    ) -> Result<[f64; 2], TrainError> {
        let e = &model.embedder;
        let (mut gb, mut gn, mut gh) =
            (self.backbone.grads(), self.neck.grads(), self.head.grads());
        let mut flat = Vec::new();
        flatten_grads(&e.backbone, &gb, &mut flat);
        flatten_grads(&e.neck, &gn, &mut flat);
        flatten_grads(&model.head, &gh, &mut flat);
        let n = flat.len();
        flat.extend(extras.map(|v| v as f32));
        let summed = group.all_reduce_sum(flat)?;
        if summed.len() != n + 2 {
            return Err(TrainError::Invalid(format!(
                "the group summed {} values, this process sent {}",
                summed.len(),
                n + 2
            )));
        }
        let sums = [summed[n] as f64, summed[n + 1] as f64];
        let f = factor(&sums);
        let rest = unflatten_grads(&e.backbone, &mut gb, &summed[..n], f);
        let rest = unflatten_grads(&e.neck, &mut gn, rest, f);
        unflatten_grads(&model.head, &mut gh, rest, f);
        self.backbone.accumulate(&e.backbone, gb);
        self.neck.accumulate(&e.neck, gn);
        self.head.accumulate(&model.head, gh);
        Ok(sums)
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
    let (gb, gn, gh) = (
        accumulators.backbone.grads(),
        accumulators.neck.grads(),
        accumulators.head.grads(),
    );
    // The clipping factor is applied inside each parameter's AdamW pass.
    let factor = match settings.grad_clip {
        Some(max) => {
            let total = (squared_norm(&model.embedder.backbone, &gb)
                + squared_norm(&model.embedder.neck, &gn)
                + squared_norm(&model.head, &gh))
            .sqrt();
            clip_factor(total, max)
        }
        None => 1.0,
    };
    optimizers.grad_scale.set(factor as f32);
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
