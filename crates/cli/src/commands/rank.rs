//! `visual-search rank`: the submission ranker.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use visual_search_data::output_file::{OutputFormat, check_replaceable_output};
use visual_search_retrieval::npy::{encode_i64, write_atomically};
use visual_search_retrieval::pipeline::rank;

use crate::args::model::ModelArgs;
use crate::dev_set_run::{DevSetArgs, EnsembleArgs, RankArgs, embed_dev_set, load_scales};
use crate::table;

/// " + N ensemble models" when there are any.
fn ensemble_note(members: &[visual_search_inference::InferenceModel]) -> String {
    match members.len() {
        0 => String::new(),
        n => format!(" + {n} ensemble model(s)"),
    }
}

/// Embeds the dev set's queries (cropped to their boxes) and gallery (white border removed),
/// zeroes NaN, L2-normalises, optionally applies DBA / α-QE, and writes for each query the
/// 0-based gallery rows of its top-k, best first: an `(n_queries, min(k, n_gallery))` int64
/// `.npy` and a CSV `query_index,rank,gallery_index,score`. Prints the time of each phase.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DevSetArgs,
    #[command(flatten)]
    ensemble: EnsembleArgs,
    #[command(flatten)]
    ranking: RankArgs,
    /// Output `.npy` (the CSV goes next to it with a .csv extension).
    #[arg(long)]
    out: PathBuf,
}

/// The ranking CSV's columns.
const CSV_HEADER: [&str; 4] = ["query_index", "rank", "gallery_index", "score"];

/// Refuses, before any image is read, an `--out` the finished ranking could not be written
/// to: one without the `.npy` extension (the CSV beside it would take the same name), a
/// folder, or a file of the user's at either name (`--out data/gallery.npy` must not replace
/// the dataset's `gallery.csv`).
fn check_out(out: &Path) -> anyhow::Result<()> {
    if out.extension().and_then(|e| e.to_str()) != Some("npy") {
        bail!(
            "{}: the ranking is an .npy file (its CSV goes beside it); name --out *.npy",
            out.display()
        );
    }
    check_replaceable_output(out, OutputFormat::Npy)?;
    check_replaceable_output(&out.with_extension("csv"), OutputFormat::Csv(&CSV_HEADER))?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    check_out(&args.out)?;
    let scales = load_scales(&args.model, args.model.load()?, &args.data.tta_sizes)?;
    let loaded = &scales[0];
    let members = args.ensemble.load(&args.model.device)?;
    let windows = args
        .data
        .auto_box
        .window_model(&args.model, scales[0].preprocessing.size)?;
    let set = embed_dev_set(&scales, &members, windows.as_ref(), &args.data)?;
    let dim = set.queries.embeddings.dim;
    let (ranking, rank_time) = rank(
        set.queries.embeddings.data.clone(),
        set.gallery.embeddings.data.clone(),
        dim,
        &args.ranking.options(),
    );
    let values: Vec<i64> = ranking.indices.iter().map(|&i| i as i64).collect();
    write_atomically(&args.out, &encode_i64(&values, ranking.queries, ranking.k))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let csv_path = args.out.with_extension("csv");
    let mut csv = CSV_HEADER.join(",") + "\n";
    for q in 0..ranking.queries {
        for (r, (g, s)) in ranking.row(q).iter().zip(ranking.row_scores(q)).enumerate() {
            let _ = writeln!(csv, "{q},{r},{g},{s}");
        }
    }
    write_atomically(&csv_path, csv.as_bytes())
        .with_context(|| format!("writing {}", csv_path.display()))?;

    let (q, g) = (&set.queries.timings, &set.gallery.timings);
    let secs = |d: std::time::Duration| format!("{:.2}", d.as_secs_f64());
    let total = q.total + g.total + rank_time;
    let rows = vec![
        vec![
            "decode + preprocess (not hidden by prefetch)".into(),
            secs(q.waiting_for_data + g.waiting_for_data),
        ],
        vec!["model".into(), secs(q.model + g.model)],
        vec!["ranking".into(), secs(rank_time)],
        vec!["total".into(), secs(total)],
    ];
    println!(
        "ranked {} queries against {} gallery images ({}{} at {} px on {} in {}); top {} written to {} and {}",
        ranking.queries,
        set.gallery.embeddings.rows,
        loaded.spec.name,
        ensemble_note(&members),
        loaded.preprocessing.size,
        loaded.device_name,
        args.model.device.dtype.name(),
        ranking.k,
        args.out.display(),
        csv_path.display()
    );
    print!("{}", table::render(&["phase", "seconds"], &rows));
    Ok(())
}
