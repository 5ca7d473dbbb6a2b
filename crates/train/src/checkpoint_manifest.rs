//! What a checkpoint folder held when it was written: `manifest.json` lists every other file
//! with its size and CRC-32 (`data::file_check`), so a checkpoint damaged afterwards — a copy
//! of a run folder cut short, a truncated file, a flipped bit, a file deleted by hand — is
//! recognised as damaged before a model is built from it, instead of failing deep in the
//! weight loader or, for a flipped bit, loading wrong weights without a word. Checkpoints
//! written before the manifest existed have none and are taken as they are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
pub use visual_search_data::file_check::Depth;
use visual_search_data::file_check::FileCheck;

use crate::error::TrainError;

/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: BTreeMap<String, FileCheck>,
}

/// Lists every file of `dir` (a checkpoint being written) in its `manifest.json`.
pub fn write_manifest(dir: &Path) -> Result<(), TrainError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == MANIFEST_FILE || !path.is_file() {
            continue;
        }
        let check = FileCheck::of(&path).map_err(|e| TrainError::io(&path, e))?;
        files.insert(name.to_string(), check);
    }
    let path = dir.join(MANIFEST_FILE);
    let json =
        serde_json::to_vec_pretty(&Manifest { files }).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
    std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
}

/// Checks a checkpoint folder against its manifest; the error says which file is missing,
/// cut short or changed. A folder without a manifest (written before it existed) passes.
pub fn verify(dir: &Path, depth: Depth) -> Result<(), String> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{MANIFEST_FILE}: {e}")),
    };
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_FILE} is damaged: {e}"))?;
    for (name, check) in &manifest.files {
        check.compare(&dir.join(name), name, depth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Depth, verify, write_manifest};

    #[test]
    fn every_file_is_checked_and_a_damaged_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("embedder.bpk");
        std::fs::write(&weights, vec![7u8; 5000]).unwrap();
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        assert_eq!(
            verify(dir.path(), Depth::Contents),
            Ok(()),
            "no manifest yet"
        );
        write_manifest(dir.path()).unwrap();
        assert_eq!(verify(dir.path(), Depth::Contents), Ok(()));

        std::fs::write(dir.path().join("state.json"), b"[]").unwrap();
        let err = verify(dir.path(), Depth::Contents).unwrap_err();
        assert!(err.starts_with("state.json has changed"), "{err}");
        std::fs::remove_file(&weights).unwrap();
        let err = verify(dir.path(), Depth::Size).unwrap_err();
        assert_eq!(err, "embedder.bpk is missing");

        std::fs::write(dir.path().join(super::MANIFEST_FILE), b"{\"files\": {").unwrap();
        let err = verify(dir.path(), Depth::Size).unwrap_err();
        assert!(err.contains("manifest.json is damaged"), "{err}");
    }
}
