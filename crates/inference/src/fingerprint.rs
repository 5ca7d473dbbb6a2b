//! A model's identity by content: the registry name or the exported folder's `model.json`, and
//! the SHA-256 of its weights' bytes. The ONNX export cache is keyed by it, and sharded workers
//! record it in their parts, so parts embedded on different machines (where the weights lie at
//! different paths) are recognised as one model, and changed weights never pass for the old.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{InferenceError, Result};
use crate::model::ModelSource;
use crate::model_dir::{INFO_FILE, WEIGHTS_FILE};

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| InferenceError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| InferenceError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Feeds what identifies `source` (name or folder description, and the weights' bytes) to `h`.
pub(crate) fn hash_source(h: &mut Sha256, source: &ModelSource) -> Result<()> {
    match source {
        ModelSource::Registry { name, weights } => {
            h.update(format!("registry {name};"));
            if let Some(w) = weights {
                hash_file(h, w)?;
            }
        }
        ModelSource::Dir(dir) => {
            h.update("dir;");
            hash_file(h, &dir.join(INFO_FILE))?;
            hash_file(h, &dir.join(WEIGHTS_FILE))?;
        }
    }
    Ok(())
}

/// A hex SHA-256 naming `source`'s content (not where it lies).
pub fn model_fingerprint(source: &ModelSource) -> Result<String> {
    let mut h = Sha256::new();
    h.update("model fingerprint 1;");
    hash_source(&mut h, source)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
