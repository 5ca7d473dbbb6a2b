//! `visual-search search`: query an index with image files from the command line — the same
//! preparation and model as `serve`, without a server.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_data::image::DecodeLimits;
use visual_search_serve::query_image::{parse_bbox, prepare_query};

use visual_search_retrieval::ensemble::fuse_rows;

use crate::args::model::DeviceArgs;
use crate::args::postgres::PgArgs;
use crate::args::postgres::open_catalogue;
use crate::index_model::load_index_model;
use crate::table::render;

/// Finds the catalogue images nearest to each photo and prints rank, score, label and path;
/// with `--fuse`, one search for all the photos together (several photos of one product); with
/// `--item ID`, the images most like catalogue item ID (itself left out).
#[derive(clap::Args)]
pub struct Args {
    /// The index: a folder (`visual-search index build`) or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// Photos to search with.
    #[arg(required_unless_present = "item")]
    images: Vec<PathBuf>,
    /// The photos show one product: search once with the mean of their embeddings.
    #[arg(long, conflicts_with = "item")]
    fuse: bool,
    /// Search with catalogue item ID's stored embedding instead of photos.
    #[arg(long, conflicts_with = "images")]
    item: Option<u64>,
    /// Results per photo.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Crop each photo to this box first: x,y,w,h in pixels.
    #[arg(long)]
    bbox: Option<String>,
    /// Compute device: flex (CPU), tch, tch-cuda:N, cuda:N, wgpu or auto.
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // A search by item needs no model: open the index alone and load its model only for photos.
    let index = open_catalogue(&args.index, &args.pg)?;
    let bbox = args
        .bbox
        .as_deref()
        .map(parse_bbox)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let print = |title: String, hits: Vec<visual_search_retrieval::catalogue::CatalogueHit>| {
        println!("{title}:");
        let rows: Vec<Vec<String>> = hits
            .into_iter()
            .enumerate()
            .map(|(r, hit)| {
                vec![
                    (r + 1).to_string(),
                    format!("{:.4}", hit.score),
                    hit.item.label.to_string(),
                    hit.item.path.display().to_string(),
                ]
            })
            .collect();
        print!("{}", render(&["rank", "score", "label", "image"], &rows));
    };
    if let Some(id) = args.item {
        let hits = index.similar_items(id, args.k)?.with_context(|| {
            format!(
                "{} has no item {id} (ids are 0..{})",
                index.location(),
                index.rows()
            )
        })?;
        let path = index.item(id)?.map(|i| i.path.display().to_string());
        print(format!("item {id} ({})", path.unwrap_or_default()), hits);
        return Ok(());
    }
    let loaded = load_index_model(index.meta(), &args.device)?;
    let pre = &index.meta().preprocessing;
    let mut embeddings = Vec::with_capacity(args.images.len() * loaded.dim);
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let pixels = prepare_query(&bytes, bbox, pre, &DecodeLimits::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        embeddings.extend(loaded.embed(pixels, 1)?);
    }
    if args.fuse {
        let fused = fuse_rows(&embeddings, loaded.dim);
        let hits = index
            .search_items(&fused, args.k)?
            .pop()
            .unwrap_or_default();
        print(format!("{} photos fused", args.images.len()), hits);
        return Ok(());
    }
    let results = index.search_items(&embeddings, args.k)?;
    for (path, hits) in args.images.iter().zip(results) {
        print(path.display().to_string(), hits);
    }
    Ok(())
}
