//! What a folder held when it was written: `manifest.json` lists every other file with its size
//! and CRC-32 ([`FileCheck`]), so a folder damaged afterwards — a copy cut short (an
//! interrupted `rsync` or `scp`), a truncated file, a flipped bit, a file deleted by hand — is
//! recognised before anything is loaded from it, instead of failing deep in a weight loader or,
//! for a flipped bit, loading wrong weights without a word. Training checkpoints and exported
//! model folders carry one. A folder written before manifests existed has none and is taken
//! as it is.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic_write::write_atomically;
use crate::error::{DataError, Result};
use crate::file_check::{Depth, FileCheck};

/// The manifest's file name inside a folder.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: BTreeMap<String, FileCheck>,
}

/// Lists every file of `dir` (plain files at its top, hidden temp files excepted) in its
/// `manifest.json`, replacing an earlier manifest atomically.
pub fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == MANIFEST_FILE || name.starts_with('.') || !path.is_file() {
            continue;
        }
        let check = FileCheck::of(&path).map_err(|e| DataError::io(&path, e))?;
        files.insert(name.to_string(), check);
    }
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&Manifest { files }).map_err(|e| DataError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomically(&path, &json)
}

/// The manifest of `dir`, `None` when it has none; the error is a phrase about the manifest.
fn read_manifest(dir: &Path) -> std::result::Result<Option<Manifest>, String> {
    let text = match std::fs::read(dir.join(MANIFEST_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{MANIFEST_FILE}: {e}")),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{MANIFEST_FILE} is damaged: {e}"))
}

/// Checks every file the manifest of `dir` lists; the error says which file is missing, cut
/// short or changed. A folder without a manifest passes.
pub fn verify(dir: &Path, depth: Depth) -> std::result::Result<(), String> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(());
    };
    for (name, check) in &manifest.files {
        check.compare(&dir.join(name), name, depth)?;
    }
    Ok(())
}

/// Checks only the files `names` of `dir` against its manifest (a loader's own files; the
/// folder may hold others a user edits by hand). A name the manifest does not list, or a
/// folder without a manifest, passes.
pub fn verify_files(dir: &Path, names: &[&str], depth: Depth) -> std::result::Result<(), String> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(());
    };
    for name in names {
        if let Some(check) = manifest.files.get(*name) {
            check.compare(&dir.join(name), name, depth)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Depth, MANIFEST_FILE, verify, verify_files, write_manifest};

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
        assert_eq!(
            verify_files(
                dir.path(),
                &["embedder.bpk", "unlisted.onnx"],
                Depth::Contents
            ),
            Ok(()),
            "only the named files are checked"
        );
        std::fs::remove_file(&weights).unwrap();
        let err = verify(dir.path(), Depth::Size).unwrap_err();
        assert_eq!(err, "embedder.bpk is missing");
        let err = verify_files(dir.path(), &["embedder.bpk"], Depth::Size).unwrap_err();
        assert_eq!(err, "embedder.bpk is missing");

        std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"files\": {").unwrap();
        let err = verify(dir.path(), Depth::Size).unwrap_err();
        assert!(err.contains("manifest.json is damaged"), "{err}");
    }

    #[test]
    fn rewriting_takes_in_a_file_added_later_and_leaves_temp_files_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"graph").unwrap();
        write_manifest(dir.path()).unwrap();
        std::fs::write(dir.path().join("model.int8.onnx"), b"int8").unwrap();
        std::fs::write(dir.path().join(".model.int8.onnx.abc123"), b"partial").unwrap();
        write_manifest(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("model.int8.onnx"), "{text}");
        assert!(!text.contains(".model.int8.onnx.abc123"), "{text}");
        std::fs::write(dir.path().join("model.int8.onnx"), b"INT8").unwrap();
        let err = verify_files(dir.path(), &["model.int8.onnx"], Depth::Contents).unwrap_err();
        assert!(err.starts_with("model.int8.onnx has changed"), "{err}");
    }
}
