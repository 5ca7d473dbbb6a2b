//! What turns a micro-batch's features into its loss, one variant per `head.type` (SPEC
//! "Training recipe"), so the loop never asks which head it runs:
//! - ArcFace: features → dropout → sub-centre ArcFace cosine (the model's classifier) →
//!   adaptive-margin loss with per-class margins from the class counts;
//! - XBM: L2-normalised features → enqueue into the cross-batch memory (from `start_iteration`
//!   on) → `Contrastive(batch, batch) + weight · Contrastive(batch, memory)`.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use visual_search_model::embedder::l2_normalize;
use visual_search_model::heads::arcface_subcenter::{
    ArcFaceLoss, ArcFaceSubcenter, dynamic_margins,
};
use visual_search_model::losses::contrastive::ContrastiveLoss;
use visual_search_model::losses::xbm::{CrossBatchMemory, xbm_loss};

use crate::checkpoint::read_memory;
use crate::config::{HeadConfig, TrainConfig};
use crate::error::TrainError;
use crate::labels::ClassIndex;
use crate::train_model::dropout;

/// The loss side of a phase.
pub enum Head {
    ArcFace {
        loss: ArcFaceLoss,
        classes: ClassIndex,
        dropout: f64,
    },
    Xbm {
        memory: Box<CrossBatchMemory>,
        contrastive: ContrastiveLoss,
        weight: f64,
        start_iteration: usize,
    },
}

impl Head {
    /// The head of `config` for embeddings `dim` wide; an XBM memory is restored from the
    /// checkpoint being resumed.
    pub fn new(
        config: &TrainConfig,
        classes: &ClassIndex,
        dim: usize,
        resume_from: Option<&Path>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Ok(match &config.head {
            HeadConfig::Arcface(a) => Head::ArcFace {
                loss: ArcFaceLoss {
                    margins: dynamic_margins(&classes.counts, a.m, a.m_min),
                    s: a.s,
                },
                classes: classes.clone(),
                dropout: config.model.dropout,
            },
            HeadConfig::Xbm(x) => Head::Xbm {
                memory: Box::new(xbm_memory(x.memory_size, dim, resume_from, device)?),
                contrastive: ContrastiveLoss { margin: x.margin },
                weight: x.weight,
                start_iteration: x.start_iteration,
            },
        })
    }

    /// The loss of one micro-batch: `features` of images with `labels`, at optimiser `step`.
    /// `classifier` is the model's ArcFace head (ArcFace phases only have one).
    pub fn loss(
        &mut self,
        classifier: Option<&ArcFaceSubcenter>,
        features: Tensor<2>,
        labels: &[i64],
        step: usize,
    ) -> Tensor<1> {
        match self {
            Head::ArcFace {
                loss,
                classes,
                dropout: p,
            } => {
                let classifier = classifier.expect("ArcFace phases build the classifier");
                let targets: Vec<usize> = labels
                    .iter()
                    .map(|&l| {
                        classes
                            .index_of(l)
                            .expect("training labels are in the class index")
                    })
                    .collect();
                loss.forward(classifier.cosine(dropout(features, *p)), &targets)
            }
            Head::Xbm {
                memory,
                contrastive,
                weight,
                start_iteration,
            } => {
                let device = features.device();
                let labels = Tensor::<1, Int>::from_data(
                    TensorData::new(labels.to_vec(), [labels.len()]),
                    &device,
                );
                xbm_loss(
                    contrastive,
                    memory,
                    l2_normalize(features),
                    labels,
                    *weight,
                    step >= *start_iteration,
                )
            }
        }
    }

    /// The cross-batch memory (XBM phases), saved with each checkpoint.
    pub fn memory(&self) -> Option<&CrossBatchMemory> {
        match self {
            Head::Xbm { memory, .. } => Some(memory),
            Head::ArcFace { .. } => None,
        }
    }
}

/// The XBM memory of a phase: restored from the checkpoint being resumed, else empty.
fn xbm_memory(
    capacity: usize,
    dim: usize,
    resume_from: Option<&Path>,
    device: &Device,
) -> Result<CrossBatchMemory, TrainError> {
    let Some(dir) = resume_from else {
        return Ok(CrossBatchMemory::new(capacity, dim, device));
    };
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let snapshot = read_memory(dir)?
        .ok_or_else(|| bad("has no XBM memory (xbm_memory.safetensors) to resume".into()))?;
    if (snapshot.capacity, snapshot.dim) != (capacity, dim) {
        return Err(bad(format!(
            "its XBM memory is {} × {}, the config asks for {capacity} × {dim} (head.memory_size)",
            snapshot.capacity, snapshot.dim
        )));
    }
    CrossBatchMemory::restore(&snapshot, device).map_err(bad)
}
