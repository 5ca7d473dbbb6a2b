//! `visual-search soup`: several checkpoints of one architecture averaged into one exported
//! model folder, uniformly or greedily by dev mAP (see `visual_search_train::soup`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use visual_search_inference::InferenceModel;
use visual_search_inference::model_dir::{
    ExportOptions, ExportedModel, check_replaceable, export_embedder,
};
use visual_search_model::device::parse_device;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_train::soup::{average, greedy, load_ingredients};

use crate::dev_set_run::{DevSetArgs, rank_dev_set};

/// Averages the embedders of several checkpoints of one architecture (a "model soup") and
/// writes the result as a model folder, like `export`. Uniform by default: every tensor the
/// mean over all runs. With --greedy: the runs are scored alone on the dev set, then added
/// from the best down, each kept only if the soup's dev mAP@1000 does not drop. Every step's
/// mAP is printed. OUT must not exist, be empty, or be an earlier export.
#[derive(clap::Args)]
pub struct Args {
    /// Run folders (their best checkpoint) or checkpoint folders, of one architecture.
    #[arg(long, num_args = 1.., required = true)]
    runs: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Keep a run only if the soup's dev mAP@1000 does not drop (needs --dataset-dir).
    #[arg(long, requires = "dataset_dir")]
    greedy: bool,
    /// Dev set (gallery.csv + queries.csv) to score the runs and the soup on.
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Images per embedding batch while scoring.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Also write OUT/model.onnx, as `export --onnx` does.
    #[arg(long)]
    onnx: bool,
}

/// mAP@1000 is the challenge's metric.
const TOP_K: usize = 1000;

pub fn run(args: Args) -> anyhow::Result<()> {
    check_replaceable(&args.out)?;
    let device = parse_device("flex").or_else(|_| parse_device("auto"))?;
    let ingredients = load_ingredients(&args.runs, &device)?;
    let first = &ingredients[0];
    let score = |dataset: &Path, model: &EmbeddingModel| -> anyhow::Result<f64> {
        let model = InferenceModel::from_embedder(
            model.clone(),
            first.spec.clone(),
            first.preprocessing(),
            device.clone(),
            "flex",
        );
        let data = DevSetArgs::at(dataset.to_path_buf(), args.batch_size);
        Ok(rank_dev_set(&model, &data, TOP_K)?.evaluate(TOP_K).map_at_k)
    };
    let dataset = args.dataset_dir.as_deref();
    let models: Vec<&EmbeddingModel> = ingredients.iter().map(|i| &i.model).collect();
    let name = |i: usize| ingredients[i].dir.display().to_string();
    let (soup, kept, soup_map) = if args.greedy {
        let dataset = dataset.context("--greedy needs --dataset-dir")?;
        let (soup, soup_map, steps) = greedy(&models, |m| score(dataset, m))?;
        for (n, step) in steps.iter().enumerate() {
            println!(
                "step {}: {} (alone mAP@1000 {:.4}): soup {:.4} -> {}",
                n + 1,
                name(step.ingredient),
                step.alone,
                step.with_it,
                if step.kept { "kept" } else { "left out" }
            );
        }
        let kept: Vec<usize> = steps
            .iter()
            .filter(|s| s.kept)
            .map(|s| s.ingredient)
            .collect();
        (soup, kept, Some(soup_map))
    } else {
        if let Some(dataset) = dataset {
            for (i, model) in models.iter().enumerate() {
                println!("{} alone: mAP@1000 {:.4}", name(i), score(dataset, model)?);
            }
        }
        let soup = average(&models)?;
        let map = dataset.map(|d| score(d, &soup)).transpose()?;
        (soup, (0..models.len()).collect(), map)
    };
    if let Some(map) = soup_map {
        println!(
            "soup of {} of {} checkpoints: mAP@1000 {map:.4}",
            kept.len(),
            ingredients.len()
        );
    }
    let sources: Vec<String> = kept.iter().map(|&i| name(i)).collect();
    let exported = ExportedModel {
        model: &soup,
        source: format!("soup of {}", sources.join(", ")),
        ..first.exported()
    };
    let options = ExportOptions {
        half: false,
        onnx: args.onnx,
    };
    export_embedder(&exported, &args.out, options)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
