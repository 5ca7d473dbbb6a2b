//! `visual-search index build | add | upsert | delete | compact | info | migrate | dups` (and
//! `calibrate`, in its own file): the catalogue index that `serve` searches, on disk or in
//! PostgreSQL. Upsert, delete and compact go through the engine seam
//! ([`Catalogue`]), so they read the same for both engines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_retrieval::index::{
    Index, IndexDtype, IndexItem, IndexMeta, build_index, check_build_target,
};

use crate::dev_set_run::{BlendRounds, RankPreset, eval_loader, parse_blend_rounds};
use crate::embedding_run::embed_with_progress;
use visual_search_inference::InferenceModel;
use visual_search_retrieval::catalogue_duplicates::{
    DEFAULT_MAX_HASH_DISTANCE, DupSettings, find_duplicate_groups,
};
use visual_search_retrieval::duplicates;
use visual_search_retrieval::index_post_processing::IndexPostProcessing;
use visual_search_retrieval::query_blending::QueryBlending;

use crate::args::model::{DeviceArgs, ModelArgs};
use crate::args::postgres::{PgArgs, open_catalogue};
use crate::args::shard::{ShardArgs, ShardMode};
use crate::index_model::{open_with_model, preprocessing};
use crate::list_metadata::read_list_metadata;
use crate::progress::images_bar;
use crate::sample_lists::{ListArgs, ListKind};
use crate::sharded_embedding::ShardedList;
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::item_metadata::Metadata;
use visual_search_retrieval::postgres_index::{
    PgOptions, create_hnsw, create_tables, is_postgres_url, redact,
};
use visual_search_retrieval::postgres_load::{LoadKind, LoadOutcome, load_rows};
use visual_search_train::embedding::EmbeddedSet;

#[derive(clap::Subcommand)]
pub enum IndexCommand {
    /// Embed a catalogue list (gallery.csv, a Product10K list, …) into a new index folder.
    Build(Box<BuildArgs>),
    /// Embed more images into an existing index with the index's own model.
    Add(AddArgs),
    /// Replace products: embed a list with the index's model, remove every image of the
    /// products (keys) it names, and add its images — one atomic change.
    Upsert(AddArgs),
    /// Remove every image of the given products (keys: labels, or the index's key column).
    Delete(DeleteArgs),
    /// Reclaim what deletes left: rewrite an on-disk index without its deleted rows (the rows
    /// after them get new ids), or VACUUM a PostgreSQL table.
    Compact(InfoArgs),
    /// Print what an index holds.
    Info(InfoArgs),
    /// Copy an on-disk index into PostgreSQL + pgvector (rows, metadata, then the HNSW index).
    Migrate(MigrateArgs),
    /// List groups of near-duplicate catalogue images (the same photo re-encoded, resized or
    /// cropped a little), from the exact top-k of the index against itself.
    Dups(DupsArgs),
    /// Measure on labelled queries the top-1 score below which a search answers "not in the
    /// catalogue", and store it in the index (hides a seeded fraction of its products to make
    /// queries whose product is absent).
    Calibrate(crate::commands::index_calibrate::CalibrateArgs),
}

#[derive(clap::Args)]
pub struct DupsArgs {
    /// The index: a folder or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// Two images are candidate near-duplicates when the cosine of their embeddings is at least
    /// this (then checked with --max-hash-distance).
    #[arg(long, default_value_t = duplicates::DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Neighbours looked at per image (larger groups are still joined through chains).
    #[arg(long, default_value_t = 10, value_parser = crate::args::at_least_one)]
    k: usize,
    /// A candidate pair is kept only when the images' 64-bit difference hashes (whole image
    /// against a grid of crops of the other) differ in at most this many bits: re-encoded,
    /// resized or slightly cropped copies keep almost all, another photo of the same product
    /// does not. 64 keeps every candidate without reading the images.
    #[arg(long, default_value_t = DEFAULT_MAX_HASH_DISTANCE)]
    max_hash_distance: u32,
    /// Also write the groups as CSV (`group,id,label,path`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    list: ListArgs,
    /// The index to write: a folder (replaced atomically if it exists) or a `postgres://` URL.
    #[arg(long, visible_alias = "index")]
    out: String,
    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    hnsw: HnswArgs,
    /// Stored precision of the embeddings (f16 halves the size; scores differ by ~1e-3).
    #[arg(long, value_enum, default_value = "f16")]
    store: StoreDtype,
    #[command(flatten)]
    post: IndexPostArgs,
    /// The list column naming a product for `index upsert` / `index delete` (e.g. `sku`;
    /// kept as metadata). Without it the product label (`product_id`) is the key.
    #[arg(long)]
    key_column: Option<String>,
    #[command(flatten)]
    shard: ShardArgs,
}

/// Post-processing stored in the index and applied to every search (`search`, `serve`).
#[derive(clap::Args)]
pub struct IndexPostArgs {
    /// Centre the catalogue on its mean (stored; subtracted from every query and added row).
    #[arg(long)]
    centre: bool,
    /// Blend every query with its close catalogue vectors before the search: rounds separated
    /// by `;`, weights by `,`, the query's own first (e.g. `0.5,0.5;0.4,0.3,0.3`).
    #[arg(long, value_parser = parse_blend_rounds)]
    blend: Option<BlendRounds>,
    /// A catalogue vector is blended into a query only when closer than this (L2).
    #[arg(long, default_value_t = 0.8, value_parser = crate::args::non_negative)]
    blend_max_distance: f32,
    /// `winner`: the challenge 1st place's steps that apply to an index (centring and its two
    /// blending rounds; its DBA changes the whole catalogue, so it stays a `rank` option).
    #[arg(long, value_enum)]
    preset: Option<RankPreset>,
}

impl IndexPostArgs {
    /// The index's post-processing, centring `rows` (the whole catalogue) when asked.
    fn apply(&self, rows: &mut [f32], dim: usize) -> IndexPostProcessing {
        let winner = self.preset == Some(RankPreset::Winner);
        let centre =
            (self.centre || winner).then(|| IndexPostProcessing::centre_catalogue(rows, dim));
        let rounds = match &self.blend {
            Some(BlendRounds(rounds)) => Some(rounds.clone()),
            None => winner.then(|| QueryBlending::winner().rounds),
        };
        IndexPostProcessing {
            centre,
            blending: rounds.map(|rounds| QueryBlending {
                rounds,
                max_distance: self.blend_max_distance,
            }),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum StoreDtype {
    F16,
    F32,
}

/// How a PostgreSQL index is loaded and indexed.
#[derive(clap::Args)]
pub struct HnswArgs {
    /// HNSW graph degree (pgvector's `m`).
    #[arg(long, default_value_t = 16)]
    m: u32,
    /// HNSW build beam width (pgvector's `ef_construction`).
    #[arg(long, default_value_t = 64)]
    ef_construction: u32,
    /// Memory for building the HNSW graph (`maintenance_work_mem`, MiB); it should hold the
    /// graph, about rows × (4·dim + 8·m) bytes, or pgvector builds much more slowly.
    #[arg(long, default_value_t = 1024)]
    hnsw_memory_mb: u32,
    /// Parallel workers for the HNSW build (`max_parallel_maintenance_workers`) [default: the
    /// server's setting].
    #[arg(long)]
    hnsw_workers: Option<u32>,
    /// Rows per COPY transaction (the unit a lost connection resumes from).
    #[arg(long, default_value_t = 10_000)]
    batch_rows: usize,
    /// Do not build the HNSW index (searches are then exact scans).
    #[arg(long)]
    no_hnsw: bool,
    /// Drop an existing PostgreSQL index in the table first (a folder is always replaced).
    #[arg(long)]
    replace: bool,
}

impl HnswArgs {
    fn apply(&self, mut o: PgOptions) -> PgOptions {
        o.m = self.m;
        o.ef_construction = self.ef_construction;
        o.hnsw_memory_mb = self.hnsw_memory_mb;
        o.hnsw_workers = self.hnsw_workers;
        o.batch_rows = self.batch_rows;
        o
    }
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The on-disk index folder.
    #[arg(long)]
    from: PathBuf,
    /// `postgres://user@host:port/db`.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    hnsw: HnswArgs,
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The index: a folder or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    list: ListArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// The index: a folder or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// A product key to delete (repeatable).
    #[arg(long = "key", required_unless_present = "keys")]
    key: Vec<String>,
    /// A file of product keys, one per line (blank lines and `#` comments skipped).
    #[arg(long)]
    keys: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The index: a folder or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
}

impl IndexCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            IndexCommand::Build(a) => build(*a),
            IndexCommand::Add(a) => add(a),
            IndexCommand::Upsert(a) => upsert(a),
            IndexCommand::Delete(a) => delete(a),
            IndexCommand::Compact(a) => compact(a),
            IndexCommand::Info(a) => info(a),
            IndexCommand::Migrate(a) => migrate(a),
            IndexCommand::Dups(a) => dups(a),
            IndexCommand::Calibrate(a) => crate::commands::index_calibrate::calibrate(a),
        }
    }
}

/// Embeds a list (its extra columns kept as metadata); unreadable images are reported and
/// left out.
fn embed_list(
    loaded: &InferenceModel,
    list: &ListArgs,
) -> anyhow::Result<(Vec<IndexItem>, Vec<f32>)> {
    let (kind, samples, metadata) = read_list(list)?;
    let set = embed_with_progress(
        loaded,
        false,
        samples.clone(),
        &eval_loader(list.batch_size, list.workers),
        &format!("embedding {kind:?}"),
        LEFT_OUT,
    )?;
    Ok(index_rows(&samples, metadata, &set))
}

/// What an index build says of the images it could not read.
const LEFT_OUT: &str = "they are left out of the index";

/// A list's samples and the metadata of each.
fn read_list(list: &ListArgs) -> anyhow::Result<(ListKind, Arc<[Sample]>, Vec<Metadata>)> {
    let (kind, samples) = list.read()?;
    if samples.is_empty() {
        bail!("{} lists no images", list.csv.display());
    }
    let metadata = read_list_metadata(&list.csv, kind)?;
    if metadata.len() != samples.len() {
        bail!(
            "{}: {} rows of metadata for {} images (was the file changed while reading?)",
            list.csv.display(),
            metadata.len(),
            samples.len()
        );
    }
    Ok((kind, samples.into(), metadata))
}

/// The index rows of an embedded list: its items and their embeddings, the images that could
/// not be read left out.
fn index_rows(
    samples: &[Sample],
    mut metadata: Vec<Metadata>,
    set: &EmbeddedSet,
) -> (Vec<IndexItem>, Vec<f32>) {
    let dim = set.embeddings.dim;
    let skipped: std::collections::HashSet<usize> =
        set.skipped.iter().map(|s| s.sample_index).collect();
    let mut items = Vec::with_capacity(samples.len());
    let mut rows = Vec::with_capacity(samples.len() * dim);
    for (i, s) in samples.iter().enumerate() {
        if skipped.contains(&i) {
            continue;
        }
        items.push(IndexItem {
            label: s.label,
            path: std::path::absolute(&s.path).unwrap_or_else(|_| s.path.clone()),
            metadata: std::mem::take(&mut metadata[i]),
        });
        rows.extend_from_slice(set.embeddings.row(i));
    }
    (items, rows)
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let (kind, samples, metadata) = read_list(&args.list)?;
    let mode = args.shard.mode()?;
    if mode != ShardMode::Whole && args.shard.parts.is_none() && is_postgres_url(&args.out) {
        bail!("a sharded build into PostgreSQL needs --parts DIR (a folder every worker can reach)")
    }
    // What would refuse the finished build is checked before the embedding.
    if !is_postgres_url(&args.out) {
        check_build_target(Path::new(&args.out))?;
    }
    if let Some(column) = &args.key_column
        && let Some(n) = metadata.iter().position(|m| !m.contains_key(column))
    {
        bail!(
            "{}: image {} has no {column} (the --key-column every row must fill)",
            args.list.csv.display(),
            samples[n].path.display()
        );
    }
    let sharded = ShardedList::new(
        mode,
        &args.shard,
        Path::new(&args.out),
        &args.list,
        samples.clone(),
        &args.model,
        "",
    )?;
    let loaded = args.model.load()?;
    let loader = eval_loader(args.list.batch_size, args.list.workers);
    let what = format!("embedding {kind:?}");
    let embedded = sharded.embed(&loaded.device_name, &what, LEFT_OUT, &mut |part| {
        embed_with_progress(&loaded, false, part, &loader, &what, LEFT_OUT)
    })?;
    let Some(set) = embedded else {
        return Ok(());
    };
    let (items, mut rows) = index_rows(&samples, metadata, &set);
    let post_processing = args.post.apply(&mut rows, loaded.dim);
    let dtype = match args.store {
        StoreDtype::F16 => IndexDtype::F16,
        StoreDtype::F32 => IndexDtype::F32,
    };
    let mut meta = IndexMeta::new(
        dtype,
        loaded.dim,
        serde_json::to_value(&loaded.reference)?,
        preprocessing(&loaded),
    );
    meta.catalogue_root = Some(std::path::absolute(args.list.root())?);
    meta.post_processing = post_processing;
    meta.key_column = args.key_column.clone();
    if is_postgres_url(&args.out) {
        let opts = args.hnsw.apply(args.pg.options(&args.out));
        load_into_postgres(&opts, &args.hnsw, &meta, &items, &rows)?;
    } else {
        build_index(Path::new(&args.out), meta, &items, &rows)
            .with_context(|| format!("writing the index {}", args.out))?;
    }
    sharded.finish();
    println!(
        "indexed {} images ({} × {}, {:?}) into {}",
        items.len(),
        items.len(),
        loaded.dim,
        args.store,
        redact(&args.out)
    );
    Ok(())
}

/// Creates the tables, COPYs the rows (resuming after lost connections) and builds HNSW.
fn load_into_postgres(
    opts: &PgOptions,
    hnsw: &HnswArgs,
    meta: &IndexMeta,
    items: &[IndexItem],
    rows: &[f32],
) -> anyhow::Result<()> {
    create_tables(opts, meta, hnsw.replace)?;
    let bar = images_bar(items.len(), "writing rows");
    let outcome = load_rows(
        opts,
        meta.dtype,
        LoadKind::Build,
        items,
        rows,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    report_load(&outcome);
    if !hnsw.no_hnsw {
        let t = std::time::Instant::now();
        create_hnsw(opts, meta.dtype)?;
        println!(
            "built the HNSW index (m {}, ef_construction {}) in {:.1} s",
            opts.m,
            opts.ef_construction,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Says when a load resumed an interrupted run or found its rows already loaded.
fn report_load(outcome: &LoadOutcome) {
    if outcome.already_loaded {
        println!(
            "these {} rows were loaded before (ids {}..{}); nothing written",
            outcome.rows,
            outcome.first_id,
            outcome.first_id + outcome.rows as i64
        );
    } else if outcome.resumed_from > 0 {
        println!(
            "resumed an interrupted load after {} of {} rows",
            outcome.resumed_from, outcome.rows
        );
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    if !is_postgres_url(&args.to) {
        bail!("--to must be a postgres:// URL, got {}", args.to);
    }
    let index = Index::open(&args.from)?;
    let view = index.view()?;
    let mut scratch = Vec::new();
    let rows = view.rows_f32(0, view.rows, &mut scratch).to_vec();
    let opts = args.hnsw.apply(args.pg.options(&args.to));
    let t = std::time::Instant::now();
    load_into_postgres(&opts, &args.hnsw, &index.meta, &index.items, &rows)?;
    println!(
        "migrated {} rows ({}-d, {:?}) from {} to {} table {} in {:.1} s",
        index.meta.rows,
        index.meta.dim,
        index.meta.dtype,
        args.from.display(),
        redact(&args.to),
        opts.table,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An opened index, and a list's items with their embeddings in that index's space.
type IndexAndRows = (Box<dyn Catalogue>, Vec<IndexItem>, Vec<f32>);

/// The index of `add`/`upsert` and its list embedded with the index's model, in the index's
/// space (its stored post-processing applied).
fn open_and_embed(args: &AddArgs) -> anyhow::Result<IndexAndRows> {
    let (index, loaded) = open_with_model(&args.index, &args.pg, &args.device)?;
    let (items, mut rows) = embed_list(&loaded, &args.list)?;
    index
        .meta()
        .post_processing
        .prepare_rows(&mut rows, loaded.dim)?;
    Ok((index, items, rows))
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let (index, items, rows) = open_and_embed(&args)?;
    let now = index
        .append(&items, &rows)
        .with_context(|| format!("appending to {}", index.location()))?;
    println!(
        "added {} images to {} (now {now})",
        items.len(),
        index.location()
    );
    Ok(())
}

fn upsert(args: AddArgs) -> anyhow::Result<()> {
    let (index, items, rows) = open_and_embed(&args)?;
    let (replaced, added) = index
        .upsert(&items, &rows)
        .with_context(|| format!("upserting into {}", index.location()))?;
    if (replaced, added) == (0, 0) {
        println!("this upsert was applied before; nothing changed");
    } else {
        println!(
            "replaced {replaced} images and added {added} in {} (keys: {})",
            index.location(),
            index.meta().key_name()
        );
    }
    Ok(())
}

fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut keys: std::collections::HashSet<String> = args.key.iter().cloned().collect();
    if let Some(file) = &args.keys {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading keys from {}", file.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let index = open_catalogue(&args.index, &args.pg)?;
    let keys = index.meta().parse_keys(keys)?;
    let deleted = index
        .delete_keys(&keys)
        .with_context(|| format!("deleting from {}", index.location()))?;
    println!(
        "deleted {} images of {} {} key(s) from {}",
        deleted.rows,
        keys.len() - deleted.unmatched.len(),
        index.meta().key_name(),
        index.location()
    );
    if !deleted.unmatched.is_empty() {
        eprintln!(
            "no image has {} {}: {}",
            index.meta().key_name(),
            if deleted.unmatched.len() == 1 {
                "key"
            } else {
                "keys"
            },
            deleted.unmatched.join(", ")
        );
    }
    Ok(())
}

fn compact(args: InfoArgs) -> anyhow::Result<()> {
    let index = open_catalogue(&args.index, &args.pg)?;
    println!("{}", index.compact()?);
    Ok(())
}

fn dups(args: DupsArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        visual_search_data::output_file::check_replaceable_output(
            out,
            visual_search_data::output_file::OutputFormat::Csv(&duplicates::GROUPS_CSV_HEADER),
        )?;
    }
    let index = open_catalogue(&args.index, &args.pg)?;
    let settings = DupSettings {
        threshold: args.threshold,
        k: args.k,
        max_hash_distance: args.max_hash_distance,
    };
    let bar = images_bar(0, "hashing candidate images");
    let report = find_duplicate_groups(index.as_ref(), &settings, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if !report.unreadable.is_empty() {
        eprintln!(
            "{} candidate image(s) could not be read; their pairs are left out:",
            report.unreadable.len()
        );
        report
            .unreadable
            .iter()
            .take(20)
            .for_each(|u| eprintln!("  {u}"));
    }
    for (g, group) in report.groups.iter().enumerate() {
        println!("group {} ({} images):", g + 1, group.len());
        for m in group {
            println!("  {:>8}  {:>6}  {}", m.id, m.label, m.path);
        }
    }
    let members: Vec<duplicates::GroupMember> = report.groups.into_iter().flatten().collect();
    println!(
        "{} groups of near-duplicates ({} of {} images) at cosine >= {}",
        members.last().map_or(0, |m| m.group),
        members.len(),
        report.rows,
        args.threshold
    );
    if let Some(out) = &args.out {
        visual_search_retrieval::npy::write_atomically(out, &duplicates::groups_csv(&members)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    if is_postgres_url(&args.index) {
        let index = open_catalogue(&args.index, &args.pg)?;
        println!("index      {}", index.location());
        print_info(index.as_ref());
    } else {
        let index = Index::open(Path::new(&args.index))?;
        println!("index      {}", index.location());
        println!("version    {}", index.version_dir.display());
        if index.deleted_rows() > 0 {
            println!(
                "deleted    {} rows (tombstones; `index compact` drops them)",
                index.deleted_rows()
            );
        }
        println!("labels     {}", index.distinct_labels()?.len());
        print_info(&index);
    }
    Ok(())
}

/// What every engine can say about its index.
fn print_info(index: &dyn Catalogue) {
    let m = index.meta();
    println!("format     {}", m.format_version);
    println!("images     {}", index.rows());
    println!("dimension  {}", m.dim);
    println!("dtype      {:?}", m.dtype);
    println!("size       {:.1} MB", index.size_bytes() as f64 / 1e6);
    println!(
        "input      {} px, mean {:?}, std {:?}",
        m.preprocessing.size, m.preprocessing.mean, m.preprocessing.std
    );
    println!("model      {}", m.model);
    println!(
        "key        {} (what index upsert / delete name products by)",
        m.key_name()
    );
    match index.metadata_columns() {
        Ok(columns) if !columns.is_empty() => println!("metadata   {}", columns.join(", ")),
        Ok(_) => {}
        Err(e) => println!("metadata   (could not be listed: {e})"),
    }
    let post = &m.post_processing;
    if post.centre.is_some() {
        println!("centred    on the catalogue mean");
    }
    if let Some(b) = &post.blending {
        println!("blending   rounds {:?}, L2 < {}", b.rounds, b.max_distance);
    }
    if let Some(t) = &m.match_threshold {
        println!(
            "match      top-1 score >= {:.4} (precision {:.3}, recall {:.3}, AUROC {:.3} when calibrated)",
            t.score, t.precision, t.recall, t.auroc
        );
    }
}
