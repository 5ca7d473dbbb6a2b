//! The training loop of one phase (SPEC "Training recipe"), in named parts:
//! - [`Phase::prepare`]: data, class index, model (fresh, from an earlier phase or resumed),
//!   optimisers, [`Head`], the step schedule;
//! - [`Phase::train_micro_batch`]: forward, the head's loss, backward, gradients accumulated
//!   per model part ([`Accumulators`]);
//! - [`optimizer_step`]: global-norm clipping and AdamW per part, lr from warmup + cosine;
//! - [`Phase::validate_and_checkpoint`]: dev-set mAP@k and val accuracy ([`validate`]), metrics,
//!   plots, a checkpoint, pruning, early stopping.
//!
//! Everything random is seeded from `dataset.seed` and the step or sample position, so a run
//! resumed from a checkpoint continues the same sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_data::image::Normalization;
use visual_search_data::loader::{Batch, BatchLoader, LoaderConfig};
use visual_search_data::sampler::{class_balanced_order, mix_seed, shuffled_order};
use visual_search_data::transform::SampleTransform;
use visual_search_data::work_lock::{WorkLock, lock_work_folder};
use visual_search_model::compute_pool::on_pool;
use visual_search_model::registry::lookup;

use crate::checkpoint::{
    Optimizers, TrainListId, TrainState, ValidationMetrics, load_module, load_optimizers,
    locate_checkpoint, prune_checkpoints, read_state, save_checkpoint,
};
use crate::config::{Precision, SamplerKind, TrainConfig};
use crate::data_parallel::ProcessGroup;
use crate::error::TrainError;
use crate::head::Head;
use crate::labels::ClassIndex;
use crate::metrics_log::MetricsLog;
use crate::optimizer_step::{Accumulators, StepSettings, optimizer_step};
use crate::plots::plot_run;
use crate::resume_point::{DamagedCheckpoint, resume_checkpoint, set_aside_passed_over};
use crate::schedule::WarmupCosine;
use crate::train_model::{
    TrainModel, build_model, build_optimizers, materialize, set_training_flags,
};
use crate::training_data::{Data, load_data, train_transform};
use crate::validation::validate;

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
    /// Data-parallel training: this process's group (`data_parallel`); `None` trains alone.
    pub group: Option<Arc<ProcessGroup>>,
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
    /// `--resume` found this checkpoint damaged and continues from an earlier one (before
    /// `Started`, whose `start_step` says which); `set_aside` is where it was moved.
    DamagedCheckpoint {
        path: PathBuf,
        reason: String,
        set_aside: Option<PathBuf>,
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

/// Runs one phase; events go to `observer`.
pub fn train(
    config: &TrainConfig,
    options: &TrainOptions,
    observer: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let mut phase = Phase::prepare(config, options)?;
    for damaged in std::mem::take(&mut phase.passed_over) {
        observer(TrainEvent::DamagedCheckpoint {
            path: damaged.path,
            reason: damaged.reason,
            set_aside: damaged.set_aside,
        });
    }
    observer(phase.started_event());
    let first_validation = if options.validate_at_start && phase.resume_from.is_none() {
        Some(phase.validate_at(0, 0, observer)?)
    } else {
        None
    };
    let last_validation = phase.state.metrics;
    let run = phase.run(observer)?;
    // Named, not loaded: the run has just written it, so it is not read again to check it.
    let best_checkpoint = locate_checkpoint(&options.run_dir).ok();
    let best_map = best_checkpoint
        .as_ref()
        .and_then(|d| read_state(d).ok())
        .and_then(|s| s.metrics)
        .and_then(|m| m.map_at_k);
    Ok(TrainSummary {
        steps: phase.state.step,
        first_validation,
        last_validation: run.last_validation.or(last_validation),
        best_checkpoint,
        best_map,
        wall_time: started.elapsed(),
        images_per_s: run.images as f64 / run.train_time.as_secs_f64().max(1e-9),
        stopped_early: run.stopped_early,
        skipped_images: run.skipped_images,
    })
}

/// How many batches and steps a phase has, and when it validates.
struct Schedule {
    batches_per_epoch: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    epochs: usize,
    validate_every: usize,
    lr: WarmupCosine,
}

impl Schedule {
    fn new(config: &TrainConfig, train_images: usize) -> Result<Self, TrainError> {
        let bs = config.dataset.batch_size;
        let accum = config.optim.grad_accumulation;
        let batches_per_epoch = train_images / bs;
        if batches_per_epoch < accum {
            return Err(TrainError::Invalid(format!(
                "{train_images} training images make {batches_per_epoch} batches of {bs}, fewer than one optimiser step ({accum} batches)"
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
        Ok(Schedule {
            batches_per_epoch,
            steps_per_epoch,
            total_steps,
            epochs: total_steps.div_ceil(steps_per_epoch),
            validate_every: (steps_per_epoch / config.eval.validations_per_epoch).max(1),
            lr: WarmupCosine {
                base: config.optim.lr_head,
                warmup: config.optim.warmup_steps,
                total: total_steps,
            },
        })
    }
}

/// What the epochs loop saw.
struct RunOutcome {
    last_validation: Option<ValidationMetrics>,
    stopped_early: bool,
    skipped_images: usize,
    images: usize,
    train_time: Duration,
}

/// A phase being trained: everything the loop reads and updates.
struct Phase<'a> {
    config: &'a TrainConfig,
    run_dir: &'a Path,
    data: Data,
    classes: ClassIndex,
    norm: Normalization,
    device: Device,
    train_device: Device,
    resume_from: Option<PathBuf>,
    /// Damaged checkpoints `--resume` passed over, for the observer.
    passed_over: Vec<DamagedCheckpoint>,
    /// The leader's hold on the run folder.
    _run_lock: Option<WorkLock>,
    state: TrainState,
    /// Taken out for the optimiser step, which consumes it.
    model: Option<TrainModel>,
    optimizers: Optimizers,
    head: Head,
    accumulators: Accumulators,
    log: MetricsLog,
    schedule: Schedule,
    transform: Arc<dyn SampleTransform>,
    group: Option<Arc<ProcessGroup>>,
}

/// The lock file the leader holds in the run folder while it trains.
const RUN_LOCK_FILE: &str = ".train.lock";

/// Refuses to start a new run in a folder that holds one (its `config.yml` or checkpoints):
/// the new run's checkpoints would be pruned against the old run's, and `best` could name
/// the old run's model.
fn refuse_an_earlier_run(run_dir: &Path) -> Result<(), TrainError> {
    let checkpoints = run_dir.join("checkpoints");
    let has_checkpoints = std::fs::read_dir(&checkpoints).is_ok_and(|mut e| e.next().is_some());
    if run_dir.join("config.yml").exists() || has_checkpoints {
        return Err(TrainError::Invalid(format!(
            "{} holds a run already; `train --resume {}` continues it, or choose another \
             --name for a new run",
            run_dir.display(),
            run_dir.display()
        )));
    }
    Ok(())
}

impl<'a> Phase<'a> {
    fn prepare(config: &'a TrainConfig, options: &'a TrainOptions) -> Result<Self, TrainError> {
        set_precision(config.optim.precision, &options.device)?;
        let run_dir = options.run_dir.as_path();
        let leader = options.group.as_ref().is_none_or(|g| g.is_leader());
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        // The leader holds the run folder until the phase ends: a second `train` on it (a
        // `--resume` in another terminal) would prune this one's checkpoints.
        let run_lock = if leader {
            Some(lock_work_folder(run_dir, RUN_LOCK_FILE, "training")?)
        } else {
            None
        };
        if leader && !options.resume {
            refuse_an_earlier_run(run_dir)?;
        }
        if options.group.is_some() && matches!(config.head, crate::config::HeadConfig::Xbm(_)) {
            return Err(TrainError::Invalid(
                "data-parallel training of an XBM phase is not supported: each process's \
                 memory would hold only its own embeddings; train XBM in one process"
                    .into(),
            ));
        }
        let spec = lookup(&config.model.name).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let norm = Normalization {
            mean: spec.mean,
            std: spec.std,
        };
        let data = load_data(config)?;
        let device = options.device.clone();
        let train_device = device.clone().autodiff();
        device.seed(config.dataset.seed);

        let (resume_from, passed_over) = if options.resume {
            let mut point = resume_checkpoint(run_dir)?;
            if leader {
                set_aside_passed_over(run_dir, &mut point, config.eval.keep_best)?;
            }
            (Some(point.dir), point.passed_over)
        } else {
            (None, Vec::new())
        };
        let state = match &resume_from {
            Some(dir) => {
                let mut state = read_state(dir)?;
                state.check_resumed_with(config, &spec.name)?;
                state.check_resumed_list(&data.train)?;
                state
            }
            None => TrainState {
                step: 0,
                epoch: 0,
                batches_in_epoch: 0,
                image_size: config.dataset.input_size,
                model_name: spec.name.clone(),
                neck_dim: config.model.embedding_dim,
                gem: config.model.gem,
                classes: ClassIndex::from_labels(data.train.iter().map(|s| s.label)),
                train_list: Some(TrainListId::of(&data.train)),
                metrics: None,
                history: Vec::new(),
            },
        };
        let classes = state.classes.clone();
        if let (Some(n), crate::config::HeadConfig::Arcface(_)) =
            (config.dataset.num_of_classes, &config.head)
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
        // Built after loading: loaded parameters carry their saved ids, and the no-decay group
        // is a set of ids.
        let mut optimizers = build_optimizers(&model, config.optim.weight_decay);
        if let Some(dir) = &resume_from {
            optimizers = load_optimizers(dir, optimizers)?;
        }
        if config.model.freeze_batchnorm {
            model.embedder.backbone = set_training_flags(model.embedder.backbone, false);
        }
        // The other ranks log beside the leader's run, in `ranks/R/`, and write nothing else.
        let log_dir = match &options.group {
            Some(g) if !leader => run_dir.join("ranks").join(g.config.rank.to_string()),
            _ => run_dir.to_path_buf(),
        };
        std::fs::create_dir_all(&log_dir).map_err(|e| TrainError::io(&log_dir, e))?;
        let log = MetricsLog::open(&log_dir, resume_from.as_ref().map(|_| state.step))?;
        if leader {
            let resolved =
                serde_yaml_ng::to_string(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
            visual_search_data::atomic_write::write_atomically(
                &run_dir.join("config.yml"),
                resolved.as_bytes(),
            )?;
        }
        let schedule = Schedule::new(config, data.train.len())?;
        let head = Head::new(
            config,
            &classes,
            model.embedder.dim(),
            resume_from.as_deref(),
            &train_device,
        )?;
        Ok(Phase {
            config,
            run_dir,
            transform: train_transform(config, norm),
            data,
            classes,
            norm,
            device,
            train_device,
            resume_from,
            passed_over,
            _run_lock: run_lock,
            state,
            model: Some(model),
            optimizers,
            head,
            accumulators: Accumulators::default(),
            log,
            schedule,
            group: options.group.clone(),
        })
    }

    fn is_leader(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.is_leader())
    }

    fn model(&self) -> &TrainModel {
        self.model
            .as_ref()
            .expect("the model is back after each step")
    }

    fn started_event(&self) -> TrainEvent {
        let dim = self.model().embedder.dim();
        TrainEvent::Started {
            total_steps: self.schedule.total_steps,
            steps_per_epoch: self.schedule.steps_per_epoch,
            start_step: self.state.step,
            train_images: self.data.train.len(),
            classes: self.classes.len(),
            memory_bytes: self
                .head
                .memory()
                .map(|m| visual_search_model::losses::xbm::memory_bytes(m.capacity(), dim)),
        }
    }

    /// The batches of `epoch` still to train (all of them, or the rest of a resumed epoch).
    fn epoch_loader(&self, epoch: usize) -> (usize, BatchLoader) {
        let config = self.config;
        let bs = config.dataset.batch_size;
        let seed = config.dataset.seed;
        let batches = self.schedule.batches_per_epoch;
        let order = match config.sampler() {
            SamplerKind::Shuffled => shuffled_order(self.data.train.len(), seed, epoch as u64),
            SamplerKind::ClassBalanced => {
                let labels: Vec<i64> = self.data.train.iter().map(|s| s.label).collect();
                let k = config.dataset.images_per_class;
                class_balanced_order(&labels, bs / k, k, batches, seed, epoch as u64)
            }
        };
        let skip = if epoch == self.state.epoch {
            self.state.batches_in_epoch
        } else {
            0
        };
        let order: Vec<usize> = order[skip * bs..batches * bs].to_vec();
        let loader_config = LoaderConfig {
            batch_size: bs,
            num_workers: config.dataset.num_workers,
            prefetch_batches: 2,
            ordered: true,
            drop_last: true,
            seed: mix_seed(seed, 1_000_003 + epoch as u64),
            position_offset: (skip * bs) as u64,
            share: self.group.as_ref().map(|g| g.config.share()),
        };
        let loader = BatchLoader::new(
            self.data.train.clone(),
            order,
            self.transform.clone(),
            &loader_config,
        );
        (skip, loader)
    }

    /// Forward, loss, backward and accumulation of micro-batch `micro` of the next step;
    /// returns the loss.
    fn train_micro_batch(&mut self, batch: Batch, micro: usize) -> Result<f32, TrainError> {
        let accum = self.config.optim.grad_accumulation;
        self.train_device.seed(mix_seed(
            self.config.dataset.seed,
            (self.state.step * accum + micro) as u64,
        ));
        let shape = batch.shape();
        let x = Tensor::<4>::from_data(TensorData::new(batch.images, shape), &self.train_device);
        let model = self
            .model
            .as_ref()
            .expect("the model is back after each step");
        let features = model.embedder.features(x);
        let loss = self.head.loss(
            model.head.as_ref(),
            features,
            &batch.labels,
            self.state.step,
        );
        let value = loss.clone().into_scalar::<f32>();
        // In a group a non-finite loss is found in the summed loss, by every process at once.
        if !value.is_finite() && self.group.is_none() {
            return Err(TrainError::NonFiniteLoss {
                step: self.state.step + 1,
                value,
            });
        }
        // In a group each share's gradient counts by its images (see `data_parallel`).
        let weight = match &self.group {
            Some(_) => shape[0] as f64 / self.config.dataset.batch_size as f64,
            None => 1.0,
        };
        let mut grads = loss.div_scalar(accum as f64 / weight).backward();
        self.accumulators.accumulate(model, &mut grads);
        Ok(value)
    }

    /// The step's mean loss from `loss_sum` (each micro-batch's loss times its images) over
    /// the step's `images` (this process's share); in a group, first sums the gradients,
    /// losses and image counts over the processes.
    fn finish_gradients(&mut self, loss_sum: f64, images: usize) -> Result<f64, TrainError> {
        let accum = self.config.optim.grad_accumulation as f64;
        let Some(group) = self.group.clone() else {
            return Ok(loss_sum / images.max(1) as f64);
        };
        let model = self
            .model
            .as_ref()
            .expect("the model is back after each step");
        let [loss, total] = self.accumulators.all_reduce(
            model,
            &group,
            [loss_sum, images as f64],
            // Weighted by share/batch above; an image the loader skipped shrinks the batch.
            |sums| (self.config.dataset.batch_size as f64 * accum / sums[1].max(1.0)) as f32,
        )?;
        let mean = loss / total.max(1.0);
        if !mean.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: self.state.step + 1,
                value: mean as f32,
            });
        }
        Ok(mean)
    }

    /// Validates the model at `step`, logs and reports it.
    fn validate_at(
        &mut self,
        step: usize,
        epoch: usize,
        observer: &mut dyn FnMut(TrainEvent),
    ) -> Result<ValidationMetrics, TrainError> {
        let m = validate(
            self.model(),
            &self.data,
            &self.classes,
            self.config,
            self.norm,
            &self.device,
        )?;
        self.log.validation(step, epoch, &m)?;
        observer(TrainEvent::Validation { step, metrics: m });
        Ok(m)
    }

    /// After step `self.state.step` of `epoch`: validation, plots, a checkpoint (pruned to the
    /// best), and the early-stopping verdict (true: stop).
    fn validate_and_checkpoint(
        &mut self,
        epoch: usize,
        observer: &mut dyn FnMut(TrainEvent),
    ) -> Result<bool, TrainError> {
        let m = self.validate_at(self.state.step, epoch, observer)?;
        self.state.metrics = Some(m);
        if let Some(map) = m.map_at_k {
            self.state.history.push((self.state.step, map));
        }
        if self.state.batches_in_epoch == self.schedule.batches_per_epoch {
            self.state.epoch = epoch + 1;
            self.state.batches_in_epoch = 0;
        }
        if self.is_leader() {
            plot_run(self.run_dir)?;
            let snapshot = self.head.memory().map(|m| m.snapshot());
            let path = save_checkpoint(
                self.run_dir,
                self.model(),
                &self.optimizers,
                &self.state,
                snapshot.as_ref(),
            )?;
            let best = prune_checkpoints(self.run_dir, self.config.eval.keep_best)?;
            observer(TrainEvent::Checkpoint { path, best });
        }
        let eval = &self.config.eval;
        let stop = eval.early_stopping_patience.is_some_and(|patience| {
            should_stop(&self.state.history, patience, eval.early_stopping_min_delta)
        });
        if stop {
            observer(TrainEvent::EarlyStop {
                step: self.state.step,
            });
        }
        Ok(stop)
    }

    /// The epochs loop: micro-batches, optimiser steps, validations, until the last step or
    /// early stopping.
    fn run(&mut self, observer: &mut dyn FnMut(TrainEvent)) -> Result<RunOutcome, TrainError> {
        let accum = self.config.optim.grad_accumulation;
        let mut outcome = RunOutcome {
            last_validation: None,
            stopped_early: false,
            skipped_images: 0,
            images: 0,
            train_time: Duration::ZERO,
        };
        let device = self.train_device.clone();
        let clock = Instant::now();
        let mut window = (Instant::now(), 0usize);
        let mut micro = 0usize;
        let mut loss_sum = 0.0f64;
        let mut step_images = 0usize;
        'epochs: for epoch in self.state.epoch..self.schedule.epochs {
            let (skip, loader) = self.epoch_loader(epoch);
            for (i, batch) in loader.enumerate() {
                for s in &batch.skipped {
                    observer(TrainEvent::Skipped {
                        path: s.path.clone(),
                        reason: s.reason.clone(),
                    });
                }
                outcome.skipped_images += batch.skipped.len();
                if batch.is_empty() && self.group.is_some() {
                    // The other ranks train this batch; skipping it here would put this rank
                    // a micro-batch behind them.
                    return Err(TrainError::Invalid(format!(
                        "none of the images of this process's share of batch {} could be read",
                        batch.index
                    )));
                }
                if batch.is_empty() {
                    continue;
                }
                let images = batch.shape()[0];
                // On a pool thread: the loader's next batch is awaited outside.
                loss_sum += on_pool(&device, || self.train_micro_batch(batch, micro))? as f64
                    * images as f64;
                step_images += images;
                outcome.images += images;
                window.1 += images;
                micro += 1;
                if micro < accum {
                    continue;
                }
                micro = 0;
                let mean_loss = self.finish_gradients(loss_sum, step_images)?;
                (loss_sum, step_images) = (0.0, 0);
                let lr = self.schedule.lr.lr(self.state.step);
                let model = self
                    .model
                    .take()
                    .expect("the model is back after each step");
                let settings = StepSettings {
                    lr,
                    backbone_lr_factor: self.config.optim.backbone_lr_factor,
                    grad_clip: self.config.optim.grad_clip,
                };
                let (accumulators, optimizers) = (&mut self.accumulators, &mut self.optimizers);
                self.model = Some(on_pool(&device, || {
                    optimizer_step(model, accumulators, optimizers, settings)
                }));
                self.state.step += 1;
                self.state.epoch = epoch;
                self.state.batches_in_epoch = skip + i + 1;
                let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), 0);
                self.log.step(self.state.step, epoch, mean_loss, lr, ips)?;
                observer(TrainEvent::Step {
                    step: self.state.step,
                    total_steps: self.schedule.total_steps,
                    epoch,
                    loss: mean_loss,
                    lr,
                    images_per_s: ips,
                });
                let end = self.state.step >= self.schedule.total_steps;
                if self.state.step.is_multiple_of(self.schedule.validate_every) || end {
                    let stop = self.validate_and_checkpoint(epoch, observer)?;
                    outcome.last_validation = self.state.metrics;
                    if stop {
                        outcome.stopped_early = true;
                        break 'epochs;
                    }
                }
                if end {
                    break 'epochs;
                }
            }
        }
        outcome.train_time = clock.elapsed();
        Ok(outcome)
    }
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

/// Puts `precision` in force for this process's training (and its validations): f32, or bf16
/// mixed precision — f32 weights, optimizer state, norms, losses and heads, with the
/// convolutions' and linear layers' products in bf16, forward and backward: on flex inside our
/// kernels on AMX tiles (refused without AMX-BF16), on tch and the GPU backends as bf16 casts
/// around burn's operations. f16 is not implemented.
fn set_precision(precision: Precision, device: &Device) -> Result<(), TrainError> {
    use visual_search_model::train_ops::{MatmulPrecision, set_training_precision_for};
    match precision {
        Precision::F32 => {
            set_training_precision_for(device, MatmulPrecision::F32);
            Ok(())
        }
        Precision::Bf16 => match set_training_precision_for(device, MatmulPrecision::Bf16) {
            MatmulPrecision::Bf16 => Ok(()),
            MatmulPrecision::F32 => Err(TrainError::Invalid(
                "optim.precision bf16 on flex needs a CPU with AMX-BF16 (Intel Xeon 4th \
                 generation or newer) and a Linux kernel that allows it; this machine has none: \
                 use precision: f32 (or bf16 on tch, which a CPU without native bf16 runs slower \
                 than f32)"
                    .into(),
            )),
        },
        Precision::F16 => Err(TrainError::Invalid(
            "optim.precision f16 is not implemented; use bf16 or f32".into(),
        )),
    }
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
