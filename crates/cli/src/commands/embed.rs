//! `visual-search embed`: one embedding per CSV row.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_retrieval::embedding_file::{StoredDtype, check_output, write_embeddings};

use crate::args::model::ModelArgs;
use crate::args::shard::ShardArgs;
use crate::dev_set_run::{eval_loader, load_scales};
use crate::embedding_run::embed_at_scales;
use crate::sample_lists::ListArgs;
use crate::sharded_embedding::ShardedList;

/// Embeds every image of a Product10K, gallery or queries CSV (queries cropped to their box,
/// gallery images without their white border) and writes an (n, d) matrix whose row i is CSV
/// row i: `.npy` or `.safetensors` (the latter also stores the labels). Unreadable images are
/// reported and get an all-zero row. With `--shard I/N` many workers embed one list and
/// `--merge-parts` joins their part files (README "Scale-out").
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    list: ListArgs,
    /// Output file (.npy or .safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Test-time augmentation: average each embedding with its mirror image's (twice the model
    /// time); embed queries and gallery the same way.
    #[arg(long)]
    tta_flip: bool,
    /// Multi-scale test-time augmentation: also embed at these input sides (comma-separated)
    /// and average the unit embeddings; the model's own size is always included.
    #[arg(long, value_delimiter = ',')]
    tta_sizes: Vec<usize>,
    /// Precision of the stored embeddings.
    #[arg(long, value_enum, default_value = "f32")]
    out_dtype: DtypeArg,
    #[command(flatten)]
    shard: ShardArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DtypeArg {
    F32,
    F16,
}

impl DtypeArg {
    /// The name as typed on the command line.
    fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::F16 => "f16",
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    check_output(&args.out)?;
    let (kind, samples) = args.list.read()?;
    let mut views = String::new();
    if args.tta_flip {
        views += ", mirror-averaged";
    }
    if !args.tta_sizes.is_empty() {
        views += &format!(", also at {:?} px", args.tta_sizes);
    }
    let sharded = ShardedList::new(
        args.shard.mode()?,
        &args.shard,
        &args.out,
        &args.list,
        samples.into(),
        &args.model,
        &views,
    )?;
    // A merge runs no model: the parts hold the embeddings.
    let scales = match sharded.is_merge() {
        true => Vec::new(),
        false => load_scales(&args.model, args.model.load()?, &args.tta_sizes)?,
    };
    let device = scales.first().map_or("parts", |m| m.device_name.as_str());
    let loader = eval_loader(args.list.batch_size, args.list.workers);
    let what = format!("embedding {kind:?}");
    let consequence = "their rows are all zero";
    let embedded = sharded.embed(device, &what, consequence, &mut |samples| {
        embed_at_scales(&scales, args.tta_flip, samples, &loader, &what, consequence)
    })?;
    let Some(result) = embedded else {
        return Ok(());
    };
    let dtype = match args.out_dtype {
        DtypeArg::F32 => StoredDtype::F32,
        DtypeArg::F16 => StoredDtype::F16,
    };
    write_embeddings(&args.out, &result.embeddings, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    sharded.finish();
    let (rows, dim) = (result.embeddings.rows, result.embeddings.dim);
    let t = &result.timings;
    match scales.first() {
        None => println!(
            "wrote {rows} x {dim} {} embeddings merged from {} to {}",
            args.out_dtype.name(),
            sharded.parts_dir.display(),
            args.out.display()
        ),
        Some(loaded) => println!(
            // The model's precision and the stored one differ (`--dtype bf16` stores f32).
            "wrote {rows} x {dim} {} embeddings ({} on {} in {}) to {} in {:.1}s ({:.1} images/s; model {:.1}s, waiting for images {:.1}s)",
            args.out_dtype.name(),
            loaded.spec.name,
            loaded.device_name,
            args.model.device.dtype.name(),
            args.out.display(),
            t.total.as_secs_f64(),
            rows as f64 / t.total.as_secs_f64(),
            t.model.as_secs_f64(),
            t.waiting_for_data.as_secs_f64(),
        ),
    }
    Ok(())
}
