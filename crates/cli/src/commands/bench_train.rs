//! `visual-search bench train`: train-step throughput (forward + backward + AdamW, batch of real
//! photos, sub-centre ArcFace head) per model and compiled backend, against PyTorch eager f32 and
//! PyTorch bf16 autocast on the same batch and recipe, measured in the same run by
//! `tools/bench_train_torch.py`. Both sides report the split of a step into forward, backward
//! and optimiser, and how many cores each phase kept busy (process CPU time / wall time), which
//! shows the phases that run on one thread. On flex each of those phases is also split by kind
//! of operation (`train_ops::op_profile`), with what burn's own operations take as the rest.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;
use burn::tensor::{Tensor, TensorData};
use visual_search_model::compute_pool::on_pool;
use visual_search_model::device::{compiled_backends, parse_device};
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::heads::arcface_subcenter::{
    ArcFaceLoss, ArcFaceSubcenter, dynamic_margins,
};
use visual_search_model::registry::{BuildOptions, lookup};
use visual_search_model::train_ops::op_profile::{
    self, OpKind, OpProfile, OpTimes, Phase, process_cpu_seconds,
};
use visual_search_train::head::Head;
use visual_search_train::labels::ClassIndex;
use visual_search_train::optimizer_step::{Accumulators, StepSettings, optimizer_step};
use visual_search_train::train_model::{
    TrainModel, build_optimizers, materialize, set_training_flags,
};

use super::bench_embed::{PhotoBenchArgs, photo_batch, raw_f32_file};
use super::bench_preprocess::{baseline_json, baseline_python, tools_dir};
use crate::table;

/// Times the recipe's train step on one batch of real photos: the median of `--steps` steps
/// after `--warmup`, for each model on each backend, with the same step in PyTorch (eager f32
/// and bf16 autocast) as the baselines.
#[derive(clap::Args)]
pub struct Args {
    /// Models to time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "efficientnet_lite0,convnext_tiny,vit_b32_clip,resnet50"
    )]
    models: Vec<String>,
    /// EfficientNet-Lite0 weights (both sides); other models start from random weights, which
    /// does not change their speed.
    #[arg(long)]
    lite0_weights: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch: usize,
    /// Input side [default: each model's].
    #[arg(long)]
    size: Option<usize>,
    /// Timed steps (the median is kept).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Classes of the ArcFace head.
    #[arg(long, default_value_t = 100)]
    classes: usize,
    /// Backends to time [default: every compiled one].
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Our precisions to time: f32, and bf16 (bf16 products: on AMX tiles on flex, as casts
    /// around libtorch's or CubeCL's operations elsewhere), as `optim.precision` trains.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precisions: Vec<StepPrecision>,
    #[command(flatten)]
    photos: PhotoBenchArgs,
}

/// A precision our step runs in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StepPrecision {
    F32,
    Bf16,
}

impl StepPrecision {
    /// Puts this precision in force for our kernels; false where `device` cannot run it.
    fn apply(self, device: &str) -> bool {
        use visual_search_model::train_ops::{MatmulPrecision, set_training_precision_for};
        let wanted = match self {
            StepPrecision::F32 => MatmulPrecision::F32,
            StepPrecision::Bf16 => MatmulPrecision::Bf16,
        };
        // An unknown device is reported by the step itself.
        parse_device(device).map_or(self == StepPrecision::F32, |d| {
            set_training_precision_for(&d, wanted) == wanted
        })
    }

    fn name(self) -> &'static str {
        match self {
            StepPrecision::F32 => "f32",
            StepPrecision::Bf16 => "bf16",
        }
    }
}

/// Seconds of wall time and of process CPU time per phase, summed over steps.
#[derive(Default, Clone, Copy)]
struct PhaseTimes {
    wall: [f64; 3],
    cpu: [f64; 3],
}

const PHASES: [&str; 3] = ["forward", "backward", "optimizer"];

impl PhaseTimes {
    fn time<T>(&mut self, phase: usize, f: impl FnOnce() -> T) -> T {
        let (w, c) = (Instant::now(), process_cpu_seconds());
        let out = f();
        self.wall[phase] += w.elapsed().as_secs_f64();
        self.cpu[phase] += process_cpu_seconds() - c;
        out
    }
}

/// One model's figures on one side.
struct StepFigures {
    images_per_s: f64,
    /// Mean seconds per step of each phase.
    phases: [f64; 3],
    /// Cores busy in each phase.
    cores: [f64; 3],
    /// Our operations over the timed steps, and how many steps that was (flex only).
    ops: Option<(OpProfile, usize)>,
}

/// Records our operations while it lives.
struct RecordingOps;

impl RecordingOps {
    fn start() -> Self {
        op_profile::take();
        op_profile::set_recording(true);
        Self
    }

    /// What was recorded, recording off.
    fn finish(self) -> OpProfile {
        drop(self);
        op_profile::take()
    }
}

impl Drop for RecordingOps {
    fn drop(&mut self) {
        op_profile::set_recording(false);
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let devices = if args.devices.is_empty() {
        compiled_backends().into_iter().map(String::from).collect()
    } else {
        args.devices.clone()
    };
    println!(
        "train step: batch {}, ArcFace (k 3, {} classes), AdamW, frozen batch norm; median of {} steps after {} warm-up, {} threads",
        args.batch,
        args.classes,
        args.steps,
        args.warmup,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rows = Vec::new();
    let mut op_tables = Vec::new();
    for model in &args.models {
        let spec = lookup(model)?;
        let size = args.size.unwrap_or(spec.input_size);
        let input = photo_batch(args.photos.dataset_dir.as_deref(), &spec, size, args.batch)?;
        let weights = (model == "efficientnet_lite0")
            .then(|| args.lite0_weights.clone())
            .flatten();
        let baseline = if args.photos.no_baseline {
            None
        } else {
            match run_baseline(&args, model, weights.as_ref(), &input, size) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!(
                        "{model}: baseline unavailable ({}); our figures only",
                        crate::error_report::error_line(&e)
                    );
                    None
                }
            }
        };
        let torch = |mode: &str| baseline.as_ref().and_then(|b| torch_figures(&b[mode]));
        let (eager, bf16) = (torch("eager_f32"), torch("bf16_autocast"));
        if let Some(why) = baseline
            .as_ref()
            .and_then(|b| b["bf16_autocast_error"].as_str())
        {
            eprintln!("{model}: PyTorch bf16 autocast: {why}");
        }
        for device in &devices {
            for precision in &args.precisions {
                if !precision.apply(device) {
                    eprintln!(
                        "{model} on {device}: no {} step here (bf16 on flex needs AMX)",
                        precision.name()
                    );
                    continue;
                }
                let ours = time_ours(&args, model, weights.as_ref(), &input, size, device)?;
                let name = format!("{model} visual-search {device} {}", precision.name());
                rows.push(row(&name, &ours, eager.as_ref(), bf16.as_ref()));
                if let Some((ops, steps)) = ours.ops.as_ref().filter(|(ops, _)| !ops.is_empty()) {
                    op_tables.push((name, op_rows(&ours, ops, *steps)));
                }
            }
        }
        if let Some(e) = &eager {
            rows.push(row(&format!("{model} PyTorch eager f32"), e, None, None));
        }
        if let Some(b) = &bf16 {
            rows.push(row(
                &format!("{model} PyTorch bf16 autocast"),
                b,
                None,
                None,
            ));
        }
        if let Some(ops) = baseline.as_ref().and_then(|b| b["top_ops_ms"].as_array()) {
            println!("{model}: PyTorch's heaviest ops in one eager step (self CPU ms):");
            for op in ops.iter().take(8) {
                println!(
                    "  {:<44} {:>9.1}",
                    op[0].as_str().unwrap_or("?"),
                    op[1].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    let header = [
        "step",
        "img/s",
        "vs eager f32",
        "vs bf16 autocast",
        "forward s (cores)",
        "backward s (cores)",
        "optimizer s (cores)",
    ];
    print!("{}", table::render(&header, &rows));
    let op_header = [
        "operation",
        "calls",
        "forward ms (cores)",
        "backward ms (cores)",
        "optimizer ms (cores)",
        "share of step",
    ];
    for (name, op_rows) in &op_tables {
        println!("\n{name}, per step by kind of operation (cores = CPU time / wall time):");
        print!("{}", table::render(&op_header, op_rows));
    }
    Ok(())
}

/// The rows of a step's profile: each kind of our operations that ran, then what the phases
/// spent outside them (burn's own operations), then the whole step.
fn op_rows(step: &StepFigures, ops: &OpProfile, steps: usize) -> Vec<Vec<String>> {
    let n = steps.max(1) as f64;
    let step_s: f64 = step.phases.iter().sum();
    let cell = |t: OpTimes| {
        if t.wall_s <= 0.0 {
            return String::new();
        }
        let ms = t.wall_s / n * 1e3;
        let digits = if ms < 10.0 { 1 } else { 0 };
        format!("{ms:.digits$} ({:.1})", t.cpu_s / t.wall_s)
    };
    let line = |name: &str, calls: String, times: [OpTimes; 3]| {
        let wall: f64 = times.iter().map(|t| t.wall_s).sum::<f64>() / n;
        let mut r = vec![name.to_string(), calls];
        r.extend(times.map(cell));
        r.push(format!("{:.1} %", 100.0 * wall / step_s.max(1e-12)));
        r
    };
    let mut rows = Vec::new();
    for kind in OpKind::ALL {
        let times = Phase::ALL.map(|p| ops.get(kind, p));
        let calls: u64 = times.iter().map(|t| t.calls).sum();
        if calls > 0 {
            rows.push(line(kind.name(), format!("{:.0}", calls as f64 / n), times));
        }
    }
    // The phases' own totals, over the same steps.
    let phase = |i: usize| OpTimes {
        calls: 0,
        wall_s: step.phases[i] * n,
        cpu_s: step.phases[i] * step.cores[i] * n,
    };
    let rest = Phase::ALL.map(|p| {
        let (whole, ours) = (phase(p as usize), ops.phase_total(p));
        OpTimes {
            calls: 0,
            wall_s: (whole.wall_s - ours.wall_s).max(0.0),
            cpu_s: (whole.cpu_s - ours.cpu_s).max(0.0),
        }
    });
    rows.push(line(
        "the rest: burn's operations (element-wise, copies, loss)",
        String::new(),
        rest,
    ));
    rows.push(line("whole step", String::new(), [0, 1, 2].map(phase)));
    rows
}

fn row(
    name: &str,
    f: &StepFigures,
    eager: Option<&StepFigures>,
    bf16: Option<&StepFigures>,
) -> Vec<String> {
    let ratio = |b: Option<&StepFigures>| {
        b.map_or(String::new(), |b| {
            format!("{:.2}x", f.images_per_s / b.images_per_s)
        })
    };
    let mut r = vec![
        name.to_string(),
        format!("{:.2}", f.images_per_s),
        ratio(eager),
        ratio(bf16),
    ];
    r.extend((0..3).map(|i| format!("{:.2} ({:.1})", f.phases[i], f.cores[i])));
    r
}

fn torch_figures(v: &serde_json::Value) -> Option<StepFigures> {
    let ips = v["images_per_s"].as_f64()?;
    let phase = |key: &str, i: usize| v[key][PHASES[i]].as_f64().unwrap_or(f64::NAN);
    Some(StepFigures {
        images_per_s: ips,
        phases: [0, 1, 2].map(|i| phase("phases_s", i)),
        cores: [0, 1, 2].map(|i| phase("cores", i)),
        ops: None,
    })
}

/// Our train step, as the trainer runs it (`Head::loss`, `Accumulators`, `optimizer_step`).
fn time_ours(
    args: &Args,
    model: &str,
    weights: Option<&PathBuf>,
    input: &[f32],
    size: usize,
    device: &str,
) -> anyhow::Result<StepFigures> {
    let spec = lookup(model)?;
    let device = parse_device(device)?.autodiff();
    let options = BuildOptions {
        image_size: size,
        with_classifier: false,
        gem: false,
        drop_path_rate: 0.0,
    };
    let mut embedder = EmbeddingModel::new(&spec, &options, None, &device);
    if let Some(w) = weights {
        embedder = embedder.load_pretrained_backbone(&spec, &options, w)?;
    }
    // Class sizes 1..7 in turn, so the adaptive margins differ per class as in real data.
    let classes = ClassIndex::from_labels(
        (0..args.classes as i64).flat_map(|c| std::iter::repeat_n(c, 1 + c as usize % 7)),
    );
    let head = ArcFaceSubcenter::new(embedder.dim(), classes.len(), 3, &device);
    let mut model = TrainModel {
        embedder,
        head: Some(head),
    };
    materialize(&model);
    model.embedder.backbone = set_training_flags(model.embedder.backbone, false);
    let mut optimizers = build_optimizers(&model, 0.1);
    let mut loss_side = Head::ArcFace {
        loss: ArcFaceLoss {
            margins: dynamic_margins(&classes.counts, 0.45, 0.05),
            s: 30.0,
        },
        classes: classes.clone(),
        dropout: 0.2,
    };
    let labels: Vec<i64> = (0..args.batch).map(|i| (i % args.classes) as i64).collect();
    let shape = [args.batch, 3, size, size];
    let mut accumulators = Accumulators::default();
    let mut step = |model: TrainModel, times: &mut PhaseTimes| -> anyhow::Result<TrainModel> {
        let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), shape), &device);
        let loss = times.time(0, || {
            let features = model.embedder.features(x);
            let loss = loss_side.loss(model.head.as_ref(), features, &labels, 0);
            let value = loss.clone().into_scalar::<f32>();
            (loss, value)
        });
        if !loss.1.is_finite() {
            bail!("{}: the loss is {}", spec.name, loss.1);
        }
        times.time(1, || {
            let mut grads = loss.0.backward();
            accumulators.accumulate(&model, &mut grads);
        });
        Ok(times.time(2, || {
            optimizer_step(
                model,
                &mut accumulators,
                &mut optimizers,
                StepSettings {
                    lr: 1e-3,
                    backbone_lr_factor: 0.1,
                    grad_clip: Some(5.0),
                },
            )
        }))
    };
    // Each step on a pool thread, as the trainer runs it.
    let mut step =
        |model: TrainModel, times: &mut PhaseTimes| on_pool(&device, || step(model, times));
    for _ in 0..args.warmup {
        model = step(model, &mut PhaseTimes::default())?;
    }
    let mut total = PhaseTimes::default();
    let mut steps = Vec::new();
    let recording = RecordingOps::start();
    for _ in 0..args.steps.max(1) {
        let mut t = PhaseTimes::default();
        model = step(model, &mut t)?;
        steps.push(t.wall.iter().sum::<f64>());
        for i in 0..3 {
            total.wall[i] += t.wall[i];
            total.cpu[i] += t.cpu[i];
        }
    }
    let ops = recording.finish();
    steps.sort_by(f64::total_cmp);
    let median = steps[steps.len() / 2];
    let n = steps.len() as f64;
    Ok(StepFigures {
        images_per_s: args.batch as f64 / median,
        phases: total.wall.map(|w| w / n),
        cores: [0, 1, 2].map(|i| total.cpu[i] / total.wall[i].max(1e-9)),
        ops: Some((ops, steps.len())),
    })
}

fn run_baseline(
    args: &Args,
    model: &str,
    weights: Option<&PathBuf>,
    input: &[f32],
    size: usize,
) -> anyhow::Result<serde_json::Value> {
    let python = baseline_python(&args.photos.python);
    let file = raw_f32_file(input)?;
    let script = tools_dir().join("bench_train_torch.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--model", model, "--input"])
        .arg(file.path())
        .args(["--batch", &args.batch.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--classes", &args.classes.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()]);
    if let Some(w) = weights {
        cmd.arg("--weights").arg(w);
    }
    baseline_json(cmd, &python, &script)
}
