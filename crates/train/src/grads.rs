//! Gradient handling the optimiser does not do for us: clipping by the *global* norm over all
//! parameters (PyTorch's `clip_grad_norm_`; burn's built-in clipping is per parameter; the
//! factor itself is applied inside the AdamW pass, [`crate::fused_adamw::GradScale`]), and the
//! split of parameters into weight-decay (≥ 2 dimensions) and no-decay (biases, norms) groups.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use visual_search_model::train_ops::sum_of_squares;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = sum_of_squares(g);
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// Squared gradient norm of one module's parameters.
pub fn squared_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, total: None };
    module.visit(&mut v);
    v.total.map_or(0.0, |t| t.into_scalar::<f64>())
}

/// The clipping factor PyTorch's `clip_grad_norm_` applies for a global norm `total`.
pub fn clip_factor(total: f64, max_norm: f64) -> f64 {
    (max_norm / (total + 1e-6)).min(1.0)
}

struct LowRank {
    ids: Vec<ParamId>,
}

impl ModuleVisitor for LowRank {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 {
            self.ids.push(param.id);
        }
    }
}

/// Ids of the parameters with fewer than 2 dimensions (biases, norm scales and shifts, GeM p),
/// which get no weight decay.
pub fn no_decay_ids<M: Module>(module: &M) -> Vec<ParamId> {
    let mut v = LowRank { ids: Vec::new() };
    module.visit(&mut v);
    v.ids
}
