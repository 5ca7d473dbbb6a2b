//! `visual-search search`: query an index with image files from the command line — the same
//! preparation and model as `serve`, without a server.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_data::image::DecodeLimits;
use visual_search_serve::query_image::{parse_bbox, prepare_query};

use crate::args::model::DeviceArgs;
use crate::args::postgres::PgArgs;
use crate::index_model::open_with_model;
use crate::table::render;

/// Finds the catalogue images nearest to each photo and prints rank, score, label and path.
#[derive(clap::Args)]
pub struct Args {
    /// The index: a folder (`visual-search index build`) or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// Photos to search with.
    #[arg(required = true)]
    images: Vec<PathBuf>,
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
    let (index, loaded) = open_with_model(&args.index, &args.pg, &args.device)?;
    let bbox = args
        .bbox
        .as_deref()
        .map(parse_bbox)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let pre = &index.meta().preprocessing;
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let pixels = prepare_query(&bytes, bbox, pre, &DecodeLimits::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let embedding = loaded.embed(pixels, 1)?;
        let hits = index.search_items(&embedding, args.k)?;
        println!("{}:", path.display());
        let rows: Vec<Vec<String>> = hits
            .into_iter()
            .flatten()
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
    }
    Ok(())
}
