//! AdamW as burn's `AdamW` computes it (same formula, same `AdamWState` record, so checkpoints
//! written with either load into the other), with each parameter's step as one parallel pass
//! on flex ([`visual_search_model::train_ops::adamw_update`]) instead of a dozen
//! single-threaded element-wise passes. Supports what the recipe uses: no AMSGrad, no cautious
//! weight decay. Global-norm clipping's factor ([`GradScale`]) is applied inside the same pass
//! rather than as a separate pass over every gradient.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};
use visual_search_model::train_ops::{AdamWScalars, adamw_update};

/// The factor the next steps multiply every gradient by before using it (the global-norm
/// clipping factor, 1 when the norm is within bounds): one value shared by the optimizers of a
/// run, set before each step.
#[derive(Debug, Clone)]
pub struct GradScale(Arc<AtomicU32>);

impl Default for GradScale {
    fn default() -> Self {
        GradScale(Arc::new(AtomicU32::new(1f32.to_bits())))
    }
}

impl GradScale {
    pub fn set(&self, factor: f32) {
        self.0.store(factor.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// AdamW with burn's default betas (0.9, 0.999).
#[derive(Debug, Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    grad_scale: GradScale,
}

impl FusedAdamW {
    /// Gradients used as they are (a scale of 1 that nothing else sets).
    pub fn new(epsilon: f32, weight_decay: f32) -> Self {
        FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            weight_decay,
            grad_scale: GradScale::default(),
        }
    }

    /// Gradients multiplied by `scale`'s value at each step.
    pub fn with_grad_scale(self, scale: GradScale) -> Self {
        FusedAdamW {
            grad_scale: scale,
            ..self
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, moment_1, moment_2) = match state {
            Some(state) => (
                state.momentum.time + 1,
                state.momentum.moment_1,
                state.momentum.moment_2,
            ),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        // burn's scalars: bias corrections in f32 from an i32 power; decay and lr from f64.
        let scalars = AdamWScalars {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            bias_correction_1: 1f32 - self.beta_1.powi(time as i32),
            bias_correction_2: 1f32 - self.beta_2.powi(time as i32),
            decay: (1.0 - lr * self.weight_decay as f64) as f32,
            lr: lr as f32,
            grad_scale: self.grad_scale.get(),
        };
        let (tensor, moment_1, moment_2) = adamw_update(tensor, grad, moment_1, moment_2, scalars);
        let state = AdamWState::new(AdaptiveMomentumState::new(time, moment_1, moment_2));
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}
