//! Model soups (Wortsman et al., "Model soups", ICML 2022): one embedder whose every float
//! tensor — weights, biases, batch-norm running statistics, GeM's `p` — is the element-wise
//! mean of the same tensor in several checkpoints of one architecture. The challenge's 1st place
//! built its final model this way.
//!
//! Two recipes: the **uniform** soup averages every ingredient; the **greedy** soup visits the
//! ingredients from the best dev mAP down and keeps one only if the soup with it scores at
//! least as well as without ([`greedy`]; scoring is the caller's, so that this crate does not
//! need the dev set).

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_model::embedder::EmbeddingModel;

use crate::error::TrainError;
use crate::export::CheckpointEmbedder;

/// Loads the embedders of `checkpoints` (checkpoint folders, or run folders for their best
/// checkpoint) and checks that they share one architecture: model, input size, neck width and
/// pooling. Errors name the first checkpoint that differs.
pub fn load_ingredients(
    checkpoints: &[impl AsRef<Path>],
    device: &Device,
) -> Result<Vec<CheckpointEmbedder>, TrainError> {
    if checkpoints.is_empty() {
        return Err(TrainError::Invalid(
            "a soup needs at least one checkpoint".into(),
        ));
    }
    let mut ingredients: Vec<CheckpointEmbedder> = Vec::with_capacity(checkpoints.len());
    for path in checkpoints {
        let ingredient = CheckpointEmbedder::load(path.as_ref(), device)?;
        if let Some(first) = ingredients.first() {
            let shape = |c: &CheckpointEmbedder| {
                (
                    c.state.model_name.clone(),
                    c.state.image_size,
                    c.state.neck_dim,
                    c.state.gem,
                )
            };
            let (a, b) = (shape(first), shape(&ingredient));
            if a != b {
                return Err(TrainError::Checkpoint {
                    path: ingredient.dir.clone(),
                    message: format!(
                        "cannot go into one soup with {}: (model, size, neck, GeM) {b:?} vs {a:?}",
                        first.dir.display()
                    ),
                });
            }
        }
        ingredients.push(ingredient);
    }
    Ok(ingredients)
}

/// The uniform soup of `models` (one architecture): a copy of the first with every float
/// tensor replaced by the mean of that tensor over all of them.
pub fn average(models: &[&EmbeddingModel]) -> Result<EmbeddingModel, TrainError> {
    let (first, rest) = models
        .split_first()
        .ok_or_else(|| TrainError::Invalid("a soup needs at least one model".into()))?;
    let mut sums = float_tensors(first);
    for (index, model) in rest.iter().enumerate() {
        let tensors = float_tensors(model);
        let fits = tensors.len() == sums.len()
            && tensors.iter().zip(&sums).all(|(a, b)| a.shape == b.shape);
        if !fits {
            return Err(TrainError::Invalid(format!(
                "soup ingredient {} does not have the first one's tensors",
                index + 2
            )));
        }
        for (sum, tensor) in sums.iter_mut().zip(tensors) {
            for (s, v) in sum.values.iter_mut().zip(tensor.values) {
                *s += v;
            }
        }
    }
    let count = models.len() as f64;
    let means = sums
        .into_iter()
        .map(|t| FloatTensor {
            shape: t.shape,
            values: t.values.into_iter().map(|s| s / count).collect(),
        })
        .collect();
    let mut replace = Replace { means, next: 0 };
    let soup = (*first).clone().map(&mut replace);
    // Fewer parameters than means, or more (each one counted, found or not).
    if replace.next != replace.means.len() {
        return Err(TrainError::Invalid(
            "the soup's tensors did not map back onto the model".into(),
        ));
    }
    Ok(soup)
}

/// One step of a greedy soup: the ingredient tried and the soup's score with it.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyStep {
    /// Index into the ingredients.
    pub ingredient: usize,
    /// Its own score.
    pub alone: f64,
    /// The soup's score with it.
    pub with_it: f64,
    pub kept: bool,
}

/// The greedy soup of `ingredients` under `score` (higher is better, e.g. dev mAP@1000):
/// every ingredient is scored alone, then, from the best down, added to the soup and kept only
/// if the soup's score does not drop. Returns the soup, its score and the steps in order.
pub fn greedy<E: From<TrainError>>(
    ingredients: &[&EmbeddingModel],
    mut score: impl FnMut(&EmbeddingModel) -> Result<f64, E>,
) -> Result<(EmbeddingModel, f64, Vec<GreedyStep>), E> {
    let alone: Vec<f64> = ingredients
        .iter()
        .map(|m| score(m))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..ingredients.len()).collect();
    order.sort_by(|&a, &b| alone[b].total_cmp(&alone[a]));
    let Some((&best, rest)) = order.split_first() else {
        return Err(TrainError::Invalid("a soup needs at least one model".into()).into());
    };
    let mut kept = vec![best];
    let mut soup = ingredients[best].clone();
    let mut soup_score = alone[best];
    let mut steps = vec![GreedyStep {
        ingredient: best,
        alone: alone[best],
        with_it: alone[best],
        kept: true,
    }];
    for &next in rest {
        let mut candidate_set: Vec<&EmbeddingModel> =
            kept.iter().map(|&i| ingredients[i]).collect();
        candidate_set.push(ingredients[next]);
        let candidate = average(&candidate_set)?;
        let candidate_score = score(&candidate)?;
        let keep = candidate_score >= soup_score;
        steps.push(GreedyStep {
            ingredient: next,
            alone: alone[next],
            with_it: candidate_score,
            kept: keep,
        });
        if keep {
            kept.push(next);
            soup = candidate;
            soup_score = candidate_score;
        }
    }
    Ok((soup, soup_score, steps))
}

/// A float tensor's shape and values (f64, so that sums of many checkpoints stay exact enough).
struct FloatTensor {
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// Every float tensor of `model`, in the order burn visits them.
fn float_tensors(model: &EmbeddingModel) -> Vec<FloatTensor> {
    struct Collect(Vec<FloatTensor>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            let data = tensor.into_data().convert::<f32>();
            let values = data.iter::<f32>().map(f64::from).collect();
            self.0.push(FloatTensor { shape, values });
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Puts the means back, in the same visiting order; `next` counts the parameters visited.
struct Replace {
    means: Vec<FloatTensor>,
    next: usize,
}

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let index = self.next;
        self.next += 1;
        let Some(mean) = self.means.get(index) else {
            return param;
        };
        let device = param.lazy_device();
        let values: Vec<f32> = mean.values.iter().map(|&v| v as f32).collect();
        let tensor = Tensor::<D>::from_data(TensorData::new(values, mean.shape.clone()), &device)
            .cast(device.settings().float_dtype);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}
