//! Embedding both halves of a dev set (queries box-cropped, gallery without white border) with
//! one model — the common first half of `rank` and `eval`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use visual_search_data::Sample;

use visual_search_data::formats::dev_set::load_dev_set;
use visual_search_data::loader::LoaderConfig;
use visual_search_retrieval::ensemble::concatenate_normalised;
use visual_search_train::embedding::EmbeddedSet;

use crate::args::model::{DeviceArgs, ModelArgs};
use crate::auto_box_run::{AutoBoxArgs, AutoBoxReport, box_queries};

use crate::embedding_run::{embed_at_scales, merge_sets};
use visual_search_inference::InferenceModel;
use visual_search_retrieval::k_reciprocal::KReciprocal;
use visual_search_retrieval::pipeline::RankOptions;
use visual_search_retrieval::query_blending::QueryBlending;

/// Where the dev set is and how to load it.
#[derive(clap::Args, Debug, Clone)]
pub struct DevSetArgs {
    /// Dev-set root holding gallery.csv and queries.csv.
    #[arg(long)]
    pub dataset_dir: PathBuf,
    #[arg(long, default_value = "gallery.csv")]
    pub gallery: String,
    #[arg(long, default_value = "queries.csv")]
    pub queries: String,
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    /// Image-loading threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Test-time augmentation: average each embedding with its mirror image's (queries and
    /// gallery; twice the model time).
    #[arg(long)]
    pub tta_flip: bool,
    /// Multi-scale test-time augmentation: also embed every image at these input sides
    /// (comma-separated; each image is decoded and resized again for each) and average the unit
    /// embeddings. The model's own size is always included; each size costs one more pass.
    #[arg(long, value_delimiter = ',')]
    pub tta_sizes: Vec<usize>,
    #[command(flatten)]
    pub auto_box: AutoBoxArgs,
}

impl DevSetArgs {
    /// The dev set at `dataset_dir` with the default file names, loaders and no augmentation.
    pub fn at(dataset_dir: PathBuf, batch_size: usize) -> Self {
        DevSetArgs {
            dataset_dir,
            gallery: "gallery.csv".into(),
            queries: "queries.csv".into(),
            batch_size,
            workers: None,
            tta_flip: false,
            tta_sizes: Vec::new(),
            auto_box: AutoBoxArgs::off(),
        }
    }
}

/// Ordered batches for embedding, on `workers` threads (default: all cores).
pub fn eval_loader(batch_size: usize, workers: Option<usize>) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        num_workers: workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ..LoaderConfig::default()
    }
}

/// Embedded queries and gallery.
pub struct EmbeddedDevSet {
    pub queries: EmbeddedSet,
    pub gallery: EmbeddedSet,
    /// What `--auto-box` did, when it was on.
    pub auto_box: Option<AutoBoxReport>,
}

impl EmbeddedDevSet {
    pub fn labels(set: &EmbeddedSet) -> Vec<i64> {
        set.embeddings.labels.clone().unwrap_or_default()
    }
}

/// Embeds the dev set with the main model at each of `scales` (its own size first; several
/// sizes are averaged, see [`embed_at_scales`]) and, when `ensemble` is not empty, with each of
/// those too, concatenating the unit embeddings ([`concatenate_normalised`]).
pub fn embed_dev_set(
    scales: &[InferenceModel],
    ensemble: &[InferenceModel],
    window_model: Option<&InferenceModel>,
    args: &DevSetArgs,
) -> anyhow::Result<EmbeddedDevSet> {
    let dev = load_dev_set(&args.dataset_dir, &args.gallery, &args.queries)?;
    let loader = eval_loader(args.batch_size, args.workers);
    let (queries, gallery): (Arc<[Sample]>, Arc<[Sample]>) =
        (dev.queries.into(), dev.gallery.into());
    let run = |models: &[InferenceModel], samples: &Arc<[Sample]>, what: &str| {
        embed_at_scales(
            models,
            args.tta_flip,
            samples.clone(),
            &loader,
            what,
            "their embeddings are left at zero",
        )
    };
    let (mut query_parts, mut gallery_parts) = (
        vec![run(scales, &queries, "queries")?],
        vec![run(scales, &gallery, "gallery")?],
    );
    let auto_box = match (args.auto_box.params()?, window_model) {
        (Some(params), Some(window_model)) => {
            if !ensemble.is_empty() || scales.len() > 1 || args.tta_flip {
                anyhow::bail!(
                    "--auto-box embeds windows with the main model alone; it cannot be combined \
                     with --ensemble, --tta-sizes or --tta-flip"
                );
            }
            let report = box_queries(
                window_model,
                &params,
                &queries,
                &mut query_parts[0],
                &gallery_parts[0].embeddings.data,
                &gallery.iter().map(|s| s.label).collect::<Vec<_>>(),
                args.batch_size,
                args.workers,
            )?;
            eprintln!(
                "auto-box: a window won for {} of {} queries without a box ({:.1} s)",
                report.boxed, report.searched, report.seconds
            );
            Some(report)
        }
        (Some(_), None) => anyhow::bail!("--auto-box needs the model at the window side"),
        (None, _) => None,
    };
    for (i, member) in ensemble.iter().enumerate() {
        let what = |half: &str| format!("{half} (ensemble model {})", i + 2);
        let member = std::slice::from_ref(member);
        query_parts.push(run(member, &queries, &what("queries"))?);
        gallery_parts.push(run(member, &gallery, &what("gallery"))?);
    }
    Ok(EmbeddedDevSet {
        queries: merge_sets(query_parts, concatenate_normalised)?,
        gallery: merge_sets(gallery_parts, concatenate_normalised)?,
        auto_box,
    })
}

/// The main model at its own size followed by the same model loaded at each other size of
/// `--tta-sizes`.
pub fn load_scales(
    model: &ModelArgs,
    main: InferenceModel,
    sizes: &[usize],
) -> anyhow::Result<Vec<InferenceModel>> {
    let own = main.preprocessing.size;
    let mut scales = vec![main];
    for &size in sizes.iter().filter(|&&s| s != own) {
        scales.push(
            ModelArgs {
                size: Some(size),
                ..model.clone()
            }
            .load()
            .with_context(|| format!("loading the model at {size} px for --tta-sizes"))?,
        );
    }
    Ok(scales)
}

/// `--ensemble DIR` (repeatable): more exported models to embed with.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EnsembleArgs {
    /// Another exported model folder (`export`) to ensemble with; repeat for more. Every image is
    /// embedded by each model at its own size, and the unit embeddings are concatenated and
    /// re-normalised (the cosine becomes the mean of the models' cosines).
    #[arg(long = "ensemble", value_name = "MODEL_DIR")]
    pub dirs: Vec<PathBuf>,
}

impl EnsembleArgs {
    /// Loads every folder on the main model's device.
    pub fn load(&self, device: &DeviceArgs) -> anyhow::Result<Vec<InferenceModel>> {
        self.dirs
            .iter()
            .map(|dir| {
                ModelArgs {
                    model: None,
                    model_dir: Some(dir.clone()),
                    weights: None,
                    size: None,
                    device: device.clone(),
                }
                .load()
                .with_context(|| format!("loading ensemble model {}", dir.display()))
            })
            .collect()
    }
}

/// The dev set ranked by `model` (plain top-k over the whole gallery, no DBA/QE) with the
/// query and gallery labels: what `bench rank` times and `export --int8` gates on.
pub struct RankedDevSet {
    pub ranking: visual_search_retrieval::topk::TopK,
    pub query_labels: Vec<i64>,
    pub gallery_labels: Vec<i64>,
}

impl RankedDevSet {
    pub fn evaluate(&self, k: usize) -> visual_search_retrieval::metrics::Metrics {
        visual_search_retrieval::metrics::evaluate(
            &self.ranking,
            &self.query_labels,
            &self.gallery_labels,
            k,
        )
    }
}

pub fn rank_dev_set(
    model: &InferenceModel,
    args: &DevSetArgs,
    k: usize,
) -> anyhow::Result<RankedDevSet> {
    let set = embed_dev_set(std::slice::from_ref(model), &[], None, args)?;
    let query_labels = EmbeddedDevSet::labels(&set.queries);
    let gallery_labels = EmbeddedDevSet::labels(&set.gallery);
    let dim = set.queries.embeddings.dim;
    let options = visual_search_retrieval::pipeline::RankOptions {
        top_k: k,
        ..Default::default()
    };
    let (ranking, _) = visual_search_retrieval::pipeline::rank(
        set.queries.embeddings.data,
        set.gallery.embeddings.data,
        dim,
        &options,
    );
    Ok(RankedDevSet {
        ranking,
        query_labels,
        gallery_labels,
    })
}

/// A named chain of post-processing options.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum RankPreset {
    /// The challenge 1st place's chain: --centre, --dba-k 5, --blend 0.5,0.5;0.4,0.3,0.3 with
    /// --blend-max-distance 0.8 (options given explicitly still win).
    Winner,
}

/// The ranking options: `--top-k` and the post-processing steps, applied in this order:
/// centring, DBA, α-QE, query blending, then cosine top-k or k-reciprocal re-ranking. Each is
/// defined exactly in its module doc in the retrieval crate.
#[derive(clap::Args, Debug, Clone)]
pub struct RankArgs {
    /// Results per query.
    #[arg(long, default_value_t = 1000, value_parser = crate::args::at_least_one)]
    pub top_k: usize,
    /// Subtract the mean of all query and gallery embeddings, then re-normalise.
    #[arg(long)]
    pub centre: bool,
    /// Database-side augmentation with K ≥ 1 neighbours (the solution used 5).
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub dba_k: Option<usize>,
    /// α-query expansion with K ≥ 1 neighbours.
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub qe_k: Option<usize>,
    /// α of query expansion.
    #[arg(long, default_value_t = 3.0, value_parser = crate::args::non_negative)]
    pub qe_alpha: f32,
    /// Query blending rounds: `;` between rounds, `,` between weights, the query's own weight
    /// first, then one per nearest gallery vector (e.g. `0.5,0.5;0.4,0.3,0.3`).
    #[arg(long, value_parser = parse_blend_rounds)]
    pub blend: Option<BlendRounds>,
    /// A gallery vector is blended into a query only when closer than this (L2 of unit vectors).
    #[arg(long, default_value_t = 0.8, value_parser = crate::args::non_negative)]
    pub blend_max_distance: f32,
    /// Rank by the k-reciprocal re-ranking distance (Zhong et al. 2017) instead of the cosine.
    #[arg(long)]
    pub k_reciprocal: bool,
    /// k1 of k-reciprocal re-ranking (size of the reciprocal neighbourhoods).
    #[arg(long, default_value_t = KReciprocal::default().k1, value_parser = crate::args::at_least_one)]
    pub kr_k1: usize,
    /// k2 of k-reciprocal re-ranking (local query expansion; 1 turns it off).
    #[arg(long, default_value_t = KReciprocal::default().k2, value_parser = crate::args::at_least_one)]
    pub kr_k2: usize,
    /// λ of k-reciprocal re-ranking (weight of the original distance).
    #[arg(long, default_value_t = KReciprocal::default().lambda, value_parser = crate::args::unit_interval)]
    pub kr_lambda: f32,
    /// A named chain of the options above.
    #[arg(long, value_enum)]
    pub preset: Option<RankPreset>,
}

/// Parsed `--blend` rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct BlendRounds(pub Vec<Vec<f32>>);

pub fn parse_blend_rounds(text: &str) -> Result<BlendRounds, String> {
    QueryBlending::parse_rounds(text).map(BlendRounds)
}

impl RankArgs {
    pub fn options(&self) -> RankOptions {
        let preset = match self.preset {
            Some(RankPreset::Winner) => RankOptions::winner(self.top_k),
            None => RankOptions {
                top_k: self.top_k,
                ..RankOptions::default()
            },
        };
        RankOptions {
            top_k: self.top_k,
            dba_k: self.dba_k.or(preset.dba_k),
            qe_k: self.qe_k,
            qe_alpha: self.qe_alpha,
            centre: self.centre || preset.centre,
            blending: match &self.blend {
                Some(BlendRounds(rounds)) => Some(QueryBlending {
                    rounds: rounds.clone(),
                    max_distance: self.blend_max_distance,
                }),
                None => preset.blending.map(|b| QueryBlending {
                    max_distance: self.blend_max_distance,
                    ..b
                }),
            },
            k_reciprocal: self.k_reciprocal.then_some(KReciprocal {
                k1: self.kr_k1,
                k2: self.kr_k2,
                lambda: self.kr_lambda,
            }),
        }
    }

    /// The options as JSON, for reports.
    pub fn describe(&self) -> serde_json::Value {
        let o = self.options();
        serde_json::json!({
            "centre": o.centre, "dba_k": o.dba_k, "qe_k": o.qe_k, "qe_alpha": o.qe_alpha,
            "blend": o.blending.as_ref().map(|b| &b.rounds),
            "blend_max_distance": o.blending.as_ref().map(|b| b.max_distance),
            "k_reciprocal": o.k_reciprocal.map(|k| serde_json::json!({
                "k1": k.k1, "k2": k.k2, "lambda": k.lambda
            })),
        })
    }
}
