//! The per-operation profile of a train step on flex (`train_ops::op_profile`, printed by
//! `bench train`) counts every one of our operations once in the pass it ran in: a tiny
//! ConvNeXt's and a tiny ResNet's step (the trainer's head, accumulators and optimiser step),
//! counted against their architectures, and nothing when recording is off.
//!
//! Its own test binary: the recording switch is process-wide.

use std::sync::Mutex;

use burn::tensor::{Distribution, Tensor};
use visual_search_model::device::parse_device;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::heads::arcface_subcenter::{
    ArcFaceLoss, ArcFaceSubcenter, dynamic_margins,
};
use visual_search_model::registry::{BuildOptions, lookup};
use visual_search_model::train_ops::op_profile::{self, OpKind, OpProfile, Phase};
use visual_search_train::head::Head;
use visual_search_train::labels::ClassIndex;
use visual_search_train::optimizer_step::{Accumulators, StepSettings, optimizer_step};
use visual_search_train::train_model::{
    TrainModel, build_optimizers, materialize, set_training_flags,
};

/// Held while a test records: the tests of this binary run on parallel threads.
static RECORDING: Mutex<()> = Mutex::new(());

/// Two train steps of `model` (frozen batch norm, ArcFace, clipping, AdamW) on random images;
/// the second recorded when `record`. Returns what was recorded.
fn step_profile(model: &str, record: bool) -> OpProfile {
    let spec = lookup(model).unwrap();
    let device = parse_device("flex").unwrap().autodiff();
    let options = BuildOptions {
        image_size: spec.input_size,
        with_classifier: false,
        gem: false,
        drop_path_rate: 0.0,
    };
    let embedder = EmbeddingModel::new(&spec, &options, None, &device);
    let classes = ClassIndex::from_labels([0i64, 1, 1, 2]);
    let head = ArcFaceSubcenter::new(embedder.dim(), classes.len(), 2, &device);
    let mut model = TrainModel {
        embedder,
        head: Some(head),
    };
    materialize(&model);
    model.embedder.backbone = set_training_flags(model.embedder.backbone, false);
    let mut optimizers = build_optimizers(&model, 0.05);
    let mut loss_side = Head::ArcFace {
        loss: ArcFaceLoss {
            margins: dynamic_margins(&classes.counts, 0.45, 0.05),
            s: 16.0,
        },
        classes: classes.clone(),
        dropout: 0.0,
    };
    let size = spec.input_size;
    let mut accumulators = Accumulators::default();
    let _alone = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
    op_profile::set_recording(false);
    op_profile::take();
    for step in 0..2 {
        op_profile::set_recording(record && step == 1);
        let x = Tensor::<4>::random([2, 3, size, size], Distribution::Default, &device);
        let features = model.embedder.features(x);
        let loss = loss_side.loss(model.head.as_ref(), features, &[0, 2], 0);
        let mut grads = loss.backward();
        accumulators.accumulate(&model, &mut grads);
        let settings = StepSettings {
            lr: 1e-3,
            backbone_lr_factor: 0.1,
            grad_clip: Some(5.0),
        };
        model = optimizer_step(model, &mut accumulators, &mut optimizers, settings);
    }
    op_profile::set_recording(false);
    op_profile::take()
}

/// Forward and backward calls of `kind`.
fn calls(profile: &OpProfile, kind: OpKind) -> [u64; 2] {
    [Phase::Forward, Phase::Backward].map(|p| profile.get(kind, p).calls)
}

/// Every recorded kind took time, and the optimiser updated and measured each parameter once.
fn check_times_and_optimizer(profile: &OpProfile) {
    for kind in OpKind::ALL {
        for phase in Phase::ALL {
            let t = profile.get(kind, phase);
            assert_eq!(t.calls > 0, t.wall_s > 0.0, "{kind:?} {phase:?}: {t:?}");
            assert!(t.cpu_s >= 0.0, "{kind:?} {phase:?}: {t:?}");
        }
    }
    let adamw = profile.get(OpKind::AdamW, Phase::Optimizer).calls;
    assert!(adamw > 0);
    assert_eq!(profile.get(OpKind::GradNorm, Phase::Optimizer).calls, adamw);
    for kind in OpKind::ALL {
        if !matches!(kind, OpKind::AdamW | OpKind::GradNorm) {
            assert_eq!(profile.get(kind, Phase::Optimizer).calls, 0, "{kind:?}");
        }
    }
}

#[test]
fn a_convnext_step_counts_each_operation_once_per_pass() {
    let profile = step_profile("tiny_convnext", true);
    // Depths [1, 1, 2, 1]: 5 blocks, each a 7×7 depthwise convolution, a LayerNorm, two linear
    // layers, a GELU and the layer scale with the residual sum; the 4×4 stem and three 2×2 downsampling convolutions, each with a
    // LayerNorm; the final LayerNorm. Every one has a backward pass.
    assert_eq!(calls(&profile, OpKind::DepthwiseConv), [5, 5]);
    assert_eq!(calls(&profile, OpKind::Conv), [4, 4]);
    assert_eq!(calls(&profile, OpKind::PointwiseConv), [0, 0]);
    assert_eq!(calls(&profile, OpKind::LayerNorm), [10, 10]);
    assert_eq!(calls(&profile, OpKind::Linear), [10, 10]);
    assert_eq!(calls(&profile, OpKind::Gelu), [5, 5]);
    assert_eq!(calls(&profile, OpKind::LayerScale), [5, 5]);
    check_times_and_optimizer(&profile);
}

#[test]
fn a_resnet_step_counts_each_operation_once_per_pass() {
    let profile = step_profile("tiny_resnet", true);
    // Four bottleneck blocks, each 1×1, 3×3, 1×1 and a 1×1 shortcut (the widths change in
    // every stage), after a 7×7 stem; the frozen batch norm after each of the 17 convolutions
    // is folded into it, and so is the ReLU after it where nothing comes between.
    assert_eq!(calls(&profile, OpKind::PointwiseConv), [12, 12]);
    assert_eq!(calls(&profile, OpKind::Conv), [5, 5]);
    assert_eq!(calls(&profile, OpKind::DepthwiseConv), [0, 0]);
    assert_eq!(calls(&profile, OpKind::Gelu), [0, 0]);
    assert_eq!(calls(&profile, OpKind::LayerScale), [0, 0]);
    check_times_and_optimizer(&profile);
}

#[test]
fn nothing_is_recorded_while_recording_is_off() {
    assert!(step_profile("tiny_convnext", false).is_empty());
}
