//! What is trained: the embedding model plus, in ArcFace phases, the sub-centre ArcFace head (XBM
//! phases have no classifier), and the switch that keeps batch-norm statistics frozen while the
//! weights train.

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::heads::arcface_subcenter::ArcFaceSubcenter;

/// Embedder and head, saved and loaded together.
#[derive(Module, Debug)]
pub struct TrainModel {
    pub embedder: EmbeddingModel,
    /// `None` in XBM phases.
    pub head: Option<ArcFaceSubcenter>,
}

struct TrainingFlags(bool);

impl ModuleMapper for TrainingFlags {
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        Param::initialized(flag.id, Flag::new(self.0))
    }
}

/// Sets every module-owned training flag under `module` (in our backbones: batch norm's) to
/// `enabled`; disabled batch norm normalises with its running statistics and leaves them as
/// they are, even in a training pass. Gradients are untouched.
pub fn set_training_flags<M: Module>(module: M, enabled: bool) -> M {
    module.map(&mut TrainingFlags(enabled))
}

/// Inverted dropout on features during training (identity otherwise).
pub fn dropout(x: Tensor<2>, p: f64) -> Tensor<2> {
    if p <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let mask = Tensor::<2>::random(
        x.dims(),
        burn::tensor::Distribution::Bernoulli(1.0 - p),
        &x.device(),
    );
    x.mul(mask).div_scalar(1.0 - p)
}

struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Initialises every lazily initialised parameter now, so random initial weights depend only on
/// the seed set before building the model, not on what else draws random numbers later.
pub fn materialize<M: Module>(module: &M) {
    module.visit(&mut Materialize);
}
