//! Embedding both halves of a dev set (queries box-cropped, gallery without white border) with
//! one model — the common first half of `rank` and `eval`.

use std::path::PathBuf;

use visual_search_data::formats::dev_set::load_dev_set;
use visual_search_data::loader::LoaderConfig;
use visual_search_train::embedding::EmbeddedSet;

use crate::embedding_run::embed_with_progress;
use visual_search_inference::InferenceModel;

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
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Image-loading threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
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
}

impl EmbeddedDevSet {
    pub fn labels(set: &EmbeddedSet) -> Vec<i64> {
        set.embeddings.labels.clone().unwrap_or_default()
    }
}

pub fn embed_dev_set(model: &InferenceModel, args: &DevSetArgs) -> anyhow::Result<EmbeddedDevSet> {
    let dev = load_dev_set(&args.dataset_dir, &args.gallery, &args.queries)?;
    let loader = eval_loader(args.batch_size, args.workers);
    let run = |samples: Vec<visual_search_data::Sample>, what: &str| {
        embed_with_progress(
            model,
            samples.into(),
            &loader,
            what,
            "their embeddings are left at zero",
        )
    };
    let queries = run(dev.queries, "queries")?;
    let gallery = run(dev.gallery, "gallery")?;
    Ok(EmbeddedDevSet { queries, gallery })
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
    let set = embed_dev_set(model, args)?;
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

/// `--top-k`, `--dba-k`, `--qe-k`, `--qe-alpha`.
#[derive(clap::Args, Debug, Clone)]
pub struct RankArgs {
    /// Results per query.
    #[arg(long, default_value_t = 1000)]
    pub top_k: usize,
    /// Database-side augmentation with K neighbours (the solution used 5).
    #[arg(long)]
    pub dba_k: Option<usize>,
    /// α-query expansion with K neighbours.
    #[arg(long)]
    pub qe_k: Option<usize>,
    /// α of query expansion.
    #[arg(long, default_value_t = 3.0)]
    pub qe_alpha: f32,
}

impl RankArgs {
    pub fn options(&self) -> visual_search_retrieval::pipeline::RankOptions {
        visual_search_retrieval::pipeline::RankOptions {
            top_k: self.top_k,
            dba_k: self.dba_k,
            qe_k: self.qe_k,
            qe_alpha: self.qe_alpha,
        }
    }
}
