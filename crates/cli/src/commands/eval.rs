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
}

pub fn run(args: Args) -> anyhow::Result<()> {
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
            let set = embed_dev_set(&scales, &members, &args.data)?;
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
    if args.json {
        let line = serde_json::json!({
            "map_at_k": m.map_at_k, "k": k, "recall_at_1": m.recall_at_1, "map_at_r": m.map_at_r,
            "queries": m.queries, "evaluated_queries": m.evaluated_queries, "gallery": g_labels.len(),
            "source": source, "ranking": args.ranking.describe(),
            "rank_seconds": rank_time.as_secs_f64(),
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
        if m.evaluated_queries < m.queries {
            println!(
                "({} queries have no gallery image of their product and score 0)",
                m.queries - m.evaluated_queries
            );
        }
    }
    Ok(())
}
