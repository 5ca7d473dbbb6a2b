//! `visual-search export`: a checkpoint → a self-contained inference model folder, optionally
//! with its ONNX graph and a gated int8 version of it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_data::transform::EvalTransform;
use visual_search_inference::int8::{INT8_FILE, quantize_model_dir, remove_int8_model};
use visual_search_inference::model::load_burn;
use visual_search_inference::model_dir::{ExportedModel, ModelDirInfo, export_embedder, read_info};
use visual_search_inference::{InferenceModel, LoadOptions, ModelSource, Precision};
use visual_search_model::device::parse_device;
use visual_search_train::export::{ExportOptions, export_model_dir};

use crate::dev_set_run::{DevSetArgs, rank_dev_set};
use crate::sample_lists::read_samples;

/// Writes OUT/model.safetensors (embedder weights, f32 or f16), OUT/model.json (model name,
/// input size, mean/std, embedding width) and OUT/manifest.json (each file's size and CRC-32,
/// checked when the folder is loaded) from a checkpoint folder or a run folder (its best
/// checkpoint), or from a registry model with pretrained weights (--model/--weights). `embed`,
/// `rank`, `eval`, `index` and `serve` take the folder with --model-dir. OUT must not exist,
/// be empty, or be an earlier export: nothing else is ever deleted.
#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint folder, or a run folder (its `best`, else `last`).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    checkpoint: Option<PathBuf>,
    /// A registered model (with --weights) instead of a checkpoint, e.g. efficientnet_lite0.
    #[arg(long)]
    model: Option<String>,
    /// Pretrained weights of --model (timm/OpenCLIP/efficientnet_pytorch names).
    #[arg(long, requires = "model")]
    weights: Option<PathBuf>,
    /// Input size of a --model export [default: the model's own].
    #[arg(long, requires = "model")]
    size: Option<usize>,
    #[arg(long)]
    out: PathBuf,
    /// Store weights as f16 (norm layers stay f32).
    #[arg(long)]
    f16: bool,
    /// Also write OUT/model.onnx (opset 17, dynamic batch axis, batch norm folded into the
    /// convolutions, L2-normalised `embedding` output) for `--device ort` and any ONNX runtime.
    #[arg(long)]
    onnx: bool,
    /// Also write OUT/model.int8.onnx (static int8, QDQ), calibrated on --calibration-csv, but
    /// only if every held-out image keeps cosine ≥ --int8-min-cosine to its f32 embedding (and,
    /// with --int8-gate-dataset, dev mAP@1000 within 0.005); otherwise report and refuse. Run
    /// it with `--device ort --dtype int8`.
    #[arg(long, requires_all = ["onnx", "calibration_csv"])]
    int8: bool,
    /// Catalogue images to calibrate on (any list kind: gallery.csv, train.csv, …).
    #[arg(long)]
    calibration_csv: Option<PathBuf>,
    /// Folder the calibration list's paths are relative to [default: the CSV's folder].
    #[arg(long)]
    calibration_root: Option<PathBuf>,
    /// Images taken (evenly spread over the list): half calibrate, half check.
    #[arg(long, default_value_t = 256)]
    calibration_images: usize,
    /// The int8 gate's least per-image cosine to the f32 embedding, in [-1, 1].
    #[arg(long, default_value_t = 0.99, value_parser = crate::args::cosine)]
    int8_min_cosine: f64,
    /// A dev set (gallery.csv + queries.csv) on which int8 must keep mAP@1000 within 0.005.
    #[arg(long)]
    int8_gate_dataset: Option<PathBuf>,
}

/// Largest mAP@1000 drop the int8 gate accepts.
const INT8_MAX_MAP_DROP: f64 = 0.005;

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device("flex").or_else(|_| parse_device("auto"))?;
    let options = ExportOptions {
        half: args.f16,
        onnx: args.onnx,
    };
    // The int8 step's inputs are checked before the export, not after it.
    let calibration = match args.int8 {
        true => Some(calibration_samples(&args)?),
        false => None,
    };
    let info = match (&args.checkpoint, &args.model) {
        (Some(checkpoint), _) => export_model_dir(checkpoint, &args.out, options, &device)?,
        (None, Some(name)) => export_pretrained(name, &args, options, &device)?,
        (None, None) => bail!("give --checkpoint or --model"),
    };
    println!(
        "exported {} ({} px, {}-d embeddings, {}{}) from {} to {}",
        info.model,
        info.input_size,
        info.embedding_dim,
        info.dtype,
        if args.onnx { ", with model.onnx" } else { "" },
        info.source,
        args.out.display()
    );
    if let Some(samples) = calibration {
        int8(&args, &samples)?;
    }
    Ok(())
}

/// The calibration list's images (at least 2), and the gate dev set's two lists if one is given.
fn calibration_samples(args: &Args) -> anyhow::Result<Vec<Sample>> {
    let csv = args
        .calibration_csv
        .as_ref()
        .context("--int8 needs --calibration-csv")?;
    let root = args
        .calibration_root
        .clone()
        .or_else(|| csv.parent().map(|p| p.to_path_buf()))
        .unwrap_or_default();
    let (_, samples) = read_samples(csv, &root, "")?;
    if samples.len() < 2 {
        bail!("{} lists fewer than 2 images", csv.display());
    }
    if let Some(dataset) = &args.int8_gate_dataset {
        for list in ["gallery.csv", "queries.csv"] {
            let path = dataset.join(list);
            if !path.is_file() {
                bail!(
                    "--int8-gate-dataset {}: no {list} (a dev set holds gallery.csv and queries.csv)",
                    dataset.display()
                );
            }
        }
    }
    Ok(samples)
}

/// A registry model with pretrained weights as a model folder.
fn export_pretrained(
    name: &str,
    args: &Args,
    options: ExportOptions,
    device: &burn::tensor::Device,
) -> anyhow::Result<ModelDirInfo> {
    let source = ModelSource::Registry {
        name: name.to_string(),
        weights: args.weights.clone(),
    };
    let (model, spec, pre) = load_burn(&source, args.size, device, false)?;
    let exported = ExportedModel {
        model: &model,
        spec: &spec,
        size: pre.size,
        neck_dim: None,
        gem: false,
        source: args
            .weights
            .as_ref()
            .map_or("random weights".to_string(), |w| w.display().to_string()),
    };
    Ok(export_embedder(&exported, &args.out, options)?)
}

fn int8(args: &Args, samples: &[Sample]) -> anyhow::Result<()> {
    let take = args.calibration_images.clamp(2, samples.len());
    let info = read_info(&args.out)?;
    let size = info.input_size;
    let transform = EvalTransform::new(
        size as u32,
        visual_search_data::image::Normalization {
            mean: info.mean,
            std: info.std,
        },
    );
    let taken: Vec<_> = (0..take)
        .map(|i| samples[i * samples.len() / take].clone())
        .collect();
    let (pixels, failed) = transform.load_all(&taken);
    for (_, e) in &failed {
        eprintln!("calibration: skipping {e}");
    }
    let skipped = failed.len();
    let n = taken.len() - skipped;
    let report = quantize_model_dir(&args.out, &pixels, n, args.int8_min_cosine)?;
    println!(
        "int8: {} activations quantised; calibrated on {} images, checked on {} ({} unreadable): \
         cosine to f32 min {:.5}, mean {:.5} (gate ≥ {})",
        report.quantized_tensors,
        report.calibration_images,
        report.gate_images,
        skipped,
        report.min_cosine,
        report.mean_cosine,
        args.int8_min_cosine
    );
    if !report.written {
        bail!(
            "int8 refused: an image's embedding moved to cosine {:.5} of f32 (< {}); {} not \
             written (the f32 export is complete)",
            report.min_cosine,
            args.int8_min_cosine,
            INT8_FILE
        );
    }
    if let Some(dataset) = &args.int8_gate_dataset {
        let map = |precision: Precision| -> anyhow::Result<f64> {
            let model = InferenceModel::load(
                &ModelSource::Dir(args.out.clone()),
                &LoadOptions {
                    device: visual_search_inference::DeviceChoice::Ort(
                        visual_search_inference::ort_runtime::OrtTarget::Cpu,
                    ),
                    precision,
                    quiet: true,
                    ..LoadOptions::default()
                },
            )?;
            let data = DevSetArgs::at(dataset.clone(), 32);
            Ok(rank_dev_set(&model, &data, 1000)?.evaluate(1000).map_at_k)
        };
        let (full, quant) = (map(Precision::F32)?, map(Precision::Int8)?);
        println!(
            "int8 gate on {}: mAP@1000 f32 {full:.4}, int8 {quant:.4} (drop {:.4}, allowed {INT8_MAX_MAP_DROP})",
            dataset.display(),
            full - quant
        );
        if full - quant > INT8_MAX_MAP_DROP {
            remove_int8_model(&args.out)?;
            bail!(
                "int8 refused: mAP@1000 drops by {:.4} (> {INT8_MAX_MAP_DROP}); {INT8_FILE} removed",
                full - quant
            );
        }
    }
    println!("wrote {}", args.out.join(INT8_FILE).display());
    Ok(())
}
