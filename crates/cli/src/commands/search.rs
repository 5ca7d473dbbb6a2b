//! `visual-search search`: query an index with image files from the command line — the same
//! preparation and model as `serve`, without a server.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_data::image::DecodeLimits;
use visual_search_serve::query_image::{
    check_box_on_photo, decode_query, parse_bbox, prepare_decoded, prepare_windows,
};

use visual_search_retrieval::ensemble::fuse_rows;

use crate::args::model::DeviceArgs;
use crate::args::postgres::PgArgs;
use crate::args::postgres::open_catalogue;
use crate::auto_box_run::AutoBoxArgs;
use crate::index_model::{load_index_model, load_index_model_at};
use crate::table::render;
use visual_search_retrieval::index::Preprocessing;
use visual_search_retrieval::item_metadata::Filter;

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
    #[arg(long, default_value_t = 5, value_parser = crate::args::at_least_one)]
    k: usize,
    /// Crop each photo to this box first: x,y,w,h in pixels (a box that misses a photo, or
    /// selects under 4×4 pixels of it, is an error).
    #[arg(long)]
    bbox: Option<String>,
    /// Only catalogue items whose metadata match: `name=value[|value…][,name=value…]` (every
    /// name must hold one of its values; `label=` filters product labels), e.g.
    /// `category=Fruit|Vegetables,in_stock=true`.
    #[arg(long)]
    filter: Option<Filter>,
    /// Compute device: flex (CPU), tch, tch-cuda:N, cuda:N, wgpu or auto.
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    auto_box: AutoBoxArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let filter = args.filter.clone().unwrap_or_default();
    // A search by item needs no model: open the index alone and load its model only for photos.
    let index = open_catalogue(&args.index, &args.pg)?;
    if !filter.clauses.is_empty() {
        filter
            .check_columns(&index.metadata_columns()?)
            .with_context(|| format!("--filter on {}", index.location()))?;
    }
    let bbox = args
        .bbox
        .as_deref()
        .map(parse_bbox)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let meta = index.meta().clone();
    // Photos get a match verdict when the index is calibrated; a catalogue item is in it.
    let print = |title: String,
                 hits: Vec<visual_search_retrieval::catalogue::CatalogueHit>,
                 photo: bool| {
        println!("{title}:");
        if let (true, Some(t), Some(top)) = (photo, &meta.match_threshold, hits.first()) {
            if meta.is_match(top.score) {
                println!(
                    "match: rank 1 (score {:.4} >= threshold {:.4})",
                    top.score, t.score
                );
            } else {
                println!(
                    "match: none, not in the catalogue (top score {:.4} < threshold {:.4}); below are the nearest items.",
                    top.score, t.score
                );
            }
        }
        let with_metadata = hits.iter().any(|h| !h.item.metadata.is_empty());
        let rows: Vec<Vec<String>> = hits
            .into_iter()
            .enumerate()
            .map(|(r, hit)| {
                let mut row = vec![
                    (r + 1).to_string(),
                    format!("{:.4}", hit.score),
                    hit.item.label.to_string(),
                    hit.item.path.display().to_string(),
                ];
                if with_metadata {
                    let pairs: Vec<String> = hit
                        .item
                        .metadata
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    row.push(pairs.join(" "));
                }
                row
            })
            .collect();
        let header: &[&str] = if with_metadata {
            &["rank", "score", "label", "image", "metadata"]
        } else {
            &["rank", "score", "label", "image"]
        };
        print!("{}", render(header, &rows));
    };
    if let Some(id) = args.item {
        let hits = index.similar_items(id, args.k, &filter)?.with_context(|| {
            format!(
                "{} has no item {id} (ids are 0..{})",
                index.location(),
                index.rows()
            )
        })?;
        let path = index.item(id)?.map(|i| i.path.display().to_string());
        print(
            format!("item {id} ({})", path.unwrap_or_default()),
            hits,
            false,
        );
        return Ok(());
    }
    if args.auto_box.auto_box && bbox.is_some() {
        anyhow::bail!("--auto-box finds the box itself; drop --bbox");
    }
    let auto_box = args.auto_box.params()?;
    let loaded = load_index_model(index.meta(), &args.device)?;
    let pre = &index.meta().preprocessing;
    // `--auto-box`: its knobs and the index's model at the window side.
    let auto_box = match auto_box {
        Some(params) => {
            let side = params.window_side(pre.size);
            let window_model = load_index_model_at(index.meta(), &args.device, Some(side))?;
            let at_side = Preprocessing {
                size: side,
                ..pre.clone()
            };
            Some((params, window_model, at_side))
        }
        None => None,
    };
    let mut embeddings = Vec::with_capacity(args.images.len() * loaded.dim);
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = decode_query(&bytes, &DecodeLimits::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(b) = &bbox {
            check_box_on_photo(b, &image)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let whole = loaded.embed(prepare_decoded(&image, bbox, pre), 1)?;
        let Some((params, window_model, at_side)) = &auto_box else {
            embeddings.extend(whole);
            continue;
        };
        let windows = params.windows();
        let rows = window_model.embed(prepare_windows(&image, &windows, at_side), windows.len())?;
        match params.choose_in_catalogue(index.as_ref(), &whole, &rows, &filter)? {
            Some(choice) => {
                let found = choice.window.to_bbox(image.width(), image.height());
                println!(
                    "{}: auto-box {:.0},{:.0},{:.0},{:.0} (confidence {:.3} vs whole photo {:.3})",
                    path.display(),
                    found.x,
                    found.y,
                    found.w,
                    found.h,
                    choice.score,
                    choice.whole_score
                );
                embeddings.extend_from_slice(choice.row(&rows, loaded.dim));
            }
            None => {
                println!("{}: auto-box kept the whole photo", path.display());
                embeddings.extend(whole);
            }
        }
    }
    if args.fuse {
        let fused = fuse_rows(&embeddings, loaded.dim);
        let hits = index
            .search_items(&fused, args.k, &filter)?
            .pop()
            .unwrap_or_default();
        print(format!("{} photos fused", args.images.len()), hits, true);
        return Ok(());
    }
    let results = index.search_items(&embeddings, args.k, &filter)?;
    for (path, hits) in args.images.iter().zip(results) {
        print(path.display().to_string(), hits, true);
    }
    Ok(())
}
