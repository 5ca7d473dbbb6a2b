//! `visual-search weights inspect FILE`: what a weight file holds.

use std::path::PathBuf;

use visual_search_model::weights::TensorFile;

use crate::table;

/// Lists the tensors of a safetensors or PyTorch (.pth/.pt, zip or legacy) file: name, shape,
/// dtype, with a total parameter count.
#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = TensorFile::open(&args.file)?;
    let rows: Vec<Vec<String>> = file
        .entries
        .values()
        .map(|e| vec![e.name.clone(), format!("{:?}", e.shape), e.dtype.clone()])
        .collect();
    print!("{}", table::render(&["tensor", "shape", "dtype"], &rows));
    let params: usize = file.entries.values().map(|e| e.numel()).sum();
    println!(
        "{}: {} format, {} tensors, {} values",
        args.file.display(),
        file.format,
        rows.len(),
        params
    );
    Ok(())
}
