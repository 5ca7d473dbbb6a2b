//! The training loop of one phase (SPEC "Training recipe").
//!
//! Per micro-batch, ArcFace phases: features → dropout → sub-centre ArcFace cosine →
//! adaptive-margin loss. XBM phases: L2-normalised features → enqueue into the cross-batch memory
//! (from `start_iteration` on) → `Contrastive(batch, batch) + weight · Contrastive(batch,
//! memory)`. Then (divided by the accumulation count) backward, gradients accumulated per model
//! part. Per
//! optimiser step: clip by the global norm, AdamW on the backbone at `lr × backbone_lr_factor`
//! and on neck and head at `lr` (weight decay only on tensors with ≥ 2 dimensions), lr from
//! warmup + cosine. Several times per epoch: dev-set mAP@k and val-list accuracy, a checkpoint,
//! early stopping. Everything random is seeded from `dataset.seed` and the step or sample
//! position, so a run resumed from a checkpoint continues the same sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use visual_search_data::image::Normalization;
use visual_search_data::loader::{BatchLoader, LoaderConfig};
use visual_search_data::sampler::{class_balanced_order, mix_seed, shuffled_order};
use visual_search_data::transform::{EvalTransform, SampleTransform};
use visual_search_model::embedder::{EmbeddingModel, l2_normalize};
use visual_search_model::heads::arcface_subcenter::{
    ArcFaceLoss, ArcFaceSubcenter, dynamic_margins,
};
use visual_search_model::losses::contrastive::ContrastiveLoss;
use visual_search_model::losses::xbm::{CrossBatchMemory, memory_bytes, xbm_loss};
use visual_search_model::registry::{BuildOptions, ModelSpec, lookup};
use visual_search_retrieval::metrics::evaluate;
use visual_search_retrieval::pipeline::{RankOptions, rank};

use crate::checkpoint::{
    Optimizers, TrainState, ValidationMetrics, load_module, load_optimizers, prune_checkpoints,
    read_memory, read_state, resolve_checkpoint, resume_checkpoint, save_checkpoint,
};
use crate::config::{HeadKind, Precision, SamplerKind, TrainConfig};
use crate::embedding::embed_samples;
use crate::error::TrainError;
use crate::grads::{clip_factor, no_decay_ids, scale, squared_norm};
use crate::labels::ClassIndex;
use crate::metrics_log::MetricsLog;
use crate::plots::plot_run;
use crate::schedule::WarmupCosine;
use crate::train_model::{TrainModel, dropout, materialize, set_training_flags};
use crate::training_data::{Data, load_data, train_transform};
use visual_search_inference::BurnEmbedder;

/// How to run a phase.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    /// The compute device (without autodiff; training wraps it).
    pub device: Device,
    /// Continue from `run_dir/last` if it exists.
    pub resume: bool,
    /// Validate once before the first step (the zero-shot baseline).
    pub validate_at_start: bool,
}

/// What a user sees happen.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        steps_per_epoch: usize,
        start_step: usize,
        train_images: usize,
        classes: usize,
        /// Device bytes of the XBM memory (XBM phases).
        memory_bytes: Option<usize>,
    },
    Step {
        step: usize,
        total_steps: usize,
        epoch: usize,
        loss: f64,
        lr: f64,
        images_per_s: f64,
    },
    Validation {
        step: usize,
        metrics: ValidationMetrics,
    },
    Checkpoint {
        path: PathBuf,
        best: Option<PathBuf>,
    },
    Skipped {
        path: PathBuf,
        reason: String,
    },
    EarlyStop {
        step: usize,
    },
}

/// The end of a phase.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub first_validation: Option<ValidationMetrics>,
    pub last_validation: Option<ValidationMetrics>,
    pub best_checkpoint: Option<PathBuf>,
    pub best_map: Option<f64>,
    pub wall_time: Duration,
    pub images_per_s: f64,
    pub stopped_early: bool,
    pub skipped_images: usize,
}

fn optimizer(weight_decay: f64, no_decay: Vec<burn::module::ParamId>) -> ModuleOptimizer {
    let decayed = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .build();
    let plain = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .build();
    ModuleOptimizer::from(decayed).with_group(ParamGroup::from_ids(no_decay), plain, None)
}

fn build_optimizers(model: &TrainModel, weight_decay: f64) -> Optimizers {
    Optimizers {
        backbone: optimizer(weight_decay, no_decay_ids(&model.embedder.backbone)),
        neck: optimizer(weight_decay, no_decay_ids(&model.embedder.neck)),
        head: optimizer(weight_decay, no_decay_ids(&model.head)),
    }
}

/// Builds the model of a phase: registry architecture, pretrained backbone weights, an earlier
/// phase's checkpoint (`pretrain_model`), a head for `classes`.
fn build_model(
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
    let arcface = config.head.kind == HeadKind::Arcface;
    let mut head = arcface
        .then(|| ArcFaceSubcenter::new(embedder.dim(), classes.len(), config.head.k, device));
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
        if !arcface || !saved_head.exists() {
            // An XBM phase has no head; an ArcFace phase after an XBM one starts a fresh head.
        } else if state.classes == *classes {
            let previous =
                ArcFaceSubcenter::new(embedder.dim(), state.classes.len(), config.head.k, device);
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

/// Validation: dev-set retrieval metrics and closed-set accuracy on the val list.
fn validate(
    model: &TrainModel,
    data: &Data,
    classes: &ClassIndex,
    config: &TrainConfig,
    norm: Normalization,
    device: &Device,
) -> Result<ValidationMetrics, TrainError> {
    let valid = model.embedder.valid();
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

/// Runs one phase; events go to `observer`.
pub fn train(
    config: &TrainConfig,
    options: &TrainOptions,
    observer: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    if config.optim.precision != Precision::F32 {
        return Err(TrainError::Invalid(format!(
            "optim.precision {:?}: only f32 training is implemented so far; use f32",
            config.optim.precision
        )));
    }
    let run_dir = &options.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let spec = lookup(&config.model.name).map_err(|e| TrainError::Invalid(e.to_string()))?;
    let norm = Normalization {
        mean: spec.mean,
        std: spec.std,
    };
    let data = load_data(config)?;
    let device = options.device.clone();
    let train_device = device.clone().autodiff();
    device.seed(config.dataset.seed);

    let resume_from = if options.resume {
        Some(resume_checkpoint(run_dir)?)
    } else {
        None
    };
    let mut state = match &resume_from {
        Some(dir) => read_state(dir)?,
        None => TrainState {
            step: 0,
            epoch: 0,
            batches_in_epoch: 0,
            image_size: config.dataset.input_size,
            model_name: spec.name.clone(),
            neck_dim: config.model.embedding_dim,
            gem: config.model.gem,
            classes: ClassIndex::from_labels(data.train.iter().map(|s| s.label)),
            metrics: None,
            history: Vec::new(),
        },
    };
    let classes = state.classes.clone();
    if let Some(n) = config.dataset.num_of_classes
        && config.head.kind == HeadKind::Arcface
        && n < classes.len()
    {
        return Err(TrainError::Invalid(format!(
            "dataset.num_of_classes is {n} but the training list has {} classes",
            classes.len()
        )));
    }
    let mut model = build_model(config, &spec, &classes, &train_device)?;
    materialize(&model);
    if let Some(dir) = &resume_from {
        model.embedder = load_module(model.embedder, &dir.join("embedder.bpk"))?;
        if let Some(head) = model.head.take() {
            model.head = Some(load_module(head, &dir.join("head.bpk"))?);
        }
    }
    // Built after loading: loaded parameters carry their saved ids, and the no-decay group is
    // a set of ids.
    let mut optimizers = build_optimizers(&model, config.optim.weight_decay);
    if let Some(dir) = &resume_from {
        optimizers = load_optimizers(dir, optimizers)?;
    }
    if config.model.freeze_batchnorm {
        model.embedder.backbone = set_training_flags(model.embedder.backbone, false);
    }
    let log = MetricsLog::open(run_dir, resume_from.as_ref().map(|_| state.step))?;
    let resolved =
        serde_yaml_ng::to_string(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    std::fs::write(run_dir.join("config.yml"), resolved).map_err(|e| TrainError::io(run_dir, e))?;

    let bs = config.dataset.batch_size;
    let accum = config.optim.grad_accumulation;
    let batches_per_epoch = data.train.len() / bs;
    if batches_per_epoch < accum {
        return Err(TrainError::Invalid(format!(
            "{} training images make {batches_per_epoch} batches of {bs}, fewer than one optimiser step ({accum} batches)",
            data.train.len()
        )));
    }
    let steps_per_epoch = batches_per_epoch / accum;
    let mut total_steps = steps_per_epoch * config.optim.epochs;
    if let Some(m) = config.optim.max_steps {
        total_steps = if config.optim.epochs == 0 {
            m
        } else {
            total_steps.min(m)
        };
    }
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let validate_every = (steps_per_epoch / config.eval.validations_per_epoch).max(1);
    let head_lr = WarmupCosine {
        base: config.optim.lr_head,
        warmup: config.optim.warmup_steps,
        total: total_steps,
    };
    let loss_fn = ArcFaceLoss {
        margins: dynamic_margins(&classes.counts, config.head.m, config.head.m_min),
        s: config.head.s,
    };
    let transform = train_transform(config, norm);
    let contrastive = ContrastiveLoss {
        margin: config.head.margin,
    };
    let mut memory = match config.head.kind {
        HeadKind::Arcface => None,
        HeadKind::Xbm => Some(xbm_memory(
            config,
            model.embedder.dim(),
            resume_from.as_deref(),
            &train_device,
        )?),
    };
    let sampler = config.sampler();
    let train_labels: Vec<i64> = data.train.iter().map(|s| s.label).collect();
    observer(TrainEvent::Started {
        total_steps,
        steps_per_epoch,
        start_step: state.step,
        train_images: data.train.len(),
        classes: classes.len(),
        memory_bytes: memory
            .as_ref()
            .map(|m| memory_bytes(m.capacity(), model.embedder.dim())),
    });

    let mut first_validation = None;
    if options.validate_at_start && resume_from.is_none() {
        let m = validate(&model, &data, &classes, config, norm, &device)?;
        log.validation(0, 0, &m)?;
        observer(TrainEvent::Validation {
            step: 0,
            metrics: m,
        });
        first_validation = Some(m);
    }

    let mut last_validation = state.metrics;
    let mut stopped_early = false;
    let mut skipped_images = 0;
    let mut images_done = 0usize;
    let train_clock = Instant::now();
    let mut window = (Instant::now(), 0usize);
    let (mut acc_backbone, mut acc_neck, mut acc_head) = (
        GradientsAccumulator::new(),
        GradientsAccumulator::new(),
        GradientsAccumulator::new(),
    );
    let mut micro = 0usize;
    let mut loss_sum = 0.0f64;
    'epochs: for epoch in state.epoch..epochs {
        let order = match sampler {
            SamplerKind::Shuffled => {
                shuffled_order(data.train.len(), config.dataset.seed, epoch as u64)
            }
            SamplerKind::ClassBalanced => {
                let k = config.dataset.images_per_class;
                class_balanced_order(
                    &train_labels,
                    bs / k,
                    k,
                    batches_per_epoch,
                    config.dataset.seed,
                    epoch as u64,
                )
            }
        };
        let skip = if epoch == state.epoch {
            state.batches_in_epoch
        } else {
            0
        };
        let order: Vec<usize> = order[skip * bs..batches_per_epoch * bs].to_vec();
        let loader_config = LoaderConfig {
            batch_size: bs,
            num_workers: config.dataset.num_workers,
            prefetch_batches: 2,
            ordered: true,
            drop_last: true,
            seed: mix_seed(config.dataset.seed, 1_000_003 + epoch as u64),
            position_offset: (skip * bs) as u64,
        };
        let loader = BatchLoader::new(data.train.clone(), order, transform.clone(), &loader_config);
        for (i, batch) in loader.enumerate() {
            let batch_index = skip + i;
            for s in &batch.skipped {
                observer(TrainEvent::Skipped {
                    path: s.path.clone(),
                    reason: s.reason.clone(),
                });
            }
            skipped_images += batch.skipped.len();
            if batch.is_empty() {
                continue;
            }
            let targets: Vec<usize> = batch
                .labels
                .iter()
                .map(|&l| {
                    classes
                        .index_of(l)
                        .expect("training labels are in the class index")
                })
                .collect();
            train_device.seed(mix_seed(
                config.dataset.seed,
                (state.step * accum + micro) as u64,
            ));
            let shape = batch.shape();
            let x = Tensor::<4>::from_data(TensorData::new(batch.images, shape), &train_device);
            let loss = match &model.head {
                Some(head) => {
                    let features = dropout(model.embedder.features(x), config.model.dropout);
                    loss_fn.forward(head.cosine(features), &targets)
                }
                None => {
                    let emb = l2_normalize(model.embedder.features(x));
                    let labels = Tensor::<1, Int>::from_data(
                        TensorData::new(batch.labels.clone(), [batch.labels.len()]),
                        &train_device,
                    );
                    let memory = memory.as_mut().expect("XBM phases always have a memory");
                    xbm_loss(
                        &contrastive,
                        memory,
                        emb,
                        labels,
                        config.head.weight,
                        state.step >= config.head.start_iteration,
                    )
                }
            };
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: state.step + 1,
                    value,
                });
            }
            loss_sum += value as f64;
            let mut grads = loss.div_scalar(accum as f64).backward();
            acc_backbone.accumulate(
                &model.embedder.backbone,
                GradientsParams::from_module(&mut grads, &model.embedder.backbone),
            );
            acc_neck.accumulate(
                &model.embedder.neck,
                GradientsParams::from_module(&mut grads, &model.embedder.neck),
            );
            acc_head.accumulate(
                &model.head,
                GradientsParams::from_module(&mut grads, &model.head),
            );
            images_done += shape[0];
            window.1 += shape[0];
            micro += 1;
            if micro < accum {
                continue;
            }
            micro = 0;
            let (mut gb, mut gn, mut gh) =
                (acc_backbone.grads(), acc_neck.grads(), acc_head.grads());
            if let Some(max) = config.optim.grad_clip {
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
            let lr = head_lr.lr(state.step);
            let TrainModel {
                embedder: EmbeddingModel { backbone, neck },
                head,
            } = model;
            let backbone =
                optimizers
                    .backbone
                    .step(lr * config.optim.backbone_lr_factor, backbone, gb);
            let neck = optimizers.neck.step(lr, neck, gn);
            let head = optimizers.head.step(lr, head, gh);
            model = TrainModel {
                embedder: EmbeddingModel { backbone, neck },
                head,
            };
            state.step += 1;
            state.epoch = epoch;
            state.batches_in_epoch = batch_index + 1;
            let mean_loss = loss_sum / accum as f64;
            loss_sum = 0.0;
            let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), 0);
            log.step(state.step, epoch, mean_loss, lr, ips)?;
            observer(TrainEvent::Step {
                step: state.step,
                total_steps,
                epoch,
                loss: mean_loss,
                lr,
                images_per_s: ips,
            });

            let end = state.step >= total_steps;
            if state.step % validate_every == 0 || end {
                let m = validate(&model, &data, &classes, config, norm, &device)?;
                log.validation(state.step, epoch, &m)?;
                observer(TrainEvent::Validation {
                    step: state.step,
                    metrics: m,
                });
                last_validation = Some(m);
                state.metrics = Some(m);
                if let Some(map) = m.map_at_k {
                    state.history.push((state.step, map));
                }
                if state.batches_in_epoch == batches_per_epoch {
                    state.epoch = epoch + 1;
                    state.batches_in_epoch = 0;
                }
                plot_run(run_dir)?;
                let snapshot = memory.as_ref().map(CrossBatchMemory::snapshot);
                let path =
                    save_checkpoint(run_dir, &model, &optimizers, &state, snapshot.as_ref())?;
                let best = prune_checkpoints(run_dir, config.eval.keep_best)?;
                observer(TrainEvent::Checkpoint { path, best });
                if let Some(patience) = config.eval.early_stopping_patience
                    && should_stop(
                        &state.history,
                        patience,
                        config.eval.early_stopping_min_delta,
                    )
                {
                    observer(TrainEvent::EarlyStop { step: state.step });
                    stopped_early = true;
                    break 'epochs;
                }
            }
            if end {
                break 'epochs;
            }
        }
    }
    let best_checkpoint = resolve_checkpoint(run_dir).ok();
    let best_map = best_checkpoint
        .as_ref()
        .and_then(|d| read_state(d).ok())
        .and_then(|s| s.metrics)
        .and_then(|m| m.map_at_k);
    Ok(TrainSummary {
        steps: state.step,
        first_validation,
        last_validation,
        best_checkpoint,
        best_map,
        wall_time: started.elapsed(),
        images_per_s: images_done as f64 / train_clock.elapsed().as_secs_f64().max(1e-9),
        stopped_early,
        skipped_images,
    })
}

/// The XBM memory of a phase: restored from the checkpoint being resumed, else empty.
fn xbm_memory(
    config: &TrainConfig,
    dim: usize,
    resume_from: Option<&Path>,
    device: &Device,
) -> Result<CrossBatchMemory, TrainError> {
    let capacity = config.head.memory_size;
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

/// Early stopping: no improvement of at least `min_delta` over the best so far in the last
/// `patience` validations.
pub fn should_stop(history: &[(usize, f64)], patience: usize, min_delta: f64) -> bool {
    if history.len() <= patience {
        return false;
    }
    let split = history.len() - patience;
    let best_before = history[..split]
        .iter()
        .map(|h| h.1)
        .fold(f64::NEG_INFINITY, f64::max);
    history[split..]
        .iter()
        .all(|h| h.1 < best_before + min_delta)
}

/// The run folder for a config: `runs/<name>`.
pub fn default_run_dir(name: &str) -> PathBuf {
    Path::new("runs").join(name)
}

#[cfg(test)]
mod tests {
    use super::should_stop;

    #[test]
    fn early_stopping_waits_for_patience() {
        let h = [(1, 0.5), (2, 0.6), (3, 0.59), (4, 0.6)];
        assert!(!should_stop(&h, 3, 0.0));
        assert!(should_stop(&h, 2, 0.001));
        assert!(!should_stop(&h, 2, 0.0));
    }
}
