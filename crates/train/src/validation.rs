//! Validation during training (SPEC "Training recipe"): dev-set retrieval metrics (mAP@k,
//! recall@1, mAP@R: the challenge metric on the dev gallery and queries) and closed-set accuracy
//! of the ArcFace classifier on the val list, with the evaluation transform.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use visual_search_data::image::Normalization;
use visual_search_data::loader::LoaderConfig;
use visual_search_data::transform::{EvalTransform, SampleTransform};
use visual_search_inference::BurnEmbedder;
use visual_search_inference::batch_norm_folding::fold_batch_norms;
use visual_search_retrieval::metrics::evaluate;
use visual_search_retrieval::pipeline::{RankOptions, rank};

use crate::checkpoint::ValidationMetrics;
use crate::config::TrainConfig;
use crate::embedding::embed_samples;
use crate::error::TrainError;
use crate::labels::ClassIndex;
use crate::train_model::TrainModel;
use crate::training_data::Data;

/// Validation: dev-set retrieval metrics and closed-set accuracy on the val list.
pub fn validate(
    model: &TrainModel,
    data: &Data,
    classes: &ClassIndex,
    config: &TrainConfig,
    norm: Normalization,
    device: &Device,
) -> Result<ValidationMetrics, TrainError> {
    // Inference on a copy with its batch norms folded into the convolutions (convolution, bias
    // and activation in one pass on flex), as every inference command runs the model; the
    // training model keeps its batch norms.
    let valid = fold_batch_norms(model.embedder.valid());
    let embedder = BurnEmbedder {
        model: &valid,
        device,
        size: config.dataset.input_size,
    };
    let transform: Arc<dyn SampleTransform> =
        Arc::new(EvalTransform::new(config.dataset.input_size as u32, norm));
    let loader = LoaderConfig {
        batch_size: config.dataset.batch_size,
        num_workers: config.dataset.num_workers,
        ..LoaderConfig::default()
    };
    let mut metrics = ValidationMetrics {
        map_at_k: None,
        recall_at_1: None,
        map_at_r: None,
        val_accuracy: None,
    };
    if let (Some(q), Some(g)) = (&data.queries, &data.gallery) {
        let qe = embed_samples(&embedder, q.clone(), transform.clone(), &loader, |_, _| {})?;
        let ge = embed_samples(&embedder, g.clone(), transform.clone(), &loader, |_, _| {})?;
        let (ql, gl) = (
            qe.embeddings.labels.unwrap_or_default(),
            ge.embeddings.labels.unwrap_or_default(),
        );
        let options = RankOptions {
            top_k: config.eval.top_k,
            ..RankOptions::default()
        };
        let (ranking, _) = rank(
            qe.embeddings.data,
            ge.embeddings.data,
            qe.embeddings.dim,
            &options,
        );
        let m = evaluate(&ranking, &ql, &gl, config.eval.top_k);
        metrics.map_at_k = Some(m.map_at_k);
        metrics.recall_at_1 = Some(m.recall_at_1);
        metrics.map_at_r = Some(m.map_at_r);
    }
    if let (Some(val), Some(head)) = (&data.val, &model.head) {
        let v = embed_samples(&embedder, val.clone(), transform, &loader, |_, _| {})?;
        let labels = v.embeddings.labels.unwrap_or_default();
        let keep: Vec<usize> = (0..labels.len())
            .filter(|&i| classes.index_of(labels[i]).is_some())
            .collect();
        if !keep.is_empty() {
            let dim = v.embeddings.dim;
            let rows: Vec<f32> = keep
                .iter()
                .flat_map(|&i| v.embeddings.data[i * dim..(i + 1) * dim].to_vec())
                .collect();
            let x = Tensor::<2>::from_data(TensorData::new(rows, [keep.len(), dim]), device);
            let predicted: Vec<i64> = head
                .valid()
                .cosine(x)
                .argmax(1)
                .into_data()
                .iter::<i64>()
                .collect();
            let correct = keep
                .iter()
                .zip(&predicted)
                .filter(|(i, p)| classes.index_of(labels[**i]) == Some(**p as usize))
                .count();
            metrics.val_accuracy = Some(correct as f64 / keep.len() as f64);
        }
    }
    Ok(metrics)
}
