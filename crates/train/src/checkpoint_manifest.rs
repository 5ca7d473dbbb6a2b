//! What a checkpoint folder held when it was written: `manifest.json` lists every other file
//! with its size and CRC-32, so a checkpoint damaged afterwards — a copy of a run folder cut
//! short, a truncated file, a flipped bit, a file deleted by hand — is recognised as damaged
//! before a model is built from it, instead of failing deep in the weight loader or, for a
//! flipped bit, loading wrong weights without a word. Checkpoints written before the manifest
//! existed have none and are taken as they are.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    bytes: u64,
    crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: BTreeMap<String, FileCheck>,
}

/// How closely [`verify`] reads a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Every listed file is there with its size (metadata only).
    Sizes,
    /// Sizes and every byte's checksum.
    Contents,
}

fn check_of(path: &Path) -> std::io::Result<FileCheck> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(FileCheck {
        bytes,
        crc32: hasher.finalize(),
    })
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
        let check = check_of(&path).map_err(|e| TrainError::io(&path, e))?;
        files.insert(name.to_string(), check);
    }
    let json =
        serde_json::to_vec_pretty(&Manifest { files }).map_err(|e| TrainError::Checkpoint {
            path: dir.join(MANIFEST_FILE),
            message: e.to_string(),
        })?;
    let path = dir.join(MANIFEST_FILE);
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
    for (name, want) in &manifest.files {
        let file = dir.join(name);
        let bytes = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{name} is missing"));
            }
            Err(e) => return Err(format!("{name}: {e}")),
        };
        if bytes != want.bytes {
            return Err(format!(
                "{name} has {bytes} bytes, {} when it was written",
                want.bytes
            ));
        }
        if depth == Depth::Contents {
            let got = check_of(&file).map_err(|e| format!("{name}: {e}"))?;
            if got.crc32 != want.crc32 {
                return Err(format!(
                    "{name} has changed since it was written (CRC-32 {:08x}, written {:08x})",
                    got.crc32, want.crc32
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Depth, verify, write_manifest};

    #[test]
    fn a_cut_changed_or_missing_file_is_named() {
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

        let mut flipped = vec![7u8; 5000];
        flipped[4000] = 8;
        std::fs::write(&weights, &flipped).unwrap();
        assert_eq!(verify(dir.path(), Depth::Sizes), Ok(()), "same size");
        let err = verify(dir.path(), Depth::Contents).unwrap_err();
        assert!(err.contains("embedder.bpk has changed"), "{err}");

        std::fs::write(&weights, vec![7u8; 4096]).unwrap();
        let err = verify(dir.path(), Depth::Sizes).unwrap_err();
        assert!(err.contains("embedder.bpk has 4096 bytes, 5000"), "{err}");

        std::fs::remove_file(&weights).unwrap();
        let err = verify(dir.path(), Depth::Sizes).unwrap_err();
        assert!(err.contains("embedder.bpk is missing"), "{err}");

        std::fs::write(dir.path().join(super::MANIFEST_FILE), b"{\"files\": {").unwrap();
        let err = verify(dir.path(), Depth::Sizes).unwrap_err();
        assert!(err.contains("manifest.json is damaged"), "{err}");
    }
}
