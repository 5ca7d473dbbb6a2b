//! `visual-search search`: query an index with image files from the command line — the same
//! preparation and model as `serve`, without a server.

use std::path::PathBuf;

use anyhow::Context;
use visual_search_data::image::DecodeLimits;
use visual_search_serve::query_image::{parse_bbox, prepare_query};

use crate::index_model::{embed_pixels, open_with_model};
use crate::table::render;

/// Finds the catalogue images nearest to each photo and prints rank, score, label and path.
#[derive(clap::Args)]
pub struct Args {
    /// The index folder (`visual-search index build`).
    #[arg(long)]
    index: PathBuf,
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
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (index, loaded) = open_with_model(&args.index, &args.device)?;
    let bbox = args
        .bbox
        .as_deref()
        .map(parse_bbox)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let pre = &index.meta.preprocessing;
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let pixels = prepare_query(&bytes, bbox, pre, &DecodeLimits::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let embedding = embed_pixels(&loaded, pixels, 1).map_err(anyhow::Error::msg)?;
        let top = index.search(&embedding, args.k)?;
        println!("{}:", path.display());
        let rows: Vec<Vec<String>> = top
            .row(0)
            .iter()
            .zip(top.row_scores(0))
            .enumerate()
            .map(|(r, (&id, score))| {
                let item = &index.items[id as usize];
                vec![
                    (r + 1).to_string(),
                    format!("{score:.4}"),
                    item.label.to_string(),
                    item.path.display().to_string(),
                ]
            })
            .collect();
        print!("{}", render(&["rank", "score", "label", "image"], &rows));
    }
    Ok(())
}
