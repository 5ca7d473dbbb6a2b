//! `visual-search index build | add | info`: the on-disk catalogue index that `serve` searches.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_retrieval::index::{
    INDEX_FORMAT_VERSION, Index, IndexDtype, IndexItem, IndexMeta, build_index,
};

use crate::dev_set_run::eval_loader;
use crate::embedding_run::embed_with_progress;
use crate::index_model::{ModelRef, open_with_model, preprocessing};
use crate::model_args::{LoadedModel, ModelArgs};
use crate::sample_lists::ListArgs;

#[derive(clap::Subcommand)]
pub enum IndexCommand {
    /// Embed a catalogue list (gallery.csv, a Product10K list, …) into a new index folder.
    Build(BuildArgs),
    /// Embed more images into an existing index with the index's own model.
    Add(AddArgs),
    /// Print what an index holds.
    Info(InfoArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    list: ListArgs,
    /// The index folder to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Stored precision of the embeddings (f16 halves the size; scores differ by ~1e-3).
    #[arg(long, value_enum, default_value = "f16")]
    store: StoreDtype,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum StoreDtype {
    F16,
    F32,
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The index folder.
    #[arg(long)]
    index: PathBuf,
    #[command(flatten)]
    list: ListArgs,
    /// Compute device: flex (CPU), tch, tch-cuda:N, cuda:N, wgpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The index folder.
    #[arg(long)]
    index: PathBuf,
}

impl IndexCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            IndexCommand::Build(a) => build(a),
            IndexCommand::Add(a) => add(a),
            IndexCommand::Info(a) => info(a),
        }
    }
}

/// Embeds a list; unreadable images are reported and left out.
fn embed_list(loaded: &LoadedModel, list: &ListArgs) -> anyhow::Result<(Vec<IndexItem>, Vec<f32>)> {
    let (kind, samples) = list.read()?;
    if samples.is_empty() {
        bail!("{} lists no images", list.csv.display());
    }
    let loader = eval_loader(list.batch_size, list.workers);
    let samples: Arc<[Sample]> = samples.into();
    let result = embed_with_progress(
        loaded,
        samples.clone(),
        &loader,
        &format!("embedding {kind:?}"),
        "they are left out of the index",
    );
    let dim = result.embeddings.dim;
    let skipped: std::collections::HashSet<usize> =
        result.skipped.iter().map(|s| s.sample_index).collect();
    let mut items = Vec::with_capacity(samples.len());
    let mut rows = Vec::with_capacity(samples.len() * dim);
    for (i, s) in samples.iter().enumerate() {
        if skipped.contains(&i) {
            continue;
        }
        items.push(IndexItem {
            label: s.label,
            path: std::path::absolute(&s.path).unwrap_or_else(|_| s.path.clone()),
        });
        rows.extend_from_slice(result.embeddings.row(i));
    }
    Ok((items, rows))
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let (items, rows) = embed_list(&loaded, &args.list)?;
    let meta = IndexMeta {
        format_version: INDEX_FORMAT_VERSION,
        dtype: match args.store {
            StoreDtype::F16 => IndexDtype::F16,
            StoreDtype::F32 => IndexDtype::F32,
        },
        dim: loaded.model.dim(),
        rows: items.len(),
        embeddings_crc32: 0,
        items_crc32: 0,
        model: serde_json::to_value(ModelRef::from_args(&args.model, &loaded)?)?,
        preprocessing: preprocessing(&loaded),
    };
    build_index(&args.out, meta, &items, &rows)
        .with_context(|| format!("writing the index {}", args.out.display()))?;
    println!(
        "indexed {} images ({} × {}, {:?}) into {}",
        items.len(),
        items.len(),
        loaded.model.dim(),
        args.store,
        args.out.display()
    );
    Ok(())
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let (index, loaded) = open_with_model(&args.index, &args.device)?;
    let (items, rows) = embed_list(&loaded, &args.list)?;
    index
        .append(&items, &rows)
        .with_context(|| format!("appending to {}", args.index.display()))?;
    println!(
        "added {} images to {} (now {})",
        items.len(),
        args.index.display(),
        index.meta.rows + items.len()
    );
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let index = Index::open(&args.index)?;
    let m = &index.meta;
    let labels: std::collections::HashSet<i64> = index.items.iter().map(|i| i.label).collect();
    println!("index      {}", args.index.display());
    println!("version    {}", index.version_dir.display());
    println!("format     {}", m.format_version);
    println!("images     {}", m.rows);
    println!("labels     {}", labels.len());
    println!("dimension  {}", m.dim);
    println!("dtype      {:?}", m.dtype);
    println!("on disk    {:.1} MB", index.size_on_disk() as f64 / 1e6);
    println!(
        "input      {} px, mean {:?}, std {:?}",
        m.preprocessing.size, m.preprocessing.mean, m.preprocessing.std
    );
    println!("model      {}", m.model);
    Ok(())
}
