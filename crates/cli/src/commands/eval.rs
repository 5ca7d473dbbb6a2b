//! `visual-search eval`: mAP@1000, R@1 and mAP@R on a dev set.

use std::path::PathBuf;

use anyhow::bail;
use visual_search_retrieval::embedding_file::read_embeddings;
use visual_search_retrieval::metrics::evaluate;
use visual_search_retrieval::pipeline::rank;

use crate::args::model::{DeviceArgs, ModelArgs};
use crate::dev_set_run::{
    DevSetArgs, EmbeddedDevSet, EnsembleArgs, RankArgs, embed_dev_set, load_scales,
};
use crate::sample_lists::read_samples;
use crate::table;

/// Runs the ranking pipeline of `rank` on a dev set and scores it: mAP@k (the challenge metric
/// at k = 1000), R@1 and mAP@R. With `--query-embeddings`/`--gallery-embeddings` (files written
/// by `embed`) no model is run; labels come from the files or, for `.npy`, from the dev set's CSVs.
#[derive(clap::Args)]
pub struct Args {
    /// Registered model name (omit when giving embedding files).
    #[arg(long, conflicts_with = "model_dir")]
    model: Option<String>,
    /// An exported model folder instead of --model/--weights.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    size: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DevSetArgs,
    #[command(flatten)]
    ensemble: EnsembleArgs,
    #[command(flatten)]
    ranking: RankArgs,
    /// Precomputed query embeddings (.npy / .safetensors from `embed`).
    #[arg(long, requires = "gallery_embeddings")]
    query_embeddings: Option<PathBuf>,
    /// Precomputed gallery embeddings.
    #[arg(long, requires = "query_embeddings")]
    gallery_embeddings: Option<PathBuf>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Hide this fraction of the gallery's products (chosen with --holdout-seed) and report how
    /// well the top-1 score tells queries whose product is still there from those whose product
    /// is not: AUROC, and the lowest score threshold keeping 90 % of accepted queries present.
    #[arg(long)]
    holdout_products: Option<f64>,
    #[arg(long, default_value_t = 0)]
    holdout_seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Seconds spent on the queries (embedding, and `--auto-box`'s window search), per query.
    let mut query_cost = serde_json::Value::Null;
    let model_given = args.model.is_some() || args.model_dir.is_some();
    let (queries, gallery, dim, q_labels, g_labels, source) = match (
        &args.query_embeddings,
        &args.gallery_embeddings,
        model_given,
    ) {
        (Some(_), Some(_), _) if !args.ensemble.dirs.is_empty() => {
            bail!("--ensemble embeds with models; it cannot be combined with embedding files")
        }
        (Some(qf), Some(gf), _) => {
            let q = read_embeddings(qf)?;
            let g = read_embeddings(gf)?;
            if q.dim != g.dim {
                bail!(
                    "{} has {}-d rows but {} has {}-d rows",
                    qf.display(),
                    q.dim,
                    gf.display(),
                    g.dim
                );
            }
            let labels = |file_labels: Option<Vec<i64>>,
                          csv: &str,
                          rows: usize|
             -> anyhow::Result<Vec<i64>> {
                let l = match file_labels {
                    Some(l) => l,
                    None => {
                        read_samples(&args.data.dataset_dir.join(csv), &args.data.dataset_dir, "")?
                            .1
                            .iter()
                            .map(|s| s.label)
                            .collect()
                    }
                };
                if l.len() != rows {
                    bail!("{rows} embeddings but {} labels for {csv}", l.len());
                }
                Ok(l)
            };
            let ql = labels(q.labels.clone(), &args.data.queries, q.rows)?;
            let gl = labels(g.labels.clone(), &args.data.gallery, g.rows)?;
            (q.data, g.data, q.dim, ql, gl, "embedding files".to_string())
        }
        (None, None, true) => {
            let model = ModelArgs {
                model: args.model.clone(),
                model_dir: args.model_dir.clone(),
                weights: args.weights.clone(),
                size: args.size,
                device: args.device.clone(),
            };
            let scales = load_scales(&model, model.load()?, &args.data.tta_sizes)?;
            let loaded = &scales[0];
            let members = args.ensemble.load(&args.device)?;
            let windows = args
                .data
                .auto_box
                .window_model(&model, scales[0].preprocessing.size)?;
            let set = embed_dev_set(&scales, &members, windows.as_ref(), &args.data)?;
            let n = set.queries.embeddings.rows.max(1) as f64;
            let embed_seconds = set.queries.timings.total.as_secs_f64();
            let box_seconds = set.auto_box.map_or(0.0, |r| r.seconds);
            query_cost = serde_json::json!({
                "embed_seconds": embed_seconds,
                "auto_box_seconds": box_seconds,
                "ms_per_query": (embed_seconds + box_seconds) * 1e3 / n,
                "auto_box": set.auto_box.map(|r| serde_json::json!({
                    "searched": r.searched, "boxed": r.boxed,
                })),
            });
            let (ql, gl) = (
                EmbeddedDevSet::labels(&set.queries),
                EmbeddedDevSet::labels(&set.gallery),
            );
            let dim = set.queries.embeddings.dim;
            let mut source = format!(
                "{} at {} px on {}",
                loaded.spec.name, loaded.preprocessing.size, loaded.device_name
            );
            for member in &members {
                source += &format!(
                    " + {} at {} px",
                    member.spec.name, member.preprocessing.size
                );
            }
            (
                set.queries.embeddings.data,
                set.gallery.embeddings.data,
                dim,
                ql,
                gl,
                source,
            )
        }
        _ => bail!(
            "give --model (and --weights) or --model-dir, or --query-embeddings and --gallery-embeddings"
        ),
    };
    let (gallery, g_labels, held_out) = match args.holdout_products {
        Some(f) => hold_out_products(gallery, g_labels, dim, f, args.holdout_seed)?,
        None => (gallery, g_labels, Vec::new()),
    };
    // Rank deep enough for mAP@R: R can exceed k for large classes.
    let max_r = {
        let mut counts = std::collections::HashMap::<i64, usize>::new();
        g_labels
            .iter()
            .for_each(|l| *counts.entry(*l).or_default() += 1);
        counts.values().copied().max().unwrap_or(0)
    };
    let mut options = args.ranking.options();
    let k = options.top_k;
    options.top_k = k.max(max_r);
    let (ranking, rank_time) = rank(queries, gallery, dim, &options);
    let m = evaluate(&ranking, &q_labels, &g_labels, k);
    let open = (!held_out.is_empty())
        .then(|| open_set_report(&ranking, &q_labels, &g_labels, held_out.len()));
    if args.json {
        let line = serde_json::json!({
            "map_at_k": m.map_at_k, "k": k, "recall_at_1": m.recall_at_1, "map_at_r": m.map_at_r,
            "queries": m.queries, "evaluated_queries": m.evaluated_queries, "gallery": g_labels.len(),
            "source": source, "ranking": args.ranking.describe(),
            "rank_seconds": rank_time.as_secs_f64(), "open_set": open, "query_cost": query_cost,
        });
        println!("{line}");
    } else {
        println!(
            "{} queries, {} gallery images, {source}",
            m.queries,
            g_labels.len()
        );
        let rows = vec![
            vec![format!("mAP@{k}"), format!("{:.4}", m.map_at_k)],
            vec!["R@1".into(), format!("{:.4}", m.recall_at_1)],
            vec!["mAP@R".into(), format!("{:.4}", m.map_at_r)],
            vec![
                "ranking seconds".into(),
                format!("{:.3}", rank_time.as_secs_f64()),
            ],
        ];
        print!("{}", table::render(&["metric", "value"], &rows));
        if let Some(o) = &open {
            println!(
                "held out {} products: {} queries present, {} absent; top-1 score AUROC {}; \
                 90 % precision from score {} (precision {}, recall {})",
                o["held_out_products"],
                o["present_queries"],
                o["absent_queries"],
                o["auroc"],
                o["threshold"],
                o["precision"],
                o["recall"]
            );
        }
        if m.evaluated_queries < m.queries {
            println!(
                "({} queries have no gallery image of their product and score 0)",
                m.queries - m.evaluated_queries
            );
        }
    }
    Ok(())
}

/// The gallery without the rows of a seeded `fraction` of its products, and those products.
fn hold_out_products(
    gallery: Vec<f32>,
    labels: Vec<i64>,
    dim: usize,
    fraction: f64,
    seed: u64,
) -> anyhow::Result<(Vec<f32>, Vec<i64>, Vec<i64>)> {
    let held = crate::holdout::held_out_products(&labels, fraction, seed)?;
    let (mut kept, mut kept_labels) = (Vec::new(), Vec::new());
    for (row, &label) in gallery.chunks_exact(dim).zip(&labels) {
        if !held.contains(&label) {
            kept.extend_from_slice(row);
            kept_labels.push(label);
        }
    }
    let mut held: Vec<i64> = held.into_iter().collect();
    held.sort_unstable();
    Ok((kept, kept_labels, held))
}

/// AUROC of the top-1 score for queries whose product the (reduced) gallery holds vs the rest,
/// and the 90 %-precision threshold.
fn open_set_report(
    ranking: &visual_search_retrieval::topk::TopK,
    query_labels: &[i64],
    gallery_labels: &[i64],
    held_out: usize,
) -> serde_json::Value {
    use visual_search_retrieval::open_set::{auroc, threshold_for_precision};
    let scores: Vec<f32> = (0..ranking.queries)
        .map(|q| ranking.row_scores(q).first().copied().unwrap_or(f32::MIN))
        .collect();
    let in_gallery: std::collections::HashSet<i64> = gallery_labels.iter().copied().collect();
    let present: Vec<bool> = query_labels
        .iter()
        .map(|l| in_gallery.contains(l))
        .collect();
    let threshold = threshold_for_precision(&scores, &present, 0.9);
    serde_json::json!({
        "held_out_products": held_out,
        "present_queries": present.iter().filter(|&&p| p).count(),
        "absent_queries": present.iter().filter(|&&p| !p).count(),
        "auroc": auroc(&scores, &present),
        "threshold": threshold.map(|t| t.score),
        "precision": threshold.map(|t| t.precision),
        "recall": threshold.map(|t| t.recall),
    })
}
