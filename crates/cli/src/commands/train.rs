//! `visual-search train`: one phase of the recipe from a YAML config.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use visual_search_model::device::training_device;
use visual_search_model::registry::lookup;
use visual_search_train::config::{HeadConfig, TrainConfig};
use visual_search_train::data_parallel::{GroupConfig, ProcessGroup};
use visual_search_train::trainer::{TrainEvent, TrainOptions, train};

use crate::progress::steps_bar;

/// Trains one phase as a config describes (see configs/ and the README): the sub-centre
/// ArcFace head (`head.type: arcface`) or the XBM contrastive loss with a cross-batch memory
/// (`head.type: xbm`; the memory takes head.memory_size × embedding dim × 4 bytes of device
/// memory plus 8 bytes per label: 55,000 × 1024 is ~225 MB). Progress with loss, lr, images/s
/// and ETA; validation (dev mAP@1000, R@1, mAP@R, val accuracy) several times per epoch;
/// checkpoints, metrics.csv and plots under runs/NAME. `--resume runs/NAME` continues a
/// stopped or killed run from its last checkpoint, XBM memory included.
#[derive(clap::Args)]
pub struct Args {
    /// Phase config (YAML).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Run name (folder under --runs-dir) [default: the config's file name].
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Continue the run in this folder from its last checkpoint (uses its config.yml); a last
    /// checkpoint damaged since it was written is set aside and the newest intact one used.
    /// A folder another `train` is running in is refused.
    #[arg(long, conflicts_with_all = ["config", "name"])]
    resume: Option<PathBuf>,
    /// Compute device: flex (CPU), tch, tch-cuda:N, cuda:N, wgpu or auto. On a CPU, `flex`
    /// trains the CNNs fastest (EfficientNet-Lite 2x, ResNet 1.2x, ConvNeXt 1.05x `tch`); ViT
    /// runs as fast on `tch` (a `--features tch` build) as on `flex` or faster, so `auto` picks
    /// `tch` for ViT when it is compiled, flex otherwise, or a compiled GPU backend
    /// (`tch-cuda:0`, `cuda:0`). Precision is the config's `optim.precision`: `bf16` (mixed) on
    /// flex needs a CPU with AMX (then `auto` picks flex; 1.6x–1.7x our f32 step for Lite0,
    /// ResNet and ViT, with EfficientNet-Lite's expanded activations kept in bf16 as autocast
    /// keeps them); on tch and the GPU backends it is bf16 casts around their convolutions and
    /// matmuls, for a GPU (see README "Precision" and BENCHMARKS.md "Training throughput").
    #[arg(long, default_value = "auto")]
    device: String,
    /// Skip the validation before the first step (the zero-shot baseline).
    #[arg(long)]
    no_initial_eval: bool,
    /// Data-parallel training over this many processes (one per machine or GPU): each trains
    /// on its share of every batch and the gradients are summed before every step, so the run
    /// is one process's run (README "Scale-out") [default: $WORLD_SIZE, else 1].
    #[arg(long)]
    world_size: Option<usize>,
    /// This process's rank, 0 to world-size - 1; rank 0 coordinates the group and writes the
    /// checkpoints [default: $RANK].
    #[arg(long)]
    rank: Option<usize>,
    /// HOST:PORT where rank 0 coordinates the group, the same for every rank; rank R also
    /// listens on PORT + 1 + R [default: $MASTER_ADDR:$MASTER_PORT].
    #[arg(long)]
    master: Option<String>,
    /// The address the other ranks reach this one at [default: the master's host when that
    /// is this machine].
    #[arg(long)]
    node_addr: Option<String>,
    /// Give up (exit) when the other ranks do not answer within this many seconds.
    #[arg(long, default_value_t = 600)]
    group_timeout_s: u64,
}

/// Joins the training group the flags (or torchrun's variables) describe; `None` alone.
fn join_group(args: &Args) -> anyhow::Result<Option<Arc<ProcessGroup>>> {
    let env_number = |name: &str| -> anyhow::Result<Option<usize>> {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number"))
            })
            .transpose()
    };
    let world_size = match args.world_size {
        Some(w) => w,
        None => env_number("WORLD_SIZE")?.unwrap_or(1),
    };
    if world_size <= 1 {
        return Ok(None);
    }
    let rank = match args.rank {
        Some(r) => r,
        None => env_number("RANK")?
            .context("data-parallel training needs --rank (or $RANK) on every process")?,
    };
    let master = match &args.master {
        Some(m) => m.clone(),
        None => match (std::env::var("MASTER_ADDR"), std::env::var("MASTER_PORT")) {
            (Ok(a), Ok(p)) => format!("{a}:{p}"),
            _ => bail!(
                "data-parallel training needs --master HOST:PORT (or $MASTER_ADDR and $MASTER_PORT)"
            ),
        },
    };
    let config = GroupConfig::new(
        world_size,
        rank,
        &master,
        args.node_addr.as_deref(),
        std::time::Duration::from_secs(args.group_timeout_s),
    )?;
    eprintln!("rank {rank} of {world_size}: joining the group at {master}");
    let group = ProcessGroup::join(config)?;
    eprintln!("rank {rank} of {world_size}: joined");
    Ok(Some(Arc::new(group)))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (config_path, run_dir, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            if !dir.join("config.yml").is_file() {
                bail!("{} is not a run folder (no config.yml)", dir.display());
            }
            (dir.join("config.yml"), dir.clone(), true)
        }
        (None, Some(config)) => {
            let name = match &args.name {
                Some(n) => n.clone(),
                None => config
                    .file_stem()
                    .map_or("run".into(), |s| s.to_string_lossy().into_owned()),
            };
            (config.clone(), args.runs_dir.join(name), false)
        }
        (None, None) => bail!("give --config or --resume"),
    };
    let config = TrainConfig::load(&config_path)?;
    let spec = lookup(&config.model.name)?;
    let bf16 = config.optim.precision == visual_search_train::config::Precision::Bf16;
    let device = training_device(&args.device, &spec.architecture, bf16)?;
    let options = TrainOptions {
        run_dir: run_dir.clone(),
        device,
        resume,
        validate_at_start: !args.no_initial_eval,
        group: join_group(&args)?,
    };
    println!(
        "run: {} ({}; model {})",
        run_dir.display(),
        if resume { "resumed" } else { "new" },
        config.model.name
    );
    let mut bar = None;
    let summary = train(&config, &options, &mut |event| match event {
        TrainEvent::Started { total_steps, steps_per_epoch, start_step, train_images, classes, memory_bytes } => {
            println!("{train_images} training images, {classes} classes, {steps_per_epoch} steps per epoch, {total_steps} steps");
            if start_step > 0 {
                println!("continuing from step {start_step}");
            }
            if let (Some(bytes), HeadConfig::Xbm(x)) = (memory_bytes, &config.head) {
                println!("XBM memory: {} rows, {:.1} MB on the device", x.memory_size, bytes as f64 / 1e6);
            }
            let b = steps_bar(total_steps);
            b.set_position(start_step as u64);
            bar = Some(b);
        }
        TrainEvent::Step { step, epoch, loss, lr, images_per_s, .. } => {
            if let Some(b) = &bar {
                b.set_position(step as u64);
                b.set_message(format!("epoch {epoch} loss {loss:.4} lr {lr:.2e} {images_per_s:.1} img/s"));
            }
        }
        TrainEvent::Validation { step, metrics } => {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
            let line = format!(
                "step {step}: dev mAP@1000 {}  R@1 {}  mAP@R {}  val accuracy {}",
                f(metrics.map_at_k),
                f(metrics.recall_at_1),
                f(metrics.map_at_r),
                f(metrics.val_accuracy)
            );
            say(&bar, line);
        }
        TrainEvent::Checkpoint { path, best } => {
            let line = format!(
                "checkpoint {}{}",
                path.display(),
                best.filter(|b| *b == path).map_or(String::new(), |_| " (best)".to_string())
            );
            say(&bar, line);
        }
        TrainEvent::Skipped { path, reason } => eprintln!("skipped {}: {reason}", path.display()),
        TrainEvent::DamagedCheckpoint { path, reason, set_aside } => eprintln!(
            "warning: checkpoint {} is damaged ({reason}){}; resuming from the newest intact one \
             before it",
            path.display(),
            set_aside.map_or(String::new(), |p| format!(", set aside as {}", p.display()))
        ),
        TrainEvent::EarlyStop { step } => println!("early stopping at step {step}: no improvement"),
    })
    .with_context(|| format!("training {}", run_dir.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(group) = &options.group {
        group.leave()?;
    }
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "done: {} steps in {:.1} min ({:.1} img/s){}",
        summary.steps,
        summary.wall_time.as_secs_f64() / 60.0,
        summary.images_per_s,
        if summary.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    println!(
        "dev mAP@1000: {} before -> {} after (best {})",
        f(summary.first_validation.and_then(|m| m.map_at_k)),
        f(summary.last_validation.and_then(|m| m.map_at_k)),
        f(summary.best_map)
    );
    if let Some(best) = &summary.best_checkpoint {
        println!(
            "best checkpoint: {}  (export it with: visual-search export --checkpoint {} --out DIR)",
            best.display(),
            run_dir.display()
        );
    }
    if summary.skipped_images > 0 {
        println!(
            "{} training image(s) could not be read and were skipped",
            summary.skipped_images
        );
    }
    println!("metrics: {}", run_dir.join("metrics.csv").display());
    Ok(())
}

/// Prints above the progress bar, or plainly when the bar is hidden (not a terminal).
fn say(bar: &Option<indicatif::ProgressBar>, line: String) {
    match bar {
        Some(b) if !b.is_hidden() => b.println(line),
        _ => println!("{line}"),
    }
}
