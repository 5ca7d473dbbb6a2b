//! What is trained: the embedding model plus, in ArcFace phases, the sub-centre ArcFace head (XBM
//! phases have no classifier); how it is built for a phase (registry architecture, pretrained
//! backbone, an earlier phase's checkpoint) with its optimisers; and the switch that keeps
//! batch-norm statistics frozen while the weights train.

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::heads::arcface_subcenter::ArcFaceSubcenter;
use visual_search_model::registry::{BuildOptions, ModelSpec};

use crate::checkpoint::{Optimizers, load_module, read_state, resolve_checkpoint};
use crate::config::{HeadConfig, TrainConfig};
use crate::error::TrainError;
use crate::fused_adamw::{FusedAdamW, GradScale};
use crate::grads::no_decay_ids;
use crate::labels::ClassIndex;

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

/// AdamW (eps 1e-8) with weight decay, and a decay-free group for `no_decay`: burn's AdamW
/// step, fused ([`FusedAdamW`]), gradients times `grad_scale`.
fn optimizer(
    weight_decay: f64,
    no_decay: Vec<burn::module::ParamId>,
    grad_scale: &GradScale,
) -> ModuleOptimizer {
    let decayed = FusedAdamW::new(1e-8, weight_decay as f32).with_grad_scale(grad_scale.clone());
    let plain = FusedAdamW::new(1e-8, 0.0).with_grad_scale(grad_scale.clone());
    ModuleOptimizer::from(decayed).with_group(ParamGroup::from_ids(no_decay), plain, None)
}

/// AdamW for each model part, with the no-decay group of its biases and norms; one gradient
/// scale (clipping) for all three.
pub fn build_optimizers(model: &TrainModel, weight_decay: f64) -> Optimizers {
    let grad_scale = GradScale::default();
    Optimizers {
        backbone: optimizer(
            weight_decay,
            no_decay_ids(&model.embedder.backbone),
            &grad_scale,
        ),
        neck: optimizer(
            weight_decay,
            no_decay_ids(&model.embedder.neck),
            &grad_scale,
        ),
        head: optimizer(weight_decay, no_decay_ids(&model.head), &grad_scale),
        grad_scale,
    }
}

/// Builds the model of a phase: registry architecture, pretrained backbone weights, an earlier
/// phase's checkpoint (`pretrain_model`), a head for `classes`.
pub fn build_model(
    config: &TrainConfig,
    spec: &ModelSpec,
    classes: &ClassIndex,
    device: &Device,
) -> Result<TrainModel, TrainError> {
    let m = &config.model;
    let size = config.dataset.input_size;
    let options = BuildOptions {
        image_size: size,
        with_classifier: false,
        gem: m.gem,
        drop_path_rate: m.drop_path,
    };
    let mut embedder = EmbeddingModel::new(spec, &options, m.embedding_dim, device);
    if let Some(w) = &m.weights {
        embedder = embedder.load_pretrained_backbone(spec, &options, w)?;
    }
    let sub_centres = match &config.head {
        HeadConfig::Arcface(a) => Some(a.k),
        HeadConfig::Xbm(_) => None,
    };
    let mut head =
        sub_centres.map(|k| ArcFaceSubcenter::new(embedder.dim(), classes.len(), k, device));
    if let Some(pre) = &m.pretrain_model {
        let dir = resolve_checkpoint(pre)?;
        let state = read_state(&dir)?;
        if state.model_name != spec.name {
            return Err(TrainError::Invalid(format!(
                "pretrain_model {} is a {} checkpoint, this phase trains {}",
                dir.display(),
                state.model_name,
                spec.name
            )));
        }
        // Built at the size it was trained at, loaded, then resized (ViT position embeddings).
        let old = BuildOptions {
            image_size: state.image_size,
            ..options.clone()
        };
        embedder = load_module(
            EmbeddingModel::new(spec, &old, m.embedding_dim, device),
            &dir.join("embedder.bpk"),
        )?
        .with_image_size(size);
        let saved_head = dir.join("head.bpk");
        let Some(k) = sub_centres.filter(|_| saved_head.exists()) else {
            // An XBM phase has no head; an ArcFace phase after an XBM one starts a fresh head.
            return Ok(TrainModel { embedder, head });
        };
        if state.classes == *classes {
            let previous = ArcFaceSubcenter::new(embedder.dim(), state.classes.len(), k, device);
            head = Some(load_module(previous, &saved_head)?);
        } else {
            tracing::info!(
                "pretrain_model head has other classes ({} vs {}); the head starts fresh",
                state.classes.len(),
                classes.len()
            );
        }
    }
    Ok(TrainModel { embedder, head })
}
