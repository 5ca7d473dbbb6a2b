//! A file's size and CRC-32 as recorded when it was written, and the check of a file against
//! that record: how the training checkpoints' manifests and the ONNX export cache recognise a
//! file damaged since (cut short by a partial copy, changed by a flipped bit) before anything
//! is loaded from it. (The search index keeps its own CRC-32s in `meta.json`.)

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How closely [`FileCheck::compare`] reads a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The size only (metadata; nothing is read).
    Size,
    /// The size and every byte's checksum.
    Contents,
}

/// What a file held when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    pub bytes: u64,
    pub crc32: u32,
}

impl FileCheck {
    /// Reads `path` whole.
    pub fn of(path: &Path) -> std::io::Result<Self> {
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
        Ok(Self {
            bytes,
            crc32: hasher.finalize(),
        })
    }

    /// Whether `path` still holds what was recorded; the error says what differs, as a phrase
    /// about `name` ("embedder.bpk has 4096 bytes, 5000 when it was written").
    pub fn compare(&self, path: &Path, name: &str, depth: Depth) -> Result<(), String> {
        let bytes = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{name} is missing"));
            }
            Err(e) => return Err(format!("{name}: {e}")),
        };
        if bytes != self.bytes {
            return Err(format!(
                "{name} has {bytes} bytes, {} when it was written",
                self.bytes
            ));
        }
        if depth == Depth::Contents {
            let now = Self::of(path).map_err(|e| format!("{name}: {e}"))?;
            if now.crc32 != self.crc32 {
                return Err(format!(
                    "{name} has changed since it was written (CRC-32 {:08x}, written {:08x})",
                    now.crc32, self.crc32
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Depth, FileCheck};

    #[test]
    fn a_cut_changed_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let check = FileCheck::of(&path).unwrap();
        assert_eq!(
            check,
            FileCheck {
                bytes: 5000,
                crc32: crc32fast::hash(&[7u8; 5000])
            }
        );
        assert_eq!(check.compare(&path, "w.bin", Depth::Contents), Ok(()));

        let mut flipped = vec![7u8; 5000];
        flipped[4000] = 8;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(check.compare(&path, "w.bin", Depth::Size), Ok(()));
        let err = check.compare(&path, "w.bin", Depth::Contents).unwrap_err();
        assert!(
            err.starts_with("w.bin has changed since it was written"),
            "{err}"
        );

        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let err = check.compare(&path, "w.bin", Depth::Size).unwrap_err();
        assert_eq!(err, "w.bin has 4096 bytes, 5000 when it was written");

        std::fs::remove_file(&path).unwrap();
        let err = check.compare(&path, "w.bin", Depth::Size).unwrap_err();
        assert_eq!(err, "w.bin is missing");
    }
}
